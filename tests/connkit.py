"""Real network pieces for the connection-setting tests (tests/test_s3_connection.py): a test CA
and server certificate (made with the `cryptography` package), a TLS-terminating proxy on
loopback that forwards plain HTTP to an S3 server, and an HTTP proxy that forwards and records
every request passing through it.  Nothing here interprets or answers S3 requests itself.
"""

from __future__ import annotations

import datetime
import http.client
import http.server
import ipaddress
import select
import socket
import ssl
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path


# ---------------------------------------------------------------------------
# a test CA


@dataclass
class PrivateCA:
    """A private CA (ca.pem) and a server certificate it signed for localhost and 127.0.0.1
    (server.pem, server.key), as a MinIO or Ceph behind a company CA would have."""

    ca_pem: Path
    server_pem: Path
    server_key: Path

    @classmethod
    def make(cls, directory: Path, name: str = "spoolup test CA") -> "PrivateCA":
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
                   .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(ca_ski, critical=False)
                   .sign(ca_key, hashes.SHA256()))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
                .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                               critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
                .sign(ca_key, hashes.SHA256()))
        directory.mkdir(parents=True, exist_ok=True)
        made = cls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
        made.ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        made.server_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        made.server_key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
        return made


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes (one thread; an SSL socket's buffered
    bytes are drained before waiting on the socket again)."""
    try:
        while True:
            ready = [s for s in (a, b) if isinstance(s, ssl.SSLSocket) and s.pending()]
            if not ready:
                ready, _, _ = select.select([a, b], [], [], 120)
                if not ready:
                    return
            for s in ready:
                data = s.recv(1 << 16)
                if not data:
                    return
                (b if s is a else a).sendall(data)
    except (OSError, ssl.SSLError):
        return
    finally:
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass


class TLSTerminator:
    """https://127.0.0.1:<port> with the test CA's server certificate, forwarding the decrypted
    bytes to a plain-HTTP server (moto) at `target_port`.  `handshakes` counts the TLS
    sessions a client completed; `refused` those a client broke off (its certificate check)."""

    def __init__(self, ca: PrivateCA, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(ca.server_pem, ca.server_key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handshakes = 0
        self.refused = 0
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            with self._lock:
                self.refused += 1
            conn.close()
            return
        with self._lock:
            self.handshakes += 1
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            tls.close()
            return
        _pipe(tls, upstream)

    def close(self) -> None:
        self._closed = True
        self.listener.close()


# ---------------------------------------------------------------------------
# an HTTP proxy that records what passes through it


@dataclass
class Seen:
    """One request as the proxy received it."""

    method: str
    target: str  # the request target: an absolute URI (forward proxy), host:port (CONNECT) or a path
    headers: dict[str, str]
    body: bytes = b""
    response: bytes = b""  # the upstream's reply body (up to 64 KiB)
    status: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def host(self) -> str:
        if self.method == "CONNECT":
            return self.target
        return urllib.parse.urlsplit(self.target).netloc if "://" in self.target else self.headers.get("host", "")


class RecordingProxy:
    """An HTTP proxy on loopback, built on http.server:

    - absolute-URI requests ("PUT http://host/bucket/key"): forwarded to `target` whatever host
      they name (so a URL with an unused port, or a name such as bucket.localhost, reaches the
      test's S3 server only through this proxy);
    - CONNECT host:port: a tunnel to `tunnel_target` (a TLSTerminator: https through a proxy);
    - origin-form requests ("PUT /bucket/key"): forwarded to `target` as a reverse proxy (an
      endpoint URL pointed straight at it, e.g. sts-endpoint).

    Every request is recorded in `seen` (headers as sent, Host unchanged, so SigV4 signatures
    still match upstream).  With `credentials` ("user:password"), requests without that
    Proxy-Authorization get 407."""

    def __init__(self, target_port: int, *, tunnel_port: int | None = None, credentials: str | None = None):
        self.target = ("127.0.0.1", target_port)
        self.tunnel_target = ("127.0.0.1", tunnel_port) if tunnel_port else None
        self.credentials = credentials
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args) -> None:
                pass

            def _authorized(self) -> bool:
                if proxy.credentials is None:
                    return True
                import base64

                want = "Basic " + base64.b64encode(proxy.credentials.encode()).decode()
                if self.headers.get("Proxy-Authorization") == want:
                    return True
                self.send_response(407)
                self.send_header("Proxy-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False

            def do_CONNECT(self) -> None:
                seen = Seen("CONNECT", self.path, {k.lower(): v for k, v in self.headers.items()})
                with proxy.lock:
                    proxy.seen.append(seen)
                if not self._authorized():
                    return
                try:
                    upstream = socket.create_connection(proxy.tunnel_target or _host_port(self.path))
                except OSError:
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200, "Connection Established")
                self.end_headers()
                self.close_connection = True
                _pipe(self.connection, upstream)

            def _forward(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                if "chunked" in headers.get("transfer-encoding", ""):
                    raise AssertionError("the test proxy does not forward chunked request bodies")
                length = int(headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, headers, body[:1 << 16])
                with proxy.lock:
                    proxy.seen.append(seen)
                if not self._authorized():
                    return
                path = self.path
                if "://" in path:
                    parts = urllib.parse.urlsplit(path)
                    path = parts.path + (f"?{parts.query}" if parts.query else "")
                upstream = http.client.HTTPConnection(*proxy.target, timeout=120)
                try:
                    upstream.putrequest(self.command, path, skip_host=True, skip_accept_encoding=True)
                    for k, v in self.headers.items():
                        if k.lower() not in ("proxy-authorization", "proxy-connection", "connection",
                                             "keep-alive", "expect"):
                            upstream.putheader(k, v)
                    upstream.endheaders(body or None)
                    reply = upstream.getresponse()
                    data = reply.read()
                    seen.status, seen.response = reply.status, data[:1 << 16]
                    self.send_response_only(reply.status, reply.reason)
                    for k, v in reply.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection", "keep-alive", "content-length"):
                            self.send_header(k, v)
                    if self.command == "HEAD":
                        self.send_header("Content-Length", reply.getheader("Content-Length") or "0")
                    else:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, credentials: str | None = None) -> str:
        return f"http://{credentials + '@' if credentials else ''}127.0.0.1:{self.port}"

    def requests(self, method: str | None = None) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if method is None or s.method == method]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _host_port(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)
