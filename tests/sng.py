"""Test helpers for a private syslog-ng: its own config, pid, persist and control
files in a temp dir, loopback TCP sources on free ports; and loggen to drive it.

The shipped blocks (contrib/syslog-ng/spoolup.conf) are @included as they are.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONF = ROOT / "contrib" / "syslog-ng" / "spoolup.conf"


def require(*programs: str) -> None:
    """syslog-ng and loggen must be there.  Only off CI (CI unset) may a missing
    syslog-ng skip the test, and then visibly; in CI it is a failure."""
    missing = [p for p in programs if shutil.which(p) is None]
    if not missing:
        return
    why = f"{', '.join(missing)} not on PATH (apt-get install syslog-ng-core)"
    if os.environ.get("CI"):
        pytest.fail(f"{why}: CI must run the syslog-ng end-to-end tests (.ci/run installs it)")
    pytest.skip(f"{why}; CI is unset, so skipping the syslog-ng end-to-end test")


def syntax_check(conf: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["syslog-ng", "--syntax-only", "-f", str(conf)], capture_output=True, text=True,
                          timeout=60)


class SyslogNg:
    """A private syslog-ng in the foreground.  `body` is the configuration after the
    version line and the @include of the shipped blocks."""

    def __init__(self, base: Path, body: str):
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.conf = base / "syslog-ng.conf"
        self.conf.write_text(f'@version: 3.38\n@include "{SHIPPED_CONF}"\n'
                             "options { keep-hostname(yes); use-dns(no); dns-cache(no); stats-freq(0); };\n"
                             f"{body}\n")
        self.proc: subprocess.Popen | None = None

    def start(self, ports: list[int]) -> None:
        r = syntax_check(self.conf)
        assert r.returncode == 0, f"syslog-ng rejects {self.conf}:\n{r.stdout}{r.stderr}"
        log = open(self.base / "syslog-ng.log", "ab")
        self.proc = subprocess.Popen(
            ["syslog-ng", "-F", "--no-caps", "-f", str(self.conf), "-R", str(self.base / "syslog-ng.persist"),
             "-p", str(self.base / "syslog-ng.pid"), "-c", str(self.base / "syslog-ng.ctl")],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        for port in ports:
            while True:
                assert self.proc.poll() is None, f"syslog-ng exited:\n{self.log_text()}"
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, f"syslog-ng does not listen on {port}:\n{self.log_text()}"
                    time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_text(self) -> str:
        path = self.base / "syslog-ng.log"
        return path.read_text(errors="replace") if path.exists() else ""


def tcp_source(name: str, port: int) -> str:
    return (f"source {name} {{ network(ip(127.0.0.1) port({port}) transport(tcp) max-connections(20) "
            f"log-iw-size(20000)); }};\n")


def loggen(port: int, *, count: int, connections: int = 1, size: int = 200, rate: int = 200_000,
           wait: bool = True) -> subprocess.Popen:
    """loggen's own messages: '... prg00000[1234]: seq: 0000000000, thread: 0000, runid: ...'.
    `count` messages per connection."""
    proc = subprocess.Popen(
        ["loggen", "--inet", "--stream", f"--rate={rate}", f"--size={size}", f"--number={count}",
         f"--active-connections={connections}", "--quiet", "127.0.0.1", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    if wait:
        finish(proc)
    return proc


def finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"loggen failed ({proc.returncode}): {out.decode(errors='replace')}"


def count_lines(directory: Path) -> int:
    n = 0
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    n += block.count(b"\n")
    return n
