"""Activation patching: which activations carry the difference between two prompts?

Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", section 2.1)
and its practice as set out by Heimersheim & Nanda 2024 ("How to use and interpret activation
patching", arXiv:2404.15255): run a clean prompt and a corrupted prompt of the same number of
tokens; then run the corrupted prompt again with one activation (a component at a position)
replaced by its value in the clean run ("denoising"), and measure how much of the clean
behaviour comes back. All measures are read at the last position:

    metric       logit(target) - logit(foil) (metric "logit_diff", with a foil: Heimersheim &
                 Nanda's recommended logit difference), or log p(target) (metric "logprob",
                 natural log of the softmax, without a foil)
    clean        the metric of the clean run; corrupt: of the corrupted run
    patched      the metric of the corrupted run with one site patched from the clean run
    score        (patched - corrupt) / (clean - corrupt): 1 the patch restores all of the clean
                 metric, 0 it changes nothing, negative it moves the metric further away; NaN when
                 |clean - corrupt| < NORMALISER_EPS (nothing to restore; summary.md says so)

Sites (`Site`: a kind, a layer, a head, a position; position None: every position at once):

    GPT      resid_pre L     `blocks.L.hook_resid_pre` at one position, L = 0..n_layer-1
             resid_post L    `blocks.L.hook_resid_post` at one position, for the last layer only
                             (the residual stream the final norm and the head read)
             attn_out L      `blocks.L.hook_attn_out` at one position
             mlp_out L       `blocks.L.hook_mlp_out` at one position
             head L.h        head h's output `blocks.L.attn.hook_z[:, :, h]`, all positions
    LSTM     hidden L        `lstm.L.hook_hidden` at one position. The hooked LSTM replaces the
                             hidden state only where the next layer and the head read it; layer
                             L's own recurrence goes on with the state it computed (models/lstm.py
                             `_run_hooked`). So a patch at layer L, position t changes the input of
                             layer L+1 at t, which then flows forward in time through the
                             recurrences of layers L+1.. only; a patch of the last layer changes
                             the logits at t alone, so only its last position can move the metric.
                             (It is not Meng et al.'s restore-the-whole-state: the cell state and
                             layer L's own later states stay corrupt.)
    k-gram   input           `hook_input` at one position (that position's k input vectors)
             mlp_post L      `mlp.L.hook_post` at one position
             input_token     the slot of `hook_input` at the last position that holds the vector
                             of the token at `position` (one of the last k): which of the k tokens
                             the prediction reads carries the difference. A k-gram MLP computes
                             each position from its own window alone, so `input` and `mlp_post`
                             patches at any position but the last change nothing, by construction.

`patch(model, clean_ids, corrupt_ids, target_id, foil_id)` returns a `PatchingResult` (one row
per site) for one model, running `batch_size` patched copies of the corrupted prompt per forward
pass (one site per batch row). `compute(run, clean, corrupt, target, foil)` does it at each
checkpoint of a run and returns a `PatchingProbeResult`; `save(dir)` writes patching.csv,
metrics.csv, tokens.csv, heatmaps (layer x position per kind of site, layer x head) at the last
checkpoint and summary.md; `load(dir)` reads the tables back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lmscope.api import run_with_cache, run_with_hooks
from lmscope.data.chars import visible
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text
from lmscope.render import plots
from lmscope.render.progress import progress as _progress
from lmscope.render.tables import markdown_table, read_csv, write_csv
from lmscope.run.checkpoint import load, select_checkpoints

NORMALISER_EPS = 1e-6  # |clean - corrupt| below this: the score is NaN (nothing to restore)
TOP_SITES = 10  # sites listed in summary.md
HEADER = ["checkpoint", "iteration", "kind", "layer", "head", "position", "hook", "metric",
          "score"]
METRICS_HEADER = ["checkpoint", "iteration", "metric_name", "target", "foil", "clean_metric",
                  "corrupt_metric"]
TOKENS_HEADER = ["position", "clean", "corrupt"]

# kind -> hook name (with {L} for the layer)
HOOKS = {"resid_pre": "blocks.{L}.hook_resid_pre", "resid_post": "blocks.{L}.hook_resid_post",
         "attn_out": "blocks.{L}.hook_attn_out", "mlp_out": "blocks.{L}.hook_mlp_out",
         "head": "blocks.{L}.attn.hook_z", "hidden": "lstm.{L}.hook_hidden",
         "input": "hook_input", "mlp_post": "mlp.{L}.hook_post", "input_token": "hook_input"}
# kind -> the figure it is drawn in
FIGURES = {"resid_pre": "resid", "resid_post": "resid", "attn_out": "attn_out",
           "mlp_out": "mlp_out", "head": "heads", "hidden": "hidden", "input": "kgram",
           "mlp_post": "kgram", "input_token": "kgram"}


@dataclass(frozen=True)
class Site:
    """One activation to patch: `kind` (see the module docstring), its layer and head (None
    where the kind has none) and its position (None: every position at once)."""

    kind: str
    layer: int | None = None
    head: int | None = None
    position: int | None = None

    @property
    def hook(self) -> str:
        if self.kind not in HOOKS:
            raise LmscopeError(f"unknown site kind {self.kind!r}; kinds are "
                               f"{', '.join(HOOKS)}")
        return HOOKS[self.kind].format(L=self.layer)

    @property
    def label(self) -> str:
        """The row of the heatmap: kind and layer (`resid_pre 0`, `input`)."""
        return self.kind if self.layer is None else f"{self.kind} {self.layer}"

    def mask(self, shape: tuple[int, ...], k: int = 1) -> torch.Tensor:
        """Where this site sits in one row's activation of `shape` (batch dimension left out),
        as a boolean tensor of that shape; `k` is the k-gram model's window (input_token)."""
        mask = torch.zeros(shape, dtype=torch.bool)
        n_pos = shape[0]
        if self.position is not None and not 0 <= self.position < n_pos:
            raise LmscopeError(f"site {self.label} at position {self.position}: the prompts have "
                               f"positions 0 to {n_pos - 1}")
        if self.kind == "head":
            if self.head is None or not 0 <= self.head < shape[1]:
                raise LmscopeError(f"site {self.label}: head {self.head} does not exist; the "
                                   f"layer has heads 0 to {shape[1] - 1}")
            mask[slice(None) if self.position is None else self.position, self.head] = True
        elif self.kind == "input_token":
            slot = None if self.position is None else self.position - (n_pos - k)
            if slot is None or not 0 <= slot < k:
                raise LmscopeError(f"site input_token at position {self.position}: the last "
                                   f"window holds positions {max(0, n_pos - k)} to {n_pos - 1}")
            width = shape[-1] // k
            mask[n_pos - 1, slot * width:(slot + 1) * width] = True
        else:
            mask[slice(None) if self.position is None else self.position] = True
        return mask


@dataclass
class PatchRow:
    """One patched site of one model (a row of patching.csv without the checkpoint)."""

    kind: str
    layer: int | None
    head: int | None
    position: int | None  # None: every position at once
    hook: str
    metric: float  # the patched run's metric
    score: float  # (metric - corrupt) / (clean - corrupt); NaN when clean == corrupt

    @property
    def site(self) -> Site:
        return Site(self.kind, self.layer, self.head, self.position)


@dataclass
class PatchingResult:
    """Every site of one model: the clean and corrupt metrics and one row per patched site."""

    metric_name: str  # "logit_diff" (with a foil) or "logprob"
    clean_metric: float
    corrupt_metric: float
    rows: list[PatchRow]
    checkpoint: str = ""
    iteration: int = 0

    @property
    def normaliser(self) -> float:
        """clean - corrupt, or NaN when they are closer than NORMALISER_EPS."""
        diff = self.clean_metric - self.corrupt_metric
        return diff if abs(diff) >= NORMALISER_EPS else math.nan

    def score(self, site: Site) -> float:
        for r in self.rows:
            if r.site == site:
                return r.score
        raise LmscopeError(f"no row for site {site}")


@dataclass
class PatchingProbeResult:
    """`patch` at each checkpoint of a run, with the prompts' tokens."""

    run: str  # the run's folder name
    corpus: str  # what it was trained on
    clean_tokens: list[str]  # token texts, as the tokenizer gives them
    corrupt_tokens: list[str]
    target: str
    foil: str | None
    results: list[PatchingResult]  # oldest checkpoint first

    @property
    def title(self) -> str:
        return f"{self.run} (trained on {self.corpus or '?'})"

    def save(self, out_dir) -> dict[str, str]:
        """Write the tables, the heatmaps of the last checkpoint and summary.md; returns their
        paths by kind."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {
            "patching_csv": write_csv(out / "patching.csv", HEADER, [
                [res.checkpoint, res.iteration, r.kind, _cell(r.layer), _cell(r.head),
                 _cell(r.position), r.hook, r.metric, r.score]
                for res in self.results for r in res.rows]),
            "metrics_csv": write_csv(out / "metrics.csv", METRICS_HEADER, [
                [res.checkpoint, res.iteration, res.metric_name, self.target,
                 "" if self.foil is None else self.foil, res.clean_metric, res.corrupt_metric]
                for res in self.results]),
            "tokens_csv": write_csv(out / "tokens.csv", TOKENS_HEADER, [
                [i, c, k] for i, (c, k) in enumerate(
                    zip(self.clean_tokens, self.corrupt_tokens, strict=True))]),
        }
        final = self.results[-1]
        for figure in dict.fromkeys(FIGURES[r.kind] for r in final.rows):
            files[f"{figure}_png"] = _heatmap(self, final, figure, out / f"patching_{figure}.png")
        files["summary_md"] = _summary(self, out / "summary.md")
        return {k: str(v) for k, v in files.items()}

    @classmethod
    def load(cls, out_dir) -> PatchingProbeResult:
        """The tables `save` wrote (numbers as written, to 6 significant digits); the run's name
        and corpus are not in them and come back empty."""
        out = Path(out_dir)
        tokens = read_csv(out / "tokens.csv")
        metrics = read_csv(out / "metrics.csv")
        rows: dict[str, list[PatchRow]] = {}
        for r in read_csv(out / "patching.csv"):
            rows.setdefault(r["checkpoint"], []).append(PatchRow(
                r["kind"], _int(r["layer"]), _int(r["head"]), _int(r["position"]), r["hook"],
                float(r["metric"]), float(r["score"])))
        results = [PatchingResult(m["metric_name"], float(m["clean_metric"]),
                                  float(m["corrupt_metric"]), rows.get(m["checkpoint"], []),
                                  m["checkpoint"], int(m["iteration"])) for m in metrics]
        first = metrics[0] if metrics else {"target": "", "foil": "", "metric_name": "logprob"}
        return cls("", "", [t["clean"] for t in tokens], [t["corrupt"] for t in tokens],
                   first["target"],
                   first["foil"] if first["metric_name"] == "logit_diff" else None, results)


def _cell(value: int | None):
    return "" if value is None else value


def _int(text: str) -> int | None:
    return None if text == "" else int(text)


def architecture(model) -> str:
    """"gpt", "lstm" or "kgram", from the model's hook points."""
    names = set(model.hook_names())
    if "blocks.0.hook_resid_pre" in names:
        return "gpt"
    if "lstm.0.hook_hidden" in names:
        return "lstm"
    if "hook_input" in names and "mlp.0.hook_post" in names:
        return "kgram"
    raise LmscopeError(f"activation patching does not know {type(model).__name__}: it patches "
                       "GPT, LSTM and k-gram MLP models")


def sites(model, n_positions: int) -> list[Site]:
    """The sites `patch` patches by default for a prompt of `n_positions` tokens (the module
    docstring lists them), in the order of the forward pass within each kind."""
    arch, n_layer, positions = architecture(model), model.config.n_layer, range(n_positions)
    if arch == "gpt":
        found = [Site("resid_pre", layer, None, p) for layer in range(n_layer) for p in positions]
        found += [Site("resid_post", n_layer - 1, None, p) for p in positions]
        names = set(model.hook_names())
        for kind in ("attn_out", "mlp_out"):  # an attention-only model has no MLP outputs
            found += [Site(kind, layer, None, p) for layer in range(n_layer) for p in positions
                      if f"blocks.{layer}.hook_{kind}" in names]
        return found + [Site("head", layer, h) for layer in range(n_layer)
                        for h in range(model.config.n_head)]
    if arch == "lstm":
        return [Site("hidden", layer, None, p) for layer in range(n_layer) for p in positions]
    found = [Site("input", None, None, p) for p in positions]
    found += [Site("mlp_post", layer, None, p) for layer in range(n_layer) for p in positions]
    k = model.config.k
    return found + [Site("input_token", None, None, p)
                    for p in range(max(0, n_positions - k), n_positions)]


def metric(logits: torch.Tensor, target_id: int, foil_id: int | None = None) -> torch.Tensor:
    """The metric of last-position logits (..., vocab), in float64: logit(target) - logit(foil),
    or log p(target) without a foil."""
    logits = logits.double()
    if foil_id is not None:
        return logits[..., target_id] - logits[..., foil_id]
    return logits.log_softmax(-1)[..., target_id]


def _check_ids(model, clean_ids, corrupt_ids, target_id, foil_id):
    ids = []
    for name, given in (("clean", clean_ids), ("corrupt", corrupt_ids)):
        t = torch.as_tensor(given, dtype=torch.long)
        t = t[0] if t.dim() == 2 and t.size(0) == 1 else t
        if t.dim() != 1 or t.numel() == 0:
            raise LmscopeError(f"the {name} prompt must be token ids of shape (time,), not empty;"
                               f" got shape {tuple(t.shape)}")
        ids.append(t)
    clean, corrupt = ids
    if clean.numel() != corrupt.numel():
        raise LmscopeError(f"the clean prompt has {clean.numel()} tokens and the corrupt one "
                           f"{corrupt.numel()}: give prompts of the same number of tokens")
    if clean.numel() > model.context_length:
        raise LmscopeError(f"the prompts have {clean.numel()} tokens, more than the model's "
                           f"context of {model.context_length}: shorten them")
    vocab = model.config.vocab_size
    for name, token in (("target", target_id), ("foil", foil_id)):
        if token is not None and not 0 <= int(token) < vocab:
            raise LmscopeError(f"{name} token id {token} is outside the vocabulary (0 to "
                               f"{vocab - 1})")
    if foil_id is not None and int(foil_id) == int(target_id):
        raise LmscopeError("the target and the foil are the same token (the logit difference "
                           "would be 0): give another foil, or none for log p(target)")
    return clean, corrupt


@torch.no_grad()
def patched_metrics(model, clean_ids, corrupt_ids, patch_sites: list[Site], target_id: int,
                    foil_id: int | None = None, *, batch_size: int = 64) -> torch.Tensor:
    """The metric (float64, one per site) of the corrupt prompt run with each site's activation
    taken from the clean run, `batch_size` sites per forward pass (one per batch row)."""
    if batch_size < 1:
        raise LmscopeError(f"batch_size must be at least 1, got {batch_size}")
    clean, corrupt = _check_ids(model, clean_ids, corrupt_ids, target_id, foil_id)
    hooks = list(dict.fromkeys(s.hook for s in patch_sites))
    _, cache = run_with_cache(model, clean[None], hooks)
    k = model.config.k if architecture(model) == "kgram" else 1
    masks = [s.mask(tuple(cache[s.hook].shape[1:]), k) for s in patch_sites]  # checks every site
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(patch_sites), batch_size):
        chunk = range(start, min(start + batch_size, len(patch_sites)))
        functions = {}
        for hook in dict.fromkeys(patch_sites[i].hook for i in chunk):
            none = torch.zeros(cache[hook].shape[1:], dtype=torch.bool)
            where = torch.stack([masks[i] if patch_sites[i].hook == hook else none
                                 for i in chunk]).to(device)
            functions[hook] = _replace(where, cache[hook])
        logits = run_with_hooks(model, corrupt[None].expand(len(chunk), -1), functions,
                                batch_size=len(chunk))
        out.append(metric(logits[:, -1], target_id, foil_id).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def _replace(where: torch.Tensor, clean: torch.Tensor):
    """A hook function putting the clean activation (1, ...) where `where` (rows, ...) is True."""
    return lambda x, name: torch.where(where, clean.to(x.dtype), x)


@torch.no_grad()
def patch(model, clean_ids, corrupt_ids, target_id: int, foil_id: int | None = None, *,
          patch_sites: list[Site] | None = None, batch_size: int = 64) -> PatchingResult:
    """Activation patching of a bare lmscope model: clean and corrupt token ids (time,) of the
    same length, the target token (the clean answer) and optionally a foil (the corrupt answer).
    `patch_sites` defaults to `sites(model, time)`."""
    clean, corrupt = _check_ids(model, clean_ids, corrupt_ids, target_id, foil_id)
    patch_sites = sites(model, clean.numel()) if patch_sites is None else list(patch_sites)
    logits, _ = run_with_cache(model, torch.stack([clean, corrupt]), [])
    clean_metric, corrupt_metric = metric(logits[:, -1], target_id, foil_id).tolist()
    patched = patched_metrics(model, clean, corrupt, patch_sites, target_id, foil_id,
                              batch_size=batch_size).tolist()
    result = PatchingResult("logprob" if foil_id is None else "logit_diff", clean_metric,
                            corrupt_metric, [])
    norm = result.normaliser
    result.rows = [PatchRow(s.kind, s.layer, s.head, s.position, s.hook, m,
                            (m - corrupt_metric) / norm if not math.isnan(norm) else math.nan)
                   for s, m in zip(patch_sites, patched, strict=True)]
    return result


def _encode(tokenizer, text: str, what: str) -> list[int]:
    try:
        ids = tokenizer.encode(text, unknown="error")
    except LmscopeError as e:
        raise LmscopeError(f"the {what} {text!r}: {e}") from None
    if not ids:
        raise LmscopeError(f"the {what} is empty: give at least one token of text")
    return ids


def _single_token(tokenizer, text: str, what: str) -> int:
    ids = _encode(tokenizer, text, what)
    if len(ids) != 1:
        raise LmscopeError(f"the {what} {text!r} is {len(ids)} tokens for this tokenizer; give "
                           "one token")
    return ids[0]


def compute(run, clean: str, corrupt: str, target: str, foil: str | None = None, *,
            which: str = "final", device: str = "auto",
            batch_size: int = 64) -> PatchingProbeResult:
    """`patch` at each checkpoint of `run` (which: "final" or "all") for two texts encoded by
    the checkpoint's tokenizer, a target and optionally a foil (one token each)."""
    paths = select_checkpoints(run, which)
    first = load(paths[0], device=device)
    tok = first.tokenizer
    clean_ids = _encode(tok, clean, "clean prompt")
    corrupt_ids = _encode(tok, corrupt, "corrupt prompt")
    target_id = _single_token(tok, target, "target")
    foil_id = None if foil is None else _single_token(tok, foil, "foil")
    _check_ids(first.model, clean_ids, corrupt_ids, target_id, foil_id)
    results = []
    for i, path in enumerate(_progress(paths, "patching")):
        ckpt = first if i == 0 else load(path, device=device)
        res = patch(ckpt.model, clean_ids, corrupt_ids, target_id, foil_id,
                    batch_size=batch_size)
        res.checkpoint, res.iteration = ckpt.name, ckpt.iteration
        results.append(res)
    return PatchingProbeResult(Path(run).name, first.trained_on,
                               [tok.token_text(i) for i in clean_ids],
                               [tok.token_text(i) for i in corrupt_ids], target, foil, results)


def patching_probe(run, clean: str, corrupt: str, target: str, foil: str | None, out_dir, *,
                   which: str = "final", device: str = "auto") -> dict:
    """`compute`, then `save` into out_dir; returns the paths written by kind."""
    return compute(run, clean, corrupt, target, foil, which=which, device=device).save(out_dir)


def _position_labels(result: PatchingProbeResult) -> list[str]:
    """Each position's clean token, and `clean/corrupt` where the two differ."""
    return [visible(c) if c == k else f"{visible(c)}/{visible(k)}"
            for c, k in zip(result.clean_tokens, result.corrupt_tokens, strict=True)]


def _heatmap(result: PatchingProbeResult, res: PatchingResult, figure: str, path: Path) -> Path:
    """Layer x position (layer x head for heads) of the score, or of the raw patched metric when
    the score is undefined (clean == corrupt)."""
    rows = [r for r in res.rows if FIGURES[r.kind] == figure]
    use_score = not math.isnan(res.normaliser)
    what = "score" if use_score else f"patched {res.metric_name}"
    if figure == "heads":
        layers = sorted({r.layer for r in rows})
        heads = sorted({r.head for r in rows})
        values = [[math.nan] * len(heads) for _ in layers]
        row_labels, col_labels = [f"layer {layer}" for layer in layers], [str(h) for h in heads]
        for r in rows:
            values[layers.index(r.layer)][heads.index(r.head)] = r.score if use_score else r.metric
        xlabel = "head (its output at every position)"
    else:
        row_labels = list(dict.fromkeys(r.site.label for r in rows))
        col_labels = _position_labels(result)
        values = [[math.nan] * len(col_labels) for _ in row_labels]
        for r in rows:
            if r.position is not None:
                values[row_labels.index(r.site.label)][r.position] = (
                    r.score if use_score else r.metric)
        xlabel = "position (clean token, clean/corrupt where they differ)"
    return plots.heatmap(values, row_labels, col_labels, path,
                         title=f"Activation patching, {figure}: {result.title}, "
                               f"{res.checkpoint or 'final'}",
                         xlabel=xlabel, ylabel="site", fmt="{:.2f}", colorbar=what,
                         annotate=len(col_labels) <= 16)


def _site_text(r: PatchRow, tokens: list[str]) -> str:
    where = "every position" if r.position is None else (
        f"position {r.position} ({visible(tokens[r.position])})")
    name = r.site.label if r.head is None else f"head {r.layer}.{r.head}"
    return f"{name}, {where}"


def _summary(result: PatchingProbeResult, path: Path) -> Path:
    final = result.results[-1]
    what = ("logit(target) - logit(foil)" if final.metric_name == "logit_diff"
            else "log p(target)")
    text = (f"# Activation patching: {result.title}\n\n"
            f"- clean: `{''.join(result.clean_tokens)!r}`\n"
            f"- corrupt: `{''.join(result.corrupt_tokens)!r}`\n"
            f"- target: `{result.target!r}`" +
            (f", foil: `{result.foil!r}`" if result.foil is not None else "") +
            f"\n- metric: {what} at the last position; score = (patched - corrupt) / "
            "(clean - corrupt): 1 the patch restores the clean metric, 0 it changes nothing\n\n")
    text += markdown_table(["checkpoint", "iteration", "clean", "corrupt", "clean - corrupt"],
                           [[r.checkpoint, r.iteration, r.clean_metric, r.corrupt_metric,
                             r.clean_metric - r.corrupt_metric] for r in result.results])
    undefined = [r.checkpoint for r in result.results if math.isnan(r.normaliser)]
    if undefined:
        text += (f"\nThe scores are NaN at {', '.join(undefined)}: the clean and the corrupt "
                 f"metric differ by less than {NORMALISER_EPS:g}, so there is nothing for a "
                 "patch to restore (the figures show the raw patched metric instead).\n")
    ranked = sorted(final.rows, key=lambda r: -r.score if not math.isnan(r.score) else math.inf)
    top = [[_site_text(r, result.clean_tokens), r.hook, r.score, r.metric]
           for r in ranked[:TOP_SITES]]
    text += (f"\nTop sites at {final.checkpoint or 'the last checkpoint'} by score:\n\n"
             + markdown_table(["site", "hook", "score", f"patched {final.metric_name}"], top))
    atomic_write_text(path, text)
    return path
