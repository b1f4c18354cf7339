"""Shared machinery for the benchmarks: a moto server process, spool generation,
spoolup invocations, RSS sampling, and timing."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import boto3
from botocore.config import Config as BotoConfig

from spoolup.locals3 import LocalS3, free_port  # noqa: F401 - free_port is used by the figures

ACCESS_KEY = "bench"
SECRET_KEY = "bench-secret"
MiB = 1024 * 1024


class Moto(LocalS3):
    """moto_server in its own process (restart it between figures: it keeps objects in RAM)."""

    def __init__(self, workdir: Path):
        super().__init__(None)
        self.log_path = workdir / f"moto-{self.port}.log"


def client(url: str, threads: int = 8):
    return boto3.client("s3", endpoint_url=url, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                        region_name="us-east-1",
                        config=BotoConfig(s3={"addressing_style": "path"}, max_pool_connections=threads + 4,
                                          request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"))


def new_bucket() -> str:
    return f"bench-{uuid.uuid4().hex[:12]}"


def syslog_spool(spool: Path, total: int, files: int, line_len: int = 256, subdir: str = "") -> dict[str, int]:
    """`files` spool files of ~total/files bytes of fixed-length syslog-like lines."""
    per_file = total // files
    sizes = {}
    for f in range(files):
        rel = f"{subdir}host{f:05d}/app.log" if subdir is not None else f"host{f:05d}.log"
        path = spool / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        prefix = f"Nov 25 12:00:00 host{f:05d} app[4242]: seq="
        pad = line_len - len(prefix) - 12 - 1
        block_lines = []
        for i in range(4096):
            block_lines.append(f"{prefix}{i:012d}{'x' * pad}\n")
        block = "".join(block_lines).encode()
        with open(path, "wb") as out:
            written = 0
            while written + len(block) <= per_file:
                out.write(block)
                written += len(block)
            rest = per_file - written
            if rest:
                tail = block[:rest]
                tail = tail[: tail.rfind(b"\n") + 1]
                out.write(tail)
                written += len(tail)
        sizes[rel] = written
    return sizes


def write_config(path: Path, **options) -> Path:
    def toml(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return '"' + str(v) + '"'

    path.write_text("".join(f"{k} = {toml(v)}\n" for k, v in options.items()))
    return path


def spoolup_config(base: Path, url: str, bucket: str, **extra) -> Path:
    opts = {"url": url, "bucket": bucket, "access-key": ACCESS_KEY, "secret-key": SECRET_KEY, "region": "us-east-1",
            "spool-dir": str(base / "spool"), "state-dir": str(base / "state"), "log-format": "json",
            "log-level": "warning", "object-key": "{path}"}
    opts.update(extra)
    return write_config(base / "spoolup.toml", **opts)


def spoolup(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """`python -m spoolup ...`.  Without PYTHONDONTWRITEBYTECODE: with it (set on the bench
    machine), both spoolup processes compiled every module of spoolup at every start (10 % of
    a 64 MiB drain's CPU samples), where an installed spoolup -- and the boto3 baseline's
    modules -- load cached bytecode."""
    env = dict(env or os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return subprocess.run([sys.executable, "-m", "spoolup", *args], capture_output=True, text=True, env=env, **kw)


def wait_for_count(journal: Path, sql: str, n: int, *, timeout: float, interval: float, what: str) -> int:
    """Poll a count (`sql`) in the journal of a running spoolup, read-only, until it reaches
    `n`; RuntimeError naming `what` when it does not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        try:
            c = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5)
            try:
                got = c.execute(sql).fetchone()[0]
            finally:
                c.close()
        except sqlite3.Error:
            got = 0
        if got >= n:
            return got
        time.sleep(interval)
    raise RuntimeError(f"only {got} of {n} {what} in time")


class RssSampler:
    """Peak of the summed RSS of a process and all its descendants, sampled every `interval`."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(self.interval)


def children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(x) for x in f.read().split())
    except OSError:
        pass
    return out


def tree_rss(pid: int) -> int:
    total = 0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
        stack.extend(children(p))
    return total


@contextmanager
def workdir(keep: bool = False):
    d = Path(tempfile.mkdtemp(prefix="spoolup-bench-", dir=os.environ.get("BENCH_TMP")))
    try:
        yield d
    finally:
        if not keep:
            shutil.rmtree(d, ignore_errors=True)


def machine() -> dict[str, str]:
    import boto3 as b3
    import botocore
    import moto

    import spoolup

    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": f"spoolup {spoolup.__version__}, boto3 {b3.__version__}, botocore {botocore.__version__}, "
                    f"moto {moto.__version__}",
    }


def kill_tree(proc: subprocess.Popen) -> None:
    for c in children(proc.pid):
        try:
            os.kill(c, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()
