"""Time in object keys (lines format): strftime fields anywhere in object-key and the
object-key-timestamp, rendered at ingest time in key-timezone, cached per second.

object-key = "logs/dt=%Y-%m-%d/hour=%H/{name}" renders its literal text with strftime and its
{path}/{dir}/{name} placeholders from the spool file's path: a path is never run through
strftime, so a file name holding "%" stays as it is.  A record whose rendered key differs from
the one before starts an object of that key (router: objects are per key); the object of the
old key gets no more records and completes as s3()'s objects do, after flush-grace-period (or
max-object-age).
"""

from __future__ import annotations

import datetime
import re
import string
import time
import zoneinfo
from typing import TYPE_CHECKING

from spoolup import keys

if TYPE_CHECKING:
    from spoolup.scan import Source

# The strftime fields object-key accepts: POSIX's and glibc's conversions, with glibc's flags
# (- _ 0 ^ #), except %n and %t (a newline and a tab: no key may hold control characters) and
# %f (datetime's microseconds: two records of one second would get different keys).
FIELD_LETTERS = frozenset("aAbBcCdDeFgGhHIjklmMpPrRsSTuUVwWxXyYzZ%")
_FIELD_RE = re.compile(r"%([-_0^#]?)(.?)", re.S)
TIMEZONE_WORDS = {"utc": "UTC", "local": "local"}


def parse_timezone(value: str) -> str:
    """"UTC", "local" (the machine's zone, as time.localtime) or an IANA name ("Europe/Berlin",
    from the system's tz database through zoneinfo)."""
    word = TIMEZONE_WORDS.get(value.strip().lower())
    if word:
        return word
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"expected \"UTC\", \"local\" or an IANA time zone name such as \"Europe/Berlin\" "
                         f"(from the system's tz database); got {value!r}") from None
    return value


def render(fmt: str, now: float, zone: str) -> str:
    """strftime `fmt` at `now` in `zone`."""
    if zone == "local":
        return time.strftime(fmt, time.localtime(now))
    if zone == "UTC":
        return time.strftime(fmt, time.gmtime(now))
    return datetime.datetime.fromtimestamp(now, zoneinfo.ZoneInfo(zone)).strftime(fmt)


def check_fields(text: str) -> None:
    """Refuse a strftime field object-key does not take (ValueError saying which)."""
    for m in _FIELD_RE.finditer(text):
        letter = m.group(2)
        if letter not in FIELD_LETTERS or (letter == "%" and m.group(1)):
            shown = m.group(0) if letter else "%" + m.group(1)
            raise ValueError(f"{shown!r} in {text!r} is not a strftime field object-key takes (%Y, %m, %d, %H, "
                             "%M, %j, %V, ...; a literal % is written %%; %n, %t and %f are refused)")


def has_fields(template: str) -> bool:
    """Does the object-key template hold strftime fields (in its literal text)?"""
    return any("%" in literal for literal, *_ in _parse(template))


def _parse(template: str) -> list[tuple[str, str | None, str | None, str | None]]:
    return list(string.Formatter().parse(template))


def literals(template: str) -> list[str]:
    return [literal for literal, *_ in _parse(template)]


# instants a field is rendered at to find its shortest and longest text: several hours of every
# day of a leap year (month and day names, %j, 12-hour clocks, daylight saving time), as
# keys.timestamp_bytes does
def _instants():
    start = 1704067200  # 2024-01-01 UTC
    for day in range(367):
        for hour in (0, 9, 12, 23):
            yield start + day * 86400 + hour * 3600 + 59 * 60 + 59


def growth(template: str, zone: str) -> tuple[int, int]:
    """(least, most) bytes the strftime fields of the template's literal text add to it when
    rendered (negative: "%%" renders one byte).  The key-length rules use them: the shortest key
    a template renders (check-config) and the room a rendered key must leave (spool discovery,
    which checks the key with its fields as written)."""
    least = most = 0
    for literal in literals(template):
        if "%" not in literal:
            continue
        raw = len(literal.encode("utf-8", "surrogatepass"))
        sizes = [len(render(literal, t, zone).encode("utf-8", "surrogatepass")) for t in _instants()]
        least += min(sizes) - raw
        most += max(sizes) - raw
    return least, most


def longest(fmt: str, zone: str) -> int:
    """The longest `fmt` renders in `zone` (UTF-8 bytes)."""
    if not fmt:
        return 0
    return max(len(render(fmt, t, zone).encode("utf-8", "surrogatepass")) for t in _instants())


class KeyTime:
    """The timestamp and (with strftime fields in object-key) the key of a spool file's records
    ingested at `now`.  Both are rendered at most once per second; a file's key is kept until
    the rendered fields change (every key of the second shares one rendering of them)."""

    def __init__(self, object_key: str, key_zone: str, timestamp: str, timestamp_zone: str):
        self.timestamp_template, self.timestamp_zone = timestamp, timestamp_zone
        self.key_zone = key_zone
        self.parts = _parse(object_key) if has_fields(object_key) else None
        self._ts: tuple[int, str] = (-1, "")
        self._fields: tuple[int, tuple[str, ...]] = (-1, ())
        self._keys: dict[int, str] = {}  # source id -> key, for the fields in self._fields

    @property
    def timed(self) -> bool:
        return self.parts is not None

    def timestamp(self, now: float) -> str:
        if not self.timestamp_template:
            return ""
        second = int(now)
        if self._ts[0] != second:
            self._ts = (second, render(self.timestamp_template, now, self.timestamp_zone))
        return self._ts[1]

    def key(self, src: Source, now: float) -> str:
        """src.key (rendered once, when the file was found) unless object-key holds time."""
        if self.parts is None:
            return src.key  # type: ignore[return-value]
        second = int(now)
        if self._fields[0] != second:
            fields = tuple(render(lit, now, self.key_zone) if "%" in lit else lit for lit, *_ in self.parts)
            if fields != self._fields[1]:
                self._keys.clear()
            self._fields = (second, fields)
        key = self._keys.get(src.id)
        if key is None:
            key = self._keys[src.id] = keys.render_lines_parts(self.parts, self._fields[1], src.key_path)
        return key
