"""What each attribution method costs per prompt; prints one JSON object.

    python benchmarks/attribution.py                 # 5 repeats
    python benchmarks/attribution.py --repeats 3 --steps 32

The model is the shakespeare-char-cpu GPT (4 layers, 4 heads, 128 wide, context 64; random
weights: the cost does not depend on them), in eval mode on the CPU. Each method attributes the
prediction after a prompt of `tokens` characters (64, the whole context, by default; exact
Shapley values on a 6-token prompt, the longest it takes), with the zero baseline and `steps`
steps or samples where the method has them. Reported per method: the median seconds of one
prompt over `repeats` runs (after one warm-up), and the model passes that implies against one
forward pass of the same prompt.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from lmscope.analysis.attribution import METHODS, SHAPLEY_EXACT_MAX, attribute
from lmscope.config import resolve_config
from lmscope.models import build_model


def seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = resolve_config(preset="shakespeare-char-cpu", overrides=["train.device=cpu"])
    config.model.vocab_size = 65
    model = build_model(config.model_name, config.model).eval()
    generator = torch.Generator().manual_seed(0)
    long = torch.randint(1, 65, (args.tokens,), generator=generator).tolist()
    short = long[:SHAPLEY_EXACT_MAX]
    with torch.no_grad():
        forward = seconds(lambda: model(torch.tensor([long])), args.repeats)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(),
           "model": "shakespeare-char-cpu", "params": model.num_params(),
           "steps": args.steps, "repeats": args.repeats, "forward_s": round(forward, 5),
           "methods": {}}
    for method in METHODS:
        ids = short if method == "shapley_exact" else long
        s = seconds(lambda m=method, i=ids: attribute(model, i, 1, m, steps=args.steps),
                    args.repeats)
        out["methods"][method] = {"prompt_tokens": len(ids), "seconds": round(s, 4),
                                  "forward_passes_equivalent": round(s / forward, 1)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
