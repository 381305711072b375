import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmscope.data.tokenizers import CharTokenizer
from lmscope.data.tokens import TokenFile
from lmscope.errors import LmscopeError
from lmscope.metrics.losses import evaluate_token_file, token_nll


class Uniform(torch.nn.Module):
    """Predicts every token with probability 1/vocab: its loss is exactly ln(vocab)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # the evaluator asks for a device

    def forward(self, idx):
        return torch.zeros(*idx.shape, self.vocab) + self.dummy


class Copy(Uniform):
    """Predicts the previous token again, with probability 0.9."""

    def forward(self, idx):
        probs = torch.full((*idx.shape, self.vocab), 0.1 / (self.vocab - 1))
        probs.scatter_(-1, idx[..., None], 0.9)
        return probs.log() + self.dummy


def _file(tokens, n_chars=None, n_unknown=0):
    tokens = np.asarray(tokens, dtype=np.uint8)
    return TokenFile(path=None, tokens=tokens, n_chars=n_chars or len(tokens), n_unknown=n_unknown)


@pytest.mark.parametrize("n,block", [(100, 8), (65, 64), (10, 3)])
def test_uniform_model_scores_ln_vocab_per_token_and_log2_vocab_bits(n, block):
    tf = _file(np.arange(n) % 7)
    r = evaluate_token_file(Uniform(7), tf, block_size=block, unk_id=None, batch_size=4)
    assert r.n_tokens == n - 1  # every token but the first is predicted once
    assert r.loss == pytest.approx(math.log(7))
    assert r.bits_per_char == pytest.approx(math.log2(7))


def test_predictions_count_each_target_once_with_the_right_context():
    # The copy model is right (p=0.9) exactly where a token repeats the one before it. With
    # windows of 3 and 9 tokens, the 8 targets fall in windows 3 + 3 + 2 (a short last one).
    tokens = [1, 1, 2, 2, 3, 3, 4, 4, 5]
    nats, count = token_nll(Copy(6), np.array(tokens, dtype=np.uint8), block_size=3, batch_size=2)
    expected = -sum(math.log(0.9 if prev == nxt else 0.1 / 5)
                    for prev, nxt in zip(tokens, tokens[1:], strict=False))
    assert count == 8
    assert nats == pytest.approx(expected)


def test_a_gpts_whole_split_loss_is_the_same_on_any_number_of_threads():
    """Batches run on one thread each (several at once): the sum does not depend on the thread
    count, and it equals one cross-entropy over every window at once."""
    from lmscope.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, n_layer=2, n_head=2, n_embd=32, block_size=16))
    tokens = np.random.default_rng(0).integers(0, 20, 1000).astype(np.uint16)
    before = torch.get_num_threads()
    try:
        sums = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            sums.append(token_nll(model, tokens, block_size=16, batch_size=4))
    finally:
        torch.set_num_threads(before)
    assert sums[0] == sums[1] == sums[2]
    usable = (len(tokens) - 1) // 16 * 16  # whole windows, then one short window
    x = torch.as_tensor(tokens[:usable].astype(np.int64)).view(-1, 16)
    y = torch.as_tensor(tokens[1:usable + 1].astype(np.int64)).view(-1, 16)
    x_end = torch.as_tensor(tokens[usable:-1].astype(np.int64))[None]
    y_end = torch.as_tensor(tokens[usable + 1:].astype(np.int64))[None]
    with torch.no_grad():
        expected = (F.cross_entropy(model.eval()(x).flatten(0, 1), y.flatten(), reduction="sum")
                    + F.cross_entropy(model(x_end)[0], y_end[0], reduction="sum"))
    assert sums[0][1] == len(tokens) - 1
    assert sums[0][0] == pytest.approx(float(expected), rel=1e-6)


def test_unknown_targets_are_left_out_and_counted():
    tok = CharTokenizer(list("ab"))
    ids, n_unknown = tok.encode_array("abzab", unknown="unk")
    tf = _file(ids, n_chars=5, n_unknown=n_unknown)
    r = evaluate_token_file(Uniform(tok.vocab_size), tf, block_size=4, unk_id=tok.unk_id)
    assert n_unknown == 1 and r.n_unknown == 1
    assert r.n_tokens == 3  # 4 predicted positions, one of them the unknown 'z'
    assert r.oov_rate == pytest.approx(1 / 5)


def test_nothing_to_score_is_an_error_not_a_perfect_score():
    tok = CharTokenizer(list("ab"))
    ids, n_unknown = tok.encode_array("zzzz", unknown="unk")
    with pytest.raises(LmscopeError, match="nothing to score"):
        evaluate_token_file(Uniform(3), _file(ids, n_unknown=n_unknown), block_size=4,
                            unk_id=tok.unk_id)
    with pytest.raises(LmscopeError, match="nothing to score"):
        evaluate_token_file(Uniform(3), _file([1]), block_size=4, unk_id=None)


def test_joint_vocabulary_covers_every_corpus(tmp_path):
    from lmscope.config import resolve_config
    from lmscope.data import corpora
    from lmscope.train.trainer import build_tokenizer

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("hello world\n" * 10)
    b.write_text("1 + 2 = 3\n" * 10)
    cfg = resolve_config(data=str(a), overrides=[f"data.vocab_from=['{b}']"])
    tok = build_tokenizer(cfg, corpora.resolve(str(a)))
    assert tok.encode("hello 1 + 2 = 3\n") and tok.unk_id == 0
    alone = build_tokenizer(resolve_config(data=str(a)), corpora.resolve(str(a)))
    with pytest.raises(LmscopeError, match="not in the vocabulary"):
        alone.encode("1 + 2")


def test_corpus_windows_are_the_splits_tokens_at_evenly_spaced_starts(tiny_run, tiny_corpus):
    from lmscope.data import corpora
    from lmscope.evaluate import corpus_windows
    from lmscope.run.checkpoint import load

    ckpt = load(tiny_run, device="cpu")
    w = corpus_windows(ckpt, str(tiny_corpus), "val", windows=5, length=16)
    assert w.ids.shape == (5, 16) and w.oov_rate == 0.0 and w.target_mask().all()
    text = corpora.resolve(str(tiny_corpus), val_fraction=0.1).splits["val"]
    ids = ckpt.tokenizer.encode("".join(corpora.iter_text(text)))
    assert w.starts[0] == 0 and w.starts[-1] == len(ids) - 16
    for start, row in zip(w.starts, w.ids.tolist(), strict=True):
        assert row == ids[start:start + 16]
    with pytest.raises(LmscopeError, match="at most 32"):
        corpus_windows(ckpt, str(tiny_corpus), windows=2, length=33)


def test_corpus_windows_refuse_text_outside_the_vocabulary(tiny_run, tmp_path):
    from lmscope.evaluate import corpus_windows

    greek = tmp_path / "greek.txt"
    greek.write_text("αβγδε ζηθ " * 400, encoding="utf-8")
    with pytest.raises(LmscopeError, match=r"outside the vocabulary .*a probe allows 5%"):
        corpus_windows(str(tiny_run), str(greek))


def test_a_runs_own_validation_split_is_read_back_from_its_final_checkpoint(tiny_run,
                                                                            monkeypatch):
    """The trainer's final whole-split evaluation is kept in the final checkpoint; evaluating
    that checkpoint on the same token file reads it back (no second pass), equal to a pass."""
    import importlib

    from lmscope.run.checkpoint import load

    ev = importlib.import_module("lmscope.evaluate")  # the module (lmscope.evaluate: the function)

    corpus = str(tiny_run.parent / "tiny.txt")
    final = load(tiny_run, device="cpu")
    found, token_file = ev._split_tokens(final, corpus, "val", None, "evaluate")
    (held,) = final.meta["val_evals"]
    assert held["token_file"] == token_file.path.name
    fresh = evaluate_token_file(final.model, token_file, block_size=final.model.context_length,
                                unk_id=final.tokenizer.unk_id, corpus=found.name, split="val")

    def no_pass(*args, **kwargs):
        raise AssertionError("evaluated a second time")
    monkeypatch.setattr(ev, "evaluate_token_file", no_pass)
    result = ev.evaluate(final, corpus)
    assert result.loss == pytest.approx(fresh.loss, rel=1e-12)
    assert (result.bits_per_char, result.n_tokens, result.n_chars, result.n_unknown) == (
        pytest.approx(fresh.bits_per_char, rel=1e-12), fresh.n_tokens, fresh.n_chars,
        fresh.n_unknown)
    assert result.corpus == found.name and result.checkpoint == str(final.path)
    # a checkpoint from mid-training holds none, and another split is another token file
    mid = load(tiny_run / "checkpoints" / "iter_0000020", device="cpu")
    assert "val_evals" not in mid.meta
    with pytest.raises(AssertionError, match="second time"):
        ev.evaluate(mid, corpus)
    with pytest.raises(AssertionError, match="second time"):
        ev.evaluate(final, corpus, "train")
    with pytest.raises(AssertionError, match="second time"):  # other splits: other text
        ev.evaluate(final, corpus, val_fraction=0.2)
