"""Reading one spool source: whole records from its offset, long and oversize records, the
unterminated tail of an idle file, and a truncation in place; the only code that moves a
source's offset, scan position, head and tail.

Reads each source from its journaled offset in large blocks and takes whole records only
(up to the last b"\\n"; a partial tail waits).  Each read also re-reads the consumed bytes
just before the offset (identity.SAMPLE) and compares them with the journaled digest: a
file truncated in place and refilled past the offset is restarted from byte 0.  Bytes
known to hold no newline (a record longer than a block, a partial tail) are never searched
again (Source.scanned).  What the records become is Ingest's (spoolup/ingest.py): it is
given them through Ingest.deliver, and the offsets through its batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spoolup import identity
from spoolup.identity import HEAD_BYTES
from spoolup.config import Config
from spoolup.journal import Journal, SourceState
from spoolup.scan import Source
from spoolup.spool import Spool

if TYPE_CHECKING:
    from spoolup.ingest import Ingest

BLOCK = 1 << 20  # bytes read from a spool file at a time
ALL_SKIPS = 1 << 62  # Batch.skips_passed: every skip span of the source is passed


class SourceReader:
    """Takes the whole records of the sources it is given, within a budget, into Ingest's batch."""

    def __init__(self, cfg: Config, spool: Spool, log, ingest: Ingest):
        self.cfg = cfg
        self.spool = spool
        self.log = log
        self.ingest = ingest

    def read(self, src: Source, now: float, budget: int) -> int:
        """Take the whole records of `src` after its offset, up to about `budget` bytes;
        returns the bytes consumed.  A file truncated in place and refilled past the offset
        since the last look, on this very descriptor too, is restarted from byte 0
        (restart), never read on as if its new bytes continued the old ones."""
        if src.fd is None and src.offset >= src.size and not src.changed and \
                (src.offset == 0 or src.mtime == src.checked_mtime):
            return 0  # nothing new at the last scan: no descriptor taken (they are few: max-open-files)
        fd = self.spool.fd(src)
        if fd is None:
            return 0
        self.spool.refresh(src)
        if 0 < src.offset == src.size and src.mtime != src.checked_mtime and src.changed is None:
            # written to, yet no bigger: truncated and refilled to exactly the consumed size?
            src.checked_mtime = src.mtime
            self._pread(src, fd, src.offset, 0)
        ingest = self.ingest
        consumed = 0
        while (consumed < budget and not ingest.at_cap() and src.state == SourceState.ACTIVE and src.fd is not None
               and self.spool.readable(src, now)):
            if src.changed:
                self.restart(src)
            if src.offset >= src.size:
                break
            step = self._from_offset(src, fd, now) if src.scanned <= src.offset else self._long_record(src, fd, now)
            if step is STOP:
                break
            consumed += step.bytes
            if step.took and ingest.batch_bytes >= ingest.batch_limit:
                ingest.flush()
        return consumed

    def _from_offset(self, src: Source, fd: int, now: float) -> Step | None:
        """The usual case: a block from the offset, its whole records taken."""
        got = self._pread(src, fd, src.offset, min(BLOCK, src.size - src.offset))
        if got is None:
            return AGAIN  # changed under the offset (restarted from 0), or shrank to it
        buf, pre = got
        end = buf.rfind(b"\n", pre) + 1 - pre
        if end <= 0:
            src.scanned = src.offset + len(buf) - pre
            if src.scanned < src.size:
                return AGAIN  # a record longer than a block: search on from there (_long_record)
            if not self._tail_is_final(src, now):
                return STOP
            end = len(buf) - pre
        n = self._take(src, buf, pre, end, now)
        src.scanned = src.offset + len(buf) - pre - end  # (the partial record after it)
        return Step(n, took=True)

    def _long_record(self, src: Source, fd: int, now: float) -> Step | None:
        """A record longer than a block: search for its end after what was searched already,
        then take it whole -- or, past max-record-size, to the dead-letter file (_oversize)."""
        block = self.spool.pread(src, fd, min(BLOCK, src.size - src.scanned), src.scanned) \
            if src.scanned < src.size else b""
        if block is None:
            return STOP  # (an I/O error: quarantined)
        nl = block.find(b"\n")
        if nl < 0:
            src.scanned += len(block)
            if block and src.scanned < src.size:
                return AGAIN
            if src.scanned < src.size or not self._tail_is_final(src, now):
                return STOP  # the rest of the file is a partial record: wait for its newline
            stop = src.scanned
        else:
            stop = src.scanned + nl + 1
        if stop - src.offset > self.cfg.max_record_size:
            taken = self._oversize(src, fd, stop)
            return Step(taken, took=False) if taken else STOP
        if not self.ingest.fits(src, stop - src.offset):
            return STOP
        got = self._pread(src, fd, src.offset, stop - src.offset)  # the record, read once
        if got is None:
            return AGAIN
        buf, pre = got
        end = len(buf) - pre
        if end < stop - src.offset:
            src.scanned = src.offset  # the file changed under us: look again
            return AGAIN
        return Step(self._take(src, buf, pre, end, now), took=True)

    def _pread(self, src: Source, fd: int, offset: int, n: int) -> tuple[bytes, int] | None:
        """n bytes at `offset`, preceded in the same pread by the sample of consumed bytes
        before it (returns the buffer and the sample's length).  None when the sample is not
        what was consumed: the source was restarted from byte 0."""
        start = identity.sample_start(offset)
        pre = offset - start
        buf = self.spool.pread(src, fd, pre + n, start)
        if buf is None:
            return None  # (an I/O error: quarantined)
        if src.tail is not None and (len(buf) < pre or identity.digest(memoryview(buf)[:pre]) != src.tail):
            src.changed = f"the bytes before the journaled offset {offset} changed"
        elif len(buf) < pre + n:  # shorter than its last stat said: it shrank since
            self.spool.refresh(src)
            if src.changed is None and src.fd is not None:
                src.size = offset + len(buf) - pre
                if len(buf) > pre:
                    return buf, pre
        else:
            return buf, pre
        if src.changed:
            self.restart(src)
        return None

    def _take(self, src: Source, buf: bytes, pre: int, end: int, now: float) -> int:
        """Consume buf[pre:pre + end] (whole records) and journal the new offset with its sample.
        Records end with b"\n", except the unterminated tail of an idle file (_tail_is_final):
        that record gets a b"\n" (the one byte an object holds that its spool file does not), so
        that the next record of its object, from another file or from this one if its writer
        comes back, starts a record of its own instead of being glued onto it."""
        self._first_bytes(src, buf)
        data, start, stop = buf, pre, pre + end
        if end and buf[stop - 1:stop] != b"\n":
            data, start, stop = bytes(memoryview(buf)[pre:stop]) + b"\n", 0, end + 1
            self._count("unterminated_tails")
        skips = self.ingest.skips.get(src.id)
        if skips and skips[0][0] < src.offset + end:
            self._deliver_skipping(src, skips, data, start, stop, end, now)
        else:
            self.ingest.deliver(src, data, start, stop, now, src.offset + end)
        src.offset += end
        self._passed(src, skips)
        src.scanned = src.offset
        src.tail = identity.digest(memoryview(buf)[max(0, pre + end - identity.SAMPLE):pre + end])
        if src.offset == src.size:
            src.checked_mtime = src.mtime  # (its bytes before the offset are those just read)
        self.ingest.batch_bytes += end
        self.ingest.batch.sources[src.id] = (src.offset, src.size, src.mtime, src.tail)
        return end

    def _deliver_skipping(self, src: Source, skips: list[tuple[int, int]], data: bytes, start: int, stop: int,
                          end: int, now: float) -> None:
        """Deliver data[start:stop] (the file's bytes src.offset .. src.offset + end, and the
        b"\\n" of an unterminated tail) but the bytes inside the source's skip spans: objects in
        the bucket hold them already (the ledger's bring-forward wrote the spans,
        spoolup/catchup.py).  Spans are whole records of this file, so every piece is.  Each
        piece is delivered with src.offset at its own first byte (what the spans ingest
        journals are computed from); the caller moves the offset past the whole take."""
        origin, last = src.offset, src.offset + end
        pos = origin
        counters = self.ingest.batch.counters

        def index(f: int) -> int:  # file offset -> index in data (the appended b"\n" goes with the end)
            return stop if f >= last else start + (f - origin)

        try:
            for a, b in skips:
                if b <= pos:
                    continue
                if a >= last:
                    break
                if a > pos:
                    src.offset = pos
                    self.ingest.deliver(src, data, index(pos), index(a), now, a)
                i, j = index(max(a, pos)), index(min(b, last))
                counters["ledger_skipped_bytes"] = counters.get("ledger_skipped_bytes", 0) + (j - i)
                counters["ledger_skipped_records"] = counters.get("ledger_skipped_records", 0) + data.count(b"\n", i, j)
                pos = min(b, last)
            if pos < last:
                src.offset = pos
                self.ingest.deliver(src, data, index(pos), stop, now, last)
        finally:
            src.offset = origin

    def _passed(self, src: Source, skips: list[tuple[int, int]] | None) -> None:
        """The skip spans the offset has passed: forgotten, and deleted with the batch."""
        if skips and skips[0][1] <= src.offset:
            while skips and skips[0][1] <= src.offset:
                skips.pop(0)
            passed = self.ingest.batch.skips_passed
            passed[src.id] = max(passed.get(src.id, 0), src.offset)
            if not skips:
                del self.ingest.skips[src.id]

    def _first_bytes(self, src: Source, buf: bytes) -> None:
        """The head of a source read from byte 0 (tells a reused inode from this file), journaled
        with the batch."""
        if src.offset == 0 and src.head is None:
            src.head = bytes(buf[:HEAD_BYTES])
            self.ingest.batch.heads[src.id] = src.head

    def _count(self, name: str) -> None:
        counters = self.ingest.batch.counters
        counters[name] = counters.get(name, 0) + 1

    def _oversize(self, src: Source, fd: int, stop: int) -> int:
        """A record longer than max-record-size, src.offset to `stop`: never held in memory
        whole, it is copied in blocks to the spool file's dead-letter file (verbatim, plus a
        newline if it has none: an idle file's tail), journaled and counted like a bad
        envelope, exactly once (the dead-letter bytes commit with the offset past them).
        Returns the bytes consumed (0: the file changed under us; nothing taken)."""
        n = stop - src.offset
        got = self._pread(src, fd, src.offset, min(BLOCK, n))  # the first block, with the sample check
        if got is None:
            return 0
        buf, pre = got
        self._first_bytes(src, buf)
        seen = {"bytes": 0, "last": b""}

        def pieces():
            piece, pos = memoryview(buf)[pre:], src.offset
            while piece:
                seen["bytes"] += len(piece)
                seen["last"] = (seen["last"] + bytes(piece[-identity.SAMPLE:]))[-identity.SAMPLE:]
                yield piece
                pos += len(piece)
                if pos >= stop:
                    return
                piece = self.spool.pread(src, fd, min(BLOCK, stop - pos), pos) or b""

        reason = f"a record of {n} bytes is longer than max-record-size ({self.cfg.max_record_size} bytes)"
        written = self.ingest.dead.stream(src.id, src.key_path, pieces(), reason)
        if seen["bytes"] != n:  # shrank or failed while being copied: go back to the journaled state
            self.log.warning("spool file changed while a long record was copied to its dead-letter file; "
                             "reading it again", source=src.id, path=src.path)
            self.ingest.rollback()
            return 0
        path, records, nbytes, _ = self.ingest.batch.dead_letters.get(src.id, (src.path, 0, 0, ""))
        self.ingest.batch.dead_letters[src.id] = (src.path, records + 1, nbytes + written, reason)
        self._count("dead_letter_records")
        self._count("oversize_records")
        src.offset = src.scanned = stop
        self._passed(src, self.ingest.skips.get(src.id))
        src.tail = identity.digest(seen["last"])
        self.ingest.batch_bytes += n
        self.ingest.batch.sources[src.id] = (src.offset, src.size, src.mtime, src.tail)
        return n

    def restart(self, src: Source) -> None:
        """The source's content under its journaled offset is not what was consumed: it was
        truncated (or rewritten) in place, e.g. by logrotate's copytruncate.  Everything
        journaled from it is safe; its content now is new, and is shipped from byte 0, once:
        the offset goes back to 0 in the same transaction as whatever the batch took from
        it before, and each later batch journals the new offset with its new sample."""
        why, src.changed = src.changed, None
        old = src.offset
        self.ingest.skip_ts.pop(src.id, None)
        if self.ingest.skips.pop(src.id, None):  # spans of the old content: nothing of the new one is shipped
            self.ingest.batch.skips_passed[src.id] = ALL_SKIPS
        src.offset = src.scanned = 0
        src.head = src.tail = None
        self.ingest.batch.sources[src.id] = (0, src.size, src.mtime, None)
        self.ingest.batch.heads[src.id] = None
        self._count("spool_truncations")
        message = (f"spool file {src.path} was truncated or rewritten in place ({why}); everything journaled "
                   f"from it (the first {old} bytes) is shipped; its content now ({src.size} bytes) is shipped from "
                   f"byte 0. Bytes written to it after the last read and before the truncation were not read "
                   f"here (logrotate's copytruncate keeps them in its copy)")
        self.log.warning("spool file truncated; shipping its new content from byte 0", source=src.id,
                         path=src.path, reason=why, journaled_offset=old, size=src.size)
        self.ingest.flush()
        self.ingest.journal.record_error("ingest", "spool-truncated", None, message)

    def _tail_is_final(self, src: Source, now: float) -> bool:
        """A partial last record of a file idle for spool-reap: its writer died mid-record.
        It is taken as a final record, never stranded, with a b"\n" appended (see _take)."""
        if self.spool.idle(src, now) < self.cfg.spool_reap_seconds:
            return False
        self.log.warning("taking the unterminated tail of an idle spool file as a final record",
                         source=src.id, path=src.path, offset=src.offset, bytes=src.size - src.offset)
        return True


def revert(spool: Spool, journal: Journal) -> None:
    """Put the sources' offsets and fingerprints back to what the journal says (the batch
    that moved them was abandoned)."""
    heads = journal.source_heads()
    for row in journal.live_sources():
        src = spool.sources.get(row.id)
        if src is not None:
            src.offset, src.head, src.tail, src.scanned = row.offset, heads.get(row.id), row.tail, row.offset


class Step:
    """What one step of SourceReader.read did: `bytes` consumed; `took`: records went into
    the batch (the batch may be full: committed then)."""

    __slots__ = ("bytes", "took")

    def __init__(self, n: int, *, took: bool):
        self.bytes = n
        self.took = took


AGAIN = Step(0, took=False)  # nothing taken: look again (the loop's conditions decide)
STOP = None  # nothing more from this source now
