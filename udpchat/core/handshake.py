"""The two-message handshake: ephemeral X25519 authenticated by the pre-shared key.

Shaped like Noise NNpsk0: the initiator sends a fresh ephemeral public key, the
responder answers with its own, and both derive per-direction session keys from the
X25519 secret with the PSK and the transcript mixed in. Both messages are Fernet
tokens under a key derived from the PSK, so nothing without the key gets an answer.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.fernet import InvalidToken
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from udpchat.core import wire
from udpchat.core.fernet import BinaryFernet
from udpchat.core.stats import DropReason
from udpchat.core.wire import Init, Malformed, Response, SessionKeys

ZERO_TAG = bytes(wire.RESUME_TAG_BYTES)

#: cryptography's Fernet refuses tokens stamped further in the future than this.
FERNET_MAX_CLOCK_SKEW_S = 60


#: A message 2 whose timestamp differs from our clock by this much or more shows a
#: clock difference worth telling the user, and correcting (PROTOCOL.md 4.11).
CLOCK_SKEW_REPORT_S = 10.0


def _probe_offsets() -> tuple[float, ...]:
    """Clock probes (PROTOCOL.md 4.11), nearest first: every 80 s to an hour either
    way (a responder accepts a 90 s window, so their windows tile), then every quarter
    of an hour to 14 h (a clock set to local time instead of UTC, or in the wrong
    time zone)."""
    dense = [80.0 * k for k in range(1, 46)]
    zones = [900.0 * q for q in range(5, 57)]
    return tuple(sign * o for o in dense + zones for sign in (1.0, -1.0))


CLOCK_PROBE_OFFSETS = _probe_offsets()


class HandshakeRejected(Exception):
    """A handshake message failed a check; `reason` names it for the drop counters."""

    def __init__(self, reason: DropReason) -> None:
        super().__init__(reason)
        self.reason = reason


def _public_bytes(private: X25519PrivateKey) -> bytes:
    # public_bytes_raw, not public_bytes(Encoding.Raw, PublicFormat.Raw): importing
    # cryptography's serialization module (PEM, SSH, PKCS#12 ...) costs every daemon
    # and client ~20 ms of CPU at start, for two constants.
    return private.public_key().public_bytes_raw()


def _exchange(private: X25519PrivateKey, peer: bytes) -> bytes:
    try:
        # cryptography raises ValueError for low-order points (all-zero secret).
        return private.exchange(X25519PublicKey.from_public_bytes(peer))
    except ValueError as exc:
        raise HandshakeRejected("bad-point") from exc


def check_fresh(timestamp: int, wall: float, ttl_s: float) -> None:
    """A message 1's freshness (PROTOCOL.md 4.2 steps 4-5): its timestamp is in the
    clear, authenticated by the token's HMAC, so this can come before decryption."""
    if timestamp + ttl_s <= wall:
        raise HandshakeRejected("stale-handshake")
    if timestamp > wall + FERNET_MAX_CLOCK_SKEW_S:
        raise HandshakeRejected("future-handshake")


def open_handshake(f_hs: BinaryFernet, token: bytes, wall: float, ttl_s: float) -> bytes:
    """Authenticate a handshake token and check its freshness; return the plaintext."""
    try:
        plaintext, timestamp = wire.open_token(f_hs, token)
    except InvalidToken as exc:
        raise HandshakeRejected("bad-token") from exc
    check_fresh(timestamp, wall, ttl_s)
    return plaintext


class Initiator:
    """One attempt at a handshake, from the client's side.

    A retry is a new Initiator with a new ephemeral key, never the same message 1
    again: the responder drops repeated ephemerals as replays. Within one attempt,
    `probes` stamps the same message 1 at other times, for a server whose clock
    differs from ours (PROTOCOL.md 4.11): the responder answers at most one of them.
    """

    def __init__(
        self,
        psk32: bytes,
        f_hs: BinaryFernet,
        session_id: bytes,
        epoch: int,
        wall: float,
        resume_key: bytes | None = None,
        cookie: bytes | None = None,
    ) -> None:
        """`wall`: the Unix time message 1 carries."""
        self._psk32 = psk32
        self._f_hs = f_hs
        self.session_id = session_id
        self.epoch = epoch
        self._private = X25519PrivateKey.generate()
        ephemeral = _public_bytes(self._private)
        tag = ZERO_TAG
        if resume_key is not None:
            tag = wire.resume_tag(resume_key, session_id, epoch, ephemeral)
        self._init = Init(session_id, epoch, ephemeral, tag)
        self._cookie = cookie or b""  # returned to a server under load (PROTOCOL.md 3.2)
        self.message = wire.build_init(f_hs, self._init, wall) + self._cookie
        # Every message 1 of this attempt by its SHA-256, which message 2 names.
        self._sent: dict[bytes, bytes] = {hashlib.sha256(self.message).digest(): self.message}

    def probes(self, offsets: Iterable[float], wall: float) -> list[bytes]:
        """Message 1 again, stamped `wall + offset` for each offset (PROTOCOL.md 4.11).
        An answer to any of them completes the handshake like an answer to `message`."""
        out = []
        for offset in offsets:
            message = wire.build_init(self._f_hs, self._init, wall + offset) + self._cookie
            self._sent[hashlib.sha256(message).digest()] = message
            out.append(message)
        return out

    def receive_response(self, datagram: bytes, wall: float) -> tuple[SessionKeys, float]:
        """Check message 2 against our message 1s and derive the session keys. Also
        returns the responder's clock minus ours (`wall`), in seconds.

        The timestamp is not checked for freshness: message 2 names the SHA-256 of a
        message 1 of this attempt, whose ephemeral key is new, so it cannot be older
        than the attempt. Its timestamp tells how far the clocks differ (4.11)."""
        sid = datagram[1 : 1 + wire.SESSION_ID_BYTES]
        token = datagram[1 + wire.SESSION_ID_BYTES :]
        try:
            plaintext, timestamp = wire.open_token(self._f_hs, token)
        except InvalidToken as exc:
            raise HandshakeRejected("bad-token") from exc
        try:
            response = wire.parse_response(plaintext)
        except Malformed as exc:
            raise HandshakeRejected("bad-handshake") from exc
        message = self._sent.get(response.init_hash)
        if (
            sid != self.session_id
            or response.session_id != self.session_id
            or response.epoch != self.epoch
            or message is None
        ):
            raise HandshakeRejected("unbound-response")
        shared = _exchange(self._private, response.ephemeral)
        keys = wire.session_keys(self._psk32, shared, message, datagram)
        return keys, timestamp - wall


def parse_initiation(f_hs: BinaryFernet, datagram: bytes, wall: float, ttl_s: float) -> Init:
    """Authenticate and parse a message 1 (the responder's first step); `datagram` is
    the 170-byte message 1 without the cookie that may follow it."""
    plaintext = open_handshake(f_hs, datagram[1:], wall, ttl_s)
    try:
        return wire.parse_init(plaintext)
    except Malformed as exc:
        raise HandshakeRejected("bad-handshake") from exc


@dataclass(frozen=True)
class Responded:
    message: bytes  # message 2, to send back to the initiator's address
    keys: SessionKeys


def respond(
    psk32: bytes, f_hs: BinaryFernet, datagram: bytes, init: Init, wall: float
) -> Responded:
    """Answer an authenticated message 1 with a fresh ephemeral; derive the keys."""
    private = X25519PrivateKey.generate()
    shared = _exchange(private, init.ephemeral)
    response = Response(
        init.session_id, init.epoch, _public_bytes(private), hashlib.sha256(datagram).digest()
    )
    message = wire.build_response(f_hs, response, wall)
    return Responded(message, wire.session_keys(psk32, shared, datagram, message))


def new_session_id() -> bytes:
    return os.urandom(wire.SESSION_ID_BYTES)
