"""Tests for the corpus registry: resolution, splits, downloads and text decoding.

Downloads are tested against a local HTTP server on 127.0.0.1; anything else that tries
the network fails the test.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import pytest

from lmscope.data import corpora
from lmscope.data.corpora import (
    REGISTRY,
    ByteRange,
    CorpusSpec,
    RemoteFile,
    download,
    fixed_split,
    iter_bytes,
    iter_text,
    list_corpora,
    resolve,
    tail_split,
)
from lmscope.errors import LmscopeError

_real_urlopen = urllib.request.urlopen


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A private cache, no LMSCOPE_DATA, and no network beyond 127.0.0.1."""
    monkeypatch.setenv("LMSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LMSCOPE_DATA", raising=False)

    def local_only(request, *args, **kwargs):
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        host = urllib.parse.urlsplit(url).hostname
        if host != "127.0.0.1":
            raise urllib.error.URLError(f"test blocked network access to {host}")
        return _real_urlopen(request, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)


@pytest.fixture
def shared_data() -> Path:
    """The shared corpora (LMSCOPE_DATA as the environment had it before `isolated`)."""
    value = _SHARED
    if not value:
        pytest.skip("LMSCOPE_DATA is not set: point it at shared/data to test the real corpora")
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        pytest.skip(f"LMSCOPE_DATA={value} is not a folder")
    return path


_SHARED = os.environ.get("LMSCOPE_DATA")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def toy_spec(name: str, content: bytes, url: str = "http://127.0.0.1:9/x", **kw) -> CorpusSpec:
    rf = RemoteFile(kw.pop("file", "toy.txt"), url, sha(content), len(content), **kw)
    return CorpusSpec(name, "a toy corpus", "CC0", (rf,), "tail")


def cache_files(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.name != "hashes.json"]


def read(ranges) -> bytes:
    return b"".join(iter_bytes(ranges))


# --- a tiny HTTP server ------------------------------------------------------------------


class Server:
    """Serves `routes[path] = (status, body, content_length_override)` on 127.0.0.1."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, int | None]] = {}
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                status, body, length = routes.get(self.path, (404, b"not found", None))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def _module_server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def server(_module_server):
    _module_server.routes.clear()
    return _module_server


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone.txt"


# --- registry ----------------------------------------------------------------------------


def test_registry_is_complete():
    assert set(REGISTRY) == {
        "shakespeare",
        "wikipedia",
        "math",
        "tinystories",
        "enwik8",
        "text8",
        "3seqs",
    }
    assert list_corpora() == list(REGISTRY.values())
    for name, spec in REGISTRY.items():
        assert spec.name == name
        assert spec.license and spec.description
        assert spec.split in ("tail", "files", "enwik8")
        assert spec.files
        for f in spec.files:
            assert f.url.startswith(("https://", "http://")), f
            assert f.sha256 is not None or (f.size is not None and f.note), f
            if f.sha256 is not None:
                assert len(f.sha256) == 64 and int(f.sha256, 16) >= 0
            assert f.prepare == "none" or f.prepare.startswith(("unzip:", "gsm8k-jsonl"))
        if spec.split == "files":
            names = {f.name for f in spec.files}
            assert set(spec.train_files) | set(spec.val_files) <= names
            assert spec.train_files and spec.val_files


def test_registry_urls_point_at_pinned_commits():
    shakespeare = REGISTRY["shakespeare"].files[0]
    assert shakespeare.url == (
        "https://raw.githubusercontent.com/karpathy/char-rnn/"
        "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt"
    )
    assert all(f.prepare == "gsm8k-jsonl" for f in REGISTRY["math"].files)
    assert REGISTRY["enwik8"].files[0].prepare == "unzip:enwik8"
    assert REGISTRY["text8"].files[0].url == "http://mattmahoney.net/dc/text8.zip"
    assert REGISTRY["text8"].files[0].size == 100_000_000


# --- the shared corpora ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["shakespeare", "wikipedia", "math", "tinystories", "3seqs"])
def test_shared_corpora_resolve_and_split(shared_data, monkeypatch, name):
    monkeypatch.setenv("LMSCOPE_DATA", str(shared_data))
    c = resolve(name, download=False)
    assert c.source == f"$LMSCOPE_DATA/{name}"
    assert c.spec is REGISTRY[name]
    assert set(c.splits) == {"train", "val"}
    total = sum(p.stat().st_size for p in c.files)
    assert c.n_bytes("train") + c.n_bytes("val") == total
    if c.spec.split == "files":
        assert [r.path.name for r in c.splits["train"]] == list(c.spec.train_files)
        assert [r.path.name for r in c.splits["val"]] == list(c.spec.val_files)
        assert all(
            r.start == 0 and r.end == r.path.stat().st_size for rs in c.splits.values() for r in rs
        )
    else:
        # the val split is the contiguous last ~10%
        (val,) = c.splits["val"]
        assert val.end == total and abs(c.n_bytes("val") - total * 0.1) <= 4
    with pytest.raises(LmscopeError, match="no 'test' split"):
        c.n_bytes("test")


def test_shakespeare_val_is_the_last_tenth(shared_data, monkeypatch):
    monkeypatch.setenv("LMSCOPE_DATA", str(shared_data))
    c = resolve("shakespeare", val_fraction=0.1)
    data = (shared_data / "shakespeare" / "input.txt").read_bytes()
    cut = int(len(data) * 0.9)  # ASCII, so no boundary adjustment
    assert c.splits["train"] == (ByteRange(c.files[0], 0, cut),)
    assert read(c.splits["val"]) == data[cut:]
    assert "".join(iter_text(c.splits["val"])) == data[cut:].decode()


def test_shared_folder_given_as_path_is_the_registry_corpus(shared_data):
    c = resolve(str(shared_data / "math"))
    assert c.name == "math" and c.source == "path" and c.spec is REGISTRY["math"]
    assert [r.path.name for r in c.splits["val"]] == ["gsm8k_test.txt"]
    single = resolve(str(shared_data / "shakespeare" / "input.txt"))
    assert single.name == "shakespeare" and single.spec is REGISTRY["shakespeare"]


def test_fingerprint_is_content_and_ranges_not_path(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("LMSCOPE_DATA", str(shared_data))
    a = resolve("3seqs")
    copy = tmp_path / "copy" / "3seqs.txt"
    copy.parent.mkdir()
    copy.write_bytes(a.files[0].read_bytes())
    b = resolve(str(copy))
    assert b.spec is REGISTRY["3seqs"]  # same bytes, same name: it is the registry corpus
    assert a.fingerprint() == b.fingerprint()
    assert resolve("3seqs", val_fraction=0.2).fingerprint() != a.fingerprint()
    hashes = json.loads((tmp_path / "cache" / "hashes.json").read_text())
    assert hashes[str(copy.resolve())]["sha256"] == REGISTRY["3seqs"].files[0].sha256


# --- resolution order --------------------------------------------------------------------


def test_resolution_order_path_then_data_then_cache(tmp_path, monkeypatch):
    content = b"hello world, this is a toy corpus\n" * 10
    monkeypatch.setitem(REGISTRY, "toy", toy_spec("toy", content))
    data = tmp_path / "data"
    cache = tmp_path / "cache" / "corpora" / "toy"
    for folder in (data / "toy", cache):
        folder.mkdir(parents=True)
        (folder / "toy.txt").write_bytes(content)
    monkeypatch.setenv("LMSCOPE_DATA", str(data))

    c = resolve("toy", download=False)
    assert c.source == "$LMSCOPE_DATA/toy" and c.files == (data / "toy" / "toy.txt",)

    # an existing path called "toy" beats the registry name
    monkeypatch.chdir(tmp_path)
    Path("toy").write_bytes(b"my own toy text\n" * 4)
    c = resolve("toy", download=False)
    assert c.source == "path" and c.spec is None and c.files == (Path.cwd() / "toy",)
    Path("toy").unlink()

    monkeypatch.delenv("LMSCOPE_DATA")
    c = resolve("toy", download=False)
    assert c.source == "cache" and c.files == (cache / "toy.txt",)
    assert c.n_bytes("train") + c.n_bytes("val") == len(content)


def test_not_found_lists_every_place_looked(tmp_path, monkeypatch):
    monkeypatch.setitem(REGISTRY, "toy", toy_spec("toy", b"abc" * 50, url=closed_port_url()))
    monkeypatch.setenv("LMSCOPE_DATA", str(tmp_path / "data"))
    with pytest.raises(LmscopeError) as e:
        resolve("toy")
    msg = str(e.value)
    assert "\n" not in msg
    assert "$LMSCOPE_DATA/toy" in msg and str(tmp_path / "data" / "toy") in msg
    assert str(tmp_path / "cache" / "corpora" / "toy") in msg
    assert "could not reach http://127.0.0.1:" in msg
    assert "set LMSCOPE_DATA" in msg and "path" in msg
    assert cache_files(tmp_path) == []
    assert not (tmp_path / "cache" / "corpora").exists()

    with pytest.raises(LmscopeError, match=r"download \(turned off\)"):
        resolve("toy", download=False)


def test_offline_registry_corpus_fails_fast_with_places(tmp_path):
    # the autouse fixture blocks raw.githubusercontent.com like an offline machine would
    with pytest.raises(LmscopeError) as e:
        resolve("shakespeare")
    msg = str(e.value)
    assert "$LMSCOPE_DATA (not set)" in msg
    assert "raw.githubusercontent.com" in msg
    assert "input.txt" in msg


def test_unknown_name_suggests_nearest():
    with pytest.raises(LmscopeError, match="did you mean 'shakespeare'") as e:
        resolve("shakespear")
    assert "tinystories" in str(e.value)
    with pytest.raises(LmscopeError, match="no such file or folder"):
        resolve("no/such/file.txt")


def test_wrong_file_in_data_folder_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setitem(REGISTRY, "toy", toy_spec("toy", b"the real content\n"))
    (tmp_path / "data" / "toy").mkdir(parents=True)
    (tmp_path / "data" / "toy" / "toy.txt").write_bytes(b"something else!!\n")
    monkeypatch.setenv("LMSCOPE_DATA", str(tmp_path / "data"))
    with pytest.raises(LmscopeError, match="expected") as e:
        resolve("toy", download=False)
    assert "toy.txt" in str(e.value) and "sha256" in str(e.value)


def test_bad_val_fraction():
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(LmscopeError, match="val_fraction"):
            resolve("shakespeare", val_fraction=bad)


# --- user paths and splits ---------------------------------------------------------------


def test_folder_corpus_concatenates_sorted_visible_files(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "b.txt").write_bytes(b"B" * 60)
    (folder / "a.txt").write_bytes(b"A" * 40)
    (folder / ".hidden").write_bytes(b"H" * 1000)
    (folder / "sub").mkdir()
    (folder / "sub" / "c.txt").write_bytes(b"C" * 1000)
    c = resolve(str(folder), val_fraction=0.5)
    assert c.name == "mine" and c.spec is None and c.source == "path"
    assert [p.name for p in c.files] == ["a.txt", "b.txt"]
    # the cut at byte 50 falls inside b.txt: train spans both files
    assert c.splits["train"] == (
        ByteRange(folder / "a.txt", 0, 40),
        ByteRange(folder / "b.txt", 0, 10),
    )
    assert c.splits["val"] == (ByteRange(folder / "b.txt", 10, 60),)
    assert read(c.splits["train"]) + read(c.splits["val"]) == b"A" * 40 + b"B" * 60


def test_empty_inputs_are_errors(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(LmscopeError, match="corpus empty is empty"):
        resolve(str(tmp_path / "empty.txt"))
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / ".hidden").write_bytes(b"x")
    with pytest.raises(LmscopeError, match="has no files"):
        resolve(str(tmp_path / "nothing"))
    (tmp_path / "one.txt").write_bytes(b"x")
    with pytest.raises(LmscopeError, match=r"corpus one \(1 byte\) is too short to split: the "
                                           "train split would be empty"):
        resolve(str(tmp_path / "one.txt"), val_fraction=0.5)


def test_tail_cut_never_splits_a_character(tmp_path):
    text = "aé€😀" * 50  # 1-, 2-, 3- and 4-byte characters
    path = tmp_path / "multi.txt"
    path.write_text(text, encoding="utf-8")
    n = path.stat().st_size
    for k in range(1, 40):
        vf = k / 40
        splits = tail_split([path], vf)
        (train,) = splits["train"]
        cut = train.end
        assert int(n * (1 - vf)) <= cut <= int(n * (1 - vf)) + 3
        assert "".join(iter_text(splits["train"])) + "".join(iter_text(splits["val"])) == text


def test_tail_cut_boundary_across_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * 9 + "€".encode()[:1])  # a character split across two files
    b.write_bytes("€".encode()[1:] + b"y" * 8)
    splits = tail_split([a, b], 0.5)  # int(20 * 0.5) = 10: inside the euro sign
    assert splits["train"] == (ByteRange(a, 0, 10), ByteRange(b, 0, 2))
    assert "".join(iter_text(splits["val"])) == "y" * 8
    assert "".join(iter_text(splits["train"])) == "x" * 9 + "€"


def test_fixed_split_like_enwik8(tmp_path):
    path = tmp_path / "enwik8"
    path.write_bytes(bytes(range(100)))
    splits = fixed_split([path], [("train", 90), ("val", 5), ("test", 5)])
    assert splits == {
        "train": (ByteRange(path, 0, 90),),
        "val": (ByteRange(path, 90, 95),),
        "test": (ByteRange(path, 95, 100),),
    }
    with pytest.raises(LmscopeError, match="has 100 bytes, expected 101"):
        fixed_split([path], [("train", 90), ("val", 5), ("test", 6)])


def test_fixed_split_moves_cuts_to_character_starts(tmp_path):
    path = tmp_path / "text"
    path.write_bytes(b"a" * 8 + "€".encode() + b"b" * 9)  # euro at bytes 8..10
    splits = fixed_split([path], [("train", 9), ("val", 5), ("test", 6)])
    assert splits["train"] == (ByteRange(path, 0, 11),)
    assert splits["val"] == (ByteRange(path, 11, 14),)
    assert splits["test"] == (ByteRange(path, 14, 20),)


# --- reading -----------------------------------------------------------------------------


def test_iter_text_decodes_across_tiny_chunks_and_files(tmp_path):
    text = "naïve café – 😀 ünïcödé €" * 3
    data = text.encode()
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(data[:7])  # cuts the ï
    b.write_bytes(data[7:])
    ranges = [ByteRange(a, 0, 7), ByteRange(b, 0, len(data) - 7)]
    for chunk_size in (1, 2, 3, 5):
        assert "".join(iter_text(ranges, chunk_size=chunk_size)) == text
        assert all(len(c) <= chunk_size for c in iter_bytes(ranges, chunk_size=chunk_size))
    assert read([ByteRange(b, 3, 6)]) == data[10:13]


@pytest.mark.parametrize("chunk_size", [1, 2, 4, 1 << 20])
def test_iter_text_reports_file_and_offset_of_bad_utf8(tmp_path, chunk_size):
    good = tmp_path / "good.txt"
    good.write_bytes("é".encode() * 10)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello " + "€".encode() + b"\xff tail")  # 0xff at byte 9
    ranges = [ByteRange(good, 0, 20), ByteRange(bad, 0, bad.stat().st_size)]
    with pytest.raises(LmscopeError) as e:
        "".join(iter_text(ranges, chunk_size=chunk_size))
    msg = str(e.value)
    assert str(bad) in msg and "at byte 9" in msg and "data.tokenizer=byte" in msg


def test_iter_text_truncated_character_at_the_end(tmp_path):
    path = tmp_path / "cut.txt"
    path.write_bytes(b"abc" + "😀".encode()[:2])
    with pytest.raises(LmscopeError, match="at byte 3"):
        list(iter_text([ByteRange(path, 0, 5)], chunk_size=2))


# --- downloads ---------------------------------------------------------------------------


def test_download_lands_in_cache_and_resolves(tmp_path, server, monkeypatch):
    content = "downloaded text ✓\n".encode() * 100
    server.routes["/toy.txt"] = (200, content, None)
    spec = toy_spec("toy", content, url=server.url("/toy.txt"))
    monkeypatch.setitem(REGISTRY, "toy", spec)
    c = resolve("toy")
    final = tmp_path / "cache" / "corpora" / "toy" / "toy.txt"
    assert c.source == "download" and c.files == (final,)
    assert final.read_bytes() == content
    assert cache_files(tmp_path) == [final]  # no temporary files left
    hashes = json.loads((tmp_path / "cache" / "hashes.json").read_text())
    assert hashes[str(final.resolve())]["sha256"] == sha(content)
    # the second time it comes from the cache, without the server
    server.routes.clear()
    assert resolve("toy").source == "cache"


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ((200, b"not the right bytes\n", None), "expected sha256"),
        ((200, b"short", 5000), "cut off: the server announced 5,000 bytes"),
        ((500, b"boom", None), "HTTP 500"),
        ((404, b"", None), "HTTP 404"),
    ],
    ids=["wrong-sha256", "truncated", "server-error", "not-found"],
)
def test_bad_downloads_are_rejected_and_leave_nothing(tmp_path, server, route, expected):
    content = b"the content we expect\n" * 20
    server.routes["/toy.txt"] = route
    spec = toy_spec("toy", content, url=server.url("/toy.txt"))
    dest = tmp_path / "cache" / "corpora" / "toy"
    with pytest.raises(LmscopeError, match=expected):
        download(spec, dest, progress=False)
    assert cache_files(tmp_path) == []
    assert not dest.exists()


def test_rejected_download_through_resolve_says_what_arrived(tmp_path, server, monkeypatch):
    server.routes["/toy.txt"] = (200, b"x" * 7, None)
    spec = toy_spec("toy", b"y" * 9, url=server.url("/toy.txt"))
    monkeypatch.setitem(REGISTRY, "toy", spec)
    with pytest.raises(LmscopeError, match="expected 9 bytes, got 7"):
        resolve("toy")
    assert cache_files(tmp_path) == []


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_zip_download_prepared_like_enwik8(tmp_path, server, monkeypatch):
    content = "caf\u00e9 ".encode() * 15 + b"<end>more\n"  # 90 + 10 bytes
    assert len(content) == 100
    server.routes["/enwik8.zip"] = (200, zip_bytes({"enwik8": content}), None)
    rf = RemoteFile("enwik8", server.url("/enwik8.zip"), None, 100, prepare="unzip:enwik8")
    spec = CorpusSpec("enwik8", "tiny enwik8", "CC BY-SA", (rf,), "enwik8")
    monkeypatch.setitem(REGISTRY, "enwik8", spec)
    monkeypatch.setattr(corpora, "ENWIK8_SPLIT", (("train", 90), ("val", 5), ("test", 5)))
    c = resolve("enwik8")
    assert c.files[0].read_bytes() == content
    assert {k: c.n_bytes(k) for k in c.splits} == {"train": 90, "val": 5, "test": 5}
    assert (
        "".join(iter_text(c.splits["train"]))
        + "".join(iter_text(c.splits["val"]))
        + "".join(iter_text(c.splits["test"]))
        == content.decode()
    )
    assert cache_files(tmp_path) == [c.files[0]]  # the zip itself is not kept


def test_zip_without_member_or_not_a_zip_is_rejected(tmp_path, server):
    server.routes["/wrong.zip"] = (200, zip_bytes({"other": b"x" * 10}), None)
    server.routes["/html.zip"] = (200, b"<html>moved</html>", None)
    dest = tmp_path / "cache" / "corpora" / "text8"
    for path, expected in [
        ("/wrong.zip", "without the member 'text8'"),
        ("/html.zip", "valid zip"),
    ]:
        rf = RemoteFile("text8", server.url(path), None, 10, prepare="unzip:text8")
        spec = CorpusSpec("text8", "tiny text8", "CC BY-SA", (rf,), "enwik8")
        with pytest.raises(LmscopeError, match=expected):
            download(spec, dest, progress=False)
        assert cache_files(tmp_path) == []


def test_gsm8k_jsonl_is_derived_and_checked(tmp_path, server, monkeypatch):
    records = [
        {"question": "  How many apples?\n", "answer": "2 + 3 = <<2+3=5>>5\n#### 5 "},
        {"question": "Price in \u20ac?", "answer": "It costs 3\u00d72 = 6.\n#### 6"},
    ]
    jsonl = "".join(json.dumps(r) + "\n" for r in records).encode()  # \u escapes, ASCII
    expected = (
        "How many apples?\n2 + 3 = <<2+3=5>>5\n#### 5\n\nPrice in €?\nIt costs 3×2 = 6.\n#### 6\n\n"
    )
    server.routes["/train.jsonl"] = (200, jsonl, None)
    server.routes["/test.jsonl"] = (200, jsonl[: jsonl.index(b"\n") + 1], None)
    first = b"How many apples?\n2 + 3 = <<2+3=5>>5\n#### 5\n\n"
    files = (
        RemoteFile(
            "gsm8k_train.txt",
            server.url("/train.jsonl"),
            sha(expected.encode()),
            None,
            "gsm8k-jsonl",
        ),
        RemoteFile(
            "gsm8k_test.txt", server.url("/test.jsonl"), sha(first), len(first), "gsm8k-jsonl"
        ),
    )
    spec = CorpusSpec(
        "math", "tiny gsm8k", "MIT", files, "files", ("gsm8k_train.txt",), ("gsm8k_test.txt",)
    )
    monkeypatch.setitem(REGISTRY, "math", spec)
    c = resolve("math")
    assert c.files[0].read_text(encoding="utf-8") == expected
    assert read(c.splits["val"]) == first
    assert c.splits["train"] == (ByteRange(c.files[0], 0, len(expected.encode())),)


def test_gsm8k_bad_jsonl_is_rejected(tmp_path, server):
    server.routes["/bad.jsonl"] = (
        200,
        b'{"question": "q", "answer": "a"}\n{"question": 1}\n',
        None,
    )
    rf = RemoteFile("gsm8k_train.txt", server.url("/bad.jsonl"), None, 10, "gsm8k-jsonl")
    spec = CorpusSpec(
        "math", "bad", "MIT", (rf,), "files", ("gsm8k_train.txt",), ("gsm8k_train.txt",)
    )
    with pytest.raises(LmscopeError, match="line 2 is not a GSM8K record"):
        download(spec, tmp_path / "cache" / "corpora" / "math", progress=False)
    assert cache_files(tmp_path) == []


def test_download_keeps_good_files_and_fetches_only_missing(tmp_path, server):
    a, b = b"first file\n" * 5, b"second file\n" * 5
    server.routes["/a"] = (200, a, None)
    server.routes["/b"] = (200, b, None)
    files = (
        RemoteFile("a.txt", server.url("/a"), sha(a), len(a)),
        RemoteFile("b.txt", server.url("/b"), sha(b), len(b)),
    )
    spec = CorpusSpec("two", "two files", "CC0", files, "tail")
    dest = tmp_path / "cache" / "corpora" / "two"
    dest.mkdir(parents=True)
    (dest / "a.txt").write_bytes(a)
    del server.routes["/a"]  # a.txt is already there and correct: not fetched again
    assert download(spec, dest, progress=False) == dest
    assert (dest / "b.txt").read_bytes() == b


# --- mixtures ----------------------------------------------------------------------------------

def test_a_mixture_spec_parses_into_normalised_weights():
    assert corpora.parse_mixture("shakespeare") == [("shakespeare", 1.0)]
    assert corpora.parse_mixture("tinystories:0.7+3seqs:0.3") == [("tinystories", 0.7),
                                                                  ("3seqs", 0.3)]
    assert corpora.parse_mixture("a:1+b:3") == [("a", 0.25), ("b", 0.75)]
    assert corpora.parse_mixture("a+b") == [("a", 0.5), ("b", 0.5)]
    assert corpora.mixture_spec([("a", 0.25), ("b", 0.75)]) == "a:0.25+b:0.75"
    assert corpora.mixture_spec([("shakespeare", 1.0)]) == "shakespeare"


def test_an_existing_path_is_one_corpus_whatever_its_name(tmp_path):
    odd = tmp_path / "notes+more:0.5.txt"
    odd.write_text("text\n")
    assert corpora.parse_mixture(str(odd)) == [(str(odd), 1.0)]
    # inside a mixture, a part with no number after its last colon is all name
    assert corpora.parse_mixture("c:/x+b:2") == [("c:/x", 1 / 3), ("b", 2 / 3)]


@pytest.mark.parametrize("spec, message", [
    ("a:0+b", "weight of a must be a positive number, got 0"),
    ("a:-1+b:1", "weight of a must be a positive number"),
    ("a:inf+b", "weight of a must be a positive number"),
    ("a:nan", "weight of a must be a positive number"),
    ("+a", "empty corpus name"),
    ("a+a", "names a twice"),
])
def test_a_bad_mixture_spec_is_a_clear_error(spec, message):
    with pytest.raises(LmscopeError, match=message):
        corpora.parse_mixture(spec)
