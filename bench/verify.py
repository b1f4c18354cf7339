"""Issue 22: `spoolup verify` over a bucket of many objects (default 100,000).

The bucket is filled directly: `files` spool files shipped into `objects / files` objects
each, their ledger segments (1,000 records each, as the coordinator's bursts write them),
and a journal that matches (every object done, its spans, every source consumed to its end),
written with the journal's own schema.  On moto (`--server moto`, the default) the objects go
straight into the backend of a moto server that runs in this process (100,000 PutObjects
over HTTP take moto ~12 minutes; the bench measures the audit, not the filling).  On Ceph RGW
(`--server rgw`: a throw-away cluster on loopback, tests/localrgw.py, as bench/torture.py
starts it) they are PUT over HTTP by a thread pool: same bodies, segments and journal, only
the way into the bucket differs.  Everything measured goes over HTTP from processes of its own.

Measured: `spoolup verify --json` (a process, as an operator runs it: requests and seconds
from its report), against a bare boto3 listing of the same prefix by a process of its own in
the same run (the least any audit of the bucket must do), alternated round by round.  The
figure is the ratio.  moto renders every listing page from its whole bucket, so both sides
are slow in absolute terms there; RGW lists from its bucket index, so 100,000 objects fit.

    python -m bench.verify [--server moto|rgw] [--objects N] [--files F] [--rounds R]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import ACCESS_KEY, SECRET_KEY, client, free_port, new_bucket, spoolup_config, workdir

ROOT = Path(__file__).resolve().parent.parent

PREFIX = "logs/"
BODY_LINES = 2  # records per object


def body(f: int, k: int) -> bytes:
    return b"".join(b"Nov 25 12:00:00 host%05d app: seq=%08d\n" % (f, k * BODY_LINES + i) for i in range(BODY_LINES))


def moto_put(bucket: str):
    """PutObject straight into the backend of the moto server in this process (moto gives
    each the ETag S3 would: the MD5 of the body)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]

    def put_all(puts: list[tuple[str, bytes]]) -> None:
        for key, data in puts:
            backend.put_object(bucket, key, data)
    return put_all


def http_put(url: str, bucket: str, threads: int = 16):
    """PutObject over HTTP by a pool of `threads` (a client each), checking each ETag is the
    MD5 of its body, as the ledger records say."""
    local = threading.local()

    def one(item: tuple[str, bytes]) -> None:
        if not hasattr(local, "s3"):
            local.s3 = client(url, threads=1)
        key, data = item
        etag = local.s3.put_object(Bucket=bucket, Key=key, Body=data)["ETag"].strip('"')
        if etag != hashlib.md5(data).hexdigest():
            raise RuntimeError(f"{key}: ETag {etag} is not the MD5 of its body")

    def put_all(puts: list[tuple[str, bytes]]) -> None:
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            for n, _ in enumerate(pool.map(one, puts, chunksize=64), 1):
                if n % 10_000 == 0:  # (a fill of 100,000 takes minutes: say where it is)
                    print(f"filled {n:,} of {len(puts):,} in {time.perf_counter() - started:.0f} s", file=sys.stderr,
                          flush=True)
    return put_all


def fill(url: str, bucket: str, base: Path, objects: int, files: int, put_all=None) -> dict:
    """The bucket, its ledger segments and the matching journal; `put_all` puts the objects
    (default: into the in-process moto server's backend)."""
    from spoolup import ledger
    from spoolup.journal import Journal

    client(url).create_bucket(Bucket=bucket)
    put_all = put_all or moto_put(bucket)
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
    put_all(puts)
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


@contextlib.contextmanager
def rgw_server(base: Path):
    """A throw-away Ceph RGW on loopback (tests/localrgw.py), with the bench's keys."""
    for path in (ROOT, ROOT / "tests"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    from localrgw import LocalRGW

    with LocalRGW(base / "rgw", ACCESS_KEY, SECRET_KEY) as rgw:
        yield rgw


def load() -> str:
    """The machine's load averages now (it is shared), as `uptime` gives them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(objects: int = 100_000, files: int = 1000, rounds: int = 3, server: str = "moto", threads: int = 16) -> dict:
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(workdir())
        bucket = new_bucket()
        if server == "rgw":
            rgw = stack.enter_context(rgw_server(base))
            url, startup_s = rgw.url, round(rgw.startup_seconds, 1)
            filled = fill(url, bucket, base, objects, files, http_put(url, bucket, threads))
        elif server == "moto":
            url, startup_s = stack.enter_context(InProcessMoto()).url, None
            filled = fill(url, bucket, base, objects, files)
        else:
            raise ValueError(f"server must be moto or rgw, not {server!r}")
        cfg = spoolup_config(base, url, bucket, **{"object-key": PREFIX + "{path}", "log-level": "warning"})
        loads = [load()]
        verify_s, verify_wall, list_s = [], [], []
        report = {}
        for _ in range(rounds):  # alternated, so that both see the same server state
            s, pages, keys = listing(url, bucket)
            list_s.append(s)
            started = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "spoolup", "verify", "--json", "--config", str(cfg)],
                               capture_output=True, text=True)
            verify_wall.append(time.perf_counter() - started)
            if r.returncode != 0:
                raise RuntimeError(f"verify exited {r.returncode}: {r.stdout[-2000:]}{r.stderr[-2000:]}")
            report = json.loads(r.stdout)
            verify_s.append(report["seconds"])
        loads.append(load())
    best_v, best_l = min(verify_s), min(list_s)
    return {"figure": "issue 22: spoolup verify over many objects", "server": server, "objects": objects,
            "files": files, "segments": filled["segments"], "fill_s": filled["fill_s"], "server_startup_s": startup_s,
            "rounds": rounds, "verify_s_rounds": [round(x, 2) for x in verify_s],
            "boto3_listing_s_rounds": [round(x, 2) for x in list_s], "load_before_after": loads,
            "verify_requests": report["requests"], "listing_pages": pages, "listed_keys": keys,
            "verify_s": round(best_v, 2), "verify_wall_s": round(min(verify_wall), 2),
            "boto3_listing_s": round(best_l, 2), "ratio": round(best_v / best_l, 2),
            "problems": len(report["problems"]), "sources_checked": report["sources"]["checked"],
            "goal": "listing pages + one GET per segment, no request per object"}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.verify", description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", choices=("moto", "rgw"), default="moto",
                    help="moto: filled into an in-process backend; rgw: a throw-away Ceph RGW on loopback, "
                         "filled over HTTP")
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--files", type=int, help="spool files (default: objects / 100)")
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds: listing, then verify")
    ap.add_argument("--threads", type=int, default=16, help="PutObject threads filling RGW")
    args = ap.parse_args(argv)
    files = args.files or max(1, args.objects // 100)
    print(json.dumps(run(args.objects, files=files, rounds=args.rounds, server=args.server, threads=args.threads),
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
