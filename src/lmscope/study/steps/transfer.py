"""transfer: few-shot fine-tuning of every model on every other corpus, from its early, mid and
late checkpoints (lmscope transfer), and the answer to "does partial training make adaptation
easier?" across pairs."""

from __future__ import annotations

import math
from dataclasses import dataclass

from lmscope.analysis import transfer as probe
from lmscope.analysis.transfer import CurvePoint, TransferResult, TransferSummary, load_curves
from lmscope.data.corpora import corpus_label
from lmscope.io import atomic_write_text
from lmscope.render import plots
from lmscope.render.tables import markdown_table, write_csv
from lmscope.study.registry import Part, Step, StepContext, readme_section, unit_name

HEADER = ["source", "target", *probe.HEADER]


@dataclass
class TransferSettings:
    checkpoints: str = "early,mid,late"
    iters: int = 200
    eval_every: int = 20
    eval_iters: int = 20


def _pairs(ctx: StepContext) -> list[tuple[str, str]]:
    corpora = ctx.study.corpora
    return [(a, b) for a in corpora for b in corpora if a != b]


def _pair_folder(ctx: StepContext, source: str, target: str) -> str:
    return f"{ctx.corpus_dir(source).name}-to-{ctx.corpus_dir(target).name}"


def parts(ctx: StepContext) -> list[Part]:
    """A unit per pair, started as soon as its source model is trained."""
    return [Part(_pair_folder(ctx, source, target), (source, target),
                 (unit_name("train", ctx.corpus_dir(source).name),))
            for source, target in _pairs(ctx)]


def part(ctx: StepContext, pair: tuple[str, str]) -> None:
    """One pair: `lmscope transfer` of the source's run onto the target corpus."""
    source, target = pair
    ts = ctx.settings
    folder = ctx.out / "transfer" / _pair_folder(ctx, source, target)
    ctx.log(f"  {folder.name}")
    probe.transfer(ctx.corpus_dir(source), target, folder, checkpoints=ts.checkpoints,
                   iters=ts.iters, eval_every=ts.eval_every, eval_iters=ts.eval_iters,
                   sample_tokens=None,  # as long as the runs' own samples: "before" is theirs
                   device=ctx.device, log=lambda m: ctx.log(f"    {m}"), skip=ctx.skip_figures)


def run(ctx: StepContext) -> None:
    """The table of every pair, its answer, and each source's curves."""
    ts = ctx.settings
    rows: list[tuple[str, str, TransferSummary]] = []
    for source, target in _pairs(ctx):
        folder = ctx.out / "transfer" / _pair_folder(ctx, source, target)
        rows += [(corpus_label(source), corpus_label(target), s)
                 for s in TransferResult.load(folder).summaries]
    table = [[source, target, *s.cells()] for source, target, s in rows]
    write_csv(ctx.out / "transfer" / "summary.csv", HEADER, table)
    atomic_write_text(ctx.out / "transfer" / "summary.md",
                      f"# Few-shot transfer, every pair, {ts.iters} steps\n\n"
                      "Losses in nats per character (estimates on fixed validation batches); "
                      "gain = before - after on the target, forgetting = after - before on "
                      "the source.\n\n" + markdown_table(HEADER, table) + "\n" + _answer(rows))
    for source in ctx.study.corpora:
        _curves_from(ctx, source)


def _curves_from(ctx: StepContext, source: str) -> None:
    """transfer/from_<source>.png: small multiples of every fine-tuning of the source model, a
    row per target corpus: the target's loss, and the source's (forgetting)."""
    name = ctx.corpus_dir(source).name
    targets = [t for s, t in _pairs(ctx) if s == source]
    fig, axes = plots.grid(len(targets), 2, title=f"Fine-tuning the {name} model from each "
                           "starting checkpoint", width=5.0, height=2.8, sharex=True)
    handles: dict[str, object] = {}
    for (ax_target, ax_source), target in zip(axes, targets, strict=True):
        target_name = ctx.corpus_dir(target).name
        curves: dict[str, list[CurvePoint]] = {}
        for point in load_curves(ctx.out / "transfer" / _pair_folder(ctx, source, target)):
            curves.setdefault(f"{point.start} (iteration {point.start_iter})", []).append(point)
        for i, (label, points) in enumerate(curves.items()):
            steps = [p.step for p in points]
            (line,) = ax_target.plot(steps, [p.target_loss for p in points], marker=".",
                                     color=f"C{i}")
            ax_source.plot(steps, [p.source_loss for p in points], marker=".", color=f"C{i}")
            handles.setdefault(label, line)
        ax_target.set_title(f"on {target_name}: {target_name} loss (target)", fontsize=10)
        ax_source.set_title(f"on {target_name}: {name} loss (forgetting)", fontsize=10)
        for ax in (ax_target, ax_source):
            ax.set_ylabel("nats/char")
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("fine-tuning step")
    plots.legend_below(fig, list(handles.values()), list(handles))
    plots.save(fig, ctx.out / "transfer" / f"from_{name}.png")


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def _answer(rows: list[tuple[str, str, TransferSummary]]) -> str:
    """'Does partial training make adaptation easier?', answered from the table: for each
    starting checkpoint, in how many pairs it ends lowest, gains most and forgets least."""
    pairs: dict[tuple, list[TransferSummary]] = {}
    for source, target, s in rows:
        pairs.setdefault((source, target), []).append(s)
    starts = list(dict.fromkeys(s.start for _, _, s in rows))
    wins = {start: [0, 0, 0] for start in starts}
    for group in pairs.values():
        wins[min(group, key=lambda s: s.target_after).start][0] += 1
        wins[max(group, key=lambda s: s.target_gain).start][1] += 1
        wins[min(group, key=lambda s: s.forgetting).start][2] += 1
    summaries = [s for _, _, s in rows]
    table = [[start, f"{w[0]} of {len(pairs)}", f"{w[1]} of {len(pairs)}",
              f"{w[2]} of {len(pairs)}",
              _mean(s.target_after for s in summaries if s.start == start),
              _mean(s.target_gain for s in summaries if s.start == start),
              _mean(s.forgetting for s in summaries if s.start == start)]
             for start, w in wins.items()]
    return ("\n## Does partial training make adaptation easier?\n\nFor each starting checkpoint: "
            "in how many source-target pairs it reaches the lowest target loss, the largest gain "
            "and the least forgetting, and its means over pairs.\n\n" + markdown_table(
                ["start", "lowest target loss", "largest gain", "least forgetting",
                 "mean target after", "mean gain", "mean forgetting"], table))


def readme(ctx: StepContext) -> str:
    return readme_section(ctx, "Few-shot transfer", "transfer/summary.md",
                          [f"transfer/from_{ctx.corpus_dir(c).name}.png"
                           for c in ctx.study.corpora])


STEP = Step(
    "transfer", "fine-tuning from early/mid/late checkpoints on every other corpus: "
    "transfer/<a>-to-<b>/curves.png (target loss and source forgetting), samples.md before and "
    "after, transfer/from_<a>.png (every target of one source), transfer/summary.md", run,
    settings=TransferSettings, result=TransferResult, per_corpus=True,
    command="lmscope transfer", readme=readme, report_title="Few-shot transfer", part=part,
    parts=parts,
    report_hide=("*/*.png",))  # the pairs' curves and fine-tunings: in from_<a>.png
