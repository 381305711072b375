"""Learning dynamics over checkpoints (analysis/dynamics.py), checked against numpy on the
checkpoints' own weights and activations and against properties: each layer at the reference is
identical to itself, a head's slices partition its matrices, every architecture works."""

import math

import numpy as np
import pytest
import torch

import lmscope
from lmscope.analysis import dynamics
from lmscope.analysis.dynamics import DynamicsResult
from lmscope.errors import LmscopeError
from lmscope.evaluate import corpus_windows
from lmscope.run.checkpoint import load, save_checkpoint
from tests.conftest import png
from tests.test_export import TEXT, tiny_checkpoint


@pytest.fixture(scope="module")
def result(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("dynamics")
    r = dynamics.compute(tiny_run, str(tiny_run.parent / "tiny.txt"), windows=4, device="cpu")
    r.save(out)
    return r, out


def test_every_checkpoint_has_every_kind_and_the_reference_is_itself(result, tiny_run):
    r, out = result
    assert r.iterations == [10, 20, 30]
    kinds = {(row.iteration, row.kind) for row in r.rows}
    assert kinds == {(i, k) for i in (10, 20, 30) for k in dynamics.KINDS}
    assert r.layers == ["embed", "0", "1"]
    for layer in r.layers:
        _, cka = r.similarity_series(layer)
        assert cka[-1] == pytest.approx(1.0, abs=1e-6)  # the final against itself
        assert cka[0] < 0.999  # training changed the representation
        for measure in ("debiased_cka", "svcca", "pwcca"):
            assert r.similarity_series(layer, measure)[1][-1] == pytest.approx(1.0, abs=1e-6)
    for name in ("dynamics.csv", "similarity.csv", "summary.md"):
        assert (out / name).is_file()
    for name in ("weights.png", "gradients.png", "activations.png", "similarity.png"):
        assert png(out / name), name
    assert "| layer | 10 | 20 | 30 | settled (CKA >= 0.9) |" in (out / "summary.md").read_text()


def test_statistics_agree_with_numpy_on_the_checkpoint(result, tiny_run):
    r, _ = result
    ckpt = load(tiny_run / "checkpoints" / "iter_0000010", device="cpu")
    w = ckpt.model.blocks[1].mlp.fc.weight.detach().double().numpy()
    s = np.linalg.svd(w, compute_uv=False)
    row = next(x for x in r.rows if x.iteration == 10 and x.kind == "weights"
               and x.name == "blocks.1.mlp.fc.weight")
    assert row.layer == "1"
    assert row.values["frobenius_norm"] == pytest.approx(np.linalg.norm(w), rel=1e-9)
    assert row.values["condition_number"] == pytest.approx(s[0] / s[-1], rel=1e-6)
    # the activations of layer 0: the residual stream leaving block 0 on the same windows
    windows = corpus_windows(ckpt, str(tiny_run.parent / "tiny.txt"), windows=4)
    _, cache = lmscope.run_with_cache(ckpt, windows.ids, "blocks.0.hook_resid_post")
    x = cache["blocks.0.hook_resid_post"].flatten(0, 1).double().numpy()
    p = np.linalg.svd(x, compute_uv=False)
    p = p / p.sum()
    row = next(x for x in r.rows if x.iteration == 10 and x.kind == "activations"
               and x.name == "0")
    assert row.values["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()),
                                                         rel=1e-5)
    assert r.n_tokens == windows.ids.numel()


def test_head_slices_partition_the_attention_matrices(result, tiny_run):
    r, _ = result
    ckpt = load(tiny_run / "checkpoints" / "final", device="cpu")
    attn = ckpt.model.blocks[0].attn
    d = attn.proj.weight.shape[0]
    q = attn.qkv.weight[:d].detach().double()
    heads = {row.head: row.values["frobenius_norm"] for row in r.rows
             if row.iteration == 30 and row.name == "blocks.0.attn.W_Q"}
    assert sorted(heads) == [0, 1]
    assert math.fsum(v * v for v in heads.values()) == pytest.approx(q.square().sum().item())
    w_o = {row.head: row.values["frobenius_norm"] for row in r.rows
           if row.iteration == 30 and row.name == "blocks.0.attn.W_O"}
    assert math.fsum(v * v for v in w_o.values()) == pytest.approx(
        attn.proj.weight.double().square().sum().item())
    # head 1's W_Q is the second half of the query rows
    assert heads[1] == pytest.approx(q[d // 2:].norm().item())


def test_the_tables_read_back(result, tmp_path):
    r, out = result
    back = DynamicsResult.load(out)
    assert len(back.rows) == len(r.rows) and len(back.similarity) == len(r.similarity)
    a = next(x for x in r.rows if x.kind == "gradients")
    b = next(x for x in back.rows if x.kind == "gradients")
    assert (a.name, a.layer, a.head) == (b.name, b.layer, b.head)
    assert b.values["frobenius_norm"] == pytest.approx(a.values["frobenius_norm"], rel=1e-5)
    assert back.settled_at("0") == r.settled_at("0")
    back.save(tmp_path / "again")  # a loaded result draws its figures too
    assert png(tmp_path / "again" / "similarity.png")


def test_settled_is_the_start_of_the_last_run_above_the_threshold():
    rows = [dynamics.SimilarityRow(name, it, "final", "0", {"cka": v, "debiased_cka": v,
                                                            "svcca": v, "pwcca": v})
            for name, it, v in (("iter_0000000", 0, 0.95), ("iter_0000010", 10, 0.5),
                                ("iter_0000020", 20, 0.92), ("final", 30, 1.0))]
    r = DynamicsResult("", "", 0, [], rows)
    assert r.settled_at("0") == 20
    # the reference's CKA to itself is 1 and does not count: a layer below the threshold at
    # every other checkpoint never settled
    assert r.settled_at("0", threshold=0.99) is None


@pytest.mark.parametrize("model", ["lstm", "kgram"])
def test_every_architecture(tmp_path, model):
    corpus = tmp_path / "text.txt"
    corpus.write_text(TEXT * 40, encoding="utf-8")
    ckpt = tiny_checkpoint(tmp_path / "ckpt", model=model)
    r = dynamics.compute(ckpt, str(corpus), windows=2, length=16, device="cpu")
    assert r.layers == ["embed"] + [str(i) for i in range(load(ckpt).model.config.n_layer)]
    assert any("one checkpoint" in n for n in r.notes)
    assert not [x for x in r.rows if x.kind == "heads"]  # heads are a GPT's
    grads = [x for x in r.rows if x.kind == "gradients"]
    assert grads and all(x.values["frobenius_norm"] > 0 for x in grads)
    r.save(tmp_path / "out")


def test_a_selector_that_matches_nothing_is_a_one_line_error(tiny_run):
    with pytest.raises(LmscopeError, match="has no checkpoint '15'"):
        dynamics.compute(tiny_run, str(tiny_run.parent / "tiny.txt"), which="15")


def test_too_few_tokens_is_a_one_line_error(tiny_run):
    with pytest.raises(LmscopeError, match="3 tokens are too few"):
        dynamics.compute(tiny_run, str(tiny_run.parent / "tiny.txt"), which="final",
                         windows=1, length=3)


def test_a_diverged_checkpoint_gives_nan_rows_and_a_note(tiny_run, tmp_path):
    ckpt = load(tiny_run / "checkpoints" / "final", device="cpu")
    with torch.no_grad():
        ckpt.model.blocks[1].mlp.fc.weight[0, 0] = float("nan")
    save_checkpoint(tmp_path / "nan", ckpt.model, model_name="gpt",
                    model_config=ckpt.model.config, tokenizer=ckpt.tokenizer, meta={"iter": 30})
    r = dynamics.compute(tmp_path / "nan", str(tiny_run.parent / "tiny.txt"), windows=2)
    assert any("non-finite values" in n and "blocks.1.mlp.fc.weight" in n for n in r.notes)
    row = next(x for x in r.rows if x.kind == "weights" and x.name == "blocks.1.mlp.fc.weight")
    assert row.values == {}
    assert math.isnan(r.similarity_series("1")[1][0])  # the NaN reaches layer 1's output
    assert r.similarity_series("0")[1][0] == pytest.approx(1.0)  # layer 0 is untouched
