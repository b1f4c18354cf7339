"""Watching the spool dir (watchdog/inotify): hints of when to look again, never the truth.
"""

from __future__ import annotations

import threading
from pathlib import Path

DATA_POLL = 0.25  # seconds between looks at the active files for new bytes


class Watcher:
    """watchdog on the spool dir: files created, moved, deleted or closed after
    writing set `event`.  Appends are not watched: a writer such as syslog-ng
    appends thousands of times a second, and handling one inotify event per
    write cost more CPU than all of ingest; active files are looked at every
    DATA_POLL seconds instead (one fstat each).  Without inotify, polling only."""

    def __init__(self, spool_dir: Path, log):
        self.event = threading.Event()
        self.structure_changed = True
        self.observer = None
        self.log = log
        try:
            from watchdog.events import (
                DirCreatedEvent,
                DirDeletedEvent,
                DirMovedEvent,
                FileClosedEvent,
                FileCreatedEvent,
                FileDeletedEvent,
                FileMovedEvent,
                FileSystemEventHandler,
            )
            from watchdog.observers import Observer

            watcher = self

            class Handler(FileSystemEventHandler):
                def on_any_event(self, event):  # noqa: D401 - watchdog's callback
                    if event.event_type in ("created", "moved", "deleted"):
                        watcher.structure_changed = True
                    if event.event_type not in ("opened", "closed_no_write"):
                        watcher.event.set()

            self.observer = Observer()
            self.observer.schedule(
                Handler(), str(spool_dir), recursive=True,
                event_filter=[FileCreatedEvent, DirCreatedEvent, FileMovedEvent, DirMovedEvent, FileDeletedEvent,
                              DirDeletedEvent, FileClosedEvent],
            )
            self.observer.daemon = True
            self.observer.start()
        except Exception as e:  # noqa: BLE001 - inotify limits, unsupported fs: poll instead
            self.observer = None
            log.warning("watchdog unavailable, polling the spool instead", error=str(e))

    def stop(self) -> None:
        if self.observer is not None:
            try:
                self.observer.stop()
                self.observer.join(timeout=5)
            except (OSError, RuntimeError) as e:  # (a watch on a directory gone already; a thread not started)
                self.log.debug("stopping the spool watcher failed", error=str(e))
