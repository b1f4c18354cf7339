"""One spoolup per state dir: an flock()ed lock file holding the owner's pid."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class StateDirBusy(Exception):
    def __init__(self, state_dir: Path, pid: int | None):
        self.pid = pid
        who = f"process {pid}" if pid else "another process"
        super().__init__(
            f"state-dir {state_dir} is in use by {who} (another spoolup run/drain/recover). "
            "Stop it first, or give this instance its own state-dir."
        )


class StateLock:
    def __init__(self, state_dir: Path):
        self.path = state_dir / "spoolup.lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = holder(self.path)
            os.close(fd)
            raise StateDirBusy(self.path.parent, pid) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def holder(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def is_held(state_dir: Path) -> bool:
    path = state_dir / "spoolup.lock"
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
