"""Generation probe: how good, how fast and how attentive a model's samples are, per checkpoint.

For each checkpoint of a run, `generation_probe` draws `num_samples` samples of `max_new_tokens`
tokens one at a time (batch size 1, seeds seed, seed+1, ...; the seed's inference setting) and
records:

- sampling speed: generated tokens per second of wall-clock sampling time;
- generation quality (metrics/text_quality.py): distinct-n over characters and words pooled
  across the samples, the repetition rate and the coherence of each sample;
- generation-time attention (gpt models): the model reads each sample (prompt + generated text,
  its last context-length tokens) and its attention maps are summarised with the same metrics the
  trainer tracks (metrics/attention.py). In a causal model these are exactly the
  attention rows the model used when it generated those tokens;
- training-time attention at that checkpoint's iteration, from RUN/attention.jsonl when the run
  tracked it, so the two can be compared side by side.

Then it correlates (analysis/correlation.py) each sample's attention metrics with its quality
metrics, and the run's tracked attention metrics with its validation loss over training.

`compute(run)` returns a `GenerationResult`; `save(dir)` writes (`load(dir)` reads the tables back):

    generation.csv / .md          one row per checkpoint: speed, quality, attention (gen. and train)
    samples.csv                   one row per sample: its quality and attention metrics
    samples/<checkpoint>.md       the samples' text
    generation.png                quality and attention over training iterations
    correlation_samples.csv/.md   per-sample attention vs generation quality
    correlation_loss.csv/.md      tracked attention vs validation loss (runs with attention.jsonl)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmscope.analysis.correlation import (
    ATTENTION_METRICS,
    attention_loss_correlations,
    attention_with_loss,
    write_correlations,
)
from lmscope.api import generate
from lmscope.generate import DEFAULT_TEMPERATURE
from lmscope.io import atomic_write_text
from lmscope.metrics import text_quality as quality
from lmscope.metrics.attention import attention_summary
from lmscope.metrics.correlation import correlate
from lmscope.render import plots
from lmscope.render.progress import progress as _progress
from lmscope.render.tables import markdown_table, read_csv, write_csv
from lmscope.run.checkpoint import load, select_checkpoints
from lmscope.run.run_dir import RunDir

QUALITY = ("distinct_1_chars", "distinct_2_chars", "distinct_3_chars", "distinct_4_chars",
           "distinct_1_words", "distinct_2_words", "distinct_3_words", "distinct_4_words",
           "repetition_4_chars", "repetition_1_words", "repetition_2_words", "coherence")


@dataclass
class GenerationResult:
    checkpoints: list[dict] = field(default_factory=list)  # one row per checkpoint
    samples: list[dict] = field(default_factory=list)  # one row per sample
    texts: dict[str, list[str]] = field(default_factory=dict)  # checkpoint name -> samples
    correlation_samples: list[dict] = field(default_factory=list)
    correlation_loss: list[dict] = field(default_factory=list)

    def save(self, out_dir, *, title: str = "") -> None:
        write_generation(self, out_dir, title=title)

    @classmethod
    def load(cls, out_dir) -> GenerationResult:
        """The per-checkpoint and per-sample tables (numbers as written; empty cells None)."""
        out = Path(out_dir)
        return cls(checkpoints=[{k: _cell(v) for k, v in r.items()}
                                for r in read_csv(out / "generation.csv")],
                   samples=[{k: _cell(v) for k, v in r.items()}
                            for r in read_csv(out / "samples.csv")])


def _cell(text: str):
    """A CSV cell as it was written: None, an int, a float or a string."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@torch.no_grad()
def sample_attention(checkpoint, text: str) -> dict | None:
    """Attention metrics of the model reading `text` (its last context-length tokens)."""
    model = checkpoint.model
    if not hasattr(model, "forward_with_attention"):
        return None
    ids = checkpoint.tokenizer.encode(text, unknown="unk")[-model.context_length:]
    if len(ids) < 2:
        return None
    device = next(model.parameters()).device
    _, attentions = model.forward_with_attention(torch.tensor([ids], device=device))
    summary = attention_summary([a.float() for a in attentions])
    return {m: summary[m] for m in ATTENTION_METRICS}


def _training_attention(tracked: list[dict], it) -> dict:
    """The tracked attention metrics at the last capture at or before iteration `it`."""
    if it is None:
        return {}
    rows = [r for r in tracked if r.get("iter", 0) <= it]
    if not rows:
        return {}
    last = max(rows, key=lambda r: r["iter"])
    return {f"train_{m}": last.get(m) for m in ATTENTION_METRICS}


def compute(run: str | Path, *, num_samples: int = 8, prompt: str = "\n",
            max_new_tokens: int = 200, temperature: float = DEFAULT_TEMPERATURE, top_k: int | None = None,
            seed: int = 0, which: str = "all", device: str = "auto",
            log=print) -> GenerationResult:
    run = Path(run)
    run_dir = RunDir(run if RunDir(run).checkpoints_dir.is_dir() else run.parent.parent)
    result = GenerationResult()
    tracked = run_dir.attention()  # training-time attention, read once
    for path in _progress(select_checkpoints(run, which), "generation"):
        ckpt = load(path, device=device)
        texts, seconds = [], 0.0
        for i in range(num_samples):
            start = time.perf_counter()
            texts.append(generate(ckpt, prompt, max_new_tokens=max_new_tokens,
                                  temperature=temperature, top_k=top_k, seed=seed + i))
            seconds += time.perf_counter() - start
        it = ckpt.meta.get("iter")
        row = {"checkpoint": path.name, "iter": it, "val_loss": ckpt.meta.get("val_loss"),
               "tokens_per_s": num_samples * max_new_tokens / max(seconds, 1e-9),
               **quality.summarise(texts)}
        per_sample_attention = []
        for i, text in enumerate(texts):
            attention = sample_attention(ckpt, prompt + text) or {}
            per_sample_attention.append(attention)
            result.samples.append({"checkpoint": path.name, "iter": it, "sample": i,
                                   **quality.sample_metrics(text), **attention})
        for m in ATTENTION_METRICS:
            values = [a[m] for a in per_sample_attention if m in a]
            row[f"gen_{m}"] = sum(values) / len(values) if values else None
        row.update(_training_attention(tracked, it))
        result.checkpoints.append(row)
        result.texts[path.name] = texts
        log(f"{path.name}: {row['tokens_per_s']:.1f} tokens/s, distinct-2 words "
            f"{row['distinct_2_words']:.3f}, repetition-2 words {row['repetition_2_words']:.3f}"
            + (f", attention entropy {row['gen_entropy_bits']:.2f} bits"
               if row.get("gen_entropy_bits") is not None else ""))
    attention_columns = [m for m in ATTENTION_METRICS if any(m in s for s in result.samples)]
    result.correlation_samples = correlate(
        {m: [s.get(m) for s in result.samples] for m in attention_columns},
        {q: [s.get(q) for s in result.samples] for q in QUALITY})
    if tracked:
        result.correlation_loss = attention_loss_correlations(
            attention_with_loss(tracked, run_dir.metrics()))
    return result


generation_probe = compute  # its name before the probes shared one; kept for callers


def write_generation(result: GenerationResult, out_dir: str | Path, *, title: str = "") -> None:
    out_dir = Path(out_dir)
    cols = list(dict.fromkeys(k for row in result.checkpoints for k in row))
    write_csv(out_dir / "generation.csv", cols, [[r.get(c) for c in cols]
                                                  for r in result.checkpoints])
    shown = ["checkpoint", "iter", "val_loss", "tokens_per_s", "distinct_2_words",
             "repetition_2_words", "coherence", "gen_entropy_bits", "train_entropy_bits",
             "gen_span90", "train_span90"]
    shown = [c for c in shown if c in cols]
    atomic_write_text(out_dir / "generation.md", f"# Generation {title}\n\n" + markdown_table(
        shown, [["" if r.get(c) is None else r.get(c) for c in shown]
                for r in result.checkpoints]))
    scols = list(dict.fromkeys(k for row in result.samples for k in row))
    write_csv(out_dir / "samples.csv", scols, [[r.get(c) for c in scols] for r in result.samples])
    for name, texts in result.texts.items():
        body = "\n".join(f"## sample {i}\n\n```text\n{t}\n```\n" for i, t in enumerate(texts))
        atomic_write_text(out_dir / "samples" / f"{name}.md", f"# {name}\n\n{body}")
    write_correlations(result.correlation_samples, out_dir, "correlation_samples",
                       "Per-sample attention vs generation quality")
    if result.correlation_loss:
        write_correlations(result.correlation_loss, out_dir, "correlation_loss",
                           "Attention metrics vs validation loss over training")
    _plot(result, out_dir / "generation.png", title)


def _plot(result: GenerationResult, path: Path, title: str) -> None:
    rows = [r for r in result.checkpoints if r.get("iter") is not None]
    x = [r["iter"] for r in rows]
    fig, axes = plots.panels(3, title=f"Generation over training {title}".strip())
    for key in ("distinct_1_words", "distinct_2_words", "distinct_4_chars"):
        axes[0].plot(x, [r[key] for r in rows], marker=".", label=key)
    axes[0].set_title("distinct-n (pooled)")
    for key in ("repetition_2_words", "repetition_4_chars", "coherence"):
        axes[1].plot(x, [r.get(key) if r.get(key) is not None else float("nan") for r in rows],
                     marker=".", label=key)
    axes[1].set_title("repetition and coherence")
    for key in ("gen_entropy_bits", "train_entropy_bits"):
        if any(r.get(key) is not None for r in rows):
            axes[2].plot(x, [r.get(key) if r.get(key) is not None else float("nan")
                             for r in rows], marker=".", label=key)
    axes[2].set_title("attention entropy (bits)")
    plots.finish_axes(axes)
    plots.save(fig, path)
