"""Invite lines: a server's address and its key in one line, to pass to a new member
over a channel both trust (a password manager, a message to one person):

    udpchat://HOST:PORT/#KEY

HOST and PORT as the daemon logs them (udpchat.address: a name, an IPv4 address or an
IPv6 address in brackets); KEY is the key file's 44 characters of URL-safe base64.
The key sits in the fragment, the part after "#" that URL-aware tools never send to a
server. The line IS the secret: whoever sees it can join.

`udpchat-keygen --invite HOST[:PORT]` writes one; `udpchat-client 'udpchat://...'`
connects with it, and with --save-key keeps the key where the client looks for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote

from udpchat.address import DEFAULT_PORT, AddressError, join_host_port, split_host_port
from udpchat.core.wire import PSK_B64_CHARS, psk_raw
from udpchat.fingerprint import fingerprint
from udpchat.keys import CLIENT, KeyFileError, KeyFileExists, KeyFileNotFound, load_key, write_key

SCHEME = "udpchat://"


class InviteError(ValueError):
    """Not a usable invite line. The message never quotes the line: it holds a key."""


@dataclass(frozen=True)
class Invite:
    host: str
    port: int
    key: bytes  # as in a key file: 44 characters of URL-safe base64

    def __str__(self) -> str:
        return f"{SCHEME}{join_host_port(self.host, self.port)}/#{self.key.decode('ascii')}"


def is_invite(text: str) -> bool:
    """Whether ``text`` (a client's HOST argument) is meant as an invite line."""
    return text.strip().lower().startswith("udpchat:")


def parse_invite(text: str) -> Invite:
    """The invite in ``text``; InviteError (never quoting the key) if it is not one."""
    text = text.strip()
    if not text.lower().startswith(SCHEME):
        raise InviteError(f"an invite line starts with {SCHEME}")
    place, hash_, key_text = text[len(SCHEME) :].partition("#")
    if not hash_ or not key_text:
        raise InviteError(
            "the invite line has no key after '#'; copy the whole line "
            f"({SCHEME}HOST:PORT/#KEY), and quote it for the shell"
        )
    place = place.removesuffix("/")
    if not place or any(c in place for c in "/?@"):
        raise InviteError(f"the invite line must look like {SCHEME}HOST:PORT/#KEY")
    try:
        host, port = split_host_port(place)
    except AddressError as exc:
        raise InviteError(f"in the invite line: {exc}") from None
    # A mail client may have percent-encoded the '=' at the end.
    key = unquote(key_text).encode("ascii", "replace")
    try:
        psk_raw(key)
    except ValueError:
        raise InviteError(
            f"the key in the invite line is damaged (it must be {PSK_B64_CHARS} characters"
            " of URL-safe base64); copy the whole line again"
        ) from None
    return Invite(host, DEFAULT_PORT if port is None else port, key)


def save_key(path: str | os.PathLike[str], key: bytes, force: bool = False) -> bool:
    """Keep an invite's key in the key file at ``path`` (mode 0600, folders 0700, with
    every rule of udpchat.keys); return False if it held this key already.

    A different key there is never replaced without ``force``: it may be the key of
    another server, or the right one (and the invite old). KeyFileError says so, with
    both fingerprints to compare and the fix.
    """
    name = os.fspath(path)
    for _ in range(2):  # a second round if another process wrote the file meanwhile
        try:
            existing: bytes | None = load_key(name, CLIENT)
        except KeyFileNotFound:
            existing = None
        except KeyFileError as exc:
            if not force:
                raise KeyFileError(f"{exc}; or add --force to replace it") from None
            existing = None
        if existing == key:
            return False
        if existing is not None and not force:
            raise KeyFileError(
                f"{name} holds a different key (fingerprint {fingerprint(existing)}; the "
                f"invite's is {fingerprint(key)}); kept it; fix: add --force to replace it "
                "(it then no longer works for the server it belongs to), or --key PATH "
                "to save the invite's key elsewhere"
            )
        try:
            write_key(name, key, overwrite=force, advice=CLIENT)
            return True
        except KeyFileExists:
            continue
    raise KeyFileError(f"{name} keeps changing while the key is saved; try again")
