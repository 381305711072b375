"""The heads probe over a run's checkpoints (analysis/heads.py): what it computes agrees with the
pure functions of metrics/heads.py on the checkpoints, its tables round-trip, and what training
tracked in RUN/heads.jsonl (track.heads_every) reads back, agrees with the probe at the same
iteration and is drawn as heads_during_training.png. The measures themselves are tested in
tests/metrics/test_heads.py."""

import json
import math

import pytest

from lmscope.analysis.heads import (
    DETECTORS,
    TRACKED,
    HeadRow,
    HeadsResult,
    IclRow,
    best_by_layer,
    compute,
    head_scores,
    induction_loss,
    load_tracked,
    plot_during_training,
)
from lmscope.config import resolve_config
from lmscope.errors import LmscopeError
from lmscope.models import MODELS
from lmscope.run.checkpoint import load, save_checkpoint
from lmscope.train.trainer import train
from tests.conftest import TINY_SETTINGS, TINY_TEXT, png
from tests.test_export import CHARS, tiny_checkpoint


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """A tiny GPT run that tracked its heads every 10 iterations (checkpoints at 10, 20, final),
    with its own cache (as conftest's tiny_run)."""
    root = tmp_path_factory.mktemp("tracked")
    corpus = root / "tiny.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LMSCOPE_CACHE", str(root / "cache"))
        config = resolve_config(data=str(corpus), overrides=[*TINY_SETTINGS,
                                                             "track.heads_every=10",
                                                             "train.sample_tokens=0"])
        train(config, root / "run", progress=False, log=lambda *a: None)
    return root / "run"


def test_probe_over_a_run_round_trips(tiny_run, tiny_corpus, tmp_path):
    result = compute(tiny_run, data=str(tiny_corpus), windows=4, n_sequences=2, device="cpu")
    iters = sorted({r.iteration for r in result.rows})
    assert len(iters) == 3 and len(result.icl) == 3
    assert len(result.rows) == 3 * 2 * 2 * len(DETECTORS)  # checkpoints x layers x heads
    assert all(0.0 <= r.score <= 1.0 for r in result.rows)
    assert all(math.isfinite(r.icl_score) and r.data for r in result.icl)
    final = load(tiny_run, device="cpu").model
    direct = head_scores(final, n_sequences=2, exclude=(0,))
    assert result.scores("induction") == pytest.approx(direct["induction"].numpy(), abs=1e-6)
    files = result.save(tmp_path / "out")
    for d in DETECTORS:
        assert png(tmp_path / "out" / f"heads_{d}.png")
    assert png(tmp_path / "out" / "heads_over_iterations.png")
    assert png(tmp_path / "out" / "icl.png")
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "Induction onset" in summary and "Top heads" in summary
    assert set(files) >= {"heads_csv", "icl_csv", "summary_md"}
    back = HeadsResult.load(tmp_path / "out")
    assert [(r.checkpoint, r.iteration, r.layer, r.head, r.detector) for r in back.rows] == \
        [(r.checkpoint, r.iteration, r.layer, r.head, r.detector) for r in result.rows]
    assert [r.score for r in back.rows] == pytest.approx([r.score for r in result.rows],
                                                         rel=1e-5, abs=1e-9)
    for a, b in zip(back.icl, result.icl, strict=True):
        assert (a.checkpoint, a.iteration, a.seq_len, a.n_sequences, a.data) == \
            (b.checkpoint, b.iteration, b.seq_len, b.n_sequences, b.data)
        assert [a.first_half_loss, a.second_half_loss, a.icl_score] == pytest.approx(
            [b.first_half_loss, b.second_half_loss, b.icl_score], rel=1e-5)

def test_induction_onset_and_summary(tmp_path):
    def rows(best_by_iter):
        return [HeadRow(f"iter_{it}", it, 0, h, d, best if h == 0 else 0.0)
                for it, best in best_by_iter.items() for d in DETECTORS for h in range(2)]

    result = HeadsResult("r", "c", rows({0: 0.1, 10: 0.35, 20: 0.2}), [])
    assert result.induction_onset() == 10
    assert [r.head for r in result.top_heads("induction", 1)] == [0]
    never = HeadsResult("r", "c", rows({0: 0.1, 10: 0.29}), [])
    assert never.induction_onset() is None
    never.save(tmp_path)
    assert "): never." in (tmp_path / "summary.md").read_text()

@pytest.mark.parametrize("model", ["lstm", "kgram"])
def test_runs_without_heads_skip_them_and_keep_icl(tmp_path, tiny_corpus, model):
    path = tiny_checkpoint(tmp_path / "ckpt", model=model)
    result = compute(path, data=str(tiny_corpus), windows=3, n_sequences=2, device="cpu")
    assert result.rows == [] and "skipped" in result.heads_skipped
    (row,) = result.icl
    assert math.isfinite(row.icl_score) and math.isfinite(row.first_half_loss)
    result.save(tmp_path / "out")
    assert "skipped" in (tmp_path / "out" / "summary.md").read_text()
    assert not (tmp_path / "out" / "heads_induction.png").exists()
    assert png(tmp_path / "out" / "icl.png")
    assert HeadsResult.load(tmp_path / "out").rows == []

def test_nothing_to_compute(tmp_path):
    config_cls, model_cls = MODELS["lstm"]
    cfg = config_cls(vocab_size=CHARS.vocab_size, block_size=3, n_embd=8, n_hidden=8)
    save_checkpoint(tmp_path / "short", model_cls(cfg), model_name="lstm", model_config=cfg,
                    tokenizer=CHARS, meta={"iter": 1})
    with pytest.raises(LmscopeError, match="nothing to compute"):
        compute(tmp_path / "short", device="cpu")

def test_icl_rows_hold_nan_without_data(tmp_path):
    result = compute(tiny_checkpoint(tmp_path / "c"), n_sequences=1, device="cpu")
    (row,) = result.icl
    assert math.isnan(row.icl_score) and row.data == ""
    assert result.heads_skipped == "" and len(result.rows) == 2 * 4 * len(DETECTORS)


def test_bad_probe_input(tmp_path):
    with pytest.raises(LmscopeError, match="--n-sequences must be at least 1"):
        compute(tiny_checkpoint(tmp_path / "c"), n_sequences=0, device="cpu")
    with pytest.raises(LmscopeError, match="has no heads.jsonl: train it with --set "
                                           "track.heads_every=N"):
        load_tracked(tmp_path)


def test_load_tracked_reads_heads_jsonl(tracked_run):
    lines = [json.loads(x) for x in (tracked_run / "heads.jsonl").read_text().splitlines()]
    result = load_tracked(tracked_run)
    assert [r.iteration for r in result.icl] == [0, 10, 20, 30]
    assert all(r.checkpoint == TRACKED for r in result.rows + result.icl)
    assert len(result.rows) == 4 * 2 * 2 * len(DETECTORS)  # iterations x layers x heads
    for line in lines:  # every number of the file, in its place
        for d in DETECTORS:
            got = result.scores(d, line["iter"])
            assert got.tolist() == line[d]
        (icl,) = [r for r in result.icl if r.iteration == line["iter"]]
        assert icl.icl_score == line["icl_score"] and icl.seq_len == line["seq_len"] == 32
        assert icl.second_half_loss == line["second_half_loss"]
    metrics = [json.loads(x) for x in (tracked_run / "metrics.jsonl").read_text().splitlines()]
    assert result.train_loss == [(m["iter"], m["loss"]) for m in metrics if m["kind"] == "train"]
    assert result.corpus.endswith("tiny.txt")  # the run's data.corpus


def test_tracked_scores_equal_the_probe_at_the_same_iteration(tracked_run):
    """The trainer's capture at the end and the probe on the final checkpoint: the same
    sequences (8, seed 0, without the unknown id) through two paths."""
    ckpt = load(tracked_run, device="cpu")
    tracked = load_tracked(tracked_run)
    exclude = () if ckpt.tokenizer.unk_id is None else (ckpt.tokenizer.unk_id,)
    direct = head_scores(ckpt.model, n_sequences=8, seed=0, exclude=exclude)
    for d in DETECTORS:
        assert tracked.scores(d, 30) == pytest.approx(direct[d].numpy(), abs=1e-6)
    losses = induction_loss(ckpt.model, n_sequences=8, seed=0, exclude=exclude)
    final = tracked.icl[-1]
    assert final.first_half_loss == pytest.approx(losses.first_half, abs=1e-6)
    assert final.second_half_loss == pytest.approx(losses.second_half, abs=1e-6)


def test_the_probe_saves_and_loads_what_training_tracked(tracked_run, tmp_path):
    result = compute(tracked_run, which="final", n_sequences=2, device="cpu")
    assert result.tracked is not None and len(result.tracked.icl) == 4
    files = result.save(tmp_path / "out")
    assert png(tmp_path / "out" / "heads_during_training.png")
    assert {"tracked_heads_csv", "tracked_icl_csv", "heads_during_training_png"} <= set(files)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "## During training (RUN/heads.jsonl)" in summary
    back = HeadsResult.load(tmp_path / "out")
    assert back.tracked is not None
    assert [(r.iteration, r.layer, r.head, r.detector) for r in back.tracked.rows] == \
        [(r.iteration, r.layer, r.head, r.detector) for r in result.tracked.rows]
    assert [r.score for r in back.tracked.rows] == pytest.approx(
        [r.score for r in result.tracked.rows], rel=1e-5, abs=1e-9)
    assert [r.icl_score for r in back.tracked.icl] == pytest.approx(
        [r.icl_score for r in result.tracked.icl], rel=1e-5)
    assert [i for i, _ in back.tracked.train_loss] == [i for i, _ in result.tracked.train_loss]
    assert [x for _, x in back.tracked.train_loss] == pytest.approx(
        [x for _, x in result.tracked.train_loss], rel=1e-5)
    plain = compute(tracked_run, which="final", n_sequences=2, device="cpu", tracked=False)
    assert plain.tracked is None


def test_best_by_layer_and_the_figure_without_heads(tmp_path):
    rows = [HeadRow(TRACKED, it, layer, head, "induction", score)
            for it, layer, head, score in [(0, 0, 0, 0.1), (0, 0, 1, 0.2), (0, 1, 0, 0.05),
                                           (0, 1, 1, 0.0), (50, 0, 0, 0.1), (50, 0, 1, 0.05),
                                           (50, 1, 0, 0.6), (50, 1, 1, 0.4)]]
    assert best_by_layer(rows, "induction") == {0: [(0, 0.2), (50, 0.1)],
                                                1: [(0, 0.05), (50, 0.6)]}
    assert HeadsResult("r", "c", rows, []).induction_onset() == 50
    icl = [IclRow(TRACKED, it, 32, 8, 4.0, 4.0 - it / 100, 4.1, "c", 3.0, 3.0 - it / 100,
                  -it / 100 if it else math.nan) for it in (0, 50)]
    lstm = HeadsResult("r", "c", [], icl, "no heads", train_loss=[(10, 3.0), (50, 2.5)])
    assert png(plot_during_training(lstm, tmp_path / "lstm.png"))
    with_heads = HeadsResult("r", "c", rows, icl)
    assert png(plot_during_training(with_heads, tmp_path / "gpt.png"))
