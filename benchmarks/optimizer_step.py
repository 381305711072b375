"""One Muon step of a GPT's block matrices: torch.optim.Muon against lmscope's BatchedMuon.

    python benchmarks/optimizer_step.py                      # the speedrun preset's model
    python benchmarks/optimizer_step.py --set model.n_embd=384 model.n_layer=6

Builds the model of a preset (with --set overrides; a vocabulary of 65, tiny shakespeare's), gives every block matrix the same random
gradient for both optimizers, and times `step()` of each in alternation, --rounds rounds of
--steps steps, at the process's thread count. Prints one JSON object: the median milliseconds of
a step of each, their ratio, and the largest difference between the two optimizers' weights
after the first step, relative to the learning rate (bfloat16 rounding: about 1e-2).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from lmscope.config import resolve_config
from lmscope.models import build_model
from lmscope.train.optimizers import BatchedMuon


def block_matrices(model) -> list[torch.nn.Parameter]:
    return [p for p in model.blocks.parameters() if p.dim() == 2]


def timed_steps(optimizer, params, grads, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shakespeare-char-speedrun")
    parser.add_argument("--set", nargs="*", default=[], dest="overrides")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    config = resolve_config(preset=args.preset, overrides=args.overrides)
    config.model.vocab_size = 65
    torch.manual_seed(0)
    model = build_model(config.model_name, config.model)
    ours_model = copy.deepcopy(model)
    theirs, ours = block_matrices(model), block_matrices(ours_model)
    grads = [torch.randn_like(p) for p in theirs]
    lr = config.train.muon_lr
    torch_muon = torch.optim.Muon(theirs, lr=lr, weight_decay=config.train.weight_decay)
    batched = BatchedMuon(ours, lr=lr, weight_decay=config.train.weight_decay)
    timed_steps(torch_muon, theirs, grads, 1)
    timed_steps(batched, ours, grads, 1)
    difference = max(float((a - b).abs().max().detach()) for a, b in zip(theirs, ours, strict=True)) / lr
    times = {"torch.optim.Muon": [], "BatchedMuon": []}
    for _ in range(args.rounds):
        times["torch.optim.Muon"].append(timed_steps(torch_muon, theirs, grads, args.steps))
        times["BatchedMuon"].append(timed_steps(batched, ours, grads, args.steps))
    medians = {k: round(statistics.median(v), 3) for k, v in times.items()}
    print(json.dumps({
        "preset": args.preset, "overrides": args.overrides, "threads": torch.get_num_threads(),
        "matrices": ["x".join(map(str, p.shape)) for p in theirs],
        "step_ms_median": medians,
        "batched_over_torch": round(medians["BatchedMuon"] / medians["torch.optim.Muon"], 3),
        "max_weight_difference_over_lr_after_one_step": round(difference, 5),
        "rounds": args.rounds, "steps_per_round": args.steps}, indent=2))


if __name__ == "__main__":
    main()
