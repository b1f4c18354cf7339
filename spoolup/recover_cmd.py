"""`spoolup recover [--dry-run]`: the whole reconciliation, with a readable report.

--dry-run works on an in-memory copy of the journal (migrated there if it is
from an older schema) and changes nothing: not the journal, not the chunk
files, not the bucket.

The journal is compared with the bucket's ledger first (spoolup/catchup.py) and brought
forward when the bucket knows more.  --from-bucket reads all of the agent's ledger, and
rebuilds a lost or deleted journal from it: a new journal, the objects in the bucket
journaled as done, the spool files found again with their offsets and the bytes to read
past; `run` and `drain` then continue with the next records, exactly once.
"""

from __future__ import annotations

import os
import sqlite3
import time

from spoolup import catchup, journal_faults, logs, reconcile, recover, stateid
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


def run(cfg: Config, *, dry_run: bool, from_bucket: bool = False) -> int:
    log = logs.get("spoolup.recover")
    problem = stateid.before_open(cfg)  # a lost journal (rebuilt only with --from-bucket)
    if problem and not from_bucket:
        raise JournalError(problem)
    if not cfg.journal_path.exists() and not from_bucket:
        print(f"no journal at {cfg.journal_path}: nothing to recover")
        return 0
    if not dry_run:
        cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = StateLock(cfg.state_dir)
    if cfg.state_dir.exists():  # (--dry-run of a wiped state dir: nothing to lock, nothing created)
        lock.acquire()
    report = recover.Report()
    try:
        lost = stateid.lost_commits(cfg)
        if lost:
            report.note(lost)
        fresh = not cfg.journal_path.exists()
        if fresh:  # --from-bucket: a new journal, brought forward from all of the ledger
            journal, applied = _new_journal(cfg, report, dry_run=dry_run)
        elif dry_run:
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
        if not (fresh and dry_run):  # (a new journal in memory: nothing to compare with state-id)
            problem = stateid.after_open(cfg, journal, record=not dry_run)
            if problem:
                raise JournalError(problem)
        for line in applied:
            report.did(line)
        mark = 0 if fresh else stateid.behind_mark(cfg, journal)
        if mark:
            report.note(stateid.behind_mark_message(cfg, journal, mark))
        s3 = S3(cfg)
        try:
            if _ledger(cfg, journal, s3, report, dry_run=dry_run, everything=from_bucket) and mark and not dry_run:
                journal.raise_claims(mark)
            if not report.problems:
                recover.reconcile_chunks(cfg, journal, report, dry_run=dry_run)
                recover.inspect_sources(cfg, journal, report)
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


def _ledger(cfg: Config, journal: Journal, s3: S3, report: recover.Report, *, dry_run: bool, everything: bool) -> bool:
    """The bucket's ledger against the journal (spoolup/catchup.py): brought forward when the
    bucket knows more (`everything`: from all of the agent's segments).  True when the journal
    agrees with the bucket afterwards."""
    try:
        if everything or catchup.behind(cfg, journal, s3):
            result = catchup.bring_forward(cfg, journal, s3, dry_run=dry_run, everything=everything)
            for line in result.lines:
                report.did(line)
            if everything and not result.lines:
                report.did(f"ledger of agent {catchup.agent_of(cfg)}: {result.segments} segment(s) read, "
                           f"{result.shipped} object(s) in the bucket; nothing to bring into the journal")
        return True
    except catchup.BehindTheBucket as e:
        report.problem(str(e))
    except S3Error as e:
        if e.code == "NoSuchBucket":
            if everything:
                report.note(f"bucket {cfg.bucket} does not exist: no ledger to rebuild from (the journal is new)")
            return True
        report.problem(f"cannot compare the journal with the bucket's ledger: {e}. Nothing is shipped before it is "
                       "done: run recover again when S3 answers, or start the service (it retries)")
    return False


def _new_journal(cfg: Config, report: recover.Report, *, dry_run: bool) -> tuple[Journal, list[str]]:
    """`recover --from-bucket` without a journal: a new one (in memory for --dry-run).  What an
    earlier journal left in the state dir (chunk and dead-letter files, state-id) is kept
    aside, never deleted: its chunk files may hold records no longer in the spool."""
    aside = time.strftime("%Y%m%dT%H%M%S")
    for directory in (cfg.chunk_dir, cfg.deadletter_dir):
        try:
            used = any(True for _ in os.scandir(directory))
        except FileNotFoundError:
            used = False
        if used:
            target = directory.with_name(f"{directory.name}.before-rebuild-{aside}")
            report.did(f"keep the files an earlier journal left in {directory} aside, in {target}")
            if not dry_run:
                os.rename(directory, target)
    if dry_run:
        report.did(f"create a new journal {cfg.journal_path}")
        return Journal.in_memory(), []
    for directory in (cfg.chunk_dir, cfg.deadletter_dir):
        directory.mkdir(mode=0o700, exist_ok=True)
    journal = Journal.open(cfg.journal_path, fsync=cfg.fsync, check=True)
    old = stateid.read(cfg)
    if old is not None:
        os.replace(stateid.path_of(cfg), stateid.path_of(cfg).with_name(f"{stateid.NAME}.before-rebuild-{aside}"))
    stateid.save(cfg, {"journal_id": journal.journal_id, "created": time.time(), "claims": 0})
    report.did(f"create a new journal {cfg.journal_path} (journal {journal.journal_id})"
               + (f"; the state dir's earlier {stateid.NAME} (journal {old.get('journal_id', '?')}) is kept aside"
                  if old is not None else ""))
    return journal, []
