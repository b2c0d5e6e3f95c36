"""The machine's own non-loopback addresses, for telling people where to connect.

The original one-file design printed the machine's LAN address; the daemon logs
every non-loopback address it listens on. Reads local interface tables only: no
packet is sent anywhere.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path

SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


def _ipv4_addresses() -> list[str]:
    import fcntl

    found = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                answer = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)
            except OSError:
                continue  # no IPv4 address on this interface
            found.append(socket.inet_ntoa(answer[20:24]))
    return found


def _ipv6_addresses(table: Path = Path("/proc/net/if_inet6")) -> list[str]:
    found = []
    for line in table.read_text().splitlines():
        fields = line.split()
        if fields:
            found.append(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    return found


def _fallback_addresses() -> list[str]:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_DGRAM)
    except OSError:
        return []
    return [str(info[4][0]) for info in infos]


def local_addresses(include_ipv6: bool = True) -> list[str]:
    """Non-loopback, non-link-local addresses of this machine, IPv4 first."""
    try:
        candidates = _ipv4_addresses()
    except (OSError, ImportError):
        candidates = _fallback_addresses()
    if include_ipv6:
        try:
            candidates += _ipv6_addresses()
        except OSError:
            pass  # no IPv6, or /proc/net hidden (systemd's ProcSubset=pid)
    result = []
    for text in candidates:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
        if addr.is_loopback or addr.is_link_local or addr.is_unspecified:
            continue
        if addr.version == 6 and not include_ipv6:
            continue
        if text not in result:
            result.append(text)
    return sorted(result, key=lambda t: ipaddress.ip_address(t).version)


def listening_addresses(interface: str) -> list[str]:
    """Where clients can reach a socket bound to `interface` ("" / "::" = everywhere)."""
    if interface in ("", "0.0.0.0"):
        return local_addresses(include_ipv6=False)
    if interface == "::":
        return local_addresses(include_ipv6=True)
    return [interface]
