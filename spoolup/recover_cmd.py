"""`spoolup recover [--dry-run]`: the whole reconciliation, with a readable report.

--dry-run works on an in-memory copy of the journal (migrated there if it is
from an older schema) and changes nothing: not the journal, not the chunk
files, not the bucket.
"""

from __future__ import annotations

import sqlite3

from spoolup import logs, recover
from spoolup.config import Config
from spoolup.journal import Journal, JournalError, corrupt_message
from spoolup.lock import StateLock
from spoolup.s3 import S3, S3Error


def _journal_copy(cfg: Config) -> tuple[Journal, list[str]]:
    path = cfg.journal_path
    try:
        disk = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        mem = sqlite3.connect(":memory:", isolation_level=None)
        disk.backup(mem)
        disk.close()
        mem.row_factory = sqlite3.Row
        journal = Journal(mem, path)
        applied = journal.migrate()
        journal.conn.execute("SELECT count(*) FROM objects").fetchone()
    except sqlite3.DatabaseError as e:
        raise JournalError(corrupt_message(path, e)) from None
    return journal, applied


def run(cfg: Config, *, dry_run: bool) -> int:
    log = logs.get("spoolup.recover")
    if not cfg.journal_path.exists():
        print(f"no journal at {cfg.journal_path}: nothing to recover")
        return 0
    lock = StateLock(cfg.state_dir)
    lock.acquire()
    report = recover.Report()
    try:
        if dry_run:
            journal, applied = _journal_copy(cfg)
        else:
            before = _version(cfg)
            journal = Journal.open(cfg.journal_path, fsync=cfg.fsync, create=False)
            applied = [] if before == journal.user_version() else [f"schema {before} -> {journal.user_version()}"]
        for name in applied:
            report.did(f"migrate the journal: {name}")
        problem = journal.integrity_problem()
        if problem:
            raise JournalError(corrupt_message(cfg.journal_path, Exception(problem)))
        recover.reconcile_chunks(cfg, journal, report, dry_run=dry_run)
        recover.inspect_sources(cfg, journal, report)
        s3 = S3(cfg)
        try:
            recover.reconcile_remote(cfg, journal, s3, report, dry_run=dry_run)
        except S3Error as e:
            report.problem(f"cannot reconcile with the bucket: {e} (local recovery is done; run recover "
                           "again when S3 answers, or start the service: it retries)")
        finally:
            s3.close()
        journal.close()
    finally:
        lock.release()
    print(report.render(dry_run))
    for line in report.lines:
        log.info("recovery", action=line, dry_run=dry_run)
    if report.problems:
        return 1
    print("dry run: nothing was changed." if dry_run else "recovered: journal, chunk files and bucket are consistent.")
    return 0


def _version(cfg: Config) -> int | None:
    try:
        conn = sqlite3.connect(f"file:{cfg.journal_path}?mode=ro", uri=True)
        try:
            return conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return None
