"""The logit lens (nostalgebraist 2020): what the model would predict if it stopped at a layer.

At every lens point of a model (`model.lens_points()`: for GPT the embeddings and each block
after its attention and after its MLP, for the LSTM each layer's hidden state, for the k-gram MLP
each hidden layer) the model's own read-out (`model.unembed`: the final norm and the head) turns
the activation into a distribution q over the next token; p is the model's own output. For every
point and position:

    p_next       q(the token that actually comes next)
    rank_next    its rank under q (1: the lens's first choice)
    entropy_bits H(q) = -sum_i q_i log2 q_i
    kl_bits      KL(p || q) = sum_i p_i log2(p_i / q_i): how far the lens is from the model's own
                 output (0 at the last point, by construction; the tuned lens of Belrose et al.
                 2023 is trained to minimise this same divergence)
    top_ids      the lens's k most likely token ids
    agree_final  whether the lens's first choice is the model's own first choice

`logit_lens(model, ids)` returns a `LensReadout` of tensors, (point, batch, position), positions
0..T-2 being the ones with a next token in `ids`.

The probe (`compute(run, prompts=... | data=[...])`) reads the lens at every kept checkpoint of a
run, on the texts of a prompt file (each prompt's own next tokens, and its expected character
after it when the file gives one) or on windows of corpora (`evaluate.corpus_windows`; targets
outside the vocabulary are left out). `LensResult.save(dir)` writes:

    lens.csv         per source (prompt or corpus), checkpoint and point: the means over targets
    grid.csv         the read-out at every point and position of each prompt (of the first
                     window of each corpus) at every checkpoint: the lens's first choice, p_next
    by_layer.png     KL to the output and agreement with it, point by point, one line per
                     checkpoint (per domain of the prompts, or per corpus)
    formation.png    agreement with the final output as a point x checkpoint heatmap: at which
                     depth, and from which iteration, the model's prediction is formed
    grid_<n>.png     the classic logit-lens picture of each prompt at the final checkpoint (at most
                     MAX_GRIDS; the report shows every checkpoint, with a slider)
    summary.md       the final checkpoint point by point, and where predictions form
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmscope.analysis import tuned_lens
from lmscope.api import run_with_cache
from lmscope.data.chars import quiet, visible
from lmscope.data.prompts import check_domains, check_prompt_fits, expected_id, load_prompts
from lmscope.errors import LmscopeError
from lmscope.evaluate import corpus_windows
from lmscope.io import atomic_write_text
from lmscope.render import plots
from lmscope.render.progress import progress as _progress
from lmscope.render.tables import markdown_table, read_csv, write_csv
from lmscope.run.checkpoint import load, select_checkpoints

LENSES = ("logit", "tuned")
MEASURES = ("p_next", "rank_next", "entropy_bits", "kl_bits")
HEADER = ["source", "group", "checkpoint", "iteration", "point", "depth", "p_next", "top1",
          "agree_final", "entropy_bits", "kl_bits", "n_targets"]
GRID_HEADER = ["source", "checkpoint", "iteration", "point", "position", "token", "next_token",
               "lens_top", "p_next", "kl_bits"]
MAX_GRIDS = 8  # grid figures written (the first sources'); grid.csv has them all
GRID_POSITIONS = 48  # positions of a corpus window shown in its grid


@dataclass
class LensReadout:
    points: list[str]  # labels, in the order of the forward pass
    p_next: torch.Tensor  # (point, batch, T-1)
    rank_next: torch.Tensor  # (point, batch, T-1), 1-based
    entropy_bits: torch.Tensor  # (point, batch, T-1)
    kl_bits: torch.Tensor  # (point, batch, T-1)
    top_ids: torch.Tensor  # (point, batch, T-1, k)

    @property
    def agree_final(self) -> torch.Tensor:
        """(point, batch, T-1): the lens's first choice is the model's own first choice."""
        return self.top_ids[..., 0] == self.top_ids[-1:, ..., 0]

    def mean_over_positions(self) -> dict[str, list[float]]:
        """Per point, the mean over every batch row and position of each measure."""
        return {name: getattr(self, name).flatten(1).float().mean(1).tolist()
                for name in MEASURES}


@torch.no_grad()
def logit_lens(model, ids, *, top_k: int = 5, batch_size: int = 64,
               translators=None) -> LensReadout:
    """The logit lens of `model` (a bare lmscope model) on token ids (batch, time), time >= 2;
    with `translators` (analysis/tuned_lens.py), the tuned lens."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    ids = ids[None] if ids.dim() == 1 else ids
    if ids.size(1) < 2:
        raise LmscopeError("the lens needs at least 2 tokens: a position and the token after it")
    points = model.lens_points()
    logits, cache = run_with_cache(model, ids, [name for _, name in points],
                                   batch_size=batch_size)
    targets = ids[:, 1:].to(logits.device)
    final = logits[:, :-1].float().log_softmax(-1)
    measures = {"p_next": [], "rank_next": [], "entropy_bits": [], "kl_bits": [], "top_ids": []}
    for i, (_, name) in enumerate(points):
        h = cache[name][:, :-1]
        logp = model.unembed(h if translators is None else translators(i, h)).float()
        logp = logp.log_softmax(-1)
        at_next = logp.gather(-1, targets[..., None])[..., 0]
        measures["p_next"].append(at_next.exp())
        measures["rank_next"].append((logp > at_next[..., None]).sum(-1) + 1)
        measures["entropy_bits"].append(-(logp.exp() * logp).sum(-1) / math.log(2))
        kl = (final.exp() * (final - logp)).sum(-1) / math.log(2)
        measures["kl_bits"].append(kl.clamp_min(0.0))
        measures["top_ids"].append(logp.topk(min(top_k, logp.size(-1)), dim=-1).indices)
    return LensReadout(points=[label for label, _ in points],
                       **{k: torch.stack(v).cpu() for k, v in measures.items()})


@dataclass
class LensRow:
    """One source (a prompt or a corpus) at one point of one checkpoint: means over its targets."""

    source: str
    group: str  # what the figures gather: the prompt's domain, or the corpus
    checkpoint: str
    iteration: int
    point: str
    depth: int  # 0 for the first point
    p_next: float
    top1: float  # fraction of targets that are the lens's first choice
    agree_final: float  # fraction of positions where the lens's first choice is the model's own
    entropy_bits: float
    kl_bits: float
    n_targets: int

    def cells(self) -> list:
        return [self.source, self.group, self.checkpoint, self.iteration, self.point, self.depth,
                self.p_next, self.top1, self.agree_final, self.entropy_bits, self.kl_bits,
                self.n_targets]


@dataclass
class LensCell:
    """The lens at one point and position of a source at one checkpoint (a cell of a grid)."""

    source: str
    checkpoint: str
    iteration: int
    point: str
    position: int
    token: str  # the input token there, as shown in tables
    next_token: str
    lens_top: str  # the lens's first choice
    p_next: float
    kl_bits: float

    def cells(self) -> list:
        return [self.source, self.checkpoint, self.iteration, self.point, self.position,
                self.token, self.next_token, self.lens_top, self.p_next, self.kl_bits]


@dataclass
class LensResult:
    run: str  # the run's folder name
    corpus: str  # what it was trained on
    rows: list[LensRow]
    grid: list[LensCell]
    notes: list[str] = field(default_factory=list)  # said in summary.md (partial data, ...)
    lens: str = "logit"  # or "tuned"

    @property
    def title(self) -> str:
        return f"{self.run} (trained on {self.corpus or '?'})"

    @property
    def lens_name(self) -> str:
        return {"logit": "Logit lens", "tuned": "Tuned lens"}[self.lens]

    @property
    def points(self) -> list[str]:
        return list(dict.fromkeys(r.point for r in sorted(self.rows, key=lambda r: r.depth)))

    def save(self, out_dir, *, skip: Sequence[str] = ()) -> dict[str, str]:
        """Write the tables, figures (but those matching a pattern of `skip`: plots.drawn) and
        summary.md; returns their paths by kind."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {"lens_csv": write_csv(out / "lens.csv", HEADER, [r.cells() for r in self.rows]),
                 "grid_csv": write_csv(out / "grid.csv", GRID_HEADER,
                                       [c.cells() for c in self.grid])}
        if plots.drawn(out / "by_layer.png", skip):
            files["by_layer_png"] = _by_layer(self, out / "by_layer.png")
        if plots.drawn(out / "formation.png", skip):
            files["formation_png"] = _formation(self, out / "formation.png")
        for i, source in enumerate(list(dict.fromkeys(c.source for c in self.grid))[:MAX_GRIDS]):
            if plots.drawn(out / f"grid_{i + 1}.png", skip):
                files[f"grid_{i + 1}_png"] = _grid_figure(self, source, out / f"grid_{i + 1}.png")
        files["summary_md"] = _summary(self, out / "summary.md")
        return {k: str(v) for k, v in files.items()}

    @classmethod
    def load(cls, out_dir) -> LensResult:
        """The tables `save` wrote; the run's name and corpus are not in them and come back
        empty."""
        out = Path(out_dir)
        rows = [LensRow(r["source"], r["group"], r["checkpoint"], int(r["iteration"]), r["point"],
                        int(r["depth"]), float(r["p_next"]), float(r["top1"]),
                        float(r["agree_final"]), float(r["entropy_bits"]), float(r["kl_bits"]),
                        int(r["n_targets"])) for r in read_csv(out / "lens.csv")]
        grid = [LensCell(r["source"], r["checkpoint"], int(r["iteration"]), r["point"],
                         int(r["position"]), r["token"], r["next_token"], r["lens_top"],
                         float(r["p_next"]), float(r["kl_bits"])) for r in read_csv(out / "grid.csv")]
        return cls("", "", rows, grid)


@dataclass
class _Source:
    name: str
    group: str
    ids: torch.Tensor  # (rows, time)
    mask: torch.Tensor  # (rows, time - 1): targets that count
    grid_row: int | None  # which row is drawn as the grid (None: none)
    grid_positions: int


def compute(run, *, prompts=None, data=(), which: str = "all", windows: int = 16,
            split: str = "val", device: str = "auto", corpora: tuple[str, ...] = (),
            batch_size: int = 16, lens: str = "logit") -> LensResult:
    """The logit lens (or, with lens="tuned", the tuned lens trained beside each checkpoint by
    `lmscope lens train`) at every checkpoint of `run` (`which`: "all" or "final") on the
    prompts of a prompt file or on `windows` windows of each corpus of `data` (one of the two)."""
    if lens not in LENSES:
        raise LmscopeError(f"unknown lens {lens!r}; choose {' or '.join(LENSES)}")
    data = [data] if isinstance(data, str) else list(data)
    if (prompts is None) == (not data):
        raise LmscopeError("give the lens text to read: --prompts FILE or --data CORPUS "
                           "(one of the two)")
    paths = select_checkpoints(run, which)
    first = load(paths[0], device=device)
    if not hasattr(first.model, "lens_points"):
        raise LmscopeError(f"{type(first.model).__name__} models have no lens points")
    notes: list[str] = []
    if lens == "tuned":  # every checkpoint has its tuned lens, before any work
        for path in paths:
            if tuned_lens.read_record(path) is None:
                raise LmscopeError(f"checkpoint {path} has no tuned lens; train one with "
                                   f"`lmscope lens train {run} --data CORPUS`")
    if prompts is not None:
        sources = _prompt_sources(first, prompts, corpora, notes)
    else:
        sources = []
        for corpus in data:
            w = corpus_windows(first, corpus, split, windows=windows)
            if w.oov_note():
                notes.append(w.oov_note())
            sources.append(_Source(w.corpus, w.corpus, w.ids, w.target_mask(), 0,
                                   min(GRID_POSITIONS, w.ids.size(1) - 1)))
    rows, grid = [], []
    for i, path in enumerate(_progress(paths, "lens")):
        ckpt = first if i == 0 else load(path, device=device)
        translators = None
        if lens == "tuned":
            translators, record = tuned_lens.load(ckpt)
            if i == 0:
                notes.append(f"tuned lens: translators trained on {record.corpus} for "
                             f"{record.steps} steps (lmscope lens train)")
        for source in sources:
            readout = logit_lens(ckpt.model, source.ids, batch_size=batch_size,
                                 translators=translators)
            rows += _rows(readout, source, ckpt)
            if source.grid_row is not None:
                grid += _cells(readout, source, ckpt)
    return LensResult(Path(run).name, first.trained_on, rows, grid, notes, lens)


def _prompt_sources(ckpt, prompts_path, corpora, notes) -> list[_Source]:
    """One source per prompt: its tokens, and its expected character after them when given."""
    prompts = load_prompts(prompts_path)
    other = check_domains(prompts, (ckpt.trained_on, *corpora), prompts_path)
    if other:
        notes.append(f"counted as out-of-domain: the prompts of domain {', '.join(other)}, which "
                     "names no corpus known here")
    sources = []
    for p in prompts:  # every prompt is checked before any work
        ids = check_prompt_fits(p, ckpt.tokenizer, ckpt.model.context_length)
        want = expected_id(p, ckpt.tokenizer)
        if want is not None:
            if len(ids) + 1 > ckpt.model.context_length:
                raise LmscopeError(f"prompt {p.name!r} with its expected character is "
                                   f"{len(ids) + 1} tokens, more than the model's context of "
                                   f"{ckpt.model.context_length}")
            ids = [*ids, want]
        if len(ids) < 2:
            raise LmscopeError(f"prompt {p.name!r} is one token with no expected character: the "
                               "lens needs a next token (give a longer text or expected = \"...\")")
        tensor = torch.tensor([ids])
        sources.append(_Source(p.name, p.domain_of(ckpt.trained_on), tensor,
                               torch.ones(1, len(ids) - 1, dtype=torch.bool), 0, len(ids) - 1))
    return sources


def _rows(lens: LensReadout, source: _Source, ckpt) -> list[LensRow]:
    mask = source.mask
    n = int(mask.sum())
    top1 = lens.rank_next == 1
    agree = lens.agree_final
    out = []
    for d, point in enumerate(lens.points):
        def mean(values, d=d):
            return float(values[d][mask].double().mean()) if n else math.nan
        out.append(LensRow(source.name, source.group, ckpt.name, ckpt.iteration, point, d,
                           mean(lens.p_next), mean(top1), mean(agree), mean(lens.entropy_bits),
                           mean(lens.kl_bits), n))
    return out


def _cells(lens: LensReadout, source: _Source, ckpt) -> list[LensCell]:
    tok = ckpt.tokenizer
    row = source.grid_row
    ids = source.ids[row].tolist()
    cells = []
    for d, point in enumerate(lens.points):
        for t in range(source.grid_positions):
            cells.append(LensCell(source.name, ckpt.name, ckpt.iteration, point, t,
                                  visible(tok.token_text(ids[t])),
                                  visible(tok.token_text(ids[t + 1])),
                                  visible(tok.token_text(int(lens.top_ids[d, row, t, 0]))),
                                  float(lens.p_next[d, row, t]), float(lens.kl_bits[d, row, t])))
    return cells


def _group_means(rows: list[LensRow], measure: str) -> dict[str, dict[int, dict[int, float]]]:
    """{group: {iteration: {depth: mean of `measure` weighted by targets}}}."""
    sums: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: [0.0, 0])))
    for r in rows:
        value = getattr(r, measure)
        if r.n_targets and not math.isnan(value):
            cell = sums[r.group][r.iteration][r.depth]
            cell[0] += value * r.n_targets
            cell[1] += r.n_targets
    return {g: {it: {d: s / n for d, (s, n) in by_depth.items()}
                for it, by_depth in by_it.items()} for g, by_it in sums.items()}


def _by_layer(result: LensResult, path: Path) -> Path:
    """Two rows of panels (KL to the output; agreement with it), a panel per group, one line per
    checkpoint coloured from early (light) to final (dark)."""
    groups = list(dict.fromkeys(r.group for r in result.rows))
    points = result.points
    fig, axes = plots.grid(2, len(groups), title=f"{result.lens_name} by layer: {result.title}",
                           width=4.6, height=2.9, sharey="row")
    kl, agree = _group_means(result.rows, "kl_bits"), _group_means(result.rows, "agree_final")
    iters = sorted({r.iteration for r in result.rows})
    colours = plots.sequential_colours(len(iters))
    for c, group in enumerate(groups):
        for row, (values, label) in enumerate(((kl, "KL(output ‖ lens), bits"),
                                               (agree, "agrees with the output"))):
            ax = axes[row][c]
            for it, colour in zip(iters, colours, strict=True):
                by_depth = values.get(group, {}).get(it, {})
                if by_depth:
                    depths = sorted(by_depth)
                    ax.plot(depths, [by_depth[d] for d in depths], marker=".", color=colour,
                            label=f"iter {it}")
            ax.set_xticks(range(len(points)), points, rotation=90, fontsize=7)
            ax.grid(alpha=0.3)
            if c == 0:
                ax.set_ylabel(label)
            if row == 0:
                ax.set_title(group, fontsize=9)
    plots.legend_below(fig, ncol=min(len(iters), 6))
    return plots.save(fig, path)


def _formation(result: LensResult, path: Path) -> Path:
    """Agreement with the output, point x checkpoint, for all sources together."""
    points = result.points
    iters = sorted({r.iteration for r in result.rows})
    sums = defaultdict(lambda: [0.0, 0])
    for r in result.rows:
        if r.n_targets and not math.isnan(r.agree_final):
            sums[r.depth, r.iteration][0] += r.agree_final * r.n_targets
            sums[r.depth, r.iteration][1] += r.n_targets
    values = [[sums[d, it][0] / sums[d, it][1] if sums[d, it][1] else math.nan for it in iters]
              for d in range(len(points))]
    return plots.heatmap(values, points, [str(it) for it in iters], path,
                         title=f"Where the prediction forms: {result.title}",
                         xlabel="training iteration", ylabel="lens point",
                         colorbar="fraction agreeing with the output", fmt="{:.2f}",
                         annotate=len(iters) <= 12)


def _grid_figure(result: LensResult, source: str, path: Path) -> Path:
    final = max(c.iteration for c in result.grid)
    cells = [c for c in result.grid if c.source == source and c.iteration == final]
    points = list(dict.fromkeys(c.point for c in cells))
    positions = sorted({c.position for c in cells})
    at = {(c.point, c.position): c for c in cells}
    values = [[at[p, t].p_next for t in positions] for p in points]
    texts = [[quiet(at[p, t].lens_top) for t in positions] for p in points]
    labels = [f"{quiet(at[points[0], t].token)}→{quiet(at[points[0], t].next_token)}"
              for t in positions]
    return plots.token_grid(values, texts, points, labels, path, vmin=0.0, vmax=1.0,
                            title=f"{result.lens_name} of {source!r} at {cells[0].checkpoint}: "
                                  f"{result.title}",
                            xlabel="position: token → the next one", ylabel="lens point",
                            colorbar="p(next token) under the lens")


def _summary(result: LensResult, path: Path) -> Path:
    iters = sorted({r.iteration for r in result.rows})
    final = iters[-1]
    text = (f"# {result.lens_name}: {result.title}\n\nAt the final checkpoint (iteration "
            f"{final}), point by point, per domain or corpus; each a mean over its targets (n). KL: from the "
            "model's output to the lens, in bits; agrees: how often the lens's first choice is "
            "the model's own.\n\n")
    table = []
    groups = list(dict.fromkeys(r.group for r in result.rows))
    for group in groups:
        sel = [r for r in result.rows if r.group == group and r.iteration == final]
        n = sum(r.n_targets for r in sel if r.depth == 0)
        for point in result.points:
            at = [r for r in sel if r.point == point and r.n_targets]
            total = sum(r.n_targets for r in at)
            if not total:
                continue
            def mean(name, at=at, total=total):
                return sum(getattr(r, name) * r.n_targets for r in at) / total
            table.append([group, point, n, mean("kl_bits"), mean("agree_final"), mean("top1"),
                          mean("p_next"), mean("entropy_bits")])
    text += markdown_table(["domain or corpus", "point", "n", "KL (bits)", "agrees",
                            "next is first choice", "p(next)", "entropy (bits)"], table)
    formed = []
    for group in groups:
        agree = _group_means([r for r in result.rows if r.group == group], "agree_final")
        for it in iters:
            by_depth = agree.get(group, {}).get(it, {})
            first = next((d for d in sorted(by_depth) if by_depth[d] >= 0.5), None)
            formed.append([group, it, "never" if first is None else result.points[first]])
    text += ("\nWhere the prediction forms: the first point whose first choice is the model's "
             "own at half the positions or more, at each checkpoint.\n\n"
             + markdown_table(["domain or corpus", "iteration", "first point agreeing ≥ 50%"],
                              formed))
    if result.notes:
        text += "\n" + "".join(f"Note: {note}.\n" for note in result.notes)
    atomic_write_text(path, text)
    return path
