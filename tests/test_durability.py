"""fsync: with `fsync = true` the chunk bytes of a batch are durable before the
journal commit that marks their spool bytes consumed is (docs/DESIGN.md,
"Durability").  Checked on the real system calls: `spoolup drain` runs under
strace, and every sync of the journal's write-ahead log by the ingest process
must find no chunk file with unsynced writes.  With `fsync = false` (the fast
mode) chunk files are never synced.  Skipped, with the reason, without strace.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from crashkit import assert_exact, noisy_lines, write
from helpers import syslog_lines

CALL = re.compile(r"^(?P<pid>\d+)\s+(?P<call>\w+)\((?P<fd>\d+)<(?P<path>[^>]*)>")
# calls that change a directory entry: openat(..., "path", flags...) = fd, rename*(.., "old", .., "new"),
# unlink*(.., "path")
ENTRY = re.compile(r'^(?P<pid>\d+)\s+(?P<call>openat|rename|renameat2?|unlink|unlinkat)\((?P<args>.*)\)\s+= (?P<ret>-?\d+)')
STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
FILES = {"big.log": noisy_lines(24_000, seed=3), "a.log": syslog_lines(3000, host="a"), "b.log": b"one\n"}
TRACED = "write,pwrite64,pwritev,fdatasync,fsync,syncfs,openat,rename,renameat,renameat2,unlink,unlinkat"


def traced_drain(sp) -> list[dict]:
    """The system calls of one `spoolup drain`, in order: dicts with pid, call, path (the fd's
    or the path argument), new (a rename's target), flags (an openat's)."""
    if shutil.which("strace") is None:
        if os.environ.get("CI"):
            pytest.fail("durability test: strace is missing, and CI must run this test (.ci/run installs it)")
        pytest.skip("durability test: strace is not installed (apt-get install strace)")
    out = sp.base / "strace.txt"
    r = subprocess.run(
        ["strace", "-f", "-qq", "-y", "-s", "4096", "-o", str(out), "-e", f"trace={TRACED}",
         sys.executable, "-m", "spoolup", "drain", "--config", str(sp.config)],
        capture_output=True, text=True, timeout=300, env=sp.env(),
    )
    if r.returncode != 0 and "PTRACE" in r.stderr.upper():
        pytest.skip(f"durability test: strace cannot trace here: {r.stderr.strip()[:200]}")
    assert r.returncode == 0, r.stderr[-3000:]
    calls = []
    for line in out.read_text(errors="replace").splitlines():
        m = ENTRY.match(line)
        if m:
            if int(m["ret"]) < 0:
                continue
            args = STRING.findall(m["args"])
            call = {"pid": m["pid"], "call": m["call"], "path": args[0] if args else "", "line": line,
                    "new": args[1] if len(args) > 1 else None, "flags": m["args"]}
            if m["call"] != "openat" and call["path"] and not call["path"].startswith("/"):
                call["path"] = "?relative:" + call["path"]
            calls.append(call)
            continue
        m = CALL.match(line)
        if m:
            calls.append({"pid": m["pid"], "call": m["call"], "path": m["path"], "line": line, "new": None,
                          "flags": ""})
    # the ingest thread of spoolup's main process is the one writing chunk files
    ingest = next((c["pid"] for c in calls if "/chunks/" in c["path"] and "write" in c["call"]), None)
    assert ingest is not None, "no chunk file was written"
    return [dict(c, ingest=c["pid"] == ingest) for c in calls]


def check_durable_before_commit(sp, calls: list[dict]) -> dict[str, int]:
    """Every sync of the journal's write-ahead log by the ingest process (a commit) finds
    - no chunk file with unsynced writes, and
    - no directory entry it changed in the state dir or the spool (a file created, renamed, or a
      reaped spool file deleted) whose directory has not been synced since (fsync of the
      directory, or syncfs).
    Chunk files are deleted (by either process) only after a commit; such a deletion need not be
    durable (a chunk file back after a power loss is unreferenced, removed at start).  Returns counts."""
    state, spool = str(sp.state), str(sp.spool)
    dirty: set[str] = set()
    entries: dict[str, str] = {}  # directory -> the change not yet synced there
    seen: set[str] = set()
    counts = {"wal_syncs": 0, "chunk_writes": 0, "created": 0, "renamed": 0, "deleted": 0, "dir_syncs": 0}
    committed: set[str] = set()  # pids that synced the WAL at least once
    for c in calls:
        call, path = c["call"], c["path"]
        if path.endswith(".tmp"):
            continue  # the compressed output of an open chunk: rebuilt from its raw chunk file after a crash
        is_chunk = "/chunks/" in path
        ours = path.startswith((state + "/", spool + "/")) and not path.startswith(state + "/metrics")
        if call in ("write", "pwrite64", "pwritev") and is_chunk:
            dirty.add(path)
            counts["chunk_writes"] += 1
        elif call in ("fdatasync", "fsync") and is_chunk:
            dirty.discard(path)
        elif call == "syncfs":
            dirty.clear()
            entries.clear()
        elif call in ("fdatasync", "fsync") and path in (state, state + "/chunks", state + "/dead-letter", spool):
            entries.pop(path, None)
            counts["dir_syncs"] += 1
        elif call in ("fdatasync", "fsync") and path.endswith("journal.sqlite-wal"):
            committed.add(c["pid"])
            if c["ingest"]:
                counts["wal_syncs"] += 1
                assert not dirty, f"the journal was synced while chunk files had unsynced writes: {dirty}\n{c['line']}"
                assert not entries, ("the journal was synced while directory entries it depends on were not: "
                                     f"{entries}\n{c['line']}")
        elif call == "openat" and "O_CREAT" in c["flags"] and ours and not path.endswith(("-wal", "-shm", "-journal")):
            if path not in seen and c["ingest"] and "/journal.sqlite" not in path:
                entries[os.path.dirname(path)] = c["line"]
                counts["created"] += 1
        elif call.startswith("rename") and ours and c["ingest"]:
            entries[os.path.dirname(path)] = c["line"]
            entries[os.path.dirname(c["new"])] = c["line"]
            counts["renamed"] += 1
        elif call.startswith("unlink") and ours:
            if is_chunk:  # after the commit that no longer references it (if the deletion is lost: a stray)
                assert c["pid"] in committed, f"a chunk file was deleted before any commit of its process\n{c['line']}"
            elif c["ingest"]:  # a reaped spool file: gone for good before the journal says so
                entries[os.path.dirname(path)] = c["line"]
            counts["deleted"] += 1
        seen.add(path)
    return counts


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_fsync_true_chunk_bytes_and_entries_are_durable_before_the_offset_is(make_spoolup, s3, compression):
    """Files created (chunk and dead-letter files), renamed (compressed parts, spool files moved
    aside to be reaped) and deleted (reaped spool files): each directory is synced before the
    commit that depends on it."""
    sp = make_spoolup(**{"object-key": "{name}", "fsync": True, "compression": compression, "spool-reap": "1s",
                         "format": "lines"})
    files = dict(FILES, **{"idle.log": syslog_lines(40, host="idle")})
    for name, data in files.items():
        write(sp.spool / name, data)
    old = time.time() - 3600
    os.utime(sp.spool / "idle.log", (old, old))
    counts = check_durable_before_commit(sp, traced_drain(sp))
    assert counts["chunk_writes"] and counts["wal_syncs"] and counts["created"], counts
    assert counts["deleted"] and counts["renamed"], counts  # the reap (and gzip's .part renames) were seen
    assert not (sp.spool / "idle.log").exists()
    assert_exact(s3, sp.bucket, files, suffix=".gz" if compression == "gzip" else "")


def test_fsync_true_a_chunk_created_and_sealed_in_one_batch_is_in_its_directory_before_the_commit(
        make_spoolup, s3):
    """max-object-size of one record: each object's chunk is created, written, sealed and
    closed within the batch, so no chunk is left dirty at the sync -- its directory entry
    must be synced all the same."""
    sp = make_spoolup(**{"object-key": "{name}", "fsync": True, "max-object-size": 1})
    files = {"one.log": b"first\nsecond\nthird\n"}
    for name, data in files.items():
        write(sp.spool / name, data)
    counts = check_durable_before_commit(sp, traced_drain(sp))
    assert counts["created"] >= 3 and counts["wal_syncs"], counts
    layout = assert_exact(s3, sp.bucket, files)
    assert len(layout["one.log"]) == 3, layout


def test_fsync_false_is_the_fast_mode_without_syncs(make_spoolup, s3):
    sp = make_spoolup(**{"object-key": "{name}", "fsync": False})
    for name, data in FILES.items():
        write(sp.spool / name, data)
    calls = traced_drain(sp)
    chunk_writes = sum(1 for c in calls if c["call"] in ("write", "pwrite64", "pwritev") and "/chunks/" in c["path"])
    chunk_syncs = [c["line"] for c in calls if c["call"] in ("fdatasync", "fsync", "syncfs") and "/chunks" in c["path"]]
    assert chunk_writes and not chunk_syncs, chunk_syncs[:3]
    assert_exact(s3, sp.bucket, FILES)
