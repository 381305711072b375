"""Attribution of whole generated continuations (inseq's view), at every checkpoint of a run.

For a prompt of T tokens the model writes N tokens greedily: at step j = 0..N-1 its input is
the prompt followed by the j tokens written so far (T + j tokens), and it writes

    c_j = argmax_v log softmax(logits)[T + j - 1, v]     (the last position; ties: the lowest id)

so the continuation is deterministic (no sampling, no temperature). The logits are read with a
plain forward pass over the whole input at every step (no key/value cache) and the log-softmax,
argmax and probability are taken in float64. Per step:

    prob           p(c_j | input) = exp(log softmax[c_j]): the chosen token's probability
    entropy_bits   H = -sum_v p_v log2 p_v of the step's next-token distribution (0: certain)

and for each attribution method (lmscope.analysis.attribution: grad_norm, grad_x_input,
integrated_gradients, gradient_shap, occlusion, shapley_sampling, shapley_exact) the score of
every input position i = 0..T+j-1 for f = log p(c_j | input), from
`attribution.attribute(model, input, c_j, method, baseline=, steps=, baseline_token=)`: each step is
attributed exactly as a prompt of T + j tokens would be, with c_j as its target. This is the
view of inseq (Sarti et al. 2023, "Inseq: An Interpretability Toolkit for Sequence Generation
Models"): one attribution per generated token, over the prompt and the tokens generated before
it. A causal model at step j cannot see the tokens written after it, so the scores form a
lower-triangular matrix of shape (N, T + N - 1): row j holds positions 0..T+j-1, NaN after.
Past the model's context (T + j > context length), step j's input is a sliding window: the last
`context length` tokens, and the positions that left it are NaN too, as they are not in that
step's input. (`lmscope sample` differs there: it re-reads the GPT's window only when it is full,
keeping its last three quarters, and keeps the LSTM's whole history in its state; so past the
context the greedy text here may differ from the sampler's.)

    normalized     score_i / sum_k |score_k| over the row's T + j positions (0 where all are 0),
                   as attribution.normalized_scores
    prompt share   sum over the prompt's positions (i < T) of |normalized_i|: how much of a
                   step's attribution falls on the prompt
    generated share  sum over the earlier generated positions (T <= i < T + j) of |normalized_i|;
                   the two shares add up to 1 (both 0 on a row of zero scores). The summary gives
                   their means over the N steps; step 0 sees no generated token, so its
                   generated share is 0 by construction.

Integrated gradients' completeness gap |sum_i score_i - (f(x) - f(baseline))| (see
attribution) is reported per checkpoint, the mean over prompts and steps.

`compute(run, prompts, generate=N)` returns a `ContinuationResult` (rows per step and per
position); `save(dir)` writes steps.csv, scores.csv, matrix_<prompt>_<method>.png (the final
checkpoint) and summary.md, and `load(dir)` reads the two tables back. `view_data()` is a small
JSON-friendly dict of the matrices for a report view.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmscope.analysis.attribution import (
    GRADIENT_METHODS,
    NO_BASELINE,
    attribute,
    baseline_token_for,
    check_baseline,
    check_choice,
    check_methods,
    check_steps,
    check_window,
    checked_inputs,
    checkpoint_label,
    file_stem,
    normalized_scores,
)
from lmscope.data.chars import VISIBLE, quiet, visible
from lmscope.data.prompts import check_prompt_fits
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text
from lmscope.render import plots
from lmscope.render.progress import progress as _progress
from lmscope.render.tables import markdown_table, read_csv, write_csv
from lmscope.run.checkpoint import load

STEP_HEADER = ["prompt", "checkpoint", "iteration", "method", "step", "token", "prob",
               "entropy_bits"]
SCORE_HEADER = ["prompt", "checkpoint", "iteration", "method", "step", "position", "source",
                "generated", "score", "normalized"]
_INVISIBLE = {shown: char for char, shown in VISIBLE.items()}


@dataclass
class StepRow:
    """One generation step of one prompt at one checkpoint (a row of steps.csv); prob and
    entropy do not depend on the method, which the row repeats for each method."""

    prompt: str
    checkpoint: str
    iteration: int
    method: str
    step: int  # j = 0..N-1
    token: str  # the chosen token c_j, as shown in tables (data.chars.visible)
    prob: float  # p(c_j | prompt + the j tokens before)
    entropy_bits: float  # of that step's next-token distribution

    def cells(self) -> list:
        return [self.prompt, self.checkpoint, self.iteration, self.method, self.step, self.token,
                self.prob, self.entropy_bits]


@dataclass
class ScoreRow:
    """The score of one input position for one step's chosen token (a row of scores.csv)."""

    prompt: str
    checkpoint: str
    iteration: int
    method: str
    step: int
    position: int  # 0..T+step-1
    source: str  # the input token at that position, as shown in tables
    generated: bool  # position >= T: a token the model wrote itself
    score: float
    normalized: float  # score / sum of |scores| over the step's positions

    def cells(self) -> list:
        return [self.prompt, self.checkpoint, self.iteration, self.method, self.step,
                self.position, self.source, self.generated, self.score, self.normalized]


@dataclass
class ContinuationResult:
    run: str  # the run as given
    methods: tuple[str, ...]
    generate: int  # N
    steps: list[StepRow]  # checkpoints oldest first, then prompts, methods, steps
    scores: list[ScoreRow]  # the same order, then positions
    prompts: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)  # the checkpoint folders
    baseline: str = "zero"
    attribution_steps: int = 32  # `steps` of integrated_gradients and the sampling methods
    window: int = 1  # occlusion's window, in positions
    completeness_gaps: list[float | None] = field(default_factory=list)  # IG, per checkpoint

    @property
    def iterations(self) -> list[tuple[str, int]]:
        """(checkpoint name, iteration) of each checkpoint, oldest first."""
        return list(dict.fromkeys((r.checkpoint, r.iteration) for r in self.steps))

    def prompt_length(self, prompt: str) -> int:
        """T: the number of the prompt's tokens."""
        return sum(1 for r in self.scores if r.prompt == prompt and r.step == 0
                   and r.method == self.methods[0] and r.checkpoint == self.iterations[0][0])

    def step_rows(self, prompt: str, checkpoint: str) -> list[StepRow]:
        """The N steps of a prompt at a checkpoint (those of the first method)."""
        rows = [r for r in self.steps if r.prompt == prompt and r.checkpoint == checkpoint
                and r.method == self.methods[0]]
        if not rows:
            raise LmscopeError(f"no continuation of prompt {prompt!r} at checkpoint "
                               f"{checkpoint!r}: choose from prompts {', '.join(self.prompts)} "
                               f"and checkpoints {', '.join(n for n, _ in self.iterations)}")
        return sorted(rows, key=lambda r: r.step)

    def continuation(self, prompt: str, checkpoint_name: str) -> str:
        """The text the checkpoint wrote after the prompt (its N greedy tokens)."""
        return "".join(_raw(r.token) for r in self.step_rows(prompt, checkpoint_name))

    def matrix(self, prompt: str, checkpoint_name: str, method: str, *,
               normalized: bool = False) -> np.ndarray:
        """The scores (N, T + N - 1) of a prompt at a checkpoint by one method: row j for step
        j, NaN at the positions it could not see (T + j.., and those past its context);
        `normalized` for the normalized ones."""
        check_choice("method", method, self.methods)
        self.step_rows(prompt, checkpoint_name)  # an unknown prompt or checkpoint: an error
        rows = [r for r in self.scores if r.prompt == prompt and r.checkpoint == checkpoint_name
                and r.method == method]
        return _matrix(rows, self.prompt_length(prompt), self.generate, normalized)

    def shares(self, prompt: str, checkpoint_name: str, method: str) -> tuple[float, float]:
        """The mean over steps of the prompt share and of the generated share (module
        docstring)."""
        norm = np.abs(self.matrix(prompt, checkpoint_name, method, normalized=True))
        return _shares(norm, self.prompt_length(prompt))

    def view_data(self) -> dict:
        """A JSON-friendly dict for a report view: per prompt its name and T, and per
        checkpoint (name, label, iteration) its tokens (the prompt's T, then the N generated:
        row j of a matrix is generated token T + j, its columns the first T + N - 1 tokens),
        per-step prob and entropy_bits, and per method the normalized scores (N, T + N - 1),
        rounded to 4 decimals, None where the step could not see."""
        groups, n, out = self._groups(), self.generate, []
        for prompt in self.prompts:
            t = self.prompt_length(prompt)
            points = []
            for name, iteration in self.iterations:
                steps = self.step_rows(prompt, name)
                sources = _sources(groups[(prompt, name, self.methods[0])])
                points.append({
                    "checkpoint": name, "label": checkpoint_label(name, iteration),
                    "iteration": iteration,
                    "tokens": [r.source for r in sources] + [steps[-1].token],
                    "prob": [round(r.prob, 4) for r in steps],
                    "entropy_bits": [round(r.entropy_bits, 4) for r in steps],
                    "normalized": {m: _rounded(_matrix(groups[(prompt, name, m)], t, n, True))
                                   for m in self.methods},
                })
            out.append({"name": prompt, "T": t, "checkpoints": points})
        return {"generate": self.generate, "methods": list(self.methods), "prompts": out}

    def _groups(self) -> dict[tuple[str, str, str], list[ScoreRow]]:
        """(prompt, checkpoint, method) -> its score rows, in one pass."""
        groups: dict[tuple, list[ScoreRow]] = defaultdict(list)
        for r in self.scores:
            groups[(r.prompt, r.checkpoint, r.method)].append(r)
        return groups

    def save(self, out_dir) -> dict:
        """steps.csv, scores.csv, matrix_<prompt>_<method>.png and summary.md; returns their
        paths and, at the final checkpoint, each prompt's continuation and the mean prompt
        share of each method."""
        return _save(self, Path(out_dir))

    @classmethod
    def load(cls, out_dir) -> ContinuationResult:
        """The two tables `save` wrote (numbers to 6 significant digits); the run, baseline,
        steps and completeness gaps are in summary.md only."""
        out = Path(out_dir)
        steps = [StepRow(r["prompt"], r["checkpoint"], int(r["iteration"]), r["method"],
                         int(r["step"]), r["token"], float(r["prob"]), float(r["entropy_bits"]))
                 for r in read_csv(out / "steps.csv")]
        scores = [ScoreRow(r["prompt"], r["checkpoint"], int(r["iteration"]), r["method"],
                           int(r["step"]), int(r["position"]), r["source"],
                           r["generated"] == "True", float(r["score"]), float(r["normalized"]))
                  for r in read_csv(out / "scores.csv")]
        methods = tuple(dict.fromkeys(r.method for r in steps))
        return cls("", methods, max(r.step for r in steps) + 1, steps, scores,
                   prompts=list(dict.fromkeys(r.prompt for r in steps)))


def _raw(shown: str) -> str:
    """A token's text from its `visible` form (<space> -> " ", U+200B -> the character)."""
    if shown in _INVISIBLE:
        return _INVISIBLE[shown]
    if re.fullmatch(r"U\+[0-9A-F]{4,6}", shown):
        return chr(int(shown[2:], 16))
    return shown


def _sources(rows: list[ScoreRow]) -> list[ScoreRow]:
    """One row per position, by position: the prompt and the first N - 1 generated tokens
    (each is an input of some step, even where the last step's context no longer holds it)."""
    return sorted({r.position: r for r in rows}.values(), key=lambda r: r.position)


def _matrix(rows: list[ScoreRow], t: int, n: int, normalized: bool) -> np.ndarray:
    values = np.full((n, t + n - 1), np.nan)
    for r in rows:
        values[r.step, r.position] = r.normalized if normalized else r.score
    return values


def _shares(abs_norm: np.ndarray, t: int) -> tuple[float, float]:
    """Mean over rows of the |normalized| mass on positions < t and on positions >= t."""
    return (float(np.nanmean(np.nansum(abs_norm[:, :t], axis=1))),
            float(np.nanmean(np.nansum(abs_norm[:, t:], axis=1))))


def _rounded(values: np.ndarray) -> list[list]:
    return [[None if math.isnan(v) else round(float(v), 4) for v in row] for row in values]


def check_generate(generate) -> None:
    """N must be a whole number of at least 1 (the CLI's --generate)."""
    if isinstance(generate, bool) or not isinstance(generate, int):
        raise LmscopeError(f"--generate must be a whole number, got {generate!r}: give the "
                           "number of tokens to generate and attribute")
    if generate < 1:
        raise LmscopeError(f"--generate must be at least 1, got {generate}: give the number of "
                           "tokens to generate and attribute")


@torch.no_grad()
def next_token(model, ids: list[int]) -> tuple[int, float, float]:
    """The greedy next token after `ids`, its probability and the distribution's entropy in
    bits, all from a float64 log-softmax of the last position's logits."""
    device = next(model.parameters()).device
    logp = F.log_softmax(model(torch.tensor([ids], device=device))[0, -1].double(), dim=-1)
    chosen = int(logp.argmax())
    p = logp.exp()
    entropy = float(-torch.where(p > 0, p * logp, torch.zeros_like(p)).sum()) / math.log(2)
    return chosen, float(p[chosen]), entropy


def compute(run, prompts_path, *, generate: int, methods=GRADIENT_METHODS, baseline="zero",
            steps=32, which="all", device="cpu", corpora: tuple[str, ...] = (),
            window: int = 1) -> ContinuationResult:
    """Generate `generate` tokens greedily after every prompt at each checkpoint of `run`
    (deterministic: the argmax at every step) and attribute each chosen token's log-probability
    to every position of its input (the prompt and the tokens generated before it), by each
    method. `which`: as run.checkpoint.select_checkpoints ("all", "final", "0,100,final").
    Prompt domains are checked as in attribution.compute (`corpora`: the other models')."""
    # everything the user gives is checked before any gradient is taken
    check_generate(generate)
    methods = check_methods(methods)
    check_baseline(baseline)
    check_window(window)
    check_steps(steps)
    checkpoints, prompts, _ = checked_inputs(
        run, prompts_path, which=which, methods=methods, baseline=baseline, window=window,
        corpora=corpora, device=device, generate=generate)

    step_rows, score_rows, gaps = [], [], []
    for path in _progress(checkpoints, "continuation"):
        ckpt = load(path, device=device)  # one checkpoint in memory at a time
        model, tok = ckpt.model.eval(), ckpt.tokenizer
        token = baseline_token_for(methods, baseline, tok)
        checkpoint_gaps = []
        for prompt in prompts:
            ids = check_prompt_fits(prompt, tok, model.context_length)
            t = len(ids)
            # the greedy continuation first: each step's input, chosen token, prob and entropy
            # (past the context, the input is a sliding window of its last `context` tokens)
            inputs, chosen = [], []
            for _ in range(generate):
                seen = ids[-model.context_length:]
                c, prob, entropy = next_token(model, seen)
                inputs.append(seen)
                chosen.append((c, prob, entropy))
                ids = [*ids, c]
            sources = [visible(tok.token_text(i)) for i in ids]
            for method in methods:
                for j, (step_ids, (c, prob, entropy)) in enumerate(
                        zip(inputs, chosen, strict=True)):
                    step_rows.append(StepRow(prompt.name, ckpt.name, ckpt.iteration, method, j,
                                             sources[t + j], prob, entropy))
                    a = attribute(model, step_ids, c, method, baseline=baseline, steps=steps,
                                  baseline_token=token, window=window)
                    if a.completeness_gap is not None:
                        checkpoint_gaps.append(a.completeness_gap)
                    norm = normalized_scores(a.scores)
                    offset = t + j - len(step_ids)  # positions that left the context
                    for pos, (score, share) in enumerate(zip(a.scores, norm, strict=True),
                                                         start=offset):
                        score_rows.append(ScoreRow(prompt.name, ckpt.name, ckpt.iteration,
                                                   method, j, pos, sources[pos], pos >= t,
                                                   float(score), float(share)))
        gaps.append(float(np.mean(checkpoint_gaps)) if checkpoint_gaps else None)
        del ckpt
    return ContinuationResult(str(run), methods, generate, step_rows, score_rows,
                              prompts=[p.name for p in prompts],
                              checkpoints=[str(p) for p in checkpoints], baseline=baseline,
                              attribution_steps=steps, completeness_gaps=gaps, window=window)


def continuation_probe(run, prompts_path, out_dir, **kw) -> dict:
    """`compute(run, prompts_path, **kw)`, then `save` into out_dir:

      steps.csv    per checkpoint, prompt, method and step: the chosen token, its probability
                   and the step's entropy in bits
      scores.csv   long form: per checkpoint, prompt, method, step and visible input position
      matrix_<prompt>_<method>.png   the final checkpoint: generated tokens down, the prompt
                   and the generated tokens across, |normalized score|
      summary.md   per prompt the final continuation, mean p(chosen), mean entropy and each
                   method's prompt / generated shares, and those shares at every checkpoint
    """
    return compute(run, prompts_path, **kw).save(out_dir)


def _save(result: ContinuationResult, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    methods, iterations = result.methods, result.iterations
    files = {"steps_csv": str(write_csv(out_dir / "steps.csv", STEP_HEADER,
                                        [r.cells() for r in result.steps])),
             "scores_csv": str(write_csv(out_dir / "scores.csv", SCORE_HEADER,
                                         [r.cells() for r in result.scores]))}
    labels = {name: checkpoint_label(name, it) for name, it in iterations}
    final, final_iteration = iterations[-1]

    groups = result._groups()
    lengths = {p: result.prompt_length(p) for p in result.prompts}
    n = result.generate

    def norm(prompt, name, method):
        return _matrix(groups[(prompt, name, method)], lengths[prompt], n, True)

    # matrix figures at the final checkpoint
    figures, taken = [], set()
    for prompt in result.prompts:
        stem, t = file_stem(prompt, taken), lengths[prompt]
        steps = result.step_rows(prompt, final)
        cols = [quiet(r.source) for r in _sources(groups[(prompt, final, methods[0])])]
        rows = [f"{r.step}: {quiet(r.token)}" for r in steps]
        for method in methods:
            figures.append(str(plots.heatmap(
                np.abs(norm(prompt, final, method)), rows, cols,
                out_dir / f"matrix_{stem}_{method}.png",
                title=f"{prompt}: {method}, checkpoint {labels[final]}",
                xlabel=f"input token (the first {t}: the prompt; then generated)",
                ylabel="generated token", fmt="{:.2f}", cmap="magma",
                colorbar="|normalized score|", annotate=len(cols) < 12)))
    files["figures"] = figures

    # summary.md
    def means(prompt, name):
        steps = result.step_rows(prompt, name)
        return (float(np.mean([r.prob for r in steps])),
                float(np.mean([r.entropy_bits for r in steps])))

    share_header = [f"{m}: {where}" for m in methods for where in ("prompt", "generated")]

    def share_cells(prompt, name):
        return [s for m in methods for s in _shares(np.abs(norm(prompt, name, m)),
                                                    lengths[prompt])]

    final_table = [[prompt, quiet(result.continuation(prompt, final)), *means(prompt, final),
                    *share_cells(prompt, final)] for prompt in result.prompts]
    by_checkpoint = [[prompt, labels[name], quiet(result.continuation(prompt, name)),
                      *means(prompt, name), *share_cells(prompt, name)]
                     for prompt in result.prompts for name, _ in iterations]
    uses_baseline = [m for m in methods if m not in NO_BASELINE]
    lines = [
        "# Attribution of generated continuations\n",
        f"Run `{result.run}`: {len(result.prompts)} prompt(s), {len(iterations)} checkpoint(s) "
        f"(iterations {', '.join(str(i) for _, i in iterations)}); {n} token(s) generated "
        "greedily (the argmax at each step) after each prompt, and each chosen token's "
        "log-probability attributed to the prompt and the tokens generated before it.",
        f"Methods: {', '.join(methods)}."
        + (f" Baseline {result.baseline}, {result.attribution_steps} steps." if uses_baseline
           else "")
        + (f" Occlusion window: {result.window} positions." if result.window > 1 else "")
        + " Past the model's context each step reads a sliding window of the last context "
        "tokens (`lmscope sample` re-reads its window less often).\n",
        "Shares: the mean over the steps of the |normalized score| mass on the prompt's "
        "positions and on the earlier generated ones (step 0 has none, so its generated share "
        "is 0).\n",
        f"## Final checkpoint ({final}, iteration {final_iteration})\n",
        markdown_table(["prompt", "continuation", "mean p(chosen)", "mean entropy (bits)",
                        *share_header], final_table),
        "## By checkpoint\n",
        markdown_table(["prompt", "checkpoint", "continuation", "mean p(chosen)",
                        "mean entropy (bits)", *share_header], by_checkpoint),
    ]
    if "integrated_gradients" in methods and any(g is not None for g in
                                                 result.completeness_gaps):
        lines += [
            "## Integrated gradients completeness gap\n",
            "The gap is |sum of a step's scores - (f(x) - f(baseline))|, f the chosen token's "
            "log-probability, mean over prompts and steps.\n",
            markdown_table(["checkpoint", "mean gap"],
                           [[labels[name], "-" if gap is None else f"{gap:.2e}"]
                            for (name, _), gap in zip(iterations, result.completeness_gaps,
                                                      strict=True)]),
        ]
    files["summary_md"] = str(out_dir / "summary.md")
    atomic_write_text(files["summary_md"], "\n".join(lines))
    return {
        "out_dir": str(out_dir),
        **files,
        "continuations": {p: result.continuation(p, final) for p in result.prompts},
        "prompt_share": {m: float(np.mean([_shares(np.abs(norm(p, final, m)), lengths[p])[0]
                                           for p in result.prompts])) for m in methods},
    }
