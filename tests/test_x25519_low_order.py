"""Checks that tests/vectors/x25519_low_order.py is right for the installed crypto.

Each listed point must make ``cryptography``'s X25519 exchange raise ValueError
(the all-zero shared secret), and an independent RFC 7748 ladder written here
must agree that it is of small order -- so the list is neither short of a
point OpenSSL would accept nor padded with points that are merely odd encodings.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)

from tests.vectors.x25519_low_order import (
    LOW_ORDER_POINTS,
    LOW_ORDER_POINTS_DESCRIBED,
    NOT_LOW_ORDER_WHEN_MASKED,
)

P = 2**255 - 19
A24 = 121665


def _decode_u(raw: bytes) -> int:
    """RFC 7748 decodeUCoordinate: little-endian, bit 255 cleared, then mod p."""
    return (int.from_bytes(raw, "little") & ((1 << 255) - 1)) % P


def _clamp(raw: bytes) -> int:
    """RFC 7748 decodeScalar25519."""
    k = int.from_bytes(raw, "little")
    return (k & ~7 & ((1 << 254) - 1)) | (1 << 254)


def _ladder(k: int, u: int) -> int:
    """RFC 7748 Montgomery ladder: the u-coordinate of k * u (0 for O and (0, 0))."""
    x2, z2, x3, z3, swap = 1, 0, u, 1, 0
    for t in reversed(range(255)):
        bit = (k >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % P, (x2 - z2) % P
        aa, bb = a * a % P, b * b % P
        e = (aa - bb) % P
        da, cb = (x3 - z3) * a % P, (x3 + z3) * b % P
        x3, z3 = (da + cb) ** 2 % P, u * (da - cb) ** 2 % P
        x2, z2 = aa * bb % P, e * (aa + A24 * e) % P
    if swap:
        x2, z2 = x3, z3
    return x2 * pow(z2, P - 2, P) % P


def _is_small_order(u: int) -> bool:
    """Whether 8 * u is the identity or (0, 0), i.e. u has order dividing 8."""
    return _ladder(8, u) == 0


def test_ladder_matches_rfc7748_and_cryptography() -> None:
    """The reference ladder reproduces RFC 7748's vector and OpenSSL's output."""
    k = bytes.fromhex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
    u = bytes.fromhex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
    expected = "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"
    assert _ladder(_clamp(k), _decode_u(u)).to_bytes(32, "little").hex() == expected
    ours = X25519PrivateKey.from_private_bytes(k)
    theirs = X25519PublicKey.from_public_bytes(u)
    assert ours.exchange(theirs).hex() == expected


@pytest.mark.parametrize(
    "point",
    LOW_ORDER_POINTS,
    ids=[description for _, description in LOW_ORDER_POINTS_DESCRIBED],
)
def test_low_order_point_exchange_raises(point: bytes) -> None:
    """Exchanging with a listed point raises ValueError, and it is truly low-order."""
    assert _is_small_order(_decode_u(point))
    peer = X25519PublicKey.from_public_bytes(point)
    with pytest.raises(ValueError):
        X25519PrivateKey.generate().exchange(peer)


@pytest.mark.parametrize("point", NOT_LOW_ORDER_WHEN_MASKED, ids=lambda p: p.hex()[:8])
def test_unmasked_only_entries_are_ordinary_points(point: bytes) -> None:
    """cr.yp.to's 256-bit-reduced entries are ordinary points under RFC 7748 decoding."""
    assert not _is_small_order(_decode_u(point))
    peer = X25519PublicKey.from_public_bytes(point)
    assert X25519PrivateKey.generate().exchange(peer) != bytes(32)


def test_list_is_complete_for_large_encodings() -> None:
    """Of the encodings p .. 2**255 - 1 (which reduce to 0..18), only p, p+1 are listed.

    Together with the five canonical small-order u (0, 1, p - 1 and the two
    order-8 values) and their bit-255 twins, that is every low-order encoding.
    """
    listed = {int.from_bytes(point, "little") for point in LOW_ORDER_POINTS}
    small = {u for u in range(P, 2**255) if _is_small_order(u % P)}
    assert small == {P, P + 1}
    assert small <= listed
    order_8 = {
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
    }
    assert {u for u in listed if u < P} == {0, 1, P - 1} | order_8
    assert {u & ((1 << 255) - 1) for u in listed} == {0, 1, P - 1, P, P + 1} | order_8
