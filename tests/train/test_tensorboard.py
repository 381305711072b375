"""TensorBoard logging (log.tensorboard=true): the event files hold exactly the numbers of
metrics.jsonl, attention.jsonl and heads.jsonl, each step once after a resume; off by default; a clear error
when the package is missing."""

import math
import shutil
import sys
import time

import pytest

from lmscope.config import resolve_config
from lmscope.errors import ConfigError
from lmscope.io import read_jsonl
from lmscope.run.run_dir import RunDir
from lmscope.train.distributed import Distributed
from lmscope.train.trainer import Trainer, TrainingInterrupted, train
from tests.conftest import TINY_SETTINGS, stop_after
from tests.test_cli import lmscope

FAST = [*TINY_SETTINGS, "train.sample_tokens=0", "train.checkpoint_at=[]"]
ATTENTION = ("entropy_bits", "entropy_norm", "mean_distance", "span90", "head_diversity_js")
HEADS = ("first_half_loss", "second_half_loss", "early_loss", "late_loss", "icl_score")
DETECTORS = ("previous_token", "duplicate_token", "induction", "first_token")


def _config(corpus, *extra):
    return resolve_config(data=str(corpus), overrides=[*FAST, *extra])


def _quiet(config, run_dir, **kw):
    return train(config, run_dir, progress=False, log=lambda *a: None, **kw)


def _events(run_dir, server=False) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard shows for the run: tag -> [(step, value)], read by the loader
    of its Python API or (server=True) by the one `tensorboard --load_fast=false` serves from."""
    from tensorboard.backend.event_processing import event_accumulator, plugin_event_accumulator
    from tensorboard.util import tensor_util

    if not server:
        acc = event_accumulator.EventAccumulator(str(run_dir / "tensorboard"),
                                                 size_guidance={"scalars": 0})
        acc.Reload()
        return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
                for tag in acc.Tags()["scalars"]}
    acc = plugin_event_accumulator.EventAccumulator(str(run_dir / "tensorboard"),
                                                    size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in
                  acc.Tensors(tag)] for tag in acc.Tags()["tensors"]}


def _expected(run_dir) -> dict[str, list[tuple[int, float]]]:
    """The same, as metrics.jsonl, attention.jsonl, heads.jsonl and dynamics.jsonl hold it
    (heads: the losses, and each detector's best head over the model and in each layer)."""
    out: dict[str, list] = {}
    for row in read_jsonl(run_dir / "metrics.jsonl"):
        for key, value in row.items():
            if key not in ("kind", "iter") and value is not None:
                out.setdefault(f"{row['kind']}/{key}", []).append((row["iter"], value))
    path = run_dir / "attention.jsonl"
    for row in read_jsonl(path) if path.is_file() else []:
        for key in ATTENTION:
            out.setdefault(f"attention/{key}", []).append((row["iter"], row[key]))
            for i, layer in enumerate(row["layers"]):
                value = layer[key]
                value = sum(value) / len(value) if isinstance(value, list) else value
                out.setdefault(f"attention/{key}/layer{i}", []).append((row["iter"], value))
    path = run_dir / "heads.jsonl"
    for row in read_jsonl(path) if path.is_file() else []:
        for key in HEADS:
            if row[key] is not None:
                out.setdefault(f"heads/{key}", []).append((row["iter"], row[key]))
        for detector in DETECTORS:
            best = [max(heads) for heads in row[detector]]
            out.setdefault(f"heads/{detector}_max", []).append((row["iter"], max(best)))
            for i, value in enumerate(best):
                out.setdefault(f"heads/{detector}_max/layer{i}", []).append((row["iter"], value))
    path = run_dir / "dynamics.jsonl"
    for row in read_jsonl(path) if path.is_file() else []:
        for key, value in row.items():
            if isinstance(value, dict):  # per layer or per matrix
                for name, v in value.items():
                    out.setdefault(f"dynamics/{key}/{name}", []).append((row["iter"], v))
            elif key not in ("iter", "seconds") and value is not None:
                out.setdefault(f"dynamics/{key}", []).append((row["iter"], value))
    return out


def assert_same_scalars(run_dir):
    expected = _expected(run_dir)
    for server in (False, True):
        events = _events(run_dir, server)
        assert sorted(events) == sorted(expected)
        for tag, points in expected.items():
            got = events[tag]
            assert [s for s, _ in got] == [s for s, _ in points], tag  # each step once, in order
            for (_, a), (_, b) in zip(got, points, strict=True):
                assert a == pytest.approx(b, rel=1e-6, abs=1e-9) or math.isnan(a) and math.isnan(b)


def test_event_files_hold_every_number_of_the_jsonl_logs(tiny_corpus, tmp_path):
    pytest.importorskip("tensorboard")
    numbers = tmp_path / "numbers.txt"
    numbers.write_text(" ".join(str(i % 50) for i in range(3000)) + "\n", encoding="utf-8")
    run = tmp_path / "r"
    _quiet(_config(f"{tiny_corpus}:0.75+{numbers}:0.25", "log.tensorboard=true",
                   "track.attention_every=7"), run)
    assert_same_scalars(run)
    tags = set(_events(run))
    assert {"train/loss", "train/lr", "eval/val_loss", "eval/val_loss:tiny",
            "eval/val_loss:numbers", "final/val_loss_full:numbers", "attention/entropy_bits",
            "attention/entropy_norm/layer0", "attention/span90/layer1",
            "attention/head_diversity_js/layer1", "dynamics/probe_loss",
            "dynamics/layer_grad_norm/embed", "dynamics/layer_grad_norm/1",
            "dynamics/effective_rank/blocks.0.attn.qkv.weight"} <= tags
    assert [s for s, _ in _events(run)["attention/mean_distance/layer0"]] == [0, 7, 14, 21, 28, 30]


def test_a_resumed_run_shows_each_step_once(tiny_corpus, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    settings = ("log.tensorboard=true", "track.attention_every=4", "train.log_interval=1",
                "train.eval_interval=8")
    run = tmp_path / "r"
    restore = stop_after(monkeypatch, 12)
    with pytest.raises(TrainingInterrupted, match="iteration 13"):
        Trainer(_config(tiny_corpus, *settings), run, progress=False, log=lambda *a: None).run()
    restore()
    # what a session killed after its last checkpoint leaves: points past the resumed iteration
    stale = SummaryWriter(str(run / "tensorboard"))
    for step in (14, 15, 16):
        stale.add_scalar("train/loss", 99.0, step)
    stale.add_scalar("eval/val_loss", 99.0, 16)
    stale.add_scalar("attention/entropy_bits", 99.0, 16)
    stale.close()
    time.sleep(1.05)  # event files are read in name order, which starts with the second
    _quiet(_config(tiny_corpus, *settings), run, resume=True)
    assert_same_scalars(run)
    assert [s for s, _ in _events(run)["train/loss"]] == list(range(1, 31))


def test_turning_tensorboard_on_when_resuming_writes_the_whole_history(tiny_corpus, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "r"
    _quiet(_config(tiny_corpus, "train.max_iters=20", "track.attention_every=5"), run)
    assert not (run / "tensorboard").exists()
    # [log] is no part of what a resume must keep: the command line accepts the change
    r = lmscope("train", "--out", run, "--resume", "--quiet", "--set", "log.tensorboard=true",
                "train.max_iters=30")
    assert r.returncode == 0, r.stderr
    assert RunDir(run).config().log.tensorboard  # config.toml and the resume that changed it
    assert_same_scalars(run)
    assert [s for s, _ in _events(run)["eval/val_loss"]] == [0, 10, 20, 30]


def test_on_off_on_leaves_no_gap(tiny_corpus, tmp_path):
    """A session with TensorBoard off between two with it on: the third writes it all again."""
    pytest.importorskip("tensorboard")
    run = tmp_path / "r"
    settings = ("track.attention_every=5", "train.eval_interval=10")
    _quiet(_config(tiny_corpus, *settings, "train.max_iters=10", "log.tensorboard=true"), run)
    for on, iters in ((False, 20), (True, 30)):
        _quiet(_config(tiny_corpus, *settings, f"train.max_iters={iters}",
                       f"log.tensorboard={str(on).lower()}"), run, resume=True)
    assert_same_scalars(run)
    assert [s for s, _ in _events(run)["eval/val_loss"]] == [0, 10, 20, 30]


def test_the_log_section_is_checked_like_the_others():
    assert resolve_config(data="math").log.tensorboard is False
    assert resolve_config(data="math", overrides=["log.tensorboard=yes"]).log.tensorboard is True
    with pytest.raises(ConfigError, match="did you mean log.tensorboard"):
        resolve_config(data="math", overrides=["log.tensorbord=true"])
    with pytest.raises(ConfigError, match="log.tensorboard must be true or false"):
        resolve_config(data="math", overrides=["log.tensorboard=maybe"])


def test_tensorboard_is_off_by_default(tiny_run):
    assert not (tiny_run / "tensorboard").exists()
    assert "[log]\ntensorboard = false" in (tiny_run / "config.toml").read_text()


def test_only_rank_0_writes(tiny_corpus, tmp_path):
    trainer = Trainer(_config(tiny_corpus, "log.tensorboard=true"), tmp_path, log=lambda *a: None)
    trainer.dist = Distributed(rank=1, world_size=2)
    trainer._open_metrics()
    assert trainer.tensorboard is None and not (tmp_path / "tensorboard").exists()


def _snapshot(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_a_missing_tensorboard_package_is_a_clear_error_before_anything_changes(
        tiny_corpus, tiny_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` fails
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError, match=r'pip install "lmscope\[tensorboard\]"') as e:
        _quiet(_config(tiny_corpus, "log.tensorboard=true"), tmp_path / "new")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "new").exists()
    run = tmp_path / "copy"  # resuming a finished run for more iterations
    shutil.copytree(tiny_run, run)
    before = _snapshot(run)
    with pytest.raises(ConfigError, match="log.tensorboard=true needs the tensorboard package"):
        _quiet(_config(tiny_corpus, "log.tensorboard=true", "train.max_iters=40"), run,
               resume=True)
    assert _snapshot(run) == before
