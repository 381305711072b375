"""What the TensorBoard logger (log.tensorboard=true) costs during training; prints one JSON object.

    python benchmarks/tensorboard_cost.py            # 3 rounds
    python benchmarks/tensorboard_cost.py --quick    # 1 round, shorter runs

Three measurements:

- end_to_end: `lmscope.train` of the shakespeare-char-cpu model (0.80M parameters, batch 12 x 64)
  on the shakespeare corpus with log.tensorboard=true and =false, run alternately, attention
  tracking at its default interval (track.attention_every=100) in both, so TensorBoard gets train
  rows every 10 iterations, eval rows (each followed by a flush) at the start and the end, and
  attention rows. Each run's wall seconds around `train()` (setup, the logger's construction and
  closing included) and the trainer's own clock (summary elapsed_s: the loop only), their medians
  and the ratios on/off; also the size of the on run's event file and the rows it got.
  torch.utils.tensorboard is imported once before the runs, so no run pays the import (see
  import_s), and a short unmeasured run goes first, so no measured run pays the process's
  first-run costs.
- per_row: `TensorBoardLogger` on a temporary folder, fed rows taken from the end-to-end on run's
  own metrics.jsonl and attention.jsonl (iteration advanced each time): median seconds to write
  one "train" row, one "eval" row plus flush (as the trainer does after every non-train row) and
  one attention row, and the mean per row including a final flush (the writer queues events and a
  background thread writes them, so a median alone can miss that work); median seconds to
  construct a new logger on a fresh folder (import already done), and to close one.
- import_s: median seconds of `from torch.utils.tensorboard import SummaryWriter` in a fresh
  Python process that has already imported torch (the one-time cost a run with the logger pays).

estimated_logger_s_per_run puts the two together: construction, closing and the rows of one on
run at their per-row cost (mean with flush), and estimated_share_of_run is that over the off run's
wall time, the overhead without the noise of two separate runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lmscope.config import resolve_config
from lmscope.io import read_jsonl
from lmscope.train.tensorboard import (
    TensorBoardLogger,
    attention_scalars,
    check_installed,
    metric_scalars,
)
from lmscope.train.trainer import train


def _config(iters: int, tensorboard: str):
    return resolve_config(preset="shakespeare-char-cpu", data="shakespeare", overrides=[
        f"train.max_iters={iters}", f"train.lr_decay_iters={iters}",
        "train.eval_interval=1000000", "train.checkpoint_at=[]",
        "train.sample_tokens=0", "train.final_eval=false",
        "track.attention_every=100", f"log.tensorboard={tensorboard}"])


def end_to_end(rounds: int, iters: int) -> tuple[dict, dict]:
    """The timings, and sample rows (train, eval, attention) from an on run's own files."""
    wall = {"on": [], "off": []}
    loop = {"on": [], "off": []}
    runs = []
    rows: dict = {}
    counts: dict = {}
    event_bytes = []
    with tempfile.TemporaryDirectory() as tmp:
        # a short unmeasured run first: the first run in a process pays one-time costs (reading
        # the corpus and the token cache, torch's first kernels) that would go to round 0's first
        start = time.perf_counter()
        train(_config(20, "false"), Path(tmp) / "warmup", progress=False, log=lambda *a: None)
        warmup = time.perf_counter() - start
        for r in range(rounds):
            for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
                config = _config(iters, "true" if mode == "on" else "false")
                run_dir = Path(tmp) / f"{mode}{r}"
                start = time.perf_counter()
                result = train(config, run_dir, progress=False, log=lambda *a: None)
                seconds = time.perf_counter() - start
                wall[mode].append(seconds)
                loop[mode].append(result.elapsed_s)
                runs.append({"round": r, "tensorboard": mode, "wall_s": round(seconds, 3),
                             "loop_s": round(result.elapsed_s, 3)})
                if mode == "on":
                    event_bytes.append(sum(p.stat().st_size
                                           for p in (run_dir / "tensorboard").glob("events.*")))
                    if not rows:
                        metrics = read_jsonl(run_dir / "metrics.jsonl")
                        attention = read_jsonl(run_dir / "attention.jsonl")
                        rows = {"train": next(m for m in metrics if m["kind"] == "train"),
                                "eval": next(m for m in metrics if m["kind"] == "eval"),
                                "attention": attention[-1]}
                        counts = {"train": sum(m["kind"] == "train" for m in metrics),
                                  "eval_and_flush": sum(m["kind"] != "train" for m in metrics),
                                  "attention": len(attention)}
    on, off = statistics.median(wall["on"]), statistics.median(wall["off"])
    lon, loff = statistics.median(loop["on"]), statistics.median(loop["off"])
    return {"iters": iters, "rounds": rounds, "warmup_run_wall_s": round(warmup, 3), "runs": runs,
            "wall_s_tensorboard_on": round(on, 3), "wall_s_tensorboard_off": round(off, 3),
            "wall_ratio_on_over_off": round(on / off, 4),
            "loop_s_tensorboard_on": round(lon, 3), "loop_s_tensorboard_off": round(loff, 3),
            "loop_ratio_on_over_off": round(lon / loff, 4),
            "event_file_bytes": statistics.median(event_bytes),
            "rows_per_on_run": counts}, rows


def _time_rows(logger: TensorBoardLogger, write, row: dict, repeats: int, first: int,
               flush: bool) -> dict:
    times = []
    total = time.perf_counter()
    for i in range(repeats):
        r = {**row, "iter": first + 10 * i}
        start = time.perf_counter()
        write(r)
        if flush:
            logger.flush()
        times.append(time.perf_counter() - start)
    logger.flush()
    total = time.perf_counter() - total
    return {"median_s": round(statistics.median(times), 7),
            "mean_with_final_flush_s": round(total / repeats, 7)}


def per_row(rows: dict, repeats: int, constructions: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        construct, close = [], []
        for i in range(constructions):
            start = time.perf_counter()
            logger = TensorBoardLogger(Path(tmp) / f"new{i}")
            construct.append(time.perf_counter() - start)
            start = time.perf_counter()
            logger.close()
            close.append(time.perf_counter() - start)
        logger = TensorBoardLogger(Path(tmp) / "rows")
        try:
            out = {"repeats": repeats,
                   "construct_s": round(statistics.median(construct), 6),
                   "close_s": round(statistics.median(close), 6)}
            for name, write, flush, tags in (
                    ("train", logger.metrics, False, metric_scalars(rows["train"])),
                    ("eval_and_flush", logger.metrics, True, metric_scalars(rows["eval"])),
                    ("attention", logger.attention, False, attention_scalars(rows["attention"]))):
                row = rows["eval" if name == "eval_and_flush" else name]
                out[name] = {"scalars": len(tags),
                             **_time_rows(logger, write, row, repeats, 10, flush)}
        finally:
            logger.close()
    out["rows"] = {"train": rows["train"], "eval": rows["eval"],
                   "attention_keys": sorted(rows["attention"])}
    return out


def import_seconds(repeats: int) -> float:
    code = ("import time, torch; t = time.perf_counter(); "
            "from torch.utils.tensorboard import SummaryWriter; "
            "print(time.perf_counter() - t)")
    with tempfile.TemporaryDirectory() as tmp:  # a fresh process, nothing imported yet
        return round(statistics.median(
            float(subprocess.run([sys.executable, "-c", code], cwd=tmp, check=True,
                                 capture_output=True, text=True).stdout)
            for _ in range(repeats)), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    np.random.seed(0)
    os.environ.setdefault("LMSCOPE_DATA", str(Path(__file__).resolve().parents[2] / "shared/data"))
    rounds, iters, repeats = (1, 100, 50) if args.quick else (3, 300, 200)
    imported = import_seconds(1 if args.quick else 3)
    check_installed()  # imports torch.utils.tensorboard here, so that no run pays for it
    e2e, rows = end_to_end(rounds, iters)
    rows_cost = per_row(rows, repeats, 5 if args.quick else 20)
    # the logger's own time in one on run, from the per-row costs and the rows such a run writes
    logger_s = (rows_cost["construct_s"] + rows_cost["close_s"] + sum(
        n * rows_cost[kind]["mean_with_final_flush_s"]
        for kind, n in e2e["rows_per_on_run"].items()))
    out = {
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "end_to_end": e2e,
        "per_row": rows_cost,
        "import_s": imported,
        "estimated_logger_s_per_run": round(logger_s, 5),
        "estimated_share_of_run": round(logger_s / e2e["wall_s_tensorboard_off"], 6),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
