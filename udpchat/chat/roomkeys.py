"""Room keys (extension "room-keys", docs/PROTOCOL.md section 11): seal a room's
message once, with a key every member that negotiated the extension holds.

The server keeps one key per room. Before a message is sealed, every capable member
of the room must hold the current key (those who do not get a "room-key" message,
sent on their own session, ahead of the sealed message in the same ordered stream),
and no one who has left may: a key that a former member holds, or that is older than
ROOM_KEY_MAX_AGE_S, is replaced first. Rotation is lazy, at the next message of the
room, so a quiet room costs nothing.

A sealed message is ``key id (4 bytes, big-endian) || binary Fernet token`` of the
JSON message, with the token's timestamp 0 (it is never checked; a real one would
show observers the server's clock).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from udpchat.chat.messages import ROOM_KEY_ID_MAX, RoomKey, encode

#: A room key is replaced at the room's first message after this age, so that one
#: leaked key opens at most this much of a room's traffic (as sessions rekey).
ROOM_KEY_MAX_AGE_S = 120.0
KEY_ID_BYTES = 4
#: A binary Fernet token: version (0x80), timestamp (8 bytes), IV (16), AES-128-CBC
#: ciphertext (whole blocks of 16, at least one: PKCS7 always pads), HMAC-SHA256 (32).
_AES_BLOCK_BYTES = 16
_IV_AT = 9
_CIPHERTEXT_AT = _IV_AT + _AES_BLOCK_BYTES
_HMAC_BYTES = 32
_TOKEN_MIN_BYTES = _CIPHERTEXT_AT + _AES_BLOCK_BYTES + _HMAC_BYTES
_OVERHEAD_BYTES = _CIPHERTEXT_AT + _HMAC_BYTES  # all but the ciphertext
_HMAC_AT = -_HMAC_BYTES
_LAST_BLOCK_AT = _HMAC_AT - _AES_BLOCK_BYTES
_HMAC_BLOCK_BYTES = 64  # SHA-256's block: the HMAC pads its key to it


@dataclass(eq=False, slots=True)
class _Key:
    key_id: int
    secret: str  # the Fernet key, as sent in "room-key"
    fernet: Fernet
    created: float
    holders: set[bytes] = field(default_factory=set)  # sessions that were sent it


def seal(key_id: int, fernet: Fernet, payload: bytes) -> bytes:
    """A sealed room message: the key id, then the Fernet token in binary."""
    token = base64.urlsafe_b64decode(fernet.encrypt_at_time(payload, 0))
    return key_id.to_bytes(KEY_ID_BYTES, "big") + token


class OpeningKey:
    """A room key (the Fernet key of a "room-key" message) set up once to open the
    sealed messages it sealed.

    It accepts exactly the tokens Fernet.decrypt (no TTL) accepts, and returns the
    same plaintext; it only does the work once per key that Fernet does per token:
    the HMAC's padded key is hashed once (each token copies the two hash states),
    and AES-128-CBC decryption is done as AES-ECB decryption of the ciphertext XOR
    the IV and the ciphertext shifted by one block (that is what CBC decryption is),
    with one ECB context for every token (ECB keeps no state between whole blocks).
    About a third of Fernet's cost, for a client that opens a token per line it
    shows (tests/test_room_key_opening.py checks it against Fernet).
    """

    __slots__ = ("_inner", "_outer", "_blocks")

    def __init__(self, key: str | bytes) -> None:
        """``key``: a Fernet key (32 bytes in URL-safe base64); ValueError otherwise."""
        try:
            raw = base64.urlsafe_b64decode(key)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("Fernet key must be 32 url-safe base64-encoded bytes.") from exc
        if len(raw) != 32:
            raise ValueError("Fernet key must be 32 url-safe base64-encoded bytes.")
        signing = raw[:16].ljust(_HMAC_BLOCK_BYTES, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in signing))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in signing))
        self._blocks = Cipher(algorithms.AES(raw[16:]), modes.ECB()).decryptor()

    def open(self, token: bytes) -> bytes:
        """The plaintext of binary Fernet ``token``; InvalidToken if it is not one
        this key made (any timestamp: Fernet without a TTL)."""
        size = len(token)
        if (
            size < _TOKEN_MIN_BYTES
            or (size - _OVERHEAD_BYTES) % _AES_BLOCK_BYTES
            or token[0] != 0x80  # Fernet's version
        ):
            raise InvalidToken
        inner = self._inner.copy()
        inner.update(token[:_HMAC_AT])
        outer = self._outer.copy()
        outer.update(inner.digest())
        if not hmac.compare_digest(outer.digest(), token[_HMAC_AT:]):
            raise InvalidToken
        # Authenticated: from here on only the key's holders can have made it.
        # Plaintext block i = AES-decrypt(ciphertext block i) XOR the block before it.
        decrypted = self._blocks.update(token[_CIPHERTEXT_AT:_HMAC_AT])
        chained = token[_IV_AT:_LAST_BLOCK_AT]  # the IV, then all blocks but the last
        padded = (int.from_bytes(decrypted) ^ int.from_bytes(chained)).to_bytes(len(decrypted))
        pad = padded[-1]
        if not 0 < pad <= _AES_BLOCK_BYTES or padded[-pad:] != bytes((pad,)) * pad:
            raise InvalidToken  # PKCS7
        return padded[:-pad]


def open_sealed(keys: Mapping[int, OpeningKey], sealed: bytes) -> bytes:
    """The JSON message inside a sealed room message; raise InvalidToken if no key
    in ``keys`` (key id -> OpeningKey) opens it."""
    key = keys.get(int.from_bytes(sealed[:KEY_ID_BYTES], "big"))
    if key is None:
        raise InvalidToken
    return key.open(sealed[KEY_ID_BYTES:])


class RoomKeys:
    """The current key of each room (see module docstring); bounded to `max_rooms`
    (the least recently used room's key is forgotten: its next message makes a new
    one, which is a rotation like any other)."""

    def __init__(self, max_rooms: int) -> None:
        self._max_rooms = max_rooms
        self._keys: OrderedDict[str, _Key] = OrderedDict()
        # Ids count up from a random start: unique for the life of this server, and
        # a client never mistakes a key of a previous server run for a current one.
        self._next_id = secrets.randbelow(ROOM_KEY_ID_MAX + 1)
        self.rotations = 0

    def prepare(
        self, room: str, capable: Iterable[bytes], now: float
    ) -> tuple[list[tuple[bytes, bytes]], int, Fernet]:
        """Make every session in `capable` (the room's members that negotiated room
        keys, all of them) hold the room's current key, and nobody else.

        Returns the "room-key" messages to send first, as (session id, payload), and
        the key id and Fernet to seal the room's message with.
        """
        capable = list(capable)
        members = set(capable)
        key = self._keys.get(room)
        if key is None or not key.holders <= members or key.created + ROOM_KEY_MAX_AGE_S <= now:
            if key is not None:
                self.rotations += 1
            key = self._new_key(room, now)
        self._keys.move_to_end(room)
        announce = encode(RoomKey(room, key.key_id, key.secret))
        sends = [(sid, announce) for sid in capable if sid not in key.holders]
        key.holders.update(sid for sid, _ in sends)
        return sends, key.key_id, key.fernet

    def forget(self, room: str) -> None:
        """The room has no capable member left: its next message starts a new key."""
        if self._keys.pop(room, None) is not None:
            self.rotations += 1

    def _new_key(self, room: str, now: float) -> _Key:
        secret = Fernet.generate_key().decode("ascii")
        key = _Key(self._next_id, secret, Fernet(secret), now)
        self._next_id = (self._next_id + 1) % (ROOM_KEY_ID_MAX + 1)
        self._keys[room] = key
        while len(self._keys) > self._max_rooms:
            self._keys.popitem(last=False)
        return key
