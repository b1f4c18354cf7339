"""Files and permissions, the state-dir lock, check-config against a real S3 endpoint,
--version, and the systemd unit (parsed, verified, and its Type=notify protocol)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from helpers import SECRET_KEY, free_port, syslog_lines, wait_for
from spoolup import __version__, config

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "contrib" / "systemd" / "spoolup.service"


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_state_dir_journal_and_chunk_files_are_private(make_spoolup):
    sp = make_spoolup(**{"object-key": "{name}", "metrics-listen": f"127.0.0.1:{free_port()}"})
    sp.state.mkdir(mode=0o755)  # an existing state dir with loose permissions is tightened
    os.chmod(sp.state, 0o755)
    (sp.spool / "open.log").write_bytes(syslog_lines(100))  # stays an open object: its chunk file exists
    p = sp.start()
    try:
        wait_for(lambda: any((sp.state / "chunks").glob("*")), 60, what="a chunk file")
        wait_for(lambda: len(list((sp.state / "metrics").glob("*.db"))) >= 2, 60, what="metrics of both processes")
        assert stat.S_IMODE(sp.state.stat().st_mode) == 0o700
        assert stat.S_IMODE((sp.state / "journal.sqlite").stat().st_mode) == 0o600
        files = [p for p in sp.state.rglob("*")]
        assert {"chunks", "journal.sqlite", "journal.sqlite-wal", "spoolup.lock"} <= {f.name for f in files}
        loose = [str(f) for f in files if not private(f)]
        assert loose == [], "readable by group or others"
    finally:
        assert sp.stop(p) == 0


def test_a_second_spoolup_on_the_same_state_dir_is_refused(make_spoolup):
    sp = make_spoolup()
    p = sp.start()
    try:
        wait_for(lambda: sp.status()["service"]["processes"].get("upload", {}).get("alive"), 60, what="the service")
        assert (sp.state / "spoolup.lock").read_text().strip() == str(p.pid)
        for command in ("run", "recover"):
            r = sp.cmd(command, timeout=60)
            assert r.returncode == 1, (command, r.stderr)
            assert f"state-dir {sp.state} is in use by process {p.pid}" in r.stderr
            assert "Stop it first, or give this instance its own state-dir." in r.stderr
        assert p.poll() is None, "the running instance is not disturbed"
    finally:
        assert sp.stop(p) == 0


def test_a_stale_lock_file_does_not_block_the_next_start(make_spoolup):
    sp = make_spoolup()
    p = sp.start()
    wait_for(lambda: (sp.state / "spoolup.lock").exists() and (sp.state / "spoolup.lock").read_text().strip(),
             60, what="the lock")
    wait_for(lambda: sp.status()["service"]["processes"].get("ingest"), 60, what="a heartbeat")
    p.kill()  # kill -9: the lock file stays behind with a dead pid
    p.wait(30)
    assert (sp.state / "spoolup.lock").read_text().strip() == str(p.pid)
    again = sp.start()
    try:
        wait_for(lambda: (sp.state / "spoolup.lock").read_text().strip() == str(again.pid), 60, what="the new lock")
        assert again.poll() is None
    finally:
        assert sp.stop(again) == 0


# ---------------------------------------------------------------------------
# --version and check-config


def test_version():
    r = subprocess.run([sys.executable, "-m", "spoolup", "--version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == f"spoolup {__version__}"


def test_check_config_reachable_bucket(make_spoolup, s3):
    sp = make_spoolup(**{"session-token": "a-session-token-value"})
    s3.create_bucket(Bucket=sp.bucket)
    r = sp.cmd("check-config")
    assert r.returncode == 0, r.stderr
    assert f"# bucket {sp.bucket}: reachable" in r.stdout
    assert SECRET_KEY not in r.stdout + r.stderr and "a-session-token-value" not in r.stdout + r.stderr
    assert 'secret-key = "********"' in r.stdout and 'session-token = "********"' in r.stdout
    # the effective configuration, every option, parses back to the same values
    shown = tomllib.loads("\n".join(ln for ln in r.stdout.splitlines() if not ln.startswith("#")))
    assert set(shown) == {o.name for o in config.OPTIONS}
    assert shown["bucket"] == sp.bucket and shown["upload-threads"] == 8


def test_check_config_missing_bucket_will_be_created(make_spoolup, s3):
    sp = make_spoolup()
    r = sp.cmd("check-config")
    assert r.returncode == 0, r.stderr
    assert f"# bucket {sp.bucket}: does not exist yet; it will be created when spoolup starts" in r.stdout


def test_check_config_unreachable_endpoint_exits_1(make_spoolup):
    url = f"http://127.0.0.1:{free_port()}"
    sp = make_spoolup(url=url)
    r = sp.cmd("check-config")
    assert r.returncode == 1
    assert r.stderr.startswith(f"spoolup: cannot access bucket {sp.bucket}: ")
    assert "EndpointConnectionError" in r.stderr and url in r.stderr
    assert sp.cmd("check-config", "--no-s3").returncode == 0


@pytest.mark.parametrize("wrong", ["access-key", "secret-key"])
def test_check_config_wrong_credentials_says_what_s3_says(make_spoolup, checking_moto, wrong):
    """Issue 14, item 7: a HEAD has no body, so its 403 said only "Forbidden"; S3's own code
    comes from the GET that follows it."""
    good = {"access-key": checking_moto.access_key, "secret-key": checking_moto.secret_key}
    sp = make_spoolup(url=checking_moto.url, **good)
    assert f"# bucket {sp.bucket}: does not exist yet" in sp.cmd("check-config", check=True).stdout
    sp.write_config(**{wrong: "wrong-" + good[wrong]})
    code, words = {"access-key": ("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist"),
                   "secret-key": ("SignatureDoesNotMatch", "The request signature we calculated does not match")}[wrong]
    r = sp.cmd("check-config")
    assert r.returncode == 1
    assert r.stderr.startswith(f"spoolup: cannot access bucket {sp.bucket}: HeadBucket: {code}: {words}"), r.stderr
    assert "Forbidden" not in r.stderr and r.stderr.count("HeadBucket") == 1


def test_check_config_bad_option_exits_2(make_spoolup):
    sp = make_spoolup(**{"upload-threads": 0})
    r = sp.cmd("check-config")
    assert r.returncode == 2
    assert "option 'upload-threads'" in r.stderr


# ---------------------------------------------------------------------------
# systemd


def unit_directives(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            current = sections.setdefault(m.group(1), {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a unit file line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_directives():
    unit = unit_directives(UNIT.read_text())
    svc = {k: v[-1] for k, v in unit["Service"].items()}
    example = tomllib.loads((ROOT / "contrib" / "spoolup.toml.example").read_text())
    conf = "/etc/spoolup/spoolup.toml"
    assert svc["Type"] == "notify" and svc["NotifyAccess"] == "main"
    assert re.fullmatch(rf"-/\S+/spoolup recover --config {conf}", svc["ExecStartPre"])  # advisory: see the unit
    assert re.fullmatch(rf"/\S+/spoolup run --config {conf}", svc["ExecStart"])
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["Restart"] == "on-failure" and svc["RestartPreventExitStatus"] == "2"
    assert svc["KillMode"] == "mixed" and svc["KillSignal"] == "SIGTERM"
    stop = int(svc["TimeoutStopSec"].rstrip("s"))
    assert stop > config.OPTIONS_BY_NAME["shutdown-timeout"].default + 5  # the main process waits that long
    assert svc["NoNewPrivileges"] == "yes" and svc["ProtectSystem"] == "strict"
    assert svc["PrivateTmp"] == "yes" and svc["ProtectHome"] == "yes"
    # CAP_LEASE only (issue 10.9: the lease check before a deletion needs it as a non-owner)
    assert svc["CapabilityBoundingSet"] == "CAP_LEASE" and svc["AmbientCapabilities"] == "CAP_LEASE"
    assert set(svc["ReadWritePaths"].split()) == {example["spool-dir"], example["state-dir"]}
    assert svc["StateDirectoryMode"] == "0700" and svc["UMask"] == "0077"
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path):
    # verify checks that the executables exist: point them at this spoolup
    spoolup = shutil.which("spoolup") or sys.executable
    unit = tmp_path / "spoolup.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/spoolup", spoolup))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120)
    ours = [ln for ln in (r.stdout + r.stderr).splitlines() if "spoolup.service" in ln]
    assert r.returncode == 0 and ours == [], r.stdout + r.stderr


def test_type_notify_ready_and_stopping(make_spoolup, monkeypatch, tmp_path):
    path = Path(f"/tmp/spoolup-notify-{os.getpid()}-{free_port()}.sock")  # short: AF_UNIX paths are limited
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(60)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        sp = make_spoolup()
        p = sp.start()
        assert sock.recv(4096) == b"READY=1"
        assert (sp.state / "journal.sqlite").exists()  # ready after the journal and recovery
        p.send_signal(signal.SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1"
        assert p.wait(60) == 0
    finally:
        sock.close()
        path.unlink(missing_ok=True)
