"""Study throughput: a study's wall time at --jobs 1 and --jobs N, beside its plan's estimate.

    LMSCOPE_DATA=../shared/data python benchmarks/study_throughput.py --jobs 1 2

For each --jobs value, from an empty folder and an empty cache: `lmscope study STUDY --quick --plan --jobs J` (the
plan's estimate of the training units, from a short measurement of each model size here), then
the study itself. Prints one JSON object: per --jobs, the plan's estimate of the training units'
work and wall time, the actual whole command's wall time, the seconds of work per step
(timings.json; for train, the sum of its runs' seconds) and each run's estimated and actual
training seconds (the run's summary.json, its loop), and the ratio of wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def lmscope(*args: str, cache: Path | None = None) -> str:
    env = {**os.environ, **({"LMSCOPE_CACHE": str(cache)} if cache else {})}
    result = subprocess.run([sys.executable, "-m", "lmscope", *args], capture_output=True,
                            text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"lmscope {' '.join(args[:3])} failed: {result.stderr[-2000:]}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="studies/architectures.toml")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    out: dict = {"study": args.study, "quick": True}
    with tempfile.TemporaryDirectory() as tmp:
        for jobs in args.jobs:
            folder = Path(tmp) / f"jobs{jobs}"
            cache = Path(tmp) / f"cache{jobs}"  # each study from an empty cache (token files)
            plan = lmscope("study", args.study, "--quick", "--out", str(folder), "--plan",
                           "--jobs", str(jobs))
            work, wall = map(float, re.search(r"training and transfer: ([\d,]+) s of work; "
                                              r"about ([\d,]+) s", plan.replace(",", "")).groups())
            estimates = {m.group(1): float(m.group(2).replace(",", "")) for m in
                         re.finditer(r"^train (\S+) .*?([\d,]+) s$", plan, re.M)}
            start = time.perf_counter()
            lmscope("study", args.study, "--quick", "--out", str(folder), "--jobs", str(jobs),
                    cache=cache)
            actual = time.perf_counter() - start
            runs = {name: {"estimate_s": round(est, 1), "loop_s": round(json.loads(
                (folder / "runs" / name / "summary.json").read_text())["elapsed_s"], 1)}
                for name, est in estimates.items()}
            out[f"jobs_{jobs}"] = {
                "plan_training_work_s": work, "plan_training_wall_s": wall,
                "actual_wall_s": round(actual, 1),
                "work_per_step_s": json.loads((folder / "timings.json").read_text()),
                "runs": runs}
        if len(args.jobs) > 1:
            first, last = (out[f"jobs_{j}"]["actual_wall_s"] for j in (args.jobs[0], args.jobs[-1]))
            out["wall_ratio"] = round(last / first, 3)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
