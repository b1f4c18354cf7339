"""Configuration: one TOML file of flat keys named like syslog-ng's s3() options.

Every option is declared once in OPTIONS (name, parser, default, help); the
loader, `check-config`, the README table and contrib/spoolup.toml.example all
come from that list.  Any invalid or unknown option raises ConfigError naming
the option and what is accepted; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from spoolup import keys

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

MIN_CHUNK_SIZE = 5 * MiB  # S3's minimum part size
MAX_CHUNK_SIZE = 5 * GiB  # S3's maximum part size
MAX_OBJECT_SIZE = 5 * TiB  # S3's maximum object size

SECRET_OPTIONS = frozenset({"secret-key", "session-token"})
SIZE_OPTIONS = frozenset({"chunk-size", "max-object-size", "max-record-size"})  # byte sizes ("8MiB")

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


def _resolved(path: Path) -> Path:
    """The path with every symlink of its existing part followed (a loop: as written)."""
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError):
        return path


class ConfigError(Exception):
    """A configuration problem; `option` names the offending option."""

    def __init__(self, option: str | None, message: str):
        self.option = option
        self.message = message
        super().__init__(f"option '{option}': {message}" if option else message)


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


def parse_seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected seconds as a number; got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be more than 0 seconds; got {value!r}")
    return float(value)


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
# the option table


@dataclass(frozen=True)
class Option:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    group: str = "spoolup"  # "s3()" for options that mirror the s3() destination
    required: bool = False

    @property
    def attr(self) -> str:
        return self.name.replace("-", "_")


REQUIRED = object()

OPTIONS: tuple[Option, ...] = (
    # --- the s3() destination's options ---
    Option("url", parse_url, "", "S3 endpoint URL (MinIO, Ceph, moto...); empty means AWS.", "s3()"),
    Option("bucket", parse_bucket, REQUIRED, "Bucket to write to; created if it does not exist.", "s3()", True),
    Option("access-key", parse_header_text, "", "Access key id; empty means boto3's default credential chain.", "s3()"),
    Option("secret-key", parse_header_text, "", "Secret access key (never logged or shown).", "s3()"),
    Option("region", parse_header_text, "", "Region name; empty means boto3's default.", "s3()"),
    Option(
        "role",
        parse_role,
        "",
        "IAM role ARN to assume through STS (at url when set, else AWS's), refreshed before it expires.",
        "s3()",
    ),
    Option(
        "object-key",
        parse_str,
        None,
        "Object key template. lines: {path}, {dir}, {name} of the spool file; envelope: {key}. "
        "Default \"{path}\" (lines) or \"{key}\" (envelope).",
        "s3()",
    ),
    Option(
        "object-key-timestamp",
        parse_str,
        "",
        "Timestamp appended to the key (\"-\" + value). lines: strftime codes evaluated at ingest "
        "(e.g. \"%Y%m%d%H\" for hourly objects); envelope: taken from the record's ts field. Empty: none.",
        "s3()",
    ),
    Option(
        "object-key-suffix",
        parse_suffix,
        "",
        "Appended to the key after the index, before .gz/.zst (s3() of syslog-ng 4.8.2+, whose default is "
        "\".log\"). lines only; envelope: the spoolup() block's object-key-suffix(). Empty: none.",
        "s3()",
    ),
    Option(
        "template",
        parse_str,
        "",
        "Accepted for s3() compatibility only: the record template is applied by syslog-ng (the "
        "template() of the spoolup() block in contrib/syslog-ng/spoolup.conf); spoolup copies records verbatim.",
        "s3()",
    ),
    Option("compression", parse_compression, "none", "false/true (gzip, as s3()), \"gzip\" or \"zstd\".", "s3()"),
    Option("compresslevel", int_range(0, 22), 9, "Compression level: 0-9 for gzip, 1-22 for zstd.", "s3()"),
    Option(
        "chunk-size",
        size_range(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE),
        5 * MiB,
        "Part size of multipart uploads (measured after compression); at least 5MiB.",
        "s3()",
    ),
    Option(
        "max-object-size",
        size_range(1, MAX_OBJECT_SIZE),
        5120 * GiB,
        "An object is completed once it reaches this size (with compression: its stored, compressed size, as s3() "
        "counts it); the next one gets the next index (-1, -2, ...).",
        "s3()",
    ),
    Option("upload-threads", int_range(1, 256), 8, "Parallel part uploads in the upload process.", "s3()"),
    Option(
        "max-pending-uploads",
        int_range(1, 100_000),
        32,
        "Cap on sealed chunks waiting for upload; at the cap ingest pauses and the backlog stays in the spool.",
        "s3()",
    ),
    Option(
        "flush-grace-period",
        parse_minutes,
        60.0,
        "Minutes without a new record after which an object is completed (fractional allowed, or \"30s\").",
        "s3()",
    ),
    Option(
        "storage-class",
        one_of(STORAGE_CLASSES, lambda s: s.upper().replace("-", "_")),
        "STANDARD",
        "S3 storage class, as s3(): STANDARD, REDUCED_REDUNDANCY, STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING, "
        "GLACIER, DEEP_ARCHIVE, OUTPOSTS, GLACIER_IR, SNOW.",
        "s3()",
    ),
    Option(
        "canned-acl",
        one_of(CANNED_ACLS | {""}, lambda s: s.lower().replace("_", "-")),
        "",
        "Canned ACL for new objects, as s3(): private, public-read, public-read-write, aws-exec-read, "
        "authenticated-read, bucket-owner-read, bucket-owner-full-control, log-delivery-write; empty for none.",
        "s3()",
    ),
    Option(
        "server-side-encryption",
        one_of(SERVER_SIDE_ENCRYPTIONS),
        "",
        "\"\" (none), \"aws:kms\" (as s3()), or spoolup's additions \"AES256\" (SSE-S3) and \"aws:kms:dsse\".",
        "s3()",
    ),
    Option(
        "kms-key",
        parse_header_text,
        "",
        "KMS key id, alias/... or ARN for server-side-encryption = \"aws:kms\"; empty: the bucket's AWS managed key.",
        "s3()",
    ),
    Option(
        "content-type",
        parse_content_type,
        "",
        "Content-Type of the objects (s3()). Empty: by compression, \"text/plain; charset=utf-8\", "
        "\"application/gzip\" or \"application/zstd\". Content-Encoding is never set (see README).",
        "s3()",
    ),
    # --- spoolup's own ---
    Option(
        "metadata",
        parse_metadata,
        {},
        "User metadata for every object, a table: {team = \"web\"} gives x-amz-meta-team: web. Names in "
        "lowercase, not starting with \"spoolup-\" (spoolup's own); printable ASCII values; at most 1920 bytes.",
    ),
    Option(
        "tags",
        parse_tags,
        {},
        "Object tags for every object, a table: {retention = \"90d\"}. At most 10; keys up to 128 and values "
        "up to 256 letters, digits, spaces and + - = . _ : / @; no \"aws:\" keys.",
    ),
    Option("spool-dir", parse_path, REQUIRED, "Directory that syslog-ng's file() destination writes into.", required=True),
    Option("state-dir", parse_path, REQUIRED, "Journal, chunk files and dead letters (created 0700).", required=True),
    Option("format", one_of(FORMATS), "lines", "Spool format: \"lines\" or \"envelope\" (JSON from format-json)."),
    Option("fsync", parse_bool, True, "Make chunk data and the journal durable before a spool offset is consumed."),
    Option(
        "spool-reap",
        parse_minutes,
        10.0,
        "A fully shipped spool file is deleted after this many idle minutes; must exceed syslog-ng's time-reap().",
    ),
    Option("session-token", parse_header_text, "", "Session token for temporary credentials (never logged)."),
    Option("poll-interval", parse_seconds, 1.0, "Seconds between spool rescans (watchdog events come sooner)."),
    Option("s3-timeout", parse_seconds, 60.0, "Seconds before an S3 connection or read times out (then retried)."),
    Option("retry-max-delay", parse_seconds, 30.0, "Longest backoff in seconds between retries of a failed S3 call."),
    Option(
        "quarantine-retry",
        parse_seconds,
        300.0,
        "Longest delay in seconds between retries of a quarantined spool entry (unreadable, not a regular "
        "file, cannot be deleted); the first retry is after 1 s, then the delay doubles.",
    ),
    Option(
        "max-record-size",
        size_range(1 << 20, 1 << 30),
        16 * MiB,
        "Longest record kept in memory (1MiB to 1GiB). A longer one (bytes up to its newline) is not shipped: "
        "it goes, verbatim and read in 1MiB blocks, to the spool file's dead-letter file (counted in status), "
        "so memory stays bounded by this for any record size.",
    ),
    Option(
        "max-open-files",
        int_range(16, 1_000_000),
        1024,
        "Descriptors the main process keeps open for spool, chunk and dead-letter files together (least "
        "recently used closed first), whatever the number of files and keys; never within 64 of RLIMIT_NOFILE "
        "(at most half of a small limit). The unit's LimitNOFILE is 65536.",
    ),
    Option("shutdown-timeout", parse_seconds, 30.0, "Seconds in-flight uploads get to finish on SIGTERM."),
    Option(
        "conditional-writes",
        one_of(CONDITIONAL_WRITES),
        "auto",
        "Send If-None-Match: * on completion: \"auto\" (use when the server supports it), \"on\", \"off\".",
    ),
    Option("log-level", one_of(LOG_LEVELS, str.lower), "info", "\"debug\", \"info\", \"warning\" or \"error\"."),
    Option("log-format", one_of(LOG_FORMATS), "auto", "\"auto\" (console on a TTY, else JSON lines), \"json\", \"console\"."),
    Option("log-file", parse_str, "", "Write logs to this file instead of stderr; SIGHUP reopens it (logrotate)."),
    Option("metrics-listen", parse_listen, "", "Prometheus endpoint \"host:port\" (e.g. \"127.0.0.1:9464\"); empty: off."),
)

OPTIONS_BY_NAME = {o.name: o for o in OPTIONS}
TABLE_OPTIONS = frozenset({"metadata", "tags"})  # the only options whose value is a TOML table


@dataclass(frozen=True)
class Config:
    url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str
    role: str
    object_key: str
    object_key_timestamp: str
    object_key_suffix: str
    template: str
    compression: str
    compresslevel: int
    chunk_size: int
    max_object_size: int
    upload_threads: int
    max_pending_uploads: int
    flush_grace_period: float
    storage_class: str
    canned_acl: str
    server_side_encryption: str
    kms_key: str
    content_type: str
    metadata: dict
    tags: dict
    spool_dir: Path
    state_dir: Path
    format: str
    fsync: bool
    spool_reap: float
    session_token: str
    poll_interval: float
    s3_timeout: float
    retry_max_delay: float
    quarantine_retry: float
    max_record_size: int
    max_open_files: int
    shutdown_timeout: float
    conditional_writes: str
    log_level: str
    log_format: str
    log_file: str
    metrics_listen: str
    source: Path | None = None
    written: tuple[tuple[str, Any], ...] = ()  # (option, value) as written in the file, for check-config

    # ---- derived values ----
    @property
    def key_suffix(self) -> str:
        return COMPRESSION_SUFFIXES[self.compression]

    @functools.cached_property
    def key_room(self) -> int:
        """lines: the bytes a final key can add to the key rendered from a spool file's path
        (timestamp, index, object-key-suffix, .gz/.zst); envelope: index and .gz/.zst."""
        if self.format == "envelope":
            return keys.key_room(0, self.key_suffix)
        return keys.key_room(keys.timestamp_bytes(self.object_key_timestamp), self.object_key_suffix + self.key_suffix)

    @property
    def grace_seconds(self) -> float:
        return self.flush_grace_period * 60.0

    @property
    def spool_reap_seconds(self) -> float:
        return self.spool_reap * 60.0

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.sqlite"

    @property
    def chunk_dir(self) -> Path:
        return self.state_dir / "chunks"

    @property
    def deadletter_dir(self) -> Path:
        return self.state_dir / "dead-letter"

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.secret_key, self.session_token) if s)

    def value(self, name: str) -> Any:
        return getattr(self, OPTIONS_BY_NAME[name].attr)

    def masked(self) -> dict[str, Any]:
        """The effective configuration with secrets masked, for check-config and status."""
        out: dict[str, Any] = {}
        for opt in OPTIONS:
            v = self.value(opt.name)
            if opt.name in SECRET_OPTIONS and v:
                v = "********"
            elif isinstance(v, Path):
                v = str(v)
            out[opt.name] = v
        return out

    def as_written(self) -> dict[str, str]:
        """Each option as TOML text the way the file wrote it ("5GiB", "20s"), defaults as the
        reference shows them; secrets masked.  For check-config."""
        written = dict(self.written)
        out: dict[str, str] = {}
        for opt in OPTIONS:
            if opt.name in SECRET_OPTIONS and self.value(opt.name):
                out[opt.name] = toml_value("********")
            elif opt.name in written:
                out[opt.name] = toml_value(written[opt.name])
            elif opt.name in SIZE_OPTIONS and opt.default is not REQUIRED:
                out[opt.name] = toml_value(format_size(self.value(opt.name)))
            else:
                v = self.value(opt.name)
                out[opt.name] = toml_value(str(v) if isinstance(v, Path) else v)
        return out

    def __repr__(self) -> str:  # never show secrets, whatever prints a Config
        return f"Config({self.masked()!r})"

    __str__ = __repr__


def load(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(None, f"config file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(None, f"cannot read config file {p}: {e}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(None, f"config file {p} is not valid TOML: {e}") from None
    return from_mapping(raw, source=p.absolute())


def from_mapping(raw: dict[str, Any], source: Path | None = None) -> Config:
    values: dict[str, Any] = {}
    seen_as: dict[str, str] = {}
    for given, value in raw.items():
        name = given.replace("_", "-")  # syslog-ng treats - and _ alike; so do we
        if isinstance(value, dict) and name not in TABLE_OPTIONS:
            raise ConfigError(given, "spoolup's config is flat: put options at the top level, not in a [table]")
        if name not in OPTIONS_BY_NAME:
            raise ConfigError(given, unknown_option(name))
        if name in seen_as:
            raise ConfigError(given, f"given twice (also as '{seen_as[name]}')")
        seen_as[name] = given
        try:
            values[name] = OPTIONS_BY_NAME[name].parse(value)
        except ValueError as e:
            raise ConfigError(name, str(e)) from None

    for opt in OPTIONS:
        if opt.name not in values:
            if opt.default is REQUIRED:
                raise ConfigError(opt.name, "is required")
            values[opt.name] = opt.default

    fmt = values["format"]
    if values["object-key"] is None:
        values["object-key"] = "{path}" if fmt == "lines" else "{key}"
    _check_cross_option(values)
    written = tuple((given.replace("_", "-"), value) for given, value in raw.items())
    return Config(**{OPTIONS_BY_NAME[n].attr: v for n, v in values.items()}, source=source, written=written)


def unknown_option(name: str) -> str:
    """The message for an option that does not exist: the likely one it was meant to be."""
    import difflib

    ratio = {o: difflib.SequenceMatcher(None, name, o).ratio() for o in OPTIONS_BY_NAME}
    best = max(ratio.values())
    close = sorted((o for o, r in ratio.items() if r >= 0.6 and r >= best - 0.15), key=lambda o: -ratio[o])[:3]
    if close:
        return f"unknown option; did you mean {' or '.join(repr(c) for c in close)}?"
    return ("unknown option; every option is in the README's configuration reference and in "
            "contrib/spoolup.toml.example")


def _check_cross_option(v: dict[str, Any]) -> None:
    try:
        keys.check_template(v["object-key"], v["format"])
    except ValueError as e:
        raise ConfigError("object-key", str(e)) from None
    if v["format"] == "lines" and v["object-key-timestamp"]:
        try:
            keys.check_strftime(v["object-key-timestamp"])
        except ValueError as e:
            raise ConfigError("object-key-timestamp", str(e)) from None
    if v["format"] == "envelope" and v["object-key-timestamp"]:
        raise ConfigError("object-key-timestamp", "with format = \"envelope\" each record carries its rendered "
                          "timestamp (the spoolup() block's object-key-timestamp() in syslog-ng): leave it out here")
    if v["format"] == "envelope" and v["object-key-suffix"]:
        raise ConfigError("object-key-suffix", "with format = \"envelope\" each record carries its suffix (the "
                          "spoolup() block's object-key-suffix() in syslog-ng): leave it out here")
    _check_key_length(v)
    if bool(v["access-key"]) != bool(v["secret-key"]):
        missing = "secret-key" if v["access-key"] else "access-key"
        raise ConfigError(missing, "access-key and secret-key go together: give both, or neither to use boto3's credential chain")
    if v["kms-key"] and not v["server-side-encryption"].startswith("aws:kms"):
        raise ConfigError("kms-key", "needs server-side-encryption = \"aws:kms\" (or \"aws:kms:dsse\")")
    if v["compression"] != "zstd" and not 0 <= v["compresslevel"] <= 9:
        raise ConfigError("compresslevel", f"expected 0 to 9 (gzip; 1 to 22 with zstd); got {v['compresslevel']}")
    if v["compression"] == "zstd" and not 1 <= v["compresslevel"] <= 22:
        raise ConfigError("compresslevel", f"expected 1 to 22 for zstd; got {v['compresslevel']}")
    spool, state = v["spool-dir"], v["state-dir"]
    # compared as resolved (symlinks followed, as far as the paths exist): a state-dir that
    # reaches into spool-dir through a link would have spoolup ship its own journal
    real_spool, real_state = _resolved(spool), _resolved(state)
    if real_spool == real_state or real_state.is_relative_to(real_spool):
        via = "" if state.is_relative_to(spool) else f" (it resolves to {real_state}, inside {real_spool})"
        raise ConfigError("state-dir", f"must not be inside spool-dir ({spool}){via}: spoolup would ship its own "
                                       "journal")
    if real_spool.is_relative_to(real_state):
        via = "" if spool.is_relative_to(state) else f" (it resolves to {real_spool}, inside {real_state})"
        raise ConfigError("spool-dir", f"must not be inside state-dir ({state}){via}")
    if spool.exists() and not spool.is_dir():
        raise ConfigError("spool-dir", f"{spool} exists and is not a directory")
    if state.exists() and not state.is_dir():
        raise ConfigError("state-dir", f"{state} exists and is not a directory")


def _check_key_length(v: dict[str, Any]) -> None:
    """Refuse a configuration where no file (lines) or no record (envelope) could get a key S3
    accepts: the shortest key the template renders, with the longest timestamp, index and
    suffixes its objects can get, is over S3's 1024 bytes.  Names the option that tips it over."""
    compressed = COMPRESSION_SUFFIXES[v["compression"]]
    shortest = len(keys.shortest_render(v["object-key"]).encode("utf-8", "surrogatepass"))
    ts_bytes = keys.timestamp_bytes(v["object-key-timestamp"]) if v["format"] == "lines" else 0
    steps = (("object-key", keys.key_room(0, compressed)),
             ("object-key-timestamp", keys.key_room(ts_bytes, compressed)),
             ("object-key-suffix", keys.key_room(ts_bytes, v["object-key-suffix"] + compressed)))
    for option, room in steps:
        if shortest + room > keys.MAX_KEY_BYTES:
            raise ConfigError(option, f"no object key could fit: the shortest key object-key renders takes {shortest} "
                              f"bytes, and timestamp, index and suffixes add up to {room} more; S3 allows "
                              f"{keys.MAX_KEY_BYTES} bytes")


def warnings(cfg: Config) -> list[str]:
    """What check-config points out about a valid configuration."""
    out = []
    if cfg.format == "lines" and cfg.object_key_timestamp:
        problem = keys.timestamp_sort_problem(cfg.object_key_timestamp)
        if problem:
            out.append(f"object-key-timestamp: {problem}")
    return out


def replace(cfg: Config, **changes: Any) -> Config:
    written = tuple((n, v) for n, v in cfg.written if OPTIONS_BY_NAME[n].attr not in changes)
    return dataclasses.replace(cfg, **{"written": written, **changes})


# --------------------------------------------------------------------------
# documentation generated from the option table (tests keep README.md and
# contrib/spoolup.toml.example equal to these)


def _shown_default(opt: Option) -> str:
    if opt.default is REQUIRED:
        return "*required*"
    if opt.name == "object-key":
        return '`"{path}"` / `"{key}"`'
    if opt.name in SIZE_OPTIONS:
        return f'`"{format_size(opt.default)}"`'
    return f"`{toml_value(opt.default)}`"


def reference_table() -> str:
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for opt in OPTIONS:
        origin = " (s3())" if opt.group == "s3()" else ""
        rows.append(f"| `{opt.name}`{origin} | {_shown_default(opt)} | {opt.help.replace('|', '/')} |")
    return "\n".join(rows)


def example_toml() -> str:
    out = [
        "# spoolup configuration: every option with its default.",
        "# Flat keys named as syslog-ng's s3() options; sizes take bytes or units (\"5MiB\");",
        "# durations are minutes (fractional allowed) or strings such as \"30s\", \"2h\".",
        "# Generated from spoolup/config.py (tests/test_docs.py keeps it in sync).",
        "",
    ]
    for opt in OPTIONS:
        out.append(f"# {opt.help}")
        if opt.default is REQUIRED:
            example = {"bucket": '"my-logs"', "spool-dir": '"/var/spool/spoolup"',
                       "state-dir": '"/var/lib/spoolup"'}[opt.name]
            out.append(f"{opt.name} = {example}")
        elif opt.name == "object-key":
            out.append('#object-key = "{path}"')
        elif opt.name in SIZE_OPTIONS:
            out.append(f'#{opt.name} = "{format_size(opt.default)}"')
        else:
            out.append(f"#{opt.name} = {toml_value(opt.default)}")
        out.append("")
    return "\n".join(out)
