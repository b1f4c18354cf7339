"""Reaping: deleting a fully shipped spool file whose writer has closed it (invariant 6),
in two steps (moved aside, then deleted), and saying by a Reap outcome what happened.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
import signal
import sqlite3
import threading
import time
from typing import TYPE_CHECKING

from spoolup.journal import SourceState
from spoolup.scan import NotRegular, Source, open_regular

if TYPE_CHECKING:
    from spoolup.spool import Spool

REAPING = ".spoolup-reaping-"  # a shipped spool file's name between the two steps of its deletion


class Reap(enum.Enum):
    """What one try_reap() did."""

    DELETED = "deleted"  # deleted and journaled as reaped: the source is forgotten
    MOVED_ASIDE = "moved-aside"  # step one: renamed to its reaping name; a later call deletes it
    NOT_READY = "not-ready"  # not active, not fully read, or not idle for spool-reap
    GONE = "gone"  # the path holds no regular file any more (the next rescan sorts it out)
    UNREADABLE = "unreadable"  # cannot be opened to check it: quarantined
    CHANGED = "changed"  # another file, another size, or truncated and refilled: not shipped, kept
    WRITER_OPEN = "writer-open"  # a writer has it open (no write lease)
    CANNOT_DELETE = "cannot-delete"  # renaming or deleting it failed: quarantined
    WRITER_CAME_BACK = "writer-came-back"  # opened by a writer while it was deleted: read on from the deleted inode


def try_reap(spool: Spool, src: Source, now: float, idle_seconds: float, crash_point) -> Reap:
    """Delete a fully shipped spool file whose writer has closed it.  The
    caller checked that every object holding its bytes is done.  Returns what
    happened (Reap.DELETED once the file is deleted and journaled as reaped);
    the caller logs and counts by it.

    Two steps, because a writer may be opening the file by its path at the
    very moment it is deleted (syslog-ng reopens a file it closed after
    time-reap() when a new message comes): such a writer would write into a
    deleted inode, and its records would be lost.  So the first step renames
    the file to a reaping name (REAPING + source id) in its directory: new
    opens of the path now create a new file, and an open already under way
    still finds the file, which stays in the spool and is read like any
    other.  A second call (the caller makes it a moment later) deletes it if
    it is still fully shipped and idle and no one has it open, then journals
    the source as reaped.  A crash after the delete and before the journal leaves
    a journaled source whose file is gone with every byte consumed: the next
    scan forgets it quietly.  (Journaling first would leave a file the journal
    no longer tracks, read again from its start.)"""
    if src.state != SourceState.ACTIVE or src.offset < src.size or spool.idle(src, now) < idle_seconds:
        return Reap.NOT_READY
    spool.close_fd(src)
    path = spool.dir / src.path
    try:
        fd = open_regular(path)
    except (FileNotFoundError, NotRegular):
        return Reap.GONE
    except OSError as e:
        spool.quarantine(src.path, "unreadable", f"cannot open it to check that it is closed: {e.strerror}",
                        src=src)
        return Reap.UNREADABLE
    keep_fd = False
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (src.dev, src.ino) or st.st_size != src.offset or src.changed:
            return Reap.CHANGED
        changed = spool.content_changed(src, fd)
        if changed:  # truncated and refilled to exactly the consumed size: not shipped, never deleted
            src.changed = changed
            return Reap.CHANGED
        lease, why = _take_lease(fd)
        _lease_state(spool, lease, why)
        if lease is False:
            return Reap.WRITER_OPEN
        if not path.name.startswith(REAPING):
            # (the journal keeps the spool path: after a crash here, the scan finds the
            # file under its reaping name by its inode, as any renamed file)
            reaping = path.with_name(f"{REAPING}{src.id}")
            try:
                os.rename(path, reaping)
            except OSError as e:
                if e.errno == errno.ENOENT:
                    return Reap.GONE
                _cannot_delete(spool, src, f"renaming it aside to delete it failed: {e.strerror}")
                return Reap.CANNOT_DELETE
            spool.sync_dir(reaping.parent)
            src.path = str(reaping.relative_to(spool.dir))
            return Reap.MOVED_ASIDE
        crash_point("before-reap-unlink")
        try:
            os.unlink(path)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return Reap.GONE
            _cannot_delete(spool, src, f"deleting it failed: {e.strerror}")
            return Reap.CANNOT_DELETE
        spool.sync_dir(path.parent)  # durable before the journal says reaped: a file back after a power
        #                              loss would be a new, unknown file, read again from its start
        crash_point("after-reap-unlink")
        if lease and fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_WRLCK:
            # someone opened it while we held the lease: whatever it writes goes to the
            # deleted inode, which we keep reading through this descriptor
            spool.log.warning("a writer opened a spool file while it was being deleted; reading on from the "
                             "deleted file until it is idle again", source=src.id, path=src.path)
            src.fd, keep_fd = fd, True
            return Reap.WRITER_CAME_BACK
        spool.journal.mark_reaped(src.id)
        if src.quarantine is not None:
            spool.release(src.quarantine, "deleted")
    finally:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        if not keep_fd:
            os.close(fd)
    spool.reaped(src)
    return Reap.DELETED


def _lease_state(spool: Spool, lease: bool | None, why: str | None) -> None:
    """Say once, in the log and in the journal (for status), when write leases cannot be taken."""
    state = "unavailable" if lease is None else "ok"
    if state == spool.leases["state"]:
        return
    spool.leases = {"state": state, "reason": why, "since": time.time()}
    if state == "unavailable":
        spool.log.warning("write leases unavailable: whether a writer still has a spool file open cannot be "
                         "checked before deleting it; the idle time (spool-reap) alone decides. Give spoolup "
                         "CAP_LEASE (the shipped unit does) or run it as the spool files' owner", reason=why)
    else:
        spool.log.info("write leases available again: deletions check that no writer has the file open")
    try:
        spool.journal.set_state("leases", spool.leases)
    except sqlite3.Error as e:  # (said in the log just above; status shows it once journaled)
        spool.log.warning("cannot journal this; going on", what="the write leases' state", error=str(e))

def _cannot_delete(spool: Spool, src: Source, what: str) -> None:
    spool.quarantine(src.path, "cannot-delete", f"{what} (every byte of it is shipped)", src=src)


def _take_lease(fd: int) -> tuple[bool | None, str | None]:
    """A write lease is granted only when no other descriptor has the file open:
    the writer (syslog-ng) has really closed it.  True: we hold the lease; False:
    someone has the file open; None: leases are not available here (neither the
    owner nor CAP_LEASE: EACCES; NFS), and the idle time alone decides, as DESIGN
    says.  The second value says why leases are not available.

    A writer opening the file while we hold the lease makes the kernel send SIGIO,
    whose default action terminates the process: it is ignored (we give the lease
    up within microseconds anyway).  Signal dispositions can only be set from the
    main thread; elsewhere no lease is taken."""
    if signal.getsignal(signal.SIGIO) is signal.SIG_DFL:
        if threading.current_thread() is not threading.main_thread():
            return None, "not the main thread"
        signal.signal(signal.SIGIO, signal.SIG_IGN)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        return True, None
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EBUSY):
            return False, None
        if e.errno in (errno.EACCES, errno.EPERM):
            return None, (f"F_SETLEASE: {e.strerror}: spoolup (uid {os.geteuid()}) neither owns the spool files "
                          "nor has CAP_LEASE")
        return None, f"F_SETLEASE: {e.strerror}"
