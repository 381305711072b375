"""The faithfulness probe: masked probabilities against a loop, the oracle order below every
method's and every other order, the randomization check, the probe over a run, its files."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lmscope.analysis.attribution import METHODS, attribute, baseline_embeddings
from lmscope.analysis.faithfulness import (
    CURVE_POINTS,
    DEFAULT_METHODS,
    RANDOM,
    FaithfulnessResult,
    compute,
    faithfulness_probe,
    masked_probabilities,
    randomization_spearman,
    reinitialised,
)
from lmscope.errors import LmscopeError
from lmscope.metrics.faithfulness import (
    curve_auc,
    deletion_masks,
    order_by_scores,
)
from lmscope.run.checkpoint import load
from tests.analysis.test_attribution import PROMPT, prompt_file, read_csv
from tests.metrics.test_faithfulness import best_deletion_order
from tests.test_export import tiny_checkpoint

PNG = b"\x89PNG\r\n\x1a\n"
OTHER = 'name = "b"\ntext = "All:\\nSpeak, speak."\n'




def setup(ckpt, text, baseline="zero"):
    """ids, embeddings, baseline and the predicted target of a prompt."""
    model = ckpt.model
    ids = ckpt.tokenizer.encode(text)
    with torch.no_grad():
        x = model.embed(torch.tensor([ids]))
        logits = model.forward_embeddings(x)[0, -1]
        b = baseline_embeddings(model, x, baseline, ckpt.tokenizer.unk_id, logits.numel())
    return ids, x, b, int(logits.argmax())


# --- masked probabilities and the oracle ---------------------------------------------------------

@pytest.fixture(scope="module")
def random_gpt(tmp_path_factory):
    return load(tiny_checkpoint(tmp_path_factory.mktemp("gpt") / "ckpt"), device="cpu")


def testmasked_probabilities_equal_a_loop_over_masks(random_gpt):
    model = random_gpt.model
    ids, x, b, target = setup(random_gpt, "First", baseline="mean")
    masks = np.array([[1, 1, 1, 1, 1], [0, 1, 0, 1, 1], [0, 0, 0, 0, 0], [0, 1, 0, 1, 1],
                      [1, 0, 0, 0, 0]], dtype=bool)  # a mask twice: the same value twice
    found = masked_probabilities(model, x, b, masks, target, batch_size=2)
    assert found.dtype == np.float64 and found.shape == (5,)
    expected = []
    for mask in masks:  # one input at a time, built position by position
        emb = x[0].clone()
        for i, keep in enumerate(mask):
            if not keep:
                emb[i] = b[0, i]
        with torch.no_grad():
            expected.append(float(torch.softmax(model(torch.tensor([ids]))[0, -1], -1)[target])
                            if mask.all() else
                            float(torch.softmax(model.forward_embeddings(emb[None])[0, -1], -1)
                                  [target]))
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-7)
    assert found[1] == found[3]


def test_masked_probabilities_are_the_same_on_any_number_of_threads(random_gpt):
    """Each batch of masks is computed on one thread: the study's tables do not depend on how
    many threads a unit had (its process alone, or one of --jobs N)."""
    ids, x, b, target = setup(random_gpt, "First", baseline="mean")
    masks = np.random.default_rng(0).random((40, len(ids))) < 0.5
    before = torch.get_num_threads()
    try:
        found = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            found.append(masked_probabilities(random_gpt.model, x, b, masks, target,
                                              batch_size=4))
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(found[0], found[1]) and np.array_equal(found[0], found[2])


def test_the_oracle_deletes_no_worse_than_any_method_or_any_order(random_gpt):
    """Required: on a 5-token prompt the exhaustive oracle's deletion AUC is <= that of every
    method's order and of every other order (all 120), with one probability function."""
    model = random_gpt.model
    ids, x, b, target = setup(random_gpt, "First")
    assert len(ids) == 5

    def prob(masks):
        return masked_probabilities(model, x, b, masks, target)

    best, oracle = best_deletion_order(prob, len(ids))
    assert sorted(best.tolist()) == list(range(5))
    # float32 logits: a mask in a batch of another size may differ in the last bits (the last
    # position's matmuls take other kernels for other row counts), about 1e-9 here
    tie = 1e-8
    assert curve_auc(prob(deletion_masks(best))) == pytest.approx(oracle, abs=tie)
    by_method = {}
    for method in METHODS:
        scores = attribute(model, ids, target, method, steps=8).scores
        by_method[method] = curve_auc(prob(deletion_masks(order_by_scores(scores))))
    assert all(auc >= oracle - tie for auc in by_method.values()), (oracle, by_method)
    # every order of the 5 positions (random orders included), all masks in one call
    orders = list(itertools.permutations(range(5)))
    curves = prob(np.concatenate([deletion_masks(o) for o in orders])).reshape(len(orders), 6)
    every = [curve_auc(curve) for curve in curves]
    assert min(every) == pytest.approx(oracle, abs=tie)
    assert all(auc >= oracle - tie for auc in every)


# --- the randomization check ---------------------------------------------------------------------

RANDOMIZATION_PROMPTS = ["First Citizen:\nBefore we", "All:\nSpeak, speak.",
                         "You are all resolved rather", "Resolved. resolved.\n\nFirst"]


def test_randomization_separates_a_trained_model_from_a_reinitialised_one(tiny_run):
    """Required: the rank correlation of |scores| with a re-initialised model is low, and with
    the model itself exactly 1 (up to rounding)."""
    ckpt = load(tiny_run, device="cpu")
    fresh = reinitialised(ckpt)
    for method in ("grad_x_input", "integrated_gradients"):
        with_itself, with_fresh = [], []
        for text in RANDOMIZATION_PROMPTS:
            ids, _, _, target = setup(ckpt, text)
            kw = {"baseline": "zero", "steps": 8, "baseline_token": ckpt.tokenizer.unk_id}
            with_itself.append(randomization_spearman(ckpt.model, ckpt.model, ids, target,
                                                      method, **kw))
            with_fresh.append(randomization_spearman(ckpt.model, fresh, ids, target, method,
                                                     **kw))
        assert with_itself == pytest.approx([1.0] * len(with_itself), abs=1e-12)
        # the scores of a trained model are not those of random weights (about 0.1 to 0.3
        # here, where 1 would mean the method ignores the weights)
        assert np.mean(np.abs(with_fresh)) < 0.6, (method, with_fresh)


def test_reinitialised_is_the_same_architecture_with_fresh_weights(tiny_run):
    ckpt = load(tiny_run, device="cpu")
    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    fresh, again = reinitialised(ckpt), reinitialised(ckpt)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator untouched
    trained = ckpt.model.state_dict()
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in trained.items()}
    assert not fresh.training and type(fresh) is type(ckpt.model)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in fresh.state_dict().items())
    assert not any(torch.equal(v, trained[k]) for k, v in fresh.state_dict().items()
                   if v.numel() > 1 and v.std() > 0)  # every random tensor differs


# --- the probe -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def probe(tiny_run, tmp_path_factory):
    """All checkpoints of the tiny run, two prompts, two methods (kept short)."""
    tmp = tmp_path_factory.mktemp("faithfulness")
    prompts = prompt_file(tmp, PROMPT, OTHER)
    np.random.seed(11)
    state = np.random.get_state()[1].copy()
    result = compute(tiny_run, prompts, methods=("grad_x_input", "occlusion"), steps=4,
                     random_orders=4)
    return result, prompts, state, np.random.get_state()[1].copy()


def test_probe_over_every_checkpoint(probe, tiny_run):
    result, _, before, after = probe
    assert np.array_equal(before, after)  # the random orders leave numpy's generator alone
    methods = ("grad_x_input", "occlusion", RANDOM)
    assert result.methods == ("grad_x_input", "occlusion")
    assert [name for name, _ in result.iterations] == ["iter_0000010", "iter_0000020", "final"]
    assert len(result.rows) == 3 * 2 * 3
    assert {r.tokens for r in result.rows if r.prompt == "a"} == {len("First Citizen:\nBefore we")}
    for point in result.iterations:
        ranked = result.ranking_at(point)
        assert sorted(r.rank for r in ranked) == [1, 2, 3]
        assert {r.method for r in ranked} == set(methods)
        scores = [r.faithfulness_score for r in ranked]
        assert scores == sorted(scores, reverse=True)  # rank 1 the highest
        for r in ranked:
            mine = [p for p in result.rows if (p.checkpoint, p.iteration) == point
                    and p.method == r.method]
            assert r.prompts == 2
            assert r.deletion_auc == pytest.approx(np.mean([p.deletion_auc for p in mine]))
            assert r.faithfulness_score == pytest.approx(r.insertion_auc - r.deletion_auc)
    # the rows of the final checkpoint: the target is the checkpoint's argmax, its probability
    # p_full, which starts the deletion curve
    ckpt = load(tiny_run, device="cpu")
    ids = ckpt.tokenizer.encode("First Citizen:\nBefore we")
    with torch.no_grad():
        probs = torch.softmax(ckpt.model(torch.tensor([ids]))[0, -1].double(), -1)
    final = [r for r in result.rows if r.checkpoint == "final" and r.prompt == "a"]
    for r in final:
        assert r.target_prob == pytest.approx(float(probs.max()), rel=1e-5)
        assert -1 <= r.comprehensiveness <= 1 and -1 <= r.sufficiency <= 1
        assert 0 <= r.deletion_auc <= 1 and 0 <= r.insertion_auc <= 1
    assert all(math.isnan(r.randomization_spearman) for r in result.rows if r.method == RANDOM)
    assert all(-1 <= r.randomization_spearman <= 1 for r in result.rows if r.method != RANDOM)
    # curves: 11 points; deletion starts at the mean p_full and ends where insertion starts
    for point in result.iterations:
        for method in methods:
            curve = {kind: [c.p for c in result.curves if (c.checkpoint, c.iteration) == point
                            and c.method == method and c.kind == kind]
                     for kind in ("deletion", "insertion")}
            assert len(curve["deletion"]) == len(curve["insertion"]) == CURVE_POINTS
            p_full = np.mean([r.target_prob for r in result.rows
                              if (r.checkpoint, r.iteration) == point and r.method == method])
            # p_full is computed alone, the curves' masks in batches: float32's last bits
            assert curve["deletion"][0] == pytest.approx(p_full, rel=1e-6)
            assert curve["insertion"][-1] == pytest.approx(p_full, rel=1e-6)
            assert curve["deletion"][-1] == pytest.approx(curve["insertion"][0], rel=1e-9)


def _curves_by_hand(ckpt, text, method, *, absolute=False):
    """The deletion and insertion curves of one prompt, from the masks' definition."""
    ids, x, b, target = setup(ckpt, text)
    scores = attribute(ckpt.model, ids, target, method, steps=4).scores
    order = np.argsort(-(np.abs(scores) if absolute else scores), kind="stable")
    t = len(ids)

    def p_keeping(kept):
        emb = b[0].clone()
        emb[sorted(kept)] = x[0, sorted(kept)]
        with torch.no_grad():
            return float(torch.softmax(ckpt.model.forward_embeddings(emb[None])[0, -1].double(),
                                       -1)[target])

    deletion = [p_keeping(set(range(t)) - set(order[:k].tolist())) for k in range(t + 1)]
    insertion = [p_keeping(set(order[:k].tolist())) for k in range(t + 1)]
    return deletion, insertion


def test_the_measures_of_one_row_by_hand(probe, tiny_run):
    """occlusion on prompt b at the final checkpoint, recomputed from the masks' definition."""
    result = probe[0]
    ckpt = load(tiny_run, device="cpu")
    deletion, insertion = _curves_by_hand(ckpt, "All:\nSpeak, speak.", "occlusion")
    t = len(deletion) - 1
    ks = [max(1, math.ceil(f * t)) for f in (0.01, 0.05, 0.1, 0.2, 0.5)]
    row = next(r for r in result.rows if r.checkpoint == "final" and r.prompt == "b"
               and r.method == "occlusion")
    assert row.deletion_auc == pytest.approx(np.trapezoid(deletion, dx=1 / t), abs=1e-6)
    assert row.insertion_auc == pytest.approx(np.trapezoid(insertion, dx=1 / t), abs=1e-6)
    assert row.comprehensiveness == pytest.approx(
        np.mean([deletion[0] - deletion[k] for k in ks]), abs=1e-6)
    assert row.sufficiency == pytest.approx(
        np.mean([deletion[0] - insertion[k] for k in ks]), abs=1e-6)


def test_order_by_absolute_scores(tiny_run, tmp_path):
    """order="abs" ranks positions by |score|: a signed method's curves follow that order, and
    grad_norm (never negative) measures the same either way."""
    prompts = prompt_file(tmp_path, OTHER)
    kw = {"methods": ("grad_x_input", "grad_norm"), "which": "final", "steps": 4,
          "randomization": False}
    signed, absolute = compute(tiny_run, prompts, **kw), compute(tiny_run, prompts, order="abs",
                                                                  **kw)
    ckpt = load(tiny_run, device="cpu")
    deletion, insertion = _curves_by_hand(ckpt, "All:\nSpeak, speak.", "grad_x_input",
                                          absolute=True)
    t = len(deletion) - 1
    row = next(r for r in absolute.rows if r.method == "grad_x_input")
    assert row.deletion_auc == pytest.approx(np.trapezoid(deletion, dx=1 / t), abs=1e-6)
    assert row.insertion_auc == pytest.approx(np.trapezoid(insertion, dx=1 / t), abs=1e-6)
    norm = [next(r for r in res.rows if r.method == "grad_norm") for res in (signed, absolute)]
    assert norm[0].deletion_auc == norm[1].deletion_auc
    assert norm[0].insertion_auc == norm[1].insertion_auc
    assert absolute.order == "abs"
    with pytest.raises(LmscopeError, match="unknown order 'size'"):
        compute(tiny_run, prompts, order="size", **kw)


def test_save_and_load(probe, tmp_path):
    result = probe[0]
    out = tmp_path / "out"
    files = result.save(out)
    for name in ("faithfulness.csv", "ranking.csv", "curves.csv", "curves.png",
                 "over_training.png", "summary.md"):
        assert (out / name).is_file(), name
    assert (out / "curves.png").read_bytes()[:8] == PNG
    assert (out / "over_training.png").read_bytes()[:8] == PNG
    assert files["most_faithful"] == result.most_faithful()
    assert files["ranking"] == [r.method for r in result.ranking_at()]
    back = FaithfulnessResult.load(out)
    assert back.methods == result.methods and back.prompts == ["a", "b"]
    assert len(back.rows) == len(result.rows) and len(back.curves) == len(result.curves)
    for a, b in zip(result.rows, back.rows, strict=True):
        assert (a.prompt, a.domain, a.checkpoint, a.iteration, a.method, a.tokens, a.target) == (
            b.prompt, b.domain, b.checkpoint, b.iteration, b.method, b.tokens, b.target)
        for name in ("target_prob", "deletion_auc", "insertion_auc", "comprehensiveness",
                     "sufficiency", "randomization_spearman"):
            assert getattr(b, name) == pytest.approx(getattr(a, name), rel=1e-5, abs=1e-12,
                                                     nan_ok=True)
    for a, b in zip(result.ranking, back.ranking, strict=True):
        assert (a.method, a.rank, a.prompts) == (b.method, b.rank, b.prompts)
        assert b.faithfulness_score == pytest.approx(a.faithfulness_score, rel=1e-5, abs=1e-12)
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "insertion AUC - deletion AUC" in summary and "Most faithful method" in summary
    assert "deletion AUC lower" in summary and "sufficiency lower" in summary
    assert "comprehensiveness higher" in summary and "random" in summary
    table = read_csv(out / "ranking.csv")
    assert {r["rank"] for r in table if r["checkpoint"] == "final"} == {"1", "2", "3"}


def test_probe_final_only_without_randomization(probe, tiny_run, tmp_path):
    out = tmp_path / "out"
    files = faithfulness_probe(tiny_run, prompt_file(tmp_path, OTHER), out, which="final",
                               methods=["grad_norm"], randomization=False, random_orders=4)
    # the random orders depend on the prompt's length only: the same row as in the probe over
    # every checkpoint with other methods and another prompt before this one
    back = FaithfulnessResult.load(out)
    earlier = next(r for r in probe[0].rows if r.checkpoint == "final" and r.prompt == "b"
                   and r.method == RANDOM)
    assert back.rows[-1].method == RANDOM
    assert back.rows[-1].deletion_auc == pytest.approx(earlier.deletion_auc, rel=1e-5)
    assert back.rows[-1].sufficiency == pytest.approx(earlier.sufficiency, rel=1e-5)
    rows = read_csv(out / "faithfulness.csv")
    assert {r["checkpoint"] for r in rows} == {"final"}
    assert [r["method"] for r in rows] == ["grad_norm", RANDOM]
    assert all(r["randomization_spearman"] == "nan" for r in rows)
    assert not (out / "over_training.png").exists()  # one checkpoint: no line to draw
    assert "over_training_png" not in files
    picked = compute(tiny_run, prompt_file(tmp_path, OTHER), which="10,final",
                     methods=["grad_norm"], randomization=False, random_orders=2)
    assert [name for name, _ in picked.iterations] == ["iter_0000010", "final"]


@pytest.mark.parametrize("arch", ["lstm", "kgram"])
def test_other_architectures(tmp_path, arch):
    path = tiny_checkpoint(tmp_path / "ckpt", model=arch)
    methods = ("grad_norm", "integrated_gradients", "occlusion")
    result = compute(path, prompt_file(tmp_path, 'text = "Speak, all"'), steps=4,
                     random_orders=2, methods=methods)
    assert len(result.rows) == len(methods) + 1
    assert sorted(r.rank for r in result.ranking) == [1, 2, 3, 4]
    assert all(np.isfinite([r.deletion_auc, r.insertion_auc, r.comprehensiveness,
                            r.sufficiency]).all() for r in result.rows)


@pytest.mark.parametrize("kwargs, match", [
    ({"methods": ["grad_norm", "saliency"]}, "unknown method 'saliency'"),
    ({"methods": []}, "no methods given"),
    ({"methods": ["occlusion", "occlusion"]}, "a method is given twice"),
    ({"random_orders": 0}, "random orders must be a whole number of at least 1"),
    ({"random_orders": True}, "random orders must be a whole number"),
    ({"which": "5"}, "has no checkpoint '5'"),
    ({"which": ","}, "names no checkpoint"),
    ({"which": None}, "checkpoint selection None"),
    ({"baseline": "noise"}, "zero, mean, unk"),
    ({"steps": 0}, "steps"),
    ({"target": "true"}, "predicted, expected"),
    ({"randomization": "yes"}, "randomization must be true or false"),
    ({"methods": ["shapley_exact"]}, "shapley_exact on prompt 'a' of 24 tokens"),
])
def test_bad_input(tiny_run, tmp_path, kwargs, match):
    out = tmp_path / "out"
    with pytest.raises(LmscopeError, match=match):
        faithfulness_probe(tiny_run, prompt_file(tmp_path, PROMPT), out, **kwargs)
    assert not out.exists()  # nothing written before the input is known to be good


def test_expected_target_needs_expected_characters(tiny_run, tmp_path):
    with pytest.raises(LmscopeError, match="'b' has no expected"):
        compute(tiny_run, prompt_file(tmp_path, PROMPT, OTHER), target="expected")


def test_default_methods():
    assert set(DEFAULT_METHODS) < set(METHODS)
    assert "shapley_sampling" not in DEFAULT_METHODS  # seconds a prompt: on request only
