"""Values S3 can never accept are refused, never retried forever (issue 18, item 6, first half).

A newline (any control character) in a metadata name, a tag or the content type passed the
option's regular expression ("$" matches before a trailing newline; "\\s*" matched one), and
botocore then refused every attempt to build the request ("Invalid header name
b'x-amz-meta-team\\n'"), which the upload process retried as if it were transient.  Now the
option is refused (exit 2 naming it, in `run` and `check-config`), and whatever request botocore
refuses to build is a permanent error (the object is quarantined, retried only slowly).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers import toml
from spoolup import config, protocol
from spoolup.s3 import S3, S3Error

NEWLINES = [
    ("metadata", {"team\n": "web"}),
    ("metadata", {"team": "web\n"}),
    ("tags", {"team\n": "web"}),
    ("tags", {"team": "web\n"}),
    ("tags", {"team": "we\x01b"}),
    ("content-type", "text/plain\n"),
    ("content-type", "text/plain;\ncharset=utf-8"),
    ("content-type", "text/plain; charset=\"utf-8\n\""),
    ("kms-key", "alias/logs\n"),
    ("region", "eu-west-1\n"),
    ("url", "http://127.0.0.1:9000/\nx"),
]


def _run(tmp_path, command: str, option: str, value) -> subprocess.CompletedProcess:
    options = {"bucket": "my-bucket", "spool-dir": str(tmp_path / "spool"), "state-dir": str(tmp_path / "state"),
               option: value}
    if option == "kms-key":
        options["server-side-encryption"] = "aws:kms"
    path = tmp_path / "c.toml"
    path.write_text("".join(f"{k} = {toml(v)}\n" for k, v in options.items()))
    args = ["check-config", "--no-s3"] if command == "check-config" else [command]
    return subprocess.run([sys.executable, "-m", "spoolup", *args, "--config", str(path)], capture_output=True,
                          text=True, timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")})


@pytest.mark.parametrize("option,value", NEWLINES, ids=[f"{o}={v!r}" for o, v in NEWLINES])
def test_control_characters_exit_2_naming_the_option(tmp_path, option, value):
    for command in ("check-config", "run"):
        r = _run(tmp_path, command, option, value)
        assert r.returncode == 2, (command, r.stdout + r.stderr)
        assert f"option '{option}'" in r.stderr, r.stderr


def test_secret_with_a_newline_exits_2_without_showing_it(tmp_path):
    secret = "s3cr3t-VALUE\n"
    for command in ("check-config", "run"):
        options = {"bucket": "my-bucket", "spool-dir": str(tmp_path / "spool"), "state-dir": str(tmp_path / "state"),
                   "access-key": "AKIA", "secret-key": secret}
        path = tmp_path / "c.toml"
        path.write_text("".join(f"{k} = {toml(v)}\n" for k, v in options.items()))
        args = ["check-config", "--no-s3"] if command == "check-config" else [command]
        r = subprocess.run([sys.executable, "-m", "spoolup", *args, "--config", str(path)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 2 and "option 'secret-key'" in r.stderr, r.stderr
        assert "s3cr3t" not in r.stdout + r.stderr


def test_valid_values_still_pass(tmp_path):
    cfg = config.from_mapping({"bucket": "my-bucket", "spool-dir": str(tmp_path / "s"), "state-dir": str(tmp_path / "t"),
                               "metadata": {"team": "web", "a.b-c_d": "x y"}, "tags": {"retention": "90d", "k": ""},
                               "content-type": "text/plain; charset=\"utf-8\"", "region": "eu-west-1"})
    assert cfg.metadata == {"team": "web", "a.b-c_d": "x y"} and cfg.tags == {"retention": "90d", "k": ""}
    assert cfg.content_type == "text/plain; charset=\"utf-8\""


# ---------------------------------------------------------------------------
# a request botocore refuses to build is permanent, whatever the value that got there


# botocore refuses them before any request is sent: no server sees them, so one is enough
@pytest.mark.s3_servers("moto")
def test_requests_botocore_cannot_send_are_permanent_errors(tmp_path, s3server, s3, bucket):
    s3.create_bucket(Bucket=bucket)
    cfg = config.from_mapping({"bucket": bucket, "url": s3server.url, "access-key": s3server.access_key,
                               "secret-key": s3server.secret_key, "spool-dir": str(tmp_path / "s"),
                               "state-dir": str(tmp_path / "t")})
    client = S3(cfg)
    try:
        refused = [
            lambda: client.create_multipart("k", {"team\n": "web"}, {}),  # Invalid header name
            lambda: client.create_multipart("k", {"team": "web\n"}, {}),  # Invalid header value
            lambda: client.create_multipart("k", {}, {"ContentType": "text/plain\n"}),
            lambda: client.create_multipart("k", {}, {"Tagging": "team=web\n"}),
            lambda: client.create_multipart("k", {"team": "w\u00e9b"}, {}),  # ParamValidationError
        ]
        for call in refused:
            with pytest.raises(S3Error) as e:
                call()
            assert protocol.permanent(e.value), (e.value.code, str(e.value))
            assert e.value.code == "RequestNotSendable" and e.value.op == "CreateMultipartUpload"
        # nothing reached the bucket, and a transport failure stays transient
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    finally:
        client.close()
    down = S3(config.replace(cfg, url="http://127.0.0.1:9", s3_timeout=1.0))
    try:
        with pytest.raises(S3Error) as e:
            down.create_multipart("k", {"team": "web"}, {})
        assert not protocol.permanent(e.value), e.value.code
    finally:
        down.close()
