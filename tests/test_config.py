"""Configuration: every invalid or unknown option -> exit 2 naming the option."""

from __future__ import annotations

import subprocess
import sys

import pytest

from spoolup import config

BASE = {
    "bucket": "my-bucket",
    "spool-dir": "SPOOL",
    "state-dir": "STATE",
}


def write_config(tmp_path, options: dict) -> str:
    from helpers import toml

    values = {k: str(tmp_path / v) if v in ("SPOOL", "STATE") else v for k, v in {**BASE, **options}.items()}
    path = tmp_path / "c.toml"
    path.write_text("".join(f"{k} = {toml(v)}\n" for k, v in values.items()))
    return str(path)


def spoolup(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spoolup", *args], capture_output=True, text=True, timeout=60)


BAD = [
    ("chunk-size", "1MiB", "at least|from 5MiB"),
    ("chunk-size", "6GiB", "from 5MiB"),
    ("chunk-size", "lots", "unit"),
    ("chunk-size", -5, "negative"),
    ("max-object-size", 0, "from 1B"),
    ("max-object-size", "6TiB", "from 1B"),
    ("upload-threads", 0, "from 1 to 256"),
    ("upload-threads", "8", "integer"),
    ("max-pending-uploads", 0, "from 1"),
    ("flush-grace-period", 0, "more than 0"),
    ("flush-grace-period", -1.5, "more than 0"),
    ("flush-grace-period", "soon", "minutes"),
    ("spool-reap", 0, "more than 0"),
    ("format", "xml", "'envelope', 'lines'"),
    ("fsync", "maybe", "true or false"),
    ("compression", "lz4", "gzip"),
    ("compresslevel", 10, "0 to 9"),
    ("storage-class", "PLATINUM", "STANDARD"),
    ("canned-acl", "world-writable", "private"),
    ("server-side-encryption", "rot13", "aws:kms"),
    ("object-key", "logs/{host}", "unknown placeholder"),
    ("object-key", "logs/{path", "not a valid template"),
    ("object-key", "logs/.spoolup{name}", "spoolup's own"),  # (LEDGER rule 9: its ledger is under logs/.spoolup/)
    ("object-key", ".spoolup/ledger/{name}", "spoolup's own"),
    ("object-key-timestamp", "%Y/%m\n", "control characters"),
    ("url", "ftp://example", "http"),
    ("bucket", "Bad_Bucket!", "bucket name"),
    ("metrics-listen", "nowhere", "host:port"),
    ("log-level", "chatty", "debug"),
    ("poll-interval", 0, "more than 0"),
    ("kms-key", "k-1", "server-side-encryption"),
    ("access-key", "AKIA", "secret-key"),
]


@pytest.mark.parametrize("option,value,hint", BAD, ids=[f"{o}={v!r}" for o, v, _ in BAD])
def test_invalid_value_exits_2_naming_the_option(tmp_path, option, value, hint):
    import re

    cfg = write_config(tmp_path, {option: value})
    r = spoolup("check-config", "--no-s3", "--config", cfg)
    assert r.returncode == 2, r.stdout + r.stderr
    named = "secret-key" if option == "access-key" else option
    assert f"'{named}'" in r.stderr
    assert re.search(hint, r.stderr), r.stderr
    # the service refuses the same way
    r = spoolup("run", "--config", cfg)
    assert r.returncode == 2 and f"'{named}'" in r.stderr


def test_unknown_option_exits_2_and_lists_known_ones(tmp_path):
    r = spoolup("run", "--config", write_config(tmp_path, {"chunk_sizes": "5MiB"}))
    assert r.returncode == 2
    assert "'chunk_sizes'" in r.stderr and "unknown option" in r.stderr and "chunk-size" in r.stderr


def test_missing_required_option(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(f'spool-dir = "{tmp_path}/s"\nstate-dir = "{tmp_path}/t"\n')
    r = spoolup("drain", "--config", str(path))
    assert r.returncode == 2 and "'bucket'" in r.stderr and "required" in r.stderr


def test_state_dir_inside_spool_dir_is_refused(tmp_path):
    r = spoolup("run", "--config", write_config(tmp_path, {"state-dir": str(tmp_path / "SPOOL" / "state"),
                                                          "spool-dir": str(tmp_path / "SPOOL")}))
    assert r.returncode == 2 and "'state-dir'" in r.stderr


def test_not_toml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("bucket = [unclosed\n")
    r = spoolup("status", "--config", str(bad))
    assert r.returncode == 2 and "not valid TOML" in r.stderr
    r = spoolup("status", "--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_usage_errors_exit_2():
    assert spoolup().returncode == 2
    assert spoolup("frobnicate").returncode == 2
    assert spoolup("run").returncode == 2  # --config is required
    r = spoolup("--version")
    assert r.returncode == 0 and r.stdout.startswith("spoolup ")


@pytest.mark.parametrize(
    "text,expected",
    [(5, 5), ("5MiB", 5 * 1024**2), ("12MiB", 12 * 1024**2), ("1GiB", 1024**3), ("500kB", 500_000),
     ("500 KiB", 500 * 1024), ("1.5MiB", 1536 * 1024), ("5120GiB", 5120 * 1024**3), ("3b", 3)],
)
def test_sizes(text, expected):
    assert config.parse_size(text) == expected


@pytest.mark.parametrize("text,minutes", [(60, 60.0), (0.5, 0.5), ("30s", 0.5), ("10min", 10.0), ("2h", 120.0),
                                          ("1.5", 1.5)])
def test_durations_are_minutes(text, minutes):
    assert config.parse_minutes(text) == pytest.approx(minutes)


def test_defaults_match_s3_destination(tmp_path):
    cfg = config.load(write_config(tmp_path, {}))
    assert cfg.chunk_size == 5 * 1024**2
    assert cfg.max_object_size == 5120 * 1024**3
    assert cfg.upload_threads == 8
    assert cfg.max_pending_uploads == 32
    assert cfg.flush_grace_period == 60
    assert cfg.compresslevel == 9 and cfg.compression == "none"
    assert cfg.storage_class == "STANDARD" and cfg.canned_acl == ""
    assert cfg.fsync is True and cfg.format == "lines" and cfg.object_key == "{path}"
    assert cfg.spool_reap == 10


def test_s3_style_spellings_are_accepted(tmp_path):
    cfg = config.load(write_config(tmp_path, {"chunk_size": "6MiB", "storage-class": "standard-ia",
                                              "canned-acl": "BUCKET_OWNER_READ", "compression": True}))
    assert cfg.chunk_size == 6 * 1024**2
    assert cfg.storage_class == "STANDARD_IA"
    assert cfg.canned_acl == "bucket-owner-read"
    assert cfg.compression == "gzip" and cfg.key_suffix == ".gz"


def test_secret_is_masked_in_check_config(tmp_path):
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    r = spoolup("check-config", "--no-s3", "--config",
                write_config(tmp_path, {"access-key": "AKIAEXAMPLE", "secret-key": secret}))
    assert r.returncode == 0, r.stderr
    assert secret not in r.stdout + r.stderr
    assert 'secret-key = "********"' in r.stdout
    assert repr(config.load(write_config(tmp_path, {"access-key": "a", "secret-key": secret}))).count(secret) == 0


@pytest.mark.parametrize("which", ["state-into-spool", "spool-into-state"])
def test_dirs_nested_through_a_symlink_are_refused(tmp_path, which):
    """A state-dir that resolves into spool-dir through a symlink (or the reverse) would make
    spoolup ship its own journal and chunk files: paths are compared resolved (issue 10.7)."""
    spool, state = tmp_path / "spool", tmp_path / "state"
    if which == "state-into-spool":
        spool.mkdir()
        (spool / "inner").mkdir()
        (tmp_path / "link").symlink_to(spool / "inner")
        options, option = {"spool-dir": str(spool), "state-dir": str(tmp_path / "link" / "st")}, "'state-dir'"
    else:
        state.mkdir()
        (state / "inner").mkdir()
        (tmp_path / "link").symlink_to(state / "inner")
        options, option = {"spool-dir": str(tmp_path / "link"), "state-dir": str(state)}, "'spool-dir'"
    for command in ("run", "check-config"):
        r = spoolup(command, "--config", write_config(tmp_path, options))
        assert r.returncode == 2, (command, r.returncode, r.stderr)
        assert option in r.stderr and "resolves" in r.stderr, r.stderr
    assert not (tmp_path / "link" / "st").exists()  # refused before anything was created
