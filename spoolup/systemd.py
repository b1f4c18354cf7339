"""sd_notify(3) without libsystemd: tells systemd (Type=notify) when spoolup is
ready and when it is stopping.  A no-op outside systemd (no $NOTIFY_SOCKET)."""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send `state` ("READY=1", "STOPPING=1", "STATUS=...") to systemd; True if sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(state.encode())
        return True
    except OSError:
        return False
