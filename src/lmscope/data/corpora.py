"""Corpora by name or by path: which local files hold the bytes, and how they split.

A corpus is a list of files read as one byte stream. Its splits are byte ranges into
those files, so nothing is loaded until a tokenizer walks them with `iter_bytes` or
`iter_text`.

`resolve(spec)` looks in this order and takes the first that has the files:

1. `spec` as an existing file or folder. A folder means all its regular, non-hidden
   files, sorted by name and concatenated (subfolders are ignored), split by the
   contiguous tail. One exception: if the files have exactly the names of a registry
   corpus and match its sizes and sha256 (e.g. `../shared/data/math`, or a downloaded
   `enwik8`), they are that corpus and its own split applies.
2. `$LMSCOPE_DATA/<name>/` holding the registry files of `<name>`.
3. The cache, `cache_dir()/corpora/<name>/`.
4. A download into that cache folder, checked against the sha256 (or size and format)
   below before it is renamed into place.

Files found in 2 and 3 are checked the same way. Their sha256 is computed once and
remembered in `cache_dir()/hashes.json`, keyed by path, size and mtime.
"""

from __future__ import annotations

import codecs
import contextlib
import difflib
import hashlib
import http.client
import json
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from lmscope.errors import LmscopeError
from lmscope.io import atomic_write, atomic_write_json, cache_dir, path_exists, user_path

TIMEOUT = 30.0  # seconds; an offline machine should fail fast, not hang
ENWIK8_SPLIT: tuple[tuple[str, int], ...] = (
    ("train", 90_000_000),
    ("val", 5_000_000),
    ("test", 5_000_000),
)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One file of a registry corpus and where to download it."""

    name: str  # file name inside the corpus folder, e.g. "input.txt"
    url: str  # canonical download location
    sha256: str | None  # sha256 of the final local file (after `prepare`); None if not at hand
    size: int | None  # size in bytes of the final file
    prepare: str = "none"  # "none" | "unzip:<member>" | "gsm8k-jsonl"
    note: str = ""


@dataclass(frozen=True)
class CorpusSpec:
    """A named corpus: its files, licence and how it splits into train/val(/test)."""

    name: str
    description: str
    license: str
    files: tuple[RemoteFile, ...]
    split: str  # "tail" | "files" | "enwik8" (90M/5M/5M bytes)
    train_files: tuple[str, ...] = ()  # for split="files"
    val_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class ByteRange:
    """Bytes [start, end) of one file."""

    path: Path
    start: int
    end: int  # exclusive


@dataclass(frozen=True)
class Corpus:
    """Local files of a corpus and the byte ranges of each split."""

    name: str  # registry name, or the file/folder stem for a user path
    source: str  # "path", "$LMSCOPE_DATA/<name>", "cache" or "download"
    files: tuple[Path, ...]
    splits: dict[str, tuple[ByteRange, ...]] = field(hash=False)  # "train", "val" (+ "test")
    spec: CorpusSpec | None = None  # None for user paths

    def n_bytes(self, split: str) -> int:
        """Number of bytes in `split`."""
        if split not in self.splits:
            have = ", ".join(self.splits)
            raise LmscopeError(f"corpus {self.name} has no {split!r} split (it has: {have})")
        return sum(r.end - r.start for r in self.splits[split])

    def fingerprint(self) -> str:
        """Hex digest of the file contents and the split ranges (not of the paths).

        The same bytes split the same way give the same fingerprint wherever they live,
        so it can key a token cache.
        """
        h = hashlib.sha256(b"lmscope-corpus-v1\n")
        index = {p: i for i, p in enumerate(self.files)}
        for p in self.files:
            h.update(f"file {file_sha256(p)} {p.stat().st_size}\n".encode())
        for name in sorted(self.splits):
            for r in self.splits[name]:
                h.update(f"{name} {index[r.path]} {r.start} {r.end}\n".encode())
        return h.hexdigest()


class DownloadError(LmscopeError):
    """A file could not be fetched at all (no connection, timeout, HTTP error)."""


# ---------------------------------------------------------------------------------------
# The registry. Sizes and sha256 are those in shared/data/SOURCES.md.


def _github(repo: str, commit: str, path: str) -> str:
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


_GSM8K = "openai/grade-school-math", "3101c7d5072418e28b9008a6636bde82a006892c"
_GSM8K_NOTE = (
    "derived from GSM8K {}.jsonl: per line question.strip() + '\\n' + answer.strip() + "
    "'\\n\\n', UTF-8, LF; the sha256 is that of the derived text"
)
_ZIP_NOTE = (
    "sha256 not at hand when this registry was written: the download is checked by size "
    "(100,000,000 bytes) and by the zip holding member {!r} (whose CRC zipfile checks)"
)

REGISTRY: dict[str, CorpusSpec] = {
    s.name: s
    for s in [
        CorpusSpec(
            name="shakespeare",
            description="Tiny Shakespeare: 40,000 lines of plays in speaker/line form (ASCII, LF)",
            license="text public domain; file from karpathy/char-rnn (MIT)",
            files=(
                RemoteFile(
                    "input.txt",
                    _github(
                        "karpathy/char-rnn",
                        "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e",
                        "data/tinyshakespeare/input.txt",
                    ),
                    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                    1115394,
                    note="same blob as nanoGPT's shakespeare_char input",
                ),
            ),
            split="tail",
        ),
        CorpusSpec(
            name="wikipedia",
            description="WikiText-2 raw, test split: 60 Wikipedia articles (CRLF line endings)",
            license="CC BY-SA 3.0 and GFDL (Wikipedia text via WikiText-2)",
            files=(
                RemoteFile(
                    "wiki.test.raw",
                    _github(
                        "Tylogi/TyloQuant",
                        "7989d038b13ca737da11a95fb90e77ae059f33c0",
                        "data/wikitext-2-raw/wiki.test.raw",
                    ),
                    "4f3e427e4aff23acff917a8a51aeae21bf12832256e26914c8fc250dcef4103c",
                    1290547,
                    note="byte-for-byte the wikitext-2-raw-v1 test split (Salesforce/wikitext)",
                ),
            ),
            split="tail",
        ),
        CorpusSpec(
            name="math",
            description="GSM8K grade-school math word problems with worked solutions, as text",
            license="MIT (GSM8K, Copyright (c) 2021 OpenAI)",
            files=(
                RemoteFile(
                    "gsm8k_train.txt",
                    _github(*_GSM8K, "grade_school_math/data/train.jsonl"),
                    "6cd04b89a6668022ee53ca259cb4538c124ef974aa21ebd78fb9076262a9757f",
                    3925837,
                    prepare="gsm8k-jsonl",
                    note=_GSM8K_NOTE.format("train"),
                ),
                RemoteFile(
                    "gsm8k_test.txt",
                    _github(*_GSM8K, "grade_school_math/data/test.jsonl"),
                    "eec332a920e378da50b452d35ec36c77edf780210f78f1c20318d2146ee1253c",
                    707137,
                    prepare="gsm8k-jsonl",
                    note=_GSM8K_NOTE.format("test"),
                ),
            ),
            split="files",
            train_files=("gsm8k_train.txt",),
            val_files=("gsm8k_test.txt",),
        ),
        CorpusSpec(
            name="tinystories",
            description="The start of TinyStories train and validation (blank-line separated)",
            license="CDLA-Sharing-1.0 (TinyStories); host repos: smallGPT (no licence), "
            "moe-routing-bench (MIT)",
            files=(
                RemoteFile(
                    "train_head.txt",
                    _github(
                        "s-ajaykumar/smallGPT",
                        "b8b899265a5574abd2c19d8857039309184a357c",
                        "data/tiny_stories.txt",
                    ),
                    "c56cfd24fb1c542b141a396184b822a4db3672abdb4c49c6aa843171c5e822a5",
                    944426,
                    note="first 942,640 characters of the TinyStories train stream",
                ),
                RemoteFile(
                    "valid_head.txt",
                    _github(
                        "yuninxia/moe-routing-bench",
                        "bb9bb0bd461aa77cf6ab89423b758f586a6f75d1",
                        "data/tinystories_val.txt",
                    ),
                    "5fc1fb0113df62b567fb271806cd645ce8d75f59c58ca0b764c03d3b6ff34ca6",
                    794375,
                    note="the start of the TinyStories validation split",
                ),
            ),
            split="files",
            train_files=("train_head.txt",),
            val_files=("valid_head.txt",),
        ),
        CorpusSpec(
            name="enwik8",
            description="First 100M bytes of an English Wikipedia XML dump (Hutter Prize)",
            license="CC BY-SA (Wikipedia text)",
            files=(
                RemoteFile(
                    "enwik8",
                    "http://mattmahoney.net/dc/enwik8.zip",
                    None,
                    100_000_000,
                    prepare="unzip:enwik8",
                    note=_ZIP_NOTE.format("enwik8"),
                ),
            ),
            split="enwik8",
        ),
        CorpusSpec(
            name="text8",
            description="enwik9 cleaned to lowercase a-z and spaces, first 100M characters",
            license="CC BY-SA (Wikipedia text)",
            files=(
                RemoteFile(
                    "text8",
                    "http://mattmahoney.net/dc/text8.zip",
                    None,
                    100_000_000,
                    prepare="unzip:text8",
                    note=_ZIP_NOTE.format("text8"),
                ),
            ),
            split="enwik8",
        ),
        CorpusSpec(
            name="3seqs",
            description="10,000 lines of integer sequences (counting, doubling, Fibonacci-like)",
            license="none stated (amord112/pico-llm has no LICENSE file)",
            files=(
                RemoteFile(
                    "3seqs.txt",
                    _github(
                        "amord112/pico-llm", "bd63485eca1312138bc322c0292c4b2036b7f0a8", "3seqs.txt"
                    ),
                    "90c48b30c51fd4309d59d2f826f53a96f3d3a7d7bd89c8d198930cbeb97fae4b",
                    935774,
                    note="a student's larger regenerated variant, not the pico-llm course's file",
                ),
            ),
            split="tail",
        ),
    ]
}


def list_corpora() -> list[CorpusSpec]:
    """All registry corpora, in registry order."""
    return list(REGISTRY.values())


def local_copy(spec: CorpusSpec) -> tuple[str, Path] | None:
    """Where `resolve` would find a registry corpus without downloading: (source, folder), the
    source as in `Corpus.source`; None if neither $LMSCOPE_DATA nor the cache holds its files.
    Only that the files are there is checked; `resolve` checks their sizes and sha256."""
    data = os.environ.get("LMSCOPE_DATA")
    if data:
        folder = Path(data).expanduser().absolute() / spec.name
        if not _missing(folder, spec):
            return f"$LMSCOPE_DATA/{spec.name}", folder
    cache = cache_dir().absolute() / "corpora" / spec.name
    if not _missing(cache, spec):
        return "cache", cache
    return None


# ---------------------------------------------------------------------------------------
# Resolution


def resolve(spec: str, *, val_fraction: float = 0.1, download: bool = True) -> Corpus:
    """Turn a corpus name or a path into local files and split byte ranges.

    See the module docstring for the search order. `val_fraction` is the tail fraction
    used by "tail" splits (user paths, shakespeare, wikipedia, 3seqs). With
    `download=False` a registry corpus that is not found locally is an error.
    """
    if not 0.0 < val_fraction < 1.0:
        raise LmscopeError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    path = user_path(spec).absolute()  # absolute, so a later chdir cannot break it
    if path_exists(path):
        return _from_path(path, val_fraction)
    if spec not in REGISTRY:
        raise _unknown(spec)

    cs = REGISTRY[spec]
    looked: list[str] = []
    data = os.environ.get("LMSCOPE_DATA")
    if data:
        folder = Path(data).expanduser().absolute() / cs.name
        missing = _missing(folder, cs)
        if not missing:
            return _build(cs, folder, f"$LMSCOPE_DATA/{cs.name}", val_fraction)
        looked.append(f"$LMSCOPE_DATA/{cs.name} = {folder} ({missing})")
    else:
        looked.append("$LMSCOPE_DATA (not set)")

    cache = cache_dir().absolute() / "corpora" / cs.name
    missing = _missing(cache, cs)
    if not missing:
        return _build(cs, cache, "cache", val_fraction)
    looked.append(f"cache {cache} ({missing})")

    if download:
        try:
            _download(cs, cache, progress=True)
        except DownloadError as e:
            looked.append(f"download: {e}")
        else:
            return _build(cs, cache, "download", val_fraction)
    else:
        looked.append("download (turned off)")

    names = ", ".join(f.name for f in cs.files)
    raise LmscopeError(
        f"corpus {cs.name} not found; looked in: {'; '.join(looked)}. "
        f"Give the path to the file(s) instead of the name, set LMSCOPE_DATA to a folder "
        f"whose {cs.name}/ subfolder holds {names}, or put {names} in {cache}"
    )


def parse_mixture(spec: str) -> list[tuple[str, float]]:
    """Split a training-data spec into (corpus, weight) parts whose weights sum to 1.

    `"shakespeare"` is one corpus with weight 1; `"tinystories:0.7+3seqs:0.3"` is a mixture
    whose batches draw each sequence from tinystories with probability 0.7 and from 3seqs with
    0.3 (a part without `:WEIGHT` weighs 1; weights are normalized). A spec that is an existing
    path is always one corpus, whatever characters its name has.
    """
    if not spec or path_exists(user_path(spec)):
        return [(spec, 1.0)]
    parts: list[tuple[str, float]] = []
    for item in spec.split("+"):
        name, sep, weight_text = item.rpartition(":")
        weight = None
        if sep and name:
            try:
                weight = float(weight_text)
            except ValueError:
                weight = None
        if weight is None:
            name, weight = item, 1.0
        name = name.strip()
        if not name:
            raise LmscopeError(f"data spec {spec!r} has an empty corpus name; "
                               "write it as CORPUS or CORPUS:WEIGHT+CORPUS:WEIGHT")
        if not (weight > 0 and weight != float("inf")):
            raise LmscopeError(f"data spec {spec!r}: the weight of {name} must be a positive "
                               f"number, got {weight_text}")
        if any(name == seen for seen, _ in parts):
            raise LmscopeError(f"data spec {spec!r} names {name} twice")
        parts.append((name, weight))
    total = sum(w for _, w in parts)
    return [(name, w / total) for name, w in parts]


def mixture_spec(parts: Sequence[tuple[str, float]]) -> str:
    """The spec string of (corpus, weight) parts; one part with weight 1 is just its name."""
    if len(parts) == 1 and parts[0][1] == 1.0:
        return parts[0][0]
    return "+".join(f"{name}:{weight:g}" for name, weight in parts)


@dataclass(frozen=True)
class Mixture:
    """The training data of a run, parsed once: one corpus, or several drawn by weight.

    `Mixture.parse("tinystories:0.7+3seqs:0.3")` (the `data.corpus` value) and
    `Mixture.from_items(["tinystories:0.7", "3seqs:0.3"])` (repeated `--data`) give the same
    parts; `str(mixture)` is the spec again, with weights normalized."""

    parts: tuple[tuple[str, float], ...]  # (registry name or path, weight); weights sum to 1

    @classmethod
    def parse(cls, spec: str) -> Mixture:
        return cls(tuple(parse_mixture(spec)))

    @classmethod
    def from_items(cls, items: Sequence[str]) -> Mixture:
        """Several CORPUS[:WEIGHT] items (the command line's repeated --data) as one mixture."""
        return cls.parse("+".join(items))

    def __str__(self) -> str:
        return mixture_spec(self.parts)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.parts]

    @property
    def weights(self) -> list[float]:
        return [weight for _, weight in self.parts]

    def absolute(self) -> Mixture:
        """The same mixture with every part that names an existing path made absolute, so a
        run resumes from any working folder."""
        return Mixture(tuple((absolute_if_path(name), w) for name, w in self.parts))

    @property
    def label(self) -> str:
        """A short name: 'shakespeare' for the registry's, 'notes' for notes.txt; a mixture's
        parts are each shortened ('tinystories:0.7+notes:0.3')."""
        if len(self.parts) > 1:
            return mixture_spec([(corpus_label(name), w) for name, w in self.parts])
        name = self.parts[0][0]
        path = Path(name)
        return path.stem if path.suffix else path.name or name

    @property
    def folder_name(self) -> str:
        """`label` made fit for a folder name: the mixture a:0.7+b:0.3 gives a0.7-b0.3."""
        return _folder_form(self.label)


def corpus_label(corpus: str) -> str:
    """`Mixture.label` of a corpus given as text; text that is not a valid spec is shortened as
    one name (for display, never an error)."""
    try:
        return Mixture.parse(corpus).label
    except LmscopeError:
        return Mixture(((corpus, 1.0),)).label


def folder_name(corpus: str) -> str:
    """`Mixture.folder_name` of a corpus given as text (the one corpus-to-folder rule of run
    defaults, study runs, transfer pairs and seed datasets)."""
    return _folder_form(corpus_label(corpus))


def _folder_form(label: str) -> str:
    return label.replace(":", "").replace("+", "-")


def absolute_if_path(corpus: str) -> str:
    """`corpus` made absolute where it names an existing file or folder; a name stays a name."""
    path = user_path(corpus)
    return str(path.resolve()) if path_exists(path) else corpus


def _unknown(spec: str) -> LmscopeError:
    known = ", ".join(REGISTRY)
    if "/" in spec or os.sep in spec or spec.startswith(("~", ".")) or Path(spec).suffix:
        return LmscopeError(
            f"no such file or folder: {spec}; give an existing path or a known corpus ({known})"
        )
    close = difflib.get_close_matches(spec.lower(), list(REGISTRY), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return LmscopeError(
        f"unknown corpus {spec!r} (and no file or folder by that name); known corpora: "
        f"{known}{hint}"
    )


def _missing(folder: Path, cs: CorpusSpec) -> str:
    """Why `folder` does not hold the files of `cs`, or "" if it does."""
    if not folder.is_dir():
        return "no such folder"
    gone = [f.name for f in cs.files if not (folder / f.name).is_file()]
    return f"missing {', '.join(gone)}" if gone else ""


def _from_path(path: Path, val_fraction: float) -> Corpus:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise LmscopeError(f"corpus folder {path} has no files: put text files in it")
        name = path.resolve().name
    elif path.is_file():
        files = [path]
        name = path.stem
    else:
        raise LmscopeError(f"{path} is neither a regular file nor a folder: give a text file")

    cs = _matching_spec(files)
    if cs is not None:
        return _build(cs, files[0].parent, "path", val_fraction)
    return Corpus(name, "path", tuple(files), tail_split(files, val_fraction, name=name), None)


def _matching_spec(files: Sequence[Path]) -> CorpusSpec | None:
    """The registry corpus whose files are exactly `files` (same names, sizes, sha256)."""
    names = sorted(f.name for f in files)
    by_name = {f.name: f for f in files}
    for cs in REGISTRY.values():
        if sorted(rf.name for rf in cs.files) != names:
            continue
        if all(_problem(by_name[rf.name], rf) is None for rf in cs.files):
            return cs
    return None


def _build(cs: CorpusSpec, folder: Path, source: str, val_fraction: float) -> Corpus:
    files = tuple(folder / rf.name for rf in cs.files)
    for path, rf in zip(files, cs.files, strict=True):
        problem = _problem(path, rf)
        if problem:
            raise LmscopeError(
                f"{path} is not the registry's {cs.name}/{rf.name} ({problem}); delete or "
                f"replace it, or pass its path to use it as it is"
            )
    if cs.split == "tail":
        splits = tail_split(files, val_fraction, name=cs.name)
    elif cs.split == "files":
        by_name = {p.name: p for p in files}
        splits = {
            "train": _whole_files([by_name[n] for n in cs.train_files], "train", cs.name),
            "val": _whole_files([by_name[n] for n in cs.val_files], "val", cs.name),
        }
    elif cs.split == "enwik8":
        splits = fixed_split(files, ENWIK8_SPLIT, name=cs.name)
    else:
        raise ValueError(f"unknown split kind {cs.split!r} in registry entry {cs.name}")
    return Corpus(cs.name, source, files, splits, cs)


def _problem(path: Path, rf: RemoteFile) -> str | None:
    """How the local `path` differs from `rf` (size first, then sha256), or None."""
    size = path.stat().st_size
    if rf.size is not None and size != rf.size:
        return f"{size:,} bytes, expected {rf.size:,}"
    if rf.sha256 is not None:
        digest = file_sha256(path)
        if digest != rf.sha256:
            return f"sha256 {digest}, expected {rf.sha256}"
    return None


# ---------------------------------------------------------------------------------------
# Splits


def _label(name: str) -> str:
    return f"corpus {name}" if name else "the corpus"


def _sizes(files: Sequence[Path]) -> list[int]:
    return [Path(f).stat().st_size for f in files]


def _ranges(files: Sequence[Path], sizes: Sequence[int], start: int, end: int) -> tuple:
    """Map [start, end) of the concatenated stream to per-file ranges."""
    out, off = [], 0
    for f, n in zip(files, sizes, strict=True):
        s, e = max(start, off), min(end, off + n)
        if s < e:
            out.append(ByteRange(Path(f), s - off, e - off))
        off += n
    return tuple(out)


def _char_boundary(files: Sequence[Path], sizes: Sequence[int], pos: int) -> int:
    """Move `pos` forward past UTF-8 continuation bytes (at most 3) to a character start."""
    head = b"".join(iter_bytes(_ranges(files, sizes, pos, pos + 3)))
    k = 0
    while k < len(head) and (head[k] & 0xC0) == 0x80:
        k += 1
    return pos + k


def tail_split(
    files: Sequence[Path], val_fraction: float, *, name: str = ""
) -> dict[str, tuple[ByteRange, ...]]:
    """Train = the first (1 - val_fraction) of the concatenated bytes, val = the rest.

    The cut is moved forward to the start of a UTF-8 character, so both halves decode.
    """
    if not 0.0 < val_fraction < 1.0:
        raise LmscopeError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    sizes = _sizes(files)
    total = sum(sizes)
    if total == 0:
        raise LmscopeError(f"{_label(name)} is empty ({', '.join(str(f) for f in files)})")
    cut = _char_boundary(files, sizes, int(total * (1 - val_fraction)))
    if cut <= 0 or cut >= total:
        which = "train" if cut <= 0 else "val"
        raise LmscopeError(
            f"{_label(name)} ({total} byte{'s' * (total != 1)}) is too short to split: the "
            f"{which} split would be empty (val_fraction {val_fraction}); use a longer text or "
            "another val_fraction"
        )
    return {"train": _ranges(files, sizes, 0, cut), "val": _ranges(files, sizes, cut, total)}


def fixed_split(
    files: Sequence[Path], parts: Sequence[tuple[str, int]], *, name: str = ""
) -> dict[str, tuple[ByteRange, ...]]:
    """Consecutive splits of fixed byte counts, e.g. enwik8's 90M/5M/5M train/val/test.

    The counts must add up to the corpus size. Inner cuts are moved forward to the start
    of a UTF-8 character (at most 3 bytes), so every split decodes as text.
    """
    sizes = _sizes(files)
    total = sum(sizes)
    want = sum(n for _, n in parts)
    if total != want:
        raise LmscopeError(
            f"{_label(name)} has {total:,} bytes, expected {want:,} for its "
            f"{'/'.join(s for s, _ in parts)} split"
        )
    out, start, nominal = {}, 0, 0
    for i, (split, n) in enumerate(parts):
        nominal += n
        end = total if i == len(parts) - 1 else _char_boundary(files, sizes, nominal)
        if end <= start:
            raise LmscopeError(f"the {split} split of {_label(name)} is empty")
        out[split] = _ranges(files, sizes, start, end)
        start = end
    return out


def _whole_files(files: Sequence[Path], split: str, name: str) -> tuple[ByteRange, ...]:
    ranges = tuple(ByteRange(f, 0, n) for f, n in zip(files, _sizes(files), strict=True) if n > 0)
    if not ranges:
        raise LmscopeError(
            f"the {split} split of {_label(name)} is empty ({', '.join(str(f) for f in files)})"
        )
    return ranges


# ---------------------------------------------------------------------------------------
# Reading


def iter_bytes(ranges: Sequence[ByteRange], chunk_size: int = _CHUNK) -> Iterator[bytes]:
    """The bytes of `ranges`, in order, in chunks of at most `chunk_size`."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    for r in ranges:
        with open(r.path, "rb") as f:
            f.seek(r.start)
            left = r.end - r.start
            while left > 0:
                chunk = f.read(min(chunk_size, left))
                if not chunk:
                    raise LmscopeError(
                        f"{r.path} ends before byte {r.end}: it changed after the corpus was "
                        f"resolved; resolve the corpus again"
                    )
                left -= len(chunk)
                yield chunk


def iter_text(ranges: Sequence[ByteRange], chunk_size: int = _CHUNK) -> Iterator[str]:
    """The text of `ranges`, decoded as strict UTF-8 across chunk and file boundaries.

    Newlines are kept as they are (no CRLF translation). Invalid UTF-8 raises
    LmscopeError naming the file and the byte offset.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    recent: list[tuple[Path, int, int]] = []  # (path, file offset, stream offset) of chunks
    stream = 0

    def fail(e: UnicodeDecodeError, at: int) -> LmscopeError:
        # `at` is the stream position of the first byte the decoder held back; e.start counts
        # from there
        pos = at + e.start
        path, offset = recent[-1][0], 0
        for p, foff, soff in reversed(recent):
            if soff <= pos:
                path, offset = p, foff + (pos - soff)
                break
        return LmscopeError(
            f"{path} is not valid UTF-8 at byte {offset} ({e.reason}): train on bytes "
            f"instead (--set data.tokenizer=byte) or fix the file"
        )

    for r in ranges:
        offset = r.start
        for chunk in iter_bytes([r], chunk_size):
            # held-back bytes (at most 3) may come from up to 3 earlier chunks
            recent = [*recent[-3:], (r.path, offset, stream)]
            offset += len(chunk)
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as e:
                raise fail(e, stream - pending) from None
            stream += len(chunk)
            if text:
                yield text
    if recent:
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(b"", final=True)
        except UnicodeDecodeError as e:
            raise fail(e, stream - pending) from None
        if text:
            yield text


# ---------------------------------------------------------------------------------------
# Hashes, remembered in cache_dir()/hashes.json


def _hash_path() -> Path:
    return cache_dir() / "hashes.json"


def _load_hashes() -> dict:
    try:
        data = json.loads(_hash_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember_hash(path: Path, digest: str) -> None:
    path = Path(path).resolve()
    st = path.stat()
    hashes = _load_hashes()
    hashes[str(path)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    with contextlib.suppress(OSError):  # only a speed-up: a read-only cache just rehashes
        atomic_write_json(_hash_path(), hashes)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's content, remembered by (absolute path, size, mtime_ns)."""
    path = Path(path).resolve()
    st = path.stat()
    entry = _load_hashes().get(str(path))
    if (
        isinstance(entry, dict)
        and entry.get("size") == st.st_size
        and entry.get("mtime_ns") == st.st_mtime_ns
        and isinstance(entry.get("sha256"), str)
    ):
        return entry["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    _remember_hash(path, digest)
    return digest


# ---------------------------------------------------------------------------------------
# Downloads


def download(spec: CorpusSpec, dest: Path, *, progress: bool = True) -> Path:
    """Fetch the files of `spec` that `dest` lacks (or holds wrong) into `dest`; return it.

    Each file is streamed to a temporary name, prepared (unzipped, or derived from GSM8K
    JSONL), checked against its sha256 or size, and only then renamed into place. A
    failed check deletes it and raises LmscopeError saying what was expected and what
    arrived; DownloadError (a LmscopeError) means the server could not be reached.
    """
    return _download(spec, Path(dest), progress=progress)


def _download(spec: CorpusSpec, dest: Path, *, progress: bool) -> Path:
    new_dirs = [d for d in [dest, *dest.parents] if not d.exists()]
    dest.mkdir(parents=True, exist_ok=True)
    try:
        for rf in spec.files:
            final = dest / rf.name
            if not (final.is_file() and _problem(final, rf) is None):
                _fetch_into(rf, final, progress)
    except BaseException:
        for d in new_dirs:  # deepest first; leave no empty folders behind
            try:
                d.rmdir()
            except OSError:
                break
        raise
    return dest


def _fetch_into(rf: RemoteFile, final: Path, progress: bool) -> None:
    digest: list[str] = []
    atomic_write(final, lambda tmp: digest.append(_fetch(rf, tmp, progress)))
    _remember_hash(final, digest[0])


def _fetch(rf: RemoteFile, out: Path, progress: bool) -> str:
    """Download `rf` into `out`, prepare and verify it; return its sha256."""
    kind, _, member = rf.prepare.partition(":")
    if kind == "none":
        digest, n = _get(rf.url, out, rf.name, progress)
    elif kind in ("unzip", "gsm8k-jsonl"):
        fd, raw_name = tempfile.mkstemp(prefix=f".{rf.name}.", suffix=".raw", dir=out.parent)
        os.close(fd)
        raw = Path(raw_name)
        try:
            _get(rf.url, raw, rf.name, progress)
            if kind == "unzip":
                digest, n = _unzip(raw, member or rf.name, out, rf.url)
            else:
                digest, n = _gsm8k_text(raw, out, rf.url)
        finally:
            raw.unlink(missing_ok=True)
    else:
        raise ValueError(f"unknown prepare step {rf.prepare!r} for {rf.name}")

    problems = []
    if rf.size is not None and n != rf.size:
        problems.append(f"expected {rf.size:,} bytes, got {n:,}")
    if rf.sha256 is not None and digest != rf.sha256:
        problems.append(f"expected sha256 {rf.sha256}, got {digest}")
    if problems:
        raise LmscopeError(
            f"download of {rf.name} from {rf.url} rejected: {'; '.join(problems)}; nothing "
            f"was saved"
        )
    return digest


def _get(url: str, out: Path, label: str, progress: bool) -> tuple[str, int]:
    """Stream `url` into `out`; return (sha256, byte count). Short reads are errors."""
    request = urllib.request.Request(url, headers={"User-Agent": "lmscope"})
    h, n = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as resp, open(out, "wb") as f:
            length = resp.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            with tqdm(
                total=expected,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"download {label}",
                disable=not progress,
            ) as bar:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    n += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url} answered HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"could not reach {url} ({e.reason})") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise DownloadError(f"download of {url} failed after {n:,} bytes ({e!r})") from None
    if expected is not None and n != expected:
        raise LmscopeError(
            f"download of {url} was cut off: the server announced {expected:,} bytes, "
            f"{n:,} arrived; nothing was saved"
        )
    return h.hexdigest(), n


def _unzip(raw: Path, member: str, out: Path, url: str) -> tuple[str, int]:
    """Extract `member` of the zip `raw` into `out`; return (sha256, byte count)."""
    h, n = hashlib.sha256(), 0
    try:
        with zipfile.ZipFile(raw) as z:
            if member not in z.namelist():
                have = ", ".join(z.namelist()[:5]) or "nothing"
                raise LmscopeError(
                    f"{url} arrived as a zip without the member {member!r} (it holds: {have}); "
                    f"nothing was saved"
                )
            with z.open(member) as src, open(out, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                    h.update(chunk)
                    n += len(chunk)
    except zipfile.BadZipFile as e:
        raise LmscopeError(
            f"{url} did not arrive as a valid zip ({e}); nothing was saved"
        ) from None
    return h.hexdigest(), n


def _gsm8k_text(raw: Path, out: Path, url: str) -> tuple[str, int]:
    """GSM8K JSONL to text: `question.strip() + "\\n" + answer.strip() + "\\n\\n"` per line."""
    h, n = hashlib.sha256(), 0
    with open(raw, "rb") as src, open(out, "wb") as dst:
        for lineno, line in enumerate(src, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                piece = record["question"].strip() + "\n" + record["answer"].strip() + "\n\n"
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise LmscopeError(
                    f"{url} line {lineno} is not a GSM8K record with a question and an answer "
                    f"({type(e).__name__}: {e}); nothing was saved"
                ) from None
            data = piece.encode("utf-8")
            dst.write(data)
            h.update(data)
            n += len(data)
    return h.hexdigest(), n
