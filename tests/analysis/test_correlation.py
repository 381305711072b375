import json
import math

import pytest
from scipy import stats

from lmscope.analysis.correlation import attention_vs_loss, correlate, write_correlations


def test_correlations_match_scipy_and_drop_missing_points():
    x = [1.0, 2.0, 3.0, 4.0, 5.0, None, 7.0]
    y = [2.1, 3.9, 6.2, 8.1, 9.7, 11.0, float("nan")]
    (row,) = correlate({"x": x}, {"y": y})
    assert row["n"] == 5  # the None and the NaN pair are left out
    r, p = stats.pearsonr(x[:5], y[:5])
    rho, sp = stats.spearmanr(x[:5], y[:5])
    assert row["pearson_r"] == pytest.approx(r) and row["pearson_p"] == pytest.approx(p)
    assert row["spearman_rho"] == pytest.approx(rho) and row["spearman_p"] == pytest.approx(sp)
    assert row["spearman_rho"] == pytest.approx(1.0)  # monotone


def test_too_few_or_constant_points_give_no_correlation():
    rows = correlate({"short": [1, 2, None, None], "flat": [1, 1, 1, 1]}, {"y": [3, 4, 5, 6]})
    by_x = {r["x"]: r for r in rows}
    assert by_x["short"]["n"] == 2 and by_x["short"]["pearson_r"] is None
    assert by_x["flat"]["n"] == 4 and by_x["flat"]["spearman_rho"] is None
    json.dumps(rows, allow_nan=False)


def test_written_summary_lists_only_strong_significant_pairs(tmp_path):
    n = 20
    xs = {"rising": list(range(n)), "noise": [(i * 7919) % 13 for i in range(n)]}
    rows = correlate(xs, {"loss": [2 * i + 1 for i in range(n)]})
    write_correlations(rows, tmp_path, "c", "title")
    md = (tmp_path / "c.md").read_text()
    assert "- rising vs loss: rho +1.00" in md and "- noise vs loss" not in md
    assert (tmp_path / "c.csv").read_text().splitlines()[0].startswith("x,y,n,pearson_r")


def test_attention_vs_loss_joins_tracked_attention_with_val_loss(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    evals = [{"kind": "eval", "iter": i, "train_loss": 3 - i / 10, "val_loss": 3 - i / 10}
             for i in range(0, 50, 10)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    attention = [{"iter": i, "entropy_bits": 5 - i / 20, "entropy_norm": 1 - i / 100,
                  "mean_distance": 10.0, "span90": 20 - i / 5, "head_diversity_js": i / 50}
                 for i in range(0, 50, 5)]  # captured twice as often as evaluated
    (run / "attention.jsonl").write_text("".join(json.dumps(r) + "\n" for r in attention))
    rows = {r["x"]: r for r in attention_vs_loss(run)}
    assert rows["entropy_bits"]["n"] == 5  # only the iterations with both
    assert rows["entropy_bits"]["pearson_r"] == pytest.approx(1.0)
    assert rows["head_diversity_js"]["spearman_rho"] == pytest.approx(-1.0)
    assert rows["mean_distance"]["pearson_r"] is None  # constant
    assert attention_vs_loss(tmp_path) == []  # no attention tracked
    assert not math.isnan(rows["span90"]["pearson_p"])
