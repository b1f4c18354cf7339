"""The ledger's format: what spoolup writes into the bucket about each object it ships, so
that the bucket alone says which spool bytes are in which object (docs/DESIGN.md, "The
bucket is the ledger").

A *segment* is one small JSON object of spoolup's own at

    <object-key's static prefix>.spoolup/ledger/<agent id>/<seq, 12 digits>.json

holding the *records* of one or more objects: for each, the journal and object id that
wrote it, its final key, its record count, sizes, expected ETag and checksum, and per spool
file (identified as spoolup tracks it: device, inode, birth time, a digest of its first
bytes) the byte spans of that file it holds.  A segment is written *before* the writes
that make its objects visible (PutObject, CompleteMultipartUpload): a record whose object
is not at its key with that ETag and size is an intention that did not happen (a crash
between the two), never a shipped object.  One segment serves every object that became
ready at once, so a burst of small objects costs one extra request, not one per object.

A multipart object has a *start intent* too (a record with `started`: its journal and object
id, key, index and final key, nothing of its content yet), written before its
CreateMultipartUpload: the bucket then says which keys the agent may hold uploads at, so a
journal that lost the upload's id (a restored backup, a wiped state dir) can abort it rather
than leave it (spoolup/catchup.py).  The record written before its Complete follows later,
in another segment, and supersedes it.  `started` is optional in the JSON (absent: False),
so segments written before start intents read as they did.

Segment numbers grow per agent; a journal keeps the highest it wrote or has seen (meta
`ledger_seq`), so a listing that starts after it shows, in one request, whether the bucket
knows of objects the journal does not (a restored backup, a lost write-ahead log, a copied
state dir).

This module is the format only (pure: no S3, no journal): spans, records, segments, their
keys, their JSON, and the span arithmetic the ledger's users share.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from spoolup import keys

FORMAT = 1
DIR = ".spoolup/ledger/"
SEQ_DIGITS = 12
AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SEGMENT_NAME = re.compile(r"(\d{%d})\.json" % SEQ_DIGITS)
HEAD_DIGEST = 16  # bytes of the blake2b digest of a spool file's first bytes

Span = tuple[int, int]  # [start, end) in a spool file's own offsets


class LedgerFormatError(ValueError):
    """A segment that is not one spoolup wrote (or not in a format this version reads)."""


# ---------------------------------------------------------------------------
# agent identity and keys


def default_agent_id(spool_dir: str | os.PathLike) -> str:
    """The agent id when the configuration gives none: the host name and a digest of the
    spool dir's real path -- the same after the state dir is lost or restored, different
    for two spoolups on one host (each has its own spool dir)."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname().split(".")[0]) or "host"
    where = hashlib.sha256(os.fsencode(os.path.realpath(spool_dir))).hexdigest()[:8]
    return f"{host[:40].lstrip('.-_') or 'host'}-{where}"


def check_agent_id(value: str) -> None:
    if not AGENT_ID.fullmatch(value):
        raise ValueError("must be 1-64 characters of letters, digits, '.', '_' and '-', starting with a letter or digit")


def root(object_key: str) -> str:
    """Where every agent's ledger lives: under the object-key's static prefix, in a name no
    log object's key can have (documented for lifecycle rules and readers that must skip it)."""
    return keys.static_prefix(object_key) + DIR


def agent_prefix(object_key: str, agent: str) -> str:
    return f"{root(object_key)}{agent}/"


def segment_key(object_key: str, agent: str, seq: int) -> str:
    return f"{agent_prefix(object_key, agent)}{seq:0{SEQ_DIGITS}d}.json"


def seq_of(key: str) -> int | None:
    """The segment number of a ledger key (None: not a segment's name)."""
    m = _SEGMENT_NAME.fullmatch(key.rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


def is_ledger_key(object_key: str, key: str) -> bool:
    return key.startswith(root(object_key))


# ---------------------------------------------------------------------------
# span arithmetic (spans are sorted, non-overlapping after `coalesce`)


def coalesce(spans: Iterable[Span]) -> list[Span]:
    """Sorted, with touching and overlapping spans merged; empty spans dropped."""
    out: list[list[int]] = []
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def subtract(spans: Iterable[Span], minus: Iterable[Span]) -> list[Span]:
    """The parts of `spans` outside `minus`."""
    cut = coalesce(minus)
    out: list[Span] = []
    for a, b in coalesce(spans):
        for c, d in cut:
            if d <= a or c >= b:
                continue
            if c > a:
                out.append((a, c))
            a = max(a, d)
            if a >= b:
                break
        if a < b:
            out.append((a, b))
    return out


def overlaps(a: Sequence[Span], b: Sequence[Span]) -> list[Span]:
    """The bytes both hold (each sorted and coalesced)."""
    out: list[Span] = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def frontier(spans: Sequence[Span], start: int = 0) -> int:
    """The end of the run of spans contiguous from `start` (`start` if none begins there)."""
    end = start
    for a, b in coalesce(spans):
        if a > end:
            break
        end = max(end, b)
    return end


# ---------------------------------------------------------------------------
# records and segments


@dataclass(frozen=True)
class SourceSpans:
    """One spool file's bytes in one object.  The file is identified as spoolup tracks it,
    so that a journal rebuilt from the bucket finds it again in the spool."""

    dev: int
    ino: int
    btime: int | None  # birth time (ns) where the filesystem records one
    head_len: int  # how many first bytes `head` is the digest of
    head: str  # hex blake2b-16 of the file's first head_len bytes
    path: str  # the path it was found at, relative to spool-dir (the key was rendered from it)
    spans: tuple[Span, ...]

    def to_json(self) -> dict:
        return {"dev": self.dev, "ino": self.ino, "btime": self.btime, "head_len": self.head_len,
                "head": self.head, "path": self.path, "spans": [list(s) for s in self.spans]}

    @classmethod
    def from_json(cls, d: dict) -> "SourceSpans":
        spans = tuple((int(a), int(b)) for a, b in d["spans"])
        if any(b <= a or a < 0 for a, b in spans) or list(spans) != coalesce(spans):
            raise LedgerFormatError(f"spans of {d.get('path')!r} are not sorted, disjoint and non-empty")
        return cls(int(d["dev"]), int(d["ino"]), None if d.get("btime") is None else int(d["btime"]),
                   int(d["head_len"]), str(d["head"]), str(d["path"]), spans)

    def same_file(self, dev: int, ino: int, btime: int | None, head: bytes) -> bool:
        """Is this the file on (dev, ino) with these first bytes (at least head_len of them)?"""
        if (dev, ino) != (self.dev, self.ino):
            return False
        if self.btime is not None and btime is not None and btime != self.btime:
            return False
        return len(head) >= self.head_len and head_digest(head[: self.head_len]) == self.head


def head_digest(head: bytes) -> str:
    return hashlib.blake2b(head, digest_size=HEAD_DIGEST).hexdigest()


@dataclass(frozen=True)
class Record:
    """One object as the ledger knows it."""

    journal: str  # the journal id that wrote it
    object: int  # its object id in that journal
    key: str  # rendered object-key (no timestamp, index or suffix)
    ts: str  # rendered object-key-timestamp ('' for none)
    idx: int
    final_key: str
    mode: str  # "single" | "multipart"
    records: int
    raw: int  # record bytes (before compression)
    size: int  # stored bytes: the object's size in the bucket
    etag: str  # the ETag the object has when it is this record's object (quotes stripped)
    checksum: str | None  # "<algorithm>:<value>" of the stored bytes, where computed
    sources: tuple[SourceSpans, ...]
    # a start intent: written before the object's CreateMultipartUpload (records, sizes, ETag
    # and sources are not known yet: 0, "" and none); never a shipped object's record
    started: bool = False

    @property
    def origin(self) -> str:
        return f"{self.journal}/{self.object}"

    def to_json(self) -> dict:
        return {"journal": self.journal, "object": self.object, "key": self.key, "ts": self.ts, "idx": self.idx,
                "final_key": self.final_key, "mode": self.mode, "records": self.records, "raw": self.raw,
                "size": self.size, "etag": self.etag, "checksum": self.checksum,
                "sources": [s.to_json() for s in self.sources], **({"started": True} if self.started else {})}

    @classmethod
    def from_json(cls, d: dict) -> "Record":
        return cls(str(d["journal"]), int(d["object"]), str(d["key"]), str(d["ts"]), int(d["idx"]),
                   str(d["final_key"]), str(d["mode"]), int(d["records"]), int(d["raw"]), int(d["size"]),
                   str(d["etag"]).strip('"'), d.get("checksum"),
                   tuple(SourceSpans.from_json(s) for s in d["sources"]), d.get("started") is True)

    @classmethod
    def start_intent(cls, journal: str, object_id: int, key: str, ts: str, idx: int, final_key: str) -> "Record":
        """The record written before a multipart object's CreateMultipartUpload."""
        return cls(journal, object_id, key, ts, idx, final_key, "multipart", 0, 0, 0, "", None, (), True)

    def matches(self, size: int | None, etag: str | None) -> bool:
        """Is an object of this size and ETag (a listing's or a HEAD's) this record's object?
        (A start intent's never is: it records no content.)"""
        return not self.started and size == self.size and etag is not None and etag.strip('"') == self.etag


@dataclass(frozen=True)
class Segment:
    agent: str
    journal: str  # the journal that wrote the segment
    seq: int
    written: float  # wall time (informational)
    records: tuple[Record, ...] = field(default_factory=tuple)

    def encode(self) -> bytes:
        doc = {"spoolup-ledger": FORMAT, "agent": self.agent, "journal": self.journal, "seq": self.seq,
               "written": round(self.written, 3), "records": [r.to_json() for r in self.records]}
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> "Segment":
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("spoolup-ledger") != FORMAT:
                raise LedgerFormatError(f"not a spoolup ledger segment of format {FORMAT}")
            return cls(str(doc["agent"]), str(doc["journal"]), int(doc["seq"]), float(doc["written"]),
                       tuple(Record.from_json(r) for r in doc["records"]))
        except LedgerFormatError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise LedgerFormatError(f"unreadable ledger segment: {e}") from None


def latest(records: Iterable[Record]) -> dict[str, Record]:
    """The last record of each object (by origin), in the order given (segment order): a later
    record of the same object supersedes an earlier one (its claim moved to another key).
    Start intents are left out (latest_starts): they never say what an object holds."""
    out: dict[str, Record] = {}
    for r in records:
        if not r.started:
            out[r.origin] = r
    return out


def one_per_object(shipped: Iterable[Record], prefer: str | None = None) -> tuple[dict[str, Record], set[str]]:
    """Records whose objects are in the bucket (each matched the object at its final key),
    one per object: records of different origins at the same final key name one object -- a
    lost journal recorded it and was stopped before its PutObject/Complete, and the journal
    that followed (the state dir wiped, or a backup restored that gives it another object id)
    cut the same records again into the same bytes at the same key and shipped them under its
    own origin.  Returns (origin -> the record kept for each object: journal `prefer`'s if one
    is, else the first given; the origins of the others, aliases of a kept one)."""
    kept: dict[str, Record] = {}  # final key -> record
    aliases: set[str] = set()
    for r in shipped:
        other = kept.get(r.final_key)
        if other is None:
            kept[r.final_key] = r
        elif r.journal == prefer and other.journal != prefer:
            kept[r.final_key] = r
            aliases.add(other.origin)
        else:
            aliases.add(r.origin)
    return {r.origin: r for r in kept.values()}, aliases


def latest_starts(records: Iterable[Record]) -> dict[str, Record]:
    """The last start intent of each object (by origin), in segment order: the key its last
    CreateMultipartUpload was (or may have been) sent for."""
    out: dict[str, Record] = {}
    for r in records:
        if r.started:
            out[r.origin] = r
    return out
