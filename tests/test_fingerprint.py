"""The key fingerprint (udpchat.fingerprint, PROTOCOL.md 2.9): eight characters two
people can read aloud to tell whether they hold the same key; udpchat-keygen prints
it (the daemon's start-up line: test_client_diagnosis.py), and it reveals nothing
usable about the key."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from hypothesis import given
from hypothesis import strategies as st

from udpchat.core import wire
from udpchat.daemon.keygen import main as keygen_main
from udpchat.fingerprint import ALPHABET, LABEL_FINGERPRINT, fingerprint

#: PROTOCOL.md 2.9's test vector: the key whose raw bytes are 00 01 .. 1f.
VECTOR_KEY = base64.urlsafe_b64encode(bytes(range(32)))
VECTOR_FINGERPRINT = "YM8H-0BMS"


def rfc5869_first_block(ikm: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 with no salt, first output block, written out from RFC 5869."""
    prk = hmac.new(b"\0" * 32, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_the_published_vector() -> None:
    """The key 00 01 .. 1f has fingerprint YM8H-0BMS: the first 5 bytes of HKDF-SHA256
    under "udpchat fingerprint v1" (f5 11 10 2e 99), in Crockford's base32."""
    assert rfc5869_first_block(bytes(range(32)), LABEL_FINGERPRINT)[:5].hex() == "f511102e99"
    assert fingerprint(VECTOR_KEY) == VECTOR_FINGERPRINT


@given(st.binary(min_size=32, max_size=32))
def test_eight_unambiguous_characters_from_the_first_40_bits(raw: bytes) -> None:
    """Any key: two groups of four characters from an alphabet without I, L, O or U,
    which spell the first 40 bits of HKDF under the fingerprint's own label."""
    text = fingerprint(base64.urlsafe_b64encode(raw))
    assert len(text) == 9 and text[4] == "-"
    chars = text.replace("-", "")
    assert all(c in ALPHABET for c in chars) and not set("ILOU") & set(chars)
    value = sum(ALPHABET.index(c) << (5 * (7 - i)) for i, c in enumerate(chars))
    assert value.to_bytes(5, "big") == rfc5869_first_block(raw, LABEL_FINGERPRINT)[:5]


def test_the_label_is_none_of_the_protocols() -> None:
    """The fingerprint's HKDF label differs from every label the protocol derives keys
    under, so it is independent of every key in use (PROTOCOL.md 9)."""
    labels = {value for name, value in vars(wire).items() if name.startswith("LABEL_")}
    assert labels and LABEL_FINGERPRINT not in labels
    assert all(not label.startswith(LABEL_FINGERPRINT) for label in labels)


def test_different_keys_have_different_fingerprints() -> None:
    """Two random keys practically never share a fingerprint (40 bits)."""
    assert fingerprint(Fernet.generate_key()) != fingerprint(Fernet.generate_key())


def test_keygen_prints_the_fingerprint_of_a_new_and_of_an_existing_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`udpchat-keygen PATH` says the new key's fingerprint; `--fingerprint PATH`
    prints "FINGERPRINT  PATH" for an existing one and changes nothing."""
    path = tmp_path / "chat.key"
    assert keygen_main([str(path)]) == 0
    created = capsys.readouterr().out
    key = path.read_bytes().strip()
    assert f"fingerprint {fingerprint(key)}" in created
    assert keygen_main(["--fingerprint", str(path)]) == 0
    assert capsys.readouterr().out == f"{fingerprint(key)}  {path}\n"
    assert path.read_bytes().strip() == key


def test_keygen_fingerprint_of_a_missing_key_is_one_line_and_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert keygen_main(["--fingerprint", str(tmp_path / "nope.key")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
