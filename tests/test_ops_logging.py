"""Logging: JSON lines or console, by log-format and the terminal; and secrets never
appear anywhere spoolup writes -- logs at debug level, command output, status, the
journal, every file in the state dir, the metrics endpoint -- even when an S3
server echoes the request's credentials back in its error message."""

from __future__ import annotations

import json
import logging
import os
import pty
import re
import subprocess
import sys
import threading
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

import boto3

from helpers import ACCESS_KEY, free_port, list_keys, syslog_lines, wait_for
from spoolup import logs

SIGNATURE = re.compile(rb"Signature\s*[=:]\s*[0-9a-f]{16}", re.I)


class EchoErrorServer:
    """An S3 endpoint that refuses everything and, like some real servers' SignatureDoesNotMatch
    errors, quotes the request's headers (Authorization, X-Amz-Security-Token) in its message."""

    def __init__(self):
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):  # HeadBucket: "no such bucket", so spoolup goes on to CreateBucket
                seen.append(str(self.headers))
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _refuse(self):
                seen.append(str(self.headers))
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = "; ".join(f"{k}: {v}" for k, v in self.headers.items())
                body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SignatureDoesNotMatch</Code>"
                        f"<Message>The request signature we calculated does not match. Request headers: "
                        f"{escape(headers)}</Message><CanonicalRequest>{escape(headers)}</CanonicalRequest>"
                        f"</Error>").encode()
                self.send_response(403)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = _refuse

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_secrets_never_appear_anywhere(make_spoolup, s3):
    secret = f"sEcReT-{uuid.uuid4().hex}"
    token = f"sEsSiOnToKeN-{uuid.uuid4().hex}"
    port = free_port()
    sp = make_spoolup(**{"secret-key": secret, "session-token": token, "log-level": "debug",
                         "object-key": "{name}", "flush-grace-period": "1s", "metrics-listen": f"127.0.0.1:{port}"})
    outputs: list[str] = []

    def run(*args, code=None):
        r = sp.cmd(*args)
        outputs.append(f"$ spoolup {' '.join(args)}\n{r.stdout}\n{r.stderr}")
        if code is not None:
            assert r.returncode == code, outputs[-1]
        return r

    # a healthy service at debug level, and every command around it
    assert "will be created" in run("check-config", code=0).stdout
    (sp.spool / "a.log").write_bytes(syslog_lines(200))
    p = sp.start()
    try:
        wait_for(lambda: "a.log" in list_keys(s3, sp.bucket), 60, what="the object")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            outputs.append(r.read().decode())
        run("status", code=0)
        run("status", "--json", code=0)
    finally:
        assert sp.stop(p) == 0
    run("recover", code=0)
    run("recover", "--dry-run", code=0)
    assert "reachable" in run("check-config", code=0).stdout

    # failing S3: an unreachable endpoint, then a server that echoes the credentials in its errors
    sp.write_config(url=f"http://127.0.0.1:{free_port()}")
    assert "cannot access bucket" in run("check-config", code=1).stderr
    echo = EchoErrorServer()
    try:
        sp.write_config(url=echo.url)
        (sp.spool / "b.log").write_bytes(syslog_lines(50))
        run("drain", "--timeout", "5", code=1)
        run("recover", code=1)
        st = run("status", "--json", code=0)
        run("status", code=0)
    finally:
        echo.close()
    # the test means something: the credentials were sent, and came back in errors that were logged
    assert any(token in h for h in echo.seen) and any("Signature=" in h for h in echo.seen)
    last = json.loads(st.stdout)["last_error"]
    assert last["code"] == "SignatureDoesNotMatch" and "X-Amz-Security-Token: ********" in last["message"]
    assert any("cannot reconcile with S3 yet" in o and "SignatureDoesNotMatch" in o for o in outputs)
    assert any("X-Amz-Security-Token: ********" in o for o in outputs if "spoolup recover" in o)

    written = {f"output {i}": o.encode() for i, o in enumerate(outputs)}
    written["run.log"] = (sp.base / "run.log").read_bytes()
    for path in sp.state.rglob("*"):
        if path.is_file():
            written[str(path)] = path.read_bytes()
    assert any(name.endswith("journal.sqlite") for name in written)
    assert len([n for n in written if "/metrics/" in n]) >= 2
    for name, blob in written.items():
        assert secret.encode() not in blob, f"secret-key in {name}"
        assert token.encode() not in blob, f"session-token in {name}"
        assert not SIGNATURE.search(blob), f"a request signature in {name}"
        assert f"Credential={ACCESS_KEY}".encode() not in blob, f"an Authorization header in {name}"


def test_botocore_debug_output_is_redacted(tmp_path, moto):
    """Even botocore's own debug logging (request headers, canonical request, signature) is
    masked by the redaction processor -- with and without the secrets being configured."""
    token = f"tok-{uuid.uuid4().hex}"
    for configured in (True, False):
        log_file = tmp_path / f"debug-{configured}.log"
        logs.setup(level="debug", fmt="json", secrets=[token] if configured else [], log_file=str(log_file))
        logging.getLogger("botocore").setLevel(logging.DEBUG)
        try:
            client = boto3.client("s3", endpoint_url=moto.url, aws_access_key_id=ACCESS_KEY,
                                  aws_secret_access_key="not-logged-secret", aws_session_token=token,
                                  region_name="us-east-1")
            client.list_buckets()
        finally:
            logging.getLogger("botocore").setLevel(logging.WARNING)
            logs.setup(level="info", fmt="json", log_file=None)
        text = log_file.read_bytes()
        assert b"Authorization" in text and b"x-amz-security-token" in text.lower()  # botocore did log them
        assert token.encode() not in text
        assert b"not-logged-secret" not in text
        assert not SIGNATURE.search(text)
        assert f"Credential={ACCESS_KEY}".encode() not in text


def test_redactor_masks_fields_and_text():
    r = logs.Redactor(["s3kr1t"])
    out = r(None, "info", {"event": "x s3kr1t y", "secret_key": "anything", "headers": {"Authorization": "AWS a:b"},
                           "nested": ["s3kr1t"], "obj": ValueError("has s3kr1t"), "count": 3, "ok": None})
    assert out == {"event": "x ******** y", "secret_key": "********", "headers": {"Authorization": "********"},
                   "nested": ["********"], "obj": "ValueError: has ********", "count": 3, "ok": None}


def test_a_short_secret_is_masked_where_it_stands_alone_a_long_one_everywhere():
    """A one-letter secret (a test setup's) masked inside every word made each log line
    unreadable and showed which letter it was; a real secret is masked inside words too."""
    assert logs.redact_text("bucket b, key b: b", ["b"]) == "bucket ********, key ********: ********"
    assert logs.redact_text("key b/x", ["b"]) == "key b/x"  # (a token of a secret's characters)
    assert logs.redact_text("bucket b-1 failed", ["b"]) == "bucket ********-1 failed"
    assert logs.redact_text("the bucket abc", ["b"]) == "the bucket abc"
    long = "wJalrXUtnFEMI/K7MDENG"
    assert logs.redact_text(f"sig=x{long}y and {long}", [long]) == "sig=x********y and ********"


def _drain_output(sp, *, tty: bool) -> str:
    cmd = [sys.executable, "-m", "spoolup", "drain", "--config", str(sp.config)]
    if not tty:
        return subprocess.run(cmd, capture_output=True, text=True, env=sp.env(), timeout=120).stderr
    leader, follower = pty.openpty()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower, env=sp.env())
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert p.wait(120) == 0
    return b"".join(chunks).decode()


def test_log_format_and_level(make_spoolup):
    sp = make_spoolup(**{"log-format": "auto"})

    def json_lines(text):
        lines = [ln for ln in text.splitlines() if ln.strip()]
        docs = [json.loads(ln) for ln in lines]
        assert all({"event", "level", "timestamp", "process", "pid"} <= d.keys() for d in docs)
        return docs

    # auto: JSON lines when stderr is not a terminal ...
    assert "spoolup running" in [d["event"] for d in json_lines(_drain_output(sp, tty=False))]
    # ... and the console renderer on a terminal
    console = _drain_output(sp, tty=True)
    assert "spoolup running" in console and "[info" in console
    assert not any(ln.lstrip().startswith("{") for ln in console.splitlines())
    sp.write_config(**{"log-format": "console"})
    console = _drain_output(sp, tty=False)
    assert "spoolup running" in console and "[info" in console
    sp.write_config(**{"log-format": "json", "log-level": "warning"})
    assert json_lines(_drain_output(sp, tty=False)) == []
    sp.write_config(**{"log-format": "json", "log-level": "debug"})
    (sp.spool / "one.log").write_bytes(b"one record\n")  # opening and closing its object are debug events
    assert "debug" in {d["level"] for d in json_lines(_drain_output(sp, tty=False))}
