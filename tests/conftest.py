"""Shared fixtures: an isolated cache, the shared corpora, a tiny text corpus and a tiny trained run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache folder, never the user's."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("LMSCOPE_CACHE", str(cache))
    return cache


@pytest.fixture
def shared_data() -> Path:
    """The real corpora ($LMSCOPE_DATA, ../shared/data in CI)."""
    root = os.environ.get("LMSCOPE_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("LMSCOPE_DATA is not set to the folder of shared corpora")
    return Path(root).resolve()


TINY_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
    "All:\nResolved. resolved.\n\n"
) * 20


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path


TINY_SETTINGS = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
    "train.batch_size=8", "train.max_iters=30", "train.eval_interval=10", "train.eval_iters=2",
    "train.warmup_iters=5", "train.log_interval=5", "train.sample_tokens=20",
    "train.checkpoint_at=10,20", "train.device=cpu",
]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder trained for 30 iterations on the tiny corpus (shared by read-only tests)."""
    from lmscope.config import resolve_config
    from lmscope.train.trainer import train

    root = tmp_path_factory.mktemp("tiny_run")
    corpus = root / "tiny.txt"
    corpus.write_text(TINY_TEXT, encoding="utf-8")
    old = os.environ.get("LMSCOPE_CACHE")
    os.environ["LMSCOPE_CACHE"] = str(root / "cache")
    try:
        config = resolve_config(data=str(corpus), overrides=TINY_SETTINGS)
        train(config, root / "run", progress=False, log=lambda *a: None)
    finally:
        if old is None:
            os.environ.pop("LMSCOPE_CACHE", None)
        else:
            os.environ["LMSCOPE_CACHE"] = old
    return root / "run"
