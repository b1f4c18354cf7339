"""Faults stay where they start, spool side (issue 10, "the rule to build" and item 4).

One spool entry that spoolup cannot read, delete or name -- a file of mode 000, a
directory where the reap's rename fails, a journaled path replaced by a FIFO or by a
symlink loop -- is quarantined: not read, its bytes left in the spool, listed in
`spoolup status` (human and JSON: path, reason, since, what to do) and counted in the
metrics from the same journal rows, retried on a backoff so that it resumes by itself,
with one log line per transition.  Every other file keeps shipping, byte for byte.

spoolup runs here as an unprivileged user without capabilities (tests/helpers.py
TestUser), as the shipped systemd unit runs it: as root, mode 000 means nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from helpers import content_of, free_port, list_keys, syslog_lines, wait_for
from test_ops_metrics import scrape
from test_ops_status import validate

GOOD = {"g1.log": syslog_lines(20, host="g1"), "g2.log": syslog_lines(20, host="g2")}  # 2 x ~1,400 bytes
OPTIONS = {"object-key": "{path}", "flush-grace-period": "1s", "quarantine-retry": 1.0}


def write_good(sp, suffix: bytes = b"") -> dict[str, bytes]:
    out = {}
    for name, data in GOOD.items():
        with open(sp.spool / name, "ab") as f:
            f.write(data + suffix)
        out[name] = (sp.spool / name).read_bytes()
    return out


def assert_good_shipped(s3, sp, good: dict[str, bytes]) -> None:
    for name, data in good.items():
        assert content_of(s3, sp.bucket, name) == data, name


def drain(sp, timeout: float = 60):
    try:
        return sp.drain(timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"drain blocked for {timeout}s\n{(e.stderr or b'')[-3000:]}") from None


def quarantined(sp) -> list[dict]:
    st = sp.status()
    validate(st)
    return st["sources_needing_attention"]


def entry(sp, path: str) -> dict:
    found = [s for s in quarantined(sp) if s["path"] == path]
    assert found, (path, quarantined(sp))
    return found[0]


def log_events(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def check_entry(e: dict, reason: str) -> None:
    assert e["quarantine"] is not None, e
    q = e["quarantine"]
    assert q["reason"] == reason, e
    assert q["since"] <= time.time() and q["next_retry"] >= q["since"] and q["attempts"] >= 1, e
    assert q["what_to_do"], e


def test_unreadable_file(make_user_spoolup, s3):
    sp = make_user_spoolup(**OPTIONS)
    bad = syslog_lines(30, host="bad")
    (sp.spool / "bad.log").write_bytes(bad)
    os.chmod(sp.spool / "bad.log", 0)
    good = write_good(sp)
    r = drain(sp)
    assert_good_shipped(s3, sp, good)
    assert "bad.log" not in list_keys(s3, sp.bucket)
    assert r.returncode == 1 and "quarantined" in r.stderr, (r.returncode, r.stderr[-2000:])
    e = entry(sp, "bad.log")
    check_entry(e, "unreadable")
    assert (sp.spool / "bad.log").read_bytes() == bad  # untouched
    os.chmod(sp.spool / "bad.log", 0o640)
    assert drain(sp).returncode == 0
    assert content_of(s3, sp.bucket, "bad.log") == bad
    assert quarantined(sp) == []


def test_directory_where_the_reap_rename_fails(make_user_spoolup, s3):
    """An immutable directory (chattr +i, ext4): rename and unlink there fail with EPERM."""
    sp = make_user_spoolup(**OPTIONS, **{"spool-reap": "1s"})
    locked = sp.spool / "locked"
    locked.mkdir()
    os.chmod(locked, 0o2770)  # as syslog-ng's dir-perm() would make it: spoolup's group may delete in it
    data = syslog_lines(25, host="locked")
    (locked / "a.log").write_bytes(data)
    good = write_good(sp)
    past = time.time() - 60
    for p in (locked / "a.log", *(sp.spool / n for n in GOOD)):
        os.utime(p, (past, past))
    subprocess.run(["chattr", "+i", str(locked)], check=True)
    try:
        for attempt in range(2):  # base: exit 1, at every start
            r = drain(sp)
            assert_good_shipped(s3, sp, good)
            assert content_of(s3, sp.bucket, "locked/a.log") == data
            assert r.returncode == 0, (attempt, r.returncode, r.stderr[-2000:])  # everything is shipped
            for name in GOOD:
                assert not (sp.spool / name).exists(), "the good files are reaped"
            e = entry(sp, "locked/a.log")
            check_entry(e, "cannot-delete")
            assert "Operation not permitted" in e["error"], e  # EPERM: the immutable flag
            assert (locked / "a.log").read_bytes() == data
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    r = drain(sp)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (locked / "a.log").exists(), r.stderr[-3000:]
    assert quarantined(sp) == []


@pytest.mark.parametrize("replacement", ["fifo", "symlink-loop"])
def test_journaled_path_replaced(make_user_spoolup, s3, replacement):
    sp = make_user_spoolup(**OPTIONS)
    first = syslog_lines(10, host="x")
    (sp.spool / "x.log").write_bytes(first)
    write_good(sp)
    assert drain(sp).returncode == 0
    assert content_of(s3, sp.bucket, "x.log") == first  # x.log is journaled (shipped, not reaped)
    (sp.spool / "x.log").unlink()
    if replacement == "fifo":
        os.mkfifo(sp.spool / "x.log")
        os.chown(sp.spool / "x.log", 0, sp.user.gid)
        os.chmod(sp.spool / "x.log", 0o660)
    else:
        os.symlink("x.log", sp.spool / "x.log")  # a loop: ELOOP
    good = write_good(sp, suffix=b"more\n")
    r = drain(sp)  # base: blocks for good in open() (FIFO), exit 1 with ELOOP (loop)
    assert_good_shipped(s3, sp, good)
    assert content_of(s3, sp.bucket, "x.log") == first
    e = entry(sp, "x.log")
    check_entry(e, "not-a-regular-file")
    assert r.returncode == 1, r.stderr[-2000:]
    (sp.spool / "x.log").unlink()
    assert drain(sp).returncode == 0
    assert quarantined(sp) == []


def test_non_utf8_file_name_ships_under_a_defined_key(make_user_spoolup, s3):
    """A name that is not UTF-8 is journaled as bytes; its key shows each byte that is not
    UTF-8 as the text \\xNN (as format-json escapes message bytes)."""
    sp = make_user_spoolup(**OPTIONS)
    data = syslog_lines(15, host="odd")
    name = b"bad-\xff\xfe.log"
    with open(os.path.join(os.fsencode(sp.spool), name), "wb") as f:
        f.write(data)
    good = write_good(sp)
    r = drain(sp)  # base: UnicodeEncodeError in the journal insert, exit 1
    assert r.returncode == 0, r.stderr[-2000:]
    assert_good_shipped(s3, sp, good)
    assert content_of(s3, sp.bucket, "bad-\\xff\\xfe.log") == data
    assert quarantined(sp) == []
    # a later file gets the same rule; the journaled name still matches its file
    with open(os.path.join(os.fsencode(sp.spool), name), "ab") as f:
        f.write(b"later\n")
    assert drain(sp).returncode == 0
    assert content_of(s3, sp.bucket, "bad-\\xff\\xfe.log") == data + b"later\n"


def test_quarantined_file_resumes_by_itself_one_line_per_transition(make_user_spoolup, s3):
    """The running service: the entry is in status (human and JSON) and in the metrics, read
    from the same journal rows; it is retried on a backoff, resumes by itself once the cause
    is gone, and logs `spool entry quarantined` and `spool entry resumed` once each."""
    port = free_port()
    sp = make_user_spoolup(**OPTIONS, **{"metrics-listen": f"127.0.0.1:{port}"})
    bad = syslog_lines(30, host="bad")
    (sp.spool / "bad.log").write_bytes(bad)
    os.chmod(sp.spool / "bad.log", 0)
    good = write_good(sp)
    p = sp.start()
    try:
        wait_for(lambda: all(content_of(s3, sp.bucket, n) == d for n, d in good.items()), 60, what="good files")
        e = wait_for(lambda: [s for s in quarantined(sp) if s["quarantine"] and s["quarantine"]["attempts"] >= 3],
                     60, what="three attempts")[0]
        assert e["path"] == "bad.log" and e["quarantine"]["reason"] == "unreadable"
        m = scrape(port)
        assert m["spoolup_sources_needing_attention"] == len(quarantined(sp)) == 1
        assert m['spoolup_quarantined{reason="unreadable"}'] == 1
        human = sp.cmd("status", check=True).stdout
        assert "bad.log" in human and "unreadable" in human and e["quarantine"]["what_to_do"] in human
        assert p.poll() is None
        os.chmod(sp.spool / "bad.log", 0o640)
        wait_for(lambda: content_of(s3, sp.bucket, "bad.log") == bad, 60, what="bad.log shipped after the fix")
        assert quarantined(sp) == []
        assert scrape(port)["spoolup_sources_needing_attention"] == 0
    finally:
        assert sp.stop(p) == 0
    events = [e for e in log_events(sp.log_text()) if e.get("path") == "bad.log"]
    names = [e["event"] for e in events if e["event"].startswith("spool entry")]
    assert names == ["spool entry quarantined", "spool entry resumed"], names


def test_status_metrics_and_log_agree_after_truncation_in_place(make_spoolup, s3):
    """Issue 14.3: after `: > d.log` status (human and JSON), the metric and the log read the
    same facts, and no message claims the file was deleted or its inode reused."""
    port = free_port()
    sp = make_spoolup(**OPTIONS, **{"metrics-listen": f"127.0.0.1:{port}"})
    (sp.spool / "d.log").write_bytes(syslog_lines(50, host="d"))
    ino = (sp.spool / "d.log").stat().st_ino
    p = sp.start()
    try:
        wait_for(lambda: "d.log" in list_keys(s3, sp.bucket), 60, what="d.log shipped")
        with open(sp.spool / "d.log", "r+b") as f:
            f.truncate(0)  # `: > d.log`
        time.sleep(3)  # several scans and polls
        assert (sp.spool / "d.log").stat().st_ino == ino
        st = sp.status()
        validate(st)
        attention = st["sources_needing_attention"]
        m = scrape(port)
        assert m["spoolup_sources_needing_attention"] == len(attention)
        human = sp.cmd("status", check=True).stdout
        for s in attention:
            assert s["path"] in human and s["quarantine"]["reason"] in human
            assert st["last_error"] is not None
    finally:
        sp.stop(p)
    text = sp.log_text()
    assert "different file" not in text and "was deleted" not in text, text[-3000:]
