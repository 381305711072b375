"""Head tracking during training (track.heads_every): what RUN/heads.jsonl holds, that it changes
nothing, that it resumes, what TensorBoard gets, and its bad settings."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lmscope.config import resolve_config
from lmscope.errors import ConfigError, LmscopeError
from lmscope.metrics.heads import DETECTORS
from lmscope.train.tensorboard import heads_scalars
from lmscope.train.trainer import train
from tests.conftest import TINY_SETTINGS, straight_and_resumed
from tests.train.test_tensorboard import _events

FAST = [*TINY_SETTINGS, "train.sample_tokens=0"]


def _train(corpus, run_dir, *extra, model=None, settings=FAST, **kw):
    config = resolve_config(data=str(corpus), model=model, overrides=[*settings, *extra])
    return train(config, run_dir, progress=False, log=lambda *a: None, **kw)


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "heads.jsonl").read_text().splitlines()]


def test_heads_jsonl_holds_every_measure_at_every_interval(tiny_corpus, tmp_path):
    _train(tiny_corpus, tmp_path / "r", "track.heads_every=10", "track.attention_batch=3")
    rows = _rows(tmp_path / "r")
    assert [r["iter"] for r in rows] == [0, 10, 20, 30]  # every 10, the start and the end
    vocab = json.loads((tmp_path / "r" / "tokenizer.json").read_text())
    for r in rows:
        assert (r["seq_len"], r["n_sequences"], r["windows"]) == (32, 8, 3)
        for d in DETECTORS:  # (layer, head) = 2 x 2, each a mean of probabilities
            assert len(r[d]) == 2 and all(len(heads) == 2 for heads in r[d])
            assert all(0.0 <= s <= 1.0 for heads in r[d] for s in heads)
        for key in ("first_half_loss", "second_half_loss", "early_loss", "late_loss"):
            assert math.isfinite(r[key]) and r[key] > 0, key
        assert r["icl_score"] == pytest.approx(r["late_loss"] - r["early_loss"])
    assert rows[0]["uniform_loss"] == pytest.approx(math.log(len(vocab["chars"])))  # no <unk>
    # at initialisation attention is near uniform over the visible keys: the induction key
    # of query q gets about 1/(q+1), averaged over the queries L .. 2L-1 of the second half
    uniform_induction = sum(1 / (q + 1) for q in range(16, 32)) / 16
    assert sum(rows[0]["induction"], []) == pytest.approx([uniform_induction] * 4, rel=0.05)
    assert (tmp_path / "r" / "attention.jsonl").read_text() != ""  # attention still tracked


def test_by_default_the_heads_are_tracked_with_the_attention(tiny_corpus, tmp_path):
    _train(tiny_corpus, tmp_path / "r", "track.attention_every=20")
    assert [r["iter"] for r in _rows(tmp_path / "r")] == [0, 20, 30]  # every 20, and the end
    attention = (tmp_path / "r" / "attention.jsonl").read_text().splitlines()
    assert [json.loads(x)["iter"] for x in attention] == [0, 20, 30]


def test_heads_tracking_leaves_the_trajectory_unchanged(tiny_corpus, tmp_path):
    _train(tiny_corpus, tmp_path / "off", "track.heads_every=0", "model.dropout=0.1")
    _train(tiny_corpus, tmp_path / "on", "track.heads_every=5", "model.dropout=0.1")
    assert not (tmp_path / "off" / "heads.jsonl").exists()
    assert len(_rows(tmp_path / "on")) == 7
    a = load_file(tmp_path / "off" / "checkpoints" / "final" / "model.safetensors")
    b = load_file(tmp_path / "on" / "checkpoints" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = [(tmp_path / r / "metrics.jsonl").read_text().splitlines() for r in ("off", "on")]
    losses = [[json.loads(x).get("loss") for x in m] for m in metrics]
    assert losses[0] == losses[1]


def test_a_resumed_run_tracks_each_iteration_once(tiny_corpus, tmp_path, monkeypatch):
    runs = straight_and_resumed(tiny_corpus, tmp_path, monkeypatch,
                                ("train.sample_tokens=0", "track.heads_every=4",
                                 "train.checkpoint_at=[]"))
    straight, resumed = map(_rows, runs)
    assert [r["iter"] for r in resumed] == [r["iter"] for r in straight] == [*range(0, 30, 4), 30]
    for a, b in zip(straight, resumed, strict=True):
        assert sum(a["induction"], []) == pytest.approx(sum(b["induction"], []), abs=1e-9)
        assert a["icl_score"] == pytest.approx(b["icl_score"], abs=1e-9)


@pytest.mark.parametrize("model", ["lstm", "kgram"])
def test_models_without_heads_track_only_the_losses(tiny_corpus, tmp_path, model):
    settings = [s for s in FAST if not s.startswith("model.")] + ["model.block_size=16"]
    _train(tiny_corpus, tmp_path / model, "track.heads_every=15", model=model, settings=settings)
    rows = _rows(tmp_path / model)
    assert [r["iter"] for r in rows] == [0, 15, 30]
    for r in rows:
        assert not set(DETECTORS) & set(r)
        assert r["seq_len"] == 16 and math.isfinite(r["icl_score"])
        assert math.isfinite(r["first_half_loss"]) and math.isfinite(r["second_half_loss"])


def test_tensorboard_gets_the_best_heads_and_the_losses(tiny_corpus, tmp_path):
    pytest.importorskip("tensorboard")
    _train(tiny_corpus, tmp_path / "r", "track.heads_every=10", "log.tensorboard=true")
    events = _events(tmp_path / "r")
    rows = _rows(tmp_path / "r")
    best = [max(max(heads) for heads in r["induction"]) for r in rows]
    assert [s for s, _ in events["heads/induction_max"]] == [0, 10, 20, 30]
    assert [v for _, v in events["heads/induction_max"]] == pytest.approx(best, rel=1e-6)
    assert [v for _, v in events["heads/icl_score"]] == pytest.approx(
        [r["icl_score"] for r in rows], rel=1e-6)
    assert "heads/previous_token_max/layer1" in events


def test_heads_scalars_of_a_hand_built_row():
    row = {"iter": 5, "first_half_loss": 3.0, "second_half_loss": 2.0, "icl_score": None,
           "early_loss": None, "late_loss": None,
           "induction": [[0.1, 0.4], [0.7, 0.2]], "previous_token": [[0.9, 0.0], [0.1, 0.3]]}
    assert heads_scalars(row) == {
        "heads/first_half_loss": 3.0, "heads/second_half_loss": 2.0,
        "heads/induction_max": 0.7, "heads/induction_max/layer0": 0.4,
        "heads/induction_max/layer1": 0.7, "heads/previous_token_max": 0.9,
        "heads/previous_token_max/layer0": 0.9, "heads/previous_token_max/layer1": 0.3}


def test_a_start_killed_after_writing_heads_jsonl_starts_again(tiny_corpus, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "heads.jsonl").write_text('{"iter": 0}\n')  # what a start killed at once leaves
    (run / "metrics.jsonl").write_text("")
    _train(tiny_corpus, run, "track.heads_every=10")
    assert [r["iter"] for r in _rows(run)] == [0, 10, 20, 30]


def test_bad_settings(tiny_corpus, tmp_path):
    with pytest.raises(ConfigError, match="track.heads_every must not be negative, got -1"):
        resolve_config(data=str(tiny_corpus), overrides=["track.heads_every=-1"])
    short = [s for s in FAST if not s.startswith("model.block_size")] + ["model.block_size=3"]
    with pytest.raises(LmscopeError, match="track.heads_every needs model.block_size of at "
                                           "least 4 .*got 3"):
        _train(tiny_corpus, tmp_path / "short", "track.heads_every=5", settings=short)
    assert not (tmp_path / "short").exists()  # a failed start leaves nothing
