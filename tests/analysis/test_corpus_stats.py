"""Corpus statistics: exact counts on small texts, the files written, the real corpora."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest

from lmscope.analysis.corpus_stats import CATEGORY_NAMES, corpus_stats, write_stats
from lmscope.errors import LmscopeError

TEXT = "to be or not to be\n" * 5 + "café 5€ 中文 ok\n"


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text(TEXT, encoding="utf-8", newline="")
    return path


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_exact_counts(small):
    s = corpus_stats(str(small))
    assert s.name == "small"
    assert s.n_bytes == len(TEXT.encode("utf-8"))
    assert s.n_chars == len(TEXT) == sum(s.splits.values())
    assert set(s.splits) == {"train", "val"}
    assert s.counts == dict(Counter(TEXT))
    assert s.n_unique == len(set(TEXT)) == s.n_unique_universal_newlines
    assert s.n_lines == 6
    assert s.n_words == len(TEXT.split()) == 5 * 6 + 4
    assert s.n_crlf == 0
    # b and e tie at 10: ties go by code point, so the order does not depend on the text's
    assert s.top(5) == [(" ", 28), ("o", 21), ("t", 15), ("b", 10), ("e", 10)]
    assert s.share(" ") == pytest.approx(100 * TEXT.count(" ") / len(TEXT))


def test_non_ascii_grouped_by_category(small):
    s = corpus_stats(str(small))
    groups = s.non_ascii()
    assert groups == {"Lo": [("中", 1), ("文", 1)], "Ll": [("é", 1)], "Sc": [("€", 1)]}
    assert s.n_non_ascii == 4 and s.n_non_ascii_distinct == 4
    assert len(CATEGORY_NAMES) == 30 and CATEGORY_NAMES["Sc"] == "Symbol, currency"


def test_to_dict_uses_visible_names(small):
    d = corpus_stats(str(small)).to_dict()
    json.dumps(d)
    assert d["top"][0] == {"char": "<space>", "code_point": "U+0020", "count": TEXT.count(" "),
                           "share_percent": pytest.approx(100 * TEXT.count(" ") / len(TEXT),
                                                         abs=1e-4)}
    assert d["counts"]["<newline>"] == TEXT.count("\n")
    assert " " not in d["counts"] and "\n" not in d["counts"]
    assert d["non_ascii"]["by_category"]["Sc"] == {
        "name": "Symbol, currency", "distinct": 1, "occurrences": 1, "chars": {"€": 1}}
    assert d["n_unique"] == len(set(TEXT))


def test_crlf_is_its_own_character(tmp_path):
    text = "one\r\ntwo\r\nthree\r\n" * 4
    path = tmp_path / "dos.txt"
    path.write_bytes(text.encode())
    s = corpus_stats(str(path))
    assert s.counts["\r"] == s.counts["\n"] == s.n_crlf == 12
    assert s.n_unique == len(set(text))
    assert s.n_unique_universal_newlines == s.n_unique - 1
    assert s.n_lines == 12
    assert "<cr>" in s.to_dict()["counts"]


def test_lone_cr_reads_as_newline(tmp_path):
    # universal newlines read a lone \r as \n too: no \n in the file, the count stays
    path = tmp_path / "mac.txt"
    path.write_bytes(b"ab\rcd\r" * 5)
    s = corpus_stats(str(path))
    assert s.n_unique == s.n_unique_universal_newlines == 5
    assert s.n_crlf == 0 and s.n_lines == 10


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 7])
def test_chunk_boundaries(tmp_path, chunk_size):
    # \r\n pairs, words and multi-byte characters cut across chunks and the train/val cut
    text = "naïve words\r\nacross € chunks\r\n中文 end\r\nlast line no newline" * 3
    path = tmp_path / "chunks.txt"
    path.write_bytes(text.encode())
    whole = corpus_stats(str(path))
    s = corpus_stats(str(path), chunk_size=chunk_size)
    assert s == whole
    assert s.counts == dict(Counter(text))
    assert s.n_crlf == text.count("\r\n") == 9
    assert s.n_words == len(text.split())
    assert s.n_lines == text.count("\n") + 1
    assert s.n_unique_universal_newlines == len(set(text.replace("\r\n", "\n")))


def test_folder_counts_all_files(tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    (folder / "a.txt").write_text("aaaa bbbb\n" * 10)
    (folder / "b.txt").write_text("cccc é\n" * 10)
    s = corpus_stats(str(folder))
    assert s.name == "two"
    assert s.n_chars == 100 + 70 and s.n_unique == 6
    assert s.counts["é"] == 10


def test_write_stats_files(small, tmp_path):
    dos = tmp_path / "dos.txt"
    dos.write_bytes(b"line one\r\nline two \xc2\xa9\r\n" * 5)
    stats = [corpus_stats(str(small)), corpus_stats(str(dos))]
    out = tmp_path / "out"
    paths = write_stats(stats, out, top=8)
    names = {p.name for p in paths}
    assert names == {"stats.json", "table.csv", "table.md", "chars.csv", "non_ascii.csv",
                     "chars_small.png", "chars_dos.png"}
    assert all(p.parent == out and p.is_file() for p in paths)

    data = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert [c["name"] for c in data["corpora"]] == ["small", "dos"]
    assert data["corpora"][0]["counts"]["<space>"] == TEXT.count(" ")

    table = read_csv(out / "table.csv")
    assert table[0] == ["corpus", "bytes", "characters", "lines", "words", "unique_characters",
                        "unique_universal_newlines", "top5", "non_ascii_occurrences",
                        "non_ascii_distinct", "non_ascii_examples"]
    row = dict(zip(table[0], table[1], strict=True))
    assert row["corpus"] == "small" and int(row["characters"]) == len(TEXT)
    assert row["top5"].startswith("<space> ")
    assert row["non_ascii_occurrences"] == "4" and row["non_ascii_distinct"] == "4"
    assert "Sc: €" in row["non_ascii_examples"] and "Lo: 中 文" in row["non_ascii_examples"]
    dos_row = dict(zip(table[0], table[2], strict=True))
    assert int(dos_row["unique_characters"]) == int(dos_row["unique_universal_newlines"]) + 1

    md = (out / "table.md").read_text(encoding="utf-8")
    assert md.count("\n") == 4 and "with universal newlines" in md

    chars = read_csv(out / "chars.csv")
    assert chars[0] == ["corpus", "rank", "character", "code_point", "category", "count",
                        "share_percent"]
    small_rows = [r for r in chars[1:] if r[0] == "small"]
    assert len(small_rows) == len(set(TEXT))
    assert small_rows[0][:6] == ["small", "1", "<space>", "U+0020", "Zs", str(TEXT.count(" "))]
    assert sum(float(r[6]) for r in small_rows) == pytest.approx(100, abs=1e-3)
    assert small_rows[1][:6] == ["small", "2", "o", "U+006F", "Ll", "21"]
    assert small_rows[-1][4] == "Lo"  # 中 and 文 come last (count 1, highest code points)
    assert any(r[0] == "dos" and r[2] == "<cr>" for r in chars[1:])

    non_ascii = read_csv(out / "non_ascii.csv")
    assert non_ascii[0] == ["corpus", "character", "code_point", "category", "category_name",
                            "count"]
    assert ["small", "€", "U+20AC", "Sc", "Symbol, currency", "1"] in non_ascii
    assert ["small", "é", "U+00E9", "Ll", "Letter, lowercase", "1"] in non_ascii
    assert ["dos", "©", "U+00A9", "So", "Symbol, other", "5"] in non_ascii
    assert all(ord(r[1]) >= 128 for r in non_ascii[1:])

    for name in ("chars_small.png", "chars_dos.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_write_stats_refuses_two_corpora_of_one_name(small, tmp_path):
    s = corpus_stats(str(small))
    with pytest.raises(LmscopeError, match="two corpora are named 'small'"):
        write_stats([s, s], tmp_path / "out")


def test_unknown_corpus():
    with pytest.raises(LmscopeError, match="unknown corpus 'shakespear'.*did you mean"):
        corpus_stats("shakespear")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(LmscopeError, match="empty"):
        corpus_stats(str(path))


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 5)
    with pytest.raises(LmscopeError, match="not valid UTF-8"):
        corpus_stats(str(path))


def test_shakespeare(shared_data):
    s = corpus_stats("shakespeare")
    assert s.n_unique == s.n_unique_universal_newlines == 65
    assert s.n_chars == s.n_bytes == 1_115_394
    assert [c for c, _ in s.top(5)] == [" ", "e", "t", "o", "a"]
    assert s.n_lines == 40_000 and s.n_non_ascii == 0


def test_wikipedia(shared_data):
    s = corpus_stats("wikipedia")
    assert s.n_unique == 260
    assert s.n_unique_universal_newlines == 259
    assert s.n_crlf == s.counts["\r"] == s.n_lines == 2_891
    assert s.top(1)[0][0] == " "
    assert {"Ll", "Lo", "Sc"} <= set(s.non_ascii())


def test_math_is_both_files(shared_data):
    s = corpus_stats("math")
    assert s.n_bytes == 3_925_837 + 707_137
    assert s.n_unique == 117  # 115 in train, 100 in test, 117 together
