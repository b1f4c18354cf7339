"""The command line's rough edges (issue 14, items 8 and 9): what a new user meets
first, each checked through the real `spoolup` command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from helpers import syslog_lines, wait_for

MB = 1_000_000


def spoolup(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spoolup", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, **kw)


def test_help_and_invalid_command_do_not_show_the_internal_upload_command():
    r = spoolup("--help")
    assert r.returncode == 0
    assert "_upload" not in r.stdout and "SUPPRESS" not in r.stdout
    r = spoolup("bogus")
    assert r.returncode == 2
    assert "invalid choice: 'bogus'" in r.stderr and "_upload" not in r.stderr


def test_status_into_a_closed_pipe_is_quiet_and_exits_0(make_spoolup):
    """`spoolup status | head -1`: the reader leaves before spoolup writes."""
    sp = make_spoolup()
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: every write gets EPIPE
    try:
        r = subprocess.run([sys.executable, "-m", "spoolup", "status", "--config", str(sp.config)],
                           stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def test_unknown_option_says_what_was_meant_not_every_name(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'bucket = "my-bucket"\nspool-dir = "{tmp_path}/s"\nstate-dir = "{tmp_path}/t"\n'
                   'max_object_sise = "1GiB"\n')
    r = spoolup("check-config", "--no-s3", "--config", str(cfg))
    assert r.returncode == 2
    # the closest first (max-object-age, also close, may follow)
    assert "option 'max_object_sise': unknown option; did you mean 'max-object-size'" in r.stderr
    assert "storage-class" not in r.stderr  # not a list of every option


def test_unknown_command_line_option_says_what_was_meant(make_spoolup):
    sp = make_spoolup()
    r = spoolup("status", "--jsn", "--config", str(sp.config))
    assert r.returncode == 2
    assert "unrecognized arguments: --jsn" in r.stderr and "spoolup: --jsn: did you mean --json?" in r.stderr
    r = spoolup("recover", "--dryrun", "--config", str(sp.config))
    assert r.returncode == 2 and "did you mean --dry-run?" in r.stderr


def test_config_defaults_to_spoolup_config_then_etc(make_spoolup):
    sp = make_spoolup()
    r = spoolup("status", "--json", env={"SPOOLUP_CONFIG": str(sp.config)})
    assert r.returncode == 0, r.stderr
    assert '"bucket": "%s"' % sp.bucket in r.stdout
    env = {k: v for k, v in os.environ.items() if k != "SPOOLUP_CONFIG"}
    r = subprocess.run([sys.executable, "-m", "spoolup", "status", "--help"], capture_output=True, text=True,
                       timeout=60, env=env)
    assert "/etc/spoolup/spoolup.toml" in r.stdout and "SPOOLUP_CONFIG" in r.stdout
    if not os.path.exists("/etc/spoolup/spoolup.toml"):
        r = subprocess.run([sys.executable, "-m", "spoolup", "status"], capture_output=True, text=True,
                           timeout=60, env=env)
        assert r.returncode == 2 and "config file /etc/spoolup/spoolup.toml does not exist" in r.stderr


def test_check_config_prints_values_as_written(make_spoolup):
    sp = make_spoolup(**{"max-object-size": "5GiB", "flush-grace-period": "20s", "chunk-size": 6291456})
    r = sp.cmd("check-config", "--no-s3", check=True)
    lines = r.stdout.splitlines()
    assert 'max-object-size = "5GiB"' in lines
    assert 'flush-grace-period = "20s"' in lines
    assert "chunk-size = 6291456" in lines  # as written: a number stays a number
    assert 'compresslevel = 9' in lines  # a default, as the reference shows it


def test_status_before_the_first_run_counts_the_spool_as_backlog(make_spoolup):
    sp = make_spoolup()
    data = {"a.log": syslog_lines(200_000, width=200), "sub/b.log": syslog_lines(50_000)}
    for name, content in data.items():
        (sp.spool / name).parent.mkdir(parents=True, exist_ok=True)
        (sp.spool / name).write_bytes(content)
    total = sum(len(c) for c in data.values())
    assert total > 40 * MB
    st = sp.status()
    assert st["backlog_bytes"] == total
    assert {s["path"]: s["backlog_bytes"] for s in st["sources_with_backlog"]} == \
        {name: len(c) for name, c in data.items()}
    assert st["sources_needing_attention"] == []
    table = sp.cmd("status", check=True).stdout
    assert "spool files with a backlog (2):" in table
    assert not sp.state.exists()  # status created nothing


def test_metrics_port_in_use_fails_before_creating_the_state_dir(make_spoolup):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sp = make_spoolup(**{"metrics-listen": f"127.0.0.1:{port}"})
        r = sp.cmd("run", timeout=60)
    assert r.returncode == 1
    assert f'cannot serve metrics on metrics-listen = "127.0.0.1:{port}"' in r.stderr
    assert not sp.state.exists()


def test_check_config_warns_about_a_missing_or_empty_spool_dir(make_spoolup):
    sp = make_spoolup()
    sp.spool.rmdir()
    r = sp.cmd("check-config", "--no-s3", check=True)
    assert f"# warning: spool-dir {sp.spool} does not exist" in r.stdout
    sp.spool.mkdir()
    (sp.spool / "empty-subdir").mkdir()
    r = sp.cmd("check-config", "--no-s3", check=True)
    assert f"# warning: spool-dir {sp.spool} holds no files yet" in r.stdout
    (sp.spool / "a.log").write_bytes(b"")
    assert "# warning: spool-dir" not in sp.cmd("check-config", "--no-s3", check=True).stdout


def test_run_warns_when_it_creates_the_spool_dir(make_spoolup):
    sp = make_spoolup()
    sp.spool.rmdir()
    p = sp.start()
    try:
        wait_for(lambda: '"spoolup running"' in sp.log_text(), 60, what="the service running")
    finally:
        assert sp.stop(p) == 0
    assert sp.spool.is_dir()
    warned = [ln for ln in sp.log_text().splitlines() if "spool dir did not exist; created it" in ln]
    assert len(warned) == 1 and '"level": "warning"' in warned[0] and str(sp.spool) in warned[0]
