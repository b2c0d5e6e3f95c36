"""systemd readiness notifications (sd_notify protocol) without libsystemd.

`notify("READY=1")` sends one datagram to $NOTIFY_SOCKET. Outside systemd it does
nothing; a failure is reported by the return value and never raised, because losing a
status message must not take the chat daemon down.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

# systemd reads the socket promptly; the timeout only bounds a wedged receiver so the
# reactor thread can never hang here.
SEND_TIMEOUT_S = 1.0


def _socket_address(value: str) -> str | None:
    """Map $NOTIFY_SOCKET to an AF_UNIX address, or None if it is not one we support."""
    if value.startswith("@"):
        # Abstract namespace: systemd writes a leading "@" for the leading NUL byte.
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # e.g. "vsock:..." (VMs); not used for a daemon on the host


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send `state` (e.g. "READY=1", "STOPPING=1", "STATUS=...") to systemd.

    Returns True if the datagram was sent, False if $NOTIFY_SOCKET is unset or
    unsupported or sending failed.
    """
    value = environ.get("NOTIFY_SOCKET", "")
    address = _socket_address(value) if value else None
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT_S)
            sock.sendto(state.encode("utf-8"), address)
    except (OSError, ValueError):
        # ValueError: e.g. an embedded NUL in a filesystem path from a broken environment.
        return False
    return True
