"""Bounded-memory rate limiting for work an unauthenticated sender can cause.

``TokenBucket`` limits one stream; ``AddressRateLimiter`` keeps one bucket per
source network (an LRU of at most ``max_entries`` buckets) so a flood from one
place cannot starve handshakes from others; ``BoundedExpiringSet`` remembers
recently seen handshake messages for a while so they cannot be replayed.
All are O(1) per call, never grow past their bound, and take ``now`` (seconds)
from the caller instead of reading a clock. The protocol core passes Unix time, since
Fernet stamps need it; a clock stepping back is treated as no time passing.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable

# Float slack so that, e.g., 0.05 s at 20/s refills exactly one token even when
# the subtraction of two timestamps lands a hair below 0.05.
_TOKEN_EPSILON = 1e-9

IPV6_PREFIX_BITS = 64
"""IPv6 sources are limited per /64, as WireGuard's ratelimiter does: one host
usually owns a whole /64 and could otherwise rotate through 2**64 addresses to
dodge its limit and flush everyone else's buckets out of the table."""


class TokenBucket:
    """Allow ``rate_per_s`` events per second on average, ``burst`` at once.

    The bucket starts full. Time going backwards (a wall clock stepped back) is
    treated as no time passing.
    """

    __slots__ = ("rate_per_s", "burst", "_tokens", "_last")

    def __init__(self, rate_per_s: float, burst: int, now: float | None = None) -> None:
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0, got {rate_per_s!r}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst!r}")
        self.rate_per_s = float(rate_per_s)
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def _refill(self, now: float) -> None:
        """Add the tokens earned since the last call, capped at ``burst``."""
        if self._last is not None and now > self._last:
            earned = (now - self._last) * self.rate_per_s
            self._tokens = min(float(self.burst), self._tokens + earned)
        if self._last is None or now > self._last:
            self._last = now

    def allow(self, now: float) -> bool:
        """Take one token if there is one; return whether the event may proceed."""
        # _refill() written out, with the state in locals: a session's message rate
        # is asked for every message it receives (a client's every room line).
        last = self._last
        tokens = self._tokens
        if last is None:
            self._last = now
        elif now > last:
            tokens = min(float(self.burst), tokens + (now - last) * self.rate_per_s)
            self._last = now
        if tokens >= 1.0 - _TOKEN_EPSILON:
            self._tokens = tokens - 1.0 if tokens > 1.0 else 0.0
            return True
        self._tokens = tokens
        return False

    def ready_at(self) -> float:
        """When the next token is there (at the last call's time if one is already):
        the time to try allow() again."""
        last = self._last if self._last is not None else 0.0
        missing = 1.0 - _TOKEN_EPSILON - self._tokens
        if missing <= 0:
            return last
        at = last + missing / self.rate_per_s
        # At Unix-time magnitudes the sum can round down, to a time at which allow()
        # still finds too little (and a timer set for it would fire for nothing, again
        # and again): step up to the first time that is really enough.
        while (at - last) * self.rate_per_s < missing:
            at = math.nextafter(at, math.inf)
        return at

    def is_full(self, now: float) -> bool:
        """Whether the bucket has refilled to ``burst`` by ``now`` (no state change).

        A full bucket behaves exactly like a fresh one, so forgetting it loses
        nothing.
        """
        if self._last is None:
            return True
        elapsed = max(0.0, now - self._last)
        return self._tokens + elapsed * self.rate_per_s >= self.burst - _TOKEN_EPSILON


def rate_limit_key(host: str) -> str:
    """Return the key a source host is limited under.

    IPv4 addresses (also IPv4-mapped IPv6) are keyed by the address; IPv6 by
    its /64 network; anything that does not parse as an IP address is used
    as given.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        network = ipaddress.IPv6Network((int(address), IPV6_PREFIX_BITS), strict=False)
        return str(network)
    return str(address)


class AddressRateLimiter:
    """One :class:`TokenBucket` per source network, at most ``max_entries`` of them.

    Buckets live in least-recently-used order. Each call first forgets up to
    two idle buckets that have refilled (they are equivalent to no bucket),
    then, if the table is still full and a new source arrives, evicts the
    least recently used bucket even if it is not full. That source gets a
    fresh burst when it comes back, but only after ``max_entries`` other
    sources arrived in between, each of which got its own burst anyway: at
    most one extra burst per ``max_entries`` new sources. Refusing new
    sources instead would let a spoofed flood lock out every honest newcomer.
    Such an early eviction is a sign of a flood: ``on_evict`` (if given) is
    called once for each, so the owner can count it where the operator sees it.
    """

    def __init__(
        self,
        rate_per_s: float = 20.0,
        burst: int = 5,
        max_entries: int = 4096,
        on_evict: Callable[[], None] | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries!r}")
        TokenBucket(rate_per_s, burst)  # validate the parameters once, here
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_entries = max_entries
        self._on_evict = on_evict
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, addr_host: str, now: float) -> bool:
        """Return whether one more event from ``addr_host`` is allowed at ``now``."""
        key = rate_limit_key(addr_host)
        self._forget_idle(now, limit=2)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_entries:
                self._buckets.popitem(last=False)
                if self._on_evict is not None:
                    self._on_evict()
            bucket = TokenBucket(self.rate_per_s, self.burst, now)
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
        return bucket.allow(now)

    def _forget_idle(self, now: float, limit: int) -> None:
        """Drop up to ``limit`` least-recently-used buckets that are full again."""
        for _ in range(limit):
            if not self._buckets:
                return
            key, bucket = next(iter(self._buckets.items()))
            if not bucket.is_full(now):
                return
            del self._buckets[key]


class BoundedExpiringSet:
    """Keys remembered for ``ttl_s`` seconds, at most ``max_entries`` at a time.

    Meant for the handshake replay cache: add a handshake's identifier only
    after the handshake message has authenticated (otherwise anyone could
    fill the cache), and drop a handshake whose identifier it ``contains``.

    When the set is full of unexpired keys, :meth:`add_evicting` forgets the
    oldest key to make room for the new one rather than refusing it: a replay
    that slips through after an early eviction only gets a half-open session its
    sender cannot use, whereas refusing would let one busy key holder lock every
    newcomer out. Such an early eviction is a sign of a flood: ``on_evict`` (if
    given) is called once for each.

    Expiry times are ``now + ttl_s`` with ``now`` non-decreasing, so insertion
    order is expiry order and expired keys are pruned from the front in O(1)
    amortised time.
    """

    def __init__(
        self, max_entries: int, ttl_s: float, on_evict: Callable[[], None] | None = None
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries!r}")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s!r}")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._on_evict = on_evict
        self._expiry: OrderedDict[Hashable, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def add_evicting(self, key: Hashable, now: float) -> bool:
        """Remember ``key`` until ``now + ttl_s``; False if it is remembered already.

        When full, the oldest key is forgotten to make room (see the class docstring).
        """
        self._prune(now)
        expiry = self._expiry.get(key)
        if expiry is not None and expiry > now:
            return False
        # An expired key still here (only if ``now`` went backwards once) starts afresh.
        self._expiry.pop(key, None)
        while len(self._expiry) >= self.max_entries:
            self._expiry.popitem(last=False)
            if self._on_evict is not None:
                self._on_evict()
        self._expiry[key] = now + self.ttl_s
        return True

    def extend(self, seconds: float) -> None:
        """Remember every key ``seconds`` longer (their order is kept). For the
        handshake caches when the wall clock that judges freshness is stepped back."""
        for key in self._expiry:
            self._expiry[key] += seconds

    def contains(self, key: Hashable, now: float) -> bool:
        """Whether ``key`` was added and has not expired by ``now``."""
        expiry = self._expiry.get(key)
        return expiry is not None and expiry > now

    def _prune(self, now: float) -> None:
        """Forget keys from the front (oldest first) whose expiry has passed."""
        while self._expiry:
            key, expiry = next(iter(self._expiry.items()))
            if expiry > now:
                return
            del self._expiry[key]
