"""RunDir: the one reader of a run folder, checked against the files the trainer wrote."""

import json

import pytest

from lmscope.io import read_jsonl
from lmscope.run.run_dir import RunDir, read_metrics


def test_it_reads_what_the_trainer_wrote(tiny_run):
    run = RunDir(tiny_run)
    assert run.is_run() and run.is_finished()
    config = run.config()
    assert config.train.max_iters == 30 and config.model.n_layer == 2
    rows = read_jsonl(tiny_run / "metrics.jsonl")
    assert run.metrics().rows == rows == read_metrics(tiny_run)
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [(e.iter, e.train_loss, e.val_loss) for e in run.metrics().evaluations] == [
        (r["iter"], r["train_loss"], r["val_loss"]) for r in evals]
    assert run.metrics().train_losses == [(r["iter"], r["loss"]) for r in rows
                                          if r["kind"] == "train"]
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert run.summary().val_loss == summary["val_loss"]
    assert run.summary().iterations == summary["iterations"] == 30
    assert list(run.samples()) == ["iter_0000010", "iter_0000020", "final"]
    assert run.samples()["final"] == (tiny_run / "checkpoints" / "final" / "sample.txt").read_text()
    assert run.attention() == read_jsonl(tiny_run / "attention.jsonl")
    assert run.final_checkpoint().name == "final"
    assert run.resumable_state().name == "last"


def test_a_summary_round_trips_byte_for_byte(tiny_run, tmp_path):
    RunDir(tiny_run).summary().save(tmp_path / "summary.json")
    assert (tmp_path / "summary.json").read_bytes() == (tiny_run / "summary.json").read_bytes()


def test_a_folder_that_is_not_a_run(tmp_path):
    run = RunDir(tmp_path)
    assert not run.is_run() and run.summary() is None and run.attention() == []
    assert run.metrics().rows == [] and run.resumable_state() is None
    with pytest.raises(FileNotFoundError):  # lmscope.read_metrics, as it always did
        read_metrics(tmp_path)
