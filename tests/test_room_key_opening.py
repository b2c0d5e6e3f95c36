"""BinaryFernet (udpchat.core.fernet), as the client holds room keys, opens sealed
room messages exactly as Fernet does: the same plaintext for every token Fernet
accepts, InvalidToken for every one it rejects. Checked against cryptography's Fernet
on its own tokens, on every single-bit change and truncation of them, and on tokens
signed with the right key whose insides are wrong (version, block alignment,
padding)."""

from __future__ import annotations

import base64
import hmac
import os

import pytest
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from udpchat.chat.roomkeys import KEY_ID_BYTES, open_sealed, seal
from udpchat.core.fernet import BinaryFernet

KEY = Fernet.generate_key()
FERNET = Fernet(KEY)
OPENER = BinaryFernet.from_key(KEY.decode("ascii"))  # as a "room-key" message carries it


def fernet_open(token: bytes) -> bytes | None:
    """What Fernet (no TTL) makes of binary ``token``: its plaintext, or None."""
    try:
        return FERNET.decrypt(base64.urlsafe_b64encode(token))
    except InvalidToken:
        return None


def opened(token: bytes) -> bytes | None:
    try:
        return OPENER.decrypt(token)
    except InvalidToken:
        return None


def token_of(plaintext: bytes, timestamp: int = 0) -> bytes:
    return base64.urlsafe_b64decode(FERNET.encrypt_at_time(plaintext, timestamp))


def signed(body: bytes) -> bytes:
    """``body`` with a valid HMAC of KEY: a token whose insides only a key holder
    (the server) could have got wrong."""
    raw = base64.urlsafe_b64decode(KEY)
    return body + hmac.digest(raw[:16], body, "sha256")


def crafted(padded: bytes, version: int = 0x80) -> bytes:
    """A signed token of AES-CBC(``padded``), its padding (or lack of it) as given."""
    raw, iv = base64.urlsafe_b64decode(KEY), os.urandom(16)
    encryptor = Cipher(algorithms.AES(raw[16:]), modes.CBC(iv)).encryptor()
    body = encryptor.update(padded) + encryptor.finalize()
    return signed(bytes([version]) + bytes(8) + iv + body)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 31, 32, 33, 200, 1200])
def test_opens_what_fernet_sealed_to_the_same_plaintext(size: int) -> None:
    """Every plaintext length (one block, a block boundary, several blocks), any
    timestamp (seal uses 0; Fernet without a TTL does not look at it)."""
    plaintext = os.urandom(size)
    for timestamp in (0, 1_800_000_000, 2**64 - 1):
        token = token_of(plaintext, timestamp)
        assert opened(token) == fernet_open(token) == plaintext


def test_every_changed_bit_and_every_truncation_is_rejected_as_fernet_does() -> None:
    """Flip any one bit of a token (version, timestamp, IV, ciphertext, HMAC: without
    a TTL the timestamp is not checked, but the HMAC covers it), cut it anywhere, or
    add a byte: both refuse it."""
    token = token_of(b'{"t":"say","room":"lobby","nick":"bob","text":"hello"}')
    for index in range(len(token)):
        for bit in range(8):
            changed = bytearray(token)
            changed[index] ^= 1 << bit
            assert opened(bytes(changed)) is None and fernet_open(bytes(changed)) is None
    for size in range(len(token)):
        assert opened(token[:size]) is None and fernet_open(token[:size]) is None
    assert opened(token + b"\0") is None and fernet_open(token + b"\0") is None


def test_another_key_opens_nothing() -> None:
    other = BinaryFernet.from_key(Fernet.generate_key())
    with pytest.raises(InvalidToken):
        other.decrypt(token_of(b"hello"))


@pytest.mark.parametrize(
    "padded",
    [
        b"a" * 15 + b"\x01",  # valid: one byte of padding
        b"\x10" * 16,  # valid: a whole block of padding, empty plaintext
        b"a" * 16 + b"\x10" * 16,
        b"a" * 15 + b"\x00",  # a pad of 0
        b"a" * 15 + b"\x11",  # a pad longer than a block
        b"a" * 14 + b"\x01\x02",  # pad bytes that disagree
        b"a" * 16 + b"\x00" * 15 + b"\x20",
        b"",  # no ciphertext at all
    ],
)
def test_signed_tokens_with_bad_insides_are_judged_as_fernet_does(padded: bytes) -> None:
    """Tokens with a valid HMAC (made with the key) whose padding is wrong, or that
    hold no block at all: the same plaintext, or the same refusal."""
    token = crafted(padded)
    assert opened(token) == fernet_open(token)


def test_signed_tokens_of_the_wrong_version_or_shape_are_rejected() -> None:
    """Version byte other than 0x80; ciphertext not in whole AES blocks."""
    token = crafted(b"a" * 15 + b"\x01", version=0x81)
    assert opened(token) is None and fernet_open(token) is None
    good = crafted(b"a" * 15 + b"\x01")
    unaligned = signed(good[:-32][:-1])  # one byte short of a whole block, re-signed
    assert opened(unaligned) is None and fernet_open(unaligned) is None


def test_signed_tokens_too_short_to_hold_a_block_are_rejected() -> None:
    """With a valid HMAC but no whole block of ciphertext, down to a body too short
    for the IV: both refuse it (Fernet takes its IV from what follows, the HMAC, and
    then finds no padding)."""
    for size in range(41):  # 25 bytes of version, timestamp and IV, 16 of a block
        token = signed((b"\x80" + bytes(40))[:size])
        assert opened(token) is None and fernet_open(token) is None


@given(st.binary(max_size=300), st.integers(0, 2**64 - 1), st.data())
def test_random_tokens_and_changes_agree_with_fernet(
    plaintext: bytes, timestamp: int, data: st.DataObject
) -> None:
    token = bytearray(token_of(plaintext, timestamp))
    assert opened(bytes(token)) == plaintext
    index = data.draw(st.integers(0, len(token) - 1))
    token[index] = data.draw(st.integers(0, 255))
    assert opened(bytes(token)) == fernet_open(bytes(token))


def test_bad_keys_are_refused_like_fernet_refuses_them() -> None:
    for key in ["", "not base64!", base64.urlsafe_b64encode(bytes(31)).decode()]:
        with pytest.raises(ValueError):
            Fernet(key)
        with pytest.raises(ValueError):
            BinaryFernet.from_key(key)


def test_open_sealed_finds_the_key_by_its_id() -> None:
    """A sealed message names its key: that key opens it, an unknown id or a message
    too short to hold one is InvalidToken."""
    sealed = (7).to_bytes(KEY_ID_BYTES, "big") + base64.urlsafe_b64decode(
        FERNET.encrypt_at_time(b'{"t":"say"}', 0)
    )  # as the server seals it (with cryptography's Fernet here)
    assert seal(7, OPENER, b'{"t":"say"}')[:KEY_ID_BYTES] == sealed[:KEY_ID_BYTES]
    assert open_sealed({7: OPENER}, sealed) == b'{"t":"say"}'
    for keys, message in [({8: OPENER}, sealed), ({7: OPENER}, sealed[:KEY_ID_BYTES])]:
        with pytest.raises(InvalidToken):
            open_sealed(keys, message)
