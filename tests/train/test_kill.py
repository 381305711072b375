"""A training process killed with SIGKILL at random moments never leaves a run that cannot be
loaded or resumed (every file is written under a temporary name and renamed into place)."""

import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import lmscope
from lmscope.run.checkpoint import list_checkpoints
from tests.conftest import HANG_TIMEOUT, TINY_SETTINGS

# checkpoints and evaluations every few steps, so that many kills land inside a write
BUSY = [*TINY_SETTINGS, "train.max_iters=100000", "train.lr_decay_iters=100000",
        "train.eval_interval=2", "train.eval_iters=1", "train.checkpoint_every=3",
        "train.checkpoint_at=[]", "train.sample_tokens=5", "track.attention_every=2"]


def _check_loadable(run):
    for ckpt in list_checkpoints(run):
        lmscope.load(ckpt, device="cpu")
    rows = lmscope.read_metrics(run)
    assert all(isinstance(r, dict) for r in rows)
    state = json.loads((run / "checkpoints" / "last" / "train_state.json").read_text())
    return state["iter"]


def _saved_iter(run) -> int | None:
    """The iteration of the training state in last/, None where there is none yet."""
    try:
        return json.loads((run / "checkpoints" / "last" / "train_state.json").read_text())["iter"]
    except (OSError, ValueError, KeyError):
        return None


def _wait_for_a_new_state(run, saved: int | None, proc) -> None:
    """Until the process has saved a training state past `saved` (it is training), however slow
    the machine; bounded only against a hang."""
    deadline = time.monotonic() + HANG_TIMEOUT
    while (now := _saved_iter(run)) is None or (saved is not None and now <= saved):
        assert proc.poll() is None, proc.stderr.read().decode()  # it died on its own
        assert time.monotonic() < deadline, f"no new training state after {HANG_TIMEOUT} s"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_at_random_moments_never_breaks_a_run(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    rng = random.Random(0)
    start = [sys.executable, "-m", "lmscope", "train", "--data", str(tiny_corpus), "--out",
             str(run), "--quiet", "--set", *BUSY]
    resume = [sys.executable, "-m", "lmscope", "train", "--out", str(run), "--resume", "--quiet"]
    iters, mid_write, kills = [], 0, 0
    # Kill until at least 8 kills landed after training began and one landed inside a write:
    # a state to reach, not a number of tries (bounded against a machine where writes never
    # overlap a kill).
    while len(iters) < 8 or not mid_write:
        assert kills < 60, f"no kill landed inside a checkpoint write in {kills}; make writes busier"
        kills += 1
        saved = _saved_iter(run)
        proc = subprocess.Popen(resume if saved is not None else start,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_for_a_new_state(run, saved, proc)  # past start-up, into training (a state)
        time.sleep(rng.uniform(0.0, 1.0))  # then a random moment: often inside a write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        leftovers = list((run / "checkpoints").glob(".*.tmp-*")) if run.exists() else []
        mid_write += bool(leftovers)
        if (run / "checkpoints" / "last" / "train_state.json").is_file():
            iters.append(_check_loadable(run))
    assert iters == sorted(iters) and iters[-1] > iters[0]  # every restart went on from the last
    # and the run still finishes normally
    done = subprocess.run([*resume, "--set", f"train.max_iters={iters[-1] + 4}"],
                          capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert not list((run / "checkpoints").glob(".*.tmp-*"))  # the leftovers were cleared
    # exact resume: all those kills later, the same weights and losses as one uninterrupted run
    n = iters[-1] + 4
    straight = tmp_path / "straight"
    plain = subprocess.run([*start[:7], str(straight), "--quiet", "--set", *BUSY,
                            f"train.max_iters={n}"], capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert plain.returncode == 0, plain.stderr
    a = load_file(run / "checkpoints" / "final" / "model.safetensors")
    b = load_file(straight / "checkpoints" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    def losses(folder):
        return {r["iter"]: r["loss"] for r in lmscope.read_metrics(folder)
                if r["kind"] == "train" and r["iter"] > 0}
    assert losses(run) == losses(straight)
