"""Time to quality: validation loss against wall-clock seconds, lmscope beside nanoGPT.

    python benchmarks/time_to_quality.py --preset shakespeare-char-cpu --nanogpt ~/nanoGPT --out ttq

Runs `lmscope train --preset P` and (with --nanogpt) nanoGPT's documented CPU recipe one after the
other on the same machine, records each one's validation loss at every evaluation against the
seconds since its command started, writes `curves.csv` and `curves.png` to --out, and prints
one JSON object: wall seconds of each whole command, lmscope's whole-split validation loss,
the seconds at which each first reported a validation loss <= --target, and the ratio of wall
times. nanoGPT's validation losses are its own estimates (eval_iters=20 random batches).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import NANOGPT_CPU_RECIPE  # noqa: E402  (the same recipe the step benchmark runs)


def run_timed(cmd: list[str], cwd: Path | None = None) -> tuple[list[tuple[float, str]], float]:
    """Run a command, timestamping each line of its output; return (lines, wall seconds)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines = [(time.perf_counter() - start, line) for line in proc.stdout]
    if proc.wait() != 0:
        raise RuntimeError(f"{cmd[:4]} failed:\n" + "".join(line for _, line in lines[-20:]))
    return lines, time.perf_counter() - start


def lmscope_curve(preset: str, workdir: Path) -> dict:
    run = workdir / "lmscope-run"
    _, wall = run_timed([sys.executable, "-m", "lmscope", "train", "--preset", preset,
                         "--out", str(run), "--quiet"])
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # metrics' elapsed_s counts from the training loop's start; add the set-up before it
    setup = wall - json.loads((run / "summary.json").read_text())["elapsed_s"]
    final = next(r for r in rows if r["kind"] == "final")
    curve = [(r["iter"], setup + r["elapsed_s"], r["val_loss"]) for r in rows
             if r["kind"] == "eval"]
    return {"wall_s": wall, "curve": curve, "val_loss_full": final["val_loss_full"]}


def nanogpt_curve(nanogpt: Path, workdir: Path, iters: int = 2000) -> dict:
    """nanoGPT's CPU recipe for `iters` iterations (its checkpoint in workdir/nanogpt-out): wall
    seconds of the command and (iteration, seconds, val loss estimate) at each evaluation."""
    from run import prepare_nanogpt_data

    prepare_nanogpt_data(nanogpt)
    # (the recipe evaluates, and keeps a checkpoint, every 250 iterations: a shorter run once)
    shorter = [f"--eval_interval={iters}"] if iters < 250 else []
    lines, wall = run_timed([sys.executable, "train.py", *NANOGPT_CPU_RECIPE,
                             f"--max_iters={iters}", *shorter,
                             f"--out_dir={workdir / 'nanogpt-out'}"], cwd=nanogpt)
    curve = []
    for seconds, line in lines:
        m = re.match(r"step (\d+): train loss ([0-9.]+), val loss ([0-9.]+)", line)
        if m:
            curve.append((int(m.group(1)), seconds, float(m.group(3))))
    return {"wall_s": wall, "curve": curve}


def first_below(curve, target: float):
    return next((round(s, 1) for _, s, loss in curve if loss <= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shakespeare-char-cpu")
    parser.add_argument("--nanogpt", type=Path, default=None, help="a karpathy/nanoGPT checkout")
    parser.add_argument("--target", type=float, default=1.88)
    parser.add_argument("--out", type=Path, default=Path("ttq"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.nanogpt is not None:
            results["nanogpt"] = nanogpt_curve(args.nanogpt.resolve(), Path(tmp))
        results[f"lmscope:{args.preset}"] = lmscope_curve(args.preset, Path(tmp))

    with open(args.out / "curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["system", "iter", "seconds", "val_loss"])
        for name, r in results.items():
            writer.writerows((name, it, round(s, 2), loss) for it, s, loss in r["curve"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        ax.plot([s for _, s, _ in r["curve"]], [v for _, _, v in r["curve"]], marker="o", label=name)
    ax.axhline(args.target, color="grey", linestyle="--", linewidth=1, label=f"{args.target}")
    ax.set(xlabel="seconds since the command started", ylabel="validation loss (nats/char)",
           title="time to quality on tiny shakespeare", ylim=(1.4, 3.0))
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "curves.png", dpi=120)

    summary = {name: {"wall_s": round(r["wall_s"], 1),
                      f"first_val_below_{args.target}_s": first_below(r["curve"], args.target),
                      "last_val_loss_estimate": r["curve"][-1][2],
                      **({"val_loss_full": round(r["val_loss_full"], 4)}
                         if "val_loss_full" in r else {})}
               for name, r in results.items()}
    if args.nanogpt is not None:
        ours = summary[f"lmscope:{args.preset}"]["wall_s"]
        summary["wall_time_ratio_lmscope_over_nanogpt"] = round(ours / summary["nanogpt"]["wall_s"], 3)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
