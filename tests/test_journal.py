"""Journal verbs that are easiest to check directly on a real SQLite database."""

import re

import sqlite_utils

from spoolup.journal import (LIVE_SOURCE_STATES, Batch, ChunkState, Journal, ObjectRow, ObjectState, SourceState,
                             UploadMode)


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


def test_state_enums_are_the_values_the_schema_allows(tmp_path):
    """The enums of spoolup/journal/rows.py name exactly what the schema's CHECK constraints (and
    the partial index of the live sources) spell: they are the stored strings, not new ones."""
    path = tmp_path / "journal.sqlite"
    Journal.open(path, fsync=False).close()
    db = sqlite_utils.Database(path)

    def allowed(sql: str, column: str) -> set[str]:
        (values,) = re.findall(rf"\b{column} IN \(([^)]*)\)", sql)
        return {v.strip(" '") for v in values.split(",")}

    assert allowed(db["sources"].schema, "state") == set(SourceState)
    assert allowed(db["objects"].schema, "state") == set(ObjectState)
    assert allowed(db["objects"].schema, "mode") == set(UploadMode)
    assert allowed(db["chunks"].schema, "state") == set(ChunkState)
    (live,) = [sql for sql in db.schema.split(";") if "INDEX sources_live" in sql]
    assert allowed(live, "state") == set(LIVE_SOURCE_STATES)


def test_rows_read_back_hold_the_enums(tmp_path):
    j = Journal.open(tmp_path / "journal.sqlite", fsync=False)
    (src,) = j.add_sources([(1, 2, "a.log", 1.0, None)], 1.0)
    assert j.live_sources()[0].state is SourceState.ACTIVE == src.state
    j.commit_batch(Batch(new_objects=[ObjectRow(1, "a.log", "", ObjectState.OPEN, None, None, None, None, 0, 0, 1.0,
                                                1.0)], chunks={(1, 1): (10, ChunkState.SEALED, 10)}))
    j.claim(1, 0, "a.log", UploadMode.MULTIPART)
    obj = j.object(1)
    assert (obj.state, obj.mode) == (ObjectState.OPEN, UploadMode.MULTIPART)
    assert type(obj.state) is ObjectState and type(obj.mode) is UploadMode
    assert [type(c.state) for c in j.chunks_of(1)] == [ChunkState]
    assert ObjectState.DONE == "done" and f"{ChunkState.SEALED}" == "sealed"  # what SQLite stores and compares


def test_the_upload_loops_queries_do_not_scan_the_done_objects():
    """The upload process's per-turn queries (what to claim, start, record, and the claims a
    ledger wave waits for) read the objects not done through the index objects_state: done
    objects stay in the journal for a week (prune_done), and a scan of every row at every turn
    made each turn grow with that history -- at 50,000 done objects each of these took 4-23 ms a
    turn, and a turn makes most of them.  (The queries of claimed objects go through the partial
    index objects_claimed instead: see the next test.)  Checked on SQLite's plan of each
    statement as run."""
    j = Journal.in_memory()
    statements: list[str] = []
    j.trace(statements.append)
    j.claimable_with_context(limit=64, skip=[1])
    j.to_start(limit=16, skip=[2])
    j.to_record(skip=[3])
    j.to_intend(skip=[4])
    j.single_claims_waiting(10)
    j.waiting_for_record()
    j.trace(None)
    assert len(statements) == 7, statements  # (single_claims_waiting makes two)
    for sql in statements:
        plan = [row[3] for row in j._conn.execute("EXPLAIN QUERY PLAN " + sql)]
        if "FROM objects o" not in sql:
            continue
        # (objects_claimed is partial: it holds only the claimed objects not done, a scan of it reads no history)
        assert not any(re.fullmatch(r"SCAN o( .*)?", step) and "INDEX objects_claimed" not in step
                       for step in plan), (sql, plan)
        assert any(step.startswith("SEARCH o USING") or "INDEX objects_claimed" in step for step in plan), (sql, plan)


def test_the_drains_queries_do_not_scan_the_done_objects():
    """A drain asks at every turn of its loop for the bytes left to ship (its progress) and the
    objects not done: the chunks and objects are found by their state through the indexes
    chunks_state and objects_state, not by a scan of every row -- done objects and their chunks
    stay in the journal for a week, and the scans made a drain's main process spend 92 % (the
    chunks) and 23 % (the objects) of its time there after 24,000 objects (bench/scale.py).
    The answers are the same: the chunks not uploaded of the objects not done; those objects."""
    j = Journal.in_memory()
    now = 1.0
    j.commit_batch(Batch(new_objects=[ObjectRow(i, f"k{i}", "", ObjectState.OPEN, None, None, None, None, 0, 0, now,
                                                now) for i in (1, 2, 3)],
                         chunks={(1, 1): (10, ChunkState.UPLOADED, 10), (1, 2): (20, ChunkState.SEALED, 20),
                                 (1, 3): (5, ChunkState.OPEN, None), (2, 1): (7, ChunkState.SEALED, 7),
                                 (3, 1): (100, ChunkState.SEALED, 100)}))
    j.claim(3, 0, "k3", UploadMode.SINGLE)
    j.complete(3, "etag")
    statements: list[str] = []
    j.trace(statements.append)
    assert j.unshipped_bytes() == 20 + 5 + 7
    assert j.pending_objects() == 2  # (and what it waits for: the objects not done)
    assert j.pending_objects(through=1) == 1
    j.trace(None)
    assert len(statements) == 3, statements
    for sql, index in zip(statements, ("chunks_state", "objects_state", "objects_state")):
        plan = [row[3] for row in j._conn.execute("EXPLAIN QUERY PLAN " + sql)]
        assert not any(step.startswith("SCAN") for step in plan), (sql, plan)
        assert any(step.startswith("SEARCH") and f"INDEX {index} (state=?" in step for step in plan), (sql, plan)


def _in_flight_behind(waiting: int) -> Journal:
    """A journal shipping a few objects of every kind the upload loop asks for, with `waiting`
    unclaimed small objects (closed, one sealed chunk, a key each) behind them."""
    j = Journal.in_memory()
    n = 40 + waiting
    j.commit_batch(Batch(new_objects=[ObjectRow(i, f"k{i}", "", ObjectState.CLOSED, None, None, None, None, 1, 1, 1.0,
                                                1.0) for i in range(1, n + 1)],
                         chunks={(i, p): (1, ChunkState.SEALED, 1) for i in range(1, n + 1)
                                 for p in ((1, 2) if 21 <= i <= 30 else (1,))},
                         closed={i: ("idle", 1.0) for i in range(1, n + 1)}))
    for i in range(1, 41):
        j.claim(i, 0, f"k{i}", UploadMode.MULTIPART if 21 <= i <= 35 else UploadMode.SINGLE)
    with j.transaction():
        c = j._conn
        c.execute("UPDATE objects SET ledger_seq = 3 WHERE id BETWEEN 11 AND 20")  # recorded: to start
        c.execute("UPDATE objects SET upload_id = 'u' || id, ledger_seq = 4 WHERE id BETWEEN 21 AND 30")  # started
        c.execute("UPDATE chunks SET state = 'uploaded' WHERE object_id BETWEEN 26 AND 30")  # to complete
    return j


def _vm_steps(j: Journal, call) -> tuple[int, object]:
    """SQLite virtual-machine instructions (in hundreds) that one call runs, and its answer."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    j._conn.set_progress_handler(count, 100)
    try:
        out = call()
    finally:
        j._conn.set_progress_handler(None, 0)
    return steps[0], out


def test_the_upload_loops_queries_do_not_grow_with_the_objects_waiting_behind():
    """The upload process asks at every turn of its loop what to record, start, upload and
    complete, and which claims a ledger segment waits for.  A drain of many new keys has tens
    of thousands of unclaimed objects waiting behind the few being shipped; each of these
    queries read all of them at every turn (512 ms a turn at 48,000 waiting, O(N^2) a drain:
    bench/scale.py).  Their work now follows the objects being shipped (the partial index
    objects_claimed) and a segment's worth of the waiting ones (single_claims_waiting): the
    same answers, and the same number of SQLite instructions behind 2,000 and 20,000."""
    calls = {"to_record": lambda j: [o.id for o in j.to_record(limit=1000)],
             "to_intend": lambda j: [o.id for o in j.to_intend(limit=1000)],
             "to_start": lambda j: [o.id for o in j.to_start(limit=256)],
             "completable": lambda j: [o.id for o in j.completable(limit=256)],
             "parts_to_upload": lambda j: [(o.id, c.part) for o, c in j.parts_to_upload(limit=256)],
             "waiting_for_record": lambda j: j.waiting_for_record(),
             "claimable_with_context": lambda j: [o.id for o, _, _ in j.claimable_with_context(limit=256)],
             "single_claims_waiting": lambda j: sorted(j.single_claims_waiting(None).items())[:3]}
    small, large = _in_flight_behind(2_000), _in_flight_behind(20_000)
    want = {"to_record": [*range(1, 11), *range(36, 41)], "to_intend": list(range(31, 36)),
            "to_start": list(range(11, 21)), "completable": list(range(26, 31)),
            "parts_to_upload": [(i, p) for p in (1, 2) for i in range(21, 26)],
            "waiting_for_record": 15, "claimable_with_context": list(range(41, 41 + 256)),
            "single_claims_waiting": [(41, 41), (42, 42), (43, 43)]}
    for name, call in calls.items():
        steps_small, got_small = _vm_steps(small, lambda: call(small))
        steps_large, got_large = _vm_steps(large, lambda: call(large))
        assert got_small == got_large == want[name], name
        assert steps_large <= steps_small * 1.2 + 5, (name, steps_small, steps_large)
    assert len(large.single_claims_waiting(None)) == 1000  # a segment's worth (ledgerstage.MAX_RECORDS)
