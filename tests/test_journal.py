"""Journal verbs that are easiest to check directly on a real SQLite database."""

import sqlite_utils

from spoolup.journal import Journal


def test_prune_keeps_each_keys_newest_timestamp_and_last_index(tmp_path):
    path = tmp_path / "journal.sqlite"
    j = Journal.open(path, fsync=False)
    rows = [(1, "k", "2", "done", 0), (2, "k", "9", "done", 0), (3, "k", "3", "done", 0),
            (4, "m", "", "done", 0), (5, "m", "", "done", 0), (6, "n", "1", "done", 500)]
    db = sqlite_utils.Database(path)  # objects done long ago, written beside the journal's connection
    db["objects"].insert_all({"id": oid, "key": key, "ts": ts, "state": state, "idx": oid, "created": 0,
                              "last_write": 0, "done_at": done_at} for oid, key, ts, state, done_at in rows)
    assert j.prune_done(older_than=100) == 3
    kept = [(r["id"], r["key"], r["ts"]) for r in db["objects"].rows_where(order_by="id")]
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
