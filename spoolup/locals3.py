"""A local S3 endpoint for the demo, the tests and the benchmarks: moto's server in
a process of its own on a free loopback port.  Needs moto[server] (the `demo`,
`test` and `bench` extras); spoolup itself never imports moto."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalS3:
    """`python -m moto.server` on 127.0.0.1; restartable (a restart forgets every object).
    Usable as a context manager."""

    # the program and its leading arguments (-H and -p follow): the tests that enforce IAM run a
    # launcher of their own (tests/motoiam.py)
    command: tuple[str, ...] = (sys.executable, "-m", "moto.server")

    def __init__(self, log_path: Path | None = None, *, env: dict[str, str] | None = None):
        self.log_path = log_path
        self.env = env
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "LocalS3":
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [*self.command, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env} if self.env else None,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on {self.url}"
                                       + (f" (log: {self.log_path})" if self.log_path else "")) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)

    def __enter__(self) -> "LocalS3":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
