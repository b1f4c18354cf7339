"""A loopback HTTP proxy in front of the bench's S3 server that counts requests by S3
operation and can add a fixed delay to every request (a remote region on loopback).

Run as its own process (`python -m bench.s3proxy UPSTREAM_URL DELAY_MS`): it prints its
port, then serves until killed.  GET /__counts__ answers the counts so far as JSON
(and POST /__reset__ sets them to zero).  The delay is slept before each request is
forwarded, so a client that keeps N requests in flight sees N at a time delayed, as it
would against a far endpoint, and again before the "100 Continue" of a request that asks for
one (a second round trip, as a far endpoint's); upstream connections are kept alive per serving
thread.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
PROBE_KEY = ".spoolup-probe-"


def operation(method: str, path: str, query: dict) -> tuple[str, str]:
    parts = path.lstrip("/").split("/", 1)
    key = parts[1] if len(parts) > 1 else ""
    if not key:
        if method == "GET":
            return ("ListMultipartUploads" if "uploads" in query else "ListObjects"), key
        return {"HEAD": "HeadBucket", "PUT": "CreateBucket"}.get(method, method), key
    if method == "PUT":
        return ("UploadPart" if "uploadId" in query else "PutObject"), key
    if method == "POST":
        return ("CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload"), key
    if method == "DELETE":
        return ("AbortMultipartUpload" if "uploadId" in query else "DeleteObject"), key
    if method == "GET":
        return ("ListParts" if "uploadId" in query else "GetObject"), key
    return ("HeadObject" if method == "HEAD" else method), key


def serve(upstream: str, delay: float) -> ThreadingHTTPServer:
    u = urlsplit(upstream)
    counts: Counter = Counter()
    log: list = []
    lock = threading.Lock()
    local = threading.local()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def handle_expect_100(self):
            # a remote server's "100 Continue" comes a round trip after the headers: the delay
            # is a round trip's, so the client that waits for it pays it twice
            if delay:
                time.sleep(delay)
            return super().handle_expect_100()

        def do_any(self):
            split = urlsplit(self.path)
            if split.path in ("/__counts__", "/__reset__", "/__log__"):
                with lock:
                    if split.path == "/__reset__":
                        counts.clear()
                        log.clear()
                    body = json.dumps(log if split.path == "/__log__" else dict(counts)).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            arrived = time.time()
            query = parse_qs(split.query, keep_blank_values=True)
            op, key = operation(self.command, split.path, query)
            with lock:
                counts["probe" if PROBE_KEY in key else op] += 1
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if delay:
                time.sleep(delay)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "expect"}
            for attempt in range(2):
                conn = getattr(local, "conn", None)
                if conn is None:
                    conn = local.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    r = conn.getresponse()
                    data = r.read()
                    break
                except (OSError, http.client.HTTPException):
                    conn.close()
                    local.conn = None
                    if attempt:
                        raise
            self.send_response_only(r.status, r.reason)
            for k, v in r.getheaders():
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            with lock:
                log.append([arrived, time.time(), "probe:" + op if PROBE_KEY in key else op, key,
                            self.client_address[1]])

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_any

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    return server


def main(argv: list[str]) -> int:
    upstream, delay_ms = argv[0], float(argv[1]) if len(argv) > 1 else 0.0
    server = serve(upstream, delay_ms / 1000)
    print(server.server_address[1], flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
