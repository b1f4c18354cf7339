"""Issue 22: `spoolup verify` over a bucket of many objects (default 100,000).

The bucket is filled directly: `files` spool files shipped into `objects / files` objects
each, their ledger segments (1,000 records each, as the coordinator's bursts write them),
and a journal that matches (every object done, its spans, every source consumed to its end),
written with the journal's own schema.  The objects go straight into the backend of a moto
server that runs in this process (100,000 PutObjects over HTTP take moto ~12 minutes; the
bench measures the audit, not the filling); everything measured goes over HTTP from
processes of its own.

Measured: `spoolup verify --json` (a process, as an operator runs it: requests and seconds
from its report), against a bare boto3 listing of the same prefix by a process of its own in
the same run (the least any audit of the bucket must do).  The figure is the ratio.  moto
renders every listing page from its whole bucket, so both sides are slow in absolute terms.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from bench.common import client, free_port, new_bucket, spoolup_config, workdir

PREFIX = "logs/"
BODY_LINES = 2  # records per object


def body(f: int, k: int) -> bytes:
    return b"".join(b"Nov 25 12:00:00 host%05d app: seq=%08d\n" % (f, k * BODY_LINES + i) for i in range(BODY_LINES))


def fill(url: str, bucket: str, base: Path, objects: int, files: int) -> dict:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    from spoolup import ledger
    from spoolup.journal import Journal

    client(url).create_bucket(Bucket=bucket)
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    spool = base / "spool"
    spool.mkdir(parents=True, exist_ok=True)
    agent = ledger.default_agent_id(spool)
    per_file = objects // files
    journal_path = base / "state" / "journal.sqlite"
    journal_path.parent.mkdir(mode=0o700)
    j = Journal.open(journal_path, fsync=False)
    journal_id = j.journal_id
    j.close()
    now = time.time()
    records, sources, objs, ranges = [], [], [], []
    started = time.perf_counter()
    puts = []
    oid = 0
    for f in range(files):
        head = body(f, 0)[:64]
        size = sum(len(body(f, k)) for k in range(per_file))
        sources.append((f + 1, 100, 1000 + f, f"host{f:05d}/app.log", size, head, now - 7200))
        offset = 0
        for k in range(per_file):
            oid += 1
            data = body(f, k)
            key = f"{PREFIX}host{f:05d}/app.log" + (f"-{k}" if k else "")
            etag = hashlib.md5(data).hexdigest()
            puts.append((key, data))
            span = (offset, offset + len(data))
            offset += len(data)
            src = ledger.SourceSpans(100, 1000 + f, None, len(head), ledger.head_digest(head),
                                     f"host{f:05d}/app.log", (span,))
            records.append(ledger.Record(journal_id, oid, f"{PREFIX}host{f:05d}/app.log", "", k, key, "single",
                                         BODY_LINES, len(data), len(data), etag, None, (src,)))
            objs.append((oid, f"{PREFIX}host{f:05d}/app.log", k, key, len(data), BODY_LINES, now - 3600, etag,
                         (oid - 1) // 1000 + 1))
            ranges.append((oid, f + 1, span[0], span[1]))
    segments = [ledger.Segment(agent, journal_id, n // 1000 + 1, now - 3600, tuple(records[n:n + 1000]))
                for n in range(0, len(records), 1000)]
    puts += [(ledger.segment_key(PREFIX + "{path}", agent, seg.seq), seg.encode()) for seg in segments]
    for key, data in puts:  # (moto gives each the ETag S3 would: the MD5 of the body)
        backend.put_object(bucket, key, data)
    fill_s = time.perf_counter() - started
    # the journal that shipped them (the bench writes the rows itself: bench/ is outside the
    # journal boundary, as bench/common.py's read-only polls are)
    c = sqlite3.connect(journal_path, isolation_level=None)
    c.execute("BEGIN")
    c.executemany("INSERT INTO sources (id, dev, ino, path, key_path, offset, size, head, first_seen, updated) "
                  "VALUES (?, ?, ?, ?, ?4, ?5, ?5, ?, ?, ?7)", sources)
    c.executemany("INSERT INTO objects (id, key, ts, state, idx, final_key, mode, size, records, created, last_write,"
                  " done_at, etag, ledger_seq) VALUES (?, ?, '', 'done', ?, ?, 'single', ?, ?, ?7, ?7, ?7, ?, ?)", objs)
    c.executemany('INSERT INTO object_ranges (object_id, source_id, start, "end") VALUES (?, ?, ?, ?)', ranges)
    c.execute("INSERT INTO meta (name, value) VALUES ('ledger_seq', ?)", (str(len(segments)),))
    c.execute("COMMIT")
    c.close()
    return {"fill_s": round(fill_s, 1), "segments": len(segments)}


LISTING = """
import json, sys, time
from bench.common import client
s3 = client(sys.argv[1])
started = time.perf_counter()
pages = keys = 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=sys.argv[2], Prefix=sys.argv[3]):
    pages += 1
    keys += len(page.get("Contents", []))
print(json.dumps([time.perf_counter() - started, pages, keys]))
"""


def listing(url: str, bucket: str) -> tuple[float, int, int]:
    """A bare boto3 listing of the prefix, by a process of its own: (seconds, pages, keys)."""
    r = subprocess.run([sys.executable, "-c", LISTING, url, bucket, PREFIX], capture_output=True, text=True,
                       check=True)
    return tuple(json.loads(r.stdout))


class InProcessMoto:
    def __enter__(self):
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc):
        self.server.stop()


def run(objects: int = 100_000, files: int = 1000, rounds: int = 3) -> dict:
    with workdir() as base, InProcessMoto() as moto:
        bucket = new_bucket()
        filled = fill(moto.url, bucket, base, objects, files)
        cfg = spoolup_config(base, moto.url, bucket, **{"object-key": PREFIX + "{path}", "log-level": "warning"})
        verify_s, verify_wall, list_s = [], [], []
        report = {}
        for _ in range(rounds):  # alternated, so that both see the same server state
            s, pages, keys = listing(moto.url, bucket)
            list_s.append(s)
            started = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "spoolup", "verify", "--json", "--config", str(cfg)],
                               capture_output=True, text=True)
            verify_wall.append(time.perf_counter() - started)
            if r.returncode != 0:
                raise RuntimeError(f"verify exited {r.returncode}: {r.stdout[-2000:]}{r.stderr[-2000:]}")
            report = json.loads(r.stdout)
            verify_s.append(report["seconds"])
    best_v, best_l = min(verify_s), min(list_s)
    return {"figure": "issue 22: spoolup verify over many objects", "objects": objects, "files": files,
            "segments": filled["segments"], "fill_s": filled["fill_s"],
            "verify_requests": report["requests"], "listing_pages": pages, "listed_keys": keys,
            "verify_s": round(best_v, 2), "verify_wall_s": round(min(verify_wall), 2),
            "boto3_listing_s": round(best_l, 2), "ratio": round(best_v / best_l, 2),
            "problems": len(report["problems"]), "sources_checked": report["sources"]["checked"],
            "goal": "listing pages + one GET per segment, no request per object"}


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    print(json.dumps(run(n, files=max(1, n // 100)), indent=2))
