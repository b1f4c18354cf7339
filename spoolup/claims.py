"""What the bucket holds at the indexes a claim looks at: listings of a (key, ts) cached by
windows of indexes, made once per process and again only when an index turns out taken.

A claim needs to know which indexes from the previous object's + 1 on the bucket holds
(s3()'s rule: objects or pending uploads, with or without a compression suffix).  Listing
every key under the object's prefix for every claim cost a request per object, and pages
growing with the key's whole history (3 LISTs of 3,000 keys after 3,000 objects).  Here:

* the indexes are split into windows by their decimal digits: the indexes 1-99 are one
  window (listed with the prefix "<key>-"), and from 100 on each window is the indexes
  that share all but their last two digits ("<key>-30" lists 3000-3099, and with them only
  30, 300-309 and the longer indexes that start so): one listing of about a hundred keys,
  however long the history -- flat;
* a window is listed the first time a claim looks at one of its indexes, and kept (up to
  WINDOWS_KEPT windows, least recently used dropped): the claims after it, for the next
  hundred objects of the key, need no request;
* index 0 (the key without "-<index>") is in no window: listing its prefix would list every
  index (and the sibling keys: `app/x.log.1`).  Its claim is made good by the write itself
  (the conditional PutObject, or the listing of uploads and the HEAD at the key before a
  CreateMultipartUpload); an object found there is remembered as taken (`taken`);
* a write that finds its key taken (412, a foreign upload or object: KeyTaken) forgets the
  window of its index, so the claim that follows lists it again: the listing is made when an
  index turns out taken, and shows the other writer's other keys too.

What a window does not show is what another writer puts at an index after it was listed:
the write at that very key finds it (If-None-Match, or the HEAD before the write); only a
variant of it (a `.gz` beside the plain key) written meanwhile is not seen, as a variant
written between a claim's listing and its write never was.  Pending uploads are listed by
the protocol (one listing for every claim under the object-key's static prefix, for a
couple of seconds), not here.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from spoolup import keys
from spoolup.s3 import S3

WINDOW_DIGITS = 2  # a window: the indexes that share all but their last two decimal digits
WINDOWS_KEPT = 1024  # windows cached (each about a hundred keys at most, mostly none)
TAKEN_KEPT = 4096  # keys remembered as found taken


def window_prefix(prefix: str, idx: int) -> str:
    """The listing prefix of the window holding index `idx` (> 0) of a (key, ts) `prefix`."""
    digits = str(idx)
    head = digits[:-WINDOW_DIGITS] if len(digits) > WINDOW_DIGITS else ""
    return f"{prefix}-{head}"


class Uncached(Exception):
    """A claim asked for what is not cached (a window, the pending uploads): it needs a request,
    so it is made on a worker, not in the journal's thread (Protocol.claim(cached=True))."""


class BucketIndexes:
    """The cached windows (thread-safe: claims run in the worker threads)."""

    def __init__(self, s3: S3):
        self.s3 = s3
        self._windows: OrderedDict[str, frozenset[str]] = OrderedDict()
        self._taken: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.listings = 0  # windows listed (for tests and the bench)

    def window(self, prefix: str, idx: int, cached: bool = False) -> frozenset[str]:
        """The keys the bucket held (when listed) in the window of index `idx` > 0.
        cached: Uncached instead of a listing."""
        wp = window_prefix(prefix, idx)
        with self._lock:
            got = self._windows.get(wp)
            if got is not None:
                self._windows.move_to_end(wp)
                return got
        if cached:
            raise Uncached(wp)
        got = frozenset(self.s3.list_keys(wp))  # (outside the lock: two claims may list one window; harmless)
        with self._lock:
            self.listings += 1
            self._windows[wp] = got
            while len(self._windows) > WINDOWS_KEPT:
                self._windows.popitem(last=False)
        return got

    def is_taken(self, key: str) -> bool:
        with self._lock:
            return key in self._taken

    def taken(self, prefix: str, idx: int | None, key: str | None) -> None:
        """A write found `key` (index `idx` of `prefix`) taken by someone else: remember the
        key, and list the window again at the next claim that looks at it."""
        with self._lock:
            if key:
                self._taken[key] = None
                while len(self._taken) > TAKEN_KEPT:
                    self._taken.popitem(last=False)
            if idx:
                self._windows.pop(window_prefix(prefix, idx), None)

    def held(self, key: str, ts: str, idx: int, variants: tuple[str, ...], cached: bool = False) -> bool:
        """Does the bucket hold index `idx` of (key, ts), with any of the suffixes `variants`,
        as far as the windows (and the keys found taken) say?  cached: Uncached where a window
        would have to be listed."""
        finals = [keys.final_key(key, ts, idx, sfx) for sfx in variants]
        if any(self.is_taken(k) for k in finals):
            return True
        if idx == 0:
            return False  # the write at the key decides (see the module's docstring)
        listed = self.window(keys.key_prefix(key, ts), idx, cached)
        return any(k in listed for k in finals)
