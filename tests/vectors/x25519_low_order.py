"""X25519 public keys of small order: every shared secret with them is all zeros.

A peer that sends one of these forces a DH output that does not depend on our
private key, so a handshake carrying one must be dropped. ``cryptography``
(OpenSSL) raises ValueError for an all-zero X25519 output, and the test
module beside this one checks that it does so for every entry here.

Sources: libsodium's blocklist (``crypto_scalarmult/curve25519/ref10``) and
the list on https://cr.yp.to/ecdh.html. X25519 as specified in RFC 7748
(and as OpenSSL does it) clears bit 255 of a received u-coordinate and then
reduces it mod p = 2**255 - 19. Under that decoding the low-order
u-coordinates are exactly 0, 1, p - 1 and the two order-8 values below; their
only other encodings are p and p + 1 (0 and 1 again) and every one of these
seven with bit 255 set: fourteen byte strings in all.

cr.yp.to's list also has p + (order-8 value) and 2p - 1, 2p, 2p + 1: these are
low-order only for an implementation that reduces all 256 bits mod p. With bit
255 cleared they become ordinary points, so they are kept apart in
``NOT_LOW_ORDER_WHEN_MASKED`` rather than mislabelled.
"""

from __future__ import annotations

_P = 2**255 - 19

# (little-endian hex, what it is). Orders are of the point on the curve or,
# for p - 1, on its quadratic twist.
_CANONICAL: list[tuple[str, str]] = [
    (
        "0000000000000000000000000000000000000000000000000000000000000000",
        "u = 0: the point (0, 0), order 2",
    ),
    (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "u = 1: order 4",
    ),
    (
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "u = 325606250916557431795983626356110631294008115727848805560023387167927233504: order 8",
    ),
    (
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "u = 39382357235489614581723060781553021112529911719440698176882885853963445705823:"
        " order 8",
    ),
    (
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "u = p - 1: order 4 on the twist",
    ),
    (
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "u = p: non-canonical 0",
    ),
    (
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "u = p + 1: non-canonical 1",
    ),
]


def _with_high_bit(hex_le: str) -> str:
    """The same 32 bytes with bit 255 (ignored by X25519) set."""
    raw = bytearray(bytes.fromhex(hex_le))
    raw[31] |= 0x80
    return raw.hex()


LOW_ORDER_POINTS_DESCRIBED: list[tuple[bytes, str]] = [
    (bytes.fromhex(h), d) for h, d in _CANONICAL
] + [(bytes.fromhex(_with_high_bit(h)), d + ", bit 255 set") for h, d in _CANONICAL]
"""Each low-order encoding with a short description, for test ids and messages."""

LOW_ORDER_POINTS: list[bytes] = [point for point, _ in LOW_ORDER_POINTS_DESCRIBED]
"""All 14 32-byte X25519 public keys whose shared secret is always zero."""

NOT_LOW_ORDER_WHEN_MASKED: list[bytes] = [
    bytes.fromhex(h)
    for h in (
        "cdeb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",  # p + e0eb..
        "4c9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",  # p + 5f9c..
        "d9ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # 2p - 1
        "daffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # 2p
        "dbffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # 2p + 1
    )
]
"""cr.yp.to entries that are ordinary points once bit 255 is cleared (RFC 7748)."""

assert len(set(LOW_ORDER_POINTS)) == len(LOW_ORDER_POINTS) == 14
assert all(len(point) == 32 for point in LOW_ORDER_POINTS + NOT_LOW_ORDER_WHEN_MASKED)
assert int.from_bytes(LOW_ORDER_POINTS[5], "little") == _P
