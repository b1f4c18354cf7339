"""Dead-letter files: bad records, verbatim, one file per spool file.

A bad record is never dropped: its line is appended (and synced with the same
batch that consumes it) to `state-dir/dead-letter/<source id>-<name>.bad`,
rotated to `.1`, `.2`, ... when it reaches ROTATE_BYTES (nothing is deleted),
counted in the journal (shown by `status`) and logged once per file per minute.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from spoolup.files import AppendFiles

ROTATE_BYTES = 64 * 1024 * 1024
LOG_EVERY = 60.0


def file_name(source_id: int, spool_path: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", spool_path)[-120:]
    return f"{source_id}-{safe}.bad"


class DeadLetters:
    def __init__(self, directory: Path, *, fsync: bool, log):
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.files = AppendFiles(directory, fsync=fsync, max_open=32)
        self.log = log
        self._sizes: dict[str, int] = {}
        self._last_log: dict[int, float] = {}
        self._suppressed: dict[int, int] = {}

    def write(self, source_id: int, spool_path: str, line: bytes, reason: str) -> None:
        name = file_name(source_id, spool_path)
        size = self._sizes.get(name)
        if size is None:
            try:
                size = (self.directory / name).stat().st_size
            except FileNotFoundError:
                size = 0
        if size >= ROTATE_BYTES:
            self._rotate(name)
            size = 0
        record = line if line.endswith(b"\n") else line + b"\n"
        self.files.append(name, record)
        self._sizes[name] = size + len(record)
        now = time.monotonic()
        if now - self._last_log.get(source_id, -LOG_EVERY) >= LOG_EVERY:
            self.log.warning("bad record written to the dead-letter file", source=source_id, path=spool_path,
                             reason=reason, dead_letter=str(self.directory / name),
                             more_since_last_log=self._suppressed.pop(source_id, 0))
            self._last_log[source_id] = now
        else:
            self._suppressed[source_id] = self._suppressed.get(source_id, 0) + 1

    def _rotate(self, name: str) -> None:
        self.files.sync()
        self.files.forget(name)
        n = 1
        while (self.directory / f"{name}.{n}").exists():
            n += 1
        os.replace(self.directory / name, self.directory / f"{name}.{n}")

    def sync(self) -> None:
        self.files.sync()

    def close(self) -> None:
        self.files.close()
