"""Attribution of generated continuations: the greedy tokens, each step's attribution against
attribute() called on its own, causality, completeness, the three models, save/load, errors."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import softmax
from scipy.stats import entropy

from lmscope.analysis.attribution import GRADIENT_METHODS, attribute
from lmscope.analysis.continuation import ContinuationResult, compute, continuation_probe
from lmscope.data.chars import quiet, visible
from lmscope.errors import LmscopeError
from lmscope.run.checkpoint import load, select_checkpoints
from tests.test_export import tiny_checkpoint

PROMPTS = {"a": "First Citizen", "b/c": "All:\nSpeak"}
METHODS = GRADIENT_METHODS
N = 3
PNG = b"\x89PNG\r\n\x1a\n"


def prompt_file(path, prompts=PROMPTS):
    text = "".join(f"[[prompt]]\nname = {json.dumps(name)}\ntext = {json.dumps(body)}\n\n"
                   for name, body in prompts.items())
    path.write_text(text, encoding="utf-8")
    return path


def greedy(model, ids, n):
    """The test's own greedy loop: argmax of the float logits at the last position, and the
    distribution there (numpy float64) at each step."""
    ids, chosen, dists = list(ids), [], []
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0, -1]
        chosen.append(int(logits.argmax()))
        dists.append(softmax(logits.numpy().astype(np.float64)))
        ids.append(chosen[-1])
    return chosen, dists


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return prompt_file(tmp_path_factory.mktemp("continuation") / "prompts.toml")


@pytest.fixture(scope="module")
def result(tiny_run, files):
    return compute(tiny_run, files, generate=N, methods=METHODS, steps=8)


@pytest.fixture(scope="module")
def final(tiny_run, tmp_path_factory):
    """The final checkpoint only, prompt a: occlusion, and integrated gradients at 256 steps."""
    path = prompt_file(tmp_path_factory.mktemp("final") / "p.toml", {"a": PROMPTS["a"]})
    return compute(tiny_run, path, generate=N, methods=("occlusion", "integrated_gradients"),
                   steps=256, which="final")


# --- definitions against independent paths --------------------------------------------------

def test_every_checkpoint_generates_greedily_and_each_row_is_attribute_on_its_own(
        tiny_run, result):
    paths = select_checkpoints(tiny_run, "all")
    assert [name for name, _ in result.iterations] == [p.name for p in paths]
    assert [it for _, it in result.iterations] == [10, 20, 30]
    for path in paths:
        ckpt = load(path, device="cpu")
        model, tok = ckpt.model, ckpt.tokenizer
        for name, text in PROMPTS.items():
            ids = tok.encode(text)
            t = len(ids)
            chosen, dists = greedy(model, ids, N)
            assert result.continuation(name, ckpt.name) == tok.decode(chosen)
            steps = result.step_rows(name, ckpt.name)
            assert [r.token for r in steps] == [visible(tok.token_text(c)) for c in chosen]
            for r, c, p in zip(steps, chosen, dists, strict=True):
                assert r.prob == pytest.approx(p[c], rel=1e-6)
                assert r.entropy_bits == pytest.approx(entropy(p, base=2), rel=1e-6, abs=1e-9)
            full = ids + chosen
            for method in METHODS:
                matrix = result.matrix(name, ckpt.name, method)
                norm = result.matrix(name, ckpt.name, method, normalized=True)
                assert matrix.shape == norm.shape == (N, t + N - 1)
                for j in range(N):
                    direct = attribute(model, full[:t + j], chosen[j], method, steps=8).scores
                    np.testing.assert_allclose(matrix[j, :t + j], direct, rtol=1e-6, atol=1e-7)
                    np.testing.assert_allclose(norm[j, :t + j],
                                               direct / np.abs(direct).sum(), rtol=1e-6,
                                               atol=1e-7)
                    assert np.all(np.isnan(matrix[j, t + j:])) and np.all(np.isnan(norm[j, t + j:]))
                # shares: prompt mass and generated mass of each row, averaged over the steps
                rows = [np.abs(norm[j, :t + j]) for j in range(N)]
                prompt, generated = result.shares(name, ckpt.name, method)
                assert prompt == pytest.approx(np.mean([r[:t].sum() for r in rows]))
                assert generated == pytest.approx(np.mean([r[t:].sum() for r in rows]))
                assert prompt + generated == pytest.approx(1.0)


def test_a_gpt_step_sees_only_the_positions_before_it(tiny_run, final):
    """Occlusion by hand on the whole sequence (prompt + N - 1 generated tokens), read at the
    position where step j predicts: the positions after it change nothing (the model is causal),
    and the ones before it give the probe's row j."""
    ckpt = load(select_checkpoints(tiny_run, "final")[0], device="cpu")
    model, tok = ckpt.model, ckpt.tokenizer
    ids = tok.encode(PROMPTS["a"])
    t = len(ids)
    chosen, _ = greedy(model, ids, N)
    full = ids + chosen[:-1]
    matrix = final.matrix("a", ckpt.name, "occlusion")
    with torch.no_grad():
        x = model.embed(torch.tensor([full]))[0]
        occluded = x.expand(len(full), *x.shape).clone()
        occluded[torch.arange(len(full)), torch.arange(len(full))] = 0.0  # zero baseline
        logp = F.log_softmax(model.forward_embeddings(torch.cat([x[None], occluded])), -1)
    for j in (1, N - 1):
        where = t + j - 1  # the last position of step j's input
        scores = (logp[0, where, chosen[j]] - logp[1:, where, chosen[j]]).double().numpy()
        np.testing.assert_allclose(scores[t + j:], 0.0, atol=1e-6)  # the future: no effect
        np.testing.assert_allclose(matrix[j, :t + j], scores[:t + j], atol=2e-5)
        assert np.all(np.isnan(matrix[j, t + j:]))
        assert np.abs(scores[:t + j]).max() > 1e-3  # the visible positions do matter


def test_integrated_gradients_is_complete_on_a_step(tiny_run, final):
    ckpt = load(select_checkpoints(tiny_run, "final")[0], device="cpu")
    model, tok = ckpt.model, ckpt.tokenizer
    ids = tok.encode(PROMPTS["a"])
    chosen, _ = greedy(model, ids, 3)
    j = 2
    with torch.no_grad():
        x = model.embed(torch.tensor([ids + chosen[:j]]))
        f = F.log_softmax(model.forward_embeddings(torch.cat([x, torch.zeros_like(x)]))[:, -1], -1)
    row = final.matrix("a", ckpt.name, "integrated_gradients")[j]
    assert np.nansum(row) == pytest.approx(float(f[0, chosen[j]] - f[1, chosen[j]]), abs=1e-3)
    assert final.completeness_gaps[-1] < 1e-3


@pytest.mark.parametrize("arch", ["gpt", "lstm", "kgram"])
def test_the_three_models(tmp_path, arch):

    path = tiny_checkpoint(tmp_path / "ckpt", model=arch)
    res = compute(path, prompt_file(tmp_path / "p.toml", {"a": "First Citizen"}), generate=3,
                  methods=GRADIENT_METHODS, steps=8)
    ckpt = load(path, device="cpu")
    ids = ckpt.tokenizer.encode("First Citizen")
    t = len(ids)
    chosen, dists = greedy(ckpt.model, ids, 3)
    assert res.continuation("a", ckpt.name) == ckpt.tokenizer.decode(chosen)
    assert [r.prob for r in res.step_rows("a", ckpt.name)] == pytest.approx(
        [p[c] for p, c in zip(dists, chosen, strict=True)], rel=1e-6)
    for method in GRADIENT_METHODS:
        matrix = res.matrix("a", ckpt.name, method)
        assert matrix.shape == (3, t + 2)
        direct = attribute(ckpt.model, ids + chosen[:2], chosen[2], method, steps=8).scores
        np.testing.assert_allclose(matrix[2], direct, rtol=1e-6, atol=1e-7)
        assert np.isnan(matrix[0, t:]).all() and np.isfinite(matrix[0, :t]).all()


# --- tables, figures, the view -------------------------------------------------------------

def test_save_and_load_round_trip(result, tmp_path):
    out = tmp_path / "out"
    written = result.save(out)
    names = ["steps.csv", "scores.csv", "summary.md",
             *(f"matrix_{p}_{m}.png" for p in ("a", "b_c") for m in METHODS)]
    for name in names:
        assert (out / name).is_file(), name
    assert all((out / f"matrix_{p}_{m}.png").read_bytes()[:8] == PNG
               for p in ("a", "b_c") for m in METHODS)
    assert len(written["figures"]) == 2 * len(METHODS)

    with open(out / "scores.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    lengths = {"a": len(PROMPTS["a"]), "b/c": len(PROMPTS["b/c"])}  # characters = tokens
    # per prompt, checkpoint and method: step j has T + j positions
    assert len(rows) == sum(3 * len(METHODS) * (N * t + N * (N - 1) // 2)
                            for t in lengths.values())
    assert not any(r["score"] == "nan" or r["normalized"] == "nan" for r in rows)
    assert all((r["generated"] == "True") == (int(r["position"]) >= lengths[r["prompt"]])
               for r in rows)

    back = ContinuationResult.load(out)
    assert back.methods == METHODS and back.generate == N and back.prompts == ["a", "b/c"]
    assert back.iterations == result.iterations
    for prompt in PROMPTS:
        for name, _ in result.iterations:
            assert back.continuation(prompt, name) == result.continuation(prompt, name)
            for method in METHODS:
                for normalized in (False, True):
                    np.testing.assert_allclose(
                        back.matrix(prompt, name, method, normalized=normalized),
                        result.matrix(prompt, name, method, normalized=normalized),
                        rtol=1e-5, atol=1e-12)  # NaN where NaN
            for a, b in zip(back.step_rows(prompt, name), result.step_rows(prompt, name),
                            strict=True):
                assert (a.token, a.step) == (b.token, b.step)
                assert a.prob == pytest.approx(b.prob, rel=1e-5)
                assert a.entropy_bits == pytest.approx(b.entropy_bits, rel=1e-5)

    summary = (out / "summary.md").read_text(encoding="utf-8")
    final = result.iterations[-1][0]
    assert quiet(result.continuation("a", final)) in summary
    assert "## By checkpoint" in summary and "integrated_gradients: generated" in summary
    assert written["continuations"]["a"] == result.continuation("a", final)
    assert set(written["prompt_share"]) == set(METHODS)


def test_view_data(result):
    view = json.loads(json.dumps(result.view_data()))  # JSON-friendly: no NaN, no numpy
    assert view["generate"] == N and view["methods"] == list(METHODS)
    assert [p["name"] for p in view["prompts"]] == list(PROMPTS)
    for prompt in view["prompts"]:
        t = prompt["T"]
        assert t == len(PROMPTS[prompt["name"]])
        assert [c["iteration"] for c in prompt["checkpoints"]] == [10, 20, 30]
        assert prompt["checkpoints"][-1]["label"] == "30 (final)"
        for point in prompt["checkpoints"]:
            assert len(point["tokens"]) == t + N
            assert point["tokens"][:t] == [visible(c) for c in PROMPTS[prompt["name"]]]
            assert "".join(point["tokens"][t:]) == "".join(
                visible(c) for c in result.continuation(prompt["name"], point["checkpoint"]))
            assert len(point["prob"]) == len(point["entropy_bits"]) == N
            for method, rows in point["normalized"].items():
                want = result.matrix(prompt["name"], point["checkpoint"], method,
                                     normalized=True)
                assert len(rows) == N and all(len(r) == t + N - 1 for r in rows)
                for j, row in enumerate(rows):
                    assert all(v is None for v in row[t + j:])
                    assert row[:t + j] == pytest.approx(want[j, :t + j], abs=5e-5)


def test_probe_writes_its_files(tiny_run, files, tmp_path):
    written = continuation_probe(tiny_run, files, tmp_path / "o", generate=1,
                                 methods=("grad_norm",), which="10,final")
    assert (tmp_path / "o" / "matrix_a_grad_norm.png").is_file()
    assert ContinuationResult.load(tmp_path / "o").iterations == [("iter_0000010", 10),
                                                                  ("final", 30)]
    assert written["prompt_share"]["grad_norm"] == pytest.approx(1.0)  # one step: all prompt


# --- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "match"), [
    ({"generate": 0}, "--generate must be at least 1, got 0: give the number of tokens"),
    ({"generate": 2.0}, "--generate must be a whole number, got 2.0"),
    ({"generate": True}, "--generate must be a whole number, got True"),
    ({"generate": 2, "methods": ("saliency",)}, "unknown method 'saliency'"),
    ({"generate": 2, "methods": ()}, "no methods given"),
    ({"generate": 2, "steps": 0}, "steps must be a whole number of at least 1"),
    ({"generate": 2, "methods": ("shapley_exact",)}, "shapley_exact on prompt 'a'"),
])
def test_bad_input(tiny_run, files, kwargs, match):
    with pytest.raises(LmscopeError, match=match.replace("(", r"\(").replace(")", r"\)")):
        compute(tiny_run, files, which="final", **kwargs)


def test_unknown_prompt_or_checkpoint(result):
    with pytest.raises(LmscopeError, match="no continuation of prompt 'zz'"):
        result.continuation("zz", "final")
    assert not math.isnan(result.shares("a", "final", "grad_norm")[0])


def test_past_the_context_each_step_reads_the_last_context_tokens(tiny_run, files):
    """Prompt a has 13 tokens and the context is 32: from step 20 on the input is the last 32
    tokens (a sliding window); the positions that left it are NaN, and the row equals
    attribute() on that window."""
    n = 24
    result = compute(tiny_run, files, generate=n, methods=("grad_x_input",), which="final")
    ckpt = load(select_checkpoints(tiny_run, "final")[0], device="cpu")
    ids = ckpt.tokenizer.encode(PROMPTS["a"])
    t, context = len(ids), ckpt.model.context_length
    full = list(ids)
    for _ in range(n):  # a sliding window of the last `context` tokens
        full.append(greedy(ckpt.model, full[-context:], 1)[0][0])
    assert result.continuation("a", "final") == ckpt.tokenizer.decode(full[t:])
    m = result.matrix("a", "final", "grad_x_input")
    assert m.shape == (n, t + n - 1)
    for j in (0, 19, 20, 23):
        start = max(0, t + j - context)
        assert np.all(np.isnan(m[j, :start])) and np.all(np.isnan(m[j, t + j:]))
        expected = attribute(ckpt.model, full[start:t + j], full[t + j], "grad_x_input").scores
        np.testing.assert_allclose(m[j, start:t + j], expected, rtol=1e-5, atol=1e-6)
    view = result.view_data()["prompts"][0]["checkpoints"][0]
    assert len(view["tokens"]) == t + n
