"""Configuration values: parsers that turn a raw TOML value into a typed one (sizes, durations,
S3 names and headers), the value sets s3() accepts, and how a value is written back as TOML.

Each parser raises ValueError saying what is accepted; the loader adds the option's name.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable

from spoolup import keys, keytime, ledger

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

MIN_CHUNK_SIZE = 5 * MiB  # S3's minimum part size
MAX_CHUNK_SIZE = 5 * GiB  # S3's maximum part size
MAX_OBJECT_SIZE = 5 * TiB  # S3's maximum object size


# The value sets s3() accepts (syslog-ng modules/python-modules/syslogng/modules/s3/
# s3_destination.py: VALID_STORAGE_CLASSES, VALID_CANNED_ACLS).  s3() warns and falls
# back to a default on an invalid value; spoolup refuses to start (exit 2).
STORAGE_CLASSES = frozenset(
    {
        "STANDARD",
        "REDUCED_REDUNDANCY",
        "STANDARD_IA",
        "ONEZONE_IA",
        "INTELLIGENT_TIERING",
        "GLACIER",
        "DEEP_ARCHIVE",
        "OUTPOSTS",
        "GLACIER_IR",
        "SNOW",
    }
)
CANNED_ACLS = frozenset(
    {
        "private",
        "public-read",
        "public-read-write",
        "aws-exec-read",
        "authenticated-read",
        "bucket-owner-read",
        "bucket-owner-full-control",
        "log-delivery-write",
    }
)
# s3() accepts "" and "aws:kms"; spoolup adds SSE-S3 ("AES256") and dual-layer KMS.
SERVER_SIDE_ENCRYPTIONS = frozenset({"", "AES256", "aws:kms", "aws:kms:dsse"})
# an IAM role ARN (any partition: aws, aws-cn, aws-us-gov, ...)
_ROLE_ARN_RE = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")  # fullmatch
FORMATS = ("lines", "envelope")
COMPRESSIONS = ("none", "gzip", "zstd")
COMPRESSION_SUFFIXES = {"none": "", "gzip": ".gz", "zstd": ".zst"}  # the end of the key
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
CONDITIONAL_WRITES = ("auto", "on", "off")
OBJECT_LOCK_MODES = frozenset({"", "GOVERNANCE", "COMPLIANCE"})  # opts-flow
CONTENT_MD5 = ("auto", "always")
MIN_BANDWIDTH = 64 * 1024  # bytes/s: below it a 16 KiB read of a body would wait past servers' idle timeouts


# --------------------------------------------------------------------------
# value parsers: each takes the raw TOML value and returns the typed value or
# raises ValueError with a message saying what is accepted.

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": KiB,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": MiB,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": GiB,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": TiB,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: Any) -> int:
    """Bytes as an integer, or a string with a unit: "5MiB", "1GiB", "500kB"."""
    if isinstance(value, bool):
        raise ValueError("expected a size: bytes as an integer or a string such as \"5MiB\"")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative; got {value}")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            n = float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
            if n == int(n):
                return int(n)
            raise ValueError(f"{value!r} is not a whole number of bytes")
    raise ValueError(
        f"expected bytes as an integer or a string with a unit "
        f"(B, kB, KiB, MB, MiB, GB, GiB, TB, TiB), such as \"5MiB\"; got {value!r}"
    )


_DURATION_UNITS = {"s": 1 / 60, "sec": 1 / 60, "m": 1, "min": 1, "h": 60, "d": 1440}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_minutes(value: Any) -> float:
    """Minutes as a number (fractional allowed), or a string with a unit: "30s", "10min", "1h"."""
    if isinstance(value, bool):
        raise ValueError("expected minutes as a number, or a string such as \"30s\" or \"2h\"")
    if isinstance(value, (int, float)):
        minutes = float(value)
    elif isinstance(value, str) and (m := _DURATION_RE.match(value)) and (
        m.group(2).lower() in _DURATION_UNITS or m.group(2) == ""
    ):
        minutes = float(m.group(1)) * _DURATION_UNITS.get(m.group(2).lower(), 1)
    else:
        raise ValueError(f"expected minutes as a number, or a string such as \"30s\", \"10min\", \"2h\"; got {value!r}")
    if not math.isfinite(minutes) or minutes <= 0:
        raise ValueError(f"must be more than 0 minutes; got {value!r}")
    return minutes


def parse_optional_minutes(value: Any) -> float | None:
    """parse_minutes, or "" for off (None): max-object-age."""
    if value == "":
        return None
    return parse_minutes(value)


def parse_key_timezone(value: Any) -> str:
    """key-timezone: "UTC", "local" or an IANA name (spoolup/keytime.py)."""
    return keytime.parse_timezone(parse_str(value))


def parse_seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected seconds as a number; got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be more than 0 seconds; got {value!r}")
    return float(value)


def parse_bandwidth(value: Any) -> int:
    """Bytes per second as a size ("10MiB", an optional "/s"), 0 for no cap."""
    if isinstance(value, str) and value.strip().lower().endswith("/s"):
        value = value.strip()[:-2]
    n = parse_size(value)
    if 0 < n < MIN_BANDWIDTH:
        raise ValueError(f"must be 0 (no cap) or at least 64KiB per second; got {value!r}")
    return n


def parse_retain(value: Any) -> float:
    """A retention in minutes (as parse_minutes: "30d", "12h"), or 0 / "" for none."""
    if value in (0, "", "0") and not isinstance(value, bool):
        return 0.0
    return parse_minutes(value)


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("yes", "no", "true", "false", "on", "off"):
        return value.lower() in ("yes", "true", "on")
    raise ValueError(f"expected true or false; got {value!r}")


def parse_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string; got {value!r}")
    return value


def _has_control(text: str) -> bool:
    return any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in text)


def parse_header_text(value: Any) -> str:
    """A string that S3 receives in an HTTP header or the request line (region, credentials, KMS
    key): a control character there makes botocore refuse the request on every attempt.  The
    value is never echoed: it may be a secret."""
    text = parse_str(value)
    if _has_control(text):
        raise ValueError("must not contain control characters (a newline, a tab...): S3 receives it in an "
                         "HTTP header")
    return text


def parse_path(value: Any) -> Path:
    text = parse_str(value)
    if not text.strip():
        raise ValueError("expected a directory path; got an empty string")
    return Path(text).expanduser().absolute()


def int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer from {lo} to {hi}; got {value!r}")
        if not lo <= value <= hi:
            raise ValueError(f"expected an integer from {lo} to {hi}; got {value}")
        return value

    return parse


def size_range(lo: int, hi: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        n = parse_size(value)
        if not lo <= n <= hi:
            raise ValueError(
                f"must be from {format_size(lo)} to {format_size(hi)} ({lo} to {hi} bytes); got {value!r}"
            )
        return n

    return parse


def one_of(choices: tuple[str, ...] | frozenset[str], normalize: Callable[[str], str] = lambda s: s):
    def parse(value: Any) -> str:
        text = normalize(parse_str(value))
        if text not in choices:
            shown = ", ".join(repr(c) for c in sorted(choices))
            raise ValueError(f"expected one of {shown}; got {value!r}")
        return text

    return parse


def parse_compression(value: Any) -> str:
    """s3()'s compression(yes/no) plus named codecs: true = gzip, false = none."""
    if isinstance(value, bool):
        return "gzip" if value else "none"
    if isinstance(value, str):
        text = value.lower()
        if text in ("yes", "true", "on"):
            return "gzip"
        if text in ("no", "false", "off", ""):
            return "none"
        if text in COMPRESSIONS:
            return text
    raise ValueError(f"expected true, false, \"gzip\", \"zstd\" or \"none\"; got {value!r}")


def parse_suffix(value: Any) -> str:
    text = parse_str(value)
    problem = keys.suffix_problem(text)
    if problem:
        raise ValueError(f"{value!r} {problem}")
    return text


# Object options.  S3 limits user metadata (x-amz-meta-*) to 2 KB per object, names and
# values counted together; spoolup's own (x-amz-meta-spoolup-object) keeps its share.
METADATA_BYTES = 2048 - 128
RESERVED_METADATA_PREFIX = "spoolup-"
# Every pattern below is used with fullmatch(): "$" also matches before a trailing newline, which
# let "team\n" through; the request then failed in botocore ("Invalid header name") on every retry.
_METADATA_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?")
MAX_TAGS = 10  # S3's limit of tags per object
_TAG_RE = re.compile(r"[\w .:/=+\-@]*")  # S3: letters, digits, spaces and + - = . _ : / @
# (blanks around ";" are spaces and tabs only: a header value cannot hold a line break)
_CONTENT_TYPE_RE = re.compile(r"[A-Za-z0-9][\w!#$&^.+-]*/[\w!#$&^.+-]+([ \t]*;[ \t]*[\w!#$&^.+-]+=(\"[ !#-~\t]*\"|[\w!#$&^.+-]+))*")


def _table(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a TOML table of {what}, such as {{team = \"web\", env = \"prod\"}}; got {value!r}")
    for k, v in value.items():
        if not isinstance(v, str):
            raise ValueError(f"the value of {k!r} must be a string; got {v!r}")
    return dict(value)


def parse_metadata(value: Any) -> dict[str, str]:
    """User metadata (x-amz-meta-<name>: <value>) for every object."""
    table = _table(value, "names and values")
    size = 0
    for name, text in table.items():
        if not _METADATA_NAME_RE.fullmatch(name):
            raise ValueError(f"metadata name {name!r}: use lowercase letters, digits, '-', '_' and '.' "
                             "(S3 lowercases names; x-amz-meta-<name> must be an HTTP header)")
        if name.startswith(RESERVED_METADATA_PREFIX):
            raise ValueError(f"metadata name {name!r}: names starting with {RESERVED_METADATA_PREFIX!r} are "
                             "spoolup's own (x-amz-meta-spoolup-object)")
        if not all(0x20 <= ord(ch) < 0x7F for ch in text):
            raise ValueError(f"the value of {name!r} must be printable ASCII (S3 sends metadata as HTTP headers)")
        size += len(name) + len(text)
    if size > METADATA_BYTES:
        raise ValueError(f"names and values take {size} bytes; S3 allows 2 KB of user metadata per object, "
                         f"{METADATA_BYTES} of them for this option")
    return table


def parse_tags(value: Any) -> dict[str, str]:
    """Object tags (S3 object tagging) for every object."""
    table = _table(value, "tag keys and values")
    if len(table) > MAX_TAGS:
        raise ValueError(f"{len(table)} tags; S3 allows at most {MAX_TAGS} per object")
    for key, text in table.items():
        if not 1 <= len(key) <= 128 or not _TAG_RE.fullmatch(key):
            raise ValueError(f"tag key {key!r}: 1 to 128 letters, digits, spaces and + - = . _ : / @")
        if key.lower().startswith("aws:"):
            raise ValueError(f"tag key {key!r}: the prefix 'aws:' is reserved by AWS")
        if len(text) > 256 or not _TAG_RE.fullmatch(text):
            raise ValueError(f"the value of tag {key!r}: up to 256 letters, digits, spaces and + - = . _ : / @")
    return table


def parse_content_type(value: Any) -> str:
    text = parse_str(value).strip(" ")
    if text and (_has_control(text) or len(text) > 255 or not _CONTENT_TYPE_RE.fullmatch(text)):
        raise ValueError(f"expected a media type such as \"text/plain; charset=utf-8\" or "
                         f"\"application/gzip\", or \"\" for the default of the compression; got {value!r}")
    return text


def parse_url(value: Any) -> str:
    text = parse_str(value).strip()
    if text and (not re.match(r"https?://[^/\s]+", text) or _has_control(text)):
        raise ValueError(f"expected an http:// or https:// endpoint URL, or \"\" for AWS; got {value!r}")
    return text.rstrip("/")


_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]")  # fullmatch


def parse_bucket(value: Any) -> str:
    text = parse_str(value)
    if not _BUCKET_RE.fullmatch(text) or ".." in text:
        raise ValueError(
            "expected an S3 bucket name: 3 to 63 characters of lowercase letters, digits, dots and hyphens, "
            f"starting and ending with a letter or digit; got {value!r}"
        )
    return text


def parse_role(value: Any) -> str:
    text = parse_str(value).strip()
    if text and not _ROLE_ARN_RE.fullmatch(text):
        raise ValueError(
            f"expected an IAM role ARN such as \"arn:aws:iam::123456789012:role/log-writer\", or \"\" for none; "
            f"got {value!r}"
        )
    return text


def parse_listen(value: Any) -> str:
    text = parse_str(value).strip()
    if text == "":
        return ""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected \"host:port\" such as \"127.0.0.1:9464\", or \"\" for off; got {value!r}")
    return text


def toml_value(value: Any) -> str:
    """A value as it would be written in the TOML config."""
    if value is None:  # an option that is off (max-object-age): written as ""
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):  # an inline table
        return "{" + ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    # a TOML basic string: the escapes JSON writes (newline, tab, quote, backslash, \uXXXX) are valid TOML
    return json.dumps(str(value), ensure_ascii=False)


def _toml_key(key: str) -> str:
    return key if re.match(r"^[A-Za-z0-9_-]+$", key) else json.dumps(key, ensure_ascii=False)


def format_size(n: int) -> str:
    for unit, factor in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"


# --------------------------------------------------------------------------
# connection settings (issue 21 item 3): TLS, proxy, addressing style, profile, STS

ADDRESSING_STYLES = ("", "auto", "path", "virtual")
_EXTERNAL_ID_RE = re.compile(r"[\w+=,.@:/-]{2,1224}")  # STS AssumeRole's ExternalId (fullmatch)
_PROFILE_RE = re.compile(r"[\w+=,.@:/-]{1,128}")  # fullmatch


def parse_ca_file(value: Any) -> str:
    """A PEM bundle of CA certificates: it must exist and hold at least one certificate that
    Python's ssl module loads (what botocore's verify= will load on every connection)."""
    import ssl

    text = parse_str(value).strip()
    if not text:
        return ""
    path = Path(text).expanduser().absolute()
    if not path.is_file():
        raise ValueError(f"{str(path)!r} does not exist or is not a file (a PEM bundle of CA certificates)")
    try:
        ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError, ValueError) as e:
        raise ValueError(f"{str(path)!r} is not a PEM bundle of CA certificates: {e}") from None
    return str(path)


def split_proxy(url: str) -> tuple[str, str]:
    """(the proxy URL without user:password@, the user:password part or "")."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    return urllib.parse.urlunsplit(parts._replace(netloc=hostport)), userinfo if at else ""


def mask_proxy(url: str) -> str:
    """The proxy URL as check-config, status and logs may show it: credentials masked."""
    bare, userinfo = split_proxy(url)
    return bare.replace("://", "://********@", 1) if userinfo else bare


def parse_proxy(value: Any) -> str:
    """An http:// or https:// proxy URL, credentials allowed (http://user:password@host:3128).
    The value is never echoed: it may hold a password."""
    import urllib.parse

    text = parse_str(value).strip()
    if not text:
        return ""
    what = ("expected a proxy URL such as \"http://proxy.example:3128\" (with credentials: "
            "\"http://user:password@proxy.example:3128\"), or \"\" for none (HTTPS_PROXY/HTTP_PROXY then apply)")
    if _has_control(text) or any(ch.isspace() for ch in text):
        raise ValueError(f"{what}; the value holds spaces or control characters (not shown: it may hold a password)")
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"{what}; the value does not parse as a URL (not shown: it may hold a password)") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{what}; it must start with http:// or https://")
    if not parts.hostname:
        raise ValueError(f"{what}; the URL names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{what}; a proxy URL has no path, query or fragment")
    del port
    return text.rstrip("/")


def parse_external_id(value: Any) -> str:
    text = parse_str(value).strip()
    if text and not _EXTERNAL_ID_RE.fullmatch(text):
        raise ValueError("expected STS's ExternalId: 2 to 1224 letters, digits and + = , . @ : / - _, or \"\" for none")
    return text


def parse_profile(value: Any) -> str:
    text = parse_str(value).strip()
    if text and not _PROFILE_RE.fullmatch(text):
        raise ValueError(f"expected the name of a profile of the shared AWS config files (letters, digits and "
                         f"+ = , . @ : / - _), or \"\" for boto3's default; got {value!r}")
    return text


def parse_agent_id(value: Any) -> str:
    """agent-id: empty (derived from the host name and spool-dir) or a name for the ledger's keys."""
    text = parse_str(value)
    if text:
        ledger.check_agent_id(text)
    return text


def parse_checksum_algorithm(value: Any) -> str:
    """checksum-algorithm (issue 22 item 6): one of spoolup.checksums.CHOICES; crc32c and crc64nvme
    only where the awscrt package is installed (botocore computes neither without it)."""
    from spoolup import checksums

    text = one_of(checksums.CHOICES, str.lower)(value)
    why = checksums.unavailable_reason(text)
    if why:
        raise ValueError(why)
    return text
