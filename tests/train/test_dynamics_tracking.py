"""Learning-dynamics tracking during training (track.dynamics_every): what RUN/dynamics.jsonl
holds, checked against the checkpoints kept at the same iterations with numpy and a plain
backward pass; that it changes nothing; that it resumes; and its bad settings."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lmscope.config import resolve_config
from lmscope.data.tokens import spaced_windows
from lmscope.errors import ConfigError
from lmscope.run.checkpoint import load
from lmscope.train.trainer import train
from tests.conftest import TINY_SETTINGS, straight_and_resumed

FAST = [*TINY_SETTINGS, "train.sample_tokens=0", "track.attention_every=0"]


def _train(corpus, run_dir, *extra, model=None, settings=FAST, **kw):
    config = resolve_config(data=str(corpus), model=model, overrides=[*settings, *extra])
    return train(config, run_dir, progress=False, log=lambda *a: None, **kw)


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "dynamics.jsonl").read_text().splitlines()]


def test_dynamics_jsonl_agrees_with_the_checkpoints_of_the_same_iterations(tiny_corpus, tmp_path):
    run = tmp_path / "r"
    _train(tiny_corpus, run, "track.dynamics_every=10", "track.attention_batch=3")
    rows = _rows(run)
    assert [r["iter"] for r in rows] == [0, 10, 20, 30]  # every 10, the start and the end
    assert not (run / "attention.jsonl").exists()  # dynamics alone, without the attention
    summary = json.loads((run / "summary.json").read_text())
    assert summary["dynamics_tracking_s"] > 0 and summary["attention_tracking_s"] is None
    row = rows[1]
    ckpt = load(run / "checkpoints" / "iter_0000010", device="cpu")
    weights = {n: p.detach().double().numpy() for n, p in ckpt.model.named_parameters()}
    matrices = [n for n, w in weights.items() if w.ndim == 2]
    assert sorted(row["weight_norm"]) == sorted(matrices)  # the tied head appears once
    for name in matrices:
        s = np.linalg.svd(weights[name], compute_uv=False)
        p = s / s.sum()
        assert row["weight_norm"][name] == pytest.approx(np.linalg.norm(weights[name]), rel=1e-9)
        assert row["spectral_norm"][name] == pytest.approx(s[0], rel=1e-9)
        assert row["effective_rank"][name] == pytest.approx(np.exp(-(p * np.log(p)).sum()),
                                                            rel=1e-9)
    # the probe gradients, recomputed with a plain backward pass on the same windows
    val = ckpt.tokenizer.encode((tiny_corpus.read_text())[-len(tiny_corpus.read_text()) // 10:])
    _, ids = spaced_windows(np.array(val), 32, 3)
    model = ckpt.model.train()  # the tracker switches to eval mode itself; dropout is 0 here
    model.zero_grad()
    logits = model(ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    assert row["probe_loss"] == pytest.approx(loss.item(), rel=1e-5)
    grads = {n: p.grad.double() for n, p in model.named_parameters()}
    layer0 = math.sqrt(sum(g.square().sum().item() for n, g in grads.items()
                           if n.startswith("blocks.0.")))
    assert row["layer_grad_norm"]["0"] == pytest.approx(layer0, rel=1e-4)
    assert list(row["layer_grad_norm"]) == ["embed", "0", "1", "head"]
    total = math.sqrt(sum(g.square().sum().item() for g in grads.values()))
    assert row["grad_norm"] == pytest.approx(total, rel=1e-4)
    assert row["matrix_grad_norm"]["blocks.1.mlp.fc.weight"] == pytest.approx(
        grads["blocks.1.mlp.fc.weight"].norm().item(), rel=1e-4)


def test_dynamics_tracking_leaves_the_trajectory_unchanged(tiny_corpus, tmp_path):
    _train(tiny_corpus, tmp_path / "off", "track.dynamics_every=0", "model.dropout=0.1")
    _train(tiny_corpus, tmp_path / "on", "track.dynamics_every=3", "model.dropout=0.1")
    assert not (tmp_path / "off" / "dynamics.jsonl").exists()
    assert len(_rows(tmp_path / "on")) == 11
    a = load_file(tmp_path / "off" / "checkpoints" / "final" / "model.safetensors")
    b = load_file(tmp_path / "on" / "checkpoints" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = [(tmp_path / r / "metrics.jsonl").read_text().splitlines() for r in ("off", "on")]
    assert [[json.loads(x).get("loss") for x in m] for m in metrics][0] == \
        [[json.loads(x).get("loss") for x in m] for m in metrics][1]


def test_by_default_the_dynamics_follow_the_attention_interval(tiny_corpus, tmp_path):
    _train(tiny_corpus, tmp_path / "r", settings=TINY_SETTINGS + ["track.attention_every=20"])
    assert [r["iter"] for r in _rows(tmp_path / "r")] == [0, 20, 30]


def test_a_resumed_run_tracks_each_iteration_once(tiny_corpus, tmp_path, monkeypatch):
    runs = straight_and_resumed(tiny_corpus, tmp_path, monkeypatch,
                                (*FAST[len(TINY_SETTINGS):], "track.dynamics_every=4",
                                 "train.checkpoint_at=[]"))
    straight, resumed = map(_rows, runs)
    assert [r["iter"] for r in resumed] == [r["iter"] for r in straight] == [*range(0, 30, 4), 30]
    for a, b in zip(straight, resumed, strict=True):
        assert a["weight_norm"] == pytest.approx(b["weight_norm"], rel=1e-9)
        assert a["layer_grad_norm"] == pytest.approx(b["layer_grad_norm"], rel=1e-6)


@pytest.mark.parametrize("model", ["lstm", "kgram"])
def test_every_architecture_is_tracked(tiny_corpus, tmp_path, model):
    settings = [s for s in FAST if not s.startswith("model.")] + ["model.block_size=16"]
    _train(tiny_corpus, tmp_path / model, "track.dynamics_every=15", model=model,
           settings=settings)
    rows = _rows(tmp_path / model)
    assert [r["iter"] for r in rows] == [0, 15, 30]
    layers = ["embed", "0", "1", "head"] if model == "lstm" else ["embed", "0", "head"]
    for r in rows:
        assert list(r["layer_grad_norm"]) == layers
        assert all(v > 0 for v in r["effective_rank"].values())
        assert math.isfinite(r["probe_loss"])


def test_a_negative_interval_is_refused(tiny_corpus):
    with pytest.raises(ConfigError, match="track.dynamics_every must not be negative, got -2"):
        resolve_config(data=str(tiny_corpus), overrides=["track.dynamics_every=-2"])
