"""Run a command as a user at a terminal would: its stderr on a pseudo-terminal, so that the
progress bars (which stay silent on a pipe) are drawn, and read until a state is reached."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time

from tests.conftest import HANG_TIMEOUT


class Terminal:
    """A process whose stderr is a terminal; `wait_for` reads it until a fragment appears."""

    def __init__(self, args: list[str], **kw):
        self.master, slave = pty.openpty()
        # a terminal 120 columns wide (a new pty has 0 x 0, and a bar fits itself to 0 columns)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=slave, **kw)
        os.close(slave)
        self.screen = ""

    def _read(self, timeout: float) -> bool:
        """Read what is there within `timeout` s; False once the process closed the terminal."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 4096)
        except OSError:  # EIO: the process is gone and the terminal closed
            return False
        self.screen += chunk.decode("utf-8", "replace")
        return bool(chunk)

    def wait_for(self, fragment: str) -> None:
        """Until `fragment` is on the screen, however slow the machine (bounded against a hang)."""
        deadline = time.monotonic() + HANG_TIMEOUT
        while fragment not in self.screen:
            assert time.monotonic() < deadline, f"{fragment!r} not shown: {self.screen[-2000:]}"
            assert self._read(0.1) or fragment in self.screen, \
                f"the process ended before showing {fragment!r}: {self.screen[-2000:]}"

    def finish(self) -> tuple[int, str, str]:
        """Wait for the end: (exit code, stdout, everything shown on the terminal)."""
        while self._read(1.0):  # the terminal first: a full one would stop the process
            pass
        stdout = self.proc.stdout.read().decode()
        code = self.proc.wait(timeout=HANG_TIMEOUT)
        os.close(self.master)
        return code, stdout, self.screen
