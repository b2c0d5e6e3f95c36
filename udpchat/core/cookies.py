"""The responder under handshake load: a global budget of message 1s and the cookies
that prove a source address (PROTOCOL.md 4.5, 4.7; WireGuard's cookie reply, QUIC's
Retry).

``HandshakeBudget`` says when the server is under load: a token bucket over the
message 1s of all sources that return no valid cookie. ``AddressCookies`` makes and
checks cookies: a MAC of the source address under a secret that is replaced every
``rotate_s``, so a cookie is good for between one and two of those periods and
nothing is stored per address. Both take ``now`` from the caller.
"""

from __future__ import annotations

import hmac
import os

from udpchat.core import wire
from udpchat.core.events import Address
from udpchat.core.ratelimit import TokenBucket

LABEL_COOKIE = b"udpchat v1 cookie"
SECRET_BYTES = 32


def address_bytes(addr: Address) -> bytes:
    """What a cookie binds: the source host and port (any other kind of address as
    its repr; only this server ever checks its cookies)."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}|{addr[1]}".encode()
    return repr(addr).encode()


class AddressCookies:
    """Cookies for source addresses under a rotating secret (see module docstring)."""

    def __init__(self, rotate_s: float) -> None:
        if not rotate_s > 0:
            raise ValueError(f"rotate_s must be > 0, got {rotate_s!r}")
        self.rotate_s = rotate_s
        self._current: wire.HmacSha256 | None = None
        self._previous: wire.HmacSha256 | None = None
        self._rotate_at = 0.0

    def _secrets(self, now: float) -> tuple[wire.HmacSha256, wire.HmacSha256 | None]:
        if self._current is None or now >= self._rotate_at:
            # The previous secret is kept only if it was current until just now: after a
            # long quiet spell both are new. Drawn lazily: an idle server draws none.
            recent = self._current is not None and now < self._rotate_at + self.rotate_s
            self._previous = self._current if recent else None
            self._current = wire.HmacSha256(os.urandom(SECRET_BYTES))
            self._rotate_at = now + self.rotate_s
        return self._current, self._previous

    @staticmethod
    def _mac(secret: wire.HmacSha256, addr: Address) -> bytes:
        return secret(LABEL_COOKIE + address_bytes(addr))[: wire.COOKIE_BYTES]

    def make(self, addr: Address, now: float) -> bytes:
        """The cookie of `addr` under the current secret."""
        current, _ = self._secrets(now)
        return self._mac(current, addr)

    def valid(self, cookie: bytes, addr: Address, now: float) -> bool:
        """Whether `cookie` was made for `addr` under the current or previous secret."""
        current, previous = self._secrets(now)
        if hmac.compare_digest(cookie, self._mac(current, addr)):
            return True
        return previous is not None and hmac.compare_digest(cookie, self._mac(previous, addr))


class HandshakeBudget:
    """How many message 1s without a valid cookie the server handshakes per second, of
    all sources together; beyond that it is under load for `hold_s` after the bucket
    last ran dry, and answers every such message 1 with a cookie reply instead."""

    def __init__(self, rate_per_s: float, burst: int, hold_s: float) -> None:
        self._bucket = TokenBucket(rate_per_s, burst)
        self.hold_s = hold_s
        self._until: float | None = None

    def cookie_required(self, now: float) -> bool:
        """A message 1 without a valid cookie: spend a token, and say whether the server
        is under load (then the message 1 gets a cookie reply, even if a token was
        left: the load is measured, not rationed)."""
        if not self._bucket.allow(now):
            self._until = now + self.hold_s
        return self.under_load(now)

    def under_load(self, now: float) -> bool:
        return self._until is not None and now < self._until
