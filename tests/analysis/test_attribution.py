"""Gradient attribution: exact against finite differences, IG complete, no side effects, probe."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import DeepLift

from lmscope.analysis.attribution import (
    BASELINES,
    GRADIENT_METHODS,
    METHODS,
    attribute,
    attribution_probe,
    last_logp,
)
from lmscope.data.chars import CHAR_CLASSES
from lmscope.errors import LmscopeError
from lmscope.models.gpt import GPT, GPTConfig
from lmscope.run.checkpoint import load
from tests.test_export import tiny_checkpoint

IDS = [3, 1, 4, 1, 5, 9, 2]
PNG = b"\x89PNG\r\n\x1a\n"


def tiny_model(dtype=torch.float64):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    return model.to(dtype)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def logp_of(model, emb, target):
    """The target's log-probability at the last position for embeddings (T, C)."""
    with torch.no_grad():
        return float(F.log_softmax(model.forward_embeddings(emb[None])[0, -1], -1)[target])


def embeddings(model, ids=IDS):
    with torch.no_grad():
        return model.embed(torch.tensor([ids]))[0].clone()


def finite_difference_grad(model, ids, target, eps=1e-6):
    """Central differences of logp w.r.t. every embedding coordinate (all in one batch)."""
    x = embeddings(model, ids)
    n = x.numel()
    step = eps * torch.eye(n, dtype=x.dtype).view(n, *x.shape)  # one coordinate per sample
    with torch.no_grad():
        logp = F.log_softmax(model.forward_embeddings(torch.cat([x + step, x - step]))[:, -1], -1)
    plus, minus = logp[:n, target], logp[n:, target]
    return x, ((plus - minus) / (2 * eps)).view(x.shape)


def baseline_vector(model, name):
    with torch.no_grad():
        if name == "zero":
            return torch.zeros(model.config.n_embd, dtype=torch.float64)
        if name == "mean":
            return model.embed(torch.arange(11)[None])[0].mean(0)
        return model.embed(torch.tensor([[0]]))[0, 0]


# --- exactness ------------------------------------------------------------------------------------

def test_gradient_methods_match_finite_differences(model):
    target = 7
    x, grad = finite_difference_grad(model, IDS, target)
    norm = attribute(model, IDS, target, "grad_norm")
    gxi = attribute(model, IDS, target, "grad_x_input")
    np.testing.assert_allclose(norm.scores, grad.norm(dim=-1).numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(gxi.scores, (grad * x).sum(-1).numpy(), rtol=0, atol=1e-6)
    assert norm.scores.shape == (len(IDS),)
    assert norm.completeness_gap is None and gxi.completeness_gap is None
    # the last position matters (it is where the prediction is made); nothing is all zero
    assert np.all(norm.scores > 0)


@pytest.mark.parametrize("baseline", BASELINES)
def test_integrated_gradients_completeness(model, baseline):
    target = 4
    x = embeddings(model)
    b = baseline_vector(model, baseline).expand_as(x)
    difference = logp_of(model, x, target) - logp_of(model, b, target)
    gaps = {}
    for steps in (4, 256):
        ig = attribute(model, IDS, target, "integrated_gradients", baseline=baseline, steps=steps,
                       baseline_token=0)
        gap = abs(ig.scores.sum() - difference)
        assert ig.completeness_gap == pytest.approx(gap, abs=1e-12)
        gaps[steps] = gap
    assert gaps[256] < 1e-4  # midpoint rule: the error shrinks as 1/steps^2
    assert gaps[256] < gaps[4] or gaps[4] < 1e-10


def test_integrated_gradients_equals_a_slow_loop(model):
    target, steps = 2, 16
    x = embeddings(model)
    b = baseline_vector(model, "mean").expand_as(x)
    total = torch.zeros_like(x)
    for k in range(1, steps + 1):  # one forward/backward per step, midpoint rule
        point = (b + (k - 0.5) / steps * (x - b)).clone().requires_grad_(True)
        logp = F.log_softmax(model.forward_embeddings(point[None])[0, -1], -1)[target]
        total += torch.autograd.grad(logp, point)[0]
    expected = ((x - b) * total / steps).sum(-1).detach().numpy()
    ig = attribute(model, IDS, target, "integrated_gradients", baseline="mean", steps=steps)
    np.testing.assert_allclose(ig.scores, expected, rtol=0, atol=1e-10)


def test_unk_baseline_needs_an_unk_id(model):
    with pytest.raises(LmscopeError, match="unk"):
        attribute(model, IDS, None, "integrated_gradients", baseline="unk", baseline_token=None)


# --- side effects and targets ---------------------------------------------------------------------

def test_no_parameter_updates_and_eval_mode_kept():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method in METHODS:  # exact Shapley on the 5-token prompt
        attribute(model, SHORT if method == "shapley_exact" else IDS, None, method,
                  baseline="mean", steps=8)
    with torch.no_grad():  # works inside no_grad too: it turns gradients on for itself
        attribute(model, IDS, 1, "grad_norm")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_target_none_is_the_argmax(model):
    with torch.no_grad():
        probs = model(torch.tensor([IDS]))[0, -1].softmax(-1)
    for method in METHODS:
        if method == "shapley_exact":
            continue  # on 7 tokens it is refused (tested below)
        a = attribute(model, IDS, None, method, steps=4)
        assert a.target_id == int(probs.argmax())
        assert a.target_prob == pytest.approx(float(probs.max()), rel=1e-9)
    given = attribute(model, IDS, 5, "grad_norm")
    assert given.target_id == 5 and given.target_prob == pytest.approx(float(probs[5]), rel=1e-9)


def test_float32_model_works():
    a = attribute(tiny_model(torch.float32), IDS, None, "integrated_gradients", steps=8)
    assert a.scores.dtype == np.float32 and np.all(np.isfinite(a.scores))


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "saliency"}, "grad_norm, grad_x_input, integrated_gradients"),
    ({"method": "integrated_gradients", "baseline": "noise"}, "zero, mean, unk"),
    ({"method": "integrated_gradients", "steps": 0}, "steps"),
    ({"method": "grad_norm", "ids": []}, "1 to 16"),
    ({"method": "grad_norm", "ids": [1] * 17}, "1 to 16"),
    ({"method": "grad_norm", "target_id": 11}, "outside the vocabulary"),
])
def test_attribute_bad_input(model, kwargs, match):
    args = {"ids": IDS, "target_id": None, **kwargs}
    with pytest.raises(LmscopeError, match=match):
        attribute(model, args.pop("ids"), args.pop("target_id"), args.pop("method"), **args)


# --- the probe over a run -------------------------------------------------------------------------

PROMPT = 'name = "a"\ntext = "First Citizen:\\nBefore we"\ndomain = "in"\nexpected = " "\n'


def prompt_file(tmp_path, *tables):
    path = tmp_path / "prompts.toml"
    path.write_text("".join(f"[[prompt]]\n{t}\n" for t in tables), encoding="utf-8")
    return path


def read_csv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_probe_end_to_end(tiny_run, tmp_path):
    other = 'name = "b/c"\ntext = "All:\\nSpeak, speak."\nexpected = "\\n"\n'
    prompts = prompt_file(tmp_path, PROMPT, other)
    out = tmp_path / "out"
    result = attribution_probe(tiny_run, prompts, out, steps=8, target="expected")
    written = ["attribution.csv", "by_class.csv", "by_class.png", "summary.md",
               "heatmap_a.png", "heatmap_b_c.png"]
    for name in written:
        assert (out / name).is_file(), name
    for name in written:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == PNG
    assert len(result["heatmaps"]) == 2 and len(result["checkpoints"]) == 3

    rows = read_csv(out / "attribution.csv")
    positions = len("First Citizen:\nBefore we") + len("All:\nSpeak, speak.")
    assert len(rows) == 3 * len(GRADIENT_METHODS) * positions
    assert [r["checkpoint"] for r in rows[::len(GRADIENT_METHODS) * positions]] == [
        "iter_0000010", "iter_0000020", "final"]
    a = [r for r in rows if r["prompt"] == "a"]
    assert {r["target"] for r in a} == {"<space>"} and {r["domain"] for r in a} == {"in-domain"}
    assert {r["domain"] for r in rows if r["prompt"] == "b/c"} == {"unknown"}
    assert a[14]["character"] == "<newline>" and a[14]["char_class"] == "space/newline"
    for checkpoint in ("iter_0000010", "final"):
        for method in GRADIENT_METHODS:
            shares = [float(r["normalized"]) for r in a
                      if r["checkpoint"] == checkpoint and r["method"] == method]
            assert sum(abs(s) for s in shares) == pytest.approx(1, abs=1e-4)
    assert all(float(r["score"]) >= 0 for r in rows if r["method"] == "grad_norm")

    by_class = read_csv(out / "by_class.csv")
    assert {r["char_class"] for r in by_class} <= set(CHAR_CLASSES)
    assert {r["method"] for r in by_class} == set(GRADIENT_METHODS)
    final_norm = [r for r in by_class if r["checkpoint"] == "final" and r["method"] == "grad_norm"]
    assert sum(int(r["positions"]) for r in final_norm) == positions

    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "completeness" in summary and "midpoint" in summary
    assert set(result["top_class"]) == set(GRADIENT_METHODS)
    assert set(result["top_class"].values()) <= set(CHAR_CLASSES)
    assert 0 <= result["mean_completeness_gap"] < 0.1


def test_probe_one_method_final_only(tiny_run, tmp_path):
    out = tmp_path / "out"
    result = attribution_probe(tiny_run, prompt_file(tmp_path, PROMPT), out,
                               methods=["grad_x_input"], which="final")
    rows = read_csv(out / "attribution.csv")
    assert {r["checkpoint"] for r in rows} == {"final"} and {r["method"] for r in rows} == {
        "grad_x_input"}
    assert result["mean_completeness_gap"] is None
    assert [p.name for p in result["heatmaps"]] == ["heatmap_a.png"]


def test_probe_ig_gap_shrinks_with_steps(tiny_run, tmp_path):
    prompts = prompt_file(tmp_path, PROMPT)
    gaps = [attribution_probe(tiny_run, prompts, tmp_path / str(steps), which="final",
                              methods=["integrated_gradients"], steps=steps,
                              baseline="mean")["mean_completeness_gap"] for steps in (2, 64)]
    assert gaps[1] < gaps[0]


@pytest.mark.parametrize("tables, kwargs, match", [
    ((), {}, "no prompts"),
    (('name = "z"\ntext = "Z~"',), {}, "'z'.*not in the vocabulary"),
    ((PROMPT,), {"methods": ["grad_norm", "saliency"]}, "unknown method 'saliency'"),
    ((PROMPT,), {"baseline": "noise"}, "zero, mean, unk"),
    ((PROMPT,), {"steps": 0}, "steps"),
    ((PROMPT,), {"target": "true"}, "predicted, expected"),
    ((PROMPT, 'name = "b"\ntext = "All:"'), {"target": "expected"}, "'b' has no expected"),
    ((PROMPT.replace('" "', '"Z"'),), {"target": "expected"}, "'a': expected 'Z'"),
    (('text = "' + "a" * 40 + '"',), {}, "more than the model's context of 32"),
])
def test_probe_bad_input(tiny_run, tmp_path, tables, kwargs, match):
    out = tmp_path / "out"
    with pytest.raises(LmscopeError, match=match):
        attribution_probe(tiny_run, prompt_file(tmp_path, *tables), out, **kwargs)
    assert not out.exists()  # nothing written before the input is known to be good


def test_probe_run_without_checkpoints(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LmscopeError, match="no checkpoints"):
        attribution_probe(empty, prompt_file(tmp_path, PROMPT), tmp_path / "out")


# --- perturbation and sampling methods (Captum) ---------------------------------------------------

SHORT = [3, 1, 4, 1, 5]  # 5 tokens: exact Shapley walks 120 orderings


def test_exact_shapley_values_are_efficient_and_sampling_approaches_them(model):
    target = 4
    x = embeddings(model, SHORT)
    b = baseline_vector(model, "mean").expand_as(x)
    difference = logp_of(model, x, target) - logp_of(model, b, target)
    exact = attribute(model, SHORT, target, "shapley_exact", baseline="mean").scores
    # Captum returns the perturbation methods' attributions in float32: to 1e-6
    assert exact.sum() == pytest.approx(difference, abs=1e-6)  # efficiency
    sampled = attribute(model, SHORT, target, "shapley_sampling", baseline="mean", steps=64)
    assert sampled.scores.sum() == pytest.approx(difference, abs=1e-6)  # every ordering is
    np.testing.assert_allclose(sampled.scores, exact, atol=0.2 * np.abs(exact).max())


def test_exact_shapley_values_equal_the_formula_over_coalitions(model):
    """phi_i = sum over coalitions S without i of |S|! (T-|S|-1)! / T! (v(S+i) - v(S)),
    v(S) = f(x on S, baseline elsewhere): written here from the definition, 2^T subsets."""
    import itertools
    import math

    target = 2
    x = embeddings(model, SHORT)
    b = baseline_vector(model, "zero").expand_as(x)
    t = len(SHORT)

    def v(subset):
        mixed = b.clone()
        mixed[list(subset)] = x[list(subset)]
        return logp_of(model, mixed, target)

    expected = np.zeros(t)
    for i in range(t):
        others = [j for j in range(t) if j != i]
        for k in range(t):
            for s in itertools.combinations(others, k):
                weight = math.factorial(k) * math.factorial(t - k - 1) / math.factorial(t)
                expected[i] += weight * (v((*s, i)) - v(s))
    found = attribute(model, SHORT, target, "shapley_exact", baseline="zero").scores
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-6)


def test_occlusion_is_the_loss_of_each_position(model):
    target = 7
    x = embeddings(model)
    b = baseline_vector(model, "zero")
    expected = []
    for i in range(len(IDS)):
        occluded = x.clone()
        occluded[i] = b
        expected.append(logp_of(model, x, target) - logp_of(model, occluded, target))
    found = attribute(model, IDS, target, "occlusion").scores
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-6)


def test_sampling_methods_repeat_and_leave_the_global_generators_alone(model):
    torch.manual_seed(123)
    np.random.seed(123)
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    for method in ("gradient_shap", "shapley_sampling"):
        first = attribute(model, IDS, 4, method, steps=16).scores
        again = attribute(model, IDS, 4, method, steps=16).scores
        np.testing.assert_array_equal(first, again)
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)


def test_gradient_shap_approaches_integrated_gradients(model):
    ig = attribute(model, IDS, 4, "integrated_gradients", steps=64).scores
    shap = attribute(model, IDS, 4, "gradient_shap", steps=256).scores
    # expected gradients on one baseline with no noise: IG with random points on the path
    assert shap.sum() == pytest.approx(ig.sum(), abs=0.1 * abs(ig.sum()) + 1e-3)


def test_shapley_exact_refuses_a_long_prompt(model):
    with pytest.raises(LmscopeError, match="shapley_exact on a prompt of 7 tokens would walk "
                                           "5,040 orderings"):
        attribute(model, IDS, 4, "shapley_exact")


@pytest.mark.parametrize("arch", ["lstm", "kgram"])
def test_every_method_works_on_the_lstm_and_the_kgram_mlp(tmp_path, arch):

    net = load(tiny_checkpoint(tmp_path / "ckpt", model=arch), device="cpu").model
    for method in METHODS:
        a = attribute(net, SHORT, 2, method, steps=8, baseline="mean")
        assert a.scores.shape == (len(SHORT),) and np.all(np.isfinite(a.scores)), method


def test_probe_with_the_perturbation_methods(tiny_run, tmp_path):
    out = tmp_path / "out"
    (tmp_path / "p.toml").write_text('[[prompt]]\nname = "a"\ntext = "First"\n')
    attribution_probe(tiny_run, tmp_path / "p.toml", out, which="final", steps=8,
                      methods=("occlusion", "shapley_sampling", "shapley_exact"))
    rows = list(csv.DictReader((out / "attribution.csv").open()))
    assert {r["method"] for r in rows} == {"occlusion", "shapley_sampling", "shapley_exact"}
    exact = [float(r["score"]) for r in rows if r["method"] == "shapley_exact"]
    sampled = [float(r["score"]) for r in rows if r["method"] == "shapley_sampling"]
    assert sum(exact) == pytest.approx(sum(sampled), abs=1e-4)  # both efficient


# --- contrastive targets ----------------------------------------------------------------------------

def test_a_contrast_attributes_the_difference_of_log_probabilities(model):
    target, foil = 4, 9
    x = embeddings(model)
    b = baseline_vector(model, "zero").expand_as(x)
    difference = ((logp_of(model, x, target) - logp_of(model, x, foil))
                  - (logp_of(model, b, target) - logp_of(model, b, foil)))
    ig = attribute(model, IDS, target, "integrated_gradients", steps=256, foil_id=foil)
    assert ig.scores.sum() == pytest.approx(difference, abs=1e-4)  # completeness, contrasted
    # methods linear in f split: attribution(target - foil) = attribution(target) - (foil)
    for method in ("grad_x_input", "integrated_gradients", "occlusion"):
        both = attribute(model, IDS, target, method, steps=16, foil_id=foil).scores
        alone = attribute(model, IDS, target, method, steps=16).scores
        other = attribute(model, IDS, foil, method, steps=16).scores
        np.testing.assert_allclose(both, alone - other, rtol=0, atol=1e-6)
    same = attribute(model, IDS, target, "grad_norm", foil_id=target).scores
    assert np.all(same == 0)  # log p(y) - log p(y) does not depend on the input


def test_probe_contrast_and_its_bad_foils(tiny_run, tmp_path):
    (tmp_path / "p.toml").write_text('[[prompt]]\nname = "a"\ntext = "First"\n')
    attribution_probe(tiny_run, tmp_path / "p.toml", tmp_path / "out", which="final",
                      methods=("grad_x_input",), contrast="e")
    rows = list(csv.DictReader((tmp_path / "out" / "attribution.csv").open()))
    assert rows and all(r["target"].endswith(" vs e") for r in rows)
    assert "contrasted with 'e'" in (tmp_path / "out" / "summary.md").read_text()
    for foil, match in (("Fi", "is 2 tokens"), ("", "is 0 tokens"),
                        ("Ω", "not in the vocabulary")):
        with pytest.raises(LmscopeError, match=match):
            attribution_probe(tiny_run, tmp_path / "p.toml", tmp_path / "bad", which="final",
                              contrast=foil)


@pytest.mark.parametrize("arch", ["gpt", "lstm", "kgram"])
def test_occlusion_of_a_position_the_model_cannot_see_scores_zero(tmp_path, arch):
    """Attributing the prediction after position k, every later position scores 0 (the model is
    causal), and the visible ones score as if the prompt stopped at k. The k-gram MLP sees only
    its last k positions, so earlier ones score 0 too."""

    net = load(tiny_checkpoint(tmp_path / "ckpt", model=arch), device="cpu").model.double()
    ids, k = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3], 5
    full = attribute(net, ids, 2, "occlusion", position=k).scores
    assert np.all(full[k + 1:] == 0) and np.any(full[:k + 1] != 0)
    np.testing.assert_allclose(full[:k + 1], attribute(net, ids[:k + 1], 2, "occlusion").scores,
                               rtol=0, atol=1e-12)
    if arch == "kgram":
        assert np.all(full[:k + 1 - net.config.k] == 0)


def test_captum_deeplift_is_not_deeplift_on_these_models(tmp_path):
    """Why `deeplift` is refused (module docstring): Captum's DeepLift gives gradient x input on
    the GPT and the LSTM, and on the k-gram MLP misses its own summation-to-delta property."""

    class Target(torch.nn.Module):
        def __init__(self, net, target):
            super().__init__()
            self.net, self.target = net, target

        def forward(self, emb):
            return last_logp(self.net, emb)[:, self.target]

    for arch in ("gpt", "lstm", "kgram"):
        net = load(tiny_checkpoint(tmp_path / arch, model=arch), device="cpu").model
        x = net.embed(torch.tensor([SHORT])).detach()
        found, delta = DeepLift(Target(net, 2)).attribute(
            x.clone().requires_grad_(True), baselines=torch.zeros_like(x),
            return_convergence_delta=True)
        scores = found[0].sum(-1).detach().numpy()
        if arch == "kgram":
            assert abs(float(delta)) > 0.1  # sum of scores != f(x) - f(baseline)
        else:
            np.testing.assert_allclose(scores, attribute(net, SHORT, 2, "grad_x_input").scores,
                                       rtol=0, atol=1e-6)


def test_deeplift_is_refused_with_the_reason(model):
    with pytest.raises(LmscopeError, match="'deeplift' is not offered.*use integrated_gradients"):
        attribute(model, IDS, 4, "deeplift")


def _logp_of_ids(model, ids, target):
    with torch.no_grad():
        return float(F.log_softmax(model(torch.tensor([ids]))[0, -1], -1)[target])


@pytest.mark.parametrize("window", [1, 2, 3])
def test_occlusion_with_a_baseline_token_replaces_tokens(model, window):
    """With baseline token:C, occluding replaces the window's tokens by C: checked through the
    model's own token-id path (model(ids)), not through the embeddings. A position's score is
    the mean over the windows of `window` consecutive positions that hold it."""
    target, c = 7, 10
    base = _logp_of_ids(model, IDS, target)
    drops = {}
    for start in range(len(IDS) - window + 1):
        changed = [c if start <= i < start + window else t for i, t in enumerate(IDS)]
        drops[start] = base - _logp_of_ids(model, changed, target)
    expected = [np.mean([d for s, d in drops.items() if s <= i < s + window])
                for i in range(len(IDS))]
    found = attribute(model, IDS, target, "occlusion", baseline="token:x", baseline_token=c,
                      window=window).scores
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-6)  # Captum's float32


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"baseline": "tokn:a"}, "unknown baseline 'tokn:a'"),
    ({"baseline": "token:"}, "unknown baseline 'token:'"),
    ({"window": 0}, "occlusion window must be a whole number of at least 1"),
    ({"window": 8}, "occlusion window of 8 positions is longer than the prompt"),
    ({"baseline": "token:a"}, "needs the id of its token"),
    ({"window": 2, "position": 3}, "attributes the prediction after the last position only"),
])
def test_baseline_and_window_bad_input(model, kwargs, match):
    with pytest.raises(LmscopeError, match=match):
        attribute(model, IDS, 4, "occlusion", **kwargs)


def test_probe_with_a_baseline_token_and_a_window(tiny_run, tmp_path):
    out = tmp_path / "out"
    attribution_probe(tiny_run, prompt_file(tmp_path, PROMPT), out, methods=["occlusion"],
                      baseline="token: ", window=3, which="final")
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "Occlusion: baseline token: , a window of 3 position(s)." in summary
    with pytest.raises(LmscopeError, match="needs the occlusion method"):
        attribution_probe(tiny_run, prompt_file(tmp_path, PROMPT), out, window=2,
                          methods=["grad_norm"], which="final")
    for baseline, match in (("token:Ω", "baseline 'token:Ω' is not in the vocabulary"),
                            ("token:ee", "baseline 'token:ee' is 2 tokens: give one token")):
        with pytest.raises(LmscopeError, match=match):
            attribution_probe(tiny_run, prompt_file(tmp_path, PROMPT), out, baseline=baseline,
                              methods=["occlusion"], which="final")
