"""A small loopback HTTP proxy between spoolup and the S3 endpoint (moto) that
injects faults and counts requests.  Threads and the standard library only.

spoolup is configured with `url = proxy.url`; the proxy forwards each request
to the upstream endpoint unchanged (SigV4 signs the Host header, which is kept)
unless a rule matches it.  Rules match the S3 operation (derived from method,
path and query string) and optionally the key, for a number of times or
forever, and act:

  error         answer `status` with an S3 XML error `code` (e.g. 500
                InternalError, 503 SlowDown, 404 NoSuchUpload); not forwarded
  reset         read half of the request body, then reset the connection (RST)
  reset-after   forward the request (it takes effect), then reset the connection
                instead of answering: the reply is lost
  delay         forward the request, hold the reply for `delay` seconds, then
                send it (longer than s3-timeout: the client has given up)
  hook          call `hook(request)` first, then forward (e.g. a foreign writer
                racing spoolup for a key)

Every request is logged with its operation, key, time, and what was done, and with how many
requests were in flight at the proxy when it arrived (itself included; a request stops being
in flight as its answer starts).  `hold(n, timeout)` holds each request until n are in flight
(or `timeout` passed), so that the concurrency a client allows shows in those counts.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


def operation(method: str, path: str, query: dict[str, list[str]]) -> tuple[str, str]:
    """(S3 operation name, key) of a path-style request."""
    parts = path.lstrip("/").split("/", 1)
    key = unquote(parts[1]) if len(parts) > 1 else ""
    q = set(query)
    if not key:
        if method == "GET" and "uploads" in q:
            return "ListMultipartUploads", key
        if method == "GET":
            return "ListObjects", key
        return {"HEAD": "HeadBucket", "PUT": "CreateBucket", "DELETE": "DeleteBucket"}.get(method, method), key
    if method == "PUT":
        return ("UploadPart" if "uploadId" in q else "PutObject"), key
    if method == "POST":
        if "uploads" in q:
            return "CreateMultipartUpload", key
        if "uploadId" in q:
            return "CompleteMultipartUpload", key
    if method == "DELETE":
        return ("AbortMultipartUpload" if "uploadId" in q else "DeleteObject"), key
    if method == "GET":
        return ("ListParts" if "uploadId" in q else "GetObject"), key
    if method == "HEAD":
        return "HeadObject", key
    return method, key


PROBE_KEY = ".spoolup-probe-"  # spoolup's scratch key for the conditional-writes probe (protocol.py)


@dataclass
class Request:
    at: float
    op: str
    key: str
    method: str
    action: str  # "forward" or the rule's action
    status: int | None = None  # what the client got (None: connection reset / no reply in time)
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, list[str]] = field(default_factory=dict)
    concurrent: int = 0  # requests in flight at the proxy when it arrived, itself included
    answered: bool = False

    @property
    def part(self) -> str | None:
        return (self.query.get("partNumber") or [None])[0]


@dataclass
class Rule:
    ops: tuple[str, ...]  # operations it applies to; () = all
    action: str
    status: int = 500
    code: str = "InternalError"
    times: int | None = None  # None: forever
    delay: float = 0.0
    key: str | None = None  # substring of the key
    hook: Callable[[Request], None] | None = None
    hits: int = 0

    def matches(self, op: str, key: str) -> bool:
        if self.ops and op not in self.ops:
            return False
        if self.key is not None and self.key not in key:
            return False
        return self.times is None or self.hits < self.times


# the S3 calls that write: what a rule matching "every write" names
WRITES = ("PutObject", "UploadPart", "CreateMultipartUpload", "CompleteMultipartUpload")


class FaultProxy:
    def __init__(self, upstream: str):
        u = urlsplit(upstream)
        self.upstream = (u.hostname, u.port)
        self.rules: list[Rule] = []
        self.log: list[Request] = []
        self.lock = threading.Lock()
        self.inflight = 0
        self.arrived = threading.Condition(self.lock)
        self._hold: tuple[int, float] | None = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_any(self):
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.faultproxy = self
        self.thread = threading.Thread(target=self.server.serve_forever, name="faultproxy", daemon=True)

    # -- control -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "FaultProxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, *ops: str, action: str, **kw) -> Rule:
        rule = Rule(tuple(ops), action, **kw)
        with self.lock:
            self.rules.append(rule)
        return rule

    def hold(self, n: int | None, timeout: float = 0.0) -> None:
        """Hold each request until n requests are in flight or `timeout` seconds passed; None: don't."""
        with self.lock:
            self._hold = (n, timeout) if n else None
            self.arrived.notify_all()

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def requests(self, *ops: str, since: float = 0.0, probe: bool = False) -> list[Request]:
        """Requests seen (not those of spoolup's capability probe on its scratch key, unless
        `probe`: each start of the upload process makes them)."""
        with self.lock:
            return [r for r in self.log if (not ops or r.op in ops) and r.at >= since
                    and (probe or PROBE_KEY not in r.key)]

    def count(self, *ops: str, since: float = 0.0, probe: bool = False) -> int:
        return len(self.requests(*ops, since=since, probe=probe))

    # -- serving --------------------------------------------------------------------

    def _rule_for(self, op: str, key: str) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if PROBE_KEY in key and (rule.key is None or PROBE_KEY not in rule.key):
                    continue  # faults are for spoolup's objects, not its capability probe
                if rule.matches(op, key):
                    rule.hits += 1
                    return rule
        return None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        split = urlsplit(h.path)
        query = parse_qs(split.query, keep_blank_values=True)
        op, key = operation(h.command, split.path, query)
        length = int(h.headers.get("Content-Length") or 0)
        rule = self._rule_for(op, key)
        req = Request(time.time(), op, key, h.command, rule.action if rule else "forward",
                      headers={k.lower(): v for k, v in h.headers.items()}, query=query)
        with self.lock:
            self.inflight += 1
            req.concurrent = self.inflight
            self.log.append(req)
            self.arrived.notify_all()
            if self._hold is not None:
                n, timeout = self._hold
                self.arrived.wait_for(lambda: self._hold is None or self.inflight >= n, timeout)
        try:
            self._serve(h, req, rule, length)
        finally:
            self._answered(req)

    def _answered(self, req: Request) -> None:
        with self.lock:
            if not req.answered:
                req.answered = True
                self.inflight -= 1

    def _serve(self, h: BaseHTTPRequestHandler, req: Request, rule: Rule | None, length: int) -> None:
        if rule is not None and rule.action == "reset":
            h.rfile.read(length // 2)
            _reset(h)
            return
        body = h.rfile.read(length) if length else b""
        if rule is not None and rule.action == "error":
            self._answer_error(h, req, rule.status, rule.code)
            return
        if rule is not None and rule.action == "hook" and rule.hook is not None:
            rule.hook(req)
        try:
            status, headers, data = self._forward(h, body)
        except OSError:
            _reset(h)
            return
        if rule is not None and rule.action == "reset-after":
            _reset(h)
            return
        if rule is not None and rule.action == "delay":
            time.sleep(rule.delay)
        kept = [(k, v) for k, v in headers
                if k.lower() not in HOP_BY_HOP and k.lower() not in ("content-length", "server", "date")]
        _respond(h, req, status, kept, data)

    def _forward(self, h: BaseHTTPRequestHandler, body: bytes):
        conn = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "expect"}
            conn.request(h.command, h.path, body=body if body or h.command in ("PUT", "POST") else None,
                         headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.getheaders(), data
        finally:
            conn.close()

    def _answer_error(self, h: BaseHTTPRequestHandler, req: Request, status: int, code: str) -> None:
        messages = {
            "SlowDown": "Please reduce your request rate.",
            "InternalError": "We encountered an internal error. Please try again.",
            "NoSuchUpload": "The specified upload does not exist. The upload ID may be invalid, or the upload "
                            "may have been aborted or completed.",
        }
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
               f"<Message>{messages.get(code, code)}</Message><RequestId>faultproxy</RequestId></Error>").encode()
        _respond(h, req, status, [("Content-Type", "application/xml")], xml)


def _respond(h: BaseHTTPRequestHandler, req: Request, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    req.status = status
    proxy = getattr(h.server, "faultproxy", None)
    if proxy is not None:  # no longer in flight: the client may send its next request once it has the answer
        proxy._answered(req)
    try:
        h.send_response(status)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
        h.wfile.flush()
    except OSError:
        h.close_connection = True


def _reset(h: BaseHTTPRequestHandler) -> None:
    """Close the client connection with a TCP RST (SO_LINGER 0), as a dropped connection does."""
    h.close_connection = True
    try:
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
    except OSError:
        pass
