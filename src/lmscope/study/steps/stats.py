"""stats: the characters of each corpus (lmscope data stats)."""

from __future__ import annotations

from lmscope.analysis import corpus_stats
from lmscope.study.registry import Step, StepContext, markdown_body


def run(ctx: StepContext) -> None:
    corpus_stats.compute(ctx.study.corpora).save(ctx.out / "stats")


def readme(ctx: StepContext) -> str:
    table = ctx.out / "stats" / "table.md"
    if not table.is_file():
        return ""
    names = [ctx.corpus_dir(c).name for c in ctx.study.corpora]
    return ("\n## Corpora\n\n" + markdown_body(table) +
            "".join(f"\n![{n}](stats/chars_{n}.png)" for n in names) + "\n")


STEP = Step(
    "stats", "size, unique characters, top 5 and non-ASCII characters of each corpus: "
    "stats/table.md, chars_<corpus>.png", run, result=corpus_stats.CorpusStatsResult,
    command="lmscope data stats", readme=readme, report_title="Corpora")
