"""What the hook points cost a forward pass that sets no hooks; prints one JSON object.

    git worktree add /tmp/before <commit before the hook points>
    python benchmarks/hooks.py --before /tmp/before            # 8 rounds
    python benchmarks/hooks.py --before /tmp/before --quick    # 1 round, fewer steps

Each round times, in a fresh process for each checkout, side by side (the machine may be shared;
the order alternates from round to round, so a drift in the machine's speed favours neither): the training step (forward, backward, AdamW) of the
shakespeare-char-cpu GPT (4 layers, 128 wide, batch 12 x block 64), and sampling 1,000 tokens at
batch size 1 with the KV cache from the same model. Medians over rounds of each checkout, their
ratio, and the median of the rounds' own after / before ratios (1.00: no cost).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(steps: int) -> dict:
    """In the child process: the lmscope on sys.path, timed."""
    import torch

    from lmscope.data.tokenizers import CharTokenizer
    from lmscope.generate import SamplingConfig, generate
    from lmscope.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    chars = "".join(chr(c) for c in range(32, 127)) + "\n"
    tokenizer = CharTokenizer(chars)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=4, n_head=4,
                          n_embd=128))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, tokenizer.vocab_size, (12, 64))
    y = torch.randint(0, tokenizer.vocab_size, (12, 64))

    def step():
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(10):  # warm up
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    train_ms = (time.perf_counter() - start) / steps * 1000
    model.eval()
    cfg = SamplingConfig(max_new_tokens=1000, temperature=0.8, seed=0)
    generate(model, tokenizer, "ROMEO:", SamplingConfig(max_new_tokens=50, seed=0))  # warm up
    start = time.perf_counter()
    generate(model, tokenizer, "ROMEO:", cfg)
    sample_tps = 1000 / (time.perf_counter() - start)
    return {"train_ms_per_step": train_ms, "sample_tokens_per_s": sample_tps}


def _child(checkout: Path, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout / "src")}
    out = subprocess.run([sys.executable, __file__, "--measure", "--steps", str(steps)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, help="a checkout of the code before the change")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=100, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.steps)))
        return
    if args.before is None or not (args.before / "src" / "lmscope").is_dir():
        parser.error("--before must be a checkout of lmscope (git worktree add DIR COMMIT)")
    rounds, steps = (1, 30) if args.quick else (args.rounds, 100)
    checkouts = {"before": args.before, "after": REPO}
    runs = {"before": [], "after": []}
    for i in range(rounds):
        for side in (("before", "after") if i % 2 == 0 else ("after", "before")):
            runs[side].append(_child(checkouts[side], steps))
    result = {"rounds": rounds, "steps": steps}
    for key in ("train_ms_per_step", "sample_tokens_per_s"):
        medians = {side: statistics.median(r[key] for r in runs[side]) for side in runs}
        paired = [a[key] / b[key] for a, b in zip(runs["after"], runs["before"], strict=True)]
        result[key] = {**{side: round(v, 3) for side, v in medians.items()},
                       "after_over_before": round(medians["after"] / medians["before"], 4),
                       "median_paired_ratio": round(statistics.median(paired), 4)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
