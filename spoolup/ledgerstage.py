"""The upload coordinator's ledger stage (issue 22): one segment recording every object that is
ready to finish, written before their PutObject / CompleteMultipartUpload (record before visible).

The records are drafted in the coordinator's thread, from the journal (the object's spans, its
spool files' identity, its parts' ETags); the worker adds what needs the chunk bytes (a
single-part object's body MD5, which is its ETag) and PUTs the segment.  The segment number is
journaled before the PUT (Journal.next_ledger_seq), so a crash leaves at most a gap, and the
result (spoolup/work.py Recorded) is journaled per object only if its claim still holds
(Journal.recorded_if): an object whose claim moved meanwhile is recorded again at its new key.
A segment that already exists (412 to If-None-Match) is another writer's under this agent id:
said as an error, and the next attempt takes a number after the highest one in the bucket.

The same segments carry *start intents* (ledger.Record.started): a claimed multipart object's
CreateMultipartUpload is sent only once a segment says that this journal's object may start an
upload at that key (Journal.intended_if, ledger_seq < 0), so that a journal that loses the
upload's id (a restored backup, a wiped state dir) finds in the bucket which uploads were its
own and aborts them (spoolup/catchup.py).  Intents and records ready at once share a segment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from spoolup import checksums, crash, ledger
from spoolup.chunks import part_file
from spoolup.journal import Journal, ObjectRow, UploadMode
from spoolup.s3 import NotImplementedByServer, PreconditionFailed, S3Error, multipart_etag
from spoolup.work import Basis, LedgerClash, Recorded

MAX_RECORDS = 1000  # records in one segment
MAX_HASH_BYTES = 256 << 20  # single-part bodies one segment's worker hashes (their MD5 is their ETag)


@dataclass(frozen=True)
class Draft:
    """An object's record as the journal gives it; `body`: a single-part object's file, whose MD5
    (its ETag) the worker computes."""
    basis: Basis
    record: ledger.Record
    body: Path | None = None


class LedgerStage:
    def __init__(self, cfg, journal: Journal, work, log):
        self.cfg = cfg
        self.journal = journal
        self.work = work  # the Protocol: its S3 client, capabilities and forms
        self.log = log
        self.agent = cfg.agent
        self.journal_id = journal.journal_id

    # -- the coordinator's thread ------------------------------------------------------

    def drafts(self, objects: list[ObjectRow]) -> list[Draft]:
        """The records of `objects` (to_record's), within one segment's bounds."""
        j = self.journal
        out: list[Draft] = []
        hashing = 0
        spans = {o.id: j.ranges_of(o.id) for o in objects}
        files = j.ledger_sources({sid for by_source in spans.values() for sid in by_source})
        for obj in objects:
            chunks = j.chunks_of(obj.id)
            size = sum(c.part_size or 0 for c in chunks)
            body = None
            checksum = obj.checksum
            if obj.mode == UploadMode.SINGLE:
                if hashing and hashing + size > MAX_HASH_BYTES:
                    continue  # the next segment's
                hashing += size
                body, etag = part_file(self.cfg.chunk_dir, obj.id, 1, self.work.codec_of(obj)), ""
            else:
                etag = multipart_etag(c.etag for c in chunks).strip('"')
                # the composite of the parts' checksums, as S3 gives it (their upload's algorithm)
                checksum = checksums.composite(obj.upload_checksum, (c.checksum for c in chunks)) \
                    if obj.upload_checksum else None
            sources = []
            for sid, s in spans[obj.id].items():
                dev, ino, btime, head, path = files[sid]
                head = head or b""
                sources.append(ledger.SourceSpans(dev, ino, btime, len(head), ledger.head_digest(head), path,
                                                  tuple(ledger.coalesce(s))))
            record = ledger.Record(self.journal_id, obj.id, obj.key, obj.ts, obj.idx, obj.final_key, str(obj.mode),
                                   obj.records, obj.size, size, etag, checksum, tuple(sources))
            out.append(Draft(Basis.of(obj), record, body))
        return out

    def intents(self, objects: list[ObjectRow]) -> list[Draft]:
        """The start intents of claimed multipart objects without an upload."""
        return [Draft(Basis.of(o), ledger.Record.start_intent(self.journal_id, o.id, o.key, o.ts, o.idx, o.final_key))
                for o in objects]

    # -- a worker ------------------------------------------------------------------------

    def write(self, seq: int, drafts: list[Draft]) -> Recorded | LedgerClash:
        """PUT segment `seq` holding the drafts' records.  A single-part object whose chunk file
        cannot be read (or is not its journaled size) is left out (Recorded.damaged): it must
        not hold back the others."""
        records: list[ledger.Record] = []
        entries: list[tuple[Basis, str | None, str | None]] = []
        damaged: list[tuple[int, Exception]] = []
        algo = self.work.caps.object_checksum  # where the server takes a flexible checksum (read once)
        started: list[Basis] = []
        for d in drafts:
            record, md5 = d.record, None
            if record.started:
                records.append(record)
                started.append(d.basis)
                continue
            if d.body is not None:
                try:
                    # the MD5 (its ETag) and the checksum of the same bytes, in one pass
                    size, md5, checksum = checksums.hash_file(d.body, algo)
                except OSError as e:  # (an unexpected error of this object's: quarantined, retried slowly)
                    damaged.append((d.basis.object_id, e))
                    continue
                if size != record.size:
                    damaged.append((d.basis.object_id, S3Error(
                        "LocalChunkDamaged", f"chunk file {d.body} has {size} bytes, journal says {record.size}; "
                        "run `spoolup recover`", op="ledger", key=record.final_key)))
                    continue
                record = replace(record, etag=md5, checksum=checksum)
            records.append(record)
            entries.append((d.basis, md5, record.checksum))
        if not records:
            return Recorded(seq, "", (), tuple(damaged))
        key = ledger.segment_key(self.cfg.object_key, self.agent, seq)
        data = ledger.Segment(self.agent, self.journal_id, seq, time.time(), tuple(records)).encode()
        caps = self.work.caps
        s3 = self.work.s3
        try:
            try:
                s3.put_bytes(key, data, if_none_match=caps.send_condition)
            except NotImplementedByServer:
                if not (caps.send_condition and self.cfg.conditional_writes == "auto"):
                    raise
                s3.put_bytes(key, data, if_none_match=False)
        except PreconditionFailed:
            seen = [n for n in (ledger.seq_of(k) for k in s3.list_keys(ledger.agent_prefix(self.cfg.object_key,
                                                                                          self.agent)))
                    if n is not None]
            return LedgerClash(seq, key, max(seen, default=seq))
        crash.point("after-ledger-segment")
        return Recorded(seq, key, tuple(entries), tuple(damaged), tuple(started))


def clash_message(agent: str, key: str) -> str:
    return (f"ledger segment {key} already exists: another spoolup writes its ledger with agent-id {agent!r} "
            "(a copied state dir or configuration?). Give each spoolup its own agent-id; this one goes on "
            "after the highest segment number in the bucket")

