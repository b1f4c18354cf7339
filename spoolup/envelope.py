"""The `envelope` spool format: one JSON object per line, written by syslog-ng's
$(format-json ...) with the fields

    key  (string, required)  the rendered object-key() template
    ts   (string, optional)  the rendered object-key-timestamp(); absent or "" = none
    msg  (string, required)  the rendered record; the object receives msg + "\\n" (UTF-8)

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


class Bad(NamedTuple):
    reason: str


def parse(line: bytes, template: str, max_object_size: int) -> Record | Bad:
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return Bad("not valid JSON")
    if not isinstance(doc, dict):
        return Bad("not a JSON object")
    key = doc.get("key")
    if not isinstance(key, str):
        return Bad("field 'key' is missing or not a string")
    ts = doc.get("ts", "")
    if ts is None:
        ts = ""
    if not isinstance(ts, str):
        return Bad("field 'ts' is not a string")
    msg = doc.get("msg")
    if not isinstance(msg, str):
        return Bad("field 'msg' is missing or not a string")
    problem = keys.key_problem(key)
    if problem:
        return Bad(f"key {key!r} {problem}")
    rendered = keys.render_envelope(template, key)
    problem = keys.key_problem(keys.final_key(rendered, ts, 0))
    if problem:
        return Bad(f"object key {keys.final_key(rendered, ts, 0)!r} {problem}")
    try:
        body = msg.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return Bad("field 'msg' is not valid Unicode")
    if len(body) > max_object_size:
        return Bad(f"record of {len(body)} bytes is larger than max-object-size ({max_object_size} bytes)")
    return Record(rendered, ts, body)
