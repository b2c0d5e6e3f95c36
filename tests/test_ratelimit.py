"""Tests for udpchat.core.ratelimit: token buckets, the per-address LRU, the replay cache."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udpchat.core.ratelimit import (
    AddressRateLimiter,
    BoundedExpiringSet,
    TokenBucket,
    rate_limit_key,
)

# --- TokenBucket ---------------------------------------------------------------


def test_bucket_allows_burst_then_refuses() -> None:
    """A fresh bucket allows `burst` events at one instant, then refuses."""
    bucket = TokenBucket(rate_per_s=20, burst=5)
    assert [bucket.allow(100.0) for _ in range(6)] == [True] * 5 + [False]


def test_bucket_refills_at_rate() -> None:
    """After draining, one token comes back every 1/rate seconds."""
    bucket = TokenBucket(rate_per_s=20, burst=5)
    for _ in range(5):
        bucket.allow(100.0)
    assert not bucket.allow(100.04)
    assert bucket.allow(100.05)
    assert not bucket.allow(100.05)
    assert bucket.allow(100.10)


def test_bucket_refill_capped_at_burst() -> None:
    """A long idle period refills to `burst`, not beyond."""
    bucket = TokenBucket(rate_per_s=20, burst=5)
    bucket.allow(0.0)
    assert [bucket.allow(3600.0) for _ in range(6)] == [True] * 5 + [False]


def test_bucket_sustained_rate() -> None:
    """Over 10 s of constant demand, about burst + rate * 10 events pass."""
    bucket = TokenBucket(rate_per_s=20, burst=5)
    allowed = sum(bucket.allow(i / 1000) for i in range(10_000))
    assert 5 + 20 * 10 - 1 <= allowed <= 5 + 20 * 10


def test_bucket_clock_going_backwards_earns_nothing() -> None:
    """A timestamp earlier than the last one adds no tokens."""
    bucket = TokenBucket(rate_per_s=1, burst=1)
    assert bucket.allow(10.0)
    assert not bucket.allow(5.0)
    assert not bucket.allow(10.5)
    assert bucket.allow(11.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, 5), (-1, 5), (1, 0)])
def test_bucket_rejects_bad_parameters(rate: float, burst: int) -> None:
    """A non-positive rate or a burst below 1 is a programming error."""
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


@given(
    st.floats(0.5, 1000),
    st.integers(1, 50),
    st.lists(st.floats(0, 10), min_size=1, max_size=300),
)
def test_bucket_never_exceeds_budget(rate: float, burst: int, gaps: list[float]) -> None:
    """Within any run, allowed events <= burst + rate * elapsed time."""
    bucket = TokenBucket(rate, burst)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        allowed += bucket.allow(now)
    assert allowed <= burst + rate * now + 1e-6


# --- rate_limit_key --------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_rate_limit_key(host: str, key: str) -> None:
    """IPv4 is keyed per address, IPv6 per /64, other strings as given."""
    assert rate_limit_key(host) == key


# --- AddressRateLimiter ----------------------------------------------------------


def test_limiter_is_per_host() -> None:
    """One host exhausting its burst does not affect another host."""
    limiter = AddressRateLimiter(rate_per_s=20, burst=5)
    assert [limiter.allow("192.0.2.1", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow("192.0.2.2", 0.0)


def test_limiter_ipv6_shares_bucket_per_64() -> None:
    """Addresses in the same IPv6 /64 share one bucket."""
    limiter = AddressRateLimiter(rate_per_s=1, burst=2)
    assert limiter.allow("2001:db8::1", 0.0)
    assert limiter.allow("2001:db8::2", 0.0)
    assert not limiter.allow("2001:db8::3", 0.0)
    assert limiter.allow("2001:db8:0:1::1", 0.0)


def test_limiter_refills() -> None:
    """A throttled host is allowed again after 1/rate seconds."""
    limiter = AddressRateLimiter(rate_per_s=20, burst=5)
    for _ in range(5):
        limiter.allow("192.0.2.1", 0.0)
    assert not limiter.allow("192.0.2.1", 0.01)
    assert limiter.allow("192.0.2.1", 0.06)


def test_limiter_eviction_bound_and_lru_order() -> None:
    """At most max_entries buckets are kept; the least recently used goes first."""
    evicted: list[None] = []
    limiter = AddressRateLimiter(
        rate_per_s=1, burst=1, max_entries=3, on_evict=lambda: evicted.append(None)
    )
    for host in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        assert limiter.allow(host, 0.0)
    assert not limiter.allow("10.0.0.1", 0.0)  # touch: .1 is now most recent
    assert limiter.allow("10.0.0.4", 0.0)  # evicts .2, the least recent
    assert len(limiter) == 3
    assert len(evicted) == 1  # reported: an early eviction is a sign of a flood
    assert not limiter.allow("10.0.0.1", 0.0)  # .1 kept its empty bucket
    assert limiter.allow("10.0.0.2", 0.0)  # .2 was forgotten: fresh bucket


def test_limiter_forgets_idle_full_buckets() -> None:
    """Buckets that have refilled are dropped without being reported as evictions."""
    evicted: list[None] = []
    limiter = AddressRateLimiter(
        rate_per_s=10, burst=2, max_entries=100, on_evict=lambda: evicted.append(None)
    )
    for i in range(10):
        limiter.allow(f"10.0.0.{i}", 0.0)
    for step in range(10):
        limiter.allow("10.9.9.9", 10.0 + step)
    assert len(limiter) == 1
    assert evicted == []


@settings(max_examples=200)
@given(
    st.integers(1, 16),
    st.lists(st.tuples(st.integers(0, 40), st.floats(0, 0.5)), min_size=1, max_size=300),
)
def test_limiter_memory_bounded(max_entries: int, events: list[tuple[int, float]]) -> None:
    """Whatever the traffic, the limiter never holds more than max_entries buckets."""
    limiter = AddressRateLimiter(rate_per_s=5, burst=2, max_entries=max_entries)
    now = 0.0
    for host, gap in events:
        now += gap
        limiter.allow(f"198.51.100.{host}", now)
        assert len(limiter) <= max_entries


@settings(max_examples=200)
@given(st.lists(st.floats(0, 0.2), min_size=1, max_size=300))
def test_limiter_single_host_budget(gaps: list[float]) -> None:
    """With room for every host, one host gets at most burst + rate * elapsed."""
    limiter = AddressRateLimiter(rate_per_s=20, burst=5, max_entries=16)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        allowed += limiter.allow("203.0.113.5", now)
    assert allowed <= 5 + 20 * now + 1e-6


# --- BoundedExpiringSet ----------------------------------------------------------


def test_expiring_set_refuses_duplicate_until_expiry() -> None:
    """A key is refused while remembered and accepted again once its TTL passed."""
    seen = BoundedExpiringSet(max_entries=10, ttl_s=5.0)
    assert seen.add_evicting(b"k", 0.0)
    assert not seen.add_evicting(b"k", 4.9)
    assert seen.contains(b"k", 4.9)
    assert not seen.contains(b"k", 5.0)
    assert seen.add_evicting(b"k", 5.0)


def test_expiring_set_full_forgets_the_oldest_and_reports_it() -> None:
    """When full of unexpired keys, a new key is still taken: the oldest key is
    forgotten early, and on_evict is called for it (a sign of a flood)."""
    evicted: list[None] = []
    seen = BoundedExpiringSet(max_entries=2, ttl_s=10.0, on_evict=lambda: evicted.append(None))
    assert seen.add_evicting("a", 0.0)
    assert seen.add_evicting("b", 1.0)
    assert not seen.add_evicting("b", 2.0)  # a repeat takes no room and evicts nothing
    assert evicted == []
    assert seen.add_evicting("c", 2.0)
    assert len(evicted) == 1 and len(seen) == 2
    assert not seen.contains("a", 2.0)  # the oldest went
    assert seen.contains("b", 2.0) and seen.contains("c", 2.0)
    assert seen.add_evicting("d", 11.5)  # "b" expired at 11: room without evicting
    assert len(evicted) == 1


def test_expiring_set_prunes_in_insertion_order() -> None:
    """Expired keys are pruned from the front, so the set shrinks over time."""
    evicted: list[None] = []
    seen = BoundedExpiringSet(max_entries=100, ttl_s=1.0, on_evict=lambda: evicted.append(None))
    for i in range(50):
        seen.add_evicting(i, i * 0.1)
    assert len(seen) == 10  # at 4.9, only keys 40..49 are younger than 1 s
    seen.add_evicting("late", 5.55)  # keys up to 45 (expiring by 5.5) are gone too
    assert len(seen) == 4 + 1
    assert not seen.contains(45, 5.55)
    assert seen.contains(46, 5.55)
    assert evicted == []  # expiry is not eviction


@pytest.mark.parametrize(("entries", "ttl"), [(0, 1.0), (1, 0.0), (1, -1.0)])
def test_expiring_set_rejects_bad_parameters(entries: int, ttl: float) -> None:
    """A size below 1 or a non-positive TTL is a programming error."""
    with pytest.raises(ValueError):
        BoundedExpiringSet(entries, ttl)


@settings(max_examples=200)
@given(
    st.integers(1, 8),
    st.lists(st.tuples(st.integers(0, 20), st.floats(0, 2)), max_size=300),
)
def test_expiring_set_model(max_entries: int, events: list[tuple[int, float]]) -> None:
    """add_evicting() and contains() match a plain dict model (oldest key first out
    when full), size never exceeds max_entries, and every early eviction is reported."""
    ttl = 3.0
    evicted: list[None] = []
    seen = BoundedExpiringSet(
        max_entries=max_entries, ttl_s=ttl, on_evict=lambda: evicted.append(None)
    )
    model: dict[int, float] = {}  # insertion order is expiry order
    evictions = 0
    now = 0.0
    for key, gap in events:
        now += gap
        model = {k: e for k, e in model.items() if e > now}
        if key in model:
            expected = False
        else:
            while len(model) >= max_entries:
                del model[next(iter(model))]
                evictions += 1
            model[key] = now + ttl
            expected = True
        assert seen.contains(key, now) == (not expected)
        assert seen.add_evicting(key, now) == expected
        assert len(seen) <= max_entries
        assert len(seen) == len(model)
        assert len(evicted) == evictions


def test_a_token_is_there_at_ready_at_even_at_unix_time_magnitudes() -> None:
    """ready_at() names a time at which allow() succeeds: a timer set for it never
    fires for nothing (rounding at 1.7e9 s used to give a time just too early, and
    then the same time again)."""
    rng = random.Random(7)
    for _ in range(2000):
        start = 1.7e9 + rng.uniform(0, 1000)
        bucket = TokenBucket(rng.choice([1.0, 50.0, 100.0, 333.0]), 3, start)
        while bucket.allow(start):
            pass
        at = bucket.ready_at()
        assert at > start
        assert bucket.allow(at)
