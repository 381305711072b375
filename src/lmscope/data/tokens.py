"""Token files on disk, and batches drawn from them.

`encode_to_file` encodes one split of a corpus with one tokenizer into a flat binary file of
token ids (the smallest unsigned dtype that fits the vocabulary), cached under
`cache_dir()/"tokens"` by corpus and tokenizer fingerprint, with a JSON sidecar that says what
is in it. The file is memory-mapped, so a 100 MB corpus costs no RAM to train on.

`BatchSampler` draws random training windows from it; `eval_windows` walks it once in order
for evaluation; `spaced_windows` cuts a few fixed ones for the probes and the tracking.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from tqdm import tqdm

from lmscope.data.corpora import ByteRange, Corpus, iter_bytes, iter_text
from lmscope.data.tokenizers import Tokenizer, safe_cut, token_dtype
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write, atomic_write_json, cache_dir

__all__ = [
    "BatchSampler",
    "MixtureSampler",
    "TokenFile",
    "encode_to_file",
    "eval_windows",
    "spaced_windows",
    "read_token_file",
    "token_dtype",
]

# BPE: text after the last safe cut point waits for the next chunk; past this many
# characters with no cut point it is encoded anyway (exactness gives way to bounded memory).
MAX_CARRY_CHARS = 16 << 20


@dataclass
class TokenFile:
    """A tokenized split: token ids memory-mapped read-only from `path`."""

    path: Path
    tokens: np.ndarray  # read-only np.memmap (an empty array for an empty split)
    n_chars: int  # characters of text the tokens came from, for bits per character
    n_unknown: int  # characters encoded as <unk>

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def oov_rate(self) -> float:
        """The fraction of the split's characters outside the tokenizer's vocabulary."""
        return self.n_unknown / max(self.n_chars, 1)


def check_oov_rate(corpus: str, split: str, rate: float, limit: float, *, whose: str,
                   setting: str = "data.max_oov_rate") -> None:
    """An error, naming the rate and the ways out, when more than `limit` of a split's characters
    are outside the vocabulary (`whose`: "the checkpoint of train.init_from", ...)."""
    if rate > limit:
        raise LmscopeError(
            f"corpus {corpus}: {rate:.1%} of the {split} split's characters are outside the "
            f"vocabulary of {whose} (limit {setting} {limit:g}); start from a model whose "
            "vocabulary covers this text (trained with data.vocab_from=[...] or "
            f"data.tokenizer=byte), or raise {setting}")


def vocabulary_gap(corpus: Corpus, tokenizer: Tokenizer, limit: float, *, whose: str,
                   setting: str = "data.max_oov_rate") -> float:
    """The larger out-of-vocabulary rate of the corpus's train and val splits under `tokenizer`
    (encoded to the token-file cache, so training reuses them); past `limit` an error."""
    worst = 0.0
    for split in ("train", "val"):
        rate = encode_to_file(corpus, split, tokenizer).oov_rate
        check_oov_rate(corpus.name, split, rate, limit, whose=whose, setting=setting)
        worst = max(worst, rate)
    return worst


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def read_token_file(path: str | Path) -> TokenFile:
    """Open a token file written by `encode_to_file` (its `.json` sidecar must be beside it)."""
    path = Path(path)
    try:
        meta = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        dtype = np.dtype(meta["dtype"])
        n_tokens = int(meta["n_tokens"])
        n_chars, n_unknown = int(meta["n_chars"]), int(meta["n_unknown"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LmscopeError(
            f"cannot read the sidecar of token file {path}: {e}; delete both files to re-encode"
        ) from e
    if not path.exists():
        raise LmscopeError(f"token file {path} is missing; delete its sidecar to re-encode")
    size = path.stat().st_size
    if size != n_tokens * dtype.itemsize:
        raise LmscopeError(
            f"token file {path} has {size} bytes, its sidecar says {n_tokens} x {dtype}; "
            f"delete both files to re-encode"
        )
    if n_tokens == 0:  # numpy cannot map an empty file
        tokens = np.zeros(0, dtype=dtype)
        tokens.flags.writeable = False
    else:
        tokens = np.memmap(path, dtype=dtype, mode="r")
    return TokenFile(path=path, tokens=tokens, n_chars=n_chars, n_unknown=n_unknown)


def _load_cached(path: Path, corpus_fp: str, tokenizer_fp: str) -> TokenFile | None:
    """The cached token file at `path`, or None if it is missing, half-written or stale."""
    if not (path.exists() and _sidecar(path).exists()):
        return None
    try:
        meta = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        if (meta.get("corpus_fingerprint"), meta.get("tokenizer_fingerprint")) != (
            corpus_fp,
            tokenizer_fp,
        ):
            return None
        return read_token_file(path)
    except (LmscopeError, OSError, ValueError, AttributeError):  # unreadable: make it again
        return None


def encode_to_file(
    corpus: Corpus,
    split: str,
    tokenizer: Tokenizer,
    *,
    cache: Path | None = None,
    progress: bool = False,
    chunk_size: int = 1 << 20,
) -> TokenFile:
    """Tokenize `corpus.splits[split]` into a cached token file and open it.

    The file is `<cache>/<corpus fp[:16]>-<tokenizer fp[:16]>-<split>.bin` (cache defaults to
    `cache_dir()/"tokens"`); if it and its sidecar already exist it is opened, not re-encoded.
    Text is streamed in chunks of `chunk_size` bytes, never read whole. The byte tokenizer
    reads raw bytes and never decodes them, so any file works. BPE holds back the text after
    the last exact cut point of each chunk (see `tokenizers.safe_cut`) and encodes it with the
    next chunk, so the tokens are those of encoding the whole text at once (unless there is no
    space or newline for 16 M characters).
    """
    if split not in corpus.splits:
        raise LmscopeError(
            f"corpus {corpus.name!r} has no split {split!r}; it has {sorted(corpus.splits)}"
        )
    ranges = tuple(corpus.splits[split])
    folder = Path(cache) if cache is not None else cache_dir() / "tokens"
    cfp, tfp = corpus.fingerprint(), tokenizer.fingerprint()
    path = folder / f"{cfp[:16]}-{tfp[:16]}-{split}.bin"
    cached = _load_cached(path, cfp, tfp)
    if cached is not None:
        return cached

    # The sidecar goes first and comes back last: a .bin without one is never trusted.
    _sidecar(path).unlink(missing_ok=True)
    stats: dict[str, int] = {}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            stats.update(
                _encode_stream(ranges, tokenizer, f, chunk_size, progress, f"{corpus.name}/{split}")
            )

    atomic_write(path, write)
    dtype = token_dtype(tokenizer.vocab_size)
    atomic_write_json(
        _sidecar(path),
        {
            "dtype": dtype.name,
            "n_tokens": stats["n_tokens"],
            "n_chars": stats["n_chars"],
            "n_unknown": stats["n_unknown"],
            "tokenizer_kind": tokenizer.kind,
            "tokenizer_fingerprint": tfp,
            "corpus": corpus.name,
            "corpus_fingerprint": cfp,
            "split": split,
        },
    )
    return read_token_file(path)


def _encode_stream(
    ranges: tuple[ByteRange, ...],
    tokenizer: Tokenizer,
    f: BinaryIO,
    chunk_size: int,
    progress: bool,
    desc: str,
) -> dict[str, int]:
    """Encode the text of `ranges` chunk by chunk, appending token ids to `f`."""
    dtype = token_dtype(tokenizer.vocab_size)
    n_tokens = n_chars = n_unknown = 0
    total = sum(r.end - r.start for r in ranges)
    bar = tqdm(
        total=total, unit="B", unit_scale=True, desc=f"tokenizing {desc}", disable=not progress
    )

    def emit(ids: np.ndarray) -> None:
        nonlocal n_tokens
        f.write(np.ascontiguousarray(ids, dtype=dtype).tobytes())
        n_tokens += len(ids)

    if tokenizer.kind == "byte":
        for chunk in iter_bytes(ranges, chunk_size):
            b = np.frombuffer(chunk, dtype=np.uint8)
            emit(b)
            n_chars += int(np.count_nonzero((b & 0xC0) != 0x80))  # not a UTF-8 continuation
            bar.update(len(chunk))
    else:
        carry = ""  # BPE only: text after the last exact cut point, waiting for more
        for chunk in iter_text(ranges, chunk_size):
            n_chars += len(chunk)
            if progress:
                bar.update(len(chunk.encode("utf-8")))
            text = chunk
            if tokenizer.kind == "bpe":
                text = carry + chunk
                cut = safe_cut(text)
                if cut < 0 and len(text) < MAX_CARRY_CHARS:
                    carry = text
                    continue
                cut = len(text) if cut < 0 else cut
                text, carry = text[:cut], text[cut:]
            ids, unk = tokenizer.encode_array(text, unknown="unk")
            emit(ids)
            n_unknown += unk
        if carry:
            ids, unk = tokenizer.encode_array(carry, unknown="unk")
            emit(ids)
            n_unknown += unk
    bar.close()
    return {"n_tokens": n_tokens, "n_chars": n_chars, "n_unknown": n_unknown}


def _windows(tokens: np.ndarray, starts: np.ndarray, length: int) -> tuple[torch.Tensor, ...]:
    """Inputs and next-token targets of the windows `tokens[s : s + length + 1]`."""
    w = tokens[starts[:, None] + np.arange(length + 1)].astype(np.int64)
    return torch.from_numpy(w[:, :-1].copy()), torch.from_numpy(w[:, 1:].copy())


class BatchSampler:
    """Random contiguous training windows, reproducible from `seed` and resumable.

    Each `sample()` draws `batch_size` window starts uniformly with a numpy PCG64 generator and
    gathers them in one indexing operation.

    Data-parallel training: every process draws the starts of the whole global batch
    (`batch_size * world_size`) from the same generator and gathers only its own slice, so N
    processes see exactly the batch one process with N times the batch size would, and one
    generator state describes all of them.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if block_size < 1 or batch_size < 1:
            raise ValueError(
                f"block_size and batch_size must be positive, got {block_size}, {batch_size}"
            )
        if len(tokens) < block_size + 1:
            raise LmscopeError(
                f"split has {len(tokens)} tokens, fewer than block_size+1 = {block_size + 1}; "
                f"use a smaller block_size or more text"
            )
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.rank, self.world_size = rank, world_size
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), both int64 of shape (batch_size, block_size): random windows of the text,
        with y the next token at each position (y[:, t] == x[:, t + 1] for t < block_size - 1)."""
        # the last start that leaves room for the target after the window: n - block_size - 1
        starts = self.rng.integers(0, len(self.tokens) - self.block_size,
                                   size=self.batch_size * self.world_size)
        mine = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        return _windows(self.tokens, mine, self.block_size)

    def state_dict(self) -> dict:
        """The generator's state, JSON-serialisable; load it to continue the same batches."""
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, d: dict) -> None:
        state = d["bit_generator"]
        if state.get("bit_generator") != "PCG64":
            raise LmscopeError(f"sampler state is for {state.get('bit_generator')!r}, not PCG64")
        self.rng.bit_generator.state = state


class MixtureSampler(BatchSampler):
    """Training windows from several token arrays: each row of a batch first picks its source
    with probability `weights[i]`, then a uniform window inside it (the seed's
    `tinystories_weight`). One generator draws both, so the state is as small and resumable as
    BatchSampler's, and data-parallel processes again slice one global batch."""

    def __init__(self, sources: Sequence[np.ndarray], weights: Sequence[float], block_size: int,
                 batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if len(sources) != len(weights) or not sources:
            raise ValueError("give one weight per source, and at least one source")
        super().__init__(sources[0], block_size, batch_size, seed, rank, world_size)
        for tokens in sources[1:]:  # each source must hold a window
            BatchSampler(tokens, block_size, batch_size, seed)
        self.sources = list(sources)
        self.weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.batch_size * self.world_size
        which = self.rng.choice(len(self.sources), size=n, p=self.weights)
        highs = np.array([len(t) - self.block_size for t in self.sources])
        starts = self.rng.integers(0, highs[which])  # one draw per row, its own source's range
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        which, starts = which[mine], starts[mine]
        x = torch.empty(self.batch_size, self.block_size, dtype=torch.int64)
        y = torch.empty_like(x)
        for i, tokens in enumerate(self.sources):
            rows = np.flatnonzero(which == i)
            if len(rows):
                x[rows], y[rows] = _windows(tokens, starts[rows], self.block_size)
        return x, y


def spaced_windows(tokens: np.ndarray, length: int, n: int) -> tuple[list[int], torch.Tensor]:
    """(starts, ids (n, length) int64): `n` windows of `length` tokens starting at evenly spaced
    places from the first token to the last full window (no randomness: the same windows every
    time for the same tokens)."""
    starts = np.linspace(0, max(len(tokens) - length, 0), num=n).round().astype(np.int64)
    ids = np.stack([np.asarray(tokens[s:s + length], dtype=np.int64) for s in starts])
    return starts.tolist(), torch.from_numpy(ids)


def eval_windows(
    tokens: np.ndarray, block_size: int, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows that predict every token after the first exactly once.

    Window k has inputs `tokens[k*B : k*B + B]` and targets `tokens[k*B + 1 : k*B + B + 1]`
    (B = block_size), so the targets cover positions 1..n-1 with no gaps or repeats. Full
    windows come in batches of up to `batch_size`; the last, shorter window (when (n - 1) is
    not a multiple of B) comes alone as a batch of shape (1, (n - 1) % B). Nothing is padded,
    so every target is a real token. Fewer than 2 tokens: no windows.
    """
    if block_size < 1 or batch_size < 1:
        raise ValueError(
            f"block_size and batch_size must be positive, got {block_size}, {batch_size}"
        )
    n = len(tokens)
    n_full = max(n - 1, 0) // block_size
    for b in range(0, n_full, batch_size):
        starts = np.arange(b, min(b + batch_size, n_full)) * block_size
        yield _windows(tokens, starts, block_size)
    start = n_full * block_size
    if start < n - 1:
        yield _windows(tokens, np.array([start]), n - 1 - start)
