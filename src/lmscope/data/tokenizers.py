"""Tokenizers: character level, byte level and byte-level BPE.

Every tokenizer turns text into integer ids in `range(vocab_size)` and back, and describes
itself as a small JSON-serialisable dict (`to_dict`, `tokenizer_from_dict`) whose sha256 is
its `fingerprint`; token files and checkpoints are keyed by that fingerprint.

Characters outside the vocabulary (character level only):

- id 0 is reserved for `<unk>`, the unknown character; it decodes to U+FFFD "�".
  Ids 1.. are the vocabulary's characters sorted by code point.
- A prompt with characters the model has never seen is an error: `encode(text)` (the default
  unknown="error") raises `LmscopeError` naming them.
- When a model is evaluated on text from another corpus, those characters are encoded as
  `<unk>` (unknown="unk"). The evaluator does not score `<unk>` targets and reports how often
  they occur, so bits per character are measured over the characters the model can predict.
- A joint vocabulary for several corpora is just `char_vocab` over all their text:
  `CharTokenizer(char_vocab(itertools.chain(text_a, text_b)))`.

Byte-level and BPE tokenizers cannot meet an unknown character: every text is UTF-8 bytes,
and the BPE's base alphabet is the 256 bytes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable, Sequence

import numpy as np

from lmscope.errors import LmscopeError

UNK = "<unk>"
UNK_TEXT = "\ufffd"  # what <unk> decodes to
UNKNOWN_MODES = ("error", "unk")


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds ids `0 .. vocab_size - 1`."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"vocab_size {vocab_size} does not fit in uint32")


def _check_unknown(unknown: str) -> None:
    if unknown not in UNKNOWN_MODES:
        raise ValueError(f"unknown must be one of {UNKNOWN_MODES}, got {unknown!r}")


class Tokenizer:
    """Base class. Subclasses set `kind`, `vocab_size`, `unk_id` and implement the methods."""

    kind: str
    vocab_size: int
    unk_id: int | None = None

    def encode(self, text: str, unknown: str = "error") -> list[int]:
        """Token ids of `text`. unknown="error" raises on characters outside the vocabulary,
        unknown="unk" maps them to `unk_id`."""
        ids, _ = self.encode_array(text, unknown=unknown)
        return ids.tolist()

    def encode_array(self, text: str, unknown: str = "unk") -> tuple[np.ndarray, int]:
        """Token ids of `text` as an array of `token_dtype(vocab_size)`, and the number of
        characters encoded as `<unk>`. The fast path for whole corpora."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        """The text of token ids (`<unk>` and broken UTF-8 come back as "�")."""
        raise NotImplementedError

    def token_text(self, token_id: int) -> str:
        """One token's text, for showing it alone (attention, softmax and attribution tables):
        its bytes that are not a whole UTF-8 character are shown as \\xNN, not as "�"."""
        return self.decode([token_id])

    def to_dict(self) -> dict:
        """A JSON-serialisable description, {"kind": ..., ...}, that `tokenizer_from_dict` reads."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """sha256 (hex) of the tokenizer's description: equal fingerprints, equal encodings."""
        blob = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    @property
    def dtype(self) -> np.dtype:
        """The dtype token ids are stored in."""
        return token_dtype(self.vocab_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


def char_vocab(text_chunks: Iterable[str]) -> list[str]:
    """The sorted unique characters of all chunks (sorted by code point)."""
    chars: set[str] = set()
    for chunk in text_chunks:
        chars.update(chunk)
    return sorted(chars)


class CharTokenizer(Tokenizer):
    """One id per character: 0 is `<unk>`, 1.. are `chars` sorted by code point."""

    kind = "char"
    unk_id = 0

    def __init__(self, chars: Sequence[str]):
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"a character vocabulary holds single characters, got {bad[:5]!r}")
        self.chars: list[str] = sorted(set(chars))
        self.vocab_size = len(self.chars) + 1
        self.itos: list[str] = [UNK_TEXT, *self.chars]
        self.stoi: dict[str, int] = {c: i + 1 for i, c in enumerate(self.chars)}
        # sorted code points, for the vectorised lookup in encode_array
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)

    def encode_array(self, text: str, unknown: str = "unk") -> tuple[np.ndarray, int]:
        _check_unknown(unknown)
        # one uint32 code point per character (surrogatepass keeps lone surrogates as themselves)
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        if len(self._codes) == 0:
            found = np.zeros(len(cps), dtype=bool)
            pos = np.zeros(len(cps), dtype=np.int64)
        else:
            pos = np.searchsorted(self._codes, cps)
            pos = np.minimum(pos, len(self._codes) - 1)
            found = self._codes[pos] == cps
        n_unknown = int(len(cps) - np.count_nonzero(found))
        if n_unknown and unknown == "error":
            self._raise_unknown(cps[~found])
        ids = np.where(found, pos + 1, 0).astype(self.dtype)
        return ids, n_unknown

    def _raise_unknown(self, cps: np.ndarray) -> None:
        distinct = np.unique(cps)
        shown = ", ".join(repr(chr(c)) for c in distinct[:10])
        more = f" and {len(distinct) - 10} more" if len(distinct) > 10 else ""
        raise LmscopeError(
            f"text has {len(cps)} character(s) not in the vocabulary "
            f"({len(distinct)} distinct: {shown}{more}); "
            f"remove them, or use a model whose vocabulary covers them"
        )

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
            out.append(self.itos[i])
        return "".join(out)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": list(self.chars)}


class ByteTokenizer(Tokenizer):
    """256 ids, the UTF-8 bytes of the text. Nothing is unknown; bad UTF-8 decodes to "�"."""

    kind = "byte"
    vocab_size = 256
    unk_id = None

    def encode_array(self, text: str, unknown: str = "unk") -> tuple[np.ndarray, int]:
        _check_unknown(unknown)
        return self.encode_bytes(text.encode("utf-8")), 0

    def encode_bytes(self, data: bytes) -> np.ndarray:
        """Token ids of raw bytes (no decoding, so any binary file works)."""
        return np.frombuffer(data, dtype=np.uint8).copy()

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        return bytes([int(token_id)]).decode("utf-8", errors="backslashreplace")

    def to_dict(self) -> dict:
        return {"kind": self.kind}


def byte_level_chars() -> list[str]:
    """GPT-2's printable stand-in character for each byte 0..255, as the ByteLevel pre-tokenizer
    of Hugging Face `tokenizers` writes them in a byte-level BPE's vocabulary."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)}
    chars, n = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:  # control bytes, space, ... shift past 255
            chars.append(chr(256 + n))
            n += 1
    return chars


@functools.cache
def _byte_of_char() -> dict[str, int]:
    """The inverse of byte_level_chars, built once."""
    return {c: b for b, c in enumerate(byte_level_chars())}


# a newline or space right after a non-whitespace character: see `safe_cut`
_CUT_RE = re.compile(r"(?<=\S)[\n ]")


def safe_cut(text: str, start: int = 1, end: int | None = None) -> int:
    """The last index `i` in `[start, end)` where byte-level BPE pre-tokenization surely splits.

    The GPT-2 pre-tokenizer regex never puts a non-whitespace character and the whitespace
    right after it in one piece, and it only looks forwards, so at `i` with `text[i]` a
    newline or space and `text[i - 1]` not whitespace, encoding `text[:i]` and `text[i:]`
    separately gives exactly the tokens of encoding `text`. Newlines are preferred. Returns
    -1 where there is no such index.
    """
    start = max(start, 1)
    end = len(text) if end is None else end
    for sep in ("\n", " "):
        i = text.rfind(sep, start, end)
        while i >= start and text[i - 1].isspace():
            i = text.rfind(sep, start, i)
        if i >= start:
            return i
    return -1


def split_exact(text: str, piece_chars: int) -> list[str]:
    """`text` cut at `safe_cut` points into pieces of about `piece_chars` characters.

    Encoding the pieces one by one gives exactly the tokens of the whole text. Where there is
    no cut point for a long stretch, a piece is longer.
    """
    pieces = []
    a = 0
    while len(text) - a > 2 * piece_chars:
        cut = safe_cut(text, a + 1, a + piece_chars + 1)
        if cut < 0:  # none in this stretch: take the first one after it
            m = _CUT_RE.search(text, a + piece_chars + 1)
            if m is None:
                break
            cut = m.start()
        pieces.append(text[a:cut])
        a = cut
    pieces.append(text[a:])
    return pieces


class BPETokenizer(Tokenizer):
    """Byte-level BPE (Hugging Face `tokenizers`), trained locally.

    The ByteLevel pre-tokenizer (GPT-2 regex, no prefix space) maps every byte to a base
    token, so nothing is unknown, and the ByteLevel decoder maps them back, so
    `decode(encode(s)) == s` for any string `s`.
    """

    kind = "bpe"
    unk_id = None
    # pieces handed to the Rust encoder in parallel by encode_array
    piece_chars = 1 << 16

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        self.vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def train(cls, text_chunks: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Train on `text_chunks` up to `vocab_size` tokens (256 bytes + merges).

        On a small corpus training may stop early, with fewer tokens than asked for.
        """
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < 256:
            raise LmscopeError(
                f"BPE vocab_size must be at least 256 (the byte alphabet), got {vocab_size}"
            )
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        hf.train_from_iterator(text_chunks, trainer)
        return cls(hf)

    @classmethod
    def from_str(cls, s: str) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_str(s))

    def encode(self, text: str, unknown: str = "error") -> list[int]:
        _check_unknown(unknown)
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_array(self, text: str, unknown: str = "unk") -> tuple[np.ndarray, int]:
        _check_unknown(unknown)
        # cut long text at exact cut points so the Rust side can encode the pieces in parallel
        pieces = split_exact(text, self.piece_chars)
        encs = self.hf.encode_batch(pieces, add_special_tokens=False)
        ids = [np.asarray(e.ids, dtype=self.dtype) for e in encs]
        return (np.concatenate(ids) if ids else np.zeros(0, self.dtype)), 0

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_text(self, token_id: int) -> str:
        byte_of = _byte_of_char()
        piece = self.hf.id_to_token(int(token_id)) or ""
        if not all(c in byte_of for c in piece):  # not a byte-level token: as decode shows it
            return self.decode([token_id])
        return bytes(byte_of[c] for c in piece).decode("utf-8", errors="backslashreplace")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "tokenizer": self.hf.to_str()}


def tokenizer_from_dict(d: dict) -> Tokenizer:
    """Rebuild a tokenizer from `Tokenizer.to_dict()`."""
    if not isinstance(d, dict) or "kind" not in d:
        raise LmscopeError(f"not a tokenizer description (no 'kind'): {str(d)[:80]!r}")
    kind = d["kind"]
    try:
        if kind == "char":
            chars = d["chars"]
            if not isinstance(chars, list):
                raise TypeError("'chars' must be a list of characters")
            return CharTokenizer(chars)
        if kind == "byte":
            return ByteTokenizer()
        if kind == "bpe":
            tok = BPETokenizer.from_str(d["tokenizer"])
            if "vocab_size" in d and d["vocab_size"] != tok.vocab_size:
                raise ValueError(
                    f"vocab_size {d['vocab_size']} != {tok.vocab_size} in the tokenizer"
                )
            return tok
    except Exception as e:  # KeyError, TypeError, ValueError, or the Rust side's Exception
        raise LmscopeError(f"malformed {kind!r} tokenizer description: {e}") from e
    raise LmscopeError(f"unknown tokenizer kind {kind!r}; expected 'char', 'byte' or 'bpe'")
