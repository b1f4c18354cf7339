"""The rotation policy (spoolup/objects.py), checked with hypothesis against a
model of syslog-ng's s3() destination (modules/python-modules/syslogng/
modules/s3/s3_destination.py: __get_s3_object, __get_backfill_s3_object,
__flush_timed_out_s3_objects, send)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from spoolup import objects

# ---------------------------------------------------------------------------
# a record stream: (key, ts, size, seconds since the previous record)

KEYS = st.sampled_from(["a", "b", "c"])
TSS = st.sampled_from(["", "01", "02", "03", "10"])
RECORDS = st.lists(
    st.tuples(KEYS, TSS, st.integers(1, 40), st.sampled_from([0.0, 0.5, 2.0, 11.0])), min_size=1, max_size=120
)
LIMITS = st.integers(1, 150)
GRACE = st.sampled_from([1.0, 5.0, 10.0, 1e9])


# ---------------------------------------------------------------------------
# the reference: s3()'s algorithm, transcribed


@dataclass
class RefObj:
    key: str
    ts: str
    index: int
    size: int = 0
    modified: float = 0.0
    finished: bool = False
    records: list[int] = field(default_factory=list)
    created: float = 0.0


def s3_reference(records, limit, grace, max_age=None):
    """s3()'s algorithm; with max_age, plus a timer completing an object max_age after it was
    created (its first record), as Fluent Bit's upload_timeout does."""
    objs: list[RefObj] = []
    current: dict[str, RefObj] = {}
    backfill: dict[str, dict[str, RefObj]] = {}
    finished: dict[tuple[str, str], int] = {}  # (key, ts) -> max finished index

    def new(key, ts, index):
        o = RefObj(key, ts, index, created=now)
        objs.append(o)
        return o

    def finish(o):
        if not o.finished:
            o.finished = True
            finished[(o.key, o.ts)] = max(finished.get((o.key, o.ts), -1), o.index)

    def next_index(key, ts):
        return max([o.index for o in objs if o.key == key and o.ts == ts], default=-1) + 1

    now = 0.0
    for i, (key, ts, size, dt) in enumerate(records):
        now += dt
        for o in objs:  # the flush timer
            if not o.finished and (o.modified + grace <= now or (max_age is not None and o.created + max_age <= now)):
                finish(o)
        if key not in current:
            o = current[key] = new(key, ts, next_index(key, ts))
        else:
            cur = current[key]
            if cur.ts == ts:
                o = cur if not cur.finished else new(key, ts, next_index(key, ts))
                current[key] = o
            elif cur.ts < ts:
                finish(cur)
                o = current[key] = new(key, ts, next_index(key, ts))
            else:
                bf = backfill.setdefault(key, {})
                if ts not in bf or bf[ts].finished:
                    bf[ts] = new(key, ts, next_index(key, ts))
                o = bf[ts]
        o.size += size
        o.modified = now
        o.records.append(i)
        if o.size >= limit:
            finish(o)
    return [(o.key, o.ts, o.index, o.records) for o in objs]


# ---------------------------------------------------------------------------
# spoolup's policy, driven the way ingest drives it


@dataclass
class Obj:
    key: str
    ts: str
    seq: int
    size: int = 0
    last_write: float = 0.0
    records: list[int] = field(default_factory=list)
    created: float = 0.0


def spoolup_policy(records, limit, grace, max_age=None, expiry_ages=None):
    """expiry_ages[i]: whether the periodic expiry (Ingest.expire) looked at max-object-age
    before record i; when it did not (records routed between two expiries), routing does
    (Router._target).  Either way the same objects must result."""
    objs: list[Obj] = []
    open_: dict[tuple[str, str], Obj] = {}
    newest: dict[str, str] = {}
    seq: dict[tuple[str, str], int] = {}

    def close(o):
        del open_[(o.key, o.ts)]

    now = 0.0
    for i, (key, ts, size, dt) in enumerate(records):
        now += dt
        if max_age is None:
            for o in objects.expired(list(open_.values()), now, grace):
                close(o)
        else:
            looked = expiry_ages is None or expiry_ages[i % len(expiry_ages)]
            for o, _reason in objects.due(list(open_.values()), now, grace, max_age if looked else None):
                close(o)
        open_ts = {t for (k, t) in open_ if k == key}
        route = objects.route(newest.get(key), open_ts, ts)
        for t in route.close:
            close(open_[(key, t)])
        newest[key] = route.newest
        o = open_[(key, ts)] if route.reuse else None
        if o is not None and objects.aged(o.created, now, max_age):
            close(o)
            o = None
        if o is None:
            n = seq.get((key, ts), 0)
            seq[(key, ts)] = n + 1
            o = open_[(key, ts)] = Obj(key, ts, n, created=now)
            objs.append(o)
        record = b"x" * (size - 1) + b"\n"
        stop, full = objects.take(o.size, limit, record, 0, len(record))
        assert stop == len(record), "a single record is never split"
        o.size += size
        o.last_write = now
        o.records.append(i)
        if full:
            close(o)
    return [(o.key, o.ts, o.seq, o.records) for o in objs]


@settings(max_examples=400, deadline=None)
@given(RECORDS, LIMITS, GRACE)
def test_policy_matches_s3_destination(records, limit, grace):
    assert spoolup_policy(records, limit, grace) == s3_reference(records, limit, grace)


@settings(max_examples=300, deadline=None)
@given(RECORDS, LIMITS, GRACE)
def test_every_record_lands_in_exactly_one_object_in_order(records, limit, grace):
    placed = spoolup_policy(records, limit, grace)
    seen = sorted(r for _, _, _, recs in placed for r in recs)
    assert seen == list(range(len(records)))
    # per (key, ts), objects in index order hold that (key, ts)'s records in arrival order
    by_kt: dict[tuple[str, str], list[tuple[int, list[int]]]] = {}
    for key, ts, seq, recs in placed:
        by_kt.setdefault((key, ts), []).append((seq, recs))
    for (key, ts), objs in by_kt.items():
        objs.sort()
        assert [s for s, _ in objs] == list(range(len(objs)))
        flat = [r for _, recs in objs for r in recs]
        assert flat == sorted(flat)
        assert flat == [i for i, (k, t, _, _) in enumerate(records) if (k, t) == (key, ts)]


@settings(max_examples=300, deadline=None)
@given(RECORDS, LIMITS)
def test_objects_exceed_the_size_limit_only_by_their_last_record(records, limit):
    sizes = [size for _, _, size, _ in records]
    for key, ts, seq, recs in spoolup_policy(records, limit, 1e9):
        total = sum(sizes[r] for r in recs)
        assert total - sizes[recs[-1]] < limit


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=200), st.integers(0, 400), st.integers(1, 500))
def test_take_cuts_a_block_exactly_where_per_record_writes_would(lengths, obj_size, limit):
    """ingest hands take() a whole block of records at once; the cut must be the same
    as writing the records one by one and completing the object once it is full."""
    block = b"".join(b"r" * (n - 1) + b"\n" for n in lengths)
    stop, full = objects.take(obj_size, limit, block, 0, len(block))
    size, expect_stop, expect_full = obj_size, len(block), False
    pos = 0
    for n in lengths:
        if size >= limit:  # already full before this record: take() sees room <= 0
            break
        size += n
        pos += n
        if size >= limit:
            expect_stop, expect_full = pos, True
            break
    if obj_size >= limit:  # an object is completed as soon as it is full; take() then gives one record
        expect_stop, expect_full = lengths[0], True
    assert (stop, full) == (expect_stop, expect_full)


AGES = st.sampled_from([0.5, 1.0, 3.0, 10.0, 30.0])
EXPIRY_LOOKS = st.lists(st.booleans(), min_size=1, max_size=7)


@settings(max_examples=400, deadline=None)
@given(RECORDS, LIMITS, GRACE, AGES, EXPIRY_LOOKS)
def test_max_object_age_matches_s3_destination_with_an_age_timer(records, limit, grace, age, looks):
    """max-object-age: s3()'s rotation plus a timer completing each object max_age after its
    first record, whether the periodic expiry or the routing of the next record sees it first."""
    assert spoolup_policy(records, limit, grace, age, looks) == s3_reference(records, limit, grace, age)


@settings(max_examples=300, deadline=None)
@given(RECORDS, LIMITS, AGES, EXPIRY_LOOKS)
def test_every_object_holds_records_of_less_than_max_object_age(records, limit, age, looks):
    """However busy (no flush-grace-period expiry), an object's records arrived within
    max-object-age of its first; every record still lands exactly once, in order."""
    times, now = [], 0.0
    for _key, _ts, _size, dt in records:
        now += dt
        times.append(now)
    placed = spoolup_policy(records, limit, 1e9, age, looks)
    for _key, _ts, _seq, recs in placed:
        assert times[recs[-1]] - times[recs[0]] < age
    assert sorted(r for *_, recs in placed for r in recs) == list(range(len(records)))
    # off (None), nothing changes
    assert spoolup_policy(records, limit, 1e9, None) == spoolup_policy(records, limit, 1e9, 1e12, looks)


def test_aged_and_due_examples():
    assert not objects.aged(100.0, 1e12, None)  # off
    assert not objects.aged(100.0, 159.9, 60.0)
    assert objects.aged(100.0, 160.0, 60.0)  # max-object-age after the first record, to the second

    @dataclass
    class O:
        created: float
        last_write: float

    idle, busy, young = O(0.0, 10.0), O(0.0, 99.0), O(90.0, 99.0)
    assert objects.due([idle, busy, young], 100.0, 60.0, 100.0) == [(idle, "flush-grace-period"),
                                                                    (busy, "max-object-age")]
    assert objects.due([idle, busy, young], 100.0, 60.0) == [(idle, "flush-grace-period")]


def test_route_examples():
    assert objects.route(None, set(), "05") == objects.Route(close=(), reuse=False, newest="05")
    assert objects.route("05", {"05"}, "05") == objects.Route(close=(), reuse=True, newest="05")
    assert objects.route("05", {"05"}, "06") == objects.Route(close=("05",), reuse=False, newest="06")
    assert objects.route("05", {"05"}, "04") == objects.Route(close=(), reuse=False, newest="05")
    assert objects.route("05", {"05", "04"}, "04") == objects.Route(close=(), reuse=True, newest="05")
    assert objects.route("05", set(), "06") == objects.Route(close=(), reuse=False, newest="06")


def test_full_by_parts():
    assert not objects.full_by_parts(objects.MAX_PARTS - 1)
    assert objects.full_by_parts(objects.MAX_PARTS)


# ---------------------------------------------------------------------------
# stored size with compression: s3() completes an object once its compressed size reaches
# max-object-size (s3_object.py: size += buffer.tell() growth after each write).  spoolup
# writes runs of up to blind_bytes() at once; the objects must end after the same records.


def _compressor(codec: str, level: int):
    import zlib

    import zstandard

    if codec == "gzip":
        return zlib.compressobj(level, zlib.DEFLATED, 31)
    return zstandard.ZstdCompressor(level=level).compressobj()


def _cuts_one_by_one(records: list[bytes], limit: int, codec: str, level: int) -> list[int]:
    """s3()'s way: write a record, look at the stored size, complete the object when it is reached."""
    cuts, comp, stored = [], _compressor(codec, level), 0
    for i, rec in enumerate(records):
        stored += len(comp.compress(rec))
        if stored >= limit:
            cuts.append(i + 1)
            comp, stored = _compressor(codec, level), 0
    return cuts


def _cuts_in_blind_runs(records: list[bytes], limit: int, codec: str, level: int) -> list[int]:
    """spoolup's way (ingest._deliver): runs of records found by objects.cut within blind_bytes."""
    data = b"".join(records)
    ends, pos = {}, 0
    for i, rec in enumerate(records):
        pos += len(rec)
        ends[pos] = i + 1
    cuts, comp, stored, pos = [], _compressor(codec, level), 0, 0
    while pos < len(data):
        stop = objects.cut(data, pos, len(data), objects.blind_bytes(stored, limit))
        assert stop in ends, "a run always ends at a record boundary"
        stored += len(comp.compress(data[pos:stop]))
        pos = stop
        if stored >= limit:
            cuts.append(ends[stop])
            comp, stored = _compressor(codec, level), 0
    return cuts


def _record(kind: int, seed: int, n: int) -> bytes:
    import random as _random

    rnd = _random.Random(seed)
    if kind == 0:  # incompressible
        body = rnd.randbytes(n).replace(b"\n", b"#")
    elif kind == 1:  # log-like text
        words = [b"GET", b"/api/v1/items", b"200", b"served", b"in", b"ms", b"user=", b"web01", b"seq="]
        body = b" ".join(rnd.choice(words) + str(rnd.randrange(10**6)).encode() for _ in range(n // 8 + 1))[:n]
    else:  # very repetitive
        body = bytes([65 + seed % 26]) * n
    return body + b"\n"


# runs of records: (kind, seed, how many, size of each), so that an example can hold
# thousands of small records -- where a run of many records could hide the crossing one
STORED_RUNS = st.lists(st.one_of(st.tuples(st.integers(0, 2), st.integers(0, 10**6), st.integers(1, 300),
                                           st.integers(0, 1500)),
                                 st.tuples(st.integers(0, 2), st.integers(0, 10**6), st.integers(1, 8),
                                           st.integers(20_000, 60_000))),
                       min_size=1, max_size=10)


@settings(max_examples=50, deadline=None)
@given(STORED_RUNS, st.one_of(st.integers(1, 70_000), st.integers(270_000, 800_000)),
       st.sampled_from([("gzip", 1), ("gzip", 9), ("zstd", 1), ("zstd", 3)]))
def test_blind_runs_complete_objects_after_the_records_s3_would(runs, limit, codec):
    records = [_record(kind, seed + i, size) for kind, seed, count, size in runs for i in range(count)]
    assert _cuts_in_blind_runs(records, limit, *codec) == _cuts_one_by_one(records, limit, *codec)


def test_blind_bytes_examples():
    slack = objects.STORED_SLACK
    assert objects.blind_bytes(0, slack) == 0  # within the slack of the limit: one record at a time
    assert objects.blind_bytes(10, 10 + slack + 257) == 255
    assert objects.blind_bytes(0, 5 << 40) > 5 << 39
    assert objects.cut(b"ab\ncd\nef\n", 0, 9, 0) == 3  # nothing fits: one record
    assert objects.cut(b"ab\ncd\nef\n", 0, 9, 7) == 6
    assert objects.cut(b"ab\ncd\nef\n", 3, 9, 6) == 9
    assert objects.cut(b"ab\ncd\nef", 6, 8, 0) == 8  # a final tail without newline
