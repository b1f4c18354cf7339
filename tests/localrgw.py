"""A local Ceph RADOS Gateway for the tests and the torture run: one mon, one mgr,
one BlueStore OSD on a sparse file and radosgw (beast) on 127.0.0.1, built from
scratch by tests/rgw/start_server.sh in a directory of its own, on free ports.

`LocalRGW` is one cluster (start/stop, a context manager).  `shared_rgw()` gives
every pytest-xdist worker of one test session the same cluster: the first
worker that asks builds it under a file lock, the others read its address; the
session's main process stops it at the end (`stop_shared_rgw()`), and a reaper
process stops it if that process dies without doing so.  Nothing is mounted;
stopping deletes the directory.

    python tests/localrgw.py start DIR   # by hand: prints URL=, ACCESS_KEY=, SECRET_KEY=
    python tests/localrgw.py stop DIR
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent / "rgw"
BINARIES = ("ceph", "ceph-mon", "ceph-osd", "ceph-mgr", "radosgw", "radosgw-admin", "monmaptool", "ceph-authtool")
INSTALL = "apt-get install -y --no-install-recommends ceph-mon ceph-osd ceph-mgr radosgw ceph-common"
BLOCK_SIZE = 4 << 30  # the OSD's block file: sparse, this is its apparent size


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def require() -> None:
    """In a test: the Ceph packages must be there.  Only off CI (CI unset) may their
    absence skip the test, and then visibly; in CI it is a failure."""
    missing = missing_binaries()
    if missing:
        import pytest

        why = f"{', '.join(missing)} not on PATH ({INSTALL})"
        if os.environ.get("CI"):
            pytest.fail(f"{why}: CI must run the tests against Ceph RGW (.ci/run installs it)")
        pytest.skip(f"{why}; CI is unset, so skipping the test against Ceph RGW")


def _free_ports(n: int) -> list[int]:
    """n distinct ports that are free on 127.0.0.1 now (held open together while chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalRGW:
    """One throw-away cluster in `directory` (created; must not hold a cluster)."""

    def __init__(self, directory: Path, access_key: str, secret_key: str, *, block_size: int = BLOCK_SIZE):
        self.directory = Path(directory)
        self.access_key = access_key
        self.secret_key = secret_key
        self.block_size = block_size
        self.port: int | None = None
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "RGW_DIR": str(self.directory)}

    def start(self, attempts: int = 3) -> "LocalRGW":
        missing = missing_binaries()
        if missing:
            raise RuntimeError(f"Ceph RGW needs {', '.join(missing)}: {INSTALL}")
        t0 = time.monotonic()
        for attempt in range(1, attempts + 1):
            mon2, mon1, rgw = _free_ports(3)
            env = {**self._env(), "MON_V2_PORT": str(mon2), "MON_V1_PORT": str(mon1), "RGW_PORT": str(rgw),
                   "RGW_ACCESS_KEY": self.access_key, "RGW_SECRET_KEY": self.secret_key,
                   "RGW_BLOCK_SIZE": str(self.block_size)}
            r = subprocess.run(["bash", str(SCRIPTS / "start_server.sh")], env=env, capture_output=True,
                               text=True, timeout=900, stdin=subprocess.DEVNULL)
            if r.returncode == 0:
                self.port = rgw
                self.startup_seconds = time.monotonic() - t0
                return self
            self.stop()  # daemons of the failed attempt; the directory goes too
            # a port taken between choosing and binding it: try again on others
            if attempt == attempts or "Address already in use" not in r.stderr:
                raise RuntimeError(f"Ceph RGW did not start (exit {r.returncode}):\n{r.stderr[-4000:]}")
        raise AssertionError("unreachable")

    def stop(self) -> None:
        if self.directory.exists():
            subprocess.run(["bash", str(SCRIPTS / "stop_server.sh"), "--wipe"], env=self._env(),
                           capture_output=True, timeout=300, stdin=subprocess.DEVNULL)
        # a daemon without a pid file (killed half-way through a start) is still ours: its
        # command line names this cluster's ceph.conf
        for pid in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def leftovers(self) -> list[int]:
        """PIDs of processes still running with this cluster's ceph.conf."""
        conf = str(self.directory / "ceph.conf").encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if conf in (entry / "cmdline").read_bytes().split(b"\0"):
                        pids.append(int(entry.name))
        return pids

    def __enter__(self) -> "LocalRGW":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------------------
# one cluster per test session, shared by the pytest-xdist workers


@contextlib.contextmanager
def _locked(path: Path):
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def shared_rgw(root: Path, access_key: str, secret_key: str, owner_pid: int) -> dict:
    """The session's cluster under `root` (started by the first caller): its url, keys
    and startup time.  A failed start is remembered, so that every worker fails at once
    with the same message.  A reaper stops the cluster when `owner_pid` exits."""
    info = root / "rgw.json"
    with _locked(root / "rgw.lock"):
        if info.exists():
            data = json.loads(info.read_text())
        else:
            rgw = LocalRGW(root / "rgw", access_key, secret_key)
            _spawn_reaper(rgw.directory, owner_pid)
            try:
                rgw.start()
                data = {"url": rgw.url, "access_key": access_key, "secret_key": secret_key,
                        "startup_seconds": round(rgw.startup_seconds, 1), "directory": str(rgw.directory)}
            except Exception as e:  # noqa: BLE001 - reported to every worker below
                data = {"error": str(e)}
            info.write_text(json.dumps(data))
    if "error" in data:
        raise RuntimeError(data["error"])
    return data


def stop_shared_rgw(root: Path) -> None:
    """Stop the session's cluster under `root`, if one was started."""
    info = root / "rgw.json"
    with _locked(root / "rgw.lock"):
        if info.exists():
            LocalRGW(root / "rgw", "", "").stop()
            info.unlink()


def _spawn_reaper(directory: Path, owner_pid: int) -> None:
    subprocess.Popen([sys.executable, __file__, "reap", str(directory), str(owner_pid)], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)


def _reap(directory: Path, owner_pid: int) -> None:
    """Wait for `owner_pid` to end, then stop the cluster in `directory` if it is still there."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while True:
        try:
            os.kill(owner_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(1)
    LocalRGW(directory, "", "").stop()
    (directory.parent / "rgw.json").unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "reap":
        _reap(Path(argv[1]), int(argv[2]))
        return 0
    if len(argv) == 2 and argv[0] == "start":
        rgw = LocalRGW(Path(argv[1]), os.environ.get("RGW_ACCESS_KEY", "SPOOLUPTESTACCESSKEY"),
                       os.environ.get("RGW_SECRET_KEY", "spoolupTestSecretKey0123456789abcdefghij")).start()
        print(f"URL={rgw.url}\nACCESS_KEY={rgw.access_key}\nSECRET_KEY={rgw.secret_key}\n"
              f"STARTUP_SECONDS={rgw.startup_seconds:.1f}")
        return 0
    if len(argv) == 2 and argv[0] == "stop":
        LocalRGW(Path(argv[1]), "", "").stop()
        return 0
    print("usage: python tests/localrgw.py start DIR | stop DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
