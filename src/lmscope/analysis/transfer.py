"""Few-shot transfer: fine-tune copies of a model, from several of its checkpoints, on a new corpus.

For each starting checkpoint (early, mid, late, or given iterations) a short training run on the
target corpus starts from its weights and tokenizer (`train.init_from`). Every `eval_every` steps
it estimates two validation losses on fixed batches (the same batches at every point):

    target loss   how far the model has adapted to the new corpus
    source loss   how much of its original corpus it has forgotten

The summary answers "does partial training make adaptation easier?" with numbers: the target
loss each start reaches after the same number of steps, how much it dropped, and what the
source loss rose by.

`transfer(run, target, out)` fine-tunes (each fine-tuning is an ordinary run folder under
out/runs/) and returns a `TransferResult`, whose `save(dir)` writes curves.csv, curves.png,
summary.csv, summary.md and samples.md (`load(dir)` reads the tables back).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lmscope.api import generate
from lmscope.config import resolve_config
from lmscope.data import corpora
from lmscope.data.tokens import vocabulary_gap
from lmscope.errors import LmscopeError
from lmscope.generate import DEFAULT_TEMPERATURE
from lmscope.io import atomic_write_text
from lmscope.render import plots
from lmscope.render.tables import markdown_table, read_csv, write_csv
from lmscope.run.checkpoint import Checkpoint, load, read_meta, select_checkpoints
from lmscope.run.run_dir import RunDir
from lmscope.train.trainer import train

NAMED = ("early", "mid", "late")
HEADER = ["start", "start_iter", "target_before", "target_after", "target_gain", "source_before",
          "source_after", "forgetting", "target_oov_rate"]


def pick_checkpoints(run, spec: str) -> dict[str, Path]:
    """Checkpoints by name: "early,mid,late" and/or iterations ("500,2000") and/or "final".

    early is the first kept checkpoint after iteration 0 (iteration 0 is the untrained model;
    ask for it as "0"), late is the final one, mid the one nearest to half of late's iteration.
    """
    found = select_checkpoints(run)
    iters = {p: int(read_meta(p).get("iter", 0)) for p in found}
    late = found[-1]
    trained = [p for p in found if iters[p] > 0] or found
    picked: dict[str, Path] = {}
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise LmscopeError("--checkpoints is empty: give early,mid,late or iterations like 500,2000")
    for item in items:
        if item == "early":
            picked[item] = trained[0]
        elif item == "late" or item == "final":
            picked[item] = late
        elif item == "mid":
            half = iters[late] / 2
            picked[item] = min(trained, key=lambda p: (abs(iters[p] - half), iters[p]))
        elif item.isdigit():
            match = [p for p in found if iters[p] == int(item)]
            if not match:
                have = ", ".join(str(iters[p]) for p in found)
                raise LmscopeError(f"{run} has no checkpoint at iteration {item}; it has {have}")
            picked[f"iter {item}"] = match[0]
        else:
            raise LmscopeError(f"unknown checkpoint {item!r}: use early, mid, late, final or an "
                               "iteration number")
    merged: dict[Path, list[str]] = {}  # one fine-tuning per checkpoint, under all its names
    for name, path in picked.items():
        merged.setdefault(path, []).append(name)
    return {"=".join(names): path for path, names in merged.items()}


@dataclass
class TransferRun:
    start: str  # early / mid / late / iter N
    checkpoint: Path
    start_iter: int
    run_dir: Path
    curve: list[dict]  # {"step", "target_loss", "source_loss"} at every evaluation
    samples: dict[str, str] = field(default_factory=dict)  # "before" / "after" -> text

    oov_rate: float = 0.0  # of the target text, under the source model's vocabulary

    @property
    def summary(self) -> TransferSummary:
        a, b = self.curve[0], self.curve[-1]
        return TransferSummary(self.start, self.start_iter, a["target_loss"], b["target_loss"],
                               a["target_loss"] - b["target_loss"], a["source_loss"],
                               b["source_loss"], b["source_loss"] - a["source_loss"],
                               self.oov_rate)


@dataclass
class TransferSummary:
    """Before (step 0) and after (the last step) of one fine-tuning: a row of summary.csv."""

    start: str
    start_iter: int
    target_before: float
    target_after: float
    target_gain: float  # before - after on the target
    source_before: float
    source_after: float
    forgetting: float  # after - before on the source
    # the fraction of the target's characters outside the source model's vocabulary: they are
    # fine-tuned on as <unk>, and the target losses include them
    target_oov_rate: float = 0.0

    def cells(self) -> list:
        return [self.start, self.start_iter, self.target_before, self.target_after,
                self.target_gain, self.source_before, self.source_after, self.forgetting,
                self.target_oov_rate]


@dataclass
class TransferResult:
    """Fine-tuning from several checkpoints of a `source` model on a `target` corpus."""

    source: str  # the source corpus's short name
    target: str  # the target corpus's name
    summaries: list[TransferSummary]
    runs: list[TransferRun] = field(default_factory=list)  # curves and samples; empty after load
    prompt: str = "\n"
    seed: int = 1337

    def save(self, out_dir, *, skip: Sequence[str] = ()) -> None:
        """curves.csv, curves.png (unless it matches a pattern of `skip`: plots.drawn),
        summary.csv, summary.md and samples.md."""
        _write(self, Path(out_dir), skip)

    @classmethod
    def load(cls, out_dir) -> TransferResult:
        """summary.csv (numbers to 6 significant digits); the corpus names are in summary.md."""
        rows = read_csv(Path(out_dir) / "summary.csv")
        return cls("", "", [TransferSummary(r["start"], int(r["start_iter"]),
                                            *(float(r[k]) for k in HEADER[2:] if k in r))
                            for r in rows])


@dataclass
class CurvePoint:
    """One evaluation of one fine-tuning: a row of curves.csv."""

    start: str
    start_iter: int
    step: int
    target_loss: float
    source_loss: float


def load_curves(out_dir) -> list[CurvePoint]:
    """curves.csv of a transfer folder: every evaluation of every fine-tuning."""
    return [CurvePoint(r["start"], int(r["start_iter"]), int(r["step"]), float(r["target_loss"]),
                       float(r["source_loss"])) for r in read_csv(Path(out_dir) / "curves.csv")]


def transfer(run, target: str, out_dir, *, checkpoints: str = "early,mid,late", iters: int = 200,
             eval_every: int = 20, eval_iters: int = 20, overrides=(), sample_prompt: str = "\n",
             sample_tokens: int | None = 200, seed: int = 1337, device: str = "auto",
             max_oov_rate: float = 0.05, log=print, skip: Sequence[str] = ()) -> list[TransferRun]:
    """Fine-tune from each picked checkpoint of `run` on `target`; write curves, samples, summary
    (TransferResult.save, which draws no figure matching a pattern of `skip`) into out_dir and
    return the fine-tunings.

    `overrides` are more `train.KEY=VALUE` settings for the fine-tuning runs (batch size, lr, ...);
    by default they train with the source run's own [train] settings.
    A fine-tuning run that finished is reused; one that was stopped is resumed.
    """
    result = compute(run, target, out_dir, checkpoints=checkpoints, iters=iters,
                     eval_every=eval_every, eval_iters=eval_iters, overrides=overrides,
                     sample_prompt=sample_prompt, sample_tokens=sample_tokens, seed=seed,
                     device=device, max_oov_rate=max_oov_rate, log=log, skip=skip)
    result.save(out_dir, skip=skip)
    return result.runs


def compute(run, target: str, out_dir, *, checkpoints: str = "early,mid,late", iters: int = 200,
            eval_every: int = 20, eval_iters: int = 20, overrides=(), sample_prompt: str = "\n",
            sample_tokens: int | None = 200, seed: int = 1337, device: str = "auto",
            max_oov_rate: float = 0.05, log=print, skip: Sequence[str] = ()) -> TransferResult:
    """The fine-tunings (run folders under out_dir/runs/, each with its loss.png unless that
    matches a pattern of `skip`: plots.drawn) with their curves and samples.

    Samples: `sample_tokens` long (None: as long as the source run's own, its train.sample_tokens,
    or 200 where it wrote none) from `sample_prompt` with `seed`. The "before" sample of a
    checkpoint that holds the trainer's sample with that same prompt, length and seed is that
    text, read back (`stored_sample`), not drawn a second time.

    The target's characters outside the source model's vocabulary are counted first; past
    `max_oov_rate` (of either split) nothing is trained and the error says what to do."""
    if iters < 1 or eval_every < 1 or eval_iters < 1:
        raise LmscopeError("--iters, --eval-every and --eval-iters must be at least 1")
    for item in overrides:
        if not item.startswith("train."):
            raise LmscopeError(f"transfer settings are train.KEY=VALUE (the model and data come "
                               f"from the checkpoint and --data), got {item!r}")
    picked = pick_checkpoints(run, checkpoints)
    first = load(next(iter(picked.values())), device="cpu")
    source = first.trained_on
    source_data = first.meta.get("run_config", {}).get("data", {})
    source_train = first.meta.get("run_config", {}).get("train", {})
    if sample_tokens is None:
        sample_tokens = source_train.get("sample_tokens") or 200
    source_corpus = source_data.get("corpus", source)
    if not source:
        raise LmscopeError(f"{run}: its checkpoints do not say which corpus they were trained on")
    # an unknown target, or one the vocabulary cannot read, is an error before anything is written
    found = corpora.resolve(target, val_fraction=source_data.get("val_fraction", 0.1))
    oov_rate = vocabulary_gap(found, first.tokenizer, max_oov_rate, whose=f"{run}'s model",
                              setting="--max-oov-rate")
    if oov_rate:
        log(f"{found.name}: {oov_rate:.2%} of the characters are outside {source}'s vocabulary "
            "(fine-tuned on as <unk>, never sampled)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for name, ckpt_path in picked.items():
        run_dir = RunDir(out / "runs" / name.replace(" ", "_").replace("=", "+"))
        base = dict(first.meta["run_config"])
        base = {"train": dict(base.get("train", {})), "data": dict(base.get("data", {}))}
        base["train"].update(
            init_from=str(ckpt_path.resolve()), max_iters=iters, eval_interval=eval_every,
            eval_iters=eval_iters, lr_decay_iters=0, warmup_iters=min(iters // 10, 100),
            checkpoint_at=[], checkpoint_every=0, sample_tokens=0, seed=seed, device=device,
            final_eval=False,
            eval_corpora=[source_corpus], log_interval=max(1, min(eval_every, 10)))
        base["data"].update(corpus=target, vocab_from=[], max_oov_rate=max_oov_rate)
        config = resolve_config(base=base, overrides=list(overrides))
        if run_dir.is_finished():
            log(f"{name}: fine-tuning already done ({run_dir.path})")
        else:
            resume = run_dir.resumable_state() is not None
            if not resume and run_dir.holds_files():
                raise LmscopeError(f"{run_dir.path} holds an unfinished fine-tuning run that "
                                   "cannot be resumed; remove it and run again")
            log(f"{name}: fine-tuning from {ckpt_path} on {target} for {iters} steps")
            # a bar on a terminal (the trainer's own), silent in a pipe
            train(config, run_dir.path, resume=resume, progress=None, log=lambda *a: None,
                  plot=plots.drawn(run_dir.path / "loss.png", skip))
        curve = [{"step": e.iter, "target_loss": e.val_loss,
                  "source_loss": e.val_loss_of(source)} for e in run_dir.metrics().evaluations]
        runs.append(TransferRun(name, ckpt_path, int(read_meta(ckpt_path).get("iter", 0)),
                                run_dir.path, curve, oov_rate=oov_rate))
    finals = [RunDir(r.run_dir).final_checkpoint() for r in runs]
    target_name = read_meta(finals[0]).get("corpus", "") or target
    for r, final in zip(runs, finals, strict=True):
        before = stored_sample(r.checkpoint, sample_prompt, sample_tokens, seed)
        if before is None:
            before = _sample(load(r.checkpoint, device="cpu"), sample_prompt, sample_tokens, seed)
        r.samples = {"before": before,
                     "after": _sample(load(final, device="cpu"), sample_prompt, sample_tokens,
                                      seed)}
    return TransferResult(source, target_name, [r.summary for r in runs], runs, sample_prompt,
                          seed)


def _write(result: TransferResult, out: Path, skip: Sequence[str] = ()) -> None:
    source, target_name, results = result.source, result.target, result.runs
    write_csv(out / "curves.csv", ["start", "start_iter", "step", "target_loss", "source_loss"],
              [[r.start, r.start_iter, c["step"], c["target_loss"], c["source_loss"]]
               for r in results for c in r.curve])
    if plots.drawn(out / "curves.png", skip):
        _curves_figure(result, out / "curves.png")

    rows = result.summaries
    write_csv(out / "summary.csv", HEADER, [r.cells() for r in rows])
    steps = results[0].curve[-1]["step"]
    best = min(rows, key=lambda row: row.target_after)
    most = max(rows, key=lambda row: row.target_gain)
    least_forgot = min(rows, key=lambda row: row.forgetting)
    text = [f"# Few-shot transfer: {source} -> {target_name}, {steps} steps\n\n",
            "Losses in nats per character, estimated on the same fixed validation batches at "
            "every point (before = step 0, after = the last step). "
            f"{rows[0].target_oov_rate:.2%} of the {target_name} text is outside the {source} "
            "model's vocabulary (target_oov_rate: fine-tuned on as `<unk>`, never sampled).\n\n",
            markdown_table(HEADER, [r.cells() for r in rows]),
            f"\nDoes partial training make adaptation easier? After {steps} steps the lowest "
            f"{target_name} loss ({best.target_after:.4f}) comes from the **{best.start}** "
            f"checkpoint (iteration {best.start_iter}); the largest drop ({most.target_gain:.4f}) "
            f"from **{most.start}** (iteration {most.start_iter}); the least forgetting of "
            f"{source} ({least_forgot.forgetting:+.4f}) from **{least_forgot.start}**.\n"]
    atomic_write_text(out / "summary.md", "".join(text))

    samples = [f"# Samples before and after fine-tuning on {target_name}\n\n"
               f"Prompt {result.prompt!r}, temperature {DEFAULT_TEMPERATURE:g}, seed {result.seed}.\n"]
    for r in results:
        for when in ("before", "after"):
            samples.append(f"\n## {r.start} (iteration {r.start_iter}), {when}\n\n```text\n"
                           f"{r.samples[when]}\n```\n")
    atomic_write_text(out / "samples.md", "".join(samples))


def _curves_figure(result: TransferResult, path: Path) -> None:
    """curves.png: the target's and the source's loss over the fine-tuning steps, per start."""
    source, target_name, results = result.source, result.target, result.runs
    fig, (ax_t, ax_s) = plots.panels(2, title=f"Fine-tuning {source} models on {target_name}")
    for r in results:
        steps = [c["step"] for c in r.curve]
        label = f"{r.start} (iter {r.start_iter})"
        ax_t.plot(steps, [c["target_loss"] for c in r.curve], marker=".", label=label)
        ax_s.plot(steps, [c["source_loss"] for c in r.curve], marker=".", label=label)
    for ax, what in ((ax_t, f"{target_name} (target) val loss"),
                     (ax_s, f"{source} (source) val loss: forgetting")):
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("nats/char (estimate)")
        ax.set_title(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    plots.save(fig, path)


def stored_sample(checkpoint, prompt: str, tokens: int, seed: int) -> str | None:
    """The sample.txt the trainer wrote into `checkpoint` when its run's train.sample_prompt,
    train.sample_tokens and train.seed are `prompt`, `tokens` and `seed` (the trainer and
    `_sample` draw the same way: generate.SamplingConfig's defaults); None otherwise."""
    path = Path(checkpoint) / "sample.txt"
    if not path.is_file():
        return None
    train = read_meta(checkpoint).get("run_config", {}).get("train", {})
    if (train.get("sample_prompt"), train.get("sample_tokens"), train.get("seed")) != (
            prompt, tokens, seed):
        return None
    text = path.read_text(encoding="utf-8")
    return text if text.startswith(prompt) else None  # the trainer's fallback prompt: not it


def _sample(ckpt: Checkpoint, prompt: str, tokens: int, seed: int) -> str:
    try:
        ckpt.tokenizer.encode(prompt, unknown="error")
    except LmscopeError:  # characters the model does not know: start from a newline instead
        prompt = "\n"
    return prompt + generate(ckpt, prompt, max_new_tokens=tokens, seed=seed)
