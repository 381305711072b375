"""The one policy of every command that writes an output folder (`--out DIR`).

    with OutDir(out, "probe softmax", force=force):
        result.save(out)                  # files written here are recorded as this command's

- A folder that does not exist, or is empty, is written.
- A folder holding any file lmscope did not write (a user's notes, another tool's output) is
  refused: lmscope never replaces or removes a file it did not write.
- A folder holding the outputs of an earlier lmscope command is refused unless `force=True`
  (`--force`), which removes those outputs (only those) before the command writes its own;
  `resumes=True` (a command that continues its own earlier work, as `transfer` reuses finished
  fine-tunings) accepts its own outputs without it and removes nothing.

What a command wrote is recorded in `DIR/.lmscope-outputs.json` (the command and the paths of
its files), written after the command succeeds. The checks run before anything is written, so
a refused command changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_json

MANIFEST = ".lmscope-outputs.json"


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


class OutDir:
    """An output folder under the policy of the module docstring."""

    def __init__(self, path: str | Path, command: str, *, force: bool = False,
                 resumes: bool = False):
        self.path = Path(path)
        self.command = command
        self.force = force
        self.resumes = resumes
        self._before: set[str] = set()

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    def recorded(self) -> tuple[str, set[str]]:
        """(the command, the files) of the earlier outputs recorded here; ("", set()) if none."""
        try:
            raw = json.loads(self.manifest.read_text(encoding="utf-8"))
            return str(raw.get("command", "")), set(raw.get("files", []))
        except (OSError, ValueError, AttributeError):
            return "", set()

    def check(self) -> None:
        """Refuse the folder as the module docstring says; writes nothing."""
        if self.path.exists() and not self.path.is_dir():
            raise LmscopeError(f"--out {self.path} is a file, not a folder")
        if not self.path.is_dir():
            return
        command, ours = self.recorded()
        others = sorted(_files(self.path) - ours - {MANIFEST})
        if others:
            shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3
                                             else "")
            raise LmscopeError(f"--out {self.path} holds files lmscope did not write ({shown}); "
                               "lmscope never replaces them: choose another --out")
        if ours and not self.force and not (self.resumes and command == self.command):
            raise LmscopeError(f"--out {self.path} holds the outputs of an earlier `lmscope "
                               f"{command}`; add --force to replace them, or choose another --out")

    def __enter__(self) -> OutDir:
        self.check()
        command, ours = self.recorded()
        if ours and self.force and not (self.resumes and command == self.command):
            for name in ours:  # the earlier outputs go, so none of them outlives its command
                (self.path / name).unlink(missing_ok=True)
            for folder in sorted((p for p in self.path.rglob("*") if p.is_dir()), reverse=True):
                if not any(folder.iterdir()):
                    folder.rmdir()
            ours = set()
        self._before = ours
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.path.is_dir():
            return
        if exc_type is not None and not self._before and not _files(self.path):
            return  # nothing written: nothing to record
        # every file now here is this command's or an earlier lmscope command's (check())
        atomic_write_json(self.manifest, {"command": self.command,
                                          "files": sorted(_files(self.path) - {MANIFEST})})


def record_outputs(folder: str | Path, files: list[str], command: str) -> None:
    """Add files a command wrote into a folder (`lmscope report` writing report.html into an
    output folder) to the folder's record, so the folder's own command still accepts it."""
    out = OutDir(folder, command)
    earlier, ours = out.recorded()
    atomic_write_json(out.manifest, {"command": earlier or command,
                                     "files": sorted(ours | set(files))})
