"""`spoolup recover [--dry-run]`: the whole reconciliation, with a readable report.

--dry-run works on an in-memory copy of the journal (migrated there if it is
from an older schema) and changes nothing: not the journal, not the chunk
files, not the bucket.
"""

from __future__ import annotations

import sqlite3

from spoolup import journal_faults, logs, reconcile, recover, stateid
from spoolup.config import Config
from spoolup.journal import Journal, JournalError, schema_version
from spoolup.lock import StateLock
from spoolup.s3 import S3, S3Error


def _journal_copy(cfg: Config) -> tuple[Journal, list[str]]:
    """The journal copied into memory and migrated there (Journal.copy_in_memory)."""
    journal, before, applied = Journal.copy_in_memory(cfg.journal_path)
    return journal, _migrated(before, journal.user_version(), applied)


def _migrated(before: int, after: int, applied: list[str]) -> list[str]:
    if not applied:
        return []
    return [f"migrate the journal from schema version {before} to {after} ({', '.join(applied)})"]


def run(cfg: Config, *, dry_run: bool) -> int:
    log = logs.get("spoolup.recover")
    problem = stateid.before_open(cfg)  # a lost journal or write-ahead log
    if problem:
        raise JournalError(problem)
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
            # checked before migrating: never write into a damaged journal
            journal = Journal.open(cfg.journal_path, fsync=cfg.fsync, create=False, migrate=False, check=True)
            before = journal.user_version()
            try:
                applied = _migrated(before, schema_version(), journal.migrate())
                journal.probe_write()
            except sqlite3.DatabaseError as e:
                raise JournalError(journal_faults.message(cfg.journal_path, e)) from None
        problem = stateid.after_open(cfg, journal, record=not dry_run)
        if problem:
            raise JournalError(problem)
        for line in applied:
            report.did(line)
        recover.reconcile_chunks(cfg, journal, report, dry_run=dry_run)
        recover.inspect_sources(cfg, journal, report)
        s3 = S3(cfg)
        try:
            reconcile.reconcile(cfg, journal, s3, report, dry_run=dry_run)
        except S3Error as e:
            if e.code == "NoSuchBucket":  # a crash before the upload process first created it
                report.note(f"bucket {cfg.bucket} does not exist yet: nothing to reconcile there "
                            "(the service creates it when it starts)")
            else:
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
