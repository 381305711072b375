"""What the hook points cost a forward pass that sets no hooks; prints one JSON object.

    python benchmarks/hooks.py                      # against f020ef5, the commit before hooks
    python benchmarks/hooks.py --before COMMIT --blocks 200 --threads 1

Both versions of the GPT run in one process, side by side: the model code of the commit before
the hook points (models/gpt.py, read with `git show COMMIT:...`) and today's, with the same
weights. They alternate in short blocks (a training block, then a sampling block, of one model
and then of the other, the order switching from block to block), so that a change in the
machine's speed (another process on a shared machine) reaches both alike. Timed:

    train        the training step (forward, backward, AdamW) of the shakespeare-char-cpu GPT
                 (4 layers, 128 wide, batch 12 x block 64), `steps` steps per block
    decode       the step sampling repeats: one token through the model with the KV cache, at
                 batch size 1, `tokens` of them per block (the sampling itself, the same code
                 for both, is left out: its randomness only adds noise)

Reported: the medians over blocks of each version, and the median of the blocks' own
after / before ratios of milliseconds (training) or microseconds (decoding) per step, with their
interquartile range: above 1 is slower, 1.000 is no cost.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from lmscope.models.gpt import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]
BEFORE = "f020ef5"  # the last commit before the hook points (1868a9b)


def old_gpt_module(commit: str):
    """models/gpt.py as it was at `commit`, imported as a module of its own."""
    source = subprocess.run(["git", "show", f"{commit}:src/lmscope/models/gpt.py"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    name = f"gpt_at_{commit}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(source, f"{commit}:models/gpt.py", "exec"), module.__dict__)
    return module


def models(commit: str):
    config = dict(vocab_size=96, block_size=64, n_layer=4, n_head=4, n_embd=128)
    torch.manual_seed(0)
    after = GPT(GPTConfig(**config))
    old = old_gpt_module(commit)
    before = old.GPT(old.GPTConfig(**config))
    before.load_state_dict(after.state_dict())
    return {"before": before, "after": after}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default=BEFORE, help="the commit before the change")
    parser.add_argument("--blocks", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5, help="training steps per block")
    parser.add_argument("--tokens", type=int, default=60, help="decoded tokens per block")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 is the least noisy")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    nets = models(args.before)
    x = torch.randint(0, 96, (12, 64), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 96, (12, 64), generator=torch.Generator().manual_seed(2))
    optimizers = {side: torch.optim.AdamW(m.parameters(), lr=1e-3) for side, m in nets.items()}
    decoders = {side: copy.deepcopy(m).eval() for side, m in nets.items()}
    token = torch.tensor([[5]])

    def train(side: str) -> float:
        model, optimizer = nets[side], optimizers[side]
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return (time.perf_counter() - start) / args.steps * 1000

    @torch.no_grad()
    def decode(side: str) -> float:
        model = decoders[side]
        cache = model.new_cache(1)
        start = time.perf_counter()
        for _ in range(args.tokens):
            model.decode(token, cache)
        return (time.perf_counter() - start) / args.tokens * 1e6

    for side in nets:  # warm up
        train(side)
        decode(side)
    times = {("train", s): [] for s in nets} | {("decode", s): [] for s in nets}
    for block in range(args.blocks):
        order = ("before", "after") if block % 2 == 0 else ("after", "before")
        for side in order:
            times["train", side].append(train(side))
        for side in order:
            times["decode", side].append(decode(side))
    result = {"before": args.before, "blocks": args.blocks, "steps_per_block": args.steps,
              "tokens_per_block": args.tokens, "threads": torch.get_num_threads()}
    for kind, unit in (("train", "ms_per_step"), ("decode", "us_per_token")):
        b, a = times[kind, "before"], times[kind, "after"]
        ratios = sorted(ai / bi for ai, bi in zip(a, b, strict=True))
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        result[kind] = {f"before_{unit}": round(statistics.median(b), 3),
                        f"after_{unit}": round(statistics.median(a), 3),
                        "median_paired_ratio": round(statistics.median(ratios), 4),
                        "ratio_interquartile": [round(q1, 4), round(q3, 4)]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
