"""One writer per folder: a lock that a run folder or a study folder holds while it is written.

    with FolderLock(run_dir, "run folder", log=print):
        ...                                     # only this process writes run_dir

The lock is `FOLDER/.lock`, held with the operating system's advisory lock (flock), which the
kernel releases when the process ends, however it ends. The file also says who holds it (pid,
host, start time), so a second writer gets one line naming the holder. A lock file left by a
process that is gone (killed, or its machine rebooted) has no holder any more: the next writer
takes it over, with a warning naming the process that left it. On a shared file system (a run
folder on NFS seen by several machines) flock is implemented by the NFS client's locks.
The file is removed when the lock is released.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from lmscope.errors import LmscopeError

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows): no locking, as before this module existed
    fcntl = None

LOCK_FILE = ".lock"


class FolderLockedError(LmscopeError):
    """Another live process is writing the folder."""


def _holder(text: str) -> dict:
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) and {"pid", "host"} <= set(holder) else {}


def is_lock_file(path: Path) -> bool:
    """Whether `path` is a lock file this module wrote (or an empty one it was writing), not a
    file of the user's that happens to be called .lock."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return path.name == LOCK_FILE and (not text.strip() or bool(_holder(text)))


def holds_files(folder: Path) -> bool:
    """Whether `folder` holds anything but a lock file (one a killed writer left, say)."""
    return folder.is_dir() and any(not is_lock_file(p) for p in folder.iterdir())


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, since "
            f"{holder.get('since', '?')}")


class FolderLock:
    """An exclusive lock on a folder for the life of a `with` block (see the module docstring).

    `what` names the folder in messages ("run folder", "study folder"); `log` receives the
    warning when a stale lock is taken over."""

    def __init__(self, folder: str | Path, what: str = "folder",
                 log: Callable[[str], None] = print):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what = what
        self.log = log
        self._fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        if self.path.exists() and not is_lock_file(self.path):  # never touch a user's file
            raise LmscopeError(f"{self.path} exists and is not an lmscope lock file; choose "
                               f"another folder (or move that file)")
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(os.read(fd, 4096).decode("utf-8", "replace"))
                os.close(fd)
                raise FolderLockedError(
                    f"the {self.what} {self.folder} is being written by another process "
                    f"({_describe(holder)}); wait for it to finish or stop it, or choose "
                    "another folder") from None
            # The holder may have released and removed the file between our open and flock:
            # then we hold a lock on a file nobody else sees. Start again on the new file.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        left = _holder(os.read(fd, 4096).decode("utf-8", "replace"))
        if left:
            self.log(f"warning: the {self.what} {self.folder} was locked by a process that is "
                     f"gone ({_describe(left)}); taking the lock over")
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode("utf-8"), 0)
        os.fsync(fd)
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still held: nobody can take it in between
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
