"""Data-parallel training with torchrun (gloo on CPU): 2 processes == 1 process with both batches."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import HANG_TIMEOUT, TINY_SETTINGS

SETTINGS = [*TINY_SETTINGS, "train.max_iters=8", "train.eval_interval=4", "train.log_interval=1",
            "train.sample_tokens=0", "train.checkpoint_at=[]", "model.dropout=0.0"]


def _train(corpus, out, batch_size, nproc=1):
    launcher = [sys.executable, "-m", "lmscope"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={nproc}", "-m", "lmscope"]
    r = subprocess.run([*launcher, "train", "--data", str(corpus), "--out", str(out), "--quiet",
                        "--set", *SETTINGS, f"train.batch_size={batch_size}"],
                       capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _train_losses(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["iter"], r["loss"]) for r in rows if r["kind"] == "train"]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_combined_batch(tiny_corpus, tmp_path):
    _train(tiny_corpus, tmp_path / "one", batch_size=8)
    two = _train(tiny_corpus, tmp_path / "two", batch_size=4, nproc=2)

    one_losses, two_losses = _train_losses(tmp_path / "one"), _train_losses(tmp_path / "two")
    assert [i for i, _ in one_losses] == [i for i, _ in two_losses] == list(range(1, 9))
    for (_, a), (_, b) in zip(one_losses, two_losses, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    wa = load_file(tmp_path / "one" / "checkpoints" / "final" / "model.safetensors")
    wb = load_file(tmp_path / "two" / "checkpoints" / "final" / "model.safetensors")
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5)
    assert two.stdout.count("run folder:") == 1  # only rank 0 prints
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2


@pytest.mark.slow
def test_every_process_stops_when_the_run_folder_is_taken(tiny_corpus, tmp_path):
    """The first process cannot take the lock (another writer holds it): both processes exit
    with the error instead of the second waiting for the first forever."""
    from lmscope.run.lock import FolderLock

    with FolderLock(tmp_path / "busy"):
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            "--nproc_per_node=2", "-m", "lmscope", "train", "--data",
                            str(tiny_corpus), "--out", str(tmp_path / "busy"), "--quiet",
                            "--set", *SETTINGS], capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert r.returncode != 0
    assert "being written by another process" in r.stderr
