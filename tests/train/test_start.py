"""How a run starts (issue 15): the out-of-vocabulary rate of a fine-tuning, the learning-rate
schedule it prints, and a start that fails or is stopped leaves nothing behind."""

import itertools
import json
import math
import signal
import sys

import pytest
import torch

from lmscope.config import resolve_config
from lmscope.errors import LmscopeError
from lmscope.train.trainer import Trainer, TrainingInterrupted, train
from tests.conftest import TINY_SETTINGS, TINY_TEXT
from tests.terminal import Terminal


def _config(corpus, *extra):
    return resolve_config(data=str(corpus), overrides=[*TINY_SETTINGS, *extra])


def _train(config, run_dir, log=None, **kw):
    lines = [] if log is None else log
    return train(config, run_dir, progress=False, log=lines.append, **kw)


def test_fine_tuning_onto_text_the_vocabulary_cannot_cover_stops_before_it_starts(
        tiny_run, tmp_path):
    foreign = tmp_path / "greek.txt"
    foreign.write_text("αβγδε ζηθ ικλμν ξοπ ρστυφ χψω\n" * 200, encoding="utf-8")
    out = tmp_path / "new" / "finetune"
    with pytest.raises(LmscopeError) as e:
        _train(_config(foreign, f"train.init_from={tiny_run}"), out)
    message = str(e.value)
    assert "% of the train split's characters are outside the vocabulary of the checkpoint of " \
           "train.init_from" in message
    assert "data.vocab_from" in message and "data.tokenizer=byte" in message
    assert "data.max_oov_rate" in message
    assert not (tmp_path / "new").exists()  # nothing left behind, not even the parent folder


def test_a_small_oov_rate_is_logged_and_kept_in_the_summary(tiny_run, tmp_path):
    text = TINY_TEXT.replace("Speak, speak.", "Speak, speak #")  # "#" is not in tiny's vocabulary
    corpus = tmp_path / "hashes.txt"
    corpus.write_text(text, encoding="utf-8")
    expected = text.count("#") / len(text)
    assert 0 < expected < 0.05
    lines = []
    _train(_config(corpus, f"train.init_from={tiny_run}", "train.max_iters=5",
                   "train.checkpoint_at=[]"), tmp_path / "ft", log=lines)
    logged = [line for line in lines if line.startswith("out of vocabulary")]
    assert len(logged) == 1 and "hashes/train" in logged[0] and "hashes/val" in logged[0]
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    rates = summary["oov_rate"]
    total = (rates["hashes/train"] * 0.9 + rates["hashes/val"] * 0.1)  # val_fraction 0.1
    assert total == pytest.approx(expected, rel=0.02)
    # the same text with a limit below its rate stops
    with pytest.raises(LmscopeError, match="limit data.max_oov_rate 0.001"):
        _train(_config(corpus, f"train.init_from={tiny_run}", "data.max_oov_rate=0.001"),
               tmp_path / "ft2")
    assert not (tmp_path / "ft2").exists()


def test_a_run_with_its_own_vocabulary_reports_no_oov(tiny_run):
    assert json.loads((tiny_run / "summary.json").read_text())["oov_rate"] == {}


def test_the_lr_decay_follows_max_iters_set_over_a_preset():
    """The README's `--preset shakespeare-char-cpu --set train.max_iters=300` decays to min_lr
    at iteration 300, not at the preset's 2,000."""
    config = resolve_config(preset="shakespeare-char-cpu", overrides=["train.max_iters=300"])
    trainer = Trainer(config, "unused")
    tc = config.train
    assert trainer.lr_at(tc.max_iters) == tc.min_lr
    # cosine: half-way through the decay the rate is half-way between lr and min_lr
    middle = (tc.warmup_iters + tc.max_iters) / 2
    assert trainer.lr_at(int(middle)) == pytest.approx((tc.lr + tc.min_lr) / 2, rel=1e-9)
    assert trainer.lr_at(tc.max_iters - 1) < tc.min_lr * 1.01
    assert "cosine decay to 0.0003 at iteration 300 (= train.max_iters)" in trainer.schedule()


def test_an_explicit_lr_decay_past_the_end_is_kept_and_said():
    config = resolve_config(preset="shakespeare-char-cpu",
                            overrides=["train.max_iters=300", "train.lr_decay_iters=2000"])
    trainer = Trainer(config, "unused")
    text = trainer.schedule()
    assert "at iteration 2000" in text and "before the decay ends" in text
    end = trainer.lr_at(299)
    assert f"with lr {end:.3g}" in text and end > 0.9 * config.train.lr


def test_the_schedule_is_printed_at_the_start(tiny_corpus, tmp_path):
    lines = []
    _train(_config(tiny_corpus, "train.max_iters=5", "train.checkpoint_at=[]"), tmp_path / "r",
           log=lines)
    assert any(line.startswith("learning rate: warm-up to 0.001 over 5 iterations, cosine decay "
                               "to 0.0001 at iteration 5") for line in lines), lines


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_start_that_fails_leaves_nothing_behind(tiny_corpus, tmp_path):
    with pytest.raises(LmscopeError, match="cuda"):
        _train(_config(tiny_corpus, "train.device=cuda"), tmp_path / "a" / "b" / "run")
    assert not (tmp_path / "a").exists()
    empty = tmp_path / "empty"  # a folder the user made stays, empty
    empty.mkdir()
    with pytest.raises(LmscopeError, match="cuda"):
        _train(_config(tiny_corpus, "train.device=cuda"), empty)
    assert empty.is_dir() and not any(empty.iterdir())


def _stop_in_evaluation(monkeypatch, at_iter: int):
    """Ctrl-C during the evaluation at iteration `at_iter` (the handler's flag, as a real
    SIGINT sets it)."""
    real = Trainer.estimate_loss

    def estimate(self):
        if self.iter == at_iter:
            self._stop_requested = True
        return real(self)

    monkeypatch.setattr(Trainer, "estimate_loss", estimate)


def test_ctrl_c_in_the_first_evaluation_is_no_dead_end(tiny_corpus, tmp_path, monkeypatch):
    _stop_in_evaluation(monkeypatch, 0)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="before the first checkpoint: nothing is saved"):
        _train(_config(tiny_corpus), run)
    assert not run.exists()
    monkeypatch.undo()
    _train(_config(tiny_corpus, "train.max_iters=5", "train.checkpoint_at=[]"), run)  # the same
    assert (run / "summary.json").is_file()


def test_ctrl_c_in_a_later_evaluation_stops_there_and_resumes(tiny_corpus, tmp_path, monkeypatch):
    _stop_in_evaluation(monkeypatch, 10)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="interrupted at iteration 10; the state is saved"):
        _train(_config(tiny_corpus), run)
    state = json.loads((run / "checkpoints" / "last" / "train_state.json").read_text())
    assert state["iter"] == 10
    monkeypatch.undo()
    result = _train(_config(tiny_corpus), run, resume=True)
    assert result.iterations == 30 and math.isfinite(result.val_loss)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if r["kind"] == "eval"] == [0, 10, 20, 30]


def test_a_start_killed_before_its_first_state_is_started_afresh(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("[train]\n")  # what a start killed by SIGKILL leaves
    (run / "tokenizer.json").write_text("{}")
    (run / "metrics.jsonl").write_text("")
    (run / "checkpoints").mkdir()
    lines = []
    _train(_config(tiny_corpus, "train.max_iters=5", "train.checkpoint_at=[]"), run, log=lines)
    assert any("starting afresh" in line for line in lines)
    assert (run / "summary.json").is_file()


def test_a_folder_with_a_file_of_someone_else_is_still_refused(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("[train]\n")
    (run / "notes.md").write_text("mine")
    with pytest.raises(LmscopeError, match="already holds files"):
        _train(_config(tiny_corpus), run)
    assert sorted(p.name for p in run.iterdir()) == ["config.toml", "notes.md"]
    assert (run / "notes.md").read_text() == "mine"


# --- a resume is recorded, the record of the start is kept ---------------------------------------

def test_each_resume_is_recorded_and_config_toml_stays_as_the_run_started(
        tiny_corpus, tmp_path, monkeypatch):
    from lmscope.run.run_dir import RunDir
    from tests.conftest import stop_after

    run = tmp_path / "run"
    restore = stop_after(monkeypatch, 9)
    with pytest.raises(TrainingInterrupted):
        _train(_config(tiny_corpus), run)
    restore()
    started = (run / "config.toml").read_bytes()
    lines = []
    restore = stop_after(monkeypatch, 19)
    with pytest.raises(TrainingInterrupted):
        _train(_config(tiny_corpus, "train.lr=0.002", "train.max_iters=40"), run, resume=True,
               log=lines)
    restore()
    assert (run / "config.toml").read_bytes() == started
    assert "resumed at iteration 10; changed: train.lr 0.001 -> 0.002, train.max_iters 30 -> 40" \
        in lines
    folder = RunDir(run)
    (row,) = folder.resumes()
    assert row["iter"] == 10 and row["changed"] == {"train.lr": [0.001, 0.002],
                                                    "train.max_iters": [30, 40]}
    assert row["lmscope"] and row["time"][:4].isdigit()
    assert folder.config().train.lr == 0.002 and folder.config().train.max_iters == 40
    # a second resume with nothing new keeps the changed values (it does not go back to the start)
    lines = []
    _train(folder.config(), run, resume=True, log=lines)
    assert "resumed at iteration 20, no setting changed" in lines
    assert [r["changed"] for r in folder.resumes()][1] == {}
    assert folder.config().train.lr == 0.002


def test_a_real_ctrl_c_in_a_long_first_evaluation_stops_it_and_leaves_nothing(tiny_corpus,
                                                                               tmp_path):
    """As a user at a terminal: the evaluation's bar is drawn, one Ctrl-C (SIGINT) stops the
    evaluation between batches, and the rerun starts fresh in the empty place."""
    run = tmp_path / "run"
    endless = ["train.eval_iters=10000000"]  # the first evaluation would never end on its own
    term = Terminal([sys.executable, "-m", "lmscope", "train", "--data", str(tiny_corpus),
                     "--out", str(run), "--set", *TINY_SETTINGS, *endless])
    term.wait_for("eval:")  # the evaluation's bar: it is evaluating
    term.proc.send_signal(signal.SIGINT)
    code, _, screen = term.finish()
    assert code == 130  # stopped by the user (128 + SIGINT), as a shell reports it
    assert "stopping: no state has been saved yet" in screen
    assert "interrupted before the first checkpoint: nothing is saved" in screen
    assert "Traceback" not in screen
    assert not run.exists()


def test_the_wsd_schedule_at_its_corners():
    """train.schedule = wsd (warm-up, stable, decay): lr rises linearly over the warm-up, holds
    at lr until the last decay_frac of the iterations, falls linearly to min_lr at the end, and
    stays there; printed in words."""
    config = resolve_config(preset="shakespeare-char-cpu", overrides=[
        "train.max_iters=1000", "train.warmup_iters=100", "train.schedule=wsd",
        "train.decay_frac=0.25", "train.lr=0.004", "train.min_lr=0.0004"])
    trainer = Trainer(config, "unused")
    lr, low = 0.004, 0.0004
    assert trainer.lr_at(0) == pytest.approx(lr / 101)  # the warm-up, as cosine's
    assert trainer.lr_at(99) == pytest.approx(lr * 100 / 101)
    assert trainer.lr_at(100) == trainer.lr_at(500) == trainer.lr_at(749) == lr  # stable
    assert trainer.lr_at(750) == lr  # the decay starts at 1000 - 0.25 x 1000
    assert trainer.lr_at(875) == pytest.approx((lr + low) / 2)  # half-way down, linearly
    assert trainer.lr_at(999) == pytest.approx(low + (lr - low) / 250)
    assert trainer.lr_at(1000) == trainer.lr_at(5000) == low
    steps = [trainer.lr_at(i) for i in range(750, 1001)]
    assert all(a > b for a, b in itertools.pairwise(steps))  # strictly down
    assert trainer.schedule() == ("learning rate: warm-up to 0.004 over 100 iterations, stable "
                                  "to iteration 750, linear decay to 0.0004 at iteration 1000 "
                                  "(= train.max_iters)")
    whole = resolve_config(preset="shakespeare-char-cpu", overrides=[
        "train.max_iters=10", "train.warmup_iters=4", "train.schedule=wsd", "train.decay_frac=1"])
    assert Trainer(whole, "unused").lr_at(4) == whole.train.lr  # decays from the warm-up's end
