"""A loopback TCP proxy in front of the S3 endpoint, for the signal tests.

It forwards bytes unchanged.  While `hold()` is in effect, any request whose
bytes contain b"partNumber=" (an UploadPart) is held -- not forwarded -- until
`release()` (except the capability probe's, on its `.spoolup-probe-` scratch key, which
is not a part of any object): so a test can have parts really in flight when it sends a signal,
without timing guesses.  It does not interpret or answer S3 requests.
"""

from __future__ import annotations

import socket
import threading


class StallProxy:
    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self._open = threading.Event()  # set: forward; clear: hold UploadPart requests
        self._open.set()
        self._lock = threading.Lock()
        self.held = 0  # UploadPart requests that were held
        self._socks: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._closed = True
        self._open.set()
        for s in [self.listener, *self._socks]:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if requests and not self._open.is_set() and b"partNumber=" in data and b".spoolup-probe-" not in data:
                    with self._lock:
                        self.held += 1
                    self._open.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
