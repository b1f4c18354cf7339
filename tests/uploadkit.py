"""An in-process upload process for tests: a real journal file, chunk files in the state dir,
a real S3 server, and helpers that drive the Uploader one round at a time (schedule, let the
tasks finish, harvest), so a test decides what happens between two rounds."""

from __future__ import annotations

import time
from concurrent.futures import Future

from spoolup import config as config_mod
from spoolup import logs
from spoolup.chunks import Codec, part_file
from spoolup.journal import Batch, Journal, ObjectRow
from spoolup.s3 import S3

try:
    from spoolup.coordinator import Uploader
except ModuleNotFoundError:  # (the code before the split: to show these tests fail there)
    from spoolup.upload import Uploader  # type: ignore[no-redef]

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

    def close(self, oid: int) -> None:
        """Ingest closes the object (it is complete on spoolup's side)."""
        batch = Batch()
        batch.closed[oid] = ("test", time.time())
        self.journal.commit_batch(batch)

    def uploader(self, executor: "HeldExecutor | None" = None) -> Uploader:
        log = logs.get("spoolup.upload")
        try:
            return Uploader(self.cfg, self.journal, self.client, log, executor=executor)
        except TypeError:  # (the code before the pool was injectable: to show these tests fail there)
            up = Uploader(self.cfg, self.journal, self.client, log)
            if executor is not None:
                up.pool.shutdown()
                up.pool = executor
            return up


class HeldExecutor:
    """A worker pool that runs nothing until the test says so: `compute` makes a task's S3
    calls (in the test's thread), `deliver` hands its result to the coordinator (the future
    is done: the next harvest takes it).  The test chooses both orders."""

    def __init__(self):
        self.calls: dict[Future, list] = {}  # future -> [fn, args, outcome (None: not computed)]

    def submit(self, fn, /, *args) -> Future:
        future: Future = Future()
        self.calls[future] = [fn, args, None]
        return future

    def compute(self, future: Future) -> None:
        call = self.calls[future]
        if call[2] is None:
            try:
                call[2] = ("result", call[0](*call[1]))
            except Exception as e:  # noqa: BLE001 - handed to the coordinator as the worker would
                call[2] = ("error", e)

    def deliver(self, future: Future) -> None:
        self.compute(future)
        kind, value = self.calls.pop(future)[2]
        future.set_running_or_notify_cancel()
        if kind == "result":
            future.set_result(value)
        else:
            future.set_exception(value)

    def run_all(self) -> None:
        for future in list(self.calls):
            self.deliver(future)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        for future in self.calls:
            future.cancel()
        self.calls.clear()


def future_of(up: Uploader, kind: str, object_id: int, part: int = 0) -> Future:
    """The future of an in-flight task ("claim", "start", "part", "complete")."""
    for task, future in up.inflight.items():
        if isinstance(task, tuple):  # (the coordinator before typed tasks)
            k, o, p = task[0], task[1], (task[2] if len(task) > 2 else 0)
        else:
            k, o, p = task.kind.value, task.object_id, task.part
        if (k, o, p) == (kind, object_id, part):
            return future
    raise AssertionError(f"no {kind} task of object {object_id} (part {part}) in flight: {list(up.inflight)}")


def settle(up: Uploader) -> int:
    """One round: submit what is ready, let every task in flight finish, journal the results."""
    up.schedule()
    if isinstance(up.pool, HeldExecutor):
        up.pool.run_all()
    for future in list(up.inflight.values()):
        future.exception()  # (waits)
    return up.harvest()


def drive(up: Uploader, until, *, rounds: int = 40, what: str = "condition") -> None:
    for _ in range(rounds):
        if until():
            return
        settle(up)
    assert until(), f"{what}: not reached in {rounds} rounds"
