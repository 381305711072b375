import csv
import json

import pytest
import torch

import lmscope
from lmscope.analysis.transfer import _sample, pick_checkpoints, stored_sample, transfer
from lmscope.errors import LmscopeError
from tests.conftest import png


def test_pick_checkpoints(domain_runs):
    run = domain_runs["play"]
    picked = pick_checkpoints(run, "early,mid,late")
    assert [p.name for p in picked.values()] == ["iter_0000010", "final"] or \
        [p.name for p in picked.values()] == ["iter_0000010", "iter_0000020", "final"]
    # mid is nearest half of the final iteration (30 -> 10 or 20, the earlier on a tie);
    # a checkpoint picked under two names is fine-tuned once
    assert list(picked) == ["early=mid", "late"]
    assert [p.name for p in pick_checkpoints(run, "0,20,final").values()] == [
        "iter_0000000", "iter_0000020", "final"]
    with pytest.raises(LmscopeError, match="no checkpoint at iteration 15; it has 0, 10, 20, 30"):
        pick_checkpoints(run, "15")
    with pytest.raises(LmscopeError, match="unknown checkpoint 'soon'"):
        pick_checkpoints(run, "early,soon")


def test_fine_tuning_starts_from_the_checkpoint_and_tracks_both_losses(domain_runs, tmp_path):
    out = tmp_path / "t"
    results = transfer(domain_runs["play"], str(domain_runs["corpora"]["sums"]), out,
                       checkpoints="0,late", iters=12, eval_every=4, eval_iters=2,
                       sample_tokens=20, device="cpu", log=lambda *a: None)
    assert [r.start for r in results] == ["iter 0", "late"]
    for r in results:
        assert [c["step"] for c in r.curve] == [0, 4, 8, 12]
        # the fine-tuned model starts from the source checkpoint's weights and tokenizer
        start = lmscope.load(r.checkpoint, device="cpu")
        tuned = lmscope.load(r.run_dir / "checkpoints" / "final", device="cpu")
        assert tuned.tokenizer.to_dict() == start.tokenizer.to_dict()
        assert tuned.meta["corpus"] == "sums" and tuned.iteration == 12
        first_eval = json.loads((r.run_dir / "metrics.jsonl").read_text().splitlines()[0])
        assert first_eval["kind"] == "eval" and first_eval["iter"] == 0
        assert "val_loss:play" in first_eval  # the source corpus, for forgetting
        diff = [not torch.equal(a, b) for a, b in zip(start.model.state_dict().values(),
                                                       tuned.model.state_dict().values(),
                                                       strict=True)]
        assert any(diff)  # and it trained
    # the untrained start adapts: its target loss falls
    scratch = results[0].curve
    assert scratch[-1]["target_loss"] < scratch[0]["target_loss"]

    with open(out / "summary.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["start"] for r in rows] == ["iter 0", "late"]
    for row in rows:
        assert float(row["target_gain"]) == pytest.approx(
            float(row["target_before"]) - float(row["target_after"]), abs=1e-5)
    assert "Does partial training make adaptation easier?" in (out / "summary.md").read_text()
    samples = (out / "samples.md").read_text()
    assert samples.count("before") >= 2 and samples.count("after") >= 2
    assert png(out / "curves.png")
    with open(out / "curves.csv", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 8

    # a second call reuses the finished runs
    mtime = (results[0].run_dir / "summary.json").stat().st_mtime_ns
    transfer(domain_runs["play"], str(domain_runs["corpora"]["sums"]), out, checkpoints="0,late",
             iters=12, eval_every=4, eval_iters=2, sample_tokens=20, device="cpu",
             log=lambda *a: None)
    assert (results[0].run_dir / "summary.json").stat().st_mtime_ns == mtime


def test_a_checkpoints_own_sample_is_the_before_sample(domain_runs, tmp_path):
    """The trainer's sample at a checkpoint is what the transfer would draw there with the same
    prompt, length and seed, so it is read back; with other settings it is drawn afresh."""
    run = domain_runs["play"]
    train = lmscope.load(run, device="cpu").meta["run_config"]["train"]
    prompt, tokens, seed = train["sample_prompt"], train["sample_tokens"], train["seed"]
    for name in ("iter_0000010", "final"):
        checkpoint = run / "checkpoints" / name
        held = stored_sample(checkpoint, prompt, tokens, seed)
        assert held == (checkpoint / "sample.txt").read_text(encoding="utf-8")
        assert held == _sample(lmscope.load(checkpoint, device="cpu"), prompt, tokens, seed)
        for other in ((prompt, tokens + 1, seed), (prompt, tokens, seed + 1),
                      ("The ", tokens, seed)):
            assert stored_sample(checkpoint, *other) is None
    # sample_tokens=None: the source run's own length, and "before" is its checkpoint's sample
    out = tmp_path / "t"
    transfer(run, str(domain_runs["corpora"]["sums"]), out, checkpoints="late", iters=2,
             eval_every=1, eval_iters=1, sample_tokens=None, seed=seed, device="cpu",
             log=lambda *a: None)
    samples = (out / "samples.md").read_text(encoding="utf-8")
    before = (run / "checkpoints" / "final" / "sample.txt").read_text(encoding="utf-8")
    assert f"before\n\n```text\n{before}\n```" in samples


def test_transfer_bad_input(domain_runs, tmp_path):
    target = str(domain_runs["corpora"]["sums"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(LmscopeError, match="no checkpoints"):
        transfer(tmp_path / "empty", target, tmp_path / "o", log=lambda *a: None)
    with pytest.raises(LmscopeError, match="unknown corpus"):
        transfer(domain_runs["play"], "no-such-corpus", tmp_path / "o", iters=2,
                 checkpoints="late", log=lambda *a: None)
    with pytest.raises(LmscopeError, match="train.KEY=VALUE"):
        transfer(domain_runs["play"], target, tmp_path / "o", overrides=["model.n_layer=3"],
                 log=lambda *a: None)
    with pytest.raises(LmscopeError, match="at least 1"):
        transfer(domain_runs["play"], target, tmp_path / "o", iters=0, log=lambda *a: None)
