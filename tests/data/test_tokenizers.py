import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmscope.data.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    char_vocab,
    safe_cut,
    split_exact,
    token_dtype,
    tokenizer_from_dict,
)
from lmscope.errors import LmscopeError

VOCAB = list("\n !',.?abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789éü日本€")

TRAIN_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n"
    "Café crème, naïve façade. 日本語のテキスト. 1 + 2 = 3, 10 * 10 = 100.\n"
) * 20


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(
        [TRAIN_TEXT[i : i + 500] for i in range(0, len(TRAIN_TEXT), 500)], 300
    )


# --- character level -------------------------------------------------------------------


@given(st.text(alphabet=VOCAB))
def test_char_round_trip(text):
    tok = CharTokenizer(VOCAB)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) == len(text)
    assert 0 not in ids
    arr, n_unknown = tok.encode_array(text)
    assert arr.tolist() == ids and n_unknown == 0
    assert arr.dtype == np.uint8


def test_char_ids_are_sorted_code_points_after_unk():
    tok = CharTokenizer(["c", "a", "b", "a"])
    assert tok.chars == ["a", "b", "c"]
    assert tok.vocab_size == 4 and tok.unk_id == 0
    assert tok.encode("abc") == [1, 2, 3]
    assert tok.decode([0, 3]) == "\ufffdc"


def test_char_unknown_error_names_the_characters():
    tok = CharTokenizer("abc ")
    with pytest.raises(LmscopeError) as e:
        tok.encode("a bé ½é")
    msg = str(e.value)
    assert "'é'" in msg and "'½'" in msg
    assert "3 character(s)" in msg and "2 distinct" in msg


def test_char_unknown_error_lists_at_most_ten():
    tok = CharTokenizer("a")
    with pytest.raises(LmscopeError) as e:
        tok.encode("a" + "0123456789XYZ")
    msg = str(e.value)
    assert "13 character(s)" in msg and "and 3 more" in msg
    assert "'Z'" not in msg  # sorted: the digits are listed first, the letters cut off


def test_char_unknown_maps_to_unk_and_is_counted():
    tok = CharTokenizer("ab")
    assert tok.encode("aXbY", unknown="unk") == [1, 0, 2, 0]
    ids, n_unknown = tok.encode_array("aXbY€€")
    assert ids.tolist() == [1, 0, 2, 0, 0, 0] and n_unknown == 4
    assert tok.decode(ids) == "a\ufffdb\ufffd\ufffd\ufffd"
    with pytest.raises(ValueError):
        tok.encode("a", unknown="ignore")


def test_empty_vocabulary_makes_everything_unknown():
    tok = CharTokenizer([])
    assert tok.vocab_size == 1
    ids, n = tok.encode_array("xy")
    assert ids.tolist() == [0, 0] and n == 2


def test_char_rejects_multi_character_entries():
    with pytest.raises(ValueError):
        CharTokenizer(["ab", "c"])


def test_joint_vocabulary():
    a, b = "hello world\n", "1 + 2 = 3\n"
    tok = CharTokenizer(char_vocab(itertools.chain([a[:5], a[5:]], [b])))
    assert tok.chars == sorted(set(a + b))
    assert tok.decode(tok.encode(a)) == a and tok.decode(tok.encode(b)) == b
    # one id per character, whichever text it came from
    assert tok.encode(" ")[0] == tok.encode(a)[5] == tok.encode(b)[1]
    assert CharTokenizer(char_vocab([a])).fingerprint() != tok.fingerprint()


@pytest.mark.skipif(not os.environ.get("LMSCOPE_DATA"), reason="LMSCOPE_DATA is not set")
def test_real_corpora_char_vocab():
    data = Path(os.environ["LMSCOPE_DATA"])
    shakespeare = (data / "shakespeare" / "input.txt").read_text(encoding="utf-8")
    tok = CharTokenizer(char_vocab([shakespeare]))
    assert tok.vocab_size == 66  # 65 characters + <unk>
    ids, n_unknown = tok.encode_array(shakespeare)
    assert n_unknown == 0 and tok.decode(ids) == shakespeare
    wiki = (data / "wikipedia" / "wiki.test.raw").read_text(encoding="utf-8")[:100_000]
    ids, n_unknown = tok.encode_array(wiki)
    assert n_unknown == int((ids == 0).sum()) == sum(c not in tok.stoi for c in wiki) > 0


# --- byte level ------------------------------------------------------------------------


@given(st.text())
def test_byte_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    arr, n_unknown = tok.encode_array(text)
    assert arr.dtype == np.uint8 and arr.tolist() == ids and n_unknown == 0


def test_byte_decode_replaces_broken_utf8():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256 and tok.unk_id is None
    assert tok.decode(tok.encode("é")[:1] + tok.encode("a")) == "\ufffda"


# --- BPE -------------------------------------------------------------------------------


def test_bpe_trains_to_vocab_size(bpe):
    assert bpe.vocab_size == 300
    assert len(bpe.encode("First Citizen:\nSpeak, speak.")) < len("First Citizen:\nSpeak, speak.")
    with pytest.raises(LmscopeError, match="at least 256"):
        BPETokenizer.train(["abc"], 100)


@settings(deadline=None)
@given(st.text())
def test_bpe_round_trip_any_text(bpe, text):
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text
    arr, n_unknown = bpe.encode_array(text)
    assert arr.tolist() == ids and n_unknown == 0 and arr.dtype == np.uint16


WS_TEXT = st.text(alphabet=list("ab é日,.'1 \n\t\r\u3000\u00a0"), max_size=200)


@settings(deadline=None)
@given(WS_TEXT, st.integers(1, 200))
def test_bpe_safe_cut_is_exact(bpe, text, end):
    cut = safe_cut(text, 1, end)
    if cut < 0:
        return
    assert text[cut] in "\n " and not text[cut - 1].isspace()
    assert bpe.encode(text[:cut]) + bpe.encode(text[cut:]) == bpe.encode(text)


@settings(deadline=None)
@given(WS_TEXT, st.integers(1, 10))
def test_bpe_pieces_encode_like_the_whole(bpe, text, piece_chars):
    pieces = split_exact(text, piece_chars)
    assert "".join(pieces) == text
    assert [i for p in pieces for i in bpe.encode(p)] == bpe.encode(text)


# --- descriptions ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_to_dict_round_trip(kind, bpe):
    tok = {"char": CharTokenizer(VOCAB), "byte": ByteTokenizer(), "bpe": bpe}[kind]
    d = json.loads(json.dumps(tok.to_dict()))
    assert d["kind"] == kind
    again = tokenizer_from_dict(d)
    assert type(again) is type(tok) and again.vocab_size == tok.vocab_size
    assert again.fingerprint() == tok.fingerprint()
    text = "first citizen, café 日本 €!\n"
    assert again.encode(text) == tok.encode(text)


@pytest.mark.parametrize(
    "d",
    [
        {"kind": "word"},
        {"chars": ["a"]},
        ["char"],
        {"kind": "char"},
        {"kind": "char", "chars": "abc"},
        {"kind": "char", "chars": ["ab"]},
        {"kind": "bpe", "tokenizer": "{not json"},
    ],
)
def test_from_dict_rejects_malformed(d):
    with pytest.raises(LmscopeError):
        tokenizer_from_dict(d)


def test_fingerprints_differ_by_kind_and_vocab(bpe):
    fps = {
        CharTokenizer("ab").fingerprint(),
        CharTokenizer("abc").fingerprint(),
        ByteTokenizer().fingerprint(),
        bpe.fingerprint(),
    }
    assert len(fps) == 4
    assert CharTokenizer("ba").fingerprint() == CharTokenizer("ab").fingerprint()


def test_token_dtype():
    assert token_dtype(1) == np.uint8
    assert token_dtype(256) == np.uint8
    assert token_dtype(257) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    assert token_dtype(2**32) == np.uint32
    with pytest.raises(ValueError):
        token_dtype(2**32 + 1)
    with pytest.raises(ValueError):
        token_dtype(0)


def test_token_text_shows_partial_utf8_bytes_as_escapes():
    """A token shown alone: whole characters as themselves, a lone byte of one as \\xNN."""
    import re

    byte = ByteTokenizer()
    assert [byte.token_text(i) for i in byte.encode("aé")] == ["a", "\\xc3", "\\xa9"]
    chars = CharTokenizer(list("ab\n"))
    assert [chars.token_text(i) for i in chars.encode("ab\n")] == ["a", "b", "\n"]
    bpe = BPETokenizer.train(["hello world, café 東京 " * 50], vocab_size=260)  # few merges
    text = "hello café 東京"
    ids = bpe.encode(text)
    shown = [bpe.token_text(i) for i in ids]
    assert any("\\x" in t for t in shown)  # 東 is three bytes, not all merged
    for i, t in zip(ids, shown, strict=True):
        assert ("\\x" in t) == ("\ufffd" in bpe.decode([i]))  # escapes exactly where decode fails
    as_bytes = b"".join(bytes([int(part[2:], 16)]) if re.fullmatch(r"\\x[0-9a-f]{2}", part)
                        else part.encode("utf-8")
                        for t in shown for part in re.split(r"(\\x[0-9a-f]{2})", t) if part)
    assert as_bytes.decode("utf-8") == text  # nothing lost: the tokens' bytes give the text
