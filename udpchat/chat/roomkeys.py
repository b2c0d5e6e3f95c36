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

import secrets
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken

from udpchat.chat.messages import ROOM_KEY_ID_MAX, RoomKey, encode
from udpchat.core.fernet import BinaryFernet

#: A room key is replaced at the room's first message after this age, so that one
#: leaked key opens at most this much of a room's traffic (as sessions rekey).
ROOM_KEY_MAX_AGE_S = 120.0
KEY_ID_BYTES = 4


@dataclass(eq=False, slots=True)
class _Key:
    key_id: int
    secret: str  # the Fernet key, as sent in "room-key"
    fernet: BinaryFernet
    created: float
    holders: set[bytes] = field(default_factory=set)  # sessions that were sent it


def seal(key_id: int, fernet: BinaryFernet, payload: bytes) -> bytes:
    """A sealed room message: the key id, then the Fernet token in binary."""
    return key_id.to_bytes(KEY_ID_BYTES, "big") + fernet.seal(payload, 0)


def open_sealed(keys: Mapping[int, BinaryFernet], sealed: bytes) -> bytes:
    """The JSON message inside a sealed room message; raise InvalidToken if no key
    in ``keys`` (key id -> key, BinaryFernet.from_key of "room-key"'s key) opens it."""
    fernet = keys.get(int.from_bytes(sealed[:KEY_ID_BYTES], "big"))
    if fernet is None or len(sealed) <= KEY_ID_BYTES:
        raise InvalidToken
    return fernet.decrypt(sealed[KEY_ID_BYTES:])


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
    ) -> tuple[list[tuple[bytes, bytes]], int, BinaryFernet]:
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
        if len(key.holders) == len(members):
            # Every line of a settled room: the holders are members, and as many, so
            # they are all of them; no "room-key" to encode, no member to look up.
            return [], key.key_id, key.fernet
        missing = [sid for sid in capable if sid not in key.holders]
        announce = encode(RoomKey(room, key.key_id, key.secret))
        key.holders.update(missing)
        return [(sid, announce) for sid in missing], key.key_id, key.fernet

    def forget(self, room: str) -> None:
        """The room has no capable member left: its next message starts a new key."""
        if self._keys.pop(room, None) is not None:
            self.rotations += 1

    def _new_key(self, room: str, now: float) -> _Key:
        secret = Fernet.generate_key().decode("ascii")
        key = _Key(self._next_id, secret, BinaryFernet.from_key(secret), now)
        self._next_id = (self._next_id + 1) % (ROOM_KEY_ID_MAX + 1)
        self._keys[room] = key
        while len(self._keys) > self._max_rooms:
            self._keys.popitem(last=False)
        return key
