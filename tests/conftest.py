"""Shared fixtures: an isolated cache, the shared corpora, a tiny text corpus and a tiny trained run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist (-n auto), each worker's torch, and every process it starts, gets its share
# of the cores rather than all of them (2 workers on 2 cores, each with 2 threads, would fight).
# Set before any test module imports torch; a value the user set is kept.
if (_workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))


def pytest_collection_modifyitems(items):
    """The slow tests first, so that the workers share them out instead of one worker ending
    the run alone on the last of them (the order is otherwise kept)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# The time limit of every subprocess a test runs: a bound against a hang, never an estimate of
# speed (a busy machine may be ten times slower; tests wait for states, not for times).
HANG_TIMEOUT = 3600


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


# --- two tiny runs on two 'domains' with one joint vocabulary (the study tests) ------------

MATH_TEXT = "".join(
    f"Tom has {a} apples and buys {b} more.\nHe has {a} + {b} = <<{a}+{b}={a + b}>>{a + b}.\n"
    f"#### {a + b}\n\n" for a in range(3, 23) for b in (2, 5))

DOMAIN_SETTINGS = [s for s in TINY_SETTINGS if not s.startswith("train.checkpoint_at")] + [
    "train.checkpoint_at=0,10,20"]

PROMPTS = '''
[[prompt]]
name = "play"
text = "First Citizen:\\nBefore we"
domain = "play"
expected = " "

[[prompt]]
name = "sum"
text = "He has 3 + 2 = <<3+2=5>>"
domain = "sums"
expected = "5"
'''


@pytest.fixture(scope="session")
def domain_runs(tmp_path_factory) -> dict:
    """{"play": run, "sums": run, "corpora": {...}, "prompts": file}: 30 iterations each."""
    from lmscope.config import resolve_config
    from lmscope.train.trainer import train

    root = tmp_path_factory.mktemp("domains")
    corpora = {"play": root / "play.txt", "sums": root / "sums.txt"}
    corpora["play"].write_text(TINY_TEXT, encoding="utf-8")
    corpora["sums"].write_text(MATH_TEXT, encoding="utf-8")
    old = os.environ.get("LMSCOPE_CACHE")
    os.environ["LMSCOPE_CACHE"] = str(root / "cache")
    runs = {}
    try:
        for name, path in corpora.items():
            other = [str(p) for n, p in corpora.items() if n != name]
            config = resolve_config(data=str(path), overrides=[
                *DOMAIN_SETTINGS, f"data.vocab_from={','.join(other)}"])
            train(config, root / name, progress=False, log=lambda *a: None)
            runs[name] = root / name
    finally:
        if old is None:
            os.environ.pop("LMSCOPE_CACHE", None)
        else:
            os.environ["LMSCOPE_CACHE"] = old
    prompts = root / "prompts.toml"
    prompts.write_text(PROMPTS, encoding="utf-8")
    return {**runs, "corpora": corpora, "prompts": prompts}


def png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def stop_after(monkeypatch, iteration: int):
    """Make training stop as on Ctrl-C after the step that starts at `iteration` (the run is
    interrupted at iteration + 1); returns a function that restores the normal step."""
    from lmscope.train.trainer import Trainer

    real_step = Trainer.step

    def step_then_interrupt(self, lr):
        loss = real_step(self, lr)
        if self.iter == iteration:
            self._stop_requested = True
        return loss

    monkeypatch.setattr(Trainer, "step", step_then_interrupt)
    return lambda: monkeypatch.setattr(Trainer, "step", real_step)


def straight_and_resumed(corpus: Path, root: Path, monkeypatch, settings) -> tuple[Path, Path]:
    """Two runs with `settings` on `corpus`: root/straight trained in one go, root/resumed stopped
    after iteration 13 and resumed; returns their folders, to compare what each tracked."""
    from lmscope.config import resolve_config
    from lmscope.errors import TrainingInterrupted
    from lmscope.train.trainer import Trainer, train

    def config():
        return resolve_config(data=str(corpus), overrides=[*TINY_SETTINGS, *settings])

    quiet = {"progress": False, "log": lambda *a: None}
    train(config(), root / "straight", **quiet)
    restore = stop_after(monkeypatch, 13)
    try:
        Trainer(config(), root / "resumed", **quiet).run()
        raise AssertionError("the run was not stopped")
    except TrainingInterrupted:
        pass
    restore()
    train(config(), root / "resumed", resume=True, **quiet)
    return root / "straight", root / "resumed"
