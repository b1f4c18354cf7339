"""Figure 7: start-up cost against history (issue 11, item 8).

A state dir that shipped and reaped many spool files keeps their `sources` rows.
Each start (and each disk-full rollback) loads the journal's live state:
Journal.open, Spool.load, Ingest.load -- measured here in a fresh process, time and
peak RSS, on a journal with HISTORY reaped spool files and 10 live ones, against the
same-run baseline of a journal with no history.  Also measured: the first start's
one-time prune of that history (Journal.prune_sources), and the start after it.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from bench.common import workdir

LIVE = 10

_MEASURE = r"""
import json, resource, sys, time
from pathlib import Path
from spoolup import config, logs
from spoolup.chunks import ChunkStore, Codec
from spoolup.deadletter import DeadLetters
from spoolup.ingest import Ingest
from spoolup.journal import Journal
from spoolup.spool import Spool

base = Path(sys.argv[1])
cfg = config.from_mapping({"bucket": "bench", "spool-dir": str(base / "spool"), "state-dir": str(base / "state")})
log = logs.get("bench")
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
journal = Journal.open(cfg.journal_path, fsync=False)
pruned = journal.prune_sources() if sys.argv[2] == "prune" else 0
spool = Spool(cfg.spool_dir, journal, log, object_key=cfg.object_key)
ingest = Ingest(cfg, journal, spool, ChunkStore(cfg.chunk_dir, Codec("none", 0), fsync=False),
                DeadLetters(cfg.deadletter_dir, fsync=False, log=log), log)
spool.load()
ingest.load()
elapsed = time.perf_counter() - t0
journal.close()
print(json.dumps({"seconds": elapsed, "rss_growth_KiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0,
                  "live_sources": len(spool.sources), "pruned": pruned}))
"""


def _state(base: Path, history: int) -> Path:
    (base / "spool").mkdir(parents=True)
    (base / "state" / "chunks").mkdir(parents=True)
    (base / "state" / "dead-letter").mkdir(parents=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from spoolup.journal import Journal

    journal = Journal.open(base / "state" / "journal.sqlite", fsync=False)
    journal.add_sources([(1, i + 1, f"live{i}.log", 1.0, None) for i in range(LIVE)], 1.0)
    journal.close()
    conn = sqlite3.connect(base / "state" / "journal.sqlite", isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO sources (dev, ino, path, key_path, offset, size, mtime, head, state, first_seen, updated) "
        "VALUES (1, ?, ?, ?, 65536, 65536, 1.0, ?, 'reaped', 1.0, 1.0)",
        ((1000 + i, f"h{i % 1000:03d}/app-{i}.log", f"h{i % 1000:03d}/app-{i}.log",
          b"Nov 25 12:00:00 host app[1234]: %064d" % i) for i in range(history)))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as a journal is after a clean stop
    conn.close()
    return base


def _measure(base: Path, mode: str) -> dict:
    r = subprocess.run([sys.executable, "-c", _MEASURE, str(base), mode], capture_output=True, text=True,
                       timeout=1800, cwd=Path(__file__).resolve().parent.parent)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(history: int = 1_000_000) -> dict:
    with workdir() as tmp:
        empty = _state(tmp / "empty", 0)
        full = _state(tmp / "full", history)
        baseline = min((_measure(empty, "load") for _ in range(3)), key=lambda m: m["seconds"])
        before = min((_measure(full, "load") for _ in range(3)), key=lambda m: m["seconds"])
        t0 = time.perf_counter()
        first = _measure(full, "prune")  # the first start after history piled up: prunes it once
        first_wall = time.perf_counter() - t0
        after = min((_measure(full, "load") for _ in range(3)), key=lambda m: m["seconds"])
    return {
        "figure": "7 start-up against history", "history_sources": history, "live_sources": LIVE,
        "baseline_s": baseline["seconds"], "baseline_rss_growth_KiB": baseline["rss_growth_KiB"],
        "history_s": before["seconds"], "history_rss_growth_KiB": before["rss_growth_KiB"],
        "first_start_prune_s": first["seconds"], "first_start_wall_s": first_wall, "pruned": first["pruned"],
        "after_prune_s": after["seconds"], "after_prune_rss_growth_KiB": after["rss_growth_KiB"],
        "ratio": before["seconds"] / baseline["seconds"],
        "rss_ratio": max(before["rss_growth_KiB"], 1) / max(baseline["rss_growth_KiB"], 1),
        "goal": "flat: <= 1.5 x the start without history (time and RSS)",
    }


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000), indent=2))
