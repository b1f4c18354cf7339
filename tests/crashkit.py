"""Helpers shared by the crash-safety tests (kill points, recover, faults, disk
full, torture): crashing a real spoolup at a named point, reading its journal
read-only, and asserting that the bucket holds every spool byte exactly once.

Nothing here mocks S3, SQLite or the filesystem.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import sqlite_utils

from faultproxy import PROBE_KEY
from helpers import Spoolup, get, list_keys, objects_of, pending_uploads, wait_for
from spoolup.journal import Journal

T = TypeVar("T")

MiB = 1024 * 1024


def write(path: Path, data: bytes, mode: str = "wb") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as f:
        f.write(data)


def copytruncate(path: Path, data: bytes) -> None:
    """What logrotate's copytruncate (or a writer's O_TRUNC reopen) does: the same inode,
    truncated to nothing, then written again from byte 0."""
    with open(path, "r+b") as f:
        f.truncate(0)
        f.write(data)


def noisy_lines(n: int, *, width: int = 256, seed: int = 1, start: int = 0, tag: str = "n") -> bytes:
    """n records with sequence numbers and random hex (compresses only about 2:1, so a
    compressed object of them still needs several 5 MiB parts)."""
    import random

    rnd = random.Random(seed)
    pad = max(width - 24, 2) // 2
    return b"".join(f"{tag} seq={i} {rnd.randbytes(pad).hex()}\n".encode() for i in range(start, start + n))


def split_records(data: bytes, at: int) -> tuple[bytes, bytes]:
    """data cut after the record that holds byte `at` (both halves whole records)."""
    cut = data.index(b"\n", at) + 1
    return data[:cut], data[cut:]


# ---------------------------------------------------------------------------
# crashing spoolup


def crash_env(sp: Spoolup, point: str | None, *, scope: str = "service", mark: Path | None = None) -> dict:
    env = sp.env(point)
    if point:
        env["SPOOLUP_CRASH_SCOPE"] = scope
        env["SPOOLUP_CRASH_MARK"] = str(mark or crash_mark(sp))
    return env


def crash_mark(sp: Spoolup) -> Path:
    return sp.base / "crash-mark"


def spoolup_cmd(sp: Spoolup, *args: str, env: dict | None = None, timeout: float = 120):
    return subprocess.run(sp.argv(*args), capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else sp.env())


def drain_crashing(sp: Spoolup, point: str, *, scope: str = "service", timeout: float = 120):
    """`spoolup drain` with a crash at `point`; asserts the crash happened (SIGKILL, mark written)."""
    mark = crash_mark(sp)
    mark.unlink(missing_ok=True)
    r = spoolup_cmd(sp, "drain", env=crash_env(sp, point, scope=scope, mark=mark), timeout=timeout)
    assert mark.exists(), f"the crash point {point} was never reached\n{r.stdout}\n{r.stderr[-3000:]}"
    if scope == "service" or point.split(":")[0] in MAIN_PROCESS_POINTS:
        assert r.returncode == -9, f"drain was not killed at {point}: exit {r.returncode}\n{r.stderr[-3000:]}"
    return r


MAIN_PROCESS_POINTS = ("after-chunk-write", "after-chunk-sync", "after-batch-commit", "before-reap-unlink",
                       "after-reap-unlink")


def start_crashing(sp: Spoolup, point: str, *, scope: str = "service") -> subprocess.Popen:
    """`spoolup run` with a crash at `point` (the caller waits for it)."""
    mark = crash_mark(sp)
    mark.unlink(missing_ok=True)
    log = open(sp.base / "run.log", "ab")
    p = subprocess.Popen(sp.argv("run"), stdout=log, stderr=log, env=crash_env(sp, point, scope=scope, mark=mark))
    sp.procs.append(p)
    return p


def wait_killed(sp: Spoolup, p: subprocess.Popen, timeout: float = 60) -> None:
    try:
        code = p.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"spoolup run was not killed within {timeout}s\n{sp.log_text()[-3000:]}") from None
    assert crash_mark(sp).exists() and code == -9, f"exit {code}\n{sp.log_text()[-3000:]}"


def wait_upload_process_gone(sp: Spoolup, timeout: float = 30) -> None:
    """An upload process orphaned by a killed service finishes on its own (SIGTERM from
    the parent-death signal); wait for it, so a test's next step sees a quiet bucket."""
    lock = sp.state / "upload.lock"
    if not lock.exists():
        return
    import fcntl

    def free() -> bool:
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    wait_for(free, timeout, 0.1, what="the orphaned upload process to stop")


# ---------------------------------------------------------------------------
# the journal, read-only: its own verbs, or sqlite-utils for what no verb reads; raw SQL
# (query, journal_write) only where a test inspects or damages the file itself


def journal_path(sp: Spoolup) -> Path:
    return sp.state / "journal.sqlite"


@contextlib.contextmanager
def journal(sp: Spoolup) -> Iterator[Journal]:
    """The journal opened read-only, as `spoolup status` opens it: never blocks or changes the service."""
    j = Journal.open_readonly(journal_path(sp))
    try:
        yield j
    finally:
        j.close()


def ask(sp: Spoolup, verb: Callable[[Journal], T]) -> T:
    """One read verb's answer, e.g. ask(sp, Journal.pending_objects)."""
    with journal(sp) as j:
        return verb(j)


@contextlib.contextmanager
def journal_db(sp: Spoolup) -> Iterator[sqlite_utils.Database]:
    """sqlite-utils over a read-only connection to the journal: its tables, rows and indexes."""
    conn = sqlite3.connect(f"file:{journal_path(sp)}?mode=ro", uri=True, timeout=30)
    try:
        yield sqlite_utils.Database(conn)
    finally:
        conn.close()


def rows(sp: Spoolup, table: str, where: str | None = None, args: tuple = (), *, select: str = "*",
         order_by: str | None = None) -> list[dict]:
    """Rows of one journal table as dicts."""
    with journal_db(sp) as db:
        return list(db[table].rows_where(where, args, select=select, order_by=order_by))


def chunks_in(sp: Spoolup, state: str) -> list[dict]:
    """The journal's chunks in `state` (open, sealed, uploaded), by object and part."""
    return rows(sp, "chunks", "state = ?", (state,), order_by="object_id, part")


def journaled_upload(sp: Spoolup) -> tuple[str, str]:
    """(final key, upload id) of the one multipart upload the journal holds."""
    (o,) = rows(sp, "objects", "upload_id IS NOT NULL")
    return o["final_key"], o["upload_id"]


def objects_of_source(sp: Spoolup, path: str) -> list[dict]:
    """The journal's objects holding bytes of spool file `path`, in the order ingest created them."""
    sources = {s["id"] for s in rows(sp, "sources", "path = ?", (path,), select="id")}
    ids = {r["object_id"] for r in rows(sp, "source_objects") if r["source_id"] in sources}
    return [o for o in rows(sp, "objects", order_by="id") if o["id"] in ids]


def completed(sp: Spoolup) -> int:
    """Objects completed (done), ever (until pruned)."""
    return ask(sp, lambda j: j.object_totals("done")[0])


def query(sp: Spoolup, sql: str, args: tuple = ()) -> list[tuple]:
    """Raw SQL on the journal file (read-only): for what is not a row of a table (PRAGMA, sqlite_master)."""
    conn = sqlite3.connect(f"file:{journal_path(sp)}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def journal_write(sp: Spoolup, sql: str, args: tuple = ()) -> None:
    """Change the journal behind spoolup's back (tests of damage only; spoolup must not be running)."""
    conn = sqlite3.connect(journal_path(sp), isolation_level=None, timeout=30)
    try:
        conn.execute(sql, args)
    finally:
        conn.close()


def journal_state(sp: Spoolup) -> dict[str, list[tuple]]:
    """What the journal says about sources, objects and chunks (not heartbeats or errors)."""
    return {
        "sources": rows(sp, "sources", select="id, dev, ino, path, offset, size, state", order_by="id"),
        "objects": rows(sp, "objects", order_by="id"),
        "chunks": rows(sp, "chunks", order_by="object_id, part"),
    }


def consumed(sp: Spoolup) -> int:
    """Spool bytes journaled as consumed, all sources."""
    try:
        return sum(r["offset"] for r in rows(sp, "sources", select="offset"))
    except sqlite3.OperationalError:
        return 0


def chunk_files(sp: Spoolup) -> dict[str, int]:
    d = sp.state / "chunks"
    return {e.name: e.stat().st_size for e in os.scandir(d)} if d.exists() else {}


# ---------------------------------------------------------------------------
# the bucket


def decode(body: bytes, suffix: str) -> bytes:
    if suffix == ".gz":
        return gzip.decompress(body)
    if suffix == ".zst":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(body)
    return body


def assert_exact(s3, bucket: str, expected: dict[str, bytes], *, suffix: str = "",
                 foreign: dict[str, bytes] | None = None, empty_orphans: bool = False) -> dict[str, list[str]]:
    """Each base key's objects, concatenated in index order, are exactly its spool bytes;
    no object is empty, none is there that should not be, no multipart upload is pending --
    with `empty_orphans`, except uploads holding no part (a test's own, at a key spoolup
    does not claim: spoolup adopts or aborts only the empty uploads at keys it claimed after
    its Create may have been sent, docs/operations.md).  Returns base -> keys."""
    foreign = foreign or {}
    layout: dict[str, list[str]] = {}
    ours: list[str] = []
    for base, data in expected.items():
        keys = [k for k in objects_of(s3, bucket, base, suffix) if k not in foreign]
        bodies = [decode(get(s3, bucket, k), suffix) for k in keys]
        assert all(bodies), f"{base}: an empty object among {keys}"
        got = b"".join(bodies)
        if got != data:
            raise AssertionError(f"{base}: bucket has {len(got)} bytes in {keys}, spool has {len(data)}; "
                                 f"{describe_difference(got, data)}")
        layout[base] = keys
        ours.extend(keys)
    for key, body in foreign.items():
        assert get(s3, bucket, key) == body, f"foreign object {key} was overwritten"
    assert sorted(list_keys(s3, bucket)) == sorted(ours + list(foreign)), "unexpected objects in the bucket"
    pending = pending_uploads(s3, bucket)
    if empty_orphans:
        pending = [(k, u) for k, u in pending if s3.list_parts(Bucket=bucket, Key=k, UploadId=u).get("Parts")]
    assert pending == [], f"multipart uploads left pending: {pending}"
    return layout


def describe_difference(got: bytes, want: bytes) -> str:
    g, w = got.splitlines(keepends=True), want.splitlines(keepends=True)
    gs, ws = set(g), set(w)
    missing = [ln for ln in w if ln not in gs]
    extra = len(g) - len(gs)
    return (f"{len(missing)} record(s) missing (first: {missing[:1]!r}), {extra} duplicated record(s), "
            f"{len([ln for ln in g if ln not in ws])} unexpected")


def wait_done(sp: Spoolup, timeout: float = 60) -> None:
    """No object pending in the journal (the service is running)."""
    wait_for(lambda: ask(sp, Journal.pending_objects) == 0, timeout,
             what="all objects completed")


def now() -> float:
    return time.monotonic()


# ---------------------------------------------------------------------------
# real filesystems for the state dir


def mount_tmpfs(mnt: Path, size: str) -> None:
    """A tmpfs of `size` at mnt (needs root; a failure fails the test, never skips it)."""
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "spoolup-test", str(mnt)],
                   check=True, capture_output=True)


def umount(mnt: Path) -> None:
    if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill_filesystem(directory: Path, leave: int = 0) -> Path:
    """Fill the filesystem of `directory` to its last byte with one foreign file (as something
    else filling the disk does), then give `leave` bytes back."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for block in (1 << 20, 64 << 10, 4 << 10, 512, 1):  # big writes, then smaller, to the last byte
            try:
                while True:
                    os.write(fd, b"\xff" * block)
            except OSError:
                pass
    finally:
        os.close(fd)
    size = filler.stat().st_size
    os.truncate(filler, max(size - leave, 0))
    return filler


# ---------------------------------------------------------------------------
# a capability probe cut short


@contextlib.contextmanager
def probe_complete_held(proxy) -> Iterator[threading.Event]:
    """The capability probe's CompleteMultipartUpload held by the fault proxy, never forwarded,
    so that a kill lands while the probe is under way: yields an event set once the Complete is
    held.  On exit the proxy's rules are cleared and the held request is dropped."""
    held, gate = threading.Event(), threading.Event()

    def hold_then_drop(req):
        held.set()
        gate.wait(120)
        raise ConnectionAbortedError("dropped by the test: never forwarded")

    proxy.add("CompleteMultipartUpload", action="hook", hook=hold_then_drop, key=PROBE_KEY)
    try:
        yield held
    finally:
        proxy.clear()
        gate.set()
