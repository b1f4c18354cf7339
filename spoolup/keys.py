"""Object keys: the object-key template, key validation and s3()'s final key form."""

from __future__ import annotations

import os
import posixpath
import string
import time

LINES_FIELDS = frozenset({"path", "dir", "name"})
ENVELOPE_FIELDS = frozenset({"key"})
MAX_KEY_BYTES = 1024  # S3's limit for a whole key (UTF-8 bytes)
MAX_SUFFIX_BYTES = 64  # object-key-suffix
# The longest "-<index>" a final key is checked with: an index up to 9,999,999,999 (objects of one
# key and timestamp).  Indexes are claimed at upload time, so a key is checked with the longest one.
INDEX_ROOM = len("-9999999999")


def final_key(key: str, ts: str, index: int, suffix: str = "") -> str:
    """The key s3() writes: key + -ts (if any) + -index (if > 0) + suffix (object-key-suffix + .gz/.zst)."""
    out = key
    if ts:
        out += f"-{ts}"
    if index > 0:
        out += f"-{index}"
    return out + suffix


def timestamp_bytes(template: str) -> int:
    """The longest a strftime `template` renders (UTF-8 bytes): rendered in local time, as ingest
    does, at several hours of every day of a leap year (month and day names, %j, 12-hour clocks,
    the zone's name with and without daylight saving time)."""
    if not template:
        return 0
    longest = 0
    start = 1704067200  # 2024-01-01 UTC, a leap year
    for day in range(367):
        for hour in (0, 9, 12, 23):
            t = time.localtime(start + day * 86400 + hour * 3600 + 59 * 60 + 59)
            longest = max(longest, len(time.strftime(template, t).encode("utf-8", "surrogatepass")))
    return longest


def key_room(ts_bytes: int, suffix: str) -> int:
    """Bytes a final key can add to a rendered key: "-" + timestamp (ts_bytes long at most, 0:
    none), "-" + the longest index, and `suffix` (object-key-suffix + .gz/.zst)."""
    return (1 + ts_bytes if ts_bytes else 0) + INDEX_ROOM + len(suffix.encode("utf-8", "surrogatepass"))


def final_key_problem(key: str, room: int) -> str | None:
    """Why `key` (a rendered key) cannot be the start of a final key that may grow by `room`
    bytes (key_room), or None: S3 refuses a key over MAX_KEY_BYTES (KeyTooLongError)."""
    problem = key_problem(key)
    if problem:
        return problem
    size = len(key.encode("utf-8"))
    if size + room > MAX_KEY_BYTES:
        return (f"is {size} bytes long; with the timestamp, index and suffixes its object can get ({room} bytes "
                f"more) the key would exceed S3's limit of {MAX_KEY_BYTES} bytes")
    return None


def shortest_render(template: str) -> str:
    """The shortest key a template can render: each placeholder one byte ({dir}: none, a file at
    the top of the spool has no directory).  Every key it renders is at least this long."""
    out = []
    for literal, field, _spec, _conv in string.Formatter().parse(template):
        out.append(literal)
        if field is not None and field != "dir":
            out.append("x")
    return "".join(out)


def suffix_problem(suffix: str) -> str | None:
    """Why `suffix` cannot be an object-key-suffix (None when it can)."""
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in suffix):
        return "contains control characters"
    if len(suffix.encode("utf-8", "surrogatepass")) > MAX_SUFFIX_BYTES:
        return f"is longer than {MAX_SUFFIX_BYTES} bytes"
    return None


def key_prefix(key: str, ts: str) -> str:
    """Every final key of (key, ts) starts with this."""
    return f"{key}-{ts}" if ts else key


def check_template(template: str, fmt: str) -> None:
    allowed = LINES_FIELDS if fmt == "lines" else ENVELOPE_FIELDS
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"{template!r} is not a valid template ({e}); write literal braces as {{{{ and }}}}") from None
    for _literal, field, spec, conv in parsed:
        if field is None:
            continue
        if field not in allowed or spec or conv:
            shown = ", ".join("{" + f + "}" for f in sorted(allowed))
            raise ValueError(f"unknown placeholder {{{field}}} in {template!r}; the {fmt} format offers {shown}")
    if not template.strip():
        raise ValueError("must not be empty")


OWN_MARK = ".spoolup"  # spoolup's own keys: <static prefix>.spoolup... (ledger segments, probe scratch keys)


def check_not_own(template: str) -> None:
    """An object-key must never render a key under <static prefix>.spoolup, where spoolup keeps
    its own objects (LEDGER rule 9: a log object there would be read as a ledger segment or
    deleted as a probe's scratch key).  Kept simple: its literal text must not hold ".spoolup"."""
    literal = "".join(lit for lit, _f, _s, _c in string.Formatter().parse(template))
    if OWN_MARK in literal:
        raise ValueError(f"{template!r} contains {OWN_MARK!r}: keys starting with the object-key's static prefix "
                         f"followed by {OWN_MARK!r} are spoolup's own (its ledger, {static_prefix(template)}"
                         f"{OWN_MARK}/ledger/); choose an object-key without {OWN_MARK!r}")


def static_prefix(template: str) -> str:
    """The literal text before the first placeholder or "%": every key spoolup makes starts with
    it.  A "%" starts a strftime field in a lines object-key ("logs/dt=%Y-%m-%d/{name}": prefix
    "logs/dt="); pending uploads are listed, and spoolup's own scratch keys made, under this
    prefix, so it must never hold text a key does not start with.  (In an envelope object-key a
    "%" is literal text: a prefix stopping there is shorter, and still one of every key.)"""
    out = []
    for literal, field, _spec, _conv in string.Formatter().parse(template):
        if "%" in literal:
            out.append(literal[:literal.index("%")])
            break
        out.append(literal)
        if field is not None:
            break
    return "".join(out)


def check_strftime(template: str) -> None:
    try:
        rendered = time.strftime(template, time.localtime(0))
    except ValueError as e:
        raise ValueError(f"{template!r} is not a valid strftime template: {e}") from None
    problem = key_problem(rendered)
    if problem:
        raise ValueError(f"renders to {rendered!r}, which {problem}")


# instants the sortability check renders a timestamp at: (first, step, count) in seconds
_SORT_PROBES = ((1767225600, 1, 150), (1767225600, 61, 300), (1767225600, 3599, 20000))  # from 2026-01-01


def timestamp_sort_problem(template: str) -> str | None:
    """Why timestamps rendered from the strftime `template` do not sort as the times they
    stand for (None when they do).  Timestamps compare as strings, as in s3(): a later one
    that sorts lower is taken as older and goes to a backfill object.  Checked by rendering
    the template at increasing instants (UTC: the format is what matters, not the zone)."""
    for first, step, count in _SORT_PROBES:
        prev_t, prev = first, time.strftime(template, time.gmtime(first))
        for i in range(1, count):
            t = first + i * step
            cur = time.strftime(template, time.gmtime(t))
            if cur < prev:
                when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(prev_t))
                later = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))
                return (f"{template!r} renders {when} as {prev!r} and the later {later} as {cur!r}, which sorts "
                        "before it; timestamps compare as strings (as in s3()), so use zero-padded numbers, "
                        "largest unit first, such as \"%Y%m%d%H\"")
            prev_t, prev = t, cur
    return None
def printable(rel_path: str) -> str:
    """A spool path as text: a file name that is not UTF-8 (held by Python with surrogate
    escapes) shows each such byte as the text \\xNN, as syslog-ng's format-json escapes
    message bytes.  This is the rule for keys rendered from such names, and how logs and
    `status` show them."""
    try:
        rel_path.encode("utf-8")
        return rel_path
    except UnicodeEncodeError:
        return os.fsencode(rel_path).decode("utf-8", "backslashreplace")


def render_lines(template: str, rel_path: str) -> str:
    rel_path = printable(rel_path)
    directory, name = posixpath.split(rel_path)
    return template.format_map({"path": rel_path, "dir": directory, "name": name})


def render_lines_parts(parts, fields: tuple[str, ...], rel_path: str) -> str:
    """render_lines() of a template parsed into `parts` (string.Formatter().parse) whose literal
    texts are replaced by `fields` (their strftime fields rendered: spoolup/keytime.py)."""
    rel_path = printable(rel_path)
    directory, name = posixpath.split(rel_path)
    values = {"path": rel_path, "dir": directory, "name": name}
    return "".join(lit + (values[field] if field is not None else "") for lit, (_l, field, _s, _c) in zip(fields, parts))


def render_envelope(template: str, key: str) -> str:
    return template.format_map({"key": key})


def key_problem(key: str) -> str | None:
    """Why `key` cannot be an object key (None when it can)."""
    if not key:
        return "is empty"
    if key.startswith("/"):
        return "starts with '/'"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
        return "contains control characters"
    segments = key.split("/")
    if any(seg in (".", "..") for seg in segments):
        return "contains '.' or '..' path segments"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if size > MAX_KEY_BYTES:
        return f"is {size} bytes long; S3 keys are limited to {MAX_KEY_BYTES} bytes"
    return None
