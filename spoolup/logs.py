"""Logging: structlog, console lines on a TTY and JSON lines otherwise.

Redaction is one processor at the end of the chain, so nothing rendered can
carry a secret: configured secret values are masked wherever they appear, and
fields whose names look like credentials are masked whatever they hold.
stdlib logging (botocore, urllib3) goes through the same chain.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from typing import Any, Iterable

import structlog

MASK = "********"
_SENSITIVE_FIELD = re.compile(r"secret|token|authorization|password|credential|signature", re.I)
# an Authorization header value or an X-Amz-Signature query parameter, wherever it shows up in text
_SENSITIVE_TEXT = re.compile(
    r"(AWS4-HMAC-SHA256\s+Credential=)[^\s,]+|(Signature=)[0-9a-fA-F]+|(X-Amz-Signature=)[0-9a-fA-F]+"
    r"|(X-Amz-Security-Token=)[^&\s]+",
)

_secrets: tuple[str, ...] = ()
_process = "spoolup"
_stream_lock = threading.Lock()


class Redactor:
    """structlog processor: masks secrets in every value of the event dict."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets = tuple(s for s in secrets if s)

    def __call__(self, _logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        return {k: (MASK if _SENSITIVE_FIELD.search(k) and v else self.clean(v)) for k, v in event.items()}

    def clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return redact_text(value, self.secrets)
        if isinstance(value, dict):
            return {k: (MASK if isinstance(k, str) and _SENSITIVE_FIELD.search(k) and v else self.clean(v))
                    for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.clean(v) for v in value)
        if isinstance(value, BaseException):
            return redact_text(f"{type(value).__name__}: {value}", self.secrets)
        return value


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    for s in secrets or _secrets:
        if s and s in text:
            text = text.replace(s, MASK)
    return _SENSITIVE_TEXT.sub(lambda m: (m.group(1) or m.group(2) or m.group(3) or m.group(4)) + MASK, text)


class _ReopenableStream:
    """stderr, or a log file that SIGHUP reopens (for logrotate)."""

    def __init__(self, path: str | None):
        self.path = path
        self.stream = sys.stderr if not path else open(path, "a", buffering=1, encoding="utf-8")

    def write(self, text: str) -> None:
        with _stream_lock:
            self.stream.write(text)
            self.stream.flush()

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def reopen(self) -> None:
        if self.path:
            with _stream_lock:
                old = self.stream
                self.stream = open(self.path, "a", buffering=1, encoding="utf-8")
                old.close()


_out = _ReopenableStream(None)


def setup(*, level: str = "info", fmt: str = "auto", secrets: Iterable[str] = (), process: str = "spoolup",
          log_file: str | None = None) -> None:
    global _secrets, _process, _out
    _secrets = tuple(s for s in secrets if s)
    _process = process
    if log_file != _out.path:
        _out = _ReopenableStream(log_file)
    console = fmt == "console" or (fmt == "auto" and _out.isatty())
    renderer = (
        structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
        if console
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_process,
        structlog.processors.format_exc_info,
        Redactor(_secrets),
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=_out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(_out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(processor=renderer, foreign_pre_chain=shared))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "watchdog"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def reopen() -> None:
    """SIGHUP: reopen the log file (after logrotate moved it)."""
    _out.reopen()


def _add_process(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    event.setdefault("process", _process)
    event.setdefault("pid", os.getpid())
    return event


def get(name: str = "spoolup", **bound: Any):
    return structlog.get_logger(name).bind(**bound) if bound else structlog.get_logger(name)
