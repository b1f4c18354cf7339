"""The `envelope` spool format: one JSON object per line, written by syslog-ng's
$(format-json ...) with the fields

    key  (string, required)  the rendered object-key() template
    ts   (string, optional)  the rendered object-key-timestamp(); absent or "" = none
    suffix (string, optional) the block's object-key-suffix(); absent or "" = none
    msg  (string, required)  the rendered record; the object receives msg + "\\n" (UTF-8).
                             A record larger than max-object-size is kept whole, as s3()
                             keeps it: it completes the object it goes into.

Anything else is a bad record for the dead-letter file; `parse` says why.
"""

from __future__ import annotations

import json
from typing import NamedTuple

from spoolup import keys


class Record(NamedTuple):
    key: str  # the final object-key (config object-key rendered over {key})
    ts: str
    body: bytes  # msg as UTF-8 + "\n"
    suffix: str = ""  # object-key-suffix: after the index, before .gz/.zst


class Bad(NamedTuple):
    reason: str


_KEY_CACHE = 65536  # (key, ts) pairs whose validation result is remembered


def _optional(doc: dict, name: str) -> str | Bad:
    """An optional string field: absent or null reads as "" (no timestamp, no suffix)."""
    value = doc.get(name)
    if value is None:
        return ""
    if type(value) is not str:
        return Bad(f"field '{name}' is not a string")
    return value


class Parser:
    """Parses envelope lines for one configuration.  Keys repeat across records,
    so the validation of each (key, ts) pair is done once and remembered: per
    record this costs one json.loads, a dict lookup and the msg encoding."""

    def __init__(self, template: str, compressed: str = ""):
        self.template = template
        self.room = keys.INDEX_ROOM + len(compressed)  # what a final key adds: the longest -index, .gz/.zst
        self._keys: dict[tuple[str, str, str], str | Bad] = {}

    def parse(self, line: bytes) -> Record | Bad:
        try:
            doc = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return Bad("not valid JSON")
        if type(doc) is not dict:
            return Bad("not a JSON object")
        key = doc.get("key")
        msg = doc.get("msg")
        if type(key) is not str:
            return Bad("field 'key' is missing or not a string")
        ts = _optional(doc, "ts")
        if type(ts) is Bad:
            return ts
        if type(msg) is not str:
            return Bad("field 'msg' is missing or not a string")
        suffix = _optional(doc, "suffix")
        if type(suffix) is Bad:
            return suffix
        rendered = self._keys.get((key, ts, suffix))
        if rendered is None:
            rendered = self._check_key(key, ts, suffix)
            if len(self._keys) >= _KEY_CACHE:
                self._keys.clear()
            self._keys[(key, ts, suffix)] = rendered
        if type(rendered) is Bad:
            return rendered
        try:
            body = msg.encode("utf-8") + b"\n"
        except UnicodeEncodeError:
            return Bad("field 'msg' is not valid Unicode (a lone surrogate escape)")
        return Record(rendered, ts, body, suffix)

    def _check_key(self, key: str, ts: str, suffix: str) -> str | Bad:
        """The object key rendered from the config's object-key over {key}, or why it cannot be one."""
        problem = keys.key_problem(key)
        if problem:
            return Bad(f"key {key!r} {problem}")
        rendered = keys.render_envelope(self.template, key)
        if suffix:
            problem = keys.suffix_problem(suffix)
            if problem:
                return Bad(f"suffix {suffix!r} {problem}")
        final = keys.final_key(rendered, ts, 0, suffix)
        problem = keys.final_key_problem(final, self.room)
        if problem:
            return Bad(f"object key {final!r} {problem}")
        return rendered


def parse(line: bytes, template: str) -> Record | Bad:
    """One envelope line (without its newline); see Parser."""
    return Parser(template).parse(line)
