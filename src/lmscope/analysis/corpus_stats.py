"""Corpus statistics: size, characters, their frequencies and the characters outside ASCII.

`corpus_stats` streams a corpus (all its splits) chunk by chunk and counts every character;
`compute(corpora)` does it for several and returns a `CorpusStatsResult`, whose `save` writes a
JSON file, a table across corpora (CSV and Markdown), long-form CSVs of all characters and of the
non-ASCII ones grouped by Unicode category, and one bar plot of the most frequent characters per
corpus (`load` reads the JSON file back).

Line endings are kept as they are in the files: "\\r" counts as a character of its own
(shown as <cr>). `n_unique_universal_newlines` is the number of distinct characters when the
text is read in universal-newline mode ("\\r\\n" and a lone "\\r" read as "\\n"), as
`open(path).read()` does.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from lmscope.data import corpora
from lmscope.data.chars import VISIBLE, visible
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_json, atomic_write_text
from lmscope.render.plots import bar_chart
from lmscope.render.tables import markdown_table, write_csv

CATEGORY_NAMES = {
    "Lu": "Letter, uppercase", "Ll": "Letter, lowercase", "Lt": "Letter, titlecase",
    "Lm": "Letter, modifier", "Lo": "Letter, other",
    "Mn": "Mark, nonspacing", "Mc": "Mark, spacing combining", "Me": "Mark, enclosing",
    "Nd": "Number, decimal digit", "Nl": "Number, letter", "No": "Number, other",
    "Pc": "Punctuation, connector", "Pd": "Punctuation, dash", "Ps": "Punctuation, open",
    "Pe": "Punctuation, close", "Pi": "Punctuation, initial quote",
    "Pf": "Punctuation, final quote", "Po": "Punctuation, other",
    "Sm": "Symbol, math", "Sc": "Symbol, currency", "Sk": "Symbol, modifier",
    "So": "Symbol, other",
    "Zs": "Separator, space", "Zl": "Separator, line", "Zp": "Separator, paragraph",
    "Cc": "Other, control", "Cf": "Other, format", "Cs": "Other, surrogate",
    "Co": "Other, private use", "Cn": "Other, not assigned",
}
TABLE_TOP = 5  # most frequent characters in the table across corpora
EXAMPLES = 5  # example characters per Unicode category in that table


def shown(char: str) -> str:
    """A character for a table: visible() names, and U+XXXX for combining marks too."""
    if unicodedata.category(char).startswith("M"):
        return f"U+{ord(char):04X}"
    return visible(char)


def code_point(char: str) -> str:
    return f"U+{ord(char):04X}"


def unshown(text: str) -> str:
    """The character `shown` gave `text` for."""
    named = {name: char for char, name in VISIBLE.items()}
    if text in named:
        return named[text]
    if text.startswith("U+") and len(text) > 2:
        return chr(int(text[2:], 16))
    return text


@dataclass
class CorpusStats:
    name: str  # corpus short name
    n_bytes: int
    n_chars: int
    n_lines: int  # lines in universal-newline mode (a last line without newline counts)
    n_words: int  # whitespace-separated
    counts: dict[str, int]  # every character -> count (all splits of the corpus)
    splits: dict[str, int]  # split name -> characters in it
    n_crlf: int = 0  # "\r\n" pairs
    files: list[str] = field(default_factory=list)

    @property
    def n_unique(self) -> int:
        """Distinct code points, "\\r" included."""
        return len(self.counts)

    @property
    def n_unique_universal_newlines(self) -> int:
        """Distinct characters with "\\r\\n" and a lone "\\r" read as "\\n"."""
        chars = set(self.counts)
        if "\r" in chars:
            chars.discard("\r")
            chars.add("\n")
        return len(chars)

    def top(self, k: int | None = None) -> list[tuple[str, int]]:
        """The k most frequent characters with their counts (all when k is None).

        Ties are broken by code point, so the order does not depend on the text's order."""
        ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return ranked if k is None else ranked[:k]

    def share(self, char: str) -> float:
        """The share of `char` among all characters, in %."""
        return 100.0 * self.counts.get(char, 0) / self.n_chars

    def non_ascii(self) -> dict[str, list[tuple[str, int]]]:
        """Characters with code point >= 128 by Unicode category ("Ll", "So", ...).

        Categories come in order of their total count, characters by count."""
        groups: dict[str, list[tuple[str, int]]] = {}
        for char, n in self.top():
            if ord(char) >= 128:
                groups.setdefault(unicodedata.category(char), []).append((char, n))
        return dict(sorted(groups.items(), key=lambda kv: (-sum(n for _, n in kv[1]), kv[0])))

    @property
    def n_non_ascii(self) -> int:
        """Occurrences of characters with code point >= 128."""
        return sum(n for char, n in self.counts.items() if ord(char) >= 128)

    @property
    def n_non_ascii_distinct(self) -> int:
        return sum(1 for char in self.counts if ord(char) >= 128)

    def to_dict(self) -> dict:
        """JSON-serialisable; characters are keyed by their visible names (<space>, U+00A0)."""
        return {
            "name": self.name,
            "files": self.files,
            "n_bytes": self.n_bytes,
            "n_chars": self.n_chars,
            "n_lines": self.n_lines,
            "n_words": self.n_words,
            "n_unique": self.n_unique,
            "n_unique_universal_newlines": self.n_unique_universal_newlines,
            "n_crlf": self.n_crlf,
            "splits": dict(self.splits),
            "top": [{"char": shown(c), "code_point": code_point(c), "count": n,
                     "share_percent": round(self.share(c), 4)} for c, n in self.top(TABLE_TOP)],
            "non_ascii": {
                "occurrences": self.n_non_ascii,
                "distinct": self.n_non_ascii_distinct,
                "by_category": {
                    cat: {"name": CATEGORY_NAMES.get(cat, cat), "distinct": len(chars),
                          "occurrences": sum(n for _, n in chars),
                          "chars": {shown(c): n for c, n in chars}}
                    for cat, chars in self.non_ascii().items()
                },
            },
            "counts": {shown(c): n for c, n in self.top()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> CorpusStats:
        """The stats `to_dict` wrote."""
        return cls(name=d["name"], n_bytes=d["n_bytes"], n_chars=d["n_chars"],
                   n_lines=d["n_lines"], n_words=d["n_words"],
                   counts={unshown(c): n for c, n in d["counts"].items()},
                   splits=dict(d["splits"]), n_crlf=d["n_crlf"], files=list(d["files"]))


def corpus_stats(corpus: str, *, val_fraction: float = 0.1,
                 chunk_size: int = 1 << 20) -> CorpusStats:
    """corpus: a registry name ("shakespeare", "math", "wikipedia", ...) or a path to a text
    file/folder. Every split is counted; the text is streamed, never held whole."""
    c = corpora.resolve(corpus, val_fraction=val_fraction)
    counts: Counter[str] = Counter()
    splits: dict[str, int] = {}
    n_words = n_crlf = 0
    last = ""  # the last character seen, across chunks and splits (they are contiguous)
    for split, ranges in c.splits.items():
        n = 0
        for chunk in corpora.iter_text(ranges, chunk_size=chunk_size):
            counts.update(chunk)
            n += len(chunk)
            n_crlf += chunk.count("\r\n") + (last == "\r" and chunk[0] == "\n")
            # a word cut by the chunk boundary was already counted in the last chunk
            n_words += len(chunk.split()) - (bool(last) and not last.isspace()
                                             and not chunk[0].isspace())
            last = chunk[-1]
        splits[split] = n
    n_chars = sum(splits.values())
    if n_chars == 0:
        raise LmscopeError(f"corpus {c.name} is empty")
    newlines = counts["\n"] + counts["\r"] - n_crlf  # universal newlines: \n, \r\n, lone \r
    n_lines = newlines + (last not in "\r\n")
    return CorpusStats(
        name=c.name,
        n_bytes=sum(c.n_bytes(split) for split in c.splits),
        n_chars=n_chars,
        n_lines=n_lines,
        n_words=n_words,
        counts=dict(counts),
        splits=splits,
        n_crlf=n_crlf,
        files=[str(p) for p in c.files],
    )


# --- output --------------------------------------------------------------------------------------

TABLE_HEADER = ["corpus", "bytes", "characters", "lines", "words", "unique_characters",
                "unique_universal_newlines", "top5", "non_ascii_occurrences",
                "non_ascii_distinct", "non_ascii_examples"]
MD_HEADER = ["corpus", "bytes", "characters", "lines", "words", "unique characters",
             "top 5 (share)", "non-ASCII (occurrences / distinct)", "non-ASCII examples"]


def _top_cell(s: CorpusStats) -> str:
    return ", ".join(f"{shown(c)} {s.share(c):.1f}%" for c, _ in s.top(TABLE_TOP))


def _examples_cell(s: CorpusStats) -> str:
    parts = []
    for cat, chars in s.non_ascii().items():
        more = f" (+{len(chars) - EXAMPLES})" if len(chars) > EXAMPLES else ""
        parts.append(f"{cat}: " + " ".join(shown(c) for c, _ in chars[:EXAMPLES]) + more)
    return "; ".join(parts)


def _unique_cell(s: CorpusStats) -> str:
    if s.n_unique_universal_newlines == s.n_unique:
        return str(s.n_unique)
    return f"{s.n_unique} ({s.n_unique_universal_newlines} with universal newlines)"


def _file_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name) or "corpus"


@dataclass
class CorpusStatsResult:
    """The statistics of several corpora, and how many characters each plot shows."""

    stats: list[CorpusStats]
    top: int = 30

    def save(self, out_dir) -> list[Path]:
        return write_stats(self.stats, out_dir, top=self.top)

    @classmethod
    def load(cls, out_dir) -> CorpusStatsResult:
        d = json.loads((Path(out_dir) / "stats.json").read_text(encoding="utf-8"))
        return cls([CorpusStats.from_dict(c) for c in d["corpora"]])


def compute(names: list[str], *, top: int = 30, val_fraction: float = 0.1) -> CorpusStatsResult:
    """The statistics of each corpus (a registry name or a path)."""
    return CorpusStatsResult([corpus_stats(c, val_fraction=val_fraction) for c in names], top)


def write_stats(stats: list[CorpusStats], out_dir, *, top: int = 30) -> list[Path]:
    """Write the stats of the corpora into out_dir and return the paths written:

    stats.json         all corpora, full detail (counts too)
    table.csv/.md      one row per corpus: size, unique characters, top 5 with their share,
                       non-ASCII occurrences / distinct and a few examples per Unicode category
    chars.csv          long form, every character of every corpus, by rank
    non_ascii.csv      long form, characters with code point >= 128 by category
    chars_<name>.png   per corpus: the `top` most frequent characters, share in %
    """
    if not stats:
        raise LmscopeError("no corpora to write statistics for")
    names = [_file_name(s.name) for s in stats]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise LmscopeError(f"two corpora are named {twice[0]!r}: give each corpus once, or "
                           "copy one to a file or folder with another name")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    path = out / "stats.json"
    atomic_write_json(path, {"corpora": [s.to_dict() for s in stats]})
    written.append(path)

    rows = [[s.name, s.n_bytes, s.n_chars, s.n_lines, s.n_words, s.n_unique,
             s.n_unique_universal_newlines, _top_cell(s), s.n_non_ascii, s.n_non_ascii_distinct,
             _examples_cell(s)] for s in stats]
    written.append(write_csv(out / "table.csv", TABLE_HEADER, rows))
    md_rows = [[s.name, f"{s.n_bytes:,}", f"{s.n_chars:,}", f"{s.n_lines:,}", f"{s.n_words:,}",
                _unique_cell(s), _top_cell(s), f"{s.n_non_ascii:,} / {s.n_non_ascii_distinct}",
                _examples_cell(s) or "none"] for s in stats]
    path = out / "table.md"
    atomic_write_text(path, markdown_table(MD_HEADER, md_rows))
    written.append(path)

    rows = [[s.name, rank, shown(c), code_point(c), unicodedata.category(c), n, s.share(c)]
            for s in stats for rank, (c, n) in enumerate(s.top(), 1)]
    written.append(write_csv(out / "chars.csv", ["corpus", "rank", "character", "code_point",
                                                 "category", "count", "share_percent"], rows))
    rows = [[s.name, shown(c), code_point(c), cat, CATEGORY_NAMES.get(cat, cat), n]
            for s in stats for cat, chars in s.non_ascii().items() for c, n in chars]
    written.append(write_csv(out / "non_ascii.csv", ["corpus", "character", "code_point",
                                                     "category", "category_name", "count"],
                             rows))

    for s, name in zip(stats, names, strict=True):
        ranked = s.top(top)
        written.append(bar_chart(
            [shown(c) for c, _ in ranked], [s.share(c) for c, _ in ranked],
            out / f"chars_{name}.png",
            title=f"{s.name}: the {len(ranked)} most frequent of {s.n_unique} characters",
            ylabel="share of characters (%)"))
    return written
