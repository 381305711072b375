"""A tour of lmscope's Python API, one cell per idea (run it as a script, or cell by cell in a
notebook or an editor that understands `# %%`). About a minute on 2 CPU cores.

    LMSCOPE_DATA=../shared/data python examples/tour.py [--out runs/tour]

It trains a small character-level GPT on tiny Shakespeare, samples from it, evaluates it on
another domain, and looks inside it: next-character confidence, gradient attribution over the
prompt, attention maps and their metrics, and the quality of its samples.
"""

# %% Setup: where the run goes
import argparse
import tempfile
from pathlib import Path

import lmscope
from lmscope.analysis.attention import attention_probabilities
from lmscope.analysis.attribution import attribute
from lmscope.analysis.softmax import next_token_distribution
from lmscope.metrics.attention import attention_summary
from lmscope.metrics.text_quality import summarise

parser = argparse.ArgumentParser()
parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
args = parser.parse_args()
run = args.out or Path(tempfile.mkdtemp()) / "tour"

# %% Train: a preset, a few overrides (the same keys as `lmscope train --set`)
config = lmscope.resolve_config(preset="shakespeare-char-fast", overrides=[
    "train.max_iters=300", "train.lr_decay_iters=300", "train.eval_interval=100",
    "train.checkpoint_at=100,200", "track.attention_every=50"])
result = lmscope.train(config, run, progress=False, log=lambda *a: None)
print(f"trained {result.iterations} iterations in {result.elapsed_s:.0f} s: "
      f"val loss {result.val_loss:.3f} nats/char")

# %% Read the run: metrics.jsonl as dicts
evals = [r for r in lmscope.read_metrics(run) if r["kind"] == "eval"]
print("val loss over training:", [(r["iter"], round(r["val_loss"], 3)) for r in evals])

# %% Sample: every checkpoint is a model you can load
ckpt = lmscope.load(run)
print(repr(lmscope.generate(ckpt, "ROMEO:", max_new_tokens=80, temperature=0.8, seed=0)))
early = lmscope.load(run / "checkpoints" / "iter_0000100")
print("at iteration 100:", repr(lmscope.generate(early, "ROMEO:", max_new_tokens=80, seed=0)))

# %% Evaluate: the whole validation split, in domain and out of domain
for corpus in ("shakespeare", "wikipedia"):
    ev = lmscope.evaluate(ckpt, corpus)
    print(f"{corpus}: {ev.loss:.3f} nats/char, {ev.n_unknown} characters outside the vocabulary")

# %% Softmax: how sure is the model of the next character?
ids = ckpt.tokenizer.encode("ROMEO:\nWhat light through yonder windo")
probs = next_token_distribution(ckpt, ids)
top = probs.topk(3)
print("after '...windo':", [(ckpt.tokenizer.decode([int(i)]), round(float(p), 3))
                            for p, i in zip(top.values, top.indices, strict=True)])

# %% Attribution: which characters of the prompt made it predict that?
attribution = attribute(ckpt.model, ids, None, "integrated_gradients", steps=32)
chars = [ckpt.tokenizer.decode([i]) for i in ids]
ranked = sorted(zip(attribution.scores, chars, strict=True), key=lambda x: -abs(x[0]))[:5]
print("most important characters:", [(c, round(float(s), 3)) for s, c in ranked])

# %% Attention: the maps of one prompt, and the metrics the trainer tracks
tokens, maps = attention_probabilities(ckpt, "ROMEO:\nBut soft")
import torch  # noqa: E402  (the maps come back as numpy; the metrics take tensors)

summary = attention_summary([torch.from_numpy(m)[None] for m in maps])
print(f"attention entropy {summary['entropy_bits']:.2f} bits, 90% span {summary['span90']:.1f} "
      f"tokens, head diversity {summary['head_diversity_js']:.3f} bits")
tracked = [line for line in (run / "attention.jsonl").read_text().splitlines()]
print(f"{len(tracked)} attention snapshots tracked during training in {run / 'attention.jsonl'}")

# %% Generation quality: diversity, repetition, coherence of a few samples
samples = [lmscope.generate(ckpt, "\n", max_new_tokens=200, seed=s) for s in range(4)]
quality = summarise(samples)
print({k: round(v, 3) for k, v in quality.items()
       if k in ("distinct_2_words", "repetition_2_words", "coherence") and v is not None})
