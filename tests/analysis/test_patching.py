"""Activation patching (analysis/patching.py), checked against properties that hold by
construction (a patch of everything the output reads restores it, a patch where the two runs
agree changes nothing) and against a one-site-at-a-time loop written with plain indexing."""

import math

import pytest
import torch

from lmscope.analysis.patching import (
    PatchingProbeResult,
    Site,
    compute,
    patch,
    patched_metrics,
    sites,
)
from lmscope.api import run_with_cache, run_with_hooks
from lmscope.errors import LmscopeError
from lmscope.run.checkpoint import load
from tests.test_export import CHARS, tiny_checkpoint

T = 12  # tokens per prompt
CHANGED = 6  # the position where the corrupt prompt differs from the clean one


def _net(tmp_path, model="gpt", **config):
    return load(tiny_checkpoint(tmp_path / model, model=model, **config), device="cpu").model


def _prompts(changed=(CHANGED,)):
    clean = torch.randint(1, CHARS.vocab_size, (T,), generator=torch.Generator().manual_seed(3))
    corrupt = clean.clone()
    for p in changed:
        corrupt[p] = (clean[p] + 1) % CHARS.vocab_size
    return clean, corrupt


def _target_and_foil(net, clean, corrupt):
    """The tokens whose logit the corruption moves most up and most down: the largest
    clean - corrupt logit difference, so that scores are far from float noise."""
    with torch.no_grad():
        shift = net(clean[None])[0, -1] - net(corrupt[None])[0, -1]
    return int(shift.argmax()), int(shift.argmin())


def _brute_force(net, clean, corrupt, site, target, foil):
    """The metric of the corrupt run with `site` copied from the clean run, one run per site."""
    _, cache = run_with_cache(net, clean, [site.hook])
    source = cache[site.hook]

    def put(x, name):
        x = x.clone()
        if site.kind == "head":
            x[:, :, site.head] = source[:, :, site.head]
        elif site.kind == "input_token":
            width = x.size(-1) // net.config.k
            slot = site.position - (x.size(1) - net.config.k)
            x[:, -1, slot * width:(slot + 1) * width] = source[:, -1, slot * width:(slot + 1) * width]
        elif site.position is None:
            x[:] = source
        else:
            x[:, site.position] = source[:, site.position]
        return x

    logits = run_with_hooks(net, corrupt, {site.hook: put})[0, -1].double()
    if foil is None:
        return float(logits[target] - torch.logsumexp(logits, 0))
    return float(logits[target] - logits[foil])


@pytest.mark.parametrize("model", ["gpt", "lstm", "kgram"])
def test_batched_runs_equal_one_site_at_a_time(tmp_path, model):
    net = _net(tmp_path, model)
    clean, corrupt = _prompts(changed=(CHANGED, T - 2))  # T - 2: within the k-gram's window
    target, foil = _target_and_foil(net, clean, corrupt)
    chosen = sites(net, T)[::3]  # every kind, several layers and positions
    for use_foil in (foil, None):
        batched = patched_metrics(net, clean, corrupt, chosen, target, use_foil, batch_size=7)
        loop = [_brute_force(net, clean, corrupt, s, target, use_foil) for s in chosen]
        assert batched.tolist() == pytest.approx(loop, abs=1e-5)


def test_metrics_and_scores_follow_their_definitions(tmp_path):
    net = _net(tmp_path)
    clean, corrupt = _prompts()
    target, foil = _target_and_foil(net, clean, corrupt)
    with torch.no_grad():
        last = net(torch.stack([clean, corrupt]))[:, -1].double()
    for use_foil in (foil, None):
        res = patch(net, clean, corrupt, target, use_foil)
        if use_foil is None:
            want = (last.log_softmax(-1)[:, target]).tolist()
            assert res.metric_name == "logprob"
        else:
            want = (last[:, target] - last[:, foil]).tolist()
            assert res.metric_name == "logit_diff"
        assert [res.clean_metric, res.corrupt_metric] == pytest.approx(want, abs=1e-5)
        site = Site("attn_out", 1, None, T - 1)
        patched = _brute_force(net, clean, corrupt, site, target, use_foil)
        assert res.score(site) == pytest.approx((patched - want[1]) / (want[0] - want[1]),
                                                abs=1e-4)
    assert len(res.rows) == len(sites(net, T)) == T * (2 + 1 + 2 + 2) + 2 * 4


@pytest.mark.parametrize("config", [{}, {"norm_position": "post"}])
def test_gpt_patches_restore_everything_or_nothing_where_they_must(tmp_path, config):
    net = _net(tmp_path, **config)
    clean, corrupt = _prompts()
    target, foil = _target_and_foil(net, clean, corrupt)
    whole = Site("resid_pre", 0, None, None)  # the whole input of the network
    res = patch(net, clean, corrupt, target, foil, patch_sites=[*sites(net, T), whole])
    assert abs(res.clean_metric - res.corrupt_metric) > 1e-2
    score = {r.site: r.score for r in res.rows}
    # what the head reads: the last layer's resid_post at the last position
    assert score[Site("resid_post", 1, None, T - 1)] == pytest.approx(1.0, abs=1e-4)
    assert score[whole] == pytest.approx(1.0, abs=1e-4)
    # the changed token's own embedding carries the whole difference
    assert score[Site("resid_pre", 0, None, CHANGED)] == pytest.approx(1.0, abs=1e-4)
    for s, value in score.items():
        if s.position is not None and s.position < CHANGED:  # causality: the runs agree there
            assert value == pytest.approx(0.0, abs=1e-4), s
        if s.kind == "resid_post" and s.position != T - 1:  # no later layer reads it
            assert value == pytest.approx(0.0, abs=1e-4), s
        if s.kind == "resid_pre" and s.layer == 0 and s.position not in (CHANGED, None):
            assert value == pytest.approx(0.0, abs=1e-4), s  # same token, same embedding
    with pytest.raises(LmscopeError, match="positions 0 to 11"):
        patch(net, clean, corrupt, target, foil, patch_sites=[Site("resid_pre", 0, None, T)])
    with pytest.raises(LmscopeError, match="head 4 does not exist"):
        patch(net, clean, corrupt, target, foil, patch_sites=[Site("head", 0, 4)])


def test_lstm_patch_reaches_later_layers_only(tmp_path):
    net = _net(tmp_path, "lstm")
    clean, corrupt = _prompts()
    target, foil = _target_and_foil(net, clean, corrupt)
    whole = Site("hidden", 0, None, None)
    res = patch(net, clean, corrupt, target, foil, patch_sites=[*sites(net, T), whole])
    assert abs(res.clean_metric - res.corrupt_metric) > 1e-2
    score = {r.site: r.score for r in res.rows}
    assert score[whole] == pytest.approx(1.0, abs=1e-4)
    assert score[Site("hidden", 1, None, T - 1)] == pytest.approx(1.0, abs=1e-4)
    for p in range(T - 1):  # the head reads the last layer at the last position alone
        assert score[Site("hidden", 1, None, p)] == pytest.approx(0.0, abs=1e-4)
    for p in range(CHANGED):
        assert score[Site("hidden", 0, None, p)] == pytest.approx(0.0, abs=1e-4)


def test_kgram_reads_only_its_last_window(tmp_path):
    net = _net(tmp_path, "kgram")
    k = net.config.k
    clean, corrupt = _prompts(changed=(T - 2,))
    target, foil = _target_and_foil(net, clean, corrupt)
    res = patch(net, clean, corrupt, target, foil)
    assert abs(res.clean_metric - res.corrupt_metric) > 1e-2
    score = {r.site: r.score for r in res.rows}
    assert {s.position for s in score if s.kind == "input_token"} == set(range(T - k, T))
    for s, value in score.items():
        if s.kind in ("input", "mlp_post"):
            assert value == pytest.approx(1.0 if s.position == T - 1 else 0.0, abs=1e-4), s
    for p in range(T - k, T):  # only the changed token's slot of the window matters here
        assert score[Site("input_token", None, None, p)] == pytest.approx(
            1.0 if p == T - 2 else 0.0, abs=1e-4)
    # a change before the last k tokens changes nothing: no difference to restore
    early = _prompts(changed=(T - k - 1,))
    res = patch(net, *early, target, foil)
    assert res.clean_metric == pytest.approx(res.corrupt_metric, abs=1e-6)
    assert all(math.isnan(r.score) for r in res.rows)
    with pytest.raises(LmscopeError, match="last window holds positions 9 to 11"):
        patch(net, clean, corrupt, target, foil, patch_sites=[Site("input_token", None, None, 3)])


def test_bad_ids_are_one_line_errors(tmp_path):
    net = _net(tmp_path)
    clean, corrupt = _prompts()
    with pytest.raises(LmscopeError, match="has 12 tokens and the corrupt one 11"):
        patch(net, clean, corrupt[:-1], 1)
    with pytest.raises(LmscopeError, match="more than the model's context of 32"):
        patch(net, clean.repeat(3), corrupt.repeat(3), 1)
    with pytest.raises(LmscopeError, match="outside the vocabulary"):
        patch(net, clean, corrupt, CHARS.vocab_size)
    with pytest.raises(LmscopeError, match="the target and the foil are the same token"):
        patch(net, clean, corrupt, 2, 2)
    with pytest.raises(LmscopeError, match="unknown site kind"):
        patch(net, clean, corrupt, 1, patch_sites=[Site("neuron", 0, None, 0)])


CLEAN, CORRUPT = "First Citizen:\nYou are all", "First Citizen:\nYou are ill"


def test_probe_errors_name_the_problem(tiny_run):
    with pytest.raises(LmscopeError, match="clean prompt has 5 tokens and the corrupt one 6"):
        compute(tiny_run, "Speak", "Speak,", " ")
    with pytest.raises(LmscopeError, match="the corrupt prompt 'Spe@k'.*not in the vocabulary"):
        compute(tiny_run, "Speak", "Spe@k", " ")
    with pytest.raises(LmscopeError, match="the target 'Sp' is 2 tokens"):
        compute(tiny_run, "Speak", "Sneak", "Sp")
    with pytest.raises(LmscopeError, match="the foil '~'.*not in the vocabulary"):
        compute(tiny_run, "Speak", "Sneak", " ", "~")
    with pytest.raises(LmscopeError, match="the clean prompt is empty"):
        compute(tiny_run, "", "", " ")
    with pytest.raises(LmscopeError, match="more than the model's context of 32"):
        compute(tiny_run, "a" * 33, "e" * 33, " ")


def test_probe_saves_and_loads_back(tiny_run, tmp_path):
    result = compute(tiny_run, CLEAN, CORRUPT, "?", " ", which="all", device="cpu")
    assert [r.iteration for r in result.results] == [10, 20, 30]
    files = result.save(tmp_path / "out")
    assert {"patching_csv", "metrics_csv", "tokens_csv", "resid_png", "attn_out_png",
            "mlp_out_png", "heads_png", "summary_md"} <= set(files)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "You are ill" in summary and "Top sites" in summary
    back = PatchingProbeResult.load(tmp_path / "out")
    assert back.clean_tokens == list(CLEAN) and back.corrupt_tokens == list(CORRUPT)
    assert (back.target, back.foil) == ("?", " ")
    for got, want in zip(back.results, result.results, strict=True):
        assert (got.checkpoint, got.iteration, got.metric_name) == (
            want.checkpoint, want.iteration, "logit_diff")
        assert got.clean_metric == pytest.approx(want.clean_metric, rel=1e-5)
        assert [r.site for r in got.rows] == [r.site for r in want.rows]
        assert [r.hook for r in got.rows] == [r.hook for r in want.rows]
        assert [r.score for r in got.rows] == pytest.approx([r.score for r in want.rows],
                                                            rel=1e-5, abs=1e-6)


def test_identical_prompts_give_nan_scores_and_say_why(tiny_run, tmp_path):
    result = compute(tiny_run, CLEAN, CLEAN, "?", device="cpu")
    assert all(math.isnan(r.score) for r in result.results[0].rows)
    result.save(tmp_path)
    assert "nothing for a patch to restore" in (tmp_path / "summary.md").read_text()
    back = PatchingProbeResult.load(tmp_path)
    assert back.foil is None and back.results[0].metric_name == "logprob"
    assert all(math.isnan(r.score) for r in back.results[0].rows)
