"""Do two study (or run) folders hold the same tables? Prints one JSON object.

    python benchmarks/same_outputs.py BEFORE_DIR AFTER_DIR

For a change that must not change results (a restructuring, a faster runner): run the same
study into two folders, one with the old code and one with the new, on the same machine, then
compare them. Every .csv, .md and results.json file is compared byte for byte after two
normalisations, both printed:

- each folder's own path is written as OUT (tables that name a checkpoint's path name it);
- timings are masked: README.md's "Seconds per step" line, and every table column or JSON key
  that is a time or a speed (seconds, elapsed_s, tokens_per_s, total_train_time,
  avg_inference_tokens_per_second).

It also lists the files (of any kind) present on one side only. The exit code is 0 when every
table is the same and both folders hold the same files, else 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TIMING = ("seconds", "elapsed_s", "tokens_per_s", "total_train_time",
          "avg_inference_tokens_per_second")


def is_timing(name: str) -> bool:
    return name.strip().startswith(TIMING)


def _mask_rows(lines: list[str], sep: str) -> list[str]:
    """Table lines with the cells of timing columns replaced (a Markdown table restarts at
    every line that is not a row)."""
    out, masked, header = [], set(), False
    for line in lines:
        if sep == "|" and not line.startswith("|"):
            header = False
            out.append(line)
            continue
        cells = line.split(sep)
        if not header:
            masked, header = {i for i, c in enumerate(cells) if is_timing(c)}, True
            out.append(line)
            continue
        out.append(sep.join("TIME" if i in masked and set(c.strip()) - set("-:") else c
                            for i, c in enumerate(cells)))
    return out


def _mask_json(x):
    if isinstance(x, dict):
        return {k: "TIME" if is_timing(k) else _mask_json(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_mask_json(v) for v in x]
    return x


def normalised(path: Path, root: Path) -> str:
    text = path.read_text(encoding="utf-8").replace(str(root.resolve()), "OUT")
    if path.suffix == ".json":
        return json.dumps(_mask_json(json.loads(text)), indent=1)
    lines = [line for line in text.split("\n") if not line.startswith("Seconds per step:")]
    return "\n".join(_mask_rows(lines, "," if path.suffix == ".csv" else "|"))


def tables(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*"))
            if p.is_file() and (p.suffix in (".csv", ".md") or p.name == "results.json")}


def compare(before: Path, after: Path) -> dict:
    a, b = tables(before), tables(after)
    shared = sorted(set(a) & set(b))
    as_is = [k for k in shared if a[k].read_bytes() == b[k].read_bytes()]
    differ = [k for k in shared if normalised(a[k], before) != normalised(b[k], after)]
    files_a = {str(p.relative_to(before)) for p in before.rglob("*") if p.is_file()}
    files_b = {str(p.relative_to(after)) for p in after.rglob("*") if p.is_file()}
    return {"tables_before": len(a), "tables_after": len(b),
            "identical_as_they_are": len(as_is),
            "identical_with_paths_and_timings_masked": len(shared) - len(differ),
            "differ": differ, "files_before": len(files_a), "files_after": len(files_b),
            "only_before": sorted(files_a - files_b), "only_after": sorted(files_b - files_a)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    result = compare(args.before, args.after)
    result["same"] = not (result["differ"] or result["only_before"] or result["only_after"])
    print(json.dumps(result))
    sys.exit(0 if result["same"] else 1)


if __name__ == "__main__":
    main()
