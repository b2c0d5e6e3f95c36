"""Server addresses as people write them, and as the daemon logs them.

"NAME", "NAME:PORT", "192.0.2.2:PORT", "[2001:db8::2]", "[2001:db8::2]:PORT" and a bare
IPv6 address ("::1", "2001:db8::2": more than one colon, so no port) are all a server.
The client takes them as HOST, udpchat-keygen --invite too, and an invite line
(udpchat.invite) carries one. The client also takes a list of them, comma-separated
("chat-a:12345,chat-b:12345"): the daemons of a cluster (docs/CLUSTER.md), tried in
turn. No name or address contains a comma, so a list cannot be mistaken for one.
"""

from __future__ import annotations

#: The daemon's default UDP port (etc/chat.ini).
DEFAULT_PORT = 12345


class AddressError(ValueError):
    """Not a server address; the message says what is wrong and how to write one."""


def parse_port(text: str) -> int:
    """A UDP port, 1..65535; ValueError (one line) otherwise."""
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1..65535, not {port}")
    return port


def split_host_port(text: str) -> tuple[str, int | None]:
    """(host, port) of an address as written (see module docstring); port is None
    when the text has none. AddressError when it is not an address."""
    given: str | None = None
    if text.startswith("["):
        close = text.find("]")
        host, rest = text[1:close], text[close + 1 :]
        if close < 0 or (rest and (not rest.startswith(":") or len(rest) == 1)):
            raise AddressError(f"bad HOST {text!r}: write [IPv6 address] or [IPv6 address]:PORT")
        given = rest[1:] or None
    elif text.count(":") == 1:
        host, given = text.split(":")
    else:
        host = text  # a name, an IPv4 address, or a bare IPv6 address
    if not host:
        raise AddressError(f"bad HOST {text!r}: no name or address before the port")
    if given is None:
        return host, None
    try:
        return host, parse_port(given)
    except ValueError as exc:
        raise AddressError(f"bad HOST {text!r}: {exc}") from None


def join_host_port(host: str, port: int) -> str:
    """``host`` and ``port`` as the daemon logs them: "192.0.2.2:12345",
    "[2001:db8::2]:12345", "chat.example:12345"."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_server_list(text: str) -> list[tuple[str, int | None]]:
    """[(host, port), ...] of a comma-separated list of addresses, each as
    split_host_port reads it (spaces around the commas are allowed). AddressError
    for an empty entry or an entry that is not an address."""
    entries = [entry.strip() for entry in text.split(",")]
    if "" in entries:
        raise AddressError(
            f"bad HOST {text!r}: an empty entry in the list; write HOST:PORT,HOST:PORT"
        )
    return [split_host_port(entry) for entry in entries]
