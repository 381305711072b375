import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from lmscope.data import tokens as tokens_mod
from lmscope.data.corpora import ByteRange
from lmscope.data.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer, char_vocab
from lmscope.data.tokens import (
    BatchSampler,
    MixtureSampler,
    TokenFile,
    encode_to_file,
    eval_windows,
    read_token_file,
    token_dtype,
)
from lmscope.errors import LmscopeError

TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:  Speak, speak.\r\n   café 日本語 🎉 naïve\t€ 1 + 2 = 3\n"
) * 7


@dataclass
class FakeCorpus:
    """Stand-in for corpora.Corpus: a name, split byte ranges and a content fingerprint."""

    name: str
    splits: dict

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for split in sorted(self.splits):
            for r in self.splits[split]:
                data = r.path.read_bytes()[r.start : r.end]
                h.update(f"{split} {r.start} {r.end} ".encode() + hashlib.sha256(data).digest())
        return h.hexdigest()


def make_corpus(tmp_path: Path, *parts: bytes | str, name: str = "toy") -> FakeCorpus:
    """A corpus whose "train" split is `parts`, one file each, and whose "val" split is empty."""
    ranges = []
    for i, part in enumerate(parts):
        data = part.encode("utf-8") if isinstance(part, str) else part
        p = tmp_path / f"{name}{i}.txt"
        p.write_bytes(data)
        ranges.append(ByteRange(p, 0, len(data)))
    return FakeCorpus(name, {"train": tuple(ranges), "val": ()})


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train([TEXT], 300)


# --- encode_to_file --------------------------------------------------------------------


def test_char_token_file_matches_encode(tmp_path):
    corpus = make_corpus(tmp_path, TEXT)
    tok = CharTokenizer(char_vocab([TEXT]))
    tf = encode_to_file(corpus, "train", tok)
    assert isinstance(tf, TokenFile)
    assert tf.path.parent == tmp_path / "cache" / "tokens"
    assert tf.path.name == f"{corpus.fingerprint()[:16]}-{tok.fingerprint()[:16]}-train.bin"
    assert isinstance(tf.tokens, np.memmap) and tf.tokens.dtype == np.uint8
    assert not tf.tokens.flags.writeable
    assert tf.tokens.tolist() == tok.encode(TEXT)
    assert (tf.n_chars, tf.n_unknown, len(tf)) == (len(TEXT), 0, len(TEXT))
    meta = json.loads(tf.path.with_suffix(".json").read_text())
    assert meta["dtype"] == "uint8" and meta["n_tokens"] == len(TEXT)
    assert meta["n_chars"] == len(TEXT) and meta["n_unknown"] == 0
    assert meta["tokenizer_kind"] == "char" and meta["corpus"] == "toy"


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 1 << 20])
def test_multibyte_characters_across_chunk_edges(tmp_path, chunk_size):
    text = "é日🎉a" * 10 + "€"
    corpus = make_corpus(tmp_path, text[:7], text[7:])  # a file edge inside the text, too
    tok = CharTokenizer(char_vocab([text]))
    tf = encode_to_file(corpus, "train", tok, cache=tmp_path / "tok", chunk_size=chunk_size)
    assert tf.path.parent == tmp_path / "tok"
    assert tf.tokens.tolist() == tok.encode(text)
    assert tf.n_chars == len(text)


def test_unknown_characters_are_counted(tmp_path):
    corpus = make_corpus(tmp_path, "abcXabYY")
    tok = CharTokenizer("abc")
    tf = encode_to_file(corpus, "train", tok, chunk_size=3)
    assert tf.tokens.tolist() == [1, 2, 3, 0, 1, 2, 0, 0]
    assert (tf.n_chars, tf.n_unknown) == (8, 3)


def test_byte_token_file_never_decodes(tmp_path):
    data = b"\xff\xfe not utf-8 \x80" + "café 日本".encode() + bytes(range(256))
    corpus = make_corpus(tmp_path, data[:10], data[10:])
    tf = encode_to_file(corpus, "train", ByteTokenizer(), chunk_size=4)
    assert tf.tokens.tobytes() == data
    # characters = bytes that are not UTF-8 continuation bytes (0b10xxxxxx)
    assert tf.n_chars == sum((b & 0xC0) != 0x80 for b in data)
    assert tf.n_unknown == 0


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1 << 20])
def test_bpe_token_file_equals_whole_text_encoding(tmp_path, bpe, chunk_size):
    corpus = make_corpus(tmp_path, TEXT[:100], TEXT[100:])
    tf = encode_to_file(corpus, "train", bpe, chunk_size=chunk_size)
    assert tf.tokens.dtype == np.uint16
    assert tf.path.stat().st_size == 2 * len(tf)
    assert tf.tokens.tolist() == bpe.encode(TEXT)
    assert bpe.decode(tf.tokens) == TEXT
    assert (tf.n_chars, tf.n_unknown) == (len(TEXT), 0)


def test_second_call_is_a_cache_hit(tmp_path, monkeypatch):
    corpus = make_corpus(tmp_path, TEXT)
    tok = CharTokenizer(char_vocab([TEXT]))
    first = encode_to_file(corpus, "train", tok)

    def boom(*args, **kwargs):
        raise AssertionError("re-encoded a cached split")

    monkeypatch.setattr(tok, "encode_array", boom)
    monkeypatch.setattr(tokens_mod, "_encode_stream", boom)
    again = encode_to_file(corpus, "train", tok)
    assert again.path == first.path
    assert again.tokens.tolist() == first.tokens.tolist()
    assert (again.n_chars, again.n_unknown) == (first.n_chars, first.n_unknown)
    # another tokenizer is another file
    monkeypatch.undo()
    other = encode_to_file(corpus, "train", ByteTokenizer())
    assert other.path != first.path and len(other) == len(TEXT.encode())


def test_bin_without_sidecar_is_remade(tmp_path, monkeypatch):
    corpus = make_corpus(tmp_path, TEXT)
    tok = CharTokenizer(char_vocab([TEXT]))
    tf = encode_to_file(corpus, "train", tok)
    expected = tf.tokens.tolist()
    del tf
    calls = []
    real = tokens_mod._encode_stream
    monkeypatch.setattr(tokens_mod, "_encode_stream", lambda *a: calls.append(1) or real(*a))

    sidecar = (
        tmp_path
        / "cache"
        / "tokens"
        / (f"{corpus.fingerprint()[:16]}-{tok.fingerprint()[:16]}-train.json")
    )
    sidecar.unlink()  # as if killed between the .bin and its sidecar
    sidecar.with_suffix(".bin").write_bytes(b"\x01\x02")
    assert encode_to_file(corpus, "train", tok).tokens.tolist() == expected
    assert len(calls) == 1

    sidecar.write_text("{not json")  # a torn or foreign sidecar
    assert encode_to_file(corpus, "train", tok).tokens.tolist() == expected
    assert len(calls) == 2

    sidecar.with_suffix(".bin").write_bytes(b"\x01")  # size disagrees with the sidecar
    assert encode_to_file(corpus, "train", tok).tokens.tolist() == expected
    assert len(calls) == 3


def test_empty_split_and_missing_split(tmp_path):
    corpus = make_corpus(tmp_path, TEXT)
    tf = encode_to_file(corpus, "val", ByteTokenizer())
    assert len(tf) == 0 and tf.n_chars == 0 and tf.tokens.dtype == np.uint8
    assert read_token_file(tf.path).tokens.shape == (0,)
    with pytest.raises(LmscopeError, match="no split 'test'"):
        encode_to_file(corpus, "test", ByteTokenizer())


def test_read_token_file_errors(tmp_path):
    with pytest.raises(LmscopeError, match="sidecar"):
        read_token_file(tmp_path / "nothing.bin")


def test_progress_bar_runs(tmp_path, capsys):
    corpus = make_corpus(tmp_path, TEXT)
    tf = encode_to_file(corpus, "train", CharTokenizer(char_vocab([TEXT])), progress=True)
    assert len(tf) == len(TEXT)
    assert "tokenizing toy/train" in capsys.readouterr().err


@pytest.mark.skipif(not os.environ.get("LMSCOPE_DATA"), reason="LMSCOPE_DATA is not set")
def test_real_corpus_val_split(tmp_path):
    from lmscope.data.corpora import iter_text, resolve

    corpus = resolve("shakespeare", download=False)
    text = "".join(iter_text(corpus.splits["val"]))
    tok = CharTokenizer(char_vocab([text]))
    tf = encode_to_file(corpus, "val", tok, chunk_size=4096)
    assert tok.decode(tf.tokens) == text and tf.n_chars == len(text)


# --- token dtype -----------------------------------------------------------------------


def test_token_dtype_fits_the_vocabulary():
    assert [token_dtype(v) for v in (66, 256, 257, 50257, 65536, 100_000)] == [
        np.uint8,
        np.uint8,
        np.uint16,
        np.uint16,
        np.uint16,
        np.uint32,
    ]


# --- BatchSampler ----------------------------------------------------------------------


def same_batches(a, b) -> bool:
    return all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )


def test_batches_are_windows_with_shifted_targets():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = BatchSampler(tokens, block_size=16, batch_size=8, seed=0).sample()
    assert x.dtype == y.dtype == torch.int64
    assert x.shape == y.shape == (8, 16)
    assert torch.equal(y[:, :-1], x[:, 1:])
    # with tokens = arange, each row is a run start, start+1, ...
    starts = x[:, :1]
    assert torch.equal(x, starts + torch.arange(16)) and torch.equal(y, x + 1)
    assert int(y.max()) <= 999


def test_every_start_is_reachable_and_in_bounds():
    tokens = np.arange(20, dtype=np.uint8)
    sampler = BatchSampler(tokens, block_size=4, batch_size=64, seed=1)
    starts = set()
    for _ in range(10):
        x, y = sampler.sample()
        starts.update(x[:, 0].tolist())
    assert starts == set(range(20 - 4))  # 0 .. n - block_size - 1
    exact = BatchSampler(np.arange(5, dtype=np.uint8), block_size=4, batch_size=3, seed=0)
    x, y = exact.sample()
    assert x.tolist() == [[0, 1, 2, 3]] * 3 and y.tolist() == [[1, 2, 3, 4]] * 3


def test_same_seed_same_batches():
    tokens = np.random.default_rng(0).integers(0, 65, size=5000).astype(np.uint8)

    def draws(seed, n=5):
        s = BatchSampler(tokens, block_size=32, batch_size=4, seed=seed)
        return [s.sample() for _ in range(n)]

    a, b, c = draws(7), draws(7), draws(8)
    assert same_batches(a, b)
    assert not same_batches(a, c)


def test_state_dict_round_trip_continues_the_sequence():
    tokens = np.arange(10_000, dtype=np.uint32)
    s = BatchSampler(tokens, block_size=8, batch_size=4, seed=3)
    for _ in range(3):
        s.sample()
    state = json.loads(json.dumps(s.state_dict()))
    expected = [s.sample() for _ in range(4)]

    resumed = BatchSampler(tokens, block_size=8, batch_size=4, seed=999)
    resumed.load_state_dict(state)
    got = [resumed.sample() for _ in range(4)]
    assert same_batches(expected, got)


def test_too_short_split_is_an_error():
    with pytest.raises(LmscopeError, match=r"split has 50 tokens, fewer than block_size\+1 = 65"):
        BatchSampler(np.zeros(50, dtype=np.uint8), block_size=64, batch_size=2, seed=0)


def test_sampler_reads_a_token_file(tmp_path):
    corpus = make_corpus(tmp_path, TEXT)
    tok = CharTokenizer(char_vocab([TEXT]))
    tf = encode_to_file(corpus, "train", tok)
    x, y = BatchSampler(tf.tokens, block_size=10, batch_size=3, seed=0).sample()
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        window = tok.decode(row_x + row_y[-1:])
        assert window in TEXT and tok.decode(row_y) == window[1:]


def test_a_mixture_draws_rows_from_each_source_by_weight():
    a = np.arange(0, 1000, dtype=np.uint16)
    b = np.arange(5000, 5100, dtype=np.uint16)  # a tenth of a's size: weight, not size, decides
    sampler = MixtureSampler([a, b], [0.7, 0.3], block_size=8, batch_size=4000, seed=0)
    x, y = sampler.sample()
    assert torch.equal(y[:, :-1], x[:, 1:])
    from_b = x[:, 0] >= 5000
    # every row is a window of one source, never straddling the two
    assert torch.equal(x, x[:, :1] + torch.arange(8))
    assert int(x[from_b].max()) + 1 <= 5099 and int(x[~from_b].max()) + 1 <= 999
    share = float(from_b.float().mean())  # binomial(4000, 0.3): standard deviation 0.0072
    assert abs(share - 0.3) < 0.03, share
    # every start of the small source is reachable
    assert set(x[from_b, 0].tolist()) == set(range(5000, 5100 - 8))


def test_a_mixture_resumes_and_slices_one_global_batch():
    a, b = np.arange(500, dtype=np.uint16), np.arange(1000, 1300, dtype=np.uint16)
    s = MixtureSampler([a, b], [1, 3], block_size=4, batch_size=6, seed=5)
    s.sample()
    state = json.loads(json.dumps(s.state_dict()))
    expected = [s.sample() for _ in range(3)]
    resumed = MixtureSampler([a, b], [1, 3], block_size=4, batch_size=6, seed=0)
    resumed.load_state_dict(state)
    assert same_batches(expected, [resumed.sample() for _ in range(3)])
    # two data-parallel ranks together see the batch of one process with twice the rows
    whole = MixtureSampler([a, b], [1, 3], block_size=4, batch_size=12, seed=9).sample()
    halves = [MixtureSampler([a, b], [1, 3], block_size=4, batch_size=6, seed=9, rank=r,
                             world_size=2).sample() for r in (0, 1)]
    assert torch.equal(torch.cat([h[0] for h in halves]), whole[0])
    assert torch.equal(torch.cat([h[1] for h in halves]), whole[1])


def test_every_source_of_a_mixture_must_hold_a_window():
    with pytest.raises(LmscopeError, match="split has 5 tokens"):
        MixtureSampler([np.arange(100), np.arange(5)], [0.5, 0.5], block_size=8, batch_size=2,
                       seed=0)


# --- eval_windows ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, block, batch",
    [
        (0, 4, 2),
        (1, 4, 2),
        (2, 1, 1),
        (10, 3, 2),
        (10, 9, 4),
        (10, 10, 1),
        (10, 20, 3),
        (65, 64, 2),
        (101, 8, 4),
        (1000, 7, 16),
    ],
)
def test_eval_windows_cover_every_target_once(n, block, batch):
    tokens = np.arange(n, dtype=np.uint16)
    targets = []
    shapes = []
    for x, y in eval_windows(tokens, block, batch):
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape
        assert torch.equal(y, x + 1)  # the next token of each input
        shapes.append(tuple(x.shape))
        targets += y.flatten().tolist()
    assert sorted(targets) == list(range(1, n)) == targets
    # full windows in batches of at most `batch`, then one short window alone
    n_full, rest = divmod(max(n - 1, 0), block)
    full = [s for s in shapes if s[1] == block]
    assert sum(s[0] for s in full) == n_full and all(s[0] <= batch for s in full)
    assert shapes[len(full) :] == ([(1, rest)] if rest else [])
