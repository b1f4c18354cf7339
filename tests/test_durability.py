"""fsync: with `fsync = true` the chunk bytes of a batch are durable before the
journal commit that marks their spool bytes consumed is (docs/DESIGN.md,
"Durability").  Checked on the real system calls: `spoolup drain` runs under
strace, and every sync of the journal's write-ahead log by the ingest process
must find no chunk file with unsynced writes.  With `fsync = false` (the fast
mode) chunk files are never synced.  Skipped, with the reason, without strace.
"""

from __future__ import annotations

import re
import os
import shutil
import subprocess
import sys

import pytest

from crashkit import assert_exact, noisy_lines, write
from helpers import syslog_lines

CALL = re.compile(r"^(?P<pid>\d+)\s+(?P<call>\w+)\((?P<fd>\d+)<(?P<path>[^>]*)>")
FILES = {"big.log": noisy_lines(24_000, seed=3), "a.log": syslog_lines(3000, host="a"), "b.log": b"one\n"}


def traced_drain(sp) -> list[tuple[str, str, str]]:
    if shutil.which("strace") is None:
        if os.environ.get("CI"):
            pytest.fail("durability test: strace is missing, and CI must run this test (.ci/run installs it)")
        pytest.skip("durability test: strace is not installed (apt-get install strace)")
    out = sp.base / "strace.txt"
    r = subprocess.run(
        ["strace", "-f", "-qq", "-y", "-o", str(out), "-e", "trace=write,pwrite64,pwritev,fdatasync,fsync,syncfs",
         sys.executable, "-m", "spoolup", "drain", "--config", str(sp.config)],
        capture_output=True, text=True, timeout=300, env=sp.env(),
    )
    if r.returncode != 0 and "PTRACE" in r.stderr.upper():
        pytest.skip(f"durability test: strace cannot trace here: {r.stderr.strip()[:200]}")
    assert r.returncode == 0, r.stderr[-3000:]
    parsed = [m for m in map(CALL.match, out.read_text(errors="replace").splitlines()) if m]
    # the ingest thread of spoolup's main process is the one writing chunk files
    ingest = next((m["pid"] for m in parsed if "/chunks/" in m["path"] and "write" in m["call"]), None)
    assert ingest is not None, "no chunk file was written"
    return [(m["call"], m["path"], m.string) for m in parsed if m["pid"] == ingest]


def test_fsync_true_chunk_bytes_are_durable_before_the_offset_is(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "{name}", "fsync": True})
    for name, data in FILES.items():
        write(sp.spool / name, data)
    calls = traced_drain(sp)
    dirty: set[str] = set()
    wal_syncs = chunk_writes = 0
    for call, path, line in calls:
        is_chunk = "/chunks/" in path
        if call in ("write", "pwrite64", "pwritev") and is_chunk:
            dirty.add(path)
            chunk_writes += 1
        elif call in ("fdatasync", "fsync") and is_chunk:
            dirty.discard(path)
        elif call == "syncfs":
            dirty.clear()
        elif call in ("fdatasync", "fsync") and path.endswith("journal.sqlite-wal"):
            wal_syncs += 1
            assert not dirty, f"the journal was synced while chunk files had unsynced writes: {dirty}\n{line}"
    assert chunk_writes and wal_syncs, (chunk_writes, wal_syncs)
    assert_exact(s3, sp.bucket, FILES)


def test_fsync_false_is_the_fast_mode_without_syncs(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "{name}", "fsync": False})
    for name, data in FILES.items():
        write(sp.spool / name, data)
    calls = traced_drain(sp)
    chunk_writes = sum(1 for c, p, _ in calls if c in ("write", "pwrite64", "pwritev") and "/chunks/" in p)
    chunk_syncs = [line for c, p, line in calls if c in ("fdatasync", "fsync", "syncfs") and "/chunks" in p]
    assert chunk_writes and not chunk_syncs, chunk_syncs[:3]
    assert_exact(s3, sp.bucket, FILES)
