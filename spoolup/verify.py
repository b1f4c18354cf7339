"""`spoolup verify [--json]`: audit delivery against the bucket and its ledger (issue 22 item 4).

What it proves, from one read of the journal, the listing pages of the object-key's static
prefix (key, size, ETag) and one GET per ledger segment of this agent -- never a request per
object, so a bucket of 100,000 objects costs ~100 listing pages:

* every object the journal has as done is at its final key with the size and ETag its ledger
  record gives (the journal's ETag for objects shipped before the ledger existed), and the
  record's checksum is the journal's;
* every ledger record (the latest of each object) that the journal has as done, or whose
  spool bytes the bucket or the journal show were consumed, has its object;
* no spool byte is in two shipped objects (per spool file as the ledger identifies it; two
  records of different origins that match the one object at a key are one object:
  ledger.one_per_object);
* per spool file, shipped objects and the objects not done yet hold every byte below the
  journaled offset, but for the dead-lettered ones.

The journal is read in one read transaction *before* the bucket is listed, so it works while
`spoolup run` holds the state dir: whatever the journal has as done was in the bucket before
the listing began (records are written before their objects, objects before they are
journaled done), and whatever completes meanwhile is still an object not done in the
snapshot, whose spans the journal holds.  The result (ok, time, problem count) is kept in the
journal's meta, in one short write transaction beside the running service's, for the gauges
`spoolup_verify_ok` and `spoolup_verify_timestamp_seconds`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from spoolup import __version__, keys, ledger, logs
from spoolup.journal import Journal, stored_version
from spoolup.journal.ledger import AGENT_META

SCHEMA_VERSION = 1
STATE = "verify"  # journal meta `state:verify`: the last verify's result (status, metrics)
KINDS = ("missing", "overwritten", "record_without_object", "unrecorded", "checksum_mismatch", "overlapping", "gap",
         "bad_segment")

Span = ledger.Span
Identity = tuple[int, int, "int | None", int, str]  # dev, ino, btime, head_len, head


@dataclass
class Problem:
    """One thing that does not hold; every field is in the JSON, null where it does not apply."""

    kind: str  # one of KINDS
    message: str
    key: str | None = None  # the object key it is about
    other_key: str | None = None  # overlapping: the other object holding the bytes
    origin: str | None = None  # "<journal id>/<object id>" of the object
    segment: str | None = None  # the ledger segment key it is about (bad_segment, record_without_object)
    path: str | None = None  # spool file (relative to spool-dir) of a byte range
    start: int | None = None  # the range [start, end) of that file
    end: int | None = None
    bytes: int | None = None  # bytes of the file concerned (overlapping, gap: every range of the pair/file)
    expected_size: int | None = None
    expected_etag: str | None = None
    found_size: int | None = None
    found_etag: str | None = None


@dataclass
class Report:
    ok: bool = True
    time: float = 0.0
    seconds: float = 0.0
    bucket: str = ""
    prefix: str = ""
    agent: str = ""
    journal_id: str | None = None
    requests: dict[str, int] = field(default_factory=lambda: {"list": 0, "get": 0, "total": 0})
    objects: dict[str, int] = field(default_factory=lambda: {"listed": 0, "done_in_journal": 0})
    ledger: dict[str, int] = field(default_factory=lambda: {"segments": 0, "records": 0, "shipped": 0})
    sources: dict[str, int] = field(default_factory=lambda: {"checked": 0, "bytes_checked": 0})
    problems: list[Problem] = field(default_factory=list)
    stored: bool = False  # the result was written into the journal (for the gauges)

    def to_json(self) -> str:
        doc = {"schema_version": SCHEMA_VERSION, "spoolup_version": __version__, **asdict(self)}
        return json.dumps(doc, indent=2, sort_keys=False)

    def render(self) -> str:
        lines = [f"{p.kind}: {p.message}" for p in self.problems]
        what = (f"{self.objects['listed']} objects listed, {self.objects['done_in_journal']} done in the journal, "
                f"{self.ledger['records']} ledger records in {self.ledger['segments']} segments "
                f"({self.ledger['shipped']} shipped), {self.sources['checked']} spool files; "
                f"{self.requests['total']} requests, {self.seconds:.1f}s")
        if self.ok:
            lines.append(f"verified: every shipped object is in the bucket as its ledger record says ({what})")
        else:
            lines.append(f"verify: {len(self.problems)} problem{'s' if len(self.problems) != 1 else ''} ({what})")
        if self.journal_id is None:
            lines.append("note: no journal in the state dir: only the ledger was checked against the bucket")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# the journal's side


@dataclass
class JournalView:
    journal_id: str | None
    agent_meta: str | None
    done: list = field(default_factory=list)  # ObjectRow of every done object
    pending: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)  # source -> (object, start, end)
    sources: list[dict] = field(default_factory=list)
    dead: dict[int, int] = field(default_factory=dict)  # source -> dead-lettered bytes


def read_journal(cfg) -> JournalView:
    if not cfg.journal_path.exists() or stored_version(cfg.journal_path) == 0:
        return JournalView(None, None)
    j = Journal.open_readonly(cfg.journal_path)
    try:
        with j.read_snapshot():
            return JournalView(j.journal_id, j.meta(AGENT_META), j.done_objects(), j.pending_ranges(),
                               j.verify_sources(), j.dead_letter_bytes())
    finally:
        j.close()


def agent_of(cfg, view: JournalView) -> str:
    """The agent id the service writes its ledger under: the option, else what the journal
    recorded, else the default (spoolup/ledger.py)."""
    return (getattr(cfg, "agent", "") or getattr(cfg, "agent_id", "") or view.agent_meta
            or ledger.default_agent_id(cfg.spool_dir))


def identity(s: ledger.SourceSpans) -> Identity:
    return (s.dev, s.ino, s.btime, s.head_len, s.head)


# ---------------------------------------------------------------------------
# the audit


def verify(cfg, s3) -> Report:
    """Audit the bucket against the journal and the ledger (see the module's docstring)."""
    started = time.monotonic()
    view = read_journal(cfg)  # first: see the module docstring
    report = Report(time=time.time(), bucket=cfg.bucket, prefix=keys.static_prefix(cfg.object_key),
                    agent=agent_of(cfg, view), journal_id=view.journal_id)
    own = report.prefix + ".spoolup"
    agent_prefix = ledger.agent_prefix(cfg.object_key, report.agent)

    listed: dict[str, tuple[int, str]] = {}
    segment_keys: list[tuple[int, str]] = []
    for page in s3.list_pages(report.prefix):
        report.requests["list"] += 1
        for key, size, etag in page:
            if key.startswith(own):  # spoolup's own keys: the ledger, probes' scratch
                seq = ledger.seq_of(key) if key.startswith(agent_prefix) else None
                if seq is not None:
                    segment_keys.append((seq, key))
                continue
            listed[key] = (size, etag)
    report.objects["listed"] = len(listed)

    records: list[ledger.Record] = []
    segment_of: dict[str, str] = {}  # origin -> key of the segment its latest record is in
    ledger_start: float | None = None  # when the agent's first segment was written
    for seq, key in sorted(segment_keys):
        data = s3.get_bytes(key)
        report.requests["get"] += 1
        if data is None:
            continue  # deleted since the listing
        try:
            seg = ledger.Segment.decode(data)
        except ledger.LedgerFormatError as e:
            report.problems.append(Problem("bad_segment", f"{key}: {e}", segment=key))
            continue
        report.ledger["segments"] += 1
        ledger_start = seg.written if ledger_start is None else min(ledger_start, seg.written)
        records.extend(seg.records)
        for r in seg.records:
            if not r.started:  # (a start intent says nothing of what an object holds)
                segment_of[r.origin] = key
    report.requests["total"] = report.requests["list"] + report.requests["get"]
    latest = ledger.latest(records)
    report.ledger["records"] = len(latest)
    # one record per object in the bucket: a lost journal's record of an object that a later
    # journal cut again, byte for byte at the same key, is an alias of the later one's
    shipped, aliases = ledger.one_per_object(
        (r for r in latest.values() if r.matches(*listed.get(r.final_key, (None, None)))), view.journal_id)
    report.ledger["shipped"] = len(shipped)

    attributed: dict[Identity, list[Span]] = {}  # bytes a problem already names (not reported again as gaps)

    def attribute(r: ledger.Record) -> None:
        for s in r.sources:
            attributed.setdefault(identity(s), []).extend(s.spans)

    # 1. every object the journal has as done is in the bucket as its record says
    handled: set[str] = set()
    report.objects["done_in_journal"] = len(view.done)
    for o in view.done:
        origin = o.origin or f"{view.journal_id}/{o.id}"
        handled.add(origin)
        rec = latest.get(origin)
        if rec is not None and rec.final_key != o.final_key:
            rec = None
        exp_size, exp_etag = (rec.size, rec.etag) if rec else (None, (o.etag or "").strip('"') or None)
        found = listed.get(o.final_key)
        common = dict(key=o.final_key, origin=origin, expected_size=exp_size, expected_etag=exp_etag)
        if found is None:
            report.problems.append(Problem(
                "missing", f"{o.final_key}: not in the bucket, where the journal has object {origin} done "
                f"({_what(exp_size, exp_etag)}): deleted behind spoolup's back", **common))
            if rec:
                attribute(rec)
        elif (exp_size is not None and found[0] != exp_size) or (exp_etag and found[1] != exp_etag):
            report.problems.append(Problem(
                "overwritten", f"{o.final_key}: holds {found[0]} bytes, ETag {found[1]}, where object {origin} "
                f"({_what(exp_size, exp_etag)}) was shipped: overwritten behind spoolup's back",
                found_size=found[0], found_etag=found[1], **common))
            if rec:
                attribute(rec)
        if rec is None and (o.ledger_seq or 0) > 0:
            report.problems.append(Problem(
                "unrecorded", f"{o.final_key}: the journal says ledger segment {o.ledger_seq} records object "
                f"{origin}, but no segment in the bucket does", segment=ledger.segment_key(
                    cfg.object_key, report.agent, o.ledger_seq), **common))
        if rec is not None and rec.checksum and o.checksum and rec.checksum != o.checksum:
            report.problems.append(Problem(
                "checksum_mismatch", f"{o.final_key}: the ledger record's checksum {rec.checksum} is not the "
                f"journal's {o.checksum}", segment=segment_of.get(origin), **common))

    # the spans of every file identity: shipped, and where the records say (shipped or not)
    shipped_spans: dict[Identity, list[tuple[int, int, ledger.Record]]] = {}
    record_starts: dict[Identity, list[int]] = {}  # where the records (shipped or not) say bytes of it are
    by_devino: dict[tuple[int, int], dict[Identity, ledger.SourceSpans]] = {}
    for r in latest.values():
        for s in r.sources:
            by_devino.setdefault((s.dev, s.ino), {}).setdefault(identity(s), s)
            record_starts.setdefault(identity(s), []).append(s.spans[0][0] if s.spans else 0)
            if r.origin in shipped:
                shipped_spans.setdefault(identity(s), []).extend((a, b, r) for a, b in s.spans)
    sources_of: dict[Identity, list[dict]] = {}  # the journal's sources of each identity
    for src in view.sources:
        if src["head"] is None:
            continue
        for ident, ss in by_devino.get((src["dev"], src["ino"]), {}).items():
            if ss.same_file(src["dev"], src["ino"], src["btime"], bytes(src["head"])):
                sources_of.setdefault(ident, []).append(src)

    # 2. no byte in two shipped objects
    for ident, spans in shipped_spans.items():
        _overlaps(ident, spans, report)

    # 3. records the journal does not have as done: intentions that did not happen, unless the
    #    bucket (a shipped object of the file holds later bytes) or the journal (its offset is
    #    past them) says their bytes were consumed and no shipped or pending object holds them
    pending_of = {ident: ledger.coalesce((a, b) for src in srcs for _, a, b in view.pending.get(src["id"], ()))
                  for ident, srcs in sources_of.items()}
    covered = {ident: ledger.coalesce((a, b) for a, b, _ in spans) for ident, spans in shipped_spans.items()}
    for origin, r in latest.items():
        if origin in handled or origin in shipped or origin in aliases:
            continue
        for s in r.sources:
            ident = identity(s)
            consumed_to = max([src["offset"] for src in sources_of.get(ident, ())]
                              + [b for _, b, _ in shipped_spans.get(ident, ())] + [0])
            lost = ledger.subtract([(a, min(b, consumed_to)) for a, b in s.spans if a < consumed_to],
                                   covered.get(ident, []) + pending_of.get(ident, []))
            if not lost:
                continue
            found = listed.get(r.final_key)
            a, b = lost[0][0], lost[-1][1]
            report.problems.append(Problem(
                "record_without_object" if found is None else "overwritten",
                f"{r.final_key}: the ledger records object {origin} there holding bytes {a}-{b} of {s.path}, "
                f"which no other object holds, but " + ("there is no object at the key" if found is None else
                f"the key holds {found[0]} bytes, ETag {found[1]} ({_what(r.size, r.etag)} recorded)"),
                key=r.final_key, origin=origin, segment=segment_of.get(origin), path=s.path, start=a, end=b,
                bytes=sum(y - x for x, y in lost), expected_size=r.size, expected_etag=r.etag,
                found_size=found[0] if found else None, found_etag=found[1] if found else None))
            attributed.setdefault(ident, []).extend(lost)

    # 4. per spool file: [0, journaled offset) held by shipped or pending objects, but dead letters
    idents_of_source: dict[int, list[Identity]] = {}
    for ident, srcs in sources_of.items():
        for src in srcs:
            idents_of_source.setdefault(src["id"], []).append(ident)
    for src in view.sources:
        if src["offset"] <= 0:
            continue
        idents = idents_of_source.get(src["id"], [])
        held = ledger.coalesce([(a, b) for i in idents for a, b in covered.get(i, [])]
                               + [(a, b) for _, a, b in view.pending.get(src["id"], ())])
        floor = 0
        if ledger_start is None or src["first_seen"] < ledger_start:
            # known to the journal before its agent's first segment: bytes shipped before the
            # ledger existed are recorded nowhere; checked from the first byte the ledger knows
            known = [a for i in idents for a in record_starts.get(i, ())] + [a for a, _ in held]
            floor = min(known, default=src["offset"])
        if floor >= src["offset"]:
            continue
        report.sources["checked"] += 1
        report.sources["bytes_checked"] += src["offset"] - floor
        gaps = ledger.subtract([(floor, src["offset"])], held + [s for i in idents for s in attributed.get(i, [])])
        missing = sum(b - a for a, b in gaps)
        dead = view.dead.get(src["id"], 0)
        if missing <= dead:
            continue  # dead-lettered records are in no object
        for a, b in gaps:
            report.problems.append(Problem(
                "gap", f"{src['path']}: bytes {a}-{b} ({b - a} bytes) are below the journaled offset "
                f"{src['offset']} but in no shipped or pending object ({missing} such bytes in the file, "
                f"{dead} dead-lettered)", path=src["path"], start=a, end=b, bytes=b - a))
    report.ok = not report.problems
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _what(size: int | None, etag: str | None) -> str:
    return f"{size} bytes, ETag {etag}" if size is not None else f"ETag {etag}"


def _overlaps(ident: Identity, spans: list[tuple[int, int, ledger.Record]], report: Report) -> None:
    """Bytes of one file in two shipped objects: one problem per pair of objects."""
    pairs: dict[tuple[str, str], list[Span]] = {}
    names: dict[tuple[str, str], tuple[ledger.Record, ledger.Record]] = {}
    spans = sorted(spans, key=lambda t: (t[0], t[1]))
    active: list[tuple[int, ledger.Record]] = []
    for a, b, r in spans:
        active = [(e, x) for e, x in active if e > a]
        for e, x in active:
            if x.origin != r.origin:
                pair = tuple(sorted((x.origin, r.origin)))
                pairs.setdefault(pair, []).append((a, min(b, e)))
                names[pair] = (x, r) if pair[0] == x.origin else (r, x)
        active.append((b, r))
    for pair, ranges in pairs.items():
        ranges = ledger.coalesce(ranges)
        x, y = names[pair]
        path = next(s.path for s in x.sources if identity(s) == ident)
        n = sum(b - a for a, b in ranges)
        report.problems.append(Problem(
            "overlapping", f"{path}: bytes {ranges[0][0]}-{ranges[-1][1]} ({n} bytes) are in both {x.final_key} "
            f"and {y.final_key}: shipped twice", key=x.final_key, other_key=y.final_key, origin=x.origin,
            path=path, start=ranges[0][0], end=ranges[-1][1], bytes=n))


# ---------------------------------------------------------------------------
# the result, for the gauges


def store(cfg, report: Report) -> bool:
    """Keep the result in the journal's meta (one short write transaction; the service's
    processes write beside it, SQLite serializes).  False when it cannot (no journal, a
    read-only state dir): the report stands, the gauges keep the previous result."""
    if report.journal_id is None:
        return False
    try:
        j = Journal.open(cfg.journal_path, fsync=cfg.fsync, create=False, migrate=False)
    except Exception as e:  # noqa: BLE001 - the audit's result is printed all the same
        logs.get("spoolup.verify").warning("cannot keep the verify result in the journal", error=str(e))
        return False
    try:
        if j.journal_id != report.journal_id:
            return False  # the journal was replaced meanwhile: not its result
        j.set_state(STATE, {"ok": report.ok, "time": report.time, "problems": len(report.problems)})
        return True
    except Exception as e:  # noqa: BLE001
        logs.get("spoolup.verify").warning("cannot keep the verify result in the journal", error=str(e))
        return False
    finally:
        j.close()


def run(cfg, *, as_json: bool) -> int:
    from spoolup.s3 import S3

    s3 = S3(cfg)
    try:
        report = verify(cfg, s3)
    finally:
        s3.close()
    report.stored = store(cfg, report)
    print(report.to_json() if as_json else report.render())
    return 0 if report.ok else 1


def last(journal) -> dict[str, Any] | None:
    """The last verify's result kept in the journal (status, metrics): {ok, time, problems}."""
    return journal.state(STATE)
