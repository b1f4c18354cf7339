"""Test helpers: real S3 endpoints (moto server in its own process on a free
loopback port; a Ceph RGW cluster on free loopback ports, tests/localrgw.py),
real spoolup processes, and functions to read the bucket back.

Nothing here mocks S3, SQLite or the filesystem.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import json
import os
import pwd
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config as BotoConfig

from spoolup.locals3 import LocalS3, free_port  # noqa: F401 - free_port is part of the helpers

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-KEY-d41d8cd98f00b204"


class MotoServer(LocalS3):
    """The tests' S3 endpoint: a LocalS3 logging into a directory of the test run."""

    def __init__(self, log_dir: Path):
        super().__init__(None)
        self.log_path = log_dir / f"moto-{self.port}.log"


class IAMMoto(LocalS3):
    """A moto server that enforces IAM: its first `setup_calls` requests are not checked (the
    IAM set-up), every later one is (signature, access key, policies).  Run through
    tests/motoiam.py, which corrects moto's signature check for query values holding a '/'
    (moto re-signs a decoded query: every listing with a prefix like `.spoolup/ledger/` was
    refused with SignatureDoesNotMatch whatever the credentials)."""

    command = (sys.executable, str(Path(__file__).with_name("motoiam.py")))

    def __init__(self, log_path: Path, setup_calls: int):
        super().__init__(log_path, env={"INITIAL_NO_AUTH_ACTION_COUNT": str(setup_calls)})


class S3Server:
    """An S3 endpoint under test, as the S3-facing tests see it: `name` ("moto" or
    "rgw"), url and keys; `client()` is a boto3 S3 client for it."""

    def __init__(self, name: str, url: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
        self.name = name
        self.url = url
        self.access_key = access_key
        self.secret_key = secret_key

    def client(self):
        return s3_client(self.url, self.access_key, self.secret_key)

    def __repr__(self) -> str:
        return f"S3Server({self.name!r}, {self.url!r})"


def s3_client(url: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
    return boto3.client(
        "s3", endpoint_url=url, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=BotoConfig(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 5}),
    )


def toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):  # an inline table
        return "{" + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))


class TestUser:
    """An unprivileged user for tests where permissions are the point: spoolup runs as it the
    way the shipped systemd unit runs it (User=spoolup, no capabilities, so no
    CAP_DAC_OVERRIDE), started through setpriv.  Created (a system user without a home) the
    first time it is asked for; the tests run as root."""

    NAME = "spoolup-test"

    def __init__(self, name: str = NAME):
        if os.geteuid() != 0:  # never a skip: CI runs as root, and these tests are the point
            raise AssertionError("tests that run spoolup as an unprivileged user must run as root")
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                            "--shell", "/usr/sbin/nologin", "--user-group", name], check=True, capture_output=True)
            pw = pwd.getpwnam(name)
        self.name, self.uid, self.gid = name, pw.pw_uid, pw.pw_gid
        self.group = grp.getgrgid(self.gid).gr_name
        # the interpreter and the code under test must be reachable by the user (pyenv lives
        # under /root, pytest's tmp dirs are 0700): make their directories traversable (o+x),
        # never listable or writable
        for path in (Path(sys.executable).resolve(), Path(sys.executable), Path(__file__).resolve().parent.parent):
            self.traversable(path)

    def workdir(self, name: str) -> Path:
        """A fresh directory the user can reach (pytest's tmp dirs are 0700 and pytest resets
        their root's mode whenever a pytest starts), under /tmp/spoolup-test-users (0711)."""
        import tempfile

        root = Path(tempfile.gettempdir()) / "spoolup-test-users"
        root.mkdir(mode=0o711, exist_ok=True)
        os.chmod(root, 0o711)
        path = Path(tempfile.mkdtemp(prefix=f"{name[:40]}-", dir=root))
        os.chmod(path, 0o711)
        return path

    def prefix(self, caps: tuple[str, ...] = ()) -> list[str]:
        """argv prefix running a command as this user, with no capability at all, or with
        exactly `caps` (e.g. ("lease",), as the unit's AmbientCapabilities=CAP_LEASE gives)."""
        argv = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups"]
        if caps:
            wanted = ",".join(f"+{c}" for c in caps)
            argv += [f"--inh-caps=-all,{wanted}", f"--ambient-caps=-all,{wanted}", f"--bounding-set=-all,{wanted}"]
        else:
            argv += ["--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]
        return [*argv, "--"]

    @staticmethod
    def traversable(path: Path) -> None:
        for d in [p for p in Path(path).parents if p != Path("/")]:
            mode = d.stat().st_mode
            if not mode & stat.S_IXOTH:
                os.chmod(d, stat.S_IMODE(mode) | stat.S_IXOTH)

    def own(self, path: Path, mode: int = 0o700) -> Path:
        """A directory (or file) that belongs to the user, as StateDirectory= makes the state dir."""
        path = Path(path)
        if not path.exists():
            path.mkdir(parents=True)
        os.chown(path, self.uid, self.gid)
        os.chmod(path, mode)
        self.traversable(path)
        return path

    def share_spool(self, spool: Path) -> None:
        """The spool as syslog-ng would set it up for spoolup: the directory owned by root and the
        user's group, setgid (new files and directories get that group) and group-writable (spoolup
        deletes shipped files); files written by root, readable by the group."""
        spool.mkdir(parents=True, exist_ok=True)
        os.chown(spool, 0, self.gid)
        os.chmod(spool, 0o2770)
        self.traversable(spool)


class Spoolup:
    """A spoolup instance under test: its config, spool and state dirs, and its processes.

    state_dir: e.g. a mount point (see mounted()).
    user: a TestUser to run every spoolup command as (through setpriv, without capabilities
    unless `caps` names some); its state dir is owned by that user and the spool shared with it
    the way syslog-ng would set it up (TestUser.share_spool)."""

    def __init__(self, base: Path, url: str, bucket: str, *, state_dir: Path | None = None,
                 user: "TestUser | None" = None, caps: tuple[str, ...] = (), **options):
        self.base = base
        self.spool = base / "spool"
        self.state = state_dir or base / "state"  # state_dir: e.g. a mount point (see mounted())
        self.spool.mkdir(parents=True, exist_ok=True)
        self.config = base / "spoolup.toml"
        self.bucket = bucket
        self.url = url
        self.user = user
        self.runas: list[str] = []
        if user is not None:
            user.own(base, 0o755)  # its scratch files (crash marks, logs); the config stays root's
            user.share_spool(self.spool)
            user.own(self.state)
            self.runas = user.prefix(caps)
        self.options = {
            "url": url, "bucket": bucket, "access-key": ACCESS_KEY, "secret-key": SECRET_KEY,
            "region": "us-east-1", "spool-dir": str(self.spool), "state-dir": str(self.state),
            "log-format": "json", "poll-interval": 0.2, "retry-max-delay": 1.0, "s3-timeout": 10,
            "spool-reap": "1h",
        }
        self.options.update(options)
        self.write_config()
        self.procs: list[subprocess.Popen] = []

    def write_config(self, **changes) -> None:
        self.options.update(changes)
        self.config.write_text("".join(f"{k} = {toml(v)}\n" for k, v in self.options.items() if v is not None))
        if self.user is not None:  # as an operator would: root-owned, readable by spoolup's group (it holds secrets)
            os.chown(self.config, 0, self.user.gid)
            os.chmod(self.config, 0o640)

    def env(self, crash_at: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOOLUP_", "AWS_"))}
        if self.user is not None:
            env["HOME"] = "/nonexistent"
            env["PYTHONDONTWRITEBYTECODE"] = "1"  # the user cannot write __pycache__ in the checkout
        if crash_at:
            env["SPOOLUP_CRASH_AT"] = crash_at
        return env

    def limit_files(self, n: int) -> None:
        """Run every spoolup command under RLIMIT_NOFILE = n (soft and hard: spoolup cannot raise it)."""
        self.runas = ["prlimit", f"--nofile={n}:{n}", "--", *self.runas]

    def argv(self, *args: str) -> list[str]:
        """The command line of `spoolup ARGS --config ...`, as the test user when there is one."""
        return [*self.runas, sys.executable, "-m", "spoolup", *args, "--config", str(self.config)]

    def cmd(self, *args: str, crash_at: str | None = None, timeout: float = 120, check: bool = False):
        r = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=timeout,
                           env=self.env(crash_at))
        if check and r.returncode != 0:
            raise AssertionError(f"spoolup {' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def drain(self, timeout: float = 120, **kw):
        return self.cmd("drain", timeout=timeout, **kw)

    def status(self) -> dict:
        r = self.cmd("status", "--json", check=True)
        return json.loads(r.stdout)

    def start(self, crash_at: str | None = None) -> subprocess.Popen:
        log = open(self.base / "run.log", "ab")
        p = subprocess.Popen(self.argv("run"), stdout=log, stderr=log, env=self.env(crash_at))
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 60) -> int:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        return p.wait(timeout)

    def log_text(self) -> str:
        path = self.base / "run.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        # an upload process orphaned by a SIGKILLed parent stops on its own (parent-death signal)


# ---------------------------------------------------------------------------
# filesystems for the state dir


STATE_FILESYSTEMS = ("disk", "ramfs")  # "disk": the test run's own; "ramfs": no O_DIRECT


def need_root(what: str) -> None:
    """Mounting needs root: elsewhere the test is skipped with the reason -- except under CI,
    which must run it (a skip there would pass for a success)."""
    if os.geteuid() == 0:
        return
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"{what}: needs root to mount a filesystem, and CI must run it")
    pytest.skip(f"{what}: needs root to mount a filesystem")


@contextlib.contextmanager
def mounted(fstype: str, path: Path, options: str = "mode=0700", source: str | None = None):
    """A real filesystem of type `fstype` (ramfs, tmpfs, ...) mounted at `path` for the
    duration; unmounted (lazily, if something still holds it) afterwards."""
    need_root(f"a state dir on {fstype}")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", fstype, "-o", options, source or f"spoolup-test-{fstype}", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        import pytest

        pytest.fail(f"cannot mount a {fstype} at {path}: {r.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def ext4_loop(tmp_path: Path, *, birth_times: bool):
    """A real ext4 filesystem on a loop device (it hands a deleted file's inode to the next file
    created): 256-byte inodes record birth times, 128-byte ones do not (identity then rests on
    the bytes consumed).  Unmounted lazily if a spoolup process still holds it at teardown."""
    need_root("inode reuse on an ext4 loop mount")
    image = tmp_path / "ext4.img"
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    inode_size = ["-I", "256"] if birth_times else ["-I", "128"]
    subprocess.run(["mkfs.ext4", "-q", "-F", *inode_size, str(image)], check=True, capture_output=True)
    with mounted("ext4", tmp_path / "ext4", options="loop", source=str(image)) as mnt:
        yield mnt


# ---------------------------------------------------------------------------
# reading the bucket back


PROBE_SCRATCH = re.compile(r"\.spoolup-probe-[^/]{1,16}-[0-9a-f]{12}(-a b)?$")  # capabilities.PROBE_NAME


def is_spoolups_own(key: str) -> bool:
    """A key spoolup writes for itself: a ledger segment (<object-key's static prefix>.spoolup/
    ledger/...) or the capability probe's scratch object (<prefix>.spoolup-probe-..., left by a
    kill during the probe until the stale-scratch cleanup): readers of the log objects skip them."""
    return ".spoolup/ledger/" in key or PROBE_SCRATCH.search(key) is not None


def list_keys(s3, bucket: str, prefix: str = "", *, own: bool = False) -> list[str]:
    """The log objects' keys (own: spoolup's own keys, the ledger's segments, too)."""
    keys: list[str] = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(o["Key"] for o in page.get("Contents", []))
    except s3.exceptions.NoSuchBucket:
        return []
    return sorted(k for k in keys if own or not is_spoolups_own(k))


def key_index(key: str, base: str, suffix: str = "") -> int | None:
    """The index of `key` among base, base-1, base-2, ... (None: not one of them)."""
    if suffix:
        if not key.endswith(suffix):
            return None
        key = key[: -len(suffix)]
    if key == base:
        return 0
    if key.startswith(base + "-") and key[len(base) + 1:].isdigit():
        return int(key[len(base) + 1:])
    return None


def objects_of(s3, bucket: str, base: str, suffix: str = "") -> list[str]:
    """base, base-1, base-2, ... present in the bucket, in index order."""
    found = [(key_index(k, base, suffix), k) for k in list_keys(s3, bucket, base)]
    return [k for i, k in sorted(x for x in found if x[0] is not None)]


def get(s3, bucket: str, key: str) -> bytes:
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def content_of(s3, bucket: str, base: str, suffix: str = "") -> bytes:
    return b"".join(get(s3, bucket, k) for k in objects_of(s3, bucket, base, suffix))


def multipart_etag(parts: list[bytes]) -> str:
    """The ETag S3 gives an object completed from `parts`: the MD5 of the parts' MD5s,
    "-", their count.  Comparing it with the object's ETag checks the part boundaries on
    any server (Ceph RGW 16.2 ignores PartNumber on HeadObject and GetObject)."""
    return hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + f"-{len(parts)}"


def etag(s3, bucket: str, key: str) -> str:
    return s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


def pending_uploads(s3, bucket: str) -> list[tuple[str, str]]:
    try:
        r = s3.list_multipart_uploads(Bucket=bucket)
    except s3.exceptions.NoSuchBucket:
        return []
    return [(u["Key"], u["UploadId"]) for u in r.get("Uploads", []) or []]


def wait_for(predicate, timeout: float = 60, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def start_running(sp: Spoolup) -> subprocess.Popen:
    """`spoolup run`, returned once it holds the state dir (so that a drain asks it)."""
    proc = sp.start()
    wait_for(lambda: proc.poll() is not None or sp.status()["service"]["running"], 60, what="spoolup run")
    assert proc.poll() is None, sp.log_text()
    return proc


def log_events(text: str, event: str) -> list[dict]:
    """The JSON log lines of `text` (a log file, a stderr) whose event is `event`; a line that
    starts like JSON but is not fails the test."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            if doc.get("event") == event:
                out.append(doc)
    return out


def syslog_lines(n: int, *, host: str = "web01", start: int = 0, width: int = 0) -> bytes:
    """n syslog-like records with sequence numbers (optionally padded to about `width` bytes)."""
    out = []
    for i in range(start, start + n):
        line = f"Nov 25 12:00:{i % 60:02d} {host} app[{1000 + i % 7}]: seq={i} request served in {i % 997}ms"
        if width and len(line) < width - 1:
            line += " " + "x" * (width - len(line) - 2)
        out.append(line + "\n")
    return "".join(out).encode()
