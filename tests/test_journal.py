"""Journal verbs that are easiest to check directly on a real SQLite database."""

from spoolup.journal import Journal


def test_prune_keeps_each_keys_newest_timestamp_and_last_index():
    j = Journal.in_memory()
    rows = [(1, "k", "2", "done", 0), (2, "k", "9", "done", 0), (3, "k", "3", "done", 0),
            (4, "m", "", "done", 0), (5, "m", "", "done", 0), (6, "n", "1", "done", 500)]
    for oid, key, ts, state, done_at in rows:
        j.conn.execute("INSERT INTO objects (id, key, ts, state, idx, created, last_write, done_at) "
                       "VALUES (?, ?, ?, ?, ?, 0, 0, ?)", (oid, key, ts, state, oid, done_at))
    assert j.prune_done(older_than=100) == 3
    kept = [tuple(r) for r in j.conn.execute("SELECT id, key, ts FROM objects ORDER BY id")]
    assert kept == [(2, "k", "9"), (5, "m", ""), (6, "n", "1")]
    assert j.newest_ts("k") == "9"  # not "3": the newest timestamp survives pruning


def test_nested_transactions_commit_once_and_roll_back_together():
    j = Journal.in_memory()
    with j.transaction():
        j.set_meta("a", "1")
        with j.transaction():
            j.set_meta("b", "2")
    assert j.meta("a") == "1" and j.meta("b") == "2"
    try:
        with j.transaction():
            j.set_meta("c", "3")
            with j.transaction():
                j.set_meta("d", "4")
                raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert j.meta("c") is None and j.meta("d") is None
