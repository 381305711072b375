import csv
import math

import pytest
import torch

import lmscope
from lmscope.analysis.softmax import next_token_distribution, softmax_probe
from lmscope.errors import LmscopeError
from tests.conftest import png


def test_softmax_figures_match_the_model(domain_runs, tmp_path):
    out = tmp_path / "s"
    files = softmax_probe(domain_runs["play"], domain_runs["prompts"], out, top_k=3, device="cpu")
    assert set(files) == {"softmax_csv", "topk_csv", "entropy_png", "expected_png", "summary_md"}
    with open(out / "softmax.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 4  # two prompts x checkpoints at 0, 10, 20 and final
    assert {r["domain"] for r in rows if r["prompt"] == "play"} == {"in-domain"}
    assert {r["domain"] for r in rows if r["prompt"] == "sum"} == {"out-of-domain"}
    # recompute one row by hand
    final = lmscope.load(domain_runs["play"], device="cpu")
    row = next(r for r in rows if r["prompt"] == "sum" and r["checkpoint"] == "final")
    ids = final.tokenizer.encode("He has 3 + 2 = <<3+2=5>>")
    logits = lmscope.logits(final, "He has 3 + 2 = <<3+2=5>>")[-1].double()
    probs = torch.softmax(logits, -1)
    torch.testing.assert_close(next_token_distribution(final, ids), probs)
    entropy = float(-(probs * probs.log2()).sum())
    assert float(row["entropy_bits"]) == pytest.approx(entropy, rel=1e-5)
    five = final.tokenizer.encode("5")[0]
    assert float(row["p_expected"]) == pytest.approx(float(probs[five]), rel=1e-5)
    assert int(row["expected_rank"]) == int((probs > probs[five]).sum()) + 1
    assert float(row["max_prob"]) == pytest.approx(float(probs.max()), rel=1e-5)
    # the untrained model is near uniform: entropy close to log2(vocab)
    first = next(r for r in rows if r["checkpoint"] == "iter_0000000")
    assert float(first["entropy_bits"]) > 0.9 * math.log2(final.tokenizer.vocab_size)
    with open(out / "topk.csv", encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 2 * 4 * 3
    assert png(out / "entropy.png") and png(out / "expected_prob.png")
    assert "in-domain" in (out / "summary.md").read_text()


def test_softmax_bad_input(domain_runs, tmp_path):
    run = domain_runs["play"]
    empty = tmp_path / "empty.toml"
    empty.write_text("# nothing\n")
    with pytest.raises(LmscopeError, match="has no prompts"):
        softmax_probe(run, empty, tmp_path / "o")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[[prompt]]\ntext = "Zebra \\u00e9"\n')
    with pytest.raises(LmscopeError, match="prompt 'p1'"):
        softmax_probe(run, unknown, tmp_path / "o")
    with pytest.raises(LmscopeError, match="does not exist"):
        softmax_probe(run, tmp_path / "missing.toml", tmp_path / "o")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[prompt]\n")
    with pytest.raises(LmscopeError, match="not valid TOML"):
        softmax_probe(run, bad, tmp_path / "o")
    (tmp_path / "norun").mkdir()
    with pytest.raises(LmscopeError, match="no checkpoints"):
        softmax_probe(tmp_path / "norun", domain_runs["prompts"], tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing written on bad input
