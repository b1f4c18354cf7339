"""Test-only crash hooks: SPOOLUP_CRASH_AT=<point>[:<n>] kills the process with
SIGKILL the n-th time (default: first) it passes <point>.

The kill-point tests (tests/test_killpoints.py) use it to stop spoolup exactly
between two steps of an invariant.  Unset in production: `point()` is then a
dictionary lookup that returns at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

POINTS = (
    "after-chunk-write",  # ingest: chunk bytes written, not yet synced or journaled
    "after-chunk-sync",  # ingest: chunk bytes synced, batch not yet journaled
    "after-batch-commit",  # ingest: batch journaled
    "after-claim",  # upload: final index journaled, upload not yet created
    "after-create-multipart",  # upload: CreateMultipartUpload done, upload id not journaled
    "after-upload-part",  # upload: UploadPart done, ETag not journaled
    "after-record-part",  # upload: ETag journaled
    "after-complete",  # upload: CompleteMultipartUpload done, not journaled
    "after-put-object",  # upload: PutObject done, not journaled
    "after-object-done",  # upload: object journaled done, chunk files not yet deleted
    "before-reap-unlink",  # ingest: spool file journaled as reaped, not yet deleted
)

_spec = os.environ.get("SPOOLUP_CRASH_AT", "")
_name, _, _count = _spec.partition(":")
_remaining = int(_count) if _count.isdigit() else 1
_lock = threading.Lock()
if _name and _name not in POINTS:  # a typo must not make a kill-point test pass vacuously
    sys.stderr.write(f"SPOOLUP_CRASH_AT={_spec!r}: unknown point; known: {', '.join(POINTS)}\n")
    os._exit(3)


def point(name: str) -> None:
    global _remaining
    if name != _name:
        return
    with _lock:
        _remaining -= 1
        if _remaining > 0:
            return
    os.kill(os.getpid(), signal.SIGKILL)
