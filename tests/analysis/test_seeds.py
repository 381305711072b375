import json
import math

import pytest

from lmscope.analysis.seeds import aggregate_seeds, mean_stderr
from lmscope.config import resolve_config
from lmscope.train.trainer import train
from tests.conftest import TINY_SETTINGS, png


def test_mean_and_standard_error():
    assert mean_stderr([1.0, 2.0, 3.0]) == (2.0, pytest.approx(1 / math.sqrt(3)))
    assert mean_stderr([5.0]) == (5.0, None)
    assert mean_stderr([None, float("nan")]) == (None, None)


def test_seeds_are_aggregated_into_means_errors_and_plots(tiny_corpus, tmp_path):
    runs = []
    for seed in (0, 1, 2):
        run = tmp_path / f"tiny-s{seed}"
        train(resolve_config(data=str(tiny_corpus), overrides=[
            *TINY_SETTINGS, f"train.seed={seed}", "track.attention_every=10"]),
            run, progress=False, log=lambda *a: None)
        runs.append(run)
    out = tmp_path / "seeds"
    results = aggregate_seeds({"tiny": {"gpt": runs}}, out)
    entry = results["tiny"]
    assert entry["variant"] == "gpt" and entry["n_seeds"] == 3
    best = [json.loads((r / "summary.json").read_text())["best_val_loss"] for r in runs]
    assert entry["best_val_loss"] == best
    assert entry["best_val_loss_mean"] == pytest.approx(sum(best) / 3)
    assert entry["best_val_loss_stderr"] == pytest.approx(mean_stderr(best)[1])
    assert len(set(best)) == 3  # the seeds made different runs
    assert entry["avg_inference_tokens_per_second_mean"] is None  # no generation step
    assert json.loads((out / "results.json").read_text()) == json.loads(
        json.dumps(results))
    for name in ("train_loss_tiny.png", "val_loss_tiny.png", "attention_metrics_tiny.png",
                 "layer_similarity_tiny.png"):
        assert png(out / name), name
    assert (out / "correlation_tiny.csv").is_file() and "± " in (out / "results.md").read_text()

    # two variants of a dataset stay apart
    both = aggregate_seeds({"tiny": {"a": runs[:2], "b": runs[2:]}}, tmp_path / "two")
    assert set(both["tiny"]) == {"a", "b"} and both["tiny"]["b"]["best_val_loss_stderr"] is None
    table = (tmp_path / "two" / "results.md").read_text()
    assert "| tiny | a | 2 |" in table and "| tiny | b | 1 |" in table  # a row per variant


def test_a_seed_that_is_not_a_number_is_named_and_not_counted(tiny_run, tmp_path):
    """A diverged seed (nan loss) was dropped from the mean while n_seeds still counted it."""
    import shutil

    runs = []
    for name in ("s0", "s1", "s2"):
        shutil.copytree(tiny_run, tmp_path / name)
        runs.append(tmp_path / name)
    summary = json.loads((runs[2] / "summary.json").read_text())
    summary["best_val_loss"] = float("nan")
    (runs[2] / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "seeds"
    entry = aggregate_seeds({"tiny": {"gpt": runs}}, out)["tiny"]
    assert entry["n_seeds"] == 2 and entry["best_val_loss_n"] == 2
    assert entry["dropped"] == [{"run": "s2", "quantity": "best_val_loss",
                                 "why": "not a finite number (nan)"}]
    assert entry["best_val_loss_mean"] == pytest.approx(
        json.loads((runs[0] / "summary.json").read_text())["best_val_loss"])
    text = (out / "results.md").read_text()
    assert "| tiny | gpt | 2 of 3 |" in text
    assert "s2 left out of best_val_loss: not a finite number (nan)" in text
    json.loads((out / "results.json").read_text())  # still valid JSON
