"""Representation similarity across runs (analysis/similarity.py), checked against answers known
without it: a run against a copy of itself (CKA 1 on the diagonal, a symmetric matrix), two runs
from one seed and vocabulary (identical at iteration 0), and CKA computed here from n x n Gram
matrices of activations collected with run_with_cache."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from lmscope.analysis import similarity
from lmscope.api import run_with_cache
from lmscope.data.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer
from lmscope.errors import LmscopeError
from lmscope.evaluate import corpus_windows
from lmscope.metrics.similarity import debiased_cka, linear_cka
from lmscope.run.checkpoint import load
from tests.conftest import TINY_TEXT, png
from tests.test_export import tiny_checkpoint

TINY_CHARS = CharTokenizer(sorted(set(TINY_TEXT)))


def _gram_cka(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Linear CKA and its debiased form from n x n Gram matrices (Kornblith et al. 2019 eq. 1
    with centred Grams; Song et al. 2012's unbiased HSIC with zeroed diagonals)."""
    n = x.shape[0]
    h = np.eye(n) - 1.0 / n
    k, ell = x @ x.T, y @ y.T
    kc, lc = h @ k @ h, h @ ell @ h
    plain = (kc * lc).sum() / np.sqrt((kc * kc).sum() * (lc * lc).sum())

    def hsic(a, b):
        a, b = a - np.diag(np.diag(a)), b - np.diag(np.diag(b))
        one = np.ones(n)
        return (np.trace(a @ b) + (one @ a @ one) * (one @ b @ one) / ((n - 1) * (n - 2))
                - 2.0 / (n - 2) * one @ a @ b @ one) / (n * (n - 3))

    return float(plain), float(hsic(k, ell) / np.sqrt(hsic(k, k) * hsic(ell, ell)))


def test_a_run_against_a_copy_of_itself_is_identical_layer_by_layer(domain_runs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(domain_runs["play"], copy)
    shutil.rmtree(copy / "checkpoints" / "iter_0000000")  # the copy no longer keeps iteration 0
    result = similarity.compute([domain_runs["play"], copy], str(domain_runs["corpora"]["play"]),
                                windows=3, device="cpu")
    assert result.runs == ["play", "copy"] and result.iterations == [10, 20, 30]
    assert result.layers["play"] == ["embed", "0", "1"] == result.layers["copy"]
    for it in result.iterations:
        for debiased in (False, True):
            m = result.matrix(it, "play", "copy", debiased=debiased)
            assert m.shape == (3, 3)
            assert np.allclose(np.diag(m), 1.0, atol=1e-6)
            assert np.allclose(m, m.T, atol=1e-6)  # the same representations on both sides
        assert {layer: other for layer, (other, _) in
                result.best_match(it, "play", "copy").items()} == {"embed": "embed", "0": "0",
                                                                   "1": "1"}
    assert all(np.allclose(v, 1.0, atol=1e-6)
               for v in result.same_layer("play", "copy").values())
    assert result.diverged_at("play", "copy") is None
    assert result.notes == ["left out the iterations not kept by every run: play at 0"]


@pytest.fixture(scope="module")
def two_domains(domain_runs) -> similarity.SimilarityResult:
    return similarity.compute([domain_runs["play"], domain_runs["sums"]],
                              str(domain_runs["corpora"]["play"]), windows=4, device="cpu")


def test_runs_from_one_seed_and_vocabulary_start_identical_then_part(two_domains):
    r = two_domains
    assert r.iterations == [0, 10, 20, 30] and r.runs == ["play", "sums"]
    assert r.n_tokens == 4 * 32 and (r.windows, r.length) == (4, 32)
    assert np.allclose(np.diag(r.matrix(0, "play", "sums")), 1.0, atol=1e-6)
    assert r.mean_same_layer(0, "play", "sums") == pytest.approx(1.0, abs=1e-6)
    late = np.diag(r.matrix(30, "play", "sums"))
    assert late.max() < 1.0 - 1e-4  # trained on other text, they differ
    assert ((r.cka[(30, "play", "sums")] >= 0.0) & (r.cka[(30, "play", "sums")] <= 1.0)).all()
    curves = r.same_layer("play", "sums")
    assert list(curves) == ["embed", "0", "1"] and all(len(v) == 4 for v in curves.values())
    assert r.same_architecture("play", "sums")
    at = r.diverged_at("play", "sums")
    expected = next((it for it in r.iterations
                     if np.diag(r.matrix(it, "play", "sums")).mean() < 0.9), None)
    assert at == expected


def test_a_table_cell_is_the_cka_of_activations_collected_here(two_domains, domain_runs):
    corpus = str(domain_runs["corpora"]["play"])
    windows = corpus_windows(load(domain_runs["play"], device="cpu"), corpus, windows=4)
    acts = []
    for run, layer in (("play", 2), ("sums", 1)):  # layer "1" of play, layer "0" of sums
        ckpt = load(domain_runs[run] / "checkpoints" / "iter_0000010", device="cpu")
        assert ckpt.iteration == 10
        name = ckpt.model.layer_points()[layer][1]
        _, cache = run_with_cache(ckpt, windows.ids, [name])
        acts.append(cache[name].reshape(-1, cache[name].shape[-1]).double().numpy())
    cell = two_domains.matrix(10, "play", "sums")[2, 1]
    assert cell == pytest.approx(linear_cka(*acts), abs=1e-9)
    plain, unbiased = _gram_cka(*acts)
    assert cell == pytest.approx(plain, abs=1e-8)
    assert two_domains.matrix(10, "play", "sums", debiased=True)[2, 1] == pytest.approx(
        unbiased, abs=1e-8)
    assert unbiased == pytest.approx(debiased_cka(*acts), abs=1e-8)
    # the reverse pair reads the transpose
    assert two_domains.matrix(10, "sums", "play")[1, 2] == cell


def test_save_and_load_give_back_the_same_result(two_domains, tmp_path):
    files = two_domains.save(tmp_path / "out")
    assert set(files) == {"cka_csv", "similarity_json", "cka_play_sums_png", "same_layer_png",
                          "summary_md"}
    assert png(Path(files["cka_play_sums_png"])) and png(Path(files["same_layer_png"]))
    lines = Path(files["cka_csv"]).read_text().splitlines()
    assert lines[0] == "iteration,run_a,run_b,layer_a,layer_b,cka,debiased_cka"
    assert len(lines) == 1 + 4 * 3 * 3
    back = similarity.SimilarityResult.load(tmp_path / "out")
    assert back == two_domains
    back.cka[(30, "play", "sums")][0, 0] += 1e-9
    assert back != two_domains
    summary = Path(files["summary_md"]).read_text()
    assert "diverged at" in summary and "below 0.9" in summary
    mean = two_domains.mean_same_layer(30, "play", "sums")
    assert f"{mean:.3f}" in summary
    with pytest.raises(LmscopeError, match="holds no similarity result"):
        similarity.SimilarityResult.load(tmp_path / "nothing")


def test_finals_are_compared_whatever_their_iterations(domain_runs, tmp_path):
    vocabulary = load(domain_runs["play"], device="cpu").tokenizer
    ckpt = tiny_checkpoint(tmp_path / "untrained", vocabulary)  # iteration 1
    result = similarity.compute([domain_runs["play"], ckpt], str(domain_runs["corpora"]["play"]),
                                which="final", windows=2, device="cpu")
    assert result.iterations == ["final"]
    assert any("play at iteration 30" in n and "untrained at iteration 1" in n
               for n in result.notes)
    files = result.save(tmp_path / "out")
    assert "same_layer_png" not in files  # one comparison only
    assert similarity.SimilarityResult.load(tmp_path / "out") == result


def test_models_of_different_depths_give_rectangular_matrices(tiny_corpus, tmp_path):
    paths = [tiny_checkpoint(tmp_path / "gpt", TINY_CHARS),
             tiny_checkpoint(tmp_path / "lstm", TINY_CHARS, model="lstm", n_layer=1),
             tiny_checkpoint(tmp_path / "kgram", TINY_CHARS, model="kgram", n_layer=3)]
    r = similarity.compute(paths, str(tiny_corpus), windows=2, device="cpu")
    assert r.pairs == [("gpt", "lstm"), ("gpt", "kgram"), ("lstm", "kgram")]
    assert r.layers == {"gpt": ["embed", "0", "1"], "lstm": ["embed", "0"],
                        "kgram": ["embed", "0", "1", "2"]}
    assert r.models == {"gpt": "gpt", "lstm": "lstm", "kgram": "kgram"}
    assert r.widths["gpt"] == [32, 32, 32] and r.widths["lstm"] == [16, 16]
    assert r.iterations == [1]
    assert r.matrix(1, "gpt", "lstm").shape == (3, 2)
    assert r.matrix(1, "lstm", "gpt").shape == (2, 3)
    assert r.matrix(1, "gpt", "kgram").shape == (3, 4)
    assert set(r.best_match(1, "gpt", "lstm")) == {"embed", "0", "1"}
    with pytest.raises(ValueError, match="different layers"):
        r.same_layer("gpt", "lstm")
    files = r.save(tmp_path / "out")
    summary = Path(files["summary_md"]).read_text()
    assert "(different layers)" in summary and "Over training" not in summary
    assert similarity.SimilarityResult.load(tmp_path / "out") == r


def test_char_runs_of_two_vocabularies_and_a_byte_run_read_ascii_alike(tiny_corpus, tmp_path):
    more = CharTokenizer(sorted(set(TINY_TEXT) | set("xyzQ")))
    paths = [tiny_checkpoint(tmp_path / "a", TINY_CHARS),
             tiny_checkpoint(tmp_path / "b", more),
             tiny_checkpoint(tmp_path / "c", ByteTokenizer())]
    r = similarity.compute(paths, str(tiny_corpus), windows=2, length=16, device="cpu")
    assert r.n_tokens == 32 and len(r.cka) == 3


def test_run_labels_take_the_parent_where_names_collide():
    labels = similarity.run_labels([Path("x/seed1/run"), Path("x/seed2/run"), Path("y/other"),
                                    Path("z/seed1/run")])
    assert labels == ["seed1/run", "seed2/run", "other", "seed1/run#2"]
    assert similarity.run_labels([Path("a/run/checkpoints"), Path("b")]) == ["run", "b"]


# --- bad input -----------------------------------------------------------------------------


def test_one_run_is_not_a_comparison(tiny_corpus, tmp_path):
    with pytest.raises(LmscopeError, match="give at least two runs"):
        similarity.compute([tiny_checkpoint(tmp_path / "a", TINY_CHARS)], str(tiny_corpus))


def test_runs_without_a_common_iteration(domain_runs, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "one", TINY_CHARS)  # iteration 1 only
    with pytest.raises(LmscopeError, match=r"no checkpoint at a common iteration \(play: 0, 10, "
                                           r"20, 30; one: 1\).*--checkpoints final"):
        similarity.compute([domain_runs["play"], ckpt], str(domain_runs["corpora"]["play"]))


def test_char_and_bpe_runs_cannot_be_aligned(tiny_corpus, tmp_path):
    bpe = tiny_checkpoint(tmp_path / "bpe", BPETokenizer.train([TINY_TEXT], 300))
    char = tiny_checkpoint(tmp_path / "char", TINY_CHARS)
    with pytest.raises(LmscopeError, match=r"runs char \(char tokenizer\) and bpe \(bpe "
                                           r"tokenizer\) do not read the same tokens.*same "
                                           "tokenizer"):
        similarity.compute([char, bpe], str(tiny_corpus), windows=2, length=16)


def test_char_and_byte_runs_disagree_on_text_that_is_not_ascii(tmp_path):
    text = TINY_TEXT.replace("e", "é")
    corpus = tmp_path / "accents.txt"
    corpus.write_text(text, encoding="utf-8")
    char = tiny_checkpoint(tmp_path / "char", CharTokenizer(sorted(set(text))))
    byte = tiny_checkpoint(tmp_path / "byte", ByteTokenizer())
    with pytest.raises(LmscopeError, match=r"\d+ char tokens and \d+ byte tokens \(text that is "
                                           r"not ASCII\).*char/byte runs"):
        similarity.compute([char, byte], str(corpus), windows=2, length=16)


def test_too_few_tokens(tiny_corpus, tmp_path):
    a = tiny_checkpoint(tmp_path / "a", TINY_CHARS)
    b = tiny_checkpoint(tmp_path / "b", TINY_CHARS)
    with pytest.raises(LmscopeError, match="too few to compare"):
        similarity.compute([a, b], str(tiny_corpus), windows=1, length=3)
