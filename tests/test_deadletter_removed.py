"""Dead-letter files deleted by the operator while spoolup runs (issue 18, item 7).

The docs say to delete a dead-letter file after inspecting it.  Deleted while the service
ran, the next bad lines of that spool file went to the deleted inode (its descriptor stays
open in an LRU): the directory held 0 bytes while status counted them.  Now the file is
found gone before the next batch writes to it, a new one is started, and status says how
many bytes were removed; the exactly-once rule of dead letters holds across a crash.
"""

from __future__ import annotations

import pytest

from crashkit import write
from helpers import get, start_running, wait_for
from spoolup.status import human_bytes
from test_envelope import body, env, running_past_a_dead_letter


def bad(tag: str, n: int) -> bytes:
    return b"".join(f"not json {tag} {i}\n".encode() for i in range(n))


def dead_files(sp) -> dict[str, bytes]:
    d = sp.state / "dead-letter"
    return {p.name: p.read_bytes() for p in d.iterdir()} if d.exists() else {}


def test_deleted_dead_letter_file_is_recreated_and_status_says_what_was_removed(make_spoolup, s3):
    sp = make_spoolup(format="envelope")
    path = sp.spool / "x.jsonl"
    first, second = bad("a", 100), bad("b", 100)
    write(path, env("k", "one") + first)
    proc = start_running(sp)
    try:
        wait_for(lambda: sp.status()["dead_letters"]["records"] == 100, 60, what="the first 100 dead letters")
        (name,) = dead_files(sp)
        assert dead_files(sp)[name] == first
        (sp.state / "dead-letter" / name).unlink()  # inspected, cleaned up, as the docs say
        write(path, second + env("k", "two"), "ab")
        st = wait_for(lambda: (s := sp.status())["dead_letters"]["records"] == 200 and s, 60,
                      what="the next 100 dead letters")
        assert dead_files(sp) == {name: second}  # on disk, not in the deleted inode
        dl = st["dead_letters"]
        assert dl["bytes"] == len(first) + len(second) and dl["removed_bytes"] == len(first)
        assert dl["files"][0]["removed_bytes"] == len(first)
        table = sp.cmd("status", check=True).stdout
        assert f"{human_bytes(len(first))} of them removed since (dead-letter files deleted), " \
               f"{human_bytes(len(second))} on disk" in table
        assert "dead-letter file removed while spoolup ran" in sp.log_text()
    finally:
        assert sp.stop(proc) == 0
    # a restart neither cuts nor counts again what is there
    sp.drain(check=True)
    assert dead_files(sp) == {name: second}
    assert sp.status()["dead_letters"]["removed_bytes"] == len(first)
    assert get(s3, sp.bucket, "k") == body("one", "two")


@pytest.mark.parametrize("crash_at", ["after-chunk-sync", "after-batch-commit"])
def test_dead_letters_stay_exactly_once_after_a_deletion_and_a_crash(make_spoolup, s3, crash_at):
    """Deleted while the service runs, then the service dies around the next batch's commit:
    the restart neither loses nor repeats a line of the new file."""
    sp = make_spoolup(format="envelope")
    with running_past_a_dead_letter(sp) as path:
        pass
    (name,) = dead_files(sp)
    proc = start_running(sp)  # the service holds the file's descriptor from here on
    try:
        write(path, b"bad two\n", "ab")
        wait_for(lambda: sp.status()["dead_letters"]["records"] == 2, 60, what="the second dead letter")
    finally:
        assert sp.stop(proc) == 0
    # deleted while stopped: noticed at the start, before the next lines go to a new file
    (sp.state / "dead-letter" / name).unlink()
    write(path, b"bad three\n" + env("k", "two") + b"bad four\n", "ab")
    proc = sp.start(crash_at=crash_at)
    assert proc.wait(60) == -9, sp.log_text()[-3000:]
    sp.drain(check=True)
    assert dead_files(sp) == {name: b"bad three\nbad four\n"}
    st = sp.status()
    assert st["dead_letters"]["records"] == 4 and st["dead_letters"]["removed_bytes"] == len(b"bad one\nbad two\n")
    assert get(s3, sp.bucket, "k") == body("one", "two")


@pytest.mark.parametrize("crash_at", ["after-chunk-sync", "after-batch-commit"])
def test_deleted_while_running_then_crash_keeps_exactly_once(make_spoolup, s3, crash_at):
    sp = make_spoolup(format="envelope")
    with running_past_a_dead_letter(sp) as path:
        (name,) = dead_files(sp)
        (sp.state / "dead-letter" / name).unlink()
        write(path, b"bad two\n", "ab")
        wait_for(lambda: sp.status()["dead_letters"]["records"] == 2, 60, what="the second dead letter")
        assert dead_files(sp) == {name: b"bad two\n"}
    write(path, b"bad three\n" + env("k", "two"), "ab")
    proc = sp.start(crash_at=crash_at)
    assert proc.wait(60) == -9, sp.log_text()[-3000:]
    sp.drain(check=True)
    assert dead_files(sp) == {name: b"bad two\nbad three\n"}
    assert sp.status()["dead_letters"]["removed_bytes"] == len(b"bad one\n")
    assert get(s3, sp.bucket, "k") == body("one", "two")
