"""Crash-safe file writes: write to a temporary name beside the target, then rename.

A process killed at any moment leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` and move the result onto `path` atomically. safetensors' own error
    for a full disk becomes an OSError naming `path`, like any other failed write."""
    from safetensors import SafetensorError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, _FILE_MODE)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except SafetensorError as e:
        raise OSError(f"cannot write {path} ({e})") from None
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def writing_dir(final_dir: Path, what: str) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final_dir` to write into; when the block ends,
    its files are synced and it replaces `final_dir` (replace_dir), so a crash or an error leaves
    the old folder. On an error the temporary folder is removed; safetensors' own error for a
    full disk becomes an OSError naming `what`."""
    from safetensors import SafetensorError

    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = final_dir.with_name(f".{final_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        replace_dir(tmp, final_dir)
    except SafetensorError as e:
        raise OSError(f"cannot write {what} ({e})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written folder `tmp_dir` to `final_dir`, replacing any old one.

    Folders cannot be swapped atomically, so the old one is first renamed to
    `<name>.old`; readers fall back to it (see `existing_dir`) in the instant
    between the two renames.
    """
    old = final_dir.with_name(final_dir.name + ".old")
    if old.exists():
        if final_dir.exists():  # a leftover from an earlier interrupted replace
            shutil.rmtree(old)
        else:  # an interrupted replace left only the old copy: keep it as the current one
            os.replace(old, final_dir)
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    """Make renames inside `path` durable (where the platform allows opening folders)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def existing_dir(path: Path) -> Path | None:
    """`path` if it exists, else the `.old` copy `replace_dir` may have left, else None."""
    if path.is_dir():
        return path
    old = path.with_name(path.name + ".old")
    return old if old.is_dir() else None


def _jsonl_lines(path: Path) -> Iterator[tuple[str, dict]]:
    """Each line of a JSON-lines file with its row; a line torn by a crash is skipped."""
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            yield line, json.loads(line)
        except json.JSONDecodeError:
            continue


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSON-lines file, oldest first; a line torn by a crash is skipped."""
    return [row for _, row in _jsonl_lines(Path(path))]


def rewrite_jsonl(path: str | Path, keep: Callable[[dict], bool]) -> None:
    """Atomically rewrite a JSON-lines file with only the lines whose row `keep` accepts (kept
    as written; torn lines go). A missing file becomes an empty one."""
    path = Path(path)
    kept = [line for line, row in _jsonl_lines(path) if keep(row)] if path.is_file() else []
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def append_jsonl(path: str | Path, row: dict) -> None:
    """Add one row to a small JSON-lines file, atomically (the file is rewritten whole: a crash
    leaves the old file or the new one; a torn line from before goes)."""
    path = Path(path)
    kept = [line for line, _ in _jsonl_lines(path)] if path.is_file() else []
    atomic_write_text(path, "".join(line + "\n" for line in [*kept, json.dumps(row)]))


def user_path(text: str) -> Path:
    """A path as a user typed it, with `~` expanded where it names a home folder."""
    try:
        return Path(text).expanduser()
    except (RuntimeError, ValueError):  # "~nosuchuser/..." or a NUL byte: keep it as written
        return Path(text)


def path_exists(path: Path) -> bool:
    """Whether `path` exists; False (not an exception) for names no file can have (NUL bytes)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def cache_dir() -> Path:
    """lmscope's cache folder: $LMSCOPE_CACHE, else $XDG_CACHE_HOME/lmscope, else ~/.cache/lmscope."""
    if os.environ.get("LMSCOPE_CACHE"):
        return Path(os.environ["LMSCOPE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lmscope"
