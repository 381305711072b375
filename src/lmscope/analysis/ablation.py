"""Component ablation: which components does a model need, and on which corpus?

A component is a part of the forward pass whose output can be replaced at a hook point
(docs/hooks.md): for GPT each attention head (`blocks.L.attn.hook_z`, the slice [:, :, h] of
(batch, pos, head, d_head), before the output projection), each whole attention layer
(`blocks.L.hook_attn_out`) and each MLP (`blocks.L.hook_mlp_out`); for the LSTM each layer's
hidden state (`lstm.L.hook_hidden`); for the k-gram MLP each hidden layer (`mlp.L.hook_post`).

Ablating a component replaces its activation, at every position of every window, by:

    zero      zeros.
    mean      its mean over the windows at the same position: a(b, t) -> (1/B) sum_b' a(b', t),
              the reference set being the windows measured (B of them). This is the per-position
              mean ablation of TransformerLens-style circuit work (the mean over the batch at
              each position, as in Wang et al. 2022, "Interpretability in the Wild", IOI):
              a causal model's activations depend on position (position 0 sees one token; the
              learned position embeddings), and a mean over positions would also remove that
              position-dependent part, which is not what the component reads from the text. A
              batch of identical windows therefore ablates to itself (no change).
    resample  its activation on another window at the same position: a(b, t) -> a(pi(b), t),
              with pi the fixed derangement pi(b) = (b + 1) mod B of the windows (resample
              ablation, as in causal scrubbing, Chan et al. 2022). The donor activations are
              the clean ones (only the ablated component is changed). Needs B >= 2.

Only the component is replaced; everything downstream recomputes from it. (An LSTM or k-gram
layer is the whole input of the next, so resampling any layer gives the same loss as resampling
the last: the donor window's own predictions. GPT components add to a residual stream and do
not have this property.) For each component,
on B windows of a corpus split (`lmscope.evaluate.corpus_windows`), with m_b the known targets
of window b (`Windows.target_mask()`: targets that are the tokenizer's unknown token are left
out) and l_bt the cross-entropy in nats of target t:

    clean_loss    sum_b sum_t l_bt / sum_b m_b over the known targets, without ablation
    ablated_loss  the same with the component ablated
    increase      ablated_loss - clean_loss
    increase_se   the paired standard error over windows: d_b = (m_b / mean m) * (mean over
                  window b's known targets of l_bt(ablated) - l_bt(clean)), so that mean_b d_b
                  is exactly `increase` (d_b is the plain per-window increase when every window
                  has as many known targets); increase_se = sd(d_b) / sqrt(B) (sd with B - 1;
                  NaN for one window)

Across corpora, at the last checkpoint, a component's specificity to the run's own corpus is

    specificity   increase(own corpus) - mean over the other corpora of increase(corpus),
                  se = sqrt(se_own^2 + sum_other se_c^2 / k^2) for k other corpora (the windows
                  of different corpora are independent)

`ablate(model, windows, method)` is the measurement for one model; `compute(run, corpora)` runs
it at each checkpoint on each corpus and returns an `AblationResult`; `save(dir)` writes
ablation.csv, settings.csv, heads.png (GPT), layers.png, over_training.png (several
checkpoints) and summary.md, and `load(dir)` reads the tables back.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmscope.api import run_with_cache, run_with_hooks
from lmscope.errors import LmscopeError
from lmscope.evaluate import Windows, corpus_windows
from lmscope.io import atomic_write_text
from lmscope.render import plots
from lmscope.render.progress import progress as _progress
from lmscope.render.tables import markdown_table, read_csv, write_csv
from lmscope.run.checkpoint import load, select_checkpoints
from lmscope.settings import suggest

METHODS = ("zero", "mean", "resample")
KINDS = ("head", "attn", "mlp", "lstm", "kgram")
HEADER = ["checkpoint", "iteration", "corpus", "component", "kind", "layer", "head",
          "clean_loss", "ablated_loss", "increase", "increase_se", "n_windows", "n_targets"]
TOP = 5  # components shown at each end of the specificity table


@dataclass(frozen=True)
class Component:
    """One ablatable part of a model: replaced at `hook`, the slice [:, :, index] when `index`
    is given (a GPT head), else the whole activation."""

    label: str  # "L0H1", "L0 attn", "L0 mlp", "lstm 0", "mlp 0"
    hook: str
    index: int | None
    kind: str  # head, attn, mlp, lstm or kgram
    layer: int


@dataclass
class Ablation:
    """One component ablated on one set of windows (see the module docstring)."""

    component: Component
    clean_loss: float
    ablated_loss: float
    increase: float
    increase_se: float
    n_windows: int
    n_targets: int
    per_window: torch.Tensor  # (B,) float64: d_b, whose mean is `increase`


@dataclass
class AblationRow:
    """One component ablated at one checkpoint on one corpus (a row of ablation.csv)."""

    checkpoint: str
    iteration: int
    corpus: str
    component: str
    kind: str
    layer: int
    head: int | None  # None for a layer component
    clean_loss: float
    ablated_loss: float
    increase: float
    increase_se: float
    n_windows: int
    n_targets: int

    def cells(self) -> list:
        return [self.checkpoint, self.iteration, self.corpus, self.component, self.kind,
                self.layer, "" if self.head is None else self.head, self.clean_loss,
                self.ablated_loss, self.increase, self.increase_se, self.n_windows,
                self.n_targets]


@dataclass
class Specificity:
    """How much more a component matters on the run's own corpus than on the others."""

    component: str
    own_increase: float
    own_se: float
    others_increase: float  # the mean over the other corpora
    specificity: float  # own_increase - others_increase
    se: float
    n_windows: int  # windows per corpus (the own corpus's)


@dataclass
class AblationResult:
    run: str  # the run's folder name
    trained_on: str  # the run's own corpus ("" when unknown)
    method: str
    corpora: list[str]  # as measured, the run's own first when it is among them
    rows: list[AblationRow]
    notes: list[str] = field(default_factory=list)  # said in summary.md (targets left out, ...)

    @property
    def final_iteration(self) -> int:
        return max(r.iteration for r in self.rows)

    def final_rows(self, corpus: str | None = None) -> list[AblationRow]:
        last = self.final_iteration
        return [r for r in self.rows if r.iteration == last
                and (corpus is None or r.corpus == corpus)]

    def specificity(self) -> list[Specificity]:
        """Per component at the last checkpoint, most specific to the own corpus first; empty
        unless the own corpus and at least one other were measured."""
        if self.trained_on not in self.corpora or len(self.corpora) < 2:
            return []
        rows = self.final_rows()
        own = {r.component: r for r in rows if r.corpus == self.trained_on}
        out = []
        for label, r in own.items():
            others = [o for o in rows if o.component == label and o.corpus != self.trained_on]
            k = len(others)
            mean_other = sum(o.increase for o in others) / k
            se = math.sqrt(r.increase_se ** 2 + sum(o.increase_se ** 2 for o in others) / k ** 2)
            out.append(Specificity(label, r.increase, r.increase_se, mean_other,
                                   r.increase - mean_other, se, r.n_windows))
        return sorted(out, key=lambda s: -s.specificity)

    def save(self, out_dir) -> dict[str, str]:
        """Write the tables, figures and summary.md; returns their paths by kind."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {"ablation_csv": write_csv(out / "ablation.csv", HEADER,
                                           [r.cells() for r in self.rows]),
                 "settings_csv": write_csv(out / "settings.csv", ["setting", "value"], [
                     ["run", self.run], ["trained_on", self.trained_on],
                     ["method", self.method], ["corpora", "\n".join(self.corpora)],
                     ["notes", "\n".join(self.notes)]])}
        if any(r.kind == "head" for r in self.rows):
            files["heads_png"] = _heads_plot(self, out / "heads.png")
        if any(r.kind != "head" for r in self.rows):
            files["layers_png"] = _layers_plot(self, out / "layers.png")
        if len({r.iteration for r in self.rows}) > 1:
            files["over_training_png"] = _training_plot(self, out / "over_training.png")
        files["summary_md"] = _summary(self, out / "summary.md")
        return {k: str(v) for k, v in files.items()}

    @classmethod
    def load(cls, out_dir) -> AblationResult:
        """The tables `save` wrote (numbers as written, to 6 significant digits)."""
        out = Path(out_dir)
        rows = [AblationRow(r["checkpoint"], int(r["iteration"]), r["corpus"], r["component"],
                            r["kind"], int(r["layer"]), int(r["head"]) if r["head"] else None,
                            float(r["clean_loss"]), float(r["ablated_loss"]),
                            float(r["increase"]), float(r["increase_se"]), int(r["n_windows"]),
                            int(r["n_targets"]))
                for r in read_csv(out / "ablation.csv")]
        settings = {r["setting"]: r["value"] for r in read_csv(out / "settings.csv")}
        corpora = settings["corpora"].split("\n") if settings["corpora"] else []
        notes = settings.get("notes", "").split("\n") if settings.get("notes") else []
        return cls(settings["run"], settings["trained_on"], settings["method"], corpora, rows,
                   notes)


def components(model) -> list[Component]:
    """Every ablatable component of an lmscope model, in the order of the forward pass."""
    config = model.config
    names = set(model.hook_names())
    out: list[Component] = []
    for layer in range(config.n_layer):
        if f"blocks.{layer}.attn.hook_z" in names:  # GPT
            out += [Component(f"L{layer}H{h}", f"blocks.{layer}.attn.hook_z", h, "head", layer)
                    for h in range(config.n_head)]
            out.append(Component(f"L{layer} attn", f"blocks.{layer}.hook_attn_out", None,
                                 "attn", layer))
            if f"blocks.{layer}.hook_mlp_out" in names:  # not in an attention-only model
                out.append(Component(f"L{layer} mlp", f"blocks.{layer}.hook_mlp_out", None,
                                     "mlp", layer))
        elif f"lstm.{layer}.hook_hidden" in names:
            out.append(Component(f"lstm {layer}", f"lstm.{layer}.hook_hidden", None, "lstm",
                                 layer))
        elif f"mlp.{layer}.hook_post" in names:
            out.append(Component(f"mlp {layer}", f"mlp.{layer}.hook_post", None, "kgram", layer))
    if not out:
        raise LmscopeError(f"{type(model).__name__} has no components to ablate (GPT, LSTM and "
                           "k-gram MLP models have)")
    return out


def pick_components(model, labels: Sequence[str | Component] | None) -> list[Component]:
    """The model's components named by `labels` (all of them for None), in the given order."""
    every = components(model)
    if labels is None:
        return every
    by_label = {c.label: c for c in every}
    picked = []
    for label in labels:
        if isinstance(label, Component):
            label = label.label
        if label not in by_label:
            raise LmscopeError(f"{type(model).__name__} has no component {label!r}"
                               f"{suggest(label, by_label)}; it has {', '.join(by_label)}")
        picked.append(by_label[label])
    if not picked:
        raise LmscopeError("no components to ablate: name at least one, or none for all")
    return picked


def check_method(method: str) -> None:
    if method not in METHODS:
        raise LmscopeError(f"unknown ablation method {method!r}{suggest(method, METHODS)}; "
                           f"use one of {', '.join(METHODS)}")


def _replace(component: Component, source: torch.Tensor):
    """A hook function that puts `source` (a scalar, or a tensor that broadcasts to the
    activation) in the component: the whole activation, or the head's slice [:, :, index]."""
    def fn(x: torch.Tensor, name: str) -> torch.Tensor:
        x = x.clone()
        if component.index is None:
            x[...] = source
        else:
            x[:, :, component.index] = source if source.dim() == 0 \
                else source[:, :, component.index]
        return x
    return fn


def _token_losses(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(batch, time - 1) cross-entropy in nats of each next token, float64 on the CPU."""
    logp = logits[:, :-1].double().log_softmax(-1)
    return -logp.gather(-1, ids[:, 1:, None].to(logp.device))[..., 0].cpu()


@torch.no_grad()
def ablate(model, windows: Windows, method: str = "mean",
           components: Sequence[str | Component] | None = None, *, batch_size: int = 32,
           permutation: Sequence[int] | None = None) -> list[Ablation]:
    """Each component of `model` (a bare lmscope model) ablated on `windows` by `method`
    (zero, mean or resample), one `Ablation` per component.

    `permutation`: for resample, the donor window of each window (default: the derangement
    b -> b + 1 mod B); a permutation of range(B)."""
    check_method(method)
    picked = pick_components(model, components)
    ids = windows.ids
    n = ids.size(0)
    if batch_size < 1:
        raise LmscopeError(f"batch_size must be at least 1, got {batch_size}")
    if method == "resample":
        if permutation is None:
            if n < 2:
                raise LmscopeError("resample ablation needs at least 2 windows (each takes "
                                   "another's activations); give more windows")
            permutation = [(b + 1) % n for b in range(n)]
        if sorted(int(p) for p in permutation) != list(range(n)):
            raise LmscopeError(f"the resample permutation must order the {n} windows "
                               f"(a permutation of 0..{n - 1}), got {list(permutation)}")
        perm = torch.as_tensor(list(permutation), dtype=torch.long)
    mask = windows.target_mask()
    n_known = mask.sum(1).double()  # m_b
    total = float(n_known.sum())
    if total == 0:
        raise LmscopeError(f"the windows of {windows.corpus} have no known targets (every next "
                           "token is outside the vocabulary); use another corpus")
    hooks = sorted({c.hook for c in picked})
    batches = [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    clean, caches = [], []
    for rows in batches:  # the clean pass, in the batches the ablated passes use
        logits, cache = run_with_cache(model, ids[rows], hooks, batch_size=batch_size)
        clean.append(_token_losses(logits, ids[rows]))
        caches.append(cache)
    clean_losses = torch.cat(clean)
    acts = {name: torch.cat([c[name] for c in caches]) for name in hooks}
    clean_loss = float(clean_losses[mask].sum()) / total
    out = []
    for comp in picked:
        act = acts[comp.hook]
        if method == "mean":
            # per position, over windows (in float64: identical windows give themselves back)
            reference = act.double().mean(0, keepdim=True).to(act.dtype)
        elif method == "resample":
            reference = act[perm.to(act.device)]
        ablated = []
        for rows in batches:
            if method == "zero":
                source = torch.zeros((), dtype=act.dtype, device=act.device)
            elif method == "mean":
                source = reference
            else:
                source = reference[rows]
            logits = run_with_hooks(model, ids[rows], {comp.hook: _replace(comp, source)},
                                    batch_size=batch_size)
            ablated.append(_token_losses(logits, ids[rows]))
        ablated_losses = torch.cat(ablated)
        diff = torch.where(mask, ablated_losses - clean_losses, 0.0)
        per_window = diff.sum(1) / (total / n)  # d_b = (m_b / mean m) * window b's mean increase
        ablated_loss = float(ablated_losses[mask].sum()) / total
        se = float(per_window.std(correction=1)) / math.sqrt(n) if n > 1 else math.nan
        out.append(Ablation(comp, clean_loss, ablated_loss, ablated_loss - clean_loss, se, n,
                            int(total), per_window))
    return out


def compute(run, corpora: Sequence[str], *, method: str = "mean", which: str = "final",
            windows: int = 16, device: str = "auto", components: Sequence[str] | None = None,
            batch_size: int = 32) -> AblationResult:
    """Every component (or those named) ablated by `method` at each checkpoint of `run`
    (`which`: "final" or "all") on `windows` windows of the validation split of each corpus;
    the run's own corpus is measured first when it is among `corpora`."""
    check_method(method)
    corpora = list(corpora)
    if not corpora:
        raise LmscopeError("ablation needs at least one corpus to measure on (--data)")
    paths = select_checkpoints(run, which)
    first = load(paths[0], device=device)
    picked = pick_components(first.model, components)  # every input is checked before any work
    if method == "resample" and windows < 2:
        raise LmscopeError(f"resample ablation needs at least 2 windows, got --windows "
                           f"{windows}; give more")
    texts = [corpus_windows(first, corpus, "val", windows=windows) for corpus in corpora]
    own = first.trained_on
    texts.sort(key=lambda w: w.corpus != own)  # stable: the own corpus first, the rest in order
    rows = []
    for i, path in enumerate(_progress(paths, "ablation")):
        ckpt = first if i == 0 else load(path, device=device)
        for text in texts:
            for a in ablate(ckpt.model, text, method, picked, batch_size=batch_size):
                c = a.component
                rows.append(AblationRow(ckpt.name, ckpt.iteration, text.corpus, c.label, c.kind,
                                        c.layer, c.index, a.clean_loss, a.ablated_loss,
                                        a.increase, a.increase_se, a.n_windows, a.n_targets))
    notes = [w.oov_note() for w in texts if w.oov_note()]
    return AblationResult(Path(run).name, own, method, [w.corpus for w in texts], rows, notes)


def _file_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _grid(n: int, title: str, width: float, height: float, **kwargs):
    cols = min(n, 3)
    fig, axes = plots.grid(math.ceil(n / cols), cols, title=title, width=width, height=height,
                           **kwargs)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _heads_plot(result: AblationResult, path: Path) -> Path:
    """Per corpus, layer x head: the loss increase from ablating each head at the last
    checkpoint, on one colour scale for all corpora."""
    heads = [r for r in result.final_rows() if r.kind == "head"]
    n_layer = max(r.layer for r in heads) + 1
    n_head = max(r.head for r in heads) + 1
    corpora = [c for c in result.corpora if any(r.corpus == c for r in heads)]
    grids = {}
    for corpus in corpora:
        values = np.full((n_layer, n_head), np.nan)
        for r in heads:
            if r.corpus == corpus:
                values[r.layer, r.head] = r.increase
        grids[corpus] = values
    finite = np.concatenate([v[np.isfinite(v)] for v in grids.values()])
    vmin, vmax = float(finite.min()), float(finite.max())
    fig, axes = _grid(len(corpora), f"Loss increase when a head is {result.method}-ablated: "
                      f"{result.run}, iteration {result.final_iteration}",
                      width=0.7 * n_head + 2.2, height=0.5 * n_layer + 1.6)
    image = None
    for ax, corpus in zip(axes, corpora, strict=True):
        values = grids[corpus]
        image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto",
                          vmin=vmin, vmax=vmax)
        ax.set_xticks(range(n_head), [str(h) for h in range(n_head)])
        ax.set_yticks(range(n_layer), [str(layer) for layer in range(n_layer)])
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(corpus + (" (own)" if corpus == result.trained_on else ""))
        if n_head * n_layer <= 64:
            for (layer, h), v in np.ndenumerate(values):
                if np.isfinite(v):
                    ax.text(h, layer, f"{v:.3f}", ha="center", va="center", fontsize=7,
                            color="white" if v < (vmin + vmax) / 2 else "black")
    fig.colorbar(image, ax=axes, label="loss increase (nats/token)")
    return plots.save(fig, path)


def _layers_plot(result: AblationResult, path: Path) -> Path:
    """Per corpus, a bar for each layer component (attention, MLP, LSTM or k-gram layer) at the
    last checkpoint, with its standard error."""
    layer_rows = [r for r in result.final_rows() if r.kind != "head"]
    corpora = [c for c in result.corpora if any(r.corpus == c for r in layer_rows)]
    labels = list(dict.fromkeys(r.component for r in layer_rows))
    fig, axes = _grid(len(corpora), f"Loss increase when a layer is {result.method}-ablated: "
                      f"{result.run}, iteration {result.final_iteration}",
                      width=max(3.5, 0.45 * len(labels) + 1.5), height=3.4, sharey=True)
    for ax, corpus in zip(axes, corpora, strict=True):
        by_label = {r.component: r for r in layer_rows if r.corpus == corpus}
        values = [by_label[c].increase if c in by_label else np.nan for c in labels]
        errors = [by_label[c].increase_se if c in by_label else np.nan for c in labels]
        colors = [f"C{KINDS.index(by_label[c].kind) if c in by_label else 0}" for c in labels]
        ax.bar(range(len(labels)), values, yerr=np.nan_to_num(errors), color=colors, capsize=2)
        ax.set_xticks(range(len(labels)), labels, rotation=90 if len(labels) > 6 else 0)
        ax.axhline(0.0, color="k", linewidth=0.6)
        ax.set_ylabel("loss increase (nats/token)")
        ax.set_title(corpus + (" (own)" if corpus == result.trained_on else ""))
        ax.grid(alpha=0.3, axis="y")
    return plots.save(fig, path)


def _training_plot(result: AblationResult, path: Path) -> Path:
    """Per corpus, the loss increase of each layer component over the checkpoints."""
    layer_rows = [r for r in result.rows if r.kind != "head"] or result.rows
    corpora = [c for c in result.corpora if any(r.corpus == c for r in layer_rows)]
    labels = list(dict.fromkeys(r.component for r in layer_rows))
    fig, axes = plots.panels(len(corpora), title=f"Loss increase when ablated ({result.method}) "
                             f"over training: {result.run}", width=4.8, height=3.4)
    handles = {}
    for ax, corpus in zip(axes, corpora, strict=True):
        for i, label in enumerate(labels):
            points = sorted((r.iteration, r.increase) for r in layer_rows
                            if r.corpus == corpus and r.component == label)
            if points:
                (line,) = ax.plot(*zip(*points, strict=True), marker=".",
                                  color=f"C{i % 10}")
                handles.setdefault(label, line)
        plots.iteration_axis(ax, [r.iteration for r in layer_rows])
        ax.set_ylabel("loss increase (nats/token)")
        ax.set_title(corpus + (" (own)" if corpus == result.trained_on else ""))
        ax.grid(alpha=0.3)
    plots.legend_below(fig, list(handles.values()), list(handles))
    return plots.save(fig, path)


def _summary(result: AblationResult, path: Path) -> Path:
    last = result.final_iteration
    text = (f"# Component ablation: {result.run} (trained on {result.trained_on or '?'})\n\n"
            f"Each component {result.method}-ablated on the validation windows of each corpus "
            "(module lmscope.analysis.ablation defines the measures); loss in nats per known "
            "target token, se: the paired standard error over windows (n).\n\n")
    clean = {}
    for r in result.rows:
        clean.setdefault((r.iteration, r.corpus), (r.checkpoint, r.clean_loss, r.n_windows,
                                                   r.n_targets))
    text += "## Clean loss\n\n" + markdown_table(
        ["checkpoint", "iteration", "corpus", "clean loss", "n", "targets"],
        [[ckpt, it, corpus, loss, n, t] for (it, corpus), (ckpt, loss, n, t) in clean.items()])
    text += f"\n## The components that matter most, at iteration {last}\n\n"
    top = []
    for corpus in result.corpora:
        rows = sorted(result.final_rows(corpus), key=lambda r: -r.increase)[:TOP]
        top += [[corpus, r.component, r.ablated_loss, r.increase, r.increase_se, r.n_windows]
                for r in rows]
    text += markdown_table(["corpus", "component", "ablated loss", "increase", "se", "n"], top)
    text += f"\n## Specificity to the own corpus, at iteration {last}\n\n"
    spec = result.specificity()
    if not spec:
        text += ("Not measured: it needs the run's own corpus "
                 f"({result.trained_on or 'unknown'}) and at least one other among the corpora "
                 f"({', '.join(result.corpora)}).\n")
    else:
        others = [c for c in result.corpora if c != result.trained_on]
        text += (f"Specificity = increase on {result.trained_on} minus the mean increase on "
                 f"{', '.join(others)}; positive: the component matters more on the own corpus."
                 "\n\n")
        header = ["component", "specificity", "se", f"increase on {result.trained_on}",
                  "se own", "mean increase on the others", "n (windows per corpus)"]

        def cells(s: Specificity) -> list:
            return [s.component, s.specificity, s.se, s.own_increase, s.own_se,
                    s.others_increase, s.n_windows]

        if len(spec) <= 2 * TOP:  # the two ends would overlap: every component, once
            text += (f"Every component, most specific to {result.trained_on} first:\n\n"
                     + markdown_table(header, [cells(s) for s in spec]))
        else:
            text += (f"Most specific to {result.trained_on}:\n\n"
                     + markdown_table(header, [cells(s) for s in spec[:TOP]])
                     + f"\nLeast specific to {result.trained_on} (least first):\n\n"
                     + markdown_table(header, [cells(s) for s in spec[::-1][:TOP]]))
    if result.notes:
        text += "\n" + "".join(f"Note: {note}.\n" for note in result.notes)
    atomic_write_text(path, text)
    return path
