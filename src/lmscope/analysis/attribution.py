"""Gradient attribution over the input characters of a prompt, at every checkpoint of a run.

For a prompt of token ids t_1..t_T with input embeddings x_1..x_T (each a vector of n_embd
numbers, before the position embedding is added) and a target token y (the model's most likely
next token, or a given one), let

    f(x) = log softmax(logits(x))[T, y]        the target's log-probability at the last position

or, with a foil token z (`--contrast`), f(x) = log p(y | x) - log p(z | x): why y and not z,
inseq's `contrast_prob_diff` in log space (Yin & Neubig 2022, "Interpreting language models
with contrastive explanations"). Every method below then attributes that difference.

and g_i = df/dx_i, the gradient with respect to position i's embedding. The score of position i:

    grad_norm              ||g_i||_2                                   (>= 0; the seed study's)
    grad_x_input           sum_c g_i[c] * x_i[c]                        (signed)
    integrated_gradients   sum_c (x_i[c] - b[c]) * mean_k g_i(b + a_k (x - b))[c]     (signed)

Integrated gradients uses the midpoint Riemann rule, a_k = (k - 1/2) / steps for k = 1..steps,
whose error shrinks as 1/steps^2 (the right-hand rule a_k = k/steps shrinks only as 1/steps).
All `steps` interpolated inputs go through the model as one batch, in one forward and one
backward. The baseline b is the same vector at every position:

    zero      the zero vector
    mean      the mean of the token embedding matrix (every token of the vocabulary)
    unk       the embedding of the tokenizer's unknown-character token
    token:C   the embedding of the token C (one token, such as "token: " for the space): the
              perturbation methods then replace a position's token by C (feature ablation with
              a chosen baseline token)

Completeness: the exact integral satisfies sum_i score_i = f(x) - f(b); the distance between the
two sides, |sum_i score_i - (f(x) - f(b))|, is the completeness gap, reported for each prompt.

Perturbation and sampling methods (the same baseline vector b replaces a position's embedding;
each score is a change of f, in nats, and signed):

    occlusion          f(x) - f(x with position i replaced by b) (Zeiler & Fergus 2014); with a
                       window of W > 1 positions, the mean of f(x) - f(x with the window
                       replaced by b) over the windows of W consecutive positions that hold i
    shapley_exact      the Shapley value of position i in the game v(S) = f(x on S, b elsewhere):
                       exact, over all T! orderings of the positions (Captum's ShapleyValues),
                       so prompts of at most SHAPLEY_EXACT_MAX tokens; efficiency:
                       sum_i score_i = f(x) - f(b) (Shapley 1953)
    shapley_sampling   the same value estimated from `steps` random orderings of the positions
                       (Castro et al. 2009); efficient in every ordering, so the sum is exact
    gradient_shap      expected gradients: the mean over `steps` draws of a point on the path
                       from b to x (with Gaussian noise of standard deviation 0, so the path only)
                       of (x - b) * gradient there (Lundberg & Lee 2017), summed over the
                       embedding; a stochastic integrated gradients

The two sampling methods draw from torch's and numpy's generators seeded with SEED, whose states
are saved before and put back after: the same scores every time, and the caller's random numbers
untouched.

The engine is Captum (captum.ai, the PyTorch attribution library): `Saliency` (abs=False) gives
g_i, `InputXGradient` gives g_i * x_i and `IntegratedGradients` (method "riemann_middle", all
steps in one batch) gives the integrated gradients and their completeness gap, each per
embedding coordinate; the scores above are their norms or sums over the embedding. Gradients
are taken one prompt at a time with respect to the embedding tensor only (Captum uses
`torch.autograd.grad`), the model in eval mode, so they are exact and no parameter gets a
.grad. tests/analysis/test_attribution.py checks them against central finite differences, a
step-by-step integrated-gradients loop and completeness.

DeepLift is not offered, and `deeplift` is refused with the reason. Captum's DeepLift replaces
the gradient by its rescale rule only at ReLU, sigmoid, tanh, softmax and a few other nn.Module
nonlinearities; everything else gets its plain gradient. lmscope's models use GELU (GPT and
k-gram MLP), products of activations (attention, LSTM gates) and functional sigmoid/tanh, so
Captum's DeepLift returns gradient x input on the GPT and the LSTM, and on the k-gram MLP scores
whose sum misses f(x) - f(b), the property DeepLift is defined by (summation to delta).
tests/analysis/test_attribution.py measures both; integrated gradients is exact where DeepLift
only approximates it.

`compute(run, prompts)` runs the methods over every checkpoint of a run (oldest first) and returns
an `AttributionResult`; its `save(dir)` writes attribution.csv, one heatmap per prompt (a panel per
method), by_class.csv/.png and summary.md, and `load(dir)` reads the two tables back.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmscope.data.chars import CHAR_CLASSES, char_class, quiet, visible
from lmscope.data.prompts import check_domains, check_prompt_fits, expected_id, load_prompts
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text
from lmscope.render import plots
from lmscope.render.progress import progress as _progress
from lmscope.render.tables import markdown_table, read_csv, write_csv
from lmscope.run.checkpoint import load, select_checkpoints

PERTURBATION = ("occlusion", "shapley_sampling", "shapley_exact")
GRADIENT_METHODS = ("grad_norm", "grad_x_input", "integrated_gradients")  # the default
METHODS = (*GRADIENT_METHODS, "gradient_shap", "occlusion", "shapley_sampling", "shapley_exact")
SHAPLEY_EXACT_MAX = 6  # tokens: Captum's exact Shapley values walk all T! orderings
SEED = 0  # the sampling methods' own generator (the global one is left alone)
BASELINES = ("zero", "mean", "unk")
NO_BASELINE = ("grad_norm", "grad_x_input")  # the methods that ignore `baseline`
TARGETS = ("predicted", "expected")


@dataclass
class Attribution:
    scores: np.ndarray  # one per input position
    target_id: int
    target_prob: float  # probability of the target after the attributed position
    completeness_gap: float | None  # IG only: |sum(scores) - (logp(x) - logp(baseline))|


@contextlib.contextmanager
def _seeded():
    """torch's (CPU) and numpy's global generators seeded with SEED inside, their states put
    back after (Captum's samplers draw from both)."""
    state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        np.random.seed(SEED)
        try:
            yield
        finally:
            np.random.set_state(state)


def check_choice(what: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise LmscopeError(f"unknown {what} {value!r}: choose from {', '.join(allowed)}")


def check_method(method) -> None:
    """A method of METHODS, or a one-line error (DeepLift's says why it is not offered)."""
    if method == "deeplift":
        raise LmscopeError(
            "method 'deeplift' is not offered: Captum's DeepLift rules cover ReLU, sigmoid, tanh "
            "and softmax modules only, so on these models (GELU, attention products, LSTM gates) "
            "it gives gradient x input without its sum property; use integrated_gradients")
    check_choice("method", method, METHODS)


def check_methods(methods) -> tuple[str, ...]:
    """One or more methods of METHODS, none twice, as a tuple; else a one-line error."""
    methods = tuple(methods)
    if not methods:
        raise LmscopeError(f"no methods given: choose from {', '.join(METHODS)}")
    for method in methods:
        check_method(method)
    if len(set(methods)) != len(methods):
        raise LmscopeError(f"a method is given twice: {', '.join(methods)}")
    return methods


def check_expected(prompt, tokenizer) -> int:
    """The id of a prompt's expected character, which target 'expected' needs, or a one-line
    error."""
    if prompt.expected is None:
        raise LmscopeError(f"prompt {prompt.name!r} has no expected character, which target "
                           "'expected' needs: add expected = \"...\" or use target 'predicted'")
    return expected_id(prompt, tokenizer)


def check_baseline(baseline) -> None:
    """zero, mean, unk or token:C (module docstring), or a one-line error."""
    if baseline in BASELINES or (isinstance(baseline, str) and baseline.startswith("token:")
                                 and len(baseline) > len("token:")):
        return
    raise LmscopeError(f"unknown baseline {baseline!r}: choose from {', '.join(BASELINES)}, or "
                       "token:C for the embedding of the token C ('token: ' for the space)")


def baseline_id(baseline: str, tokenizer, checkpoint="") -> int | None:
    """The token whose embedding the baseline is ('unk', 'token:C'); None for zero and mean.
    A one-line error where that token is not one token of the tokenizer's vocabulary."""
    if baseline == "unk":
        if tokenizer.unk_id is None:
            raise LmscopeError("baseline 'unk' needs a tokenizer with an unknown-character "
                               f"token, and the one of {checkpoint or 'the model'} has none: use "
                               "baseline zero, mean or token:C")
        return tokenizer.unk_id
    if baseline.startswith("token:"):
        return one_token(baseline[len("token:"):], tokenizer, f"baseline {baseline!r}",
                         "one token of the vocabulary")
    return None


def baseline_token_for(methods, baseline: str, tokenizer, checkpoint="") -> int | None:
    """The baseline's token (`baseline_id`) where one of `methods` uses the baseline, else None;
    a one-line error where the tokenizer lacks it."""
    if any(m not in NO_BASELINE for m in methods):
        return baseline_id(baseline, tokenizer, checkpoint)
    return None


def check_shapley_exact(tokens: int, where: str) -> None:
    """Exact Shapley values of an input of `tokens` positions, or a one-line error: Captum walks
    all tokens! orderings."""
    if tokens > SHAPLEY_EXACT_MAX:
        raise LmscopeError(f"shapley_exact on {where} of {tokens} tokens would walk "
                           f"{math.factorial(tokens):,} orderings: give prompts of at most "
                           f"{SHAPLEY_EXACT_MAX} tokens, or use shapley_sampling")


def checked_inputs(run, prompts_path, *, which, methods, baseline: str, target="predicted",
                   window: int = 1, corpora: tuple[str, ...] = (), device="cpu",
                   generate: int = 0):
    """The checkpoints and prompts of a probe over `run`, every prompt checked against the first
    checkpoint before any work: its domain, that it fits the context, its expected character
    (target "expected"), the occlusion window, exact Shapley's length (of the longest input:
    with `generate` tokens written after the prompt, up to the context) and the baseline token.
    Returns (checkpoints, prompts, the first checkpoint's tokenizer)."""
    checkpoints = select_checkpoints(run, which)
    prompts = load_prompts(prompts_path)
    first = load(checkpoints[0], device=device)
    check_domains(prompts, (first.trained_on, *corpora), prompts_path)
    context = first.model.context_length
    for prompt in prompts:
        tokens = len(check_prompt_fits(prompt, first.tokenizer, context))
        if target == "expected":
            check_expected(prompt, first.tokenizer)
        check_window_fits(window, methods, tokens, prompt.name)
        if "shapley_exact" in methods:
            if generate:
                check_shapley_exact(min(tokens + generate - 1, context),
                                    f"prompt {prompt.name!r} with --generate {generate}: an "
                                    "input")
            else:
                check_shapley_exact(tokens, f"prompt {prompt.name!r}")
    baseline_token_for(methods, baseline, first.tokenizer, checkpoints[0])
    return checkpoints, prompts, first.tokenizer


def check_window(window) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise LmscopeError(f"the occlusion window must be a whole number of at least 1 "
                           f"position, got {window!r}")


def check_window_fits(window: int, methods, tokens: int, prompt: str) -> None:
    """An occlusion window of several positions needs occlusion among the methods and prompts
    at least that long; checked before any work."""
    if window == 1:
        return
    if "occlusion" not in methods:
        raise LmscopeError(f"an occlusion window of {window} positions needs the occlusion "
                           "method: add --method occlusion, or drop --window")
    if window > tokens:
        raise LmscopeError(f"an occlusion window of {window} positions is longer than prompt "
                           f"{prompt!r} ({tokens} tokens): give a smaller one")


def check_steps(steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise LmscopeError(f"steps must be a whole number of at least 1, got {steps!r}")


def last_logp(model, emb: torch.Tensor, position: int = -1) -> torch.Tensor:
    """Log-probabilities (batch, vocab) of the next token after `position` (the last)."""
    return F.log_softmax(model.forward_embeddings(emb)[:, position], dim=-1)


def baseline_embeddings(model, x: torch.Tensor, baseline: str, token_id: int | None,
                        vocab: int):
    """The baseline input, shaped like x (1, T, C): one vector repeated at every position;
    token_id: the token of baselines 'unk' and 'token:C' (see `baseline_id`)."""
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline == "mean":
        table = model.embed(torch.arange(vocab, device=x.device)[None])[0]  # (vocab, C)
        return table.mean(0).expand_as(x)
    if token_id is None:
        raise LmscopeError(f"baseline {baseline!r} needs the id of its token (baseline_id): for "
                           "unk, a tokenizer with an unknown-character token")
    if not 0 <= token_id < vocab:
        raise LmscopeError(f"baseline token id {token_id} is outside the vocabulary (size "
                           f"{vocab})")
    return model.embed(torch.tensor([[token_id]], device=x.device)).expand_as(x)


def attribute(model, ids: list[int], target_id: int | None, method: str, *,
              baseline: str = "zero", steps: int = 32, baseline_token: int | None = None,
              foil_id: int | None = None, position: int = -1, window: int = 1) -> Attribution:
    """Importance of each input position for the target next token (see the module docstring).

    position: the position whose next token is attributed, the last by default; positions after
    it are inputs the model cannot see there (a causal model's scores for them are 0).

    target_id None: the model's most likely next token (argmax at `position`).
    `baseline` and `baseline_token` (the id of its token, `baseline_id`) matter for the methods
    with a baseline (all but grad_norm and
    grad_x_input), `steps` for integrated_gradients, gradient_shap and shapley_sampling.
    """
    check_method(method)
    check_baseline(baseline)
    check_steps(steps)
    check_window(window)
    if model.training:
        raise ValueError("attribution needs the model in eval mode (call model.eval())")
    ids = [int(i) for i in ids]
    if not 0 < len(ids) <= model.context_length:
        raise LmscopeError(f"a prompt of {len(ids)} tokens: give 1 to {model.context_length} "
                           "(the model's context length)")
    device = next(model.parameters()).device

    with torch.no_grad():
        # A detached copy of the input embeddings: the only tensor we differentiate against.
        x = model.embed(torch.tensor([ids], device=device)).detach()  # (1, T, C)
        if not -len(ids) <= int(position) < len(ids):
            raise LmscopeError(f"position {position} is outside the prompt of {len(ids)} tokens")
        logp_x = last_logp(model, x, position)[0]  # (vocab,)
    vocab = logp_x.numel()
    if target_id is None:
        target_id = int(logp_x.argmax())
    elif not 0 <= int(target_id) < vocab:
        raise LmscopeError(f"target id {target_id} is outside the vocabulary (size {vocab})")
    target_id = int(target_id)
    target_prob = float(logp_x[target_id].exp())
    if foil_id is not None and not 0 <= int(foil_id) < vocab:
        raise LmscopeError(f"foil id {foil_id} is outside the vocabulary (size {vocab})")

    # Captum takes about a second to import: only attributing needs it, not the report or the
    # study plan that read attribution results.
    from captum.attr import (
        GradientShap,
        InputXGradient,
        IntegratedGradients,
        Occlusion,
        Saliency,
        ShapleyValues,
        ShapleyValueSampling,
    )

    def target_logp(emb: torch.Tensor) -> torch.Tensor:  # (batch, T, C) -> (batch,)
        logp = last_logp(model, emb, position)
        if foil_id is None:
            return logp[:, target_id]
        return logp[:, target_id] - logp[:, int(foil_id)]

    if method in ("integrated_gradients", "gradient_shap", *PERTURBATION):
        with torch.no_grad():
            b = baseline_embeddings(model, x, baseline, baseline_token, vocab)
    if method in PERTURBATION:
        positions = torch.arange(len(ids), device=device)[None, :, None].expand_as(x).clone()
        if method == "shapley_exact":
            check_shapley_exact(len(ids), "a prompt")
        with torch.no_grad(), _seeded():
            if method == "occlusion":
                if window > len(ids):
                    raise LmscopeError(f"an occlusion window of {window} positions is longer "
                                       f"than the prompt ({len(ids)} tokens): give a smaller one")
                if window > 1 and position % len(ids) != len(ids) - 1:
                    # a window holding both sides of `position` would share its change with the
                    # positions the model cannot see there
                    raise LmscopeError("an occlusion window of several positions attributes the "
                                       "prediction after the last position only: give window 1")
                found = Occlusion(target_logp).attribute(
                    x, sliding_window_shapes=(window, x.shape[-1]), strides=(1, x.shape[-1]),
                    baselines=b, perturbations_per_eval=64)
            elif method == "shapley_exact":
                found = ShapleyValues(target_logp).attribute(
                    x, baselines=b, feature_mask=positions, perturbations_per_eval=64)
            else:
                found = ShapleyValueSampling(target_logp).attribute(
                    x, baselines=b, feature_mask=positions, n_samples=steps,
                    perturbations_per_eval=64)
        # each position's value is repeated over its embedding coordinates: read one
        return Attribution(found[0, :, 0].detach().cpu().numpy(), target_id, target_prob, None)
    if method == "gradient_shap":
        with _seeded():
            found = GradientShap(target_logp).attribute(x.clone().requires_grad_(True),
                                                        baselines=b, n_samples=steps,
                                                        stdevs=0.0)
        return Attribution(found[0].sum(-1).detach().cpu().numpy(), target_id, target_prob,
                           None)
    if method == "integrated_gradients":
        # samples of a batch do not interact (eval mode): all steps go through as one batch
        attributions, delta = IntegratedGradients(target_logp).attribute(
            x, baselines=b, n_steps=steps, method="riemann_middle", internal_batch_size=steps,
            return_convergence_delta=True)
        scores = attributions[0].sum(-1)
        return Attribution(scores.detach().cpu().numpy(), target_id, target_prob,
                           abs(float(delta)))
    x = x.clone().requires_grad_(True)  # the input Captum differentiates against
    if method == "grad_norm":
        scores = Saliency(target_logp).attribute(x, abs=False)[0].norm(dim=-1)
    else:
        scores = InputXGradient(target_logp).attribute(x)[0].sum(-1)
    return Attribution(scores.detach().cpu().numpy(), target_id, target_prob, None)


# --- the probe over a run's checkpoints ----------------------------------------------------------

HEADER = ["prompt", "domain", "checkpoint", "iteration", "position", "character", "char_class",
          "method", "score", "normalized", "target", "target_prob"]
CLASS_HEADER = ["checkpoint", "iteration", "method", "char_class", "mean_abs_normalized",
                "prompts", "positions"]


@dataclass
class AttributionRow:
    """One input position's score by one method at one checkpoint (a row of attribution.csv)."""

    prompt: str
    domain: str
    checkpoint: str
    iteration: int
    position: int
    character: str  # as shown in tables
    char_class: str
    method: str
    score: float
    normalized: float  # score / sum of |scores| over the prompt's positions
    target: str  # the attributed next token, as shown in tables
    target_prob: float

    def cells(self) -> list:
        return [self.prompt, self.domain, self.checkpoint, self.iteration, self.position,
                self.character, self.char_class, self.method, self.score, self.normalized,
                self.target, self.target_prob]


@dataclass
class ClassRow:
    """Mean |normalized score| of one character class, by one method, at one checkpoint: the
    mean over prompts of each prompt's mean over its positions of that class (by_class.csv)."""

    checkpoint: str
    iteration: int
    method: str
    char_class: str
    mean_abs_normalized: float
    prompts: int
    positions: int

    def cells(self) -> list:
        return [self.checkpoint, self.iteration, self.method, self.char_class,
                self.mean_abs_normalized, self.prompts, self.positions]


@dataclass
class AttributionResult:
    run: str  # the run as given
    methods: tuple[str, ...]
    rows: list[AttributionRow]  # checkpoints oldest first, then prompts, methods, positions
    by_class: list[ClassRow]
    checkpoints: list[str] = field(default_factory=list)  # the checkpoint folders
    prompts: list[str] = field(default_factory=list)
    target: str = "predicted"
    baseline: str = "zero"
    steps: int = 32
    completeness_gaps: list[float | None] = field(default_factory=list)  # IG, per checkpoint
    window: int = 1  # occlusion's window, in positions

    @property
    def iterations(self) -> list[tuple[str, int]]:
        """(checkpoint name, iteration) of each checkpoint, oldest first."""
        return list(dict.fromkeys((r.checkpoint, r.iteration) for r in self.rows))

    def final_by_class(self) -> dict[tuple[str, str], float]:
        """(method, class) -> mean |normalized score| at the last checkpoint."""
        name, iteration = self.iterations[-1]
        return {(r.method, r.char_class): r.mean_abs_normalized for r in self.by_class
                if (r.checkpoint, r.iteration) == (name, iteration)}

    def final_rows(self) -> list[AttributionRow]:
        """The rows of the last checkpoint."""
        last = self.iterations[-1]
        return [r for r in self.rows if (r.checkpoint, r.iteration) == last]

    def save(self, out_dir, *, skip: Sequence[str] = ()) -> dict:
        """attribution.csv, by_class.csv, heatmap_<prompt>.png, by_class.png and
        summary.md; returns the paths written and the summary figures. Figures matching a
        pattern of `skip` are not drawn (plots.drawn)."""
        return _save(self, Path(out_dir), skip)

    @classmethod
    def load(cls, out_dir) -> AttributionResult:
        """The two tables `save` wrote (numbers to 6 significant digits); the completeness gaps
        are in summary.md only."""
        out = Path(out_dir)
        rows = [AttributionRow(r["prompt"], r["domain"], r["checkpoint"], int(r["iteration"]),
                               int(r["position"]), r["character"], r["char_class"], r["method"],
                               float(r["score"]), float(r["normalized"]), r["target"],
                               float(r["target_prob"]))
                for r in read_csv(out / "attribution.csv")]
        by_class = [ClassRow(r["checkpoint"], int(r["iteration"]), r["method"], r["char_class"],
                             float(r["mean_abs_normalized"]), int(r["prompts"]),
                             int(r["positions"]))
                    for r in read_csv(out / "by_class.csv")]
        methods = tuple(dict.fromkeys(r.method for r in rows))
        return cls("", methods, rows, by_class,
                   prompts=list(dict.fromkeys(r.prompt for r in rows)))


def file_stem(name: str, taken: set[str]) -> str:
    """A prompt name made safe for a file name, distinct from the ones already taken."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "prompt"
    unique, n = stem, 1
    while unique in taken:
        n += 1
        unique = f"{stem}-{n}"
    taken.add(unique)
    return unique


def checkpoint_label(name: str, iteration: int) -> str:
    """'20' for iter_0000020, '30 (final)' for the others."""
    if name.startswith("iter_"):
        return str(iteration)
    return f"{iteration} ({name})"


def normalized_scores(scores: np.ndarray) -> np.ndarray:
    """scores / sum |scores| (all 0 where the scores are)."""
    total = float(np.abs(scores).sum())
    return scores / total if total > 0 else np.zeros_like(scores)


def compute(run, prompts_path, *, methods=GRADIENT_METHODS, baseline="zero", steps=32,
            which="all", target="predicted", device="cpu", corpora: tuple[str, ...] = (),
            contrast: str | None = None, window: int = 1) -> AttributionResult:
    """Attribution of every prompt's characters, by each method, at every checkpoint of `run`.

    target: "predicted" (argmax of each checkpoint) or "expected" (each prompt's expected char,
    which must then be given). Prompt domains are checked as in softmax.compute (`corpora`: the
    other models' corpora, in a study). contrast: a foil character; each method then attributes
    log p(target) - log p(foil), and the rows' target reads "target vs foil". Where a
    checkpoint's predicted target is the foil itself, the difference is 0 everywhere and the
    scores are 0 (the summary counts them).
    """
    # Everything the user gives is checked before any gradient is taken.
    methods = check_methods(methods)
    check_baseline(baseline)
    check_steps(steps)
    check_window(window)
    check_choice("target", target, TARGETS)
    checkpoints, prompts, tokenizer = checked_inputs(
        run, prompts_path, which=which, methods=methods, baseline=baseline, target=target,
        window=window, corpora=corpora, device=device)
    foil_id = (one_token(contrast, tokenizer, f"--contrast {contrast!r}")
               if contrast is not None else None)

    rows, by_class, gaps = [], [], []
    for path in _progress(checkpoints, "attribution"):
        ckpt = load(path, device=device)  # one checkpoint in memory at a time
        tok, corpus = ckpt.tokenizer, ckpt.trained_on
        token = baseline_token_for(methods, baseline, tok)
        # (method, class) -> per-prompt means of |normalized| and position counts
        per_class: dict[tuple, list[tuple[float, int]]] = defaultdict(list)
        checkpoint_gaps = []
        for prompt in prompts:
            ids = check_prompt_fits(prompt, tok, ckpt.model.context_length)
            target_id = expected_id(prompt, tok) if target == "expected" else None
            chars = [visible(tok.token_text(i)) for i in ids]
            classes = [char_class(tok.decode([i])) for i in ids]  # a lone byte of é: "�", non-ASCII
            for method in methods:
                a = attribute(ckpt.model, ids, target_id, method, baseline=baseline, steps=steps,
                              baseline_token=token, foil_id=foil_id, window=window)
                norm = normalized_scores(a.scores)
                if a.completeness_gap is not None:
                    checkpoint_gaps.append(a.completeness_gap)
                target_text = visible(tok.token_text(a.target_id))
                if foil_id is not None:
                    target_text += f" vs {visible(tok.token_text(foil_id))}"
                for pos, (score, share) in enumerate(zip(a.scores, norm, strict=True)):
                    rows.append(AttributionRow(
                        prompt.name, prompt.domain_of(corpus), ckpt.name, ckpt.iteration, pos,
                        chars[pos], classes[pos], method, float(score), float(share),
                        target_text, a.target_prob))
                for cls in CHAR_CLASSES:
                    where = [i for i, k in enumerate(classes) if k == cls]
                    if where:
                        per_class[(method, cls)].append(
                            (float(np.abs(norm[where]).mean()), len(where)))
        for (method, cls), entries in sorted(
                per_class.items(), key=lambda kv: (methods.index(kv[0][0]),
                                                   CHAR_CLASSES.index(kv[0][1]))):
            by_class.append(ClassRow(ckpt.name, ckpt.iteration, method, cls,
                                     float(np.mean([m for m, _ in entries])), len(entries),
                                     sum(n for _, n in entries)))
        gaps.append(float(np.mean(checkpoint_gaps)) if checkpoint_gaps else None)
        del ckpt
    what = target if contrast is None else f"{target}, contrasted with {contrast!r}"
    return AttributionResult(str(run), methods, rows, by_class,
                             checkpoints=[str(p) for p in checkpoints],
                             prompts=[p.name for p in prompts], target=what, baseline=baseline,
                             steps=steps, completeness_gaps=gaps, window=window)


def one_token(text: str, tokenizer, what: str, advice: str = "one character the model can "
              "predict") -> int:
    """The one token of `text` (a foil, a baseline token), or a one-line error naming `what`
    and asking for `advice`."""
    unknown = LmscopeError(f"{what} is not in the vocabulary: give a character the model has "
                           "seen")
    try:
        ids = tokenizer.encode(text) if text else []
    except LmscopeError:  # a character outside a char vocabulary without <unk>
        raise unknown from None
    if len(ids) != 1:
        raise LmscopeError(f"{what} is {len(ids)} tokens: give {advice}")
    if tokenizer.unk_id is not None and ids[0] == tokenizer.unk_id:
        raise unknown
    return ids[0]


def attribution_probe(run, prompts_path, out_dir, *, methods=GRADIENT_METHODS, baseline="zero",
                      steps=32, which="all", target="predicted", device="cpu",
                      contrast: str | None = None, window: int = 1) -> dict:
    """`compute`, then `save` into out_dir (see AttributionResult.save):

      attribution.csv   long form, one row per checkpoint, prompt, method and input position
      heatmap_<prompt>.png   a panel per method: characters across, checkpoints down,
                        |normalized score|
      by_class.csv      per checkpoint, method and character class: mean |normalized score|
      by_class.png      the same at the final (last) checkpoint, one bar per method
      summary.md        first class per method at the final checkpoint, IG completeness gap

    Returns the paths written and small summary figures.
    """
    return compute(run, prompts_path, methods=methods, baseline=baseline, steps=steps,
                   which=which, target=target, device=device, contrast=contrast,
                   window=window).save(out_dir)


def _save(result: AttributionResult, out_dir: Path, skip: Sequence[str] = ()) -> dict:
    methods = result.methods
    files = {"attribution_csv": write_csv(out_dir / "attribution.csv", HEADER,
                                          [r.cells() for r in result.rows])}
    files["by_class_csv"] = write_csv(out_dir / "by_class.csv", CLASS_HEADER,
                                      [r.cells() for r in result.by_class])
    iterations = result.iterations
    labels = [checkpoint_label(name, it) for name, it in iterations]
    final = result.final_by_class()

    # heatmaps: one per prompt, a panel per method, |normalized| with checkpoints down and
    # characters across (one shared scale: each value is a share of the prompt's total)
    heatmaps, taken = [], set()
    for prompt in dict.fromkeys(r.prompt for r in result.rows):
        stem = file_stem(prompt, taken)
        if not plots.drawn(out_dir / f"heatmap_{stem}.png", skip):
            continue
        chars = [quiet(r.character) for r in result.final_rows()  # whitespace as a quiet mark
                 if r.prompt == prompt and r.method == methods[0]]
        panels = {method: np.stack([np.abs([r.normalized for r in result.rows
                                            if r.prompt == prompt and r.method == method
                                            and (r.checkpoint, r.iteration) == point])
                                    for point in iterations])
                  for method in methods}
        heatmaps.append(plots.heatmap_panels(
            panels, labels, chars, out_dir / f"heatmap_{stem}.png",
            title=f"{prompt} (target: {result.target})", xlabel="input character",
            ylabel="checkpoint", cmap="magma", colorbar="|normalized score|"))
    files["heatmaps"] = heatmaps

    # by_class.png: the final checkpoint, a group of bars per class, one bar per method
    present = [cls for cls in CHAR_CLASSES if any((m, cls) in final for m in methods)]
    fig, (ax,) = plots.panels(1, title=f"attribution by character class, checkpoint {labels[-1]}",
                              width=max(5.0, 0.35 * len(present) * len(methods) + 1.5),
                              height=3.2)
    width = 0.8 / len(methods)
    for j, method in enumerate(methods):
        xs = np.arange(len(present)) + (j - (len(methods) - 1) / 2) * width
        ax.bar(xs, [final.get((method, cls), np.nan) for cls in present], width, label=method)
    ax.set_xticks(range(len(present)), present)
    ax.set_ylabel("mean |normalized score| per position")
    ax.grid(axis="y", alpha=0.3)
    plots.legend_below(fig)
    files["by_class_png"] = plots.save(fig, out_dir / "by_class.png")

    # summary.md
    top = {}
    for method in methods:
        ranked = sorted(present, key=lambda cls, m=method: -final.get((m, cls), -np.inf))
        top[method] = ranked[0] if ranked else None
    ig_gap = result.completeness_gaps
    name, iteration = iterations[-1]
    lines = [
        "# Gradient attribution over input characters\n",
        f"Run `{result.run}`: {len(result.prompts)} prompt(s), {len(iterations)} checkpoint(s) "
        f"(iterations {', '.join(str(i) for _, i in iterations)}); target: {result.target}.",
        f"Methods: {', '.join(methods)}."
        + (f" Integrated gradients: baseline {result.baseline}, {result.steps} steps, midpoint "
           "rule." if "integrated_gradients" in methods else "")
        + (f" Occlusion: baseline {result.baseline}, a window of {result.window} position(s)."
           if "occlusion" in methods else "") + "\n",
        f"## Character classes at the final checkpoint ({name}, iteration {iteration})\n",
        "Mean |normalized score| of a prompt's positions of each class, averaged over prompts.\n",
        markdown_table(["method", "first class", "mean abs normalized"],
                       [[m, top[m] or "-", final.get((m, top[m]), float("nan"))]
                        for m in methods]),
        markdown_table(["class", *methods],
                       [[cls, *[final.get((m, cls), float("nan")) for m in methods]]
                        for cls in present]),
    ]
    if "integrated_gradients" in methods:
        lines += [
            "## Integrated gradients completeness gap\n",
            "The gap is |sum of scores - (f(x) - f(baseline))|, f the target's "
            "log-probability (minus the foil's, with a contrast), mean over prompts; it is 0 "
            "for the exact integral and shrinks as 1/steps^2.\n",
            markdown_table(["checkpoint", "mean gap"],
                           [[label, f"{gap:.2e}"] for label, gap in zip(labels, ig_gap,
                                                                         strict=True)]),
        ]
    files["summary_md"] = out_dir / "summary.md"
    atomic_write_text(files["summary_md"], "\n".join(lines))

    return {
        "out_dir": out_dir,
        **files,
        "checkpoints": result.checkpoints,
        "prompts": result.prompts,
        "top_class": top,
        "mean_completeness_gap": ig_gap[-1] if "integrated_gradients" in methods else None,
        "completeness_gap_by_checkpoint": dict(zip(labels, ig_gap, strict=True)),
    }
