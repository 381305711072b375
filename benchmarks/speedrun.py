"""The speedrun's options, one at a time, and the speedrun preset, beside nanoGPT's CPU recipe.

    python benchmarks/speedrun.py --nanogpt ~/nanoGPT --out docs/results/speedrun
    python benchmarks/speedrun.py --quick        # one seed, 40 iterations: a smoke test

Prints one JSON object, the ablation table, and writes it to OUT/ablation.json with the curves
(OUT/curves.csv, OUT/curves.png). Everything runs in this one script, one command after another
(alternating: each seed's round runs nanoGPT, the preset, then every option), so all rows share
the machine's state. Medians are over --seeds seeds (train.seed; nanoGPT has no seed option, so
its rounds repeat one run).

- `options`: the base (the shakespeare-char-fast preset) and the base with one option set, each
  trained for the base's iterations with a checkpoint every --every iterations (no samples). Each
  checkpoint's whole-split validation loss is computed afterwards (not timed), and a row's
  `step_seconds_to_target` / `tokens_to_target` are those of the first checkpoint at or below
  --target: seconds spent in optimizer steps (`step_seconds` of the checkpoint's meta) and
  tokens trained on. A schedule decays over the whole run, so this is the time to the target
  inside a run of that length, not the shortest run that would reach it.
- `preset`: `lmscope train --preset shakespeare-char-speedrun` as a user runs it: the whole
  command's wall seconds and its final whole-split validation loss.
- `nanogpt` (with --nanogpt DIR, a karpathy/nanoGPT checkout; DIR/data/shakespeare_char is
  prepared when missing): its documented CPU recipe, 2,000 iterations: the whole command's wall
  seconds, the seconds at which its own estimate (20 batches) first reports <= --target, and the
  whole-split validation loss of the checkpoint it kept (its best estimate), computed here with
  its own model code over non-overlapping windows of val.bin.
- `preset_over_nanogpt_wall`: the preset's wall seconds over nanoGPT's, per round, and median.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from time_to_quality import nanogpt_curve, run_timed  # noqa: E402

import lmscope  # noqa: E402
from run import NANOGPT_CPU_RECIPE  # noqa: E402

BASE = "shakespeare-char-fast"
PRESET = "shakespeare-char-speedrun"
OPTIONS = {  # one option each, on the base
    "base": [],
    "muon": ["train.optimizer=muon"],
    "qk_norm": ["model.qk_norm=true"],
    "relu2": ["model.mlp_act=relu2"],
    "wsd": ["train.schedule=wsd"],
    "zero_init_proj": ["model.zero_init_proj=true"],
    "untied_head": ["model.tie_weights=false"],
}


def lmscope_cmd(preset: str, out: Path, settings: list[str]) -> list[str]:
    return [sys.executable, "-m", "lmscope", "train", "--data", "shakespeare", "--preset", preset,
            "--out", str(out), "--quiet", *(["--set", *settings] if settings else [])]


def run_option(name: str, seed: int, every: int, iters: int | None, work: Path) -> dict:
    """The base with one option, checkpointed every `every` iterations; whole-split val of each."""
    out = work / f"{name}-{seed}"
    settings = [*OPTIONS[name], f"train.seed={seed}", f"train.checkpoint_every={every}",
                "train.sample_tokens=0", *([f"train.max_iters={iters}"] if iters else [])]
    _, wall = run_timed(lmscope_cmd(BASE, out, settings))
    curve = []
    for ckpt in sorted((out / "checkpoints").glob("iter_*")) + [out / "checkpoints" / "final"]:
        meta = json.loads((ckpt / "meta.json").read_text())
        loss = lmscope.evaluate(ckpt, "shakespeare", "val").loss
        curve.append({"iter": meta["iter"], "tokens": meta["tokens_seen"],
                      "step_seconds": meta["step_seconds"], "val_loss_full": round(loss, 4)})
    summary = json.loads((out / "summary.json").read_text())
    return {"wall_s": wall, "curve": curve, "val_loss_full": summary["val_loss"],
            "step_ms": 1000 * curve[-1]["step_seconds"] / max(curve[-1]["iter"], 1)}


def run_preset(seed: int, iters: int | None, work: Path) -> dict:
    out = work / f"preset-{seed}"
    settings = [f"train.seed={seed}", *([f"train.max_iters={iters}"] if iters else [])]
    _, wall = run_timed(lmscope_cmd(PRESET, out, settings))
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "checkpoints" / "final" / "meta.json").read_text())["run_config"]
    tokens = summary["iterations"] * config["train"]["batch_size"] * config["model"]["block_size"]
    return {"wall_s": wall, "val_loss_full": summary["val_loss"], "iterations": summary["iterations"],
            "tokens": tokens, "phase_seconds": summary["phase_seconds"]}


def run_nanogpt(nanogpt: Path, iters: int, work: Path) -> dict:
    """nanoGPT's recipe (benchmarks/time_to_quality.py runs it), its kept checkpoint's
    whole-split val loss beside its own estimates."""
    run = nanogpt_curve(nanogpt, work, iters)
    return {"wall_s": run["wall_s"],
            "curve": [{"iter": it, "val_loss_estimate": loss} for it, _, loss in run["curve"]],
            "val_loss_full": nanogpt_whole_split(nanogpt, work / "nanogpt-out" / "ckpt.pt")}


def nanogpt_whole_split(nanogpt: Path, ckpt_path: Path) -> float:
    """The whole-split validation loss of a nanoGPT checkpoint: its own GPT over non-overlapping
    windows of val.bin (each window predicts its next block_size tokens), weighted by tokens."""
    sys.path.insert(0, str(nanogpt))
    from model import GPT, GPTConfig  # nanoGPT's model.py

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    model.eval()
    block = ckpt["model_args"]["block_size"]
    data = np.fromfile(nanogpt / "data" / "shakespeare_char" / "val.bin", dtype=np.uint16)
    data = torch.from_numpy(data.astype(np.int64))
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data) - 1, block * 32):
            xs, ys = [], []
            for s in range(start, min(start + block * 32, len(data) - 1), block):
                n = min(block, len(data) - 1 - s)
                if n == block:
                    xs.append(data[s:s + n])
                    ys.append(data[s + 1:s + n + 1])
                else:  # the last, shorter window on its own
                    _, loss = model(data[s:s + n][None], data[s + 1:s + n + 1][None])
                    total, count = total + loss.item() * n, count + n
            if xs:
                x, y = torch.stack(xs), torch.stack(ys)
                _, loss = model(x, y)
                total, count = total + loss.item() * y.numel(), count + y.numel()
    return round(total / count, 4)


def first_at_or_below(curve: list[dict], key: str, target: float) -> dict | None:
    return next((point for point in curve if point[key] <= target), None)


def median(values):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 4) if values else None


def summarise(rounds: list[dict], target: float) -> dict:
    table: dict = {"target_val_loss_full": target, "seeds": len(rounds), "options": {}}
    for name in OPTIONS:
        runs = [r["options"][name] for r in rounds]
        hits = [first_at_or_below(run["curve"], "val_loss_full", target) for run in runs]
        table["options"][name] = {
            "settings": OPTIONS[name],
            "val_loss_full": median([run["val_loss_full"] for run in runs]),
            "step_ms": median([run["step_ms"] for run in runs]),
            "step_seconds_to_target": median([h and h["step_seconds"] for h in hits]),
            "tokens_to_target": median([h and h["tokens"] for h in hits]),
            "reached_target": f"{sum(h is not None for h in hits)} of {len(hits)}",
        }
    presets = [r["preset"] for r in rounds]
    table["preset"] = {"name": PRESET,
                       "wall_s": round(median([p["wall_s"] for p in presets]), 1),
                       "val_loss_full": median([p["val_loss_full"] for p in presets]),
                       "val_loss_full_max": round(max(p["val_loss_full"] for p in presets), 4),
                       "tokens": presets[0]["tokens"], "iterations": presets[0]["iterations"],
                       "phase_seconds": presets[len(presets) // 2]["phase_seconds"]}
    if all("nanogpt" in r for r in rounds):
        ng = [r["nanogpt"] for r in rounds]
        hits = [first_at_or_below(run["curve"], "val_loss_estimate", target) for run in ng]
        table["nanogpt"] = {
            "recipe": " ".join(NANOGPT_CPU_RECIPE),
            "wall_s": round(median([run["wall_s"] for run in ng]), 1),
            "iters_to_target_estimate": median([h and h["iter"] for h in hits]),
            "val_loss_full": median([run["val_loss_full"] for run in ng])}
        ratios = [r["preset"]["wall_s"] / r["nanogpt"]["wall_s"] for r in rounds]
        table["preset_over_nanogpt_wall"] = {"rounds": [round(x, 3) for x in ratios],
                                             "median": median(ratios)}
    return table


def write_curves(rounds: list[dict], out: Path, target: float) -> None:
    rows = []
    for seed, r in enumerate(rounds):
        for name in OPTIONS:
            rows += [(name, seed, p["iter"], p["tokens"], p["step_seconds"], p["val_loss_full"])
                     for p in r["options"][name]["curve"]]
    with open(out / "curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["option", "round", "iter", "tokens", "step_seconds", "val_loss_full"])
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colours = {name: palette[i % len(palette)] for i, name in enumerate(OPTIONS)}
    for name in OPTIONS:
        for seed, r in enumerate(rounds):
            curve = r["options"][name]["curve"]
            kwargs = {"color": colours[name], "alpha": 0.8, "linewidth": 1.2,
                      "label": name if seed == 0 else None}
            axes[0].plot([p["step_seconds"] for p in curve], [p["val_loss_full"] for p in curve],
                         **kwargs)
            axes[1].plot([p["tokens"] / 1e6 for p in curve], [p["val_loss_full"] for p in curve],
                         **kwargs)
    for seed, r in enumerate(rounds):  # the preset's end: one point per round
        p = r["preset"]
        kwargs = {"color": "black", "marker": "*", "markersize": 11, "linestyle": "none",
                  "label": PRESET if seed == 0 else None}
        axes[0].plot([p["phase_seconds"]["steps"]], [p["val_loss_full"]], **kwargs)
        axes[1].plot([p["tokens"] / 1e6], [p["val_loss_full"]], **kwargs)
    for ax, xlabel in zip(axes, ("seconds in optimizer steps", "tokens trained on (millions)"),
                          strict=True):
        ax.axhline(target, color="grey", linestyle="--", linewidth=1)
        ax.set(xlabel=xlabel, ylim=(1.6, 2.6))
    axes[0].set_ylabel("whole-split validation loss (nats/char)")
    axes[0].legend()
    fig.suptitle(f"{BASE} with one speedrun option each, and {PRESET} (every seed)")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nanogpt", type=Path, default=None, help="a karpathy/nanoGPT checkout")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--target", type=float, default=1.88)
    parser.add_argument("--every", type=int, default=50, help="checkpoint interval of the options")
    parser.add_argument("--quick", action="store_true", help="one seed, 40 iterations each")
    parser.add_argument("--out", type=Path, default=Path("speedrun"))
    parser.add_argument("--from-rounds", type=Path, default=None,
                        help="summarise and draw an earlier run's OUT/rounds.json (runs nothing)")
    args = parser.parse_args()
    if args.from_rounds is not None:
        rounds = json.loads(args.from_rounds.read_text())
        table = summarise(rounds, args.target)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ablation.json").write_text(json.dumps(table, indent=2) + "\n")
        write_curves(rounds, args.out, args.target)
        print(json.dumps(table, indent=2))
        return
    seeds = 1 if args.quick else args.seeds
    iters = 40 if args.quick else None
    every = 10 if args.quick else args.every
    args.out.mkdir(parents=True, exist_ok=True)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, seeds + 1):
            work = Path(tmp) / f"round{seed}"
            r: dict = {}
            if args.nanogpt is not None:
                r["nanogpt"] = run_nanogpt(args.nanogpt.resolve(), 40 if args.quick else 2000, work)
            r["preset"] = run_preset(seed, iters, work)
            r["options"] = {name: run_option(name, seed, every, iters, work) for name in OPTIONS}
            rounds.append(r)
            print(f"round {seed} of {seeds} done", file=sys.stderr, flush=True)
    table = summarise(rounds, args.target)
    (args.out / "ablation.json").write_text(json.dumps(table, indent=2) + "\n")
    (args.out / "rounds.json").write_text(json.dumps(rounds, indent=1) + "\n")
    write_curves(rounds, args.out, args.target)
    print(json.dumps(table, indent=2))


if __name__ == "__main__":
    main()
