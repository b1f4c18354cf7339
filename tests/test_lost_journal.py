"""A lost journal never re-ships (issue 11, item 3; issue 22 item 2).

The state dir knows it was used before (state-id, chunk files, dead letters, the
upload process's lock) and refuses to start a new journal on its own: exit 1 with the
way forward (`recover --from-bucket`), the bucket left as it was.  A journal whose
write-ahead log was deleted after a kill -9 (whether SQLite's -shm index still shows the
missing frames or is gone as well, and the state dir's mark of claims is ahead) is no
longer refused: the bucket's ledger settles it, and nothing is shipped twice.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from crashkit import assert_exact, journal_path, spoolup_cmd, wait_done, write
from helpers import list_keys, syslog_lines, wait_for
from ledgerkit import assert_recorded, exactly_once

SMALL = syslog_lines(500, host="lost")
COMMANDS = (("drain",), ("recover",), ("recover", "--dry-run"), ("run",))


def running_after_shipping(make_spoolup, s3):
    """spoolup run that shipped a.log completely and journaled it; returns (sp, process)."""
    sp = make_spoolup(**{"object-key": "{name}", "shutdown-timeout": 5, "flush-grace-period": "1s"})
    write(sp.spool / "a.log", SMALL)
    p = sp.start()
    wait_for(lambda: list_keys(s3, sp.bucket) == ["a.log"], 60, what="a.log shipped")
    wait_done(sp, 60)
    return sp, p


def identity_of(sp) -> dict:
    path = sp.state / "state-id"  # (written when spoolup first opens the journal)
    return json.loads(path.read_text()) if path.exists() else {}


def assert_refused(sp, s3, *expected: str) -> None:
    for command in COMMANDS:
        r = spoolup_cmd(sp, *command, timeout=60)
        out = r.stdout + r.stderr
        assert r.returncode == 1, f"{command}: exit {r.returncode}\n{out[-3000:]}"
        for text in expected:
            assert text in out, f"{command}: {text!r} not in\n{out[-3000:]}"
        assert "`spoolup recover --from-bucket`" in out and "restore the whole state dir" in out, out[-3000:]
        assert list_keys(s3, sp.bucket) == ["a.log"], f"{command} shipped again"
    assert_exact(s3, sp.bucket, {"a.log": SMALL})  # the bucket is as it was: the bytes, no upload left


def test_journal_deleted_after_everything_shipped_is_refused(make_spoolup, s3):
    sp, p = running_after_shipping(make_spoolup, s3)
    assert sp.stop(p) == 0
    identity = identity_of(sp)
    for name in ("journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm"):
        (sp.state / name).unlink(missing_ok=True)
    assert_refused(sp, s3, f"the state dir {sp.state} was used by spoolup before",
                   f"state-id names journal {identity.get('journal_id')}", "will not start a new journal over it on its own")
    assert identity["claims"] == 1


def kill_service(p) -> None:
    """SIGKILL spoolup run and its upload process at the same instant: both are stopped
    first, so the upload process cannot close the journal (a clean close checkpoints it)."""
    children = [int(c) for c in Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()]
    assert children, "the upload process is running"
    for pid in (*children, p.pid):
        os.kill(pid, signal.SIGSTOP)
    for pid in (p.pid, *children):
        os.kill(pid, signal.SIGKILL)
    p.wait(30)


@pytest.mark.parametrize("deleted", [("-wal",), ("-wal", "-shm")], ids=["wal", "wal-and-shm"])
def test_write_ahead_log_deleted_after_kill_is_settled_by_the_bucket(make_spoolup, s3, deleted):
    sp, p = running_after_shipping(make_spoolup, s3)
    if (sp.state / "state-id").exists():  # (spoolup writes it when it opens the journal)
        wait_for(lambda: identity_of(sp).get("claims") == 1, 30, what="the state dir's mark of the claim")
    kill_service(p)
    journal = journal_path(sp)
    assert Path(f"{journal}-wal").stat().st_size > 0, "the commits are in the write-ahead log"
    assert_recorded(sp, s3)  # (by spoolup's own segment)
    for suffix in deleted:
        Path(f"{journal}{suffix}").unlink()
    r = spoolup_cmd(sp, "recover", "--dry-run", timeout=60)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    if deleted == ("-wal",):
        assert "the journal's write-ahead log journal.sqlite-wal is gone" in out and "commit frame(s) in it" in out
    else:
        assert f"the journal {journal} is behind this state dir" in out
        assert "records 0 claimed object index(es), the state dir saw 1" in out
    assert "bring the journal forward from the bucket's ledger: 1 object(s)" in out, out[-3000:]
    more = syslog_lines(200, host="lost", start=500)
    write(sp.spool / "a.log", more, "ab")
    r = spoolup_cmd(sp, "drain", timeout=120)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert exactly_once(s3, sp.bucket, {"a.log": SMALL + more})["a.log"] == ["a.log", "a.log-1"]
