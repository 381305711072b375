import csv
import json

import numpy as np
import pytest
import torch

import lmscope
from lmscope.analysis.attention import attention_probabilities, attention_probe, head_scores
from lmscope.analysis.compare import Rule, RunCurves, compare_runs
from lmscope.analysis.sampling import parse_top_ps, top_p_sweep, write_sweep
from lmscope.errors import LmscopeError
from tests.conftest import png


def test_top_p_sweep_rows_share_a_seed(tiny_run, tmp_path):
    ckpt = lmscope.load(tiny_run, device="cpu")
    rows = top_p_sweep(ckpt, "First", [0.2, 1.0], greedy=True, max_new_tokens=30, seed=3)
    assert [name for name, _ in rows] == ["greedy", "0.2", "1"]
    assert rows[0][1] == lmscope.generate(ckpt, "First", max_new_tokens=30, greedy=True)
    assert rows[2][1] == lmscope.generate(ckpt, "First", max_new_tokens=30, top_p=1.0, seed=3)
    assert rows == top_p_sweep(ckpt, "First", [0.2, 1.0], greedy=True, max_new_tokens=30, seed=3)
    md, csv_file = write_sweep(rows, "First", tmp_path, seed=3, temperature=1.0)
    assert "| greedy | First" in md.read_text()
    with open(csv_file, encoding="utf-8") as f:
        assert [r["top_p"] for r in csv.DictReader(f)] == ["greedy", "0.2", "1"]


@pytest.mark.parametrize("text", ["0.5,1.5", "0", "-0.1", "a", ""])
def test_sweep_values_outside_the_unit_interval_are_errors(text):
    with pytest.raises(LmscopeError, match="sweep-top-p"):
        parse_top_ps(text)


def curves(val, train=None):
    steps = list(range(0, 100 * len(val), 100))
    return RunCurves("r", steps, list(train or val), steps, list(train or val), list(val))


def test_verdicts_follow_the_stated_rule():
    rule = Rule(rise=0.02, gap=0.15, falling=0.01)
    verdict, why = curves([3.0, 2.0, 1.9, 1.95]).verdict(rule)
    assert verdict == "over-fit" and "rose 0.050 above its minimum at iteration 200" in why
    verdict, why = curves([3.0, 2.0, 1.9, 1.9], train=[3.0, 1.9, 1.7, 1.7]).verdict(rule)
    assert verdict == "over-fit" and "0.200 above train loss and no longer falling" in why
    assert curves([3.0, 2.0, 1.9]).verdict(rule)[0] == "under-fit"  # still falling by 0.1
    assert curves([3.0, 2.0, 1.995]).verdict(rule)[0] == "good"
    assert "over-fit" in rule.describe() and "0.15" in rule.describe()


def test_a_gap_while_val_loss_still_falls_is_not_over_fitting():
    """The user's case: validation text of another kind than the training text (a shift between
    the splits) keeps val loss 0.2 above train loss while both still fall."""
    verdict, why = curves([3.0, 2.0, 1.9], train=[3.0, 1.8, 1.7]).verdict(Rule())
    assert verdict == "under-fit"
    assert "still falling (the last evaluation changed it by -0.100)" in why
    assert "gap of 0.200 to train loss is not over-fitting while it falls" in why


def test_compare_runs(tiny_run, domain_runs, tmp_path):
    rows = compare_runs([tiny_run, domain_runs["play"]], tmp_path / "c")
    assert [r[0] for r in rows] == ["run", "play"]
    for row in rows:
        assert row[1] <= row[5]  # the minimum is at most the final validation loss
        assert row[6] == pytest.approx(row[5] - row[4])
        assert row[7] in ("over-fit", "under-fit", "good") and row[8]  # with its reason
    assert "Rule:" in (tmp_path / "c" / "compare.md").read_text()
    assert png(tmp_path / "c" / "curves.png")
    with pytest.raises(LmscopeError, match="no metrics.jsonl"):
        compare_runs([tmp_path], tmp_path / "c2")


def test_attention_maps(tiny_run, tmp_path):
    ckpt = lmscope.load(tiny_run, device="cpu")
    tokens, layers = attention_probabilities(ckpt, "First Citizen:")
    assert len(tokens) == 14 and len(layers) == 2 and layers[0].shape == (2, 14, 14)
    for a in layers:
        np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-5)
        assert np.allclose(np.triu(a, 1), 0)  # causal
    result = attention_probe(ckpt, "First Citizen:", tmp_path / "a", layer=1, heads="0,1")
    assert png(tmp_path / "a" / "attention_L1_H0.png") and png(tmp_path / "a" / "attention_L1.png")
    with open(tmp_path / "a" / "top_keys.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 14
    first = rows[0]
    assert first["query_pos"] == "0" and first["key1_pos"] == "0" and float(first["weight1"]) == 1
    for r in rows:  # top keys in decreasing weight
        weights = [float(r[f"weight{i}"]) for i in (1, 2, 3) if r[f"weight{i}"]]
        assert weights == sorted(weights, reverse=True)
    assert len(result["scores"]) == 2
    for bad, match in (({"layer": 2}, "layer 2 does not exist"),
                       ({"heads": "0,5"}, "head 5 does not exist")):
        with pytest.raises(LmscopeError, match=match):
            attention_probe(ckpt, "First", tmp_path / "b", **bad)
    with pytest.raises(LmscopeError, match="outside the vocabulary|not in the vocabulary|unknown"):
        attention_probe(ckpt, "Zq~", tmp_path / "b")


def test_attention_json_holds_every_layer_at_every_checkpoint(tiny_run, tmp_path):
    """attention.json (the report's hover view): each checkpoint's maps, equal to the model's."""
    prompt = "First Citizen:\nBefore"
    attention_probe(tiny_run, prompt, tmp_path / "a", layer=0, heads="1", which="all")
    maps = json.loads((tmp_path / "a" / "attention.json").read_text(encoding="utf-8"))
    assert maps["prompt"] == prompt and "".join(maps["tokens"]) == prompt
    assert [(c["checkpoint"], c["iteration"]) for c in maps["checkpoints"]] == [
        ("iter_0000010", 10), ("iter_0000020", 20), ("final", 30)]
    _, layers = attention_probabilities(lmscope.load(tiny_run, device="cpu"), prompt)
    final = maps["checkpoints"][-1]["layers"]
    assert len(final) == 2 and all(len(heads) == 2 for heads in final)  # every layer and head
    for a, heads in zip(layers, final, strict=True):
        for h, rows in enumerate(heads):
            assert [len(r) for r in rows] == list(range(1, len(prompt) + 1))  # keys 0..q
            for q, row in enumerate(rows):
                np.testing.assert_allclose(row, a[h, q, : q + 1], atol=5e-5)
    assert maps["checkpoints"][0]["layers"] != final  # the maps change over training


def test_head_scores_of_known_patterns():
    T = 5
    previous = np.zeros((T, T))
    previous[0, 0] = 1
    for q in range(1, T):
        previous[q, q - 1] = 1
    s = head_scores(previous)
    assert s["previous_token"] == 1 and s["self"] == pytest.approx(0.2) and \
        s["mean_distance"] == pytest.approx(0.8)
    first = np.zeros((T, T))
    first[:, 0] = 1
    assert head_scores(first)["first_token"] == 1
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    assert head_scores(torch.tensor(uniform).numpy())["mean_distance"] == pytest.approx(
        np.mean([q / 2 for q in range(T)]))
