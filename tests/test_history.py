"""History does not make every start slower (issue 11, item 8).

Spool files that were shipped and reaped (or left the spool) stay as rows of the
journal's `sources` table; years of operation leave millions.  Start-up and the
disk-full rollback load the live sources only (through the partial index
sources_live, never a scan of the history), and the service prunes the history
to the newest KEEP_SOURCES rows.  Checked by counting rows and reading SQLite's
query plans -- no timing thresholds; bench figure 7 measures the start time.
"""

from __future__ import annotations

import sqlite_utils

from crashkit import assert_exact, journal_path, rows, write
from helpers import syslog_lines
from spoolup.journal import KEEP_SOURCES, LIVE_SOURCE_STATES, Batch, Journal

HISTORY = 30_000


def add_history(path, n: int, start_ino: int = 10_000_000) -> None:
    """n spool files shipped and reaped long ago (and a few that left the spool), as
    spoolup journals them, written straight into the journal file."""
    sqlite_utils.Database(path)["sources"].insert_all(
        ({"dev": 1, "ino": start_ino + i, "path": f"old/h{i}.log", "key_path": f"old/h{i}.log", "offset": 4096,
          "size": 4096, "mtime": 1.0, "head": b"Nov 25 12:00:00 old app: %d" % i,
          "state": "gone" if i % 100 == 0 else "reaped", "first_seen": 1.0, "updated": 1.0} for i in range(n)),
        batch_size=5000)


def test_start_loads_the_live_sources_only(tmp_path):
    path = tmp_path / "journal.sqlite"
    journal = Journal.open(path, fsync=False)
    live = journal.add_sources([(2, ino, f"live{ino}.log", 1.0, None) for ino in (1, 2, 3)], 1.0)
    journal.commit_batch(Batch(heads={s.id: b"head" for s in live}))
    journal.close()
    add_history(path, HISTORY)
    journal = Journal.open(path, fsync=False)
    try:
        statements: list[str] = []  # what the start runs, as the journal runs it
        journal.trace(statements.append)
        assert [s.id for s in journal.live_sources()] == [s.id for s in live]
        assert journal.source_heads() == {s.id: b"head" for s in live}, "heads of the history were loaded"
        journal.trace(None)
        assert len(statements) == 2, statements
        db = sqlite_utils.Database(path)
        for sql in statements:
            plan = " ".join(r[3] for r in db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall())
            assert "USING INDEX sources_live" in plan, (sql, plan)
        assert journal.prune_sources() == HISTORY - KEEP_SOURCES
        kept = sorted(r["ino"] for r in db["sources"].rows if r["state"] not in LIVE_SOURCE_STATES)
        assert kept == list(range(10_000_000 + HISTORY - KEEP_SOURCES, 10_000_000 + HISTORY))
        assert journal.prune_sources() == 0
        assert [s.id for s in journal.live_sources()] == [s.id for s in live]
    finally:
        journal.close()


def test_service_prunes_the_history(make_spoolup, s3):
    a, b = syslog_lines(300, host="a"), syslog_lines(200, host="b")
    sp = make_spoolup(**{"object-key": "{name}", "shutdown-timeout": 5})
    write(sp.spool / "a.log", a)
    assert sp.drain(timeout=120).returncode == 0
    add_history(journal_path(sp), HISTORY)
    write(sp.spool / "b.log", b)
    r = sp.drain(timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "forgot old spool files" in r.stderr
    sources = rows(sp, "sources")
    assert len([s for s in sources if s["state"] not in LIVE_SOURCE_STATES]) == KEEP_SOURCES
    assert sorted(s["path"] for s in sources if s["state"] in LIVE_SOURCE_STATES) \
        == ["a.log", "b.log"]
    assert_exact(s3, sp.bucket, {"a.log": a, "b.log": b})
