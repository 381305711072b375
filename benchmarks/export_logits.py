"""How far transformers' logits are from lmscope's for exported GPT models; prints one JSON object.

    python benchmarks/export_logits.py              # 5 configurations x 5 seeds
    python benchmarks/export_logits.py --seeds 10

For each configuration of tests/test_export.py (tied and untied head, with and without biases, no
positions) and each seed, an untrained GPT with weights drawn from N(0, 0.3) (logits that vary)
is saved, exported with `lmscope export --format hf`, loaded with AutoModelForCausalLM (its
default attention, then eager) and run on three random sequences of 32 tokens. It prints, per
attention implementation, the largest absolute logit difference of each model and their range:
the figures the README quotes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lmscope.data.tokenizers import CharTokenizer  # noqa: E402
from lmscope.export import export_hf  # noqa: E402
from lmscope.models import MODELS  # noqa: E402
from lmscope.run.checkpoint import load, save_checkpoint  # noqa: E402

CONFIGS = {"tied": {}, "bias": {"bias": True}, "untied": {"tie_weights": False},
           "bias-untied": {"bias": True, "tie_weights": False}, "no-positions": {"pos_emb": "none"}}
CHARS = CharTokenizer(list(" abcdefghijklmnopqrstuvwxyz.,\n"))


def max_differences(config: dict, seed: int, folder: Path) -> dict[str, float]:
    torch.manual_seed(seed)
    config_cls, model_cls = MODELS["gpt"]
    cfg = config_cls(vocab_size=CHARS.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=32,
                     **config)
    net = model_cls(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    save_checkpoint(folder / "ckpt", net, model_name="gpt", model_config=cfg, tokenizer=CHARS,
                    meta={"iter": 1})
    ckpt = load(folder / "ckpt", device="cpu")
    out = export_hf(ckpt, folder / "hf")
    idx = torch.randint(0, CHARS.vocab_size, (3, 32),
                        generator=torch.Generator().manual_seed(seed + 1))
    found = {}
    with torch.no_grad():
        expected = ckpt.model(idx)
        default = transformers.AutoModelForCausalLM.from_pretrained(out)
        name = getattr(default.config, "_attn_implementation", "eager") or "default"
        found[name] = float((default(idx).logits - expected).abs().max())
        eager = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
        found["eager"] = float((eager(idx).logits - expected).abs().max())
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    per_attention: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, config in CONFIGS.items():
            for seed in range(args.seeds):
                folder = Path(tmp) / f"{name}-{seed}"
                for attention, diff in max_differences(config, seed, folder).items():
                    per_attention.setdefault(attention, []).append(diff)
    print(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__,
                      "models": len(CONFIGS) * args.seeds,
                      **{attention: {"min": min(d), "max": max(d)}
                         for attention, d in per_attention.items()}}, indent=1))


if __name__ == "__main__":
    main()
