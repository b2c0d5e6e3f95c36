"""A short fingerprint of a pre-shared key, for two people to compare keys by reading
eight characters aloud ("is yours 7K2M-QX9D too?").

The daemon logs it at start-up, `udpchat-keygen --fingerprint PATH` prints it, and the
client shows it when the server does not answer (a key that differs from the server's
looks exactly like a dead server: the server answers nothing it cannot authenticate).

It is HKDF-SHA256 of the key under its own label, so it is a different function of the
key than every key the protocol uses, and safe to show (docs/PROTOCOL.md section 2.9).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from udpchat.core.wire import psk_raw

LABEL_FINGERPRINT = b"udpchat fingerprint v1"
#: 40 bits: eight characters of five bits each.
FINGERPRINT_BYTES = 5
#: Crockford's base32 alphabet: digits and capitals without I, L, O and U, so that no
#: two characters look alike (1/I/L, 0/O) and none is read as another word.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def fingerprint(psk: bytes) -> str:
    """The fingerprint of ``psk`` (the key in its file form, 44 characters of URL-safe
    base64) as two groups of four characters, e.g. "7K2M-QX9D".

    ValueError if ``psk`` is not a key (udpchat.core.wire.psk_raw).
    """
    okm = HKDF(hashes.SHA256(), FINGERPRINT_BYTES, salt=None, info=LABEL_FINGERPRINT).derive(
        psk_raw(psk)
    )
    bits = int.from_bytes(okm, "big")
    chars = [ALPHABET[(bits >> shift) & 0x1F] for shift in range(35, -1, -5)]
    return "".join(chars[:4]) + "-" + "".join(chars[4:])
