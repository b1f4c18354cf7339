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
# credentials wherever they show up in text: an Authorization header (SigV4 or SigV2, as a header
# or in a printed headers dict), a presigned URL's X-Amz-Signature/X-Amz-Credential/X-Amz-Security-Token,
# an X-Amz-Security-Token header.  Group 1 is kept, what follows it is masked.
_SENSITIVE_TEXT = re.compile(
    r"""(Authorization['"]?\s*[:=]\s*b?['"]?)[^'"\r\n]+"""
    r"|(AWS4-HMAC-SHA256\s+Credential=)[^\s,]+"
    r"|(Signature\s*[=:]\s*)[0-9a-fA-F]+"  # also botocore's debug line "Signature:\n<hex>"
    r"|(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s'\"]+"
    r"""|(X-Amz-Security-Token['"]?\s*:\s*b?['"]?)[^'"\s,}]+""",
    re.I,
)

_secrets: tuple[str, ...] = ()
_process = "spoolup"
# Reentrant: a signal handler that logs can interrupt the main thread while it holds the lock.
_stream_lock = threading.RLock()


class Redactor:
    """structlog processor: masks secrets in every value of the event dict."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets = tuple(s for s in secrets if s)

    def __call__(self, _logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        # keys starting with "_" are structlog's own bookkeeping (the LogRecord), removed before rendering
        return {k: v if k.startswith("_") else (MASK if _SENSITIVE_FIELD.search(k) and v else self.clean(v))
                for k, v in event.items()}

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
        if value is None or isinstance(value, (bool, int, float)):
            return value
        # anything else is rendered with str()/repr() later: redact that text now
        return redact_text(str(value), self.secrets)


# A secret shorter than this is masked only where it stands alone (not inside a longer run of the
# characters keys and secrets are made of): a one-letter test secret masked everywhere made every
# log line unreadable (secret "b": "********ucket") and told a reader which letter it was.  Real secrets
# (AWS: 40 characters, MinIO: at least 8) are masked wherever they appear, inside words too.
SHORT_SECRET = 8
_TOKEN_CHARS = "A-Za-z0-9+/"


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    for s in secrets or _secrets:
        if not s or s not in text:
            continue
        if len(s) >= SHORT_SECRET:
            text = text.replace(s, MASK)
        else:
            text = re.sub(f"(?<![{_TOKEN_CHARS}]){re.escape(s)}(?![{_TOKEN_CHARS}])", MASK, text)
    return _SENSITIVE_TEXT.sub(lambda m: next(g for g in m.groups() if g is not None) + MASK, text)


class _ReopenableStream:
    """stderr, or a log file that SIGHUP reopens (for logrotate).

    A signal handler only *requests* the reopen (module-level `reopen()`): the file is
    swapped by the next write, or by `handle_reopen` from the main loop, never
    under a write that is in progress."""

    def __init__(self, path: str | None):
        self.path = path
        self.stream = sys.stderr if not path else open(path, "a", buffering=1, encoding="utf-8")
        self.reopen_requested = False
        self.reopens = 0  # reopens done
        self.announced = 0  # reopens logged by handle_reopen
        self._depth = 0

    def write(self, text: str) -> None:
        with _stream_lock:
            if self.reopen_requested and self._depth == 0:
                self._reopen_locked()
            self._depth += 1
            try:
                self.stream.write(text)
                self.stream.flush()
            except RuntimeError:  # "reentrant call": a signal handler logged inside a write; drop its line
                pass
            finally:
                self._depth -= 1

    def flush(self) -> None:
        with _stream_lock:
            self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def _reopen_locked(self) -> None:
        self.reopen_requested = False
        if not self.path:
            return
        try:
            new = open(self.path, "a", buffering=1, encoding="utf-8")
        except OSError as e:  # keep logging to the old file rather than not at all
            self.stream.write(f"spoolup: cannot reopen log file {self.path}: {e}; still writing to the old one\n")
            return
        old, self.stream = self.stream, new
        old.close()
        self.reopens += 1

    def reopen(self) -> None:
        with _stream_lock:
            self._reopen_locked()


class _Logger:
    """structlog's logger: one write per rendered line, through the reopenable stream.
    (structlog's PrintLogger holds a non-reentrant lock and writes the newline separately.)"""

    def msg(self, message: str) -> None:
        _out.write(message + "\n")

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def _logger_factory(*_args: Any) -> _Logger:
    return _Logger()


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
        logger_factory=_logger_factory,
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
    """SIGHUP handler's half: ask for the log file to be reopened (after logrotate
    moved it).  Safe in a signal handler: it only sets a flag; the next log line
    goes to the new file, and `handle_reopen` (called from the main loops) does it
    at once and says so."""
    if _out.path:
        _out.reopen_requested = True


# Signals whose default action ends the process, that an operator (or a stray `kill`, `pkill
# -USR1 ...`, a log tool, a profiler) may send, and that mean nothing to spoolup: received,
# logged and ignored by both processes, never a silent death (SIGUSR1 ended the service with -10).
# Python already ignores SIGPIPE and SIGXFSZ; SIGTERM/SIGINT stop, SIGHUP reopens log-file;
# SIGQUIT, SIGABRT and the fault signals keep their default (a core dump is what they ask for).
IGNORED_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPWR")
_received: list[int] = []  # signal numbers noted by the handler, logged by handle_reopen()


def _note_signal(signum: int, _frame: Any) -> None:
    # no lock, no logging here: the handler may interrupt the main thread inside a write or
    # while it holds a lock; list.append is atomic, the main loop logs it
    _received.append(signum)


def ignore_signals() -> None:
    """Install the ignore-and-log handler for IGNORED_SIGNALS (in each process, from its main thread)."""
    import signal

    for name in IGNORED_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is not None:
            signal.signal(signum, _note_signal)


def handle_reopen() -> None:
    """From a main loop (not a signal handler): perform a requested reopen and log it, and log
    the ignored signals received since the last call."""
    if _out.reopen_requested:
        _out.reopen()
    if _out.reopens != _out.announced:
        _out.announced = _out.reopens
        get("spoolup").info("log file reopened", path=_out.path)
    while _received:
        import signal

        signum = _received.pop(0)
        get("spoolup").warning("signal received and ignored", signal=signal.Signals(signum).name,
                               pid=os.getpid())


def _add_process(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    event.setdefault("process", _process)
    event.setdefault("pid", os.getpid())
    return event


def get(name: str = "spoolup", **bound: Any):
    return structlog.get_logger(name).bind(**bound) if bound else structlog.get_logger(name)
