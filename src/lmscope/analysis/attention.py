"""Attention maps of one prompt: where each head of a layer looks.

For a prompt of T tokens the model returns, for each layer, the attention probabilities
A[h, q, k] (head h, query position q, key position k <= q; each row sums to 1). This module writes
a heatmap per head (prompt tokens on both axes), a table of the keys each query attends to most,
and for each head three scores (means over the queries that have such a key):

    previous-token   A[q, q-1]          the head copies from the token just before
    self             A[q, q]            the head looks at the current token
    first-token      A[q, 0]            the head rests on the first token (a common 'sink')
    mean distance    sum_k A[q, k] (q - k)   how far back the head looks

It also writes attention.json: every layer's and head's map at each chosen checkpoint (rows
rounded to 4 decimals, row q holding keys 0..q), which the HTML report turns into a view where
hovering a token shows where each head attends from it, checkpoint by checkpoint.

`compute(run, prompt)` returns an `AttentionResult` (every layer's maps at each checkpoint);
`save(dir)` writes the files above and `load(dir)` reads attention.json back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmscope.data.chars import quiet, visible
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text
from lmscope.render import plots
from lmscope.render.progress import progress as _progress
from lmscope.render.tables import markdown_table, write_csv
from lmscope.run.checkpoint import Checkpoint, load, select_checkpoints


@torch.no_grad()
def attention_probabilities(checkpoint, prompt: str) -> tuple[list[str], list[np.ndarray]]:
    """The prompt's tokens (as text) and, per layer, its attention (heads, T, T) as numpy."""
    model = checkpoint.model
    if not hasattr(model, "forward_with_attention"):
        raise LmscopeError(f"model {checkpoint.model_name!r} has no attention to show "
                           "(attention maps are for gpt models)")
    ids = checkpoint.tokenizer.encode(prompt, unknown="error")
    if not 0 < len(ids) <= model.context_length:
        raise LmscopeError(f"the prompt has {len(ids)} tokens: give 1 to {model.context_length} "
                           "(the model's context length)")
    device = next(model.parameters()).device
    _, attentions = model.forward_with_attention(torch.tensor([ids], device=device))
    tokens = [visible(checkpoint.tokenizer.token_text(i)) for i in ids]
    return tokens, [a[0].float().cpu().numpy() for a in attentions]


def head_scores(attn: np.ndarray) -> dict[str, float]:
    """previous-token, self, first-token and mean distance of one head's (T, T) map."""
    T = attn.shape[0]
    q = np.arange(T)
    distance = (attn * (q[:, None] - q[None, :]).clip(min=0)).sum(-1)
    return {"previous_token": float(attn[q[1:], q[1:] - 1].mean()) if T > 1 else float("nan"),
            "self": float(attn[q, q].mean()),
            "first_token": float(attn[1:, 0].mean()) if T > 1 else float("nan"),
            "mean_distance": float(distance.mean())}


def parse_heads(text: str | None, n_head: int) -> list[int]:
    if not text:
        return list(range(n_head))
    try:
        heads = [int(h) for h in text.split(",") if h.strip()]
    except ValueError:
        raise LmscopeError(f"--heads takes head numbers like 0,1,2, got {text!r}") from None
    bad = [h for h in heads if not 0 <= h < n_head]
    if bad or not heads:
        raise LmscopeError(f"head {bad[0] if bad else text!r} does not exist: this model has "
                           f"heads 0 to {n_head - 1}")
    return heads


def maps_json(name: str, iteration: int, layers: list[np.ndarray]) -> dict:
    """One checkpoint's maps for attention.json: layers x heads x ragged rows (keys 0..q)."""
    def rows(a: np.ndarray) -> list[list[float]]:  # float64 first: 0.1234, not 0.12340000271
        return [np.round(a[q, : q + 1].astype(np.float64), 4).tolist() for q in range(len(a))]

    return {"checkpoint": name, "iteration": iteration,
            "layers": [[rows(a[h]) for h in range(a.shape[0])] for a in layers]}


@dataclass
class AttentionResult:
    """One prompt's attention maps at each checkpoint of a run."""

    prompt: str
    tokens: list[str]  # the prompt's tokens as text (raw, for attention.json)
    checkpoints: list[dict]  # maps_json() of each checkpoint, oldest first
    layer: int = -1  # the layer the figures and tables show (of the last checkpoint)
    heads: list[int] | None = None  # the heads they show (None: all)
    top: int = 3  # keys listed per query in top_keys.csv
    checkpoint_path: str = ""  # the last checkpoint, named in summary.md
    # the last checkpoint's maps at full precision, one (heads, T, T) array per layer, for the
    # figures and tables (attention.json rounds to 4 decimals); None after load
    final_maps: list[np.ndarray] | None = field(default=None, repr=False)

    def maps(self, layer: int, checkpoint: int = -1) -> np.ndarray:
        """(heads, T, T) attention of `layer` at a checkpoint (default the last), zeros above the
        diagonal."""
        rows = self.checkpoints[checkpoint]["layers"][layer]
        T = len(rows[0])
        out = np.zeros((len(rows), T, T))
        for h, head in enumerate(rows):
            for q, row in enumerate(head):
                out[h, q, : q + 1] = row
        return out

    def save(self, out_dir, *, skip: Sequence[str] = ()) -> dict:
        """attention_L<l>_H<h>.png, attention_L<l>.png, top_keys.csv and summary.md of the last
        checkpoint, and attention.json; returns the files, the head scores and the layer.
        Figures matching a pattern of `skip` are not drawn (plots.drawn)."""
        return _save(self, Path(out_dir), skip)

    @classmethod
    def load(cls, out_dir) -> AttentionResult:
        """attention.json: the prompt, its tokens and every checkpoint's maps."""
        d = json.loads((Path(out_dir) / "attention.json").read_text(encoding="utf-8"))
        return cls(d.get("prompt", ""), d.get("tokens", []), d.get("checkpoints", []))


def compute(run, prompt: str, *, layer: int = -1, heads: str | None = None, top: int = 3,
            which: str = "final", device: str = "auto") -> AttentionResult:
    """The maps of every layer at each checkpoint of `run` (a loaded Checkpoint, a checkpoint
    folder, or a run folder with which="final" or "all"); a bad layer or head is an error
    before the other checkpoints are read."""
    paths = [run] if isinstance(run, Checkpoint) else select_checkpoints(run, which)
    evolution = []
    for i, path in enumerate(_progress(paths, "attention")):  # one model in memory at a time
        checkpoint = path if isinstance(path, Checkpoint) else load(path, device=device)
        tokens, layers = attention_probabilities(checkpoint, prompt)
        if i == 0:  # a bad --layer or --heads is told before the other checkpoints are read
            n_layer = len(layers)
            if not -n_layer <= layer < n_layer:
                raise LmscopeError(f"layer {layer} does not exist: this model has layers 0 to "
                                   f"{n_layer - 1}")
            layer = layer % n_layer
            chosen = parse_heads(heads, layers[layer].shape[0])
        evolution.append(maps_json(checkpoint.name, checkpoint.iteration, layers))
    raw_tokens = [checkpoint.tokenizer.token_text(i) for i in checkpoint.tokenizer.encode(prompt)]
    return AttentionResult(prompt, raw_tokens, evolution, layer=layer, heads=chosen, top=top,
                           checkpoint_path=str(checkpoint.path), final_maps=layers)


def attention_probe(run, prompt: str, out_dir, *, layer: int = -1, heads: str | None = None,
                    top: int = 3, which: str = "final", device: str = "auto") -> dict:
    """Write attention_L<l>_H<h>.png per head, attention_L<l>.png (all chosen heads),
    top_keys.csv and summary.md for the last checkpoint, and attention.json with every layer at
    each checkpoint of `run` (a loaded Checkpoint, a checkpoint folder, or a run folder with
    which="final" or "all") into out_dir."""
    return compute(run, prompt, layer=layer, heads=heads, top=top, which=which,
                   device=device).save(out_dir)


def _save(result: AttentionResult, out: Path, skip: Sequence[str] = ()) -> dict:
    """The figures and tables of the last checkpoint, and attention.json."""
    tokens = [visible(t) for t in result.tokens]
    layers = result.final_maps
    if layers is None:
        layers = [result.maps(i) for i in range(len(result.checkpoints[-1]["layers"]))]
    layer = result.layer % len(layers)
    chosen = result.heads if result.heads is not None else list(range(layers[layer].shape[0]))
    top, prompt = result.top, result.prompt
    attn = layers[layer]  # the figures and tables: the last checkpoint's
    out.mkdir(parents=True, exist_ok=True)
    T = len(tokens)
    labels = [quiet(t) for t in result.tokens]  # whitespace as a quiet mark
    files = []
    for h in chosen:
        if not plots.drawn(out / f"attention_L{layer}_H{h}.png", skip):
            continue
        files.append(plots.heatmap(attn[h], labels, labels, out / f"attention_L{layer}_H{h}.png",
                                   title=f"Layer {layer}, head {h}", xlabel="key (attended to)",
                                   ylabel="query", cmap="Blues", fmt="{:.2f}",
                                   annotate=T <= 16, colorbar="attention"))
    if plots.drawn(out / f"attention_L{layer}.png", skip):
        files.append(_grid(attn, chosen, labels, layer, out / f"attention_L{layer}.png"))

    rows = []
    for h in chosen:
        for q in range(T):
            order = np.argsort(-attn[h, q, : q + 1], kind="stable")[:top]
            rows.append([layer, h, q, tokens[q], *sum(
                ([int(k), tokens[k], float(attn[h, q, k])] for k in order), []),
                *([""] * 3 * (top - len(order)))])
    header = ["layer", "head", "query_pos", "query"] + sum(
        ([f"key{i}_pos", f"key{i}", f"weight{i}"] for i in range(1, top + 1)), [])
    files.append(write_csv(out / "top_keys.csv", header, rows))
    scores = [[h, *head_scores(attn[h]).values()] for h in chosen]
    text = (f"# Attention, layer {layer}\n\nPrompt {prompt!r} ({T} tokens), checkpoint "
            f"{result.checkpoint_path}.\n\nPer head: mean attention to the previous token, to "
            "itself and to the first token, and the mean distance looked back (tokens).\n\n"
            + markdown_table(["head", "previous token", "self", "first token", "mean distance"],
                             scores)
            + "\nFor each query, the keys it attends to most (top_keys.csv):\n\n"
            + markdown_table(["head", "query", "keys (weight)"],
                             [[r[1], f"{r[2]} {r[3]}", ", ".join(
                                 f"{r[5 + 3 * i]}@{r[4 + 3 * i]} {r[6 + 3 * i]:.2f}"
                                 for i in range(top) if r[4 + 3 * i] != "")] for r in rows]))
    atomic_write_text(out / "summary.md", text)
    files.append(out / "summary.md")
    maps = {"prompt": prompt, "tokens": result.tokens, "checkpoints": result.checkpoints}
    atomic_write_text(out / "attention.json", json.dumps(maps, separators=(",", ":")))
    files.append(out / "attention.json")
    return {"files": [str(f) for f in files], "scores": scores, "layer": layer}


def _grid(attn: np.ndarray, heads: list[int], labels: list[str], layer: int, path: Path) -> Path:
    """attention_L<l>.png: the chosen heads' maps, two to a row, the prompt's tokens on both
    axes (every k-th where there are too many to read) and one colour bar."""
    T = len(labels)
    cols = min(2, len(heads))
    rows = -(-len(heads) // cols)
    side = 5.0 if T > 24 else 3.6
    fig, axes = plots.grid(rows, cols, title=f"Layer {layer}: attention of each query (row) to "
                           "each key (column)", width=side + 0.4, height=side)
    step = max(1, -(-T // 64))  # at most 64 labels an axis
    ticks = list(range(0, T, step))
    image = None
    for i, ax in enumerate(ax for row in axes for ax in row):
        if i >= len(heads):
            ax.set_visible(False)
            continue
        image = ax.imshow(attn[heads[i]], cmap="Blues", vmin=0, vmax=1)
        ax.set_title(f"head {heads[i]}", fontsize=10)
        size = 7 if T <= 48 else 5.5
        ax.set_xticks(ticks, [labels[k] for k in ticks], fontsize=size, rotation=90)
        ax.set_yticks(ticks, [labels[k] for k in ticks], fontsize=size)
        ax.tick_params(length=2, pad=1)
        ax.set_xlabel("key", fontsize=9)
        ax.set_ylabel("query", fontsize=9)
    fig.colorbar(image, ax=[ax for row in axes for ax in row], shrink=0.6,
                 label="attention weight")
    return plots.save(fig, path)
