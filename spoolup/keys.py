"""Object keys: the object-key template, key validation and s3()'s final key form."""

from __future__ import annotations

import posixpath
import string
import time

LINES_FIELDS = frozenset({"path", "dir", "name"})
ENVELOPE_FIELDS = frozenset({"key"})
MAX_KEY_BYTES = 1024  # S3's limit for a whole key
# room kept for "-" + timestamp + "-" + index + ".zst" when checking a rendered key
_SUFFIX_ROOM = 64


def final_key(key: str, ts: str, index: int, suffix: str = "") -> str:
    """The key s3() writes: key + -ts (if any) + -index (if > 0) + suffix (.gz)."""
    out = key
    if ts:
        out += f"-{ts}"
    if index > 0:
        out += f"-{index}"
    return out + suffix


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


def static_prefix(template: str) -> str:
    """The literal text before the first placeholder: every key spoolup makes starts with it."""
    out = []
    for literal, field, _spec, _conv in string.Formatter().parse(template):
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


def render_lines(template: str, rel_path: str) -> str:
    directory, name = posixpath.split(rel_path)
    return template.format_map({"path": rel_path, "dir": directory, "name": name})


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
    if size > MAX_KEY_BYTES - _SUFFIX_ROOM:
        return f"is {size} bytes long; S3 keys are limited to {MAX_KEY_BYTES} bytes with their suffixes"
    return None
