"""An in-process upload process for tests: a real journal file, chunk files in the state dir,
a real S3 server, and helpers that drive the Uploader one round at a time (schedule, let the
tasks finish, harvest), so a test decides what happens between two rounds."""

from __future__ import annotations

import time

from spoolup import config as config_mod
from spoolup import logs
from spoolup.chunks import Codec, part_file
from spoolup.journal import Batch, Journal, ObjectRow
from spoolup.s3 import S3
from spoolup.coordinator import Uploader

NONE = Codec("none", 0)


def lines(size: int, tag: str) -> bytes:
    """Numbered lines of `tag`, at least `size` bytes (whole lines)."""
    out, n, i = [], 0, 0
    while n < size:
        line = f"{tag} {i:09d} the quick brown fox jumps over the lazy dog\n".encode()
        out.append(line)
        n += len(line)
        i += 1
    return b"".join(out)


class Rig:
    """A configured state dir with a journal, and objects added to it as ingest would."""

    def __init__(self, make_spoolup, **options):
        self.sp = make_spoolup(**{"object-key": "{name}", "compression": "none", **options})
        self.cfg = config_mod.load(self.sp.config)
        self.cfg.chunk_dir.mkdir(parents=True, exist_ok=True)
        self.journal = Journal.open(self.cfg.journal_path)
        self.client = S3(self.cfg)
        self.client.ensure_bucket()
        self.next_id = 1

    def add(self, key: str, parts: list[bytes], *, closed: bool = True) -> int:
        """An object of `key` whose chunks (each one sealed part) are `parts`."""
        oid = self.next_id
        self.next_id += 1
        now = time.time()
        batch = Batch()
        batch.new_objects.append(ObjectRow(oid, key, "", "open", None, None, None, None,
                                           sum(map(len, parts)), sum(p.count(b"\n") for p in parts), now, now))
        for n, data in enumerate(parts, 1):
            part_file(self.cfg.chunk_dir, oid, n, NONE).write_bytes(data)
            batch.chunks[(oid, n)] = (len(data), "sealed", len(data))
        if closed:
            batch.closed[oid] = ("test", now)
        self.journal.commit_batch(batch)
        return oid

    def uploader(self, **kw) -> Uploader:
        return Uploader(self.cfg, self.journal, self.client, logs.get("spoolup.upload"), **kw)


def settle(up: Uploader) -> int:
    """One round: submit what is ready, let every task in flight finish, journal the results."""
    up.schedule()
    for future in list(up.inflight.values()):
        future.exception()  # (waits)
    return up.harvest()


def drive(up: Uploader, until, *, rounds: int = 40, what: str = "condition") -> None:
    for _ in range(rounds):
        if until():
            return
        settle(up)
    assert until(), f"{what}: not reached in {rounds} rounds"
