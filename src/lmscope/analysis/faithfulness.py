"""Which attribution method is faithful? Deletion, insertion, ERASER and a randomization check.

For each checkpoint of a run, each prompt (token ids t_1..t_T, input embeddings x, the target y:
the checkpoint's most likely next token, or the prompt's expected character) and each
attribution method of lmscope.analysis.attribution (its scores for y, its `baseline` and
`steps`), the method's order (positions by descending signed score, ties by position; with
order="abs", by descending |score|: a signed method's strong negative evidence then counts as
important too) is put to the test by masking: a removed position gets the baseline embedding
b (attribution's: the zero vector, the mean token embedding, the unknown token's or a chosen
token's), and

    p(mask)            softmax(logits(x masked))[T, y], the target's probability at the last
                       position, in float64 (`masked_probabilities`)

gives, as defined exactly in lmscope.metrics.faithfulness:

    deletion_auc       area under p as the order's positions are removed one by one, x = k/T
                       (Petsiuk et al. 2018, RISE): LOWER is more faithful
    insertion_auc      area under p as they are restored from the all-baseline input: HIGHER
    comprehensiveness  mean over the ERASER bins (1, 5, 10, 20, 50% of the positions, at least
                       one) of p_full - p(top k removed) (DeYoung et al. 2020): HIGHER
    sufficiency        mean over the bins of p_full - p(only the top k kept): LOWER
    faithfulness_score insertion_auc - deletion_auc: HIGHER; methods are RANKED by it (rank 1
                       the most faithful), per checkpoint, over the means of the prompts

A row "random" per prompt holds each measure's mean over `random_orders` random orders of the
positions (numpy's default_rng(RANDOM_SEED), made afresh for each prompt at each checkpoint:
the same orders every time, the global generators untouched); it is ranked with the methods,
and a method ranked below it does no better than chance.

    randomization_spearman   Spearman's rho between |scores| of the checkpoint and |scores| of
                             the same method, target and prompt on a model of the same
                             architecture and config with freshly initialised weights
                             (torch.manual_seed(REINIT_SEED) inside a forked generator): the
                             model-parameter randomization test of Adebayo et al. 2018, "Sanity
                             Checks for Saliency Maps". An explanation that depends on what the
                             model learned changes: LOW |rho| passes, rho near 1 means the
                             method shows the input, not the model. NaN for the random row,
                             where a side's scores are constant, and with randomization off.
                             (A run trained with seed REINIT_SEED may have been initialised to
                             exactly those weights: the check then compares it with its start.)

The ranking's randomization columns are the mean of rho and of |rho| over the prompts that have
one. Curves: the mean deletion and insertion curves over prompts per checkpoint and method,
each prompt's curve first resampled to CURVE_POINTS points x = 0, 0.1, ..., 1 by linear
interpolation (prompts differ in length).

Every mask of one method on one prompt (its deletion and insertion curves, on which the ERASER
measures lie) goes through the model in one batched call, each distinct mask once.

`compute(run, prompts)` returns a `FaithfulnessResult`; `save(dir)` writes faithfulness.csv (per
prompt), ranking.csv (per checkpoint and method), curves.csv, curves.png, over_training.png (with
more than one checkpoint) and summary.md; `load(dir)` reads the three tables back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmscope.analysis.attribution import (
    TARGETS,
    attribute,
    baseline_embeddings,
    baseline_id,
    check_baseline,
    check_choice,
    check_methods,
    check_steps,
    checked_inputs,
    checkpoint_label,
)
from lmscope.data.chars import visible
from lmscope.data.prompts import check_prompt_fits, expected_id
from lmscope.device import one_thread_each
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text
from lmscope.metrics.faithfulness import (
    comprehensiveness,
    curve_auc,
    deletion_masks,
    faithfulness_score,
    insertion_masks,
    order_by_scores,
    spearman,
    sufficiency,
    top_k_sizes,
)
from lmscope.models import build_model
from lmscope.render import plots
from lmscope.render.progress import progress as _progress
from lmscope.render.tables import markdown_table, read_csv, write_csv
from lmscope.run.checkpoint import load

# shapley_sampling (about 4 s a prompt) and shapley_exact (short prompts only) are allowed, not
# default
DEFAULT_METHODS = ("grad_norm", "grad_x_input", "integrated_gradients", "gradient_shap",
                   "occlusion")
RANDOM = "random"  # the method name of the random orders' row
RANDOM_SEED = 0
REINIT_SEED = 0
CURVE_POINTS = 11
BATCH_SIZE = 32  # masked inputs per forward pass (batches go to threads: device.one_thread_each)
MEASURES = ("deletion_auc", "insertion_auc", "comprehensiveness", "sufficiency")
BETTER = {"deletion AUC": "lower", "insertion AUC": "higher", "comprehensiveness": "higher",
          "sufficiency": "lower", "faithfulness score": "higher",
          "randomization rho": "closer to 0"}  # which way each measure is better

HEADER = ["prompt", "domain", "checkpoint", "iteration", "method", "tokens", "target",
          "target_prob", *MEASURES, "faithfulness_score", "randomization_spearman"]
RANKING_HEADER = ["checkpoint", "iteration", "method", "rank", "faithfulness_score", *MEASURES,
                  "randomization_spearman", "randomization_abs_spearman", "prompts"]
CURVE_HEADER = ["checkpoint", "iteration", "method", "kind", "x", "p"]


@dataclass
class PromptRow:
    """One method's measures on one prompt at one checkpoint (a row of faithfulness.csv)."""

    prompt: str
    domain: str
    checkpoint: str
    iteration: int
    method: str  # an attribution method, or "random"
    tokens: int  # T, the prompt's positions
    target: str  # as shown in tables
    target_prob: float  # p_full: the target's probability for the unmasked prompt
    deletion_auc: float
    insertion_auc: float
    comprehensiveness: float
    sufficiency: float
    randomization_spearman: float  # NaN for the random row or with randomization off

    @property
    def faithfulness_score(self) -> float:
        return faithfulness_score(self.insertion_auc, self.deletion_auc)

    def cells(self) -> list:
        return [self.prompt, self.domain, self.checkpoint, self.iteration, self.method,
                self.tokens, self.target, self.target_prob, self.deletion_auc,
                self.insertion_auc, self.comprehensiveness, self.sufficiency,
                self.faithfulness_score, self.randomization_spearman]


@dataclass
class MethodRow:
    """One method's means over the prompts at one checkpoint, and its rank (ranking.csv)."""

    checkpoint: str
    iteration: int
    method: str
    deletion_auc: float
    insertion_auc: float
    comprehensiveness: float
    sufficiency: float
    randomization_spearman: float  # mean rho over the prompts that have one
    randomization_abs_spearman: float  # mean |rho| over the same prompts
    faithfulness_score: float  # mean insertion_auc - mean deletion_auc
    rank: int  # 1 = the highest faithfulness_score at this checkpoint, random included
    prompts: int

    def cells(self) -> list:
        return [self.checkpoint, self.iteration, self.method, self.rank,
                self.faithfulness_score, self.deletion_auc, self.insertion_auc,
                self.comprehensiveness, self.sufficiency, self.randomization_spearman,
                self.randomization_abs_spearman, self.prompts]


@dataclass
class CurveRow:
    """A point of a mean deletion or insertion curve (a row of curves.csv)."""

    checkpoint: str
    iteration: int
    method: str
    kind: str  # "deletion" or "insertion"
    x: float  # fraction of the positions removed (deletion) or restored (insertion)
    p: float  # mean p(target) over prompts

    def cells(self) -> list:
        return [self.checkpoint, self.iteration, self.method, self.kind, self.x, self.p]


@dataclass
class FaithfulnessResult:
    run: str
    methods: tuple[str, ...]  # without "random"
    rows: list[PromptRow]
    ranking: list[MethodRow]
    curves: list[CurveRow]
    checkpoints: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    target: str = "predicted"
    baseline: str = "zero"
    steps: int = 32
    random_orders: int = 16
    order: str = "signed"  # the methods' orders: by signed score, or by |score| ("abs")
    randomization: bool = True

    @property
    def iterations(self) -> list[tuple[str, int]]:
        """(checkpoint name, iteration) of each checkpoint, oldest first."""
        return list(dict.fromkeys((r.checkpoint, r.iteration) for r in self.ranking))

    def ranking_at(self, point: tuple[str, int] | None = None) -> list[MethodRow]:
        """The ranking rows of one checkpoint (default: the last), best first."""
        point = point or self.iterations[-1]
        return sorted((r for r in self.ranking if (r.checkpoint, r.iteration) == point),
                      key=lambda r: r.rank)

    def most_faithful(self, point: tuple[str, int] | None = None) -> str:
        """The method ranked first at a checkpoint (default: the last); may be "random"."""
        return self.ranking_at(point)[0].method

    def save(self, out_dir, *, skip: Sequence[str] = ()) -> dict:
        """faithfulness.csv, ranking.csv, curves.csv, curves.png, over_training.png (more than
        one checkpoint) and summary.md; returns their paths and the final ranking. Figures
        matching a pattern of `skip` are not drawn (plots.drawn)."""
        return _save(self, Path(out_dir), skip)

    @classmethod
    def load(cls, out_dir) -> FaithfulnessResult:
        """The three tables `save` wrote (numbers to 6 significant digits); the settings
        (target, baseline, steps, ...) are in summary.md only and come back as defaults."""
        out = Path(out_dir)
        rows = [PromptRow(r["prompt"], r["domain"], r["checkpoint"], int(r["iteration"]),
                          r["method"], int(r["tokens"]), r["target"], float(r["target_prob"]),
                          *(float(r[m]) for m in MEASURES), float(r["randomization_spearman"]))
                for r in read_csv(out / "faithfulness.csv")]
        ranking = [MethodRow(r["checkpoint"], int(r["iteration"]), r["method"],
                             *(float(r[m]) for m in MEASURES),
                             float(r["randomization_spearman"]),
                             float(r["randomization_abs_spearman"]),
                             float(r["faithfulness_score"]), int(r["rank"]), int(r["prompts"]))
                   for r in read_csv(out / "ranking.csv")]
        curves = [CurveRow(r["checkpoint"], int(r["iteration"]), r["method"], r["kind"],
                           float(r["x"]), float(r["p"])) for r in read_csv(out / "curves.csv")]
        methods = tuple(m for m in dict.fromkeys(r.method for r in ranking) if m != RANDOM)
        return cls("", methods, rows, ranking, curves,
                   prompts=list(dict.fromkeys(r.prompt for r in rows)))


# --- the measures of one prompt ------------------------------------------------------------------

def masked_probabilities(model, x: torch.Tensor, b: torch.Tensor, masks, target_id: int, *,
                   batch_size: int = BATCH_SIZE) -> np.ndarray:
    """p(target | x with the positions where a mask is False replaced by b), float64, one per
    mask row (masks: (n, T) bool). Each distinct mask goes through the model once, computed at
    the last position only where the model can (`last_logits`); on a CPU each batch of masks is
    computed on one thread, several at once (device.one_thread_each), so the probabilities are
    the same whatever the thread count."""
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 2 or masks.shape[1] != x.shape[1]:
        raise ValueError(f"masks of shape {masks.shape} for a prompt of {x.shape[1]} positions")
    unique, inverse = np.unique(masks, axis=0, return_inverse=True)
    keep = torch.as_tensor(unique, device=x.device)[:, :, None]  # (m, T, 1)

    @torch.no_grad()
    def batch_probs(start: int) -> torch.Tensor:
        emb = torch.where(keep[start:start + batch_size], x, b)  # (batch, T, C)
        logits = model.last_logits(emb).double()
        return F.softmax(logits, dim=-1)[:, target_id].cpu()

    probs = one_thread_each(batch_probs, range(0, len(unique), batch_size), x.device)
    return torch.cat(probs).numpy()[inverse.reshape(-1)]


def _measures(prob_of_masks, orders: dict[str, list[np.ndarray]]) -> dict[
        str, tuple[dict[str, float], np.ndarray, np.ndarray]]:
    """For each method, the mean of each measure over its `orders` (one order: its measures), and
    the mean deletion and insertion curves (T+1 points each). Every method's masks go in one call
    (so one call's batches keep a CPU's threads busy: device.one_thread_each)."""
    every = [order for method_orders in orders.values() for order in method_orders]
    t = len(every[0])
    masks = [np.concatenate([deletion_masks(o), insertion_masks(o)]) for o in every]
    p = prob_of_masks(np.concatenate(masks)).reshape(len(every), 2, t + 1)
    ks = top_k_sizes(t)
    out, start = {}, 0
    for method, method_orders in orders.items():
        deletion, insertion = (p[start:start + len(method_orders), kind] for kind in (0, 1))
        start += len(method_orders)
        per_order = [(curve_auc(d), curve_auc(i), comprehensiveness(d[0], d[ks]),
                      sufficiency(d[0], i[ks])) for d, i in zip(deletion, insertion, strict=True)]
        means = dict(zip(MEASURES, np.mean(per_order, axis=0).tolist(), strict=True))
        out[method] = means, deletion.mean(0), insertion.mean(0)
    return out


def _resample(curve: np.ndarray) -> np.ndarray:
    """A curve at x = k/T, k = 0..T, at CURVE_POINTS evenly spaced x by linear interpolation."""
    t = len(curve) - 1
    return np.interp(np.linspace(0, 1, CURVE_POINTS), np.arange(t + 1) / t, curve)


def reinitialised(checkpoint) -> torch.nn.Module:
    """A model of the checkpoint's architecture and config with fresh weights (seeded with
    REINIT_SEED, torch's global generator untouched), in eval mode on the same device and
    dtype."""
    p = next(checkpoint.model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(REINIT_SEED)
        model = build_model(checkpoint.model_name, checkpoint.model.config)
    return model.to(device=p.device, dtype=p.dtype).eval()


def randomization_spearman(model, random_model, ids: list[int], target_id: int, method: str, *,
                           baseline: str = "zero", steps: int = 32,
                           baseline_token: int | None = None,
                           scores: np.ndarray | None = None) -> float:
    """Spearman's rho between |scores| of `model` (given, or computed) and |scores| of
    `random_model` for the same target, prompt and method (NaN when a side is constant)."""
    kw = {"baseline": baseline, "steps": steps, "baseline_token": baseline_token}
    if scores is None:
        scores = attribute(model, ids, target_id, method, **kw).scores
    other = attribute(random_model, ids, target_id, method, **kw).scores
    return spearman(np.abs(scores), np.abs(other))


# --- the probe ----------------------------------------------------------------------------------

ORDERS = ("signed", "abs")


def _check_inputs(methods, baseline, steps, target, which, random_orders, randomization, order):
    methods = check_methods(methods)
    check_baseline(baseline)
    check_steps(steps)
    check_choice("target", target, TARGETS)
    check_choice("order", order, ORDERS)
    if not isinstance(which, str):
        raise LmscopeError(f"checkpoint selection {which!r}: give all, final or iterations such "
                           "as 0,100,final")
    if isinstance(random_orders, bool) or not isinstance(random_orders, int) or random_orders < 1:
        raise LmscopeError(f"random orders must be a whole number of at least 1, got "
                           f"{random_orders!r}")
    if not isinstance(randomization, bool):
        raise LmscopeError(f"randomization must be true or false, got {randomization!r}")
    return methods


def compute(run, prompts_path, *, methods=DEFAULT_METHODS, baseline="zero", steps=32,
            which="all", target="predicted", device="cpu", corpora: tuple[str, ...] = (),
            random_orders: int = 16, randomization: bool = True,
            order: str = "signed") -> FaithfulnessResult:
    """Every method's faithfulness on every prompt at every checkpoint of `run`, ranked.

    target: "predicted" (argmax of each checkpoint) or "expected" (the prompt's expected
    character, which must then be given); `which`: all, final or a list (0,100,final). Prompt
    domains are checked as in softmax.compute (`corpora`: the other models' corpora, in a
    study). random_orders: how many random orders the random row averages; randomization:
    whether to compare each method with a re-initialised model (doubles the attribution work).
    """
    # Everything the user gives is checked before any model runs.
    methods = _check_inputs(methods, baseline, steps, target, which, random_orders,
                            randomization, order)
    checkpoints, prompts, tokenizer = checked_inputs(
        run, prompts_path, which=which, methods=methods, baseline=baseline, target=target,
        corpora=corpora, device=device)
    baseline_id(baseline, tokenizer, checkpoints[0])  # the masks use it, whatever the methods

    rows, ranking, curves = [], [], []
    for path in _progress(checkpoints, "faithfulness"):
        ckpt = load(path, device=device)  # one checkpoint in memory at a time
        model, tok = ckpt.model, ckpt.tokenizer
        token = baseline_id(baseline, tok)  # the masks use the baseline, whatever the methods
        random_model = reinitialised(ckpt) if randomization else None
        dev = next(model.parameters()).device
        point_rows = []
        curve_sums = {}  # (method, kind) -> sum of resampled curves over prompts
        for prompt in prompts:
            ids = check_prompt_fits(prompt, tok, model.context_length)
            with torch.no_grad():
                x = model.embed(torch.tensor([ids], device=dev))  # (1, T, C)
                logits = model.forward_embeddings(x)[0, -1]
                vocab = logits.numel()
                b = baseline_embeddings(model, x, baseline, token, vocab)
            target_id = expected_id(prompt, tok) if target == "expected" else int(logits.argmax())

            def prob(masks, model=model, x=x, b=b, target_id=target_id):
                return masked_probabilities(model, x, b, masks, target_id)

            p_full = float(prob(np.ones((1, len(ids)), dtype=bool))[0])
            base = (prompt.name, prompt.domain_of(ckpt.trained_on), ckpt.name, ckpt.iteration)
            shown = visible(tok.token_text(target_id))
            rng = np.random.default_rng(RANDOM_SEED)
            orders, rhos = {}, {}
            for method in (*methods, RANDOM):
                rhos[method] = math.nan
                if method == RANDOM:
                    orders[method] = [rng.permutation(len(ids)) for _ in range(random_orders)]
                    continue
                scores = attribute(model, ids, target_id, method, baseline=baseline,
                                   steps=steps, baseline_token=token).scores
                orders[method] = [order_by_scores(np.abs(scores) if order == "abs" else scores)]
                if random_model is not None:
                    rhos[method] = randomization_spearman(
                        model, random_model, ids, target_id, method, baseline=baseline,
                        steps=steps, baseline_token=token, scores=scores)
            for method, (means, deletion, insertion) in _measures(prob, orders).items():
                point_rows.append(PromptRow(*base, method, len(ids), shown, p_full,
                                            *(means[m] for m in MEASURES), rhos[method]))
                for kind, curve in (("deletion", deletion), ("insertion", insertion)):
                    curve_sums[(method, kind)] = curve_sums.get((method, kind), 0) + _resample(
                        curve)
        rows += point_rows
        ranking += _rank(point_rows, (*methods, RANDOM), ckpt.name, ckpt.iteration)
        xs = np.linspace(0, 1, CURVE_POINTS)
        for (method, kind), total in curve_sums.items():
            curves += [CurveRow(ckpt.name, ckpt.iteration, method, kind, float(x), float(p))
                       for x, p in zip(xs, total / len(prompts), strict=True)]
        del ckpt, model, random_model
    return FaithfulnessResult(str(run), methods, rows, ranking, curves,
                              checkpoints=[str(p) for p in checkpoints],
                              prompts=[p.name for p in prompts], target=target,
                              baseline=baseline, steps=steps, random_orders=random_orders,
                              order=order,
                              randomization=randomization)


def _nanmean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _rank(rows: list[PromptRow], methods, checkpoint: str, iteration: int) -> list[MethodRow]:
    """Per method, the means over prompts, ranked by faithfulness_score (ties keep the given
    order of methods, random last: a method tied with chance ranks above it)."""
    out = []
    for method in methods:
        mine = [r for r in rows if r.method == method]
        means = {m: float(np.mean([getattr(r, m) for r in mine])) for m in MEASURES}
        rhos = [r.randomization_spearman for r in mine]
        out.append(MethodRow(checkpoint, iteration, method, *means.values(), _nanmean(rhos),
                             _nanmean([abs(v) for v in rhos]),
                             faithfulness_score(means["insertion_auc"], means["deletion_auc"]),
                             0, len(mine)))
    for rank, row in enumerate(sorted(out, key=lambda r: -r.faithfulness_score), 1):
        row.rank = rank
    return out


def faithfulness_probe(run, prompts_path, out_dir, **kwargs) -> dict:
    """`compute` (its keyword arguments), then `save` into out_dir (see FaithfulnessResult.save):

      faithfulness.csv   per checkpoint, prompt and method (and "random"): every measure
      ranking.csv        per checkpoint and method: the means over prompts and the rank
      curves.csv         the mean deletion and insertion curves at x = 0, 0.1, ..., 1
      curves.png         those curves at the final checkpoint, one line per method
      over_training.png  faithfulness_score per method over iterations (two checkpoints or more)
      summary.md         the final ranking, the most faithful method per checkpoint

    Returns the paths written and the final ranking.
    """
    return compute(run, prompts_path, **kwargs).save(out_dir)


# --- files ---------------------------------------------------------------------------------------

def _style(method: str, methods) -> dict:
    if method == RANDOM:
        return {"color": "grey", "linestyle": "--"}
    return {"color": f"C{list(methods).index(method) % 10}", "linestyle": "-"}


def _save(result: FaithfulnessResult, out_dir: Path, skip: Sequence[str] = ()) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "faithfulness_csv": write_csv(out_dir / "faithfulness.csv", HEADER,
                                      [r.cells() for r in result.rows]),
        "ranking_csv": write_csv(out_dir / "ranking.csv", RANKING_HEADER,
                                 [r.cells() for r in result.ranking]),
        "curves_csv": write_csv(out_dir / "curves.csv", CURVE_HEADER,
                                [r.cells() for r in result.curves]),
    }
    iterations = result.iterations
    final = iterations[-1]
    methods = (*result.methods, RANDOM)

    # curves.png: the final checkpoint's mean curves
    if plots.drawn(out_dir / "curves.png", skip):
        fig, axes = plots.panels(2, title="Deletion and insertion, checkpoint "
                                 f"{checkpoint_label(*final)} (mean over prompts)", width=5.0,
                                 height=3.6)
        for ax, kind, xlabel, better in zip(
                axes, ("deletion", "insertion"),
                ("fraction of positions removed", "fraction of positions restored"),
                ("lower area is better", "higher area is better"), strict=True):
            for method in methods:
                points = [(c.x, c.p) for c in result.curves if c.kind == kind and c.method == method
                          and (c.checkpoint, c.iteration) == final]
                if points:
                    ax.plot(*zip(*points, strict=True), marker=".", label=method,
                            **_style(method, result.methods))
            ax.set_title(f"{kind} ({better})")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("p(target)")
            ax.grid(alpha=0.3)
        plots.legend_below(fig)
        files["curves_png"] = plots.save(fig, out_dir / "curves.png")

    # over_training.png: the ranking criterion per method over iterations
    if len(iterations) > 1 and plots.drawn(out_dir / "over_training.png", skip):
        fig, (ax,) = plots.panels(1, title="Faithfulness (insertion AUC - deletion AUC) over "
                                           "training", width=6.5, height=3.6)
        for method in methods:
            points = [(r.iteration, r.faithfulness_score) for r in result.ranking
                      if r.method == method]
            ax.plot(*zip(*points, strict=True), marker=".", label=method,
                    **_style(method, result.methods))
        plots.iteration_axis(ax, [it for _, it in iterations])
        ax.set_ylabel("faithfulness score (higher is better)")
        ax.grid(alpha=0.3)
        plots.legend_below(fig)
        files["over_training_png"] = plots.save(fig, out_dir / "over_training.png")

    files["summary_md"] = out_dir / "summary.md"
    atomic_write_text(files["summary_md"], _summary(result))
    return {"out_dir": str(out_dir), **{k: str(v) for k, v in files.items()},
            "checkpoints": result.checkpoints, "prompts": result.prompts,
            "ranking": [r.method for r in result.ranking_at()],
            "most_faithful": result.most_faithful()}


def _summary(result: FaithfulnessResult) -> str:
    iterations = result.iterations
    final = result.ranking_at()
    lines = [
        "# Faithfulness of attribution methods\n",
        f"Run `{result.run or '?'}`: {len(result.prompts)} prompt(s), {len(iterations)} "
        f"checkpoint(s) (iterations {', '.join(str(i) for _, i in iterations)}); target: "
        f"{result.target}; baseline {result.baseline}, {result.steps} steps; the methods' orders "
        f"by {'|score|' if result.order == 'abs' else 'signed score'}; the random row is the mean "
        f"over {result.random_orders} random orders per prompt.\n",
        f"## Ranking at the final checkpoint ({checkpoint_label(*iterations[-1])})\n",
        "Means over prompts; ranked by faithfulness score = insertion AUC - deletion AUC.\n",
        markdown_table(["rank", "method", "faithfulness score", "deletion AUC", "insertion AUC",
                        "comprehensiveness", "sufficiency", "randomization rho",
                        "randomization abs rho"],
                       [[r.rank, r.method, r.faithfulness_score, r.deletion_auc,
                         r.insertion_auc, r.comprehensiveness, r.sufficiency,
                         r.randomization_spearman, r.randomization_abs_spearman]
                        for r in final]),
        "Better: " + "; ".join(f"{m} {d}" for m, d in BETTER.items())
        + " (randomization rho: Spearman's rho between |scores| of the trained and of a "
        "re-initialised model; nan where not computed).\n",
        "## Most faithful method per checkpoint\n",
    ]
    table = []
    for point in iterations:
        ranked = result.ranking_at(point)
        chance = next(r for r in ranked if r.method == RANDOM)
        table.append([checkpoint_label(*point), ranked[0].method, ranked[0].faithfulness_score,
                      chance.faithfulness_score,
                      ", ".join(r.method for r in ranked if r.rank > chance.rank) or "-"])
    lines.append(markdown_table(["checkpoint", "most faithful", "its score", "random's score",
                                 "ranked below random"], table))
    return "\n".join(lines)
