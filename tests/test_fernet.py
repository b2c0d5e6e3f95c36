"""BinaryFernet (udpchat.core.fernet) makes and accepts exactly the tokens of
cryptography's Fernet, in binary form: what one seals the other opens, and what one
refuses the other refuses."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import pytest
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from udpchat.core import fernet as fernet_module
from udpchat.core.fernet import BinaryFernet

KEY = Fernet.generate_key()
REFERENCE = Fernet(KEY)
OURS = BinaryFernet.from_key(KEY)


def b64(token: bytes) -> bytes:
    return base64.urlsafe_b64encode(token)


def binary(token: bytes) -> bytes:
    return base64.urlsafe_b64decode(token)


def reference_opens(token: bytes) -> bytes | None:
    try:
        return REFERENCE.decrypt(b64(token))
    except InvalidToken:
        return None


def ours_opens(token: bytes) -> bytes | None:
    try:
        return OURS.decrypt(token)
    except InvalidToken:
        return None


@settings(max_examples=60, deadline=None)
@given(plaintext=st.binary(max_size=300), timestamp=st.integers(0, 2**40))
def test_what_either_seals_the_other_opens_with_its_timestamp(
    plaintext: bytes, timestamp: int
) -> None:
    ours = OURS.seal(plaintext, timestamp)
    assert REFERENCE.decrypt(b64(ours)) == plaintext
    assert REFERENCE.extract_timestamp(b64(ours)) == timestamp
    theirs = binary(REFERENCE.encrypt_at_time(plaintext, timestamp))
    assert OURS.open(theirs) == (plaintext, timestamp)
    assert len(ours) == len(theirs)


def test_every_seal_has_its_own_iv_and_ciphertext() -> None:
    tokens = [OURS.seal(b"same line", 0) for _ in range(500)]
    assert len({t[9:25] for t in tokens}) == 500
    assert len(set(tokens)) == 500


@settings(max_examples=40, deadline=None)
@given(
    plaintext=st.binary(min_size=0, max_size=80),
    position=st.integers(0, 10_000),
    bit=st.integers(0, 7),
)
def test_a_flipped_bit_anywhere_is_refused_by_both(
    plaintext: bytes, position: int, bit: int
) -> None:
    token = bytearray(OURS.seal(plaintext, 7))
    token[position % len(token)] ^= 1 << bit
    assert ours_opens(bytes(token)) is None
    assert reference_opens(bytes(token)) is None


@pytest.mark.parametrize("cut", [1, 15, 16, 17, 32, 33, 57])
def test_truncated_or_extended_tokens_are_refused_by_both(cut: int) -> None:
    token = OURS.seal(b"a line of chat", 1)
    for bad in (token[:-cut], token + os.urandom(cut), b"", token[:cut]):
        assert ours_opens(bad) is None
        assert reference_opens(bad) is None


def forge_with_the_key(raw: bytes, padded: bytes, version: int = 0x80) -> bytes:
    """A token built by hand under the key: correct MAC, any padding, any version."""
    iv = os.urandom(16)
    encryptor = Cipher(algorithms.AES(raw[16:]), modes.CBC(iv)).encryptor()
    body = bytes([version]) + (3).to_bytes(8, "big") + iv + encryptor.update(padded)
    return body + hmac.digest(raw[:16], body, hashlib.sha256)


@pytest.mark.parametrize(
    "padded",
    [
        b"x" * 15 + b"\x00",  # pad byte 0
        b"x" * 15 + b"\x11",  # pad byte 17 > block
        b"x" * 14 + b"\x01\x02",  # last byte 2, the one before it not 2
        b"x" * 16 + b"\x10" * 15 + b"\x0f",  # a full pad block with one wrong byte
        b"y" * 32 + b"\x05" * 11 + b"\x04" + b"\x05" * 4,  # wrong byte inside
    ],
)
def test_bad_padding_under_a_valid_mac_is_refused_by_both(padded: bytes) -> None:
    token = forge_with_the_key(OURS.raw, padded)
    assert reference_opens(token) is None
    assert ours_opens(token) is None


@pytest.mark.parametrize("pad", [1, 2, 15, 16])
def test_good_padding_forged_by_hand_is_accepted_by_both(pad: int) -> None:
    padded = b"z" * (32 - pad) + bytes([pad]) * pad
    token = forge_with_the_key(OURS.raw, padded)
    assert ours_opens(token) == reference_opens(token) == b"z" * (32 - pad)


def test_a_version_other_than_0x80_is_refused_by_both() -> None:
    token = forge_with_the_key(OURS.raw, b"q" * 12 + b"\x04" * 4, version=0x81)
    assert ours_opens(token) is None
    assert reference_opens(token) is None


def test_another_keys_tokens_are_refused() -> None:
    other = BinaryFernet.from_key(Fernet.generate_key())
    with pytest.raises(InvalidToken):
        OURS.open(other.seal(b"hello", 0))


def test_keys_beyond_the_hot_ones_give_up_their_contexts_and_still_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only HOT_KEYS keys keep cipher contexts (2 KiB each): 10,000 idle sessions
    must not hold 20,000 of them. A key that gave them up builds them again."""
    monkeypatch.setattr(fernet_module, "HOT_KEYS", 4)
    keys = [BinaryFernet(os.urandom(32)) for _ in range(10)]
    tokens = [key.seal(b"line %d" % i, i) for i, key in enumerate(keys)]
    assert sum(key._state is not None for key in keys) <= 4  # noqa: SLF001
    for i, key in enumerate(keys):
        assert key.open(tokens[i]) == (b"line %d" % i, i)
        assert key.open(key.seal(b"again", 5)) == (b"again", 5)
    assert sum(key._state is not None for key in keys) <= 4  # noqa: SLF001


def test_a_key_must_be_32_bytes() -> None:
    with pytest.raises(ValueError):
        BinaryFernet(b"short")
