"""Where the daemon's UDP socket comes from: systemd's socket activation (the
sd_listen_fds protocol), or a socket the daemon binds itself.

The tap opens it in makeService, before twistd daemonizes or writes its pidfile: a
port that cannot be had then ends the launching command with one line and an exit
status of its own, daemonized or not. Raised from startService instead, the failure
would reach the launcher only as a truncated repr through twistd's start-up status
pipe (and SystemExit not at all: the launcher waited forever).
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

#: sd_listen_fds(3): passed descriptors start at 3 (after stdin, stdout, stderr).
SD_LISTEN_FDS_START = 3

#: What systemd's socket activation sets; unset once read, like sd_listen_fds(1) does,
#: so that no child process takes the descriptors for its own.
LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

#: Below this port Linux asks for CAP_NET_BIND_SERVICE, unless the sysctl says otherwise.
DEFAULT_UNPRIVILEGED_PORT_START = 1024
UNPRIVILEGED_PORT_START_FILE = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")

SOCKET_UNIT_HINT = "socket activation (udpchat.socket; udpchat-example socket prints it)"


class ListenError(Exception):
    """The UDP socket cannot be had; the message is one line with the cause and the fix.

    `transient` means a later start may succeed with nothing changed (the port is in
    use, perhaps by a previous instance still shutting down): systemd should retry.
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Listening:
    """A bound, non-blocking UDP socket for the daemon, and whether systemd passed it."""

    sock: socket.socket
    from_systemd: bool


def systemd_descriptors(environ: MutableMapping[str, str], pid: int) -> list[int]:
    """The descriptors systemd passed to process `pid` (sd_listen_fds), or [] if none.

    LISTEN_PID must name this process: variables inherited from a parent that was
    itself socket-activated are not ours. The variables are removed in every case.
    """
    try:
        if int(environ.get("LISTEN_PID", "")) != pid:
            return []
        count = int(environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    finally:
        for name in LISTEN_VARIABLES:
            environ.pop(name, None)
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + max(count, 0)))


def adopt_systemd_socket(descriptors: list[int]) -> socket.socket:
    """The one UDP socket systemd passed, made non-blocking and close-on-exec."""
    fix = "give udpchat.socket exactly one ListenDatagram= line (udpchat-example socket)"
    if len(descriptors) != 1:
        raise ListenError(
            f"systemd passed {len(descriptors)} sockets (LISTEN_FDS={len(descriptors)}), "
            f"udpchat serves one; fix: {fix}"
        )
    [fd] = descriptors
    try:
        sock = socket.socket(fileno=fd)  # family and type read from the descriptor
    except OSError as exc:
        raise ListenError(
            f"cannot use descriptor {fd} that systemd passed (LISTEN_FDS): {exc.strerror}; "
            f"fix: {fix}"
        ) from None
    if sock.type != socket.SOCK_DGRAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
        sock.close()
        raise ListenError(
            f"the socket systemd passed (descriptor {fd}) is not a UDP socket; "
            "fix: use ListenDatagram=PORT in udpchat.socket, not ListenStream= or a path"
        )
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


def where(interface: str, port: int) -> str:
    """A listening address as messages show it: *:12345, 127.0.0.1:12345, [::]:12345."""
    return f"[{interface}]:{port}" if ":" in interface else f"{interface or '*'}:{port}"


def unprivileged_port_start(path: Path = UNPRIVILEGED_PORT_START_FILE) -> int:
    """The lowest port any user may bind (Linux sysctl net.ipv4.ip_unprivileged_port_start)."""
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return DEFAULT_UNPRIVILEGED_PORT_START  # e.g. /proc/sys hidden (ProcSubset=pid)


def bind_problem(
    exc: OSError, interface: str, port: int, config_path: Path, privileged_below: int
) -> ListenError:
    """The one-line explanation, with the fix that fits the cause, of a failed bind."""
    at = where(interface, port)
    if exc.errno == errno.EADDRINUSE:
        return ListenError(
            f"cannot listen on {at}: another program uses UDP port {port} "
            f"(ss -ulpn 'sport = :{port}' shows which); fix: stop it, or set another "
            f"[server] port in {config_path}",
            transient=True,
        )
    if exc.errno in (errno.EACCES, errno.EPERM) and port < privileged_below:
        return ListenError(
            f"cannot listen on {at}: ports below {privileged_below} are privileged and "
            f"this process (uid {os.geteuid()}) may not bind them; fix: set [server] port "
            f"to {privileged_below} or more in {config_path}, or under systemd add "
            "AmbientCapabilities=CAP_NET_BIND_SERVICE and "
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE to the unit, or use "
            f"{SOCKET_UNIT_HINT}"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return ListenError(
            f"cannot listen on {at}: {interface} is not an address of this machine "
            f"(any more); fix: set [server] interface in {config_path} to one it has, or "
            "leave it empty for all addresses",
            transient=True,
        )
    return ListenError(
        f"cannot listen on {at}: {exc.strerror}; fix: set another [server] port or "
        f"interface in {config_path}"
    )


def bind_socket(interface: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to `interface` ("" = all IPv4, "::" = dual
    stack) and `port`. Raises OSError (see bind_problem)."""
    host = interface or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    flags = socket.AI_NUMERICHOST | socket.AI_PASSIVE
    # getaddrinfo keeps the scope of a link-local address ("fe80::1%eth0").
    address = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM, 0, flags)[0][4]
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if host == "::":
            # Dual stack whatever net.ipv6.bindv6only says: "::" means IPv4 and IPv6.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # No SO_REUSEADDR: for UDP it would let a second daemon share the port.
        sock.bind(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def open_socket(
    interface: str,
    port: int,
    config_path: Path,
    environ: MutableMapping[str, str] | None = None,
    pid: int | None = None,
) -> Listening:
    """The socket systemd passed (socket activation), else one bound to the config's
    interface and port. Raises ListenError with the cause and the fix."""
    descriptors = systemd_descriptors(
        os.environ if environ is None else environ, os.getpid() if pid is None else pid
    )
    if descriptors:
        return Listening(adopt_systemd_socket(descriptors), from_systemd=True)
    try:
        return Listening(bind_socket(interface, port), from_systemd=False)
    except OSError as exc:
        raise bind_problem(exc, interface, port, config_path, unprivileged_port_start()) from None
