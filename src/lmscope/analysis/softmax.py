"""Softmax inspection: how confident is the next-character prediction, checkpoint by checkpoint?

For each prompt and each checkpoint of a run (early to final) the model's distribution over the
next token after the prompt gives:

    entropy        H = -sum_i p_i log2 p_i, in bits (0: certain; log2(vocab): uniform)
    max_prob       the probability of the most likely token, and that token
    top-k          the k most likely tokens with their probabilities
    p_expected     the probability of the expected next character (when the prompt file gives one)
                   and its rank (1 = the model's first choice)

Prompts are in-domain or out-of-domain for the run (the prompt file says, by corpus name or
"in"/"out"), and the plots show the two side by side.

`compute(run, prompts)` returns a `SoftmaxResult`, one `SoftmaxRow` per prompt and checkpoint;
`save(dir)` writes softmax.csv, topk.csv, entropy.png, expected_prob.png (when prompts give the
expected character) and summary.md, and `load(dir)` reads the two tables back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmscope.data.chars import visible
from lmscope.data.prompts import check_domains, check_prompt_fits, expected_id, load_prompts
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text
from lmscope.metrics.spread import describe
from lmscope.render import plots
from lmscope.render.progress import progress as _progress
from lmscope.render.tables import markdown_table, read_csv, write_csv
from lmscope.run.checkpoint import load, select_checkpoints

DOMAINS = ("in-domain", "out-of-domain")
HEADER = ["prompt", "domain", "checkpoint", "iteration", "entropy_bits", "predicted",
          "max_prob", "expected", "p_expected", "expected_rank", "top_k"]
TOPK_HEADER = ["prompt", "checkpoint", "iteration", "rank", "token", "prob"]


@dataclass
class SoftmaxRow:
    """The next-token distribution after one prompt at one checkpoint (a row of softmax.csv)."""

    prompt: str
    domain: str  # in-domain, out-of-domain or unknown
    checkpoint: str
    iteration: int
    entropy_bits: float
    predicted: str  # the most likely token, as shown in tables
    max_prob: float
    expected: str  # the expected character as shown in tables; "" when the prompt gives none
    p_expected: float  # NaN when the prompt gives no expected character
    expected_rank: int | None  # 1 = the model's first choice; None without an expected one
    top_k: str  # "a 0.412; b 0.100; ..."

    def cells(self) -> list:
        return [self.prompt, self.domain, self.checkpoint, self.iteration, self.entropy_bits,
                self.predicted, self.max_prob, self.expected, self.p_expected,
                "" if self.expected_rank is None else self.expected_rank, self.top_k]


@dataclass
class SoftmaxResult:
    run: str  # the run's folder name
    corpus: str  # what it was trained on
    rows: list[SoftmaxRow]
    topk: list[list]  # [prompt, checkpoint, iteration, rank, token, prob]
    # domains of the prompt file that name no corpus known here (another model's, in a prompt
    # file written for a study): counted as out-of-domain, and summary.md says so
    other_domains: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.run} (trained on {self.corpus or '?'})"

    def save(self, out_dir) -> dict[str, str]:
        """Write the tables, figures and summary.md; returns their paths by kind."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {"softmax_csv": write_csv(out / "softmax.csv", HEADER,
                                          [r.cells() for r in self.rows]),
                 "topk_csv": write_csv(out / "topk.csv", TOPK_HEADER, self.topk)}
        files["entropy_png"] = _plot(self.rows, "entropy_bits", out / "entropy.png",
                                     f"Next-character entropy: {self.title}", "entropy (bits)")
        if any(r.expected for r in self.rows):
            files["expected_png"] = _plot(self.rows, "p_expected", out / "expected_prob.png",
                                          f"Probability of the expected character: {self.title}",
                                          "p(expected)")
        files["summary_md"] = _summary(self.rows, out / "summary.md", self.title,
                                       self.other_domains)
        return {k: str(v) for k, v in files.items()}

    @classmethod
    def load(cls, out_dir) -> SoftmaxResult:
        """The tables `save` wrote (numbers as written, to 6 significant digits); the run's
        name and corpus are not in them and come back empty."""
        out = Path(out_dir)
        rows = [SoftmaxRow(r["prompt"], r["domain"], r["checkpoint"], int(r["iteration"]),
                           float(r["entropy_bits"]), r["predicted"], float(r["max_prob"]),
                           r["expected"], float(r["p_expected"]),
                           int(r["expected_rank"]) if r["expected_rank"] else None, r["top_k"])
                for r in read_csv(out / "softmax.csv")]
        topk = [[r["prompt"], r["checkpoint"], int(r["iteration"]), int(r["rank"]), r["token"],
                 float(r["prob"])] for r in read_csv(out / "topk.csv")]
        return cls("", "", rows, topk)


@torch.no_grad()
def next_token_distribution(checkpoint, ids: list[int]) -> torch.Tensor:
    """Probabilities (vocab,) of the token after `ids`, in float64."""
    model = checkpoint.model
    device = next(model.parameters()).device
    logits = model(torch.tensor([ids], device=device))[0, -1]
    return torch.softmax(logits.double(), dim=-1).cpu()


def compute(run, prompts_path, *, top_k: int = 5, which: str = "all",
            device: str = "auto", corpora: tuple[str, ...] = ()) -> SoftmaxResult:
    """The next-token distribution after every prompt at each checkpoint of `run`.

    A prompt's domain names the registry's corpora, the model's own, or one of `corpora` (the
    other models of a study); any other name is an error (data.prompts.check_domains)."""
    if top_k < 1:
        raise LmscopeError(f"--top-k must be at least 1, got {top_k}")
    prompts = load_prompts(prompts_path)
    paths = select_checkpoints(run, which)
    first = load(paths[0], device=device)
    corpus = first.trained_on
    other_domains = check_domains(prompts, (corpus, *corpora), prompts_path)
    encoded = {}
    for p in prompts:  # every prompt is checked before any work
        encoded[p.name] = (check_prompt_fits(p, first.tokenizer, first.model.context_length),
                           expected_id(p, first.tokenizer))
    rows, topk_rows = [], []
    for i, path in enumerate(_progress(paths, "softmax")):
        ckpt = first if i == 0 else load(path, device=device)
        tok = ckpt.tokenizer
        for p in prompts:
            ids, want = encoded[p.name]
            probs = next_token_distribution(ckpt, ids)
            entropy = float(-(probs * torch.log2(probs.clamp_min(1e-300))).sum())
            top_p, top_i = probs.topk(min(top_k, probs.numel()))
            top = [(visible(tok.token_text(int(t))), float(q))
                   for t, q in zip(top_i, top_p, strict=True)]
            p_expected = float(probs[want]) if want is not None else math.nan
            rank = int((probs > probs[want]).sum()) + 1 if want is not None else None
            rows.append(SoftmaxRow(p.name, p.domain_of(corpus), ckpt.name, ckpt.iteration,
                                   entropy, top[0][0], top[0][1],
                                   visible(p.expected) if p.expected else "", p_expected, rank,
                                   "; ".join(f"{c} {q:.3f}" for c, q in top)))
            topk_rows += [[p.name, ckpt.name, ckpt.iteration, r + 1, c, q]
                          for r, (c, q) in enumerate(top)]
    return SoftmaxResult(Path(run).name, corpus, rows, topk_rows, other_domains)


def softmax_probe(run, prompts_path, out_dir, *, top_k: int = 5, which: str = "all",
                  device: str = "auto") -> dict:
    """`compute`, then `save` into out_dir: softmax.csv, topk.csv, entropy.png,
    expected_prob.png and summary.md; returns their paths by kind."""
    return compute(run, prompts_path, top_k=top_k, which=which, device=device).save(out_dir)


def _plot(rows: list[SoftmaxRow], field: str, path: Path, title: str, ylabel: str) -> Path:
    """One panel per domain (in / out), one line per prompt over iterations, plus their mean;
    one legend for all panels, under them (a prompt has one colour in every panel)."""
    domains = [d for d in (*DOMAINS, "unknown") if any(r.domain == d for r in rows)]
    fig, axes = plots.panels(len(domains), title=title, width=4.8, height=3.4)
    names = list(dict.fromkeys(r.prompt for r in rows))
    handles: dict[str, object] = {}
    for ax, domain in zip(axes, domains, strict=True):
        by_prompt: dict[str, list] = {}
        for r in rows:
            value = getattr(r, field)
            if r.domain == domain and not (isinstance(value, float) and math.isnan(value)):
                by_prompt.setdefault(r.prompt, []).append((r.iteration, value))
        for name, points in by_prompt.items():
            (line,) = ax.plot(*zip(*points, strict=True), marker=".", alpha=0.7,
                              color=f"C{names.index(name) % 10}")
            handles.setdefault(name, line)
        if len(by_prompt) > 1:
            iters = sorted({x for pts in by_prompt.values() for x, _ in pts})
            mean = [sum(y for pts in by_prompt.values() for x, y in pts if x == it) /
                    sum(1 for pts in by_prompt.values() for x, _ in pts if x == it) for it in iters]
            (line,) = ax.plot(iters, mean, "k-", linewidth=2.5)
            handles.setdefault("mean of the panel's prompts", line)
        plots.iteration_axis(ax, [r.iteration for r in rows])
        ax.set_ylabel(ylabel)
        ax.set_title(domain)
        ax.grid(alpha=0.3)
    order = [*names, "mean of the panel's prompts"]  # the prompt file's order, the mean last
    labels = sorted(handles, key=order.index)
    plots.legend_below(fig, [handles[label] for label in labels], labels)
    return plots.save(fig, path)


def _summary(rows: list[SoftmaxRow], path: Path, title: str, other_domains=()) -> Path:
    iters = sorted({r.iteration for r in rows})
    table = []
    for it in (iters[0], iters[-1]) if len(iters) > 1 else iters:
        for domain in DOMAINS:
            sel = [r for r in rows if r.iteration == it and r.domain == domain]
            if not sel:
                continue
            with_expected = [r.p_expected for r in sel if not math.isnan(r.p_expected)]
            entropy = describe(r.entropy_bits for r in sel)
            table.append([it, domain, len(sel), entropy.mean, entropy.sd,
                          sum(r.max_prob for r in sel) / len(sel),
                          sum(with_expected) / len(with_expected) if with_expected else "",
                          sum(1 for r in sel if r.expected_rank == 1) if with_expected else ""])
    text = (f"# Softmax confidence: {title}\n\nMeans over prompts at the first and the last "
            "checkpoint (prompts: how many; entropy sd: their standard deviation, nan for one)."
            "\n\n" + markdown_table(
                ["iteration", "domain", "prompts", "entropy (bits)", "entropy sd", "max prob",
                 "p(expected)", "expected ranked first"], table))
    if other_domains:
        text += ("\nCounted as out-of-domain: the prompts of domain "
                 f"{', '.join(other_domains)}, which names no corpus known here (another model's "
                 "corpus).\n")
    atomic_write_text(path, text)
    return path
