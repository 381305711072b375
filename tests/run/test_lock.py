"""One writer per folder: a live holder is named in the error; a dead one's lock is taken over."""

import os
import signal
import socket
import subprocess
import sys

import pytest

from lmscope.errors import LmscopeError
from lmscope.run.lock import FolderLock, FolderLockedError

HOLD = """
import sys
from lmscope.run.lock import FolderLock
FolderLock(sys.argv[1], "run folder").acquire()
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes stdin (or kills this process)
"""


def _holder(folder):
    """A process that holds the folder's lock; returns once it holds it (not after a delay)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_told_who_holds_the_folder(tmp_path):
    holder = _holder(tmp_path / "run")
    try:
        with pytest.raises(FolderLockedError) as e:
            FolderLock(tmp_path / "run", "run folder").acquire()
        message = str(e.value)
        assert f"pid {holder.pid}" in message and socket.gethostname() in message
        assert "being written by another process" in message
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_the_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path):
    holder = _holder(tmp_path / "run")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=60)
    assert (tmp_path / "run" / ".lock").is_file()  # what a killed process leaves behind
    warnings = []
    with FolderLock(tmp_path / "run", "run folder", log=warnings.append):
        assert len(warnings) == 1 and f"pid {holder.pid}" in warnings[0]
        assert "is gone" in warnings[0]
        with pytest.raises(FolderLockedError, match=f"pid {os.getpid()}"):  # now ours
            FolderLock(tmp_path / "run").acquire()
    assert not (tmp_path / "run" / ".lock").exists()  # released: the file goes


def test_a_released_lock_leaves_nothing_and_can_be_taken_again(tmp_path):
    warnings = []
    for _ in range(2):
        with FolderLock(tmp_path / "f", log=warnings.append):
            assert (tmp_path / "f" / ".lock").is_file()
        assert sorted(p.name for p in (tmp_path / "f").iterdir()) == []
    assert warnings == []  # a clean release is not a stale lock


def test_a_users_file_called_lock_is_never_touched(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / ".lock").write_text("my notes")
    with pytest.raises(LmscopeError, match="not an lmscope lock file"):
        FolderLock(tmp_path / "f").acquire()
    assert (tmp_path / "f" / ".lock").read_text() == "my notes"
