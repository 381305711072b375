"""How a CPU's threads share evaluation: one batch on every thread (torch's intra-op threads)
against one thread per batch, several batches at once (lmscope.device.one_thread_each).

    python benchmarks/threads.py                       # the shakespeare-char-cpu model
    python benchmarks/threads.py --preset shakespeare-char --rounds 3

Builds the preset's model (random weights; the speed does not depend on them) and times, in
alternation for --rounds rounds at the process's thread count:
- `eval`: the whole-split loss of --tokens random tokens (lmscope.metrics.losses.token_nll,
  batches of 32 windows);
- `masked`: faithfulness's masked inputs, --masks random masks of a 32-token prompt, last-position
  probabilities (lmscope.analysis.faithfulness.masked_probabilities).
Prints one JSON object: the median tokens/s (or masks/s) of each way, their ratio, and whether the
two ways' results were equal (they may differ in float32's last bits; one thread per batch gives
the same bits on any thread count).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

import lmscope.analysis.faithfulness as faithfulness
import lmscope.metrics.losses as losses
from lmscope.config import resolve_config
from lmscope.device import one_thread_each
from lmscope.models import build_model


def all_threads_each(fn, items, device="cpu") -> list:
    """Before lmscope.device.one_thread_each: one item after another, each on every thread."""
    return [fn(item) for item in items]


def timed(fn, way) -> tuple[float, object]:
    """Seconds of fn() with `way` as the modules' one_thread_each, and what fn returned."""
    losses.one_thread_each = faithfulness.one_thread_each = way
    try:
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out
    finally:
        losses.one_thread_each = faithfulness.one_thread_each = one_thread_each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shakespeare-char-cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--masks", type=int, default=2_000)
    args = parser.parse_args()
    config = resolve_config(preset=args.preset, data="shakespeare")
    config.model.vocab_size = 65
    torch.manual_seed(0)
    model = build_model(config.model_name, config.model).eval()
    block = config.model.block_size
    tokens = np.random.default_rng(0).integers(0, 65, args.tokens).astype(np.uint16)
    prompt = 32 if block >= 32 else block
    with torch.no_grad():
        x = model.embed(torch.randint(0, 65, (1, prompt)))
    b = torch.zeros_like(x)
    masks = np.random.default_rng(1).random((args.masks, prompt)) < 0.5

    jobs = {
        "eval": (lambda: losses.token_nll(model, tokens, block_size=block), args.tokens),
        "masked": (lambda: faithfulness.masked_probabilities(model, x, b, masks, 0), args.masks),
    }
    ways = {"all_threads_each": all_threads_each, "one_thread_each": one_thread_each}
    result = {"preset": args.preset, "threads": torch.get_num_threads(), "rounds": args.rounds}
    for job, (fn, size) in jobs.items():
        seconds = {way: [] for way in ways}
        outputs = {}
        timed(fn, one_thread_each)  # warm-up
        for _ in range(args.rounds):
            for way, impl in ways.items():
                s, outputs[way] = timed(fn, impl)
                seconds[way].append(s)
        per_s = {way: size / statistics.median(s) for way, s in seconds.items()}
        a, b_ = (outputs[way] for way in ways)
        result[job] = {
            **{f"{way}_per_s": round(v) for way, v in per_s.items()},
            "ratio": round(per_s["one_thread_each"] / per_s["all_threads_each"], 3),
            "equal": bool(np.array_equal(np.asarray(a, dtype=object), np.asarray(b_, dtype=object))
                          if job == "eval" else np.array_equal(a, b_)),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
