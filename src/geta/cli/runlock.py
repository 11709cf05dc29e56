"""`RunLock`: one writer per ``--out`` folder for the whole life of a ``geta compress`` run.

The lock is an exclusive ``flock`` on ``.OUT.lock`` beside the output folder (not inside it:
publishing swaps the folder itself). The file records who holds it (pid, host, start time) so
that a refused run can say so. The kernel drops the lock when its holder exits, however it
exits, so a crashed run never leaves a folder locked; the file itself is deleted on release
(a run that finds the file it locked already replaced by another one locks again).

>>> import tempfile, pathlib
>>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
>>> with RunLock(out):
...     holder(out) is not None
True
>>> holder(out) is None
True
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from geta.cli.errors import CliError

__all__ = ["RunLock", "holder", "lock_path"]


def lock_path(out: Path) -> Path:
    """The lock file of output folder ``out``: ``.NAME.lock`` in its parent."""
    return out.parent / f".{out.name}.lock"


def _flock(fd: int) -> bool:
    """Try to take an exclusive lock on ``fd`` without waiting; True when taken."""
    try:
        import fcntl
    except ImportError:  # Windows: lock the first byte instead
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _describe(info: dict[str, Any]) -> str:
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, float) else "?"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {when}"


def _read_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def holder(out: Path) -> str | None:
    """Who holds the lock of ``out`` (``"pid 12 on host, started ..."``), or None when nobody does.

    Probing takes the lock for an instant; it never creates a lock file that is not there.
    """
    path = lock_path(out)
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        if _flock(fd):
            return None
        return _describe(_read_info(path))
    finally:
        os.close(fd)  # (closing drops the instant lock too)


class RunLock:
    """Context manager: hold the exclusive lock of ``out`` or raise `CliError` naming its holder."""

    def __init__(self, out: Path) -> None:
        self.out, self.path = out, lock_path(out)
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock (at once, or `CliError`); write this process's details into the file."""
        for _ in range(10):  # the file may be deleted by its releasing holder between open and lock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise CliError(
                    f"--out {self.out}: cannot create its lock file {self.path} ({exc.strerror}); "
                    "pass an --out in a folder you can write to"
                ) from None
            if not _flock(fd):
                os.close(fd)
                who = _describe(_read_info(self.path))
                raise CliError(
                    f"--out {self.out} is in use by another geta compress ({who}); "
                    "wait for it to finish or pass another --out"
                )
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps(info).encode())
                return
            os.close(fd)  # locked a file that its holder had just deleted: lock the new one
        raise CliError(f"--out {self.out}: could not lock {self.path}; try again")

    def release(self) -> None:
        """Delete the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None
