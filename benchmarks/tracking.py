"""What tracking costs during training; prints one JSON object.

    python benchmarks/tracking.py                       # attention, 3 rounds
    python benchmarks/tracking.py --tracker dynamics    # the learning dynamics alone
    python benchmarks/tracking.py --quick               # 1 round, shorter runs

--tracker picks what is on in the "on" runs: attention (track.attention_every=100 alone),
dynamics (track.dynamics_every=100 alone) or all (the defaults: attention, heads and dynamics
every 100); the "off" runs track nothing.

Two measurements:

- end_to_end: `lmscope.train` of the shakespeare-char-cpu model (0.80M parameters, batch 12 x 64)
  with tracking at the default interval (every 100 iterations) and with tracking off, run
  alternately; medians of the training wall time of each and their ratio. The runs also report
  the seconds spent in captures themselves (summary.json attention_tracking_s or
  dynamics_tracking_s) as a share of the run's time, the same overhead measured without the
  noise of two separate runs.
- per_capture: for the baby GPT (6 layers, 6 heads, 384 wide, block 256) and the small model:
  median seconds of one capture (attention: forward with attention on the 4-sequence probe batch,
  then every metric; dynamics: forward and backward on it, then every weight matrix's SVD),
  median seconds of one training step at the preset's batch, and the overhead of capturing every
  100 steps: capture / (100 x step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lmscope.config import resolve_config
from lmscope.data.tokens import spaced_windows
from lmscope.train.tracking import AttentionTracker, DynamicsTracker
from lmscope.train.trainer import Trainer, train

ON = {"attention": ["track.attention_every=100", "track.heads_every=0", "track.dynamics_every=0"],
      "dynamics": ["track.attention_every=0", "track.dynamics_every=100"],
      "all": ["track.attention_every=100"]}
SECONDS = {"attention": ("attention_tracking_s",), "dynamics": ("dynamics_tracking_s",),
           "all": ("attention_tracking_s", "dynamics_tracking_s")}  # heads: not in summary.json


def end_to_end(rounds: int, iters: int, tracker: str) -> dict:
    times = {"on": [], "off": []}
    shares = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
                tracking = ON[tracker] if mode == "on" else ["track.attention_every=0"]
                config = resolve_config(preset="shakespeare-char-cpu", overrides=[
                    f"train.max_iters={iters}", f"train.lr_decay_iters={iters}",
                    "train.eval_interval=1000000", "train.checkpoint_at=[]",
                    "train.sample_tokens=0", "train.final_eval=false", *tracking])
                result = train(config, Path(tmp) / f"{mode}{r}", progress=False,
                               log=lambda *a: None)
                times[mode].append(result.elapsed_s)
                if mode == "on":
                    summary = json.loads((Path(tmp) / f"{mode}{r}" / "summary.json").read_text())
                    shares.append(sum(summary[k] for k in SECONDS[tracker])
                                  / summary["elapsed_s"])
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    return {"tracker": tracker, "iters": iters, "rounds": rounds, "seconds_tracking_on": round(on, 2),
            "seconds_tracking_off": round(off, 2), "ratio_on_over_off": round(on / off, 4),
            "capture_share_of_run": round(statistics.median(shares), 5)}


def per_capture(preset: str, repeats: int, steps: int, tracker: str) -> dict:
    config = resolve_config(preset=preset, overrides=["train.device=cpu"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, Path(tmp) / "run", progress=False, log=lambda *a: None)
        trainer._prepare_run_dir()
        trainer.setup()
        model = trainer.raw_model
        _, probe = spaced_windows(trainer.val_tokens[0].tokens, trainer.block_size,
                                  config.track.attention_batch)
        capturing = (DynamicsTracker(Path(tmp), probe, unk_id=None) if tracker == "dynamics"
                     else AttentionTracker(Path(tmp), probe, save_maps=False))
        capture = []
        for it in range(repeats):
            start = time.perf_counter()
            capturing.capture(model, it)
            capture.append(time.perf_counter() - start)
        step = []
        model.train()
        trainer.step(1e-4)  # warm-up
        for _ in range(steps):
            start = time.perf_counter()
            trainer.step(1e-4)
            step.append(time.perf_counter() - start)
    c, s = statistics.median(capture), statistics.median(step)
    return {"tracker": tracker, "preset": preset, "batch": config.train.batch_size,
            "block": config.model.block_size, "probe_sequences": config.track.attention_batch,
            "capture_s": round(c, 4), "step_s": round(s, 4),
            "overhead_every_100": round(c / (100 * s), 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tracker", choices=sorted(ON), default="attention")
    args = parser.parse_args()
    torch.manual_seed(0)
    np.random.seed(0)
    os.environ.setdefault("LMSCOPE_DATA", str(Path(__file__).resolve().parents[2] / "shared/data"))
    rounds, iters = (1, 200) if args.quick else (3, 600)
    out = {
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "end_to_end": end_to_end(rounds, iters, args.tracker),
        "per_capture": [per_capture(preset, repeats, steps, kind)
                        for kind in (["attention", "dynamics"] if args.tracker == "all"
                                     else [args.tracker])
                        for preset, repeats, steps in (
                            ("shakespeare-char-cpu", 5 if not args.quick else 2, 10),
                            ("shakespeare-char", 3 if not args.quick else 1,
                             3 if not args.quick else 1))],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
