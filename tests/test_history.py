"""History does not make every start slower (issue 11, item 8).

Spool files that were shipped and reaped (or left the spool) stay as rows of the
journal's `sources` table; years of operation leave millions.  Start-up and the
disk-full rollback load the live sources only (through the partial index
sources_live, never a scan of the history), and the service prunes the history
to the newest KEEP_SOURCES rows.  Checked by counting rows and reading SQLite's
query plans -- no timing thresholds; bench figure 7 measures the start time.
"""

from __future__ import annotations

import sqlite3

from crashkit import assert_exact, journal_path, query, write
from helpers import syslog_lines
from spoolup.journal import KEEP_SOURCES, LIVE_SOURCE_STATES, Journal

HISTORY = 30_000


def add_history(path, n: int, start_ino: int = 10_000_000) -> None:
    """n spool files shipped and reaped long ago (and a few that left the spool), as
    spoolup journals them, written straight into the journal file."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO sources (dev, ino, path, key_path, offset, size, mtime, head, state, first_seen, updated) "
            "VALUES (1, ?, ?, ?, 4096, 4096, 1.0, ?, ?, 1.0, 1.0)",
            [(start_ino + i, f"old/h{i}.log", f"old/h{i}.log", b"Nov 25 12:00:00 old app: %d" % i,
              "gone" if i % 100 == 0 else "reaped") for i in range(n)])
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_start_loads_the_live_sources_only(tmp_path):
    path = tmp_path / "journal.sqlite"
    journal = Journal.open(path, fsync=False)
    live = journal.add_sources([(2, ino, f"live{ino}.log", 1.0, None) for ino in (1, 2, 3)], 1.0)
    with journal.transaction():
        journal.conn.executemany("UPDATE sources SET head = ? WHERE id = ?", [(b"head", s.id) for s in live])
    journal.close()
    add_history(path, HISTORY)
    journal = Journal.open(path, fsync=False)
    try:
        assert [s.id for s in journal.live_sources()] == [s.id for s in live]
        assert journal.source_heads() == {s.id: b"head" for s in live}, "heads of the history were loaded"
        for sql in (f"SELECT * FROM sources INDEXED BY sources_live WHERE state IN {LIVE_SOURCE_STATES!r} "
                    "ORDER BY id",
                    f"SELECT id, head FROM sources INDEXED BY sources_live WHERE state IN {LIVE_SOURCE_STATES!r} "
                    "AND head IS NOT NULL"):
            plan = " ".join(r[3] for r in journal.conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
            assert "USING INDEX sources_live" in plan, plan
        assert journal.prune_sources() == HISTORY - KEEP_SOURCES
        kept = journal.conn.execute(f"SELECT min(ino), max(ino), count(*) FROM sources WHERE state NOT IN "
                                    f"{LIVE_SOURCE_STATES!r}").fetchone()
        assert tuple(kept) == (10_000_000 + HISTORY - KEEP_SOURCES, 10_000_000 + HISTORY - 1, KEEP_SOURCES)
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
    (history,) = query(sp, f"SELECT count(*) FROM sources WHERE state NOT IN {LIVE_SOURCE_STATES!r}")[0]
    assert history == KEEP_SOURCES
    assert sorted(p for (p,) in query(sp, f"SELECT path FROM sources WHERE state IN {LIVE_SOURCE_STATES!r}")) \
        == ["a.log", "b.log"]
    assert_exact(s3, sp.bucket, {"a.log": a, "b.log": b})
