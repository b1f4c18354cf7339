"""Test-only crash hooks: SPOOLUP_CRASH_AT=<point>[:<n>] kills the process with
SIGKILL the n-th time (default: first) it passes <point>.

The kill-point tests (tests/test_killpoints.py) use it to stop spoolup exactly
between two steps of an invariant.  Unset in production: `point()` is then a
string comparison that returns at once.

Two more variables shape the crash (both test-only too):

* SPOOLUP_CRASH_MARK=<path>: the hook fires at most once across processes.  It
  creates <path> (O_EXCL, holding "<point> <pid>") just before the kill; when the
  file already exists the hook is disarmed.  So a restarted upload process, or a
  restarted service, runs through the point normally, and the test can check
  that the crash really happened (a point never reached must not pass vacuously).
* SPOOLUP_CRASH_SCOPE=process|service: "process" (default) kills only the process
  passing the point; when it is the upload process, `spoolup run` restarts it.
  "service" kills the whole service at that instant: from the upload process its
  parent (the main spoolup process) is SIGKILLed first, from the main process its
  children (the upload process) are -- as a power cut would, minus the page cache.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import sys
import threading

POINTS = (
    "after-chunk-write",  # ingest: chunk bytes written, not yet synced or journaled
    "after-chunk-sync",  # ingest: chunk bytes synced, batch not yet journaled
    "after-batch-commit",  # ingest: batch journaled
    "after-claim",  # upload: final index journaled, upload not yet created
    "after-unclaim",  # upload: a KeyTaken's unclaim journaled (and its cleanups owed), no cleanup sent
    "after-create-multipart",  # upload: CreateMultipartUpload done, upload id not journaled
    "after-upload-part",  # upload: UploadPart done, ETag not journaled
    "after-record-part",  # upload: ETag journaled
    "after-ledger-segment",  # upload: ledger segment PUT done, its records not journaled
    "after-ledger-recorded",  # upload: records journaled (ledger_seq), PutObject/Complete not sent
    "after-complete",  # upload: CompleteMultipartUpload done, not journaled
    "after-put-object",  # upload: PutObject done, not journaled
    "after-object-done",  # upload: object journaled done, chunk files not yet deleted
    "after-bring-forward",  # start-up (run/drain/recover): bring-forward committed, its uploads not yet aborted
    "before-reap-unlink",  # ingest: spool file fully shipped and idle, about to be deleted
    "after-reap-unlink",  # ingest: spool file deleted, not yet journaled as reaped
)

_spec = os.environ.get("SPOOLUP_CRASH_AT", "")
_name, _, _count = _spec.partition(":")
_remaining = int(_count) if _count.isdigit() else 1
_mark = os.environ.get("SPOOLUP_CRASH_MARK", "")
_scope = os.environ.get("SPOOLUP_CRASH_SCOPE", "process")
_parent: int | None = None  # set by the upload process: the main spoolup process
_lock = threading.Lock()
if _name and _name not in POINTS:  # a typo must not make a kill-point test pass vacuously
    sys.stderr.write(f"SPOOLUP_CRASH_AT={_spec!r}: unknown point; known: {', '.join(POINTS)}\n")
    os._exit(3)
if _scope not in ("process", "service"):
    sys.stderr.write(f"SPOOLUP_CRASH_SCOPE={_scope!r}: expected 'process' or 'service'\n")
    os._exit(3)


def set_parent(pid: int) -> None:
    """The upload process tells which process is the service's main process."""
    global _parent
    _parent = pid


def point(name: str) -> None:
    global _remaining
    if name != _name:
        return
    with _lock:
        _remaining -= 1
        if _remaining > 0:
            return
        if _mark:
            try:
                fd = os.open(_mark, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return  # fired already, in this or an earlier process: disarmed
            os.write(fd, f"{name} {os.getpid()}\n".encode())
            os.close(fd)
        if _scope == "service":
            _kill_rest_of_service()
        os.kill(os.getpid(), signal.SIGKILL)


def _kill_rest_of_service() -> None:
    if _parent is not None and os.getppid() == _parent:
        with contextlib.suppress(OSError):
            os.kill(_parent, signal.SIGKILL)
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        with contextlib.suppress(OSError), open(path) as f:
            for pid in f.read().split():
                with contextlib.suppress(OSError):
                    os.kill(int(pid), signal.SIGKILL)
