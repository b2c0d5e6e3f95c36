"""Fernet in its binary form, the same tokens for a third of the CPU.

Every DATA datagram, every handshake message and every sealed room line is a Fernet
token (docs/PROTOCOL.md 2.3): version 0x80, an 8-byte timestamp, a 16-byte IV, the
AES-128-CBC ciphertext of the PKCS7-padded plaintext, and an HMAC-SHA256 of all that
under the key's first half. cryptography's `Fernet` makes them right, but builds a new
HMAC object and a new cipher context for every token, and speaks URL-safe base64 that
the wire then undoes: 15-25 µs a token on the project's VM, the largest single cost of
a client in a busy room (every member opens every room line) and of the benchmark's
load drivers. `BinaryFernet` makes and accepts exactly the same tokens (tests compare
both ways with cryptography's Fernet) in 4-6 µs:

* the HMAC's two padded key blocks are hashed once (RFC 2104's precomputation), as for
  the ENVELOPE MAC (`wire.HmacSha256`);
* opening decrypts with one long-lived AES-ECB context and does CBC's XOR with the
  previous ciphertext block itself, after the MAC was checked (encrypt-then-MAC: a
  token that does not authenticate is never decrypted, so the padding check leaks
  nothing);
* sealing keeps one long-lived AES-CBC context whose chain goes on from token to
  token. The first block fed is ``R xor L``, with R 16 fresh random bytes and L the
  last ciphertext block the context produced, so its output is ``AES_k(R)``: that is
  the token's IV, and the rest is the CBC encryption of the plaintext under it. An IV
  made by encrypting a fresh nonce under the same key is one of the two ways NIST SP
  800-38A (appendix C) gives for CBC, and with R random it is as unpredictable as
  `os.urandom(16)` to anyone without the key.

The contexts cost about 2 KiB a key, which 10,000 idle sessions (two keys each) could
not afford (docs/PERFORMANCE.md: within 100 MB in all). So only the `HOT_KEYS` most
recently used keys hold them (least recently used first to give them up); any other
key builds them again when used, which costs what cryptography's Fernet always costs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections import OrderedDict
from typing import Any

from cryptography.fernet import InvalidToken
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

VERSION = 0x80
#: version (1) + timestamp (8) + IV (16) + HMAC (32); the ciphertext is 16*k, k >= 1.
OVERHEAD_BYTES = 57
MIN_TOKEN_BYTES = OVERHEAD_BYTES + 16
_BLOCK = 16
_SHA256_BLOCK = 64
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_PADS = [bytes([n]) * n for n in range(_BLOCK + 1)]

#: Keys that keep their cipher contexts and hash states between tokens.
HOT_KEYS = 1024


class _Hot:
    """What a key keeps while it is in use: cipher contexts and hash states."""

    __slots__ = ("inner", "outer", "decrypt_blocks", "encrypt_chain", "last")

    def __init__(self, signing: bytes, encryption: bytes) -> None:
        block = signing.ljust(_SHA256_BLOCK, b"\0")
        self.inner = hashlib.sha256(block.translate(_IPAD))
        self.outer = hashlib.sha256(block.translate(_OPAD))
        aes = algorithms.AES(encryption)
        self.decrypt_blocks: Any = Cipher(aes, modes.ECB()).decryptor().update
        iv = os.urandom(_BLOCK)
        self.encrypt_chain: Any = Cipher(aes, modes.CBC(iv)).encryptor().update
        self.last = int.from_bytes(iv, "big")  # the chain's previous ciphertext block

    def mac(self, data: bytes) -> bytes:
        inner = self.inner.copy()
        inner.update(data)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.digest()


_hot: OrderedDict[int, BinaryFernet] = OrderedDict()


class BinaryFernet:
    """A Fernet key that seals and opens binary tokens (the base64 of Fernet's own
    tokens decoded). Not thread-safe: the reactor thread only."""

    __slots__ = ("_raw", "_state")

    def __init__(self, raw32: bytes) -> None:
        if len(raw32) != 32:
            raise ValueError("a Fernet key is 32 bytes")
        self._raw = bytes(raw32)  # signing || encryption (one object: 10,000 sessions)
        self._state: _Hot | None = None

    @classmethod
    def from_key(cls, key: str | bytes) -> BinaryFernet:
        """From a key in Fernet's text form (44 characters of URL-safe base64)."""
        raw = base64.urlsafe_b64decode(key)
        return cls(raw)

    @property
    def raw(self) -> bytes:
        """The 32 raw key bytes (signing || encryption)."""
        return self._raw

    def _hot(self) -> _Hot:
        state = self._state
        if state is not None:
            _hot.move_to_end(id(self))
            return state
        state = self._state = _Hot(self._raw[:16], self._raw[16:])
        _hot[id(self)] = self
        while len(_hot) > HOT_KEYS:
            _, coldest = _hot.popitem(last=False)
            coldest._state = None
        return state

    def seal(self, plaintext: bytes, timestamp: int) -> bytes:
        """A binary Fernet token of ``plaintext`` stamped ``timestamp`` (Unix seconds)."""
        state = self._hot()
        pad = _PADS[_BLOCK - len(plaintext) % _BLOCK]
        nonce = int.from_bytes(os.urandom(_BLOCK), "big") ^ state.last
        # The first block out is AES(R): the IV. Then the ciphertext, chained from it.
        out = state.encrypt_chain(nonce.to_bytes(_BLOCK, "big") + plaintext + pad)
        state.last = int.from_bytes(out[-_BLOCK:], "big")
        body = b"\x80" + timestamp.to_bytes(8, "big") + out
        return body + state.mac(body)

    def open(self, token: bytes) -> tuple[bytes, int]:
        """Verify and decrypt a binary token: (plaintext, timestamp). Raises
        InvalidToken for exactly the tokens cryptography's Fernet refuses (no TTL)."""
        return self.decrypt(token), int.from_bytes(token[1:9], "big")

    def decrypt(self, token: bytes) -> bytes:
        """open() without the timestamp: what a client does with every room line."""
        size = len(token)
        if size < MIN_TOKEN_BYTES or (size - OVERHEAD_BYTES) % _BLOCK or token[0] != VERSION:
            raise InvalidToken
        state = self._state
        if state is None:
            state = self._hot()
        else:  # _hot(), for a key that is hot already (one call less per token)
            _hot.move_to_end(id(self))
        body = token[:-32]
        # _Hot.mac(), written out (one call less per token).
        inner = state.inner.copy()
        inner.update(body)
        outer = state.outer.copy()
        outer.update(inner.digest())
        if not hmac.compare_digest(outer.digest(), token[-32:]):
            raise InvalidToken
        n = size - OVERHEAD_BYTES
        blocks = state.decrypt_blocks(body[25:])
        chained = int.from_bytes(body[9 : 9 + n], "big")  # IV, then each previous block
        padded = (int.from_bytes(blocks, "big") ^ chained).to_bytes(n, "big")
        pad = padded[-1]
        if not 1 <= pad <= _BLOCK or not padded.endswith(_PADS[pad]):
            raise InvalidToken
        return padded[:-pad]
