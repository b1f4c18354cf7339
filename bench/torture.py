"""kill -9 torture: `python bench/torture.py --cycles N`.

A writer thread appends sequence-numbered records, continuously, to several spool
files (several keys; now and then a burst bigger than chunk-size, so some objects
are real multipart uploads; small max-object-size, flush-grace-period and
spool-reap, so objects rotate and idle spool files are deleted and recreated).
Meanwhile `spoolup run` is SIGKILLed at random moments, over and over: its upload
process alone (found through /proc; the service restarts it), the main process
alone (the upload process then gets SIGTERM and finishes on its own, overlapping
the next run), or both at once.  At the end the writer stops, `spoolup drain`
ships the rest, and every record is checked: present exactly once, in order per
key, in completed objects, byte for byte, and no multipart upload is left pending.

With `--key-races` a second writer (ForeignWriter, its own S3 client) races spoolup for
its next keys meanwhile: it PUTs objects and starts multipart uploads (completed later,
or left pending, some empty) at the next indexes of what the bucket holds and at the
bare key of the next minute's timestamp.  Then the check also says: every foreign
object still holds its exact bytes, no foreign upload was taken away, no upload but
the foreign writer's own is left (`leftover_uploads`), and every index spoolup skipped
is explained by the bucket (`index_gaps`: see races() in bench/keyraces.py, which holds
the key-race parts).  With `--state-loss` (StateLoss, a between-cycles hook: Cycle) the
state dir is now and then deleted, or replaced by a copy taken at an earlier cycle, between
runs; the checks stay the same.

Prints cycles, records, lost, duplicated (and more); exit 0 only when nothing is
lost, duplicated, reordered, pending, left behind, overwritten or skipped unexplained.
`--json` prints the figures as JSON (the test tests/test_torture.py runs it so).
Without `--s3-url` a moto server is started on a free loopback port, or with
`--server rgw` a throw-away Ceph RGW (tests/localrgw.py: needs the Ceph packages of
tests/setup.sh).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import ctypes
import glob
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import ClientError

if __package__:  # imported as bench.torture
    from .keyraces import FOREIGN, KEY_RE, PREFIX, TS_FORMAT, ForeignWriter, completions, races, s3_client
else:  # run as a script: bench/ is on sys.path
    from keyraces import FOREIGN, KEY_RE, PREFIX, TS_FORMAT, ForeignWriter, completions, races, s3_client

ROOT = Path(__file__).resolve().parent.parent  # the checkout this script belongs to


def _tests_on_path() -> None:
    """tests/ (helpers, localrgw) and the checkout itself importable, whether or not spoolup is
    installed: run as a script, only bench/ is on sys.path."""
    for path in (ROOT, ROOT / "tests"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))

ACCESS_KEY = "torture"
SECRET_KEY = "torture-secret-0123456789"
MiB = 1 << 20
RECORD_RE = re.compile(rb"^(?P<name>\S+) seq=(?P<seq>\d+) ")


# ---------------------------------------------------------------------------
# the writer


class Writer(threading.Thread):
    """Appends records `<file> seq=<n> <padding>\\n` to spool files, one write per
    burst, opening and closing the file each time (as syslog-ng's file() does with
    time-reap), so that idle files can be reaped and are recreated later."""

    def __init__(self, spool: Path, names: list[str], rnd: random.Random, big_every: float):
        super().__init__(name="writer", daemon=True)
        self.spool = spool
        self.names = names
        self.rnd = rnd
        self.big_every = big_every
        self.stop = threading.Event()
        self.seq = {n: 0 for n in names}
        self.hash = {n: hashlib.sha256() for n in names}
        self.bytes = {n: 0 for n in names}
        self.bursts = 0
        self.big_bursts = 0
        self.big = threading.Event()  # set at each burst > chunk-size (the foreign writer watches it)
        self.error: BaseException | None = None
        self._pool = rnd.randbytes(1 << 16).hex().encode()  # padding source

    def records(self, name: str, n: int, width: tuple[int, int]) -> bytes:
        out = []
        lo, hi = width
        for _ in range(n):
            pad = self.rnd.randint(lo, hi)
            at = self.rnd.randrange(0, len(self._pool) - pad)
            out.append(b"%s seq=%09d %s\n" % (name.encode(), self.seq[name], self._pool[at:at + pad]))
            self.seq[name] += 1
        return b"".join(out)

    def append(self, name: str, data: bytes) -> None:
        fd = os.open(self.spool / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        self.hash[name].update(data)
        self.bytes[name] += len(data)

    def run(self) -> None:
        try:
            # each file alternates between busy spells and idle ones (longer than flush-grace-period,
            # so its object is completed, and sometimes than spool-reap, so the file is deleted)
            now = time.monotonic()
            phase = {n: (True, now + self.rnd.uniform(0.5, 3)) for n in self.names}
            next_big = now + self.rnd.uniform(0.5, 1.5) * self.big_every
            while not self.stop.is_set():
                now = time.monotonic()
                for n, (busy, until) in phase.items():
                    if now >= until:
                        phase[n] = (not busy, now + (self.rnd.uniform(0.5, 4) if not busy else self.rnd.uniform(0.5, 5)))
                busy = [n for n, (b, _) in phase.items() if b]
                if now >= next_big:
                    name = self.rnd.choice(self.names)
                    data = self.records(name, 22_000, (280, 320))  # ~6.6 MiB: more than one 5 MiB chunk
                    self.big_bursts += 1
                    next_big = now + self.rnd.uniform(0.5, 1.5) * self.big_every
                elif busy:
                    name = self.rnd.choice(busy)
                    data = self.records(name, self.rnd.randint(1, 300), (10, 400))
                else:
                    self.stop.wait(0.05)
                    continue
                self.append(name, data)
                if len(data) > 5 * MiB:
                    self.big.set()
                self.bursts += 1
                self.stop.wait(self.rnd.uniform(0.0, 0.06))
        except BaseException as e:  # noqa: BLE001 - reported by the driver
            self.error = e


# ---------------------------------------------------------------------------
# processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(workdir / "moto.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("moto server did not start")


def become_subreaper() -> None:
    """Upload processes orphaned by a killed `spoolup run` are re-parented to us, so we
    can reap them (and see when they are gone)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER


def children(pid: int) -> list[int]:
    out: list[int] = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        with contextlib.suppress(OSError), open(path) as f:
            out.extend(int(p) for p in f.read().split())
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


STUCK_AFTER = 20.0  # seconds an orphaned upload process may take to stop (shutdown-timeout is 2)


def reap(pids: dict[int, float], stuck: list[int]) -> None:
    """Reap the orphaned upload processes that stopped; one still running STUCK_AFTER
    seconds after its parent was killed is stuck (it would keep upload.lock, and no
    upload process could start again): counted, and killed so the torture goes on."""
    for pid, since in list(pids.items()):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid if not alive(pid) else 0
        if done:
            del pids[pid]
        elif time.monotonic() - since > STUCK_AFTER:
            stuck.append(pid)
            kill(pid)


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------
# the run


def write_config(path: Path, url: str, bucket: str, spool: Path, state: Path, log_file: Path,
                 compression: str = "none", keys: tuple[str, str] = (ACCESS_KEY, SECRET_KEY)) -> None:
    options = {
        "url": url, "bucket": bucket, "access-key": keys[0], "secret-key": keys[1], "region": "us-east-1",
        "spool-dir": str(spool), "state-dir": str(state), "log-format": "json", "log-file": str(log_file),
        "object-key": PREFIX + "{name}", "object-key-timestamp": TS_FORMAT,
        "chunk-size": "5MiB", "max-object-size": "6MiB", "flush-grace-period": "1s", "spool-reap": "2s",
        "poll-interval": 0.2, "shutdown-timeout": 2, "retry-max-delay": 1, "s3-timeout": 10,
        "upload-threads": 4, "compression": compression, "compresslevel": 1 if compression == "gzip" else 3,
    }
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in options.items()))


@dataclass
class Cycle:
    """What a between-cycles hook may act on.  A hook runs after each cycle's `spoolup run`
    was killed and reaped, before the next one starts: the place for cycle kinds that change
    what the next run finds (issue 22: delete the state dir, or restore one backed up at an
    earlier cycle).  The killed run's upload process may still be finishing (it stops on its
    own after its parent's death): a hook that touches the state dir calls settle() first."""
    number: int
    rnd: random.Random  # the hook's own: the torture's draws stay as they were for a seed
    workdir: Path
    state: Path
    config: Path
    cmd: list[str]
    env: dict[str, str]
    figures: dict  # a hook counts what it did here (it is printed with --json)
    say: Callable[..., None]
    settle: Callable[[], None]  # wait until no upload process of a killed run is left


class StateLoss:
    """Cycle kind `--state-loss` (issue 22): between runs, what an operator's or a disk's
    mistake does to the state dir -- it is deleted (spoolup must bring its journal forward
    from the bucket's ledger), or a copy of it taken at an earlier cycle is put back (a
    restored backup, an old copy started: its journal is behind the bucket).  Copies are
    taken while nothing runs (after settle()), with `cp -a` (owners and modes kept, for
    --user); the state dir itself stays (it may be a mount point), its contents go."""

    KEEP = 3  # backups kept (the oldest dropped)

    def __init__(self, cycles: int, backup: float = 0.2, restore: float = 0.1, delete: float = 0.06):
        self.p_backup, self.p_restore, self.p_delete = backup, restore, delete
        self.backups: list[tuple[int, Path]] = []
        # whatever the draws, a run of 8 cycles or more does each at least once
        self.forced = {1: 0.0, cycles // 2: backup + restore / 2, (3 * cycles) // 4: backup + restore + delete / 2}
        if cycles < 8:
            self.forced = {}

    def __call__(self, c: Cycle) -> None:
        for name in ("state_backups", "state_restored", "state_deleted"):
            c.figures.setdefault(name, 0)
        draw = c.rnd.random()
        draw = self.forced.get(c.number, draw)
        if draw >= self.p_backup + self.p_restore + self.p_delete:
            return
        c.settle()  # no upload process of the killed run may write meanwhile
        if draw < self.p_backup or (draw < self.p_backup + self.p_restore and not self.backups):
            path = c.workdir / f"state-backup-{c.number}"
            self._copy(c.state, path)
            self.backups.append((c.number, path))
            if len(self.backups) > self.KEEP:
                shutil.rmtree(self.backups.pop(0)[1], ignore_errors=True)
            c.figures["state_backups"] += 1
        elif draw < self.p_backup + self.p_restore:
            taken, path = c.rnd.choice(self.backups)
            self._empty(c.state)
            self._copy(path, c.state)
            c.figures["state_restored"] += 1
            c.say(f"cycle {c.number}: state dir restored from the copy taken at cycle {taken}")
        else:
            self._empty(c.state)
            c.figures["state_deleted"] += 1
            c.say(f"cycle {c.number}: state dir deleted")

    @staticmethod
    def _empty(state: Path) -> None:
        for entry in list(state.iterdir()) if state.is_dir() else []:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    @staticmethod
    def _copy(src: Path, dst: Path) -> None:
        dst.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            subprocess.run(["cp", "-a", f"{src}/.", str(dst)], check=True)


def torture(cycles: int, *, seed: int, workdir: Path, s3_url: str | None, files: int = 4,
            min_life: float = 0.4, max_life: float = 3.5, big_every: float = 12.0, quiet: bool = False,
            compression: str = "none", state_dir: Path | None = None,
            keys: tuple[str, str] = (ACCESS_KEY, SECRET_KEY), user: str | None = None,
            key_races: bool = False, drain_timeout: float = 600,
            between_cycles: Sequence[Callable[[Cycle], None]] = ()) -> dict:
    rnd = random.Random(seed)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    become_subreaper()
    moto = None
    if s3_url is None:
        moto, s3_url = start_moto(workdir)
    bucket = f"torture-{seed}-{os.getpid()}"
    spool, state = workdir / "spool", state_dir or workdir / "state"
    spool.mkdir(parents=True, exist_ok=True)
    config = workdir / "spoolup.toml"
    write_config(config, s3_url, bucket, spool, state, workdir / "spoolup.log", compression, keys)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOOLUP_", "AWS_"))}
    cmd = [sys.executable, "-m", "spoolup"]
    if user is not None:
        # spoolup as an unprivileged user without capabilities, as the shipped unit runs it
        # (tests/helpers.py TestUser): its own state dir, the spool shared as syslog-ng would
        _tests_on_path()
        from helpers import TestUser

        u = TestUser(user)
        u.own(workdir, 0o755)
        u.share_spool(spool)
        u.own(state)
        os.chown(config, 0, u.gid)
        os.chmod(config, 0o640)
        env.update(HOME="/nonexistent", PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(ROOT))
        cmd = [*u.prefix(), *cmd]
    names = [f"f{i}.log" for i in range(files)]
    writer = Writer(spool, names, random.Random(seed + 1), big_every)
    foreign = None
    if key_races:
        suffix = {"gzip": ".gz", "zstd": ".zst"}.get(compression, "")
        foreign = ForeignWriter(s3_url, bucket, keys, names, random.Random(seed + 2), suffix, busy=writer.big)
    figures = {"cycles": 0, "kills_main": 0, "kills_upload": 0, "kills_both": 0, "unexpected_exits": 0,
               "key_races": key_races}
    orphans: dict[int, float] = {}  # upload processes of killed services -> when orphaned
    stuck: list[int] = []

    def settle(limit: float = 60) -> None:
        deadline = time.monotonic() + limit
        while orphans and time.monotonic() < deadline:
            reap(orphans, stuck)
            time.sleep(0.1)

    started = time.monotonic()
    run_log = open(workdir / "run.out", "ab")
    try:
        writer.start()
        if foreign is not None:
            # the bucket is there before the agents, as a shared bucket is: the foreign writer
            # waits for it, and under load the first cycles' upload processes may be killed
            # before any of them creates it (a CI run on a loaded machine: no foreign write at all)
            with contextlib.suppress(ClientError):
                foreign.s3.create_bucket(Bucket=bucket)
            foreign.start()
        for cycle in range(cycles):
            p = subprocess.Popen([*cmd, "run", "--config", str(config)], env=env, stdout=run_log, stderr=run_log)
            life = rnd.uniform(min_life, max_life)
            kill_upload_at = rnd.uniform(0.2, life) if rnd.random() < 0.5 else None
            t0 = time.monotonic()
            while time.monotonic() - t0 < life and p.poll() is None:
                if kill_upload_at is not None and time.monotonic() - t0 >= kill_upload_at:
                    for child in children(p.pid):  # the service restarts it
                        kill(child)
                        figures["kills_upload"] += 1
                    kill_upload_at = None
                time.sleep(0.02)
            if p.poll() is not None:
                figures["unexpected_exits"] += 1
                say(f"cycle {cycle}: spoolup run exited by itself with {p.returncode}")
            kids = children(p.pid)
            if rnd.random() < 0.25:  # both at once
                kill(p.pid)
                for child in kids:
                    kill(child)
                figures["kills_both"] += 1
            else:  # the main process; its upload process stops on its own (SIGTERM) and overlaps the next run
                kill(p.pid)
                figures["kills_main"] += 1
            p.wait()
            orphans.update({kid: time.monotonic() for kid in kids})
            reap(orphans, stuck)
            for hook in between_cycles:
                hook(Cycle(cycle, random.Random(seed * 1000 + cycle), workdir, state, config, cmd, env, figures,
                           say, settle))
            figures["cycles"] += 1
            if writer.error:
                raise RuntimeError(f"the writer failed: {writer.error!r}")
            if foreign is not None and foreign.error:
                raise RuntimeError(f"the foreign writer failed: {foreign.error!r}")
            if not quiet and (cycle + 1) % 10 == 0:
                say(f"cycle {cycle + 1}/{cycles}: {sum(writer.seq.values())} records written, "
                    f"{time.monotonic() - started:.0f}s")
        writer.stop.set()
        writer.join()
        if foreign is not None:  # what it left pending stays pending through the drain
            foreign.stop.set()
            foreign.join()
            (workdir / "foreign.log").write_text("".join(line + "\n" for line in foreign.journal))
        settle()
        figures["stuck_upload_processes"] = len(stuck)
        if stuck:
            say(f"upload processes that did not stop after their service was killed: {stuck}")
        figures["tortured_seconds"] = round(time.monotonic() - started, 1)
        # The final drain runs as if an hour had passed since the last kill: a capability probe a
        # kill cut short leaves its scratch (an object and an upload), which only its own journal's
        # reconcile removes at once -- a deleted or replaced journal's is removed by any reconcile
        # once older than a probe can take (1 hour, docs/operations.md), and the torture lasts
        # minutes.  So the check that no upload is left holds for the probe scratch too.
        r = subprocess.run([*cmd, "drain", "--config", str(config), "--timeout", str(drain_timeout)],
                           env={**env, "SPOOLUP_TEST_PROBE_MAX_AGE": "0"}, capture_output=True, text=True)
        figures["drain_exit"] = r.returncode
        (workdir / "drain.out").write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            say(f"final drain failed ({r.returncode}):\n{r.stderr[-4000:]}")
        figures.update(verify(s3_url, bucket, writer, spool, compression, keys, foreign, workdir / "spoolup.log"))
        # what `spoolup verify` says of the same bucket (informative: the checks above decide)
        r = subprocess.run([*cmd, "verify", "--json", "--config", str(config)], env=env, capture_output=True,
                           text=True)
        figures["verify_exit"] = r.returncode
        (workdir / "verify.json").write_text(r.stdout + r.stderr)  # (what each problem names, for a failed run)
        with contextlib.suppress(ValueError):
            kinds: dict[str, int] = {}
            for problem in json.loads(r.stdout)["problems"]:
                kinds[problem["kind"]] = kinds.get(problem["kind"], 0) + 1
            figures["verify_problems"] = kinds
        with contextlib.suppress(OSError):  # how often spoolup met a taken key (informative)
            figures["key_taken_warnings"] = (workdir / "spoolup.log").read_text(errors="replace").count(
                "object key already taken")
    finally:
        writer.stop.set()
        if foreign is not None:
            foreign.stop.set()
        for pid in orphans:
            kill(pid)
        if moto is not None:
            moto.terminate()
            moto.wait(30)
    figures["duration_seconds"] = round(time.monotonic() - started, 1)
    figures["ok"] = (figures["drain_exit"] == 0 and figures["lost"] == 0 and figures["duplicated"] == 0
                     and figures["out_of_order"] == 0 and figures["pending_uploads"] == 0
                     and figures["byte_mismatches"] == 0 and figures["unexpected_exits"] == 0
                     and figures["stuck_upload_processes"] == 0 and figures["index_gaps"] == 0
                     and figures["foreign_overwritten"] == 0 and figures["foreign_uploads_vanished"] == 0
                     # every upload left is counted: spoolup adopts or aborts the empty upload a kill
                     # between Create and its journal entry leaves (issue 18 item 4)
                     and figures["leftover_uploads"] == 0)
    return figures


def verify(url: str, bucket: str, writer: Writer, spool: Path, compression: str = "none",
           keys: tuple[str, str] = (ACCESS_KEY, SECRET_KEY), foreign: ForeignWriter | None = None,
           log: Path | None = None) -> dict:
    s3 = s3_client(url, keys, max_pool_connections=16)
    objects: list[dict] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        objects.extend(page.get("Contents", []))
    all_uploads = [u for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=bucket)
                   for u in page.get("Uploads", []) or []]
    foreign_ids = set(foreign.uploads) if foreign else set()
    # an upload at a key where the foreign writer's Create got no reply may be its own: not counted
    unknown = [u for u in all_uploads
               if u["UploadId"] not in foreign_ids and foreign and u["Key"] in foreign.create_lost]
    uploads = [u for u in all_uploads if u["UploadId"] not in foreign_ids and u not in unknown]  # spoolup's, left
    leftover = [u["Key"] for u in uploads]
    # empty ones are reported apart (empty_orphan_uploads) but count as left behind all the same:
    # spoolup adopts or aborts the upload a kill between Create and its journal entry leaves
    empty_orphans = [u for u in uploads
                     if not s3.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts")]
    uploads = [u for u in uploads if u not in empty_orphans]
    per_name: dict[str, list[tuple[str, int, str]]] = {}
    strays = []
    objects = [o for o in objects if ".spoolup/" not in o["Key"]]  # spoolup's own keys (the ledger): not records
    for o in objects:
        m = KEY_RE.match(o["Key"])
        if not m:
            strays.append(o["Key"])
            continue
        per_name.setdefault(m["name"], []).append((m["ts"], int(m["idx"] or 0), o["Key"]))

    def fetch(key: str) -> bytes:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def decode(body: bytes) -> bytes:
        if compression == "gzip":
            import gzip

            return gzip.decompress(body)  # every part is a complete member
        if compression == "zstd":
            import io

            import zstandard

            return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True).read()
        return body

    lost = duplicated = out_of_order = mismatches = empty = 0
    problems: list[str] = []  # where, for a failed run
    raw: dict[str, bytes] = {}  # every object of the torture's keys, as stored
    foreign_objects: set[str] = set()
    ours: dict[tuple[str, str], set[int]] = {}  # (name, ts) -> spoolup's indexes
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for name in writer.names:
            listed = [k for _, _, k in sorted(per_name.get(name, []))]  # index order
            raw.update(zip(listed, pool.map(fetch, listed)))
            # a foreign object is not spoolup's: its bytes are checked below, not as records
            foreign_objects.update(k for k in listed if raw[k].startswith(FOREIGN))
            mine = [k for k in listed if k not in foreign_objects]
            for k in mine:
                m = KEY_RE.match(k)
                ours.setdefault((name, m["ts"]), set()).add(int(m["idx"] or 0))
            bodies = [decode(raw[k]) for k in mine]
            empty += sum(1 for b in bodies if not b)
            data = b"".join(bodies)
            if hashlib.sha256(data).digest() != writer.hash[name].digest() or len(data) != writer.bytes[name]:
                mismatches += 1
            seqs, where = [], []
            for key, body in zip(mine, bodies):
                for line in body.splitlines():
                    m = RECORD_RE.match(line)
                    if m and m["name"].decode() == name:
                        seqs.append(int(m["seq"]))
                        where.append(key)
            seen = set(seqs)
            missing = sorted(set(range(writer.seq[name])) - seen)
            lost += len(missing)
            duplicated += len(seqs) - len(seen)
            disorder = [(where[i], where[i + 1]) for i, (a, b) in enumerate(zip(seqs, seqs[1:])) if b <= a]
            out_of_order += len(disorder)
            for before, after in sorted(set(disorder))[:5]:
                problems.append(f"{name}: records of {after} come before records of {before}")
            if missing:
                ranges, start = [], missing[0]
                for a, b in zip(missing, missing[1:] + [None]):
                    if b != a + 1:
                        ranges.append((start, a))
                        start = b
                index = {seq: key for seq, key in zip(seqs, where)}
                for lo, hi in ranges[:10]:
                    problems.append(f"{name}: seq {lo}..{hi} missing (after {index.get(lo - 1)}, "
                                    f"before {index.get(hi + 1)})")
            if len(seqs) != len(seen):
                dups = sorted(q for q, n in collections.Counter(seqs).items() if n > 1)[:5]
                problems.append(f"{name}: {len(seqs) - len(seen)} duplicated, e.g. seq {dups}")
    figures = {
        "records": sum(writer.seq.values()), "bytes": sum(writer.bytes.values()), "objects": len(objects),
        "multipart_objects": sum(1 for o in objects if "-" in o.get("ETag", "").strip('"')),
        "big_bursts": writer.big_bursts,
        "lost": lost, "duplicated": duplicated, "out_of_order": out_of_order, "byte_mismatches": mismatches,
        "empty_objects": empty, "stray_objects": len(strays), "pending_uploads": len(uploads),
        "empty_orphan_uploads": len(empty_orphans), "leftover_uploads": len(leftover),
        "uploads_of_unknown_writer": len(unknown),
        "spool_files_left": len(list(spool.iterdir())),
    }
    for key in leftover[:10]:
        problems.append(f"upload left behind at {key}")
    figures.update(races(foreign, raw, foreign_objects, all_uploads, ours, problems, completions(log)))
    figures["problems"] = problems
    return figures


def machine() -> str:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) // 1024 // 1024} GiB RAM"
    return f"{os.cpu_count()} CPUs ({cpu}), {mem}, Linux {platform.release()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--files", type=int, default=4, help="spool files (keys)")
    ap.add_argument("--dir", help="work directory (kept); default: a temporary one, removed afterwards")
    ap.add_argument("--s3-url", help="an S3 endpoint (e.g. a running moto server); default: start --server")
    ap.add_argument("--server", choices=("moto", "rgw"), default="moto",
                    help="without --s3-url: the S3 server to start (rgw: a throw-away Ceph RGW on loopback)")
    ap.add_argument("--access-key", default=ACCESS_KEY, help="the S3 keys (with --s3-url, or for the RGW user)")
    ap.add_argument("--secret-key", default=SECRET_KEY)
    ap.add_argument("--max-life", type=float, default=3.5, help="longest life of a `spoolup run`, seconds")
    ap.add_argument("--big-every", type=float,
                    help="mean seconds between bursts > chunk-size (default 12; 3 with --key-races: more multipart "
                         "objects, whose uploads and the claimed objects after them are what the races aim at)")
    ap.add_argument("--compression", choices=("none", "gzip", "zstd"), default="none")
    ap.add_argument("--state-dir", help="state dir (e.g. on another filesystem: a ramfs); default: in the work directory")
    ap.add_argument("--user", help="run spoolup as this unprivileged user (created if missing; needs root)")
    ap.add_argument("--key-races", action="store_true",
                    help="a second writer puts objects and starts uploads at the keys spoolup is about to claim")
    ap.add_argument("--state-loss", action="store_true",
                    help="between runs, now and then delete the state dir, or put back a copy of it taken at an "
                         "earlier cycle (issue 22: spoolup brings its journal forward from the bucket's ledger)")
    ap.add_argument("--drain-timeout", type=float, default=600, help="seconds the final `spoolup drain` may take")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="spoolup-torture-"))
    workdir.mkdir(parents=True, exist_ok=True)
    keys = (args.access_key, args.secret_key)
    with contextlib.ExitStack() as stack:
        s3_url = args.s3_url
        if s3_url is None and args.server == "rgw":  # started before torture() makes this process a subreaper
            _tests_on_path()
            from localrgw import LocalRGW

            rgw = stack.enter_context(LocalRGW(workdir / "rgw", *keys))
            s3_url = rgw.url
            if not args.json:
                print(f"Ceph RGW up at {s3_url} in {rgw.startup_seconds:.1f}s", file=sys.stderr, flush=True)
        figures = torture(args.cycles, seed=args.seed, workdir=workdir, s3_url=s3_url, files=args.files,
                          max_life=args.max_life,
                          big_every=args.big_every or (3.0 if args.key_races else 12.0), quiet=args.json,
                          compression=args.compression, state_dir=Path(args.state_dir) if args.state_dir else None,
                          keys=keys, user=args.user, key_races=args.key_races, drain_timeout=args.drain_timeout,
                          between_cycles=[StateLoss(args.cycles)] if args.state_loss else ())
    if not args.dir and figures["ok"]:
        shutil.rmtree(workdir, ignore_errors=True)
    figures["seed"] = args.seed
    figures["compression"] = args.compression
    figures["server"] = "url" if args.s3_url else args.server
    figures["machine"] = machine()
    if args.json:
        print(json.dumps(figures))
    else:
        for k in ("cycles", "records", "lost", "duplicated", "out_of_order", "byte_mismatches", "pending_uploads",
                  "objects", "multipart_objects", "bytes", "kills_main", "kills_upload", "kills_both",
                  "unexpected_exits", "stuck_upload_processes", "leftover_uploads", "index_gaps", "key_races",
                  "foreign_objects", "foreign_uploads", "foreign_pending_uploads", "foreign_overwritten",
                  "foreign_uploads_vanished", "foreign_overwritten_in_flight", "key_taken_warnings",
                  "state_backups", "state_restored", "state_deleted", "verify_exit", "verify_problems",
                  "duration_seconds", "seed", "server", "machine"):
            print(f"{k}: {figures.get(k)}")
        for line in figures.get("problems", []):
            print(f"problem: {line}")
        if not args.dir and not figures["ok"]:
            print(f"work directory kept for inspection: {workdir}")
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
