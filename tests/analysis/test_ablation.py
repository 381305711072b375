"""Component ablation (analysis/ablation.py), checked against independent references: copies of
the model with weights edited by hand, a loss written as a plain loop, the model's own read-out
of another window's activations, numpy's standard deviation; and the probe's files."""

import copy
import math

import numpy as np
import pytest
import torch

import lmscope
from lmscope.analysis.ablation import AblationResult, ablate, components, compute
from lmscope.analysis.patching import sites
from lmscope.errors import LmscopeError
from lmscope.evaluate import Windows
from lmscope.run.checkpoint import load
from tests.conftest import png
from tests.test_export import CHARS, tiny_checkpoint


def _windows(n=4, length=20, seed=0, unk_id=0) -> Windows:
    ids = torch.randint(1, CHARS.vocab_size, (n, length),
                        generator=torch.Generator().manual_seed(seed))
    return Windows("test", "val", ids, list(range(n)), 0.0, unk_id)


def _loop_losses(model, ids, unk_id=None) -> list[list[float]]:
    """Per window, the list of -log p(next token) over its known targets, one token at a time."""
    with torch.no_grad():
        logits = model(ids)
    out = []
    for b in range(ids.size(0)):
        logp = torch.log_softmax(logits[b].double(), -1).tolist()
        row = []
        for t in range(ids.size(1) - 1):
            target = int(ids[b, t + 1])
            if target == unk_id:
                continue
            row.append(-logp[t][target])
        out.append(row)
    return out


def _mean_loss(per_window: list[list[float]]) -> float:
    return sum(sum(r) for r in per_window) / sum(len(r) for r in per_window)


def _by_label(results):
    return {a.component.label: a for a in results}


@pytest.mark.parametrize("config", [{}, {"bias": True}, {"norm_position": "post"}],
                         ids=["pre", "bias", "post-norm"])
def test_zero_ablating_a_head_is_zeroing_its_output_projection_columns(tmp_path, config):
    net = load(tiny_checkpoint(tmp_path / "ckpt", **config), device="cpu").model
    windows = _windows()
    results = _by_label(ablate(net, windows, "zero", batch_size=3))
    d_head = net.config.n_embd // net.config.n_head
    clean = _loop_losses(net, windows.ids)
    for layer in range(net.config.n_layer):
        for h in range(net.config.n_head):
            edited = copy.deepcopy(net)
            with torch.no_grad():
                edited.blocks[layer].attn.proj.weight[:, h * d_head:(h + 1) * d_head] = 0.0
            ref = _loop_losses(edited, windows.ids)
            a = results[f"L{layer}H{h}"]
            assert a.clean_loss == pytest.approx(_mean_loss(clean), abs=1e-5)
            assert a.ablated_loss == pytest.approx(_mean_loss(ref), abs=1e-5)
            assert a.increase == pytest.approx(_mean_loss(ref) - _mean_loss(clean), abs=1e-5)
            # the paired standard error over windows, from numpy
            d = [np.mean(r) - np.mean(c) for r, c in zip(ref, clean, strict=True)]
            assert a.increase_se == pytest.approx(np.std(d, ddof=1) / math.sqrt(len(d)),
                                                  abs=1e-5)
            assert a.n_windows == 4 and a.n_targets == 4 * 19
    assert abs(results["L0H0"].increase - results["L0H1"].increase) > 1e-4  # heads differ


def test_zero_ablating_a_head_whose_projection_columns_are_zero_changes_nothing(tmp_path):
    """The issue's own statement: a head that writes nothing (zero output-projection columns)
    loses nothing when its output is zeroed; its neighbours still do."""
    net = load(tiny_checkpoint(tmp_path / "ckpt"), device="cpu").model
    d_head = net.config.n_embd // net.config.n_head
    with torch.no_grad():
        net.blocks[1].attn.proj.weight[:, 2 * d_head:3 * d_head] = 0.0
    results = _by_label(ablate(net, _windows(), "zero", batch_size=3))
    assert results["L1H2"].increase == 0.0 and results["L1H2"].increase_se == 0.0
    assert abs(results["L1H1"].increase) > 1e-4


@pytest.mark.parametrize("config", [{}, {"bias": True}], ids=["no-bias", "bias"])
def test_zero_ablating_a_layer_is_zeroing_its_output_projection(tmp_path, config):
    net = load(tiny_checkpoint(tmp_path / "ckpt", **config), device="cpu").model
    windows = _windows(n=3)
    results = _by_label(ablate(net, windows, "zero", ["L0 attn", "L1 attn", "L1 mlp"]))
    assert list(results) == ["L0 attn", "L1 attn", "L1 mlp"]
    for label, module in [("L0 attn", net.blocks[0].attn.proj), ("L1 attn", net.blocks[1].attn.proj),
                          ("L1 mlp", net.blocks[1].mlp.proj)]:
        edited = copy.deepcopy(net)
        name = next(n for n, m in net.named_modules() if m is module)
        proj = edited.get_submodule(name)
        with torch.no_grad():
            proj.weight.zero_()
            if proj.bias is not None:
                proj.bias.zero_()
        ref = _mean_loss(_loop_losses(edited, windows.ids))
        assert results[label].ablated_loss == pytest.approx(ref, abs=1e-5)
        assert abs(results[label].increase) > 1e-4


@pytest.mark.parametrize("model", ["gpt", "lstm", "kgram"])
def test_resample_with_the_identity_and_mean_over_identical_windows_change_nothing(tmp_path,
                                                                                   model):
    net = load(tiny_checkpoint(tmp_path / "ckpt", model=model), device="cpu").model
    windows = _windows(n=5)
    for a in ablate(net, windows, "resample", permutation=range(5), batch_size=2):
        assert a.increase == 0.0 and a.increase_se == 0.0
    same = Windows("same", "val", windows.ids[:1].repeat(4, 1), [0] * 4, 0.0, 0)
    for a in ablate(net, same, "mean"):
        assert a.increase == 0.0
    # while on different windows, each method changes the loss of some component
    for method in ("zero", "mean", "resample"):
        assert max(abs(a.increase) for a in ablate(net, windows, method)) > 1e-4


@pytest.mark.parametrize("model", ["lstm", "kgram"])
def test_resample_and_mean_of_the_last_layer_read_out_by_the_head(tmp_path, model):
    """The head reads the last layer only: resampling it predicts window b's targets from window
    b+1's activations (the derangement), mean-ablating it from the per-position mean."""
    net = load(tiny_checkpoint(tmp_path / "ckpt", model=model, n_layer=2), device="cpu").model
    windows = _windows(n=4)
    last = components(net)[-1]
    _, cache = lmscope.run_with_cache(net, windows.ids, [last.hook])
    act = cache[last.hook].double()
    targets = windows.ids[:, 1:]
    for method, replaced in [("resample", act[[1, 2, 3, 0]]),
                             ("mean", act.mean(0, keepdim=True).expand_as(act))]:
        with torch.no_grad():
            logp = net.unembed(replaced.float()).double().log_softmax(-1)[:, :-1]
        ref = -float(logp.gather(-1, targets[..., None]).mean())
        (a,) = ablate(net, windows, method, [last.label])
        assert a.ablated_loss == pytest.approx(ref, abs=1e-5)


def test_components_of_each_architecture(tmp_path):
    gpt = load(tiny_checkpoint(tmp_path / "gpt"), device="cpu").model
    labels = [c.label for c in components(gpt)]
    assert labels == ["L0H0", "L0H1", "L0H2", "L0H3", "L0 attn", "L0 mlp",
                      "L1H0", "L1H1", "L1H2", "L1H3", "L1 attn", "L1 mlp"]
    head = components(gpt)[1]
    assert (head.hook, head.index, head.kind, head.layer) == ("blocks.0.attn.hook_z", 1, "head", 0)
    lstm = load(tiny_checkpoint(tmp_path / "lstm", model="lstm", n_layer=2), device="cpu").model
    assert [(c.label, c.hook, c.kind) for c in components(lstm)] == [
        ("lstm 0", "lstm.0.hook_hidden", "lstm"), ("lstm 1", "lstm.1.hook_hidden", "lstm")]
    kgram = load(tiny_checkpoint(tmp_path / "kg", model="kgram", n_layer=2), device="cpu").model
    assert [(c.label, c.hook, c.kind) for c in components(kgram)] == [
        ("mlp 0", "mlp.0.hook_post", "kgram"), ("mlp 1", "mlp.1.hook_post", "kgram")]
    every = set(gpt.hook_names()) | set(lstm.hook_names()) | set(kgram.hook_names())
    assert all(c.hook in every for m in (gpt, lstm, kgram) for c in components(m))


@pytest.mark.parametrize("model", ["gpt", "lstm", "kgram"])
def test_unknown_targets_are_left_out(tmp_path, model):
    net = load(tiny_checkpoint(tmp_path / "ckpt", model=model), device="cpu").model
    windows = _windows(n=3)
    unk = windows.unk_id
    windows.ids[0, 5] = unk
    windows.ids[0, 6] = unk
    windows.ids[2, 19] = unk
    windows.ids[1, 0] = unk  # an input, not a target: counted
    label = components(net)[0].label
    (a,) = ablate(net, windows, "zero", [label])
    clean = _loop_losses(net, windows.ids, unk_id=unk)
    assert [len(r) for r in clean] == [17, 19, 18]
    assert a.n_targets == 17 + 19 + 18
    assert a.clean_loss == pytest.approx(_mean_loss(clean), abs=1e-6)
    # the per-window increases average to the token-weighted increase
    assert float(a.per_window.mean()) == pytest.approx(a.increase, abs=1e-9)
    # the same windows read as all known give another loss: the unknown targets did count there
    known = Windows("test", "val", windows.ids, windows.starts, 0.0, None)
    (b,) = ablate(net, known, "zero", [label])
    assert b.n_targets == 3 * 19 and b.clean_loss != pytest.approx(a.clean_loss, abs=1e-6)


def _second_corpus(tmp_path):
    path = tmp_path / "calls.txt"
    path.write_text("All:\nSpeak, speak. Resolved.\n\nFirst Citizen:\nYou are all resolved?\n\n"
                    * 30, encoding="utf-8")
    return path


def test_probe_saves_and_loads_on_two_corpora_own_first(tiny_run, tiny_corpus, tmp_path):
    other = _second_corpus(tmp_path)
    result = compute(tiny_run, [str(other), str(tiny_corpus)], method="mean", which="all",
                     windows=4, device="cpu")
    own = load(tiny_run, device="cpu").trained_on
    assert result.trained_on == own and result.corpora[0] == own and len(result.corpora) == 2
    assert result.method == "mean"
    iterations = sorted({r.iteration for r in result.rows})
    assert len(iterations) == 3 and iterations[-1] == 30
    # 2 layers x (2 heads + attn + mlp) at each checkpoint on each corpus
    assert len(result.rows) == 3 * 2 * 8
    assert {r.kind for r in result.rows} == {"head", "attn", "mlp"}
    for r in result.rows:
        assert r.increase == pytest.approx(r.ablated_loss - r.clean_loss, abs=1e-9)
        assert r.n_windows == 4 and r.n_targets == 4 * 31 and r.increase_se >= 0
        assert (r.head is None) == (r.kind != "head")
    # specificity at the last checkpoint, by hand from the rows
    spec = {s.component: s for s in result.specificity()}
    final = {(r.corpus, r.component): r for r in result.rows if r.iteration == 30}
    other_name = result.corpora[1]
    for label, s in spec.items():
        own_row, other_row = final[own, label], final[other_name, label]
        assert s.specificity == pytest.approx(own_row.increase - other_row.increase, abs=1e-12)
        assert s.se == pytest.approx(math.hypot(own_row.increase_se, other_row.increase_se))
    assert [s.specificity for s in result.specificity()] == sorted(
        (s.specificity for s in spec.values()), reverse=True)

    files = result.save(tmp_path / "out")
    assert set(files) == {"ablation_csv", "settings_csv", "heads_png", "layers_png",
                          "over_training_png", "summary_md"}
    for key in ("heads_png", "layers_png", "over_training_png"):
        assert png(tmp_path / "out" / files[key].split("/")[-1])
    summary = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    # 8 components: one table, most specific first
    table = summary.split(f"Every component, most specific to {own} first")[1]
    positions = [table.index(f"| {s.component} |") for s in result.specificity()]
    assert positions == sorted(positions)

    back = AblationResult.load(tmp_path / "out")
    assert (back.run, back.trained_on, back.method, back.corpora) == (
        result.run, result.trained_on, result.method, result.corpora)
    assert len(back.rows) == len(result.rows)
    for a, b in zip(result.rows, back.rows, strict=True):
        assert (a.checkpoint, a.iteration, a.corpus, a.component, a.kind, a.layer, a.head,
                a.n_windows, a.n_targets) == (b.checkpoint, b.iteration, b.corpus, b.component,
                                              b.kind, b.layer, b.head, b.n_windows, b.n_targets)
        for field in ("clean_loss", "ablated_loss", "increase", "increase_se"):
            assert getattr(b, field) == pytest.approx(getattr(a, field), rel=1e-5, abs=1e-9)


def test_probe_on_one_corpus_has_no_specificity(tiny_run, tiny_corpus, tmp_path):
    result = compute(tiny_run, [str(tiny_corpus)], method="zero", windows=2, device="cpu",
                     components=["L1H0", "L0 mlp"])
    assert {r.component for r in result.rows} == {"L1H0", "L0 mlp"}
    assert {r.iteration for r in result.rows} == {30}
    assert result.specificity() == []
    files = result.save(tmp_path / "out")
    assert "over_training_png" not in files
    assert "Not measured" in (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert AblationResult.load(tmp_path / "out").rows[0].component == result.rows[0].component


def test_bad_input(tiny_run, tiny_corpus, tmp_path):
    net = load(tiny_checkpoint(tmp_path / "ckpt"), device="cpu").model
    windows = _windows(n=3)
    with pytest.raises(LmscopeError, match=r"unknown ablation method 'meen' \(did you mean mean"):
        ablate(net, windows, "meen")
    with pytest.raises(LmscopeError, match=r"unknown ablation method 'meen'"):
        compute(tiny_run, [str(tiny_corpus)], method="meen")
    with pytest.raises(LmscopeError, match="needs at least one corpus"):
        compute(tiny_run, [], device="cpu")
    with pytest.raises(LmscopeError, match=r"GPT has no component 'L0H9'.*L0H0, L0H1"):
        ablate(net, windows, "zero", ["L0H9"])
    with pytest.raises(LmscopeError, match=r"has no component 'L7 attn'"):
        compute(tiny_run, [str(tiny_corpus)], components=["L7 attn"], device="cpu")
    with pytest.raises(LmscopeError, match="no components to ablate"):
        ablate(net, windows, "zero", [])
    with pytest.raises(LmscopeError, match="resample ablation needs at least 2 windows"):
        ablate(net, _windows(n=1), "resample")
    with pytest.raises(LmscopeError, match="resample ablation needs at least 2 windows"):
        compute(tiny_run, [str(tiny_corpus)], method="resample", windows=1, device="cpu")
    with pytest.raises(LmscopeError, match="must order the 3 windows"):
        ablate(net, windows, "resample", permutation=[0, 0, 1])
    all_unknown = Windows("void", "val", torch.zeros(2, 5, dtype=torch.long), [0, 0], 1.0, 0)
    with pytest.raises(LmscopeError, match="void have no known targets"):
        ablate(net, all_unknown, "zero")


def test_specificity_table_shows_the_five_most_and_least_specific(tmp_path):
    """A hand-built result of 12 heads on three corpora: specificity c = own - mean(others)."""
    from lmscope.analysis.ablation import AblationRow

    rows = []
    for corpus, scale in [("own", 1.0), ("a", 0.5), ("b", 0.1)]:
        for c in range(12):  # increase on own: c; on a: c/2 (+2 for c = 3); on b: c/10
            increase = c * scale + (2.0 if corpus == "a" and c == 3 else 0.0)
            rows.append(AblationRow("final", 9, corpus, f"L0H{c}", "head", 0, c, 1.0,
                                    1.0 + increase, increase, 0.1, 4, 40))
    result = AblationResult("run", "own", "zero", ["own", "a", "b"], rows)
    spec = result.specificity()
    expected = {c: c - (c * 0.5 + 2.0 * (c == 3) + c * 0.1) / 2 for c in range(12)}
    assert [s.component for s in spec] == [f"L0H{c}" for c in
                                           sorted(expected, key=lambda c: -expected[c])]
    for s in spec:
        assert s.specificity == pytest.approx(expected[int(s.component[3:])])
        assert s.se == pytest.approx(math.sqrt(0.01 + 2 * 0.01 / 4))
    result.save(tmp_path)
    summary = (tmp_path / "summary.md").read_text(encoding="utf-8")
    most, least = summary.split("Most specific to own")[1].split("Least specific to own")
    assert [line.split(" | ")[0][2:] for line in most.splitlines() if line.startswith("| L0H")] \
        == ["L0H11", "L0H10", "L0H9", "L0H8", "L0H7"]
    assert [line.split(" | ")[0][2:] for line in least.splitlines() if line.startswith("| L0H")] \
        == ["L0H0", "L0H1", "L0H3", "L0H2", "L0H4"]
    assert png(tmp_path / "heads.png") and not (tmp_path / "layers.png").exists()


def test_an_attention_only_model_has_no_mlp_components_and_runs(tmp_path):
    net = load(tiny_checkpoint(tmp_path / "ckpt", attn_only=True), device="cpu").model
    labels = [c.label for c in components(net)]
    assert labels == [*(f"L0H{h}" for h in range(4)), "L0 attn", *(f"L1H{h}" for h in range(4)),
                      "L1 attn"]
    assert {s.kind for s in sites(net, 5)} == {"resid_pre", "resid_post", "attn_out", "head"}
