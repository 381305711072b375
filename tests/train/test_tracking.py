"""Attention tracking during training: what it writes, that it changes nothing, that it resumes."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lmscope.config import resolve_config
from lmscope.train.trainer import train
from tests.conftest import TINY_SETTINGS, straight_and_resumed


def _train(corpus, run_dir, *extra, **kw):
    config = resolve_config(data=str(corpus), overrides=[*TINY_SETTINGS, *extra])
    return train(config, run_dir, progress=False, log=lambda *a: None, **kw)


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "attention.jsonl").read_text().splitlines()]


def test_tracking_writes_finite_metrics_at_every_interval(tiny_corpus, tmp_path):
    _train(tiny_corpus, tmp_path / "r", "track.attention_every=10", "track.attention_batch=3")
    rows = _rows(tmp_path / "r")
    assert [r["iter"] for r in rows] == [0, 10, 20, 30]
    for r in rows:
        assert r["n_layers"] == 2 and r["n_heads"] == 2 and r["n_queries"] == 32
        assert len(r["layers"]) == 2 and len(r["layer_js"]) == 2
        for key in ("entropy_bits", "entropy_norm", "mean_distance", "span90",
                    "head_diversity_js"):
            assert math.isfinite(r[key]), key
        assert 0 <= r["entropy_norm"] <= 1 + 1e-9
    # an untrained model's attention is close to uniform: normalized entropy near 1
    assert rows[0]["entropy_norm"] > 0.95
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["attention_tracking_s"] > 0
    assert not (tmp_path / "r" / "attention").exists()  # no raw maps unless asked


def test_tracking_leaves_the_trajectory_unchanged(tiny_corpus, tmp_path):
    _train(tiny_corpus, tmp_path / "off", "track.attention_every=0", "model.dropout=0.1")
    _train(tiny_corpus, tmp_path / "on", "track.attention_every=3", "model.dropout=0.1")
    assert not (tmp_path / "off" / "attention.jsonl").exists()
    a = load_file(tmp_path / "off" / "checkpoints" / "final" / "model.safetensors")
    b = load_file(tmp_path / "on" / "checkpoints" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_raw_maps_are_saved_on_request(tiny_corpus, tmp_path):
    _train(tiny_corpus, tmp_path / "r", "track.attention_every=15", "track.save_maps=true",
           "track.attention_batch=2")
    maps = sorted((tmp_path / "r" / "attention").glob("*.safetensors"))
    assert [m.name for m in maps] == ["iter_0000000.safetensors", "iter_0000015.safetensors",
                                      "iter_0000030.safetensors"]
    layers = load_file(maps[-1])
    assert set(layers) == {"layer_0", "layer_1"}
    att = layers["layer_1"].float()
    assert att.shape == (2, 2, 32, 32) and att.dtype == torch.float32
    assert torch.allclose(att.sum(-1), torch.ones(2, 2, 32), atol=1e-2)
    assert float(att.triu(1).abs().max()) == 0.0  # causal


def test_a_resumed_run_tracks_each_iteration_once(tiny_corpus, tmp_path, monkeypatch):
    runs = straight_and_resumed(tiny_corpus, tmp_path, monkeypatch,
                                ("track.attention_every=4", "train.checkpoint_at=[]"))
    straight, resumed = map(_rows, runs)
    assert [r["iter"] for r in resumed] == [r["iter"] for r in straight] == [*range(0, 30, 4), 30]
    for a, b in zip(straight, resumed, strict=True):
        assert a["entropy_bits"] == pytest.approx(b["entropy_bits"], abs=1e-9)


def test_models_without_attention_track_nothing(tiny_corpus, tmp_path):
    settings = [s for s in TINY_SETTINGS if not s.startswith("model.")]
    config = resolve_config(data=str(tiny_corpus), model="lstm",
                            overrides=[*settings, "track.attention_every=5"])
    train(config, tmp_path / "lstm", progress=False, log=lambda *a: None)
    assert not (tmp_path / "lstm" / "attention.jsonl").exists()
