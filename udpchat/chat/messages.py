"""Application messages of udpchat: one compact UTF-8 JSON object per reliable message.

Every message type is a frozen dataclass that validates itself when built, so an
invalid message can be neither encoded nor decoded. ``decode_client`` (what a server
reads) and ``decode_server`` (what a client reads) are strict: anything that is not
exactly one of the messages in docs/PROTOCOL.md section 7 raises
:class:`MessageError` and nothing else. Sans-IO: no sockets, no clock.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Final, NamedTuple, TypeAlias, TypeVar, get_args

from udpchat.chat.lineids import HEX_ID_RE
from udpchat.core.limits import MAX_PAYLOAD_BYTES

# One message is one datagram payload, never split, so every encoded message must fit
# in MAX_PAYLOAD_BYTES.
TEXT_MAX_BYTES: Final = 400
NICK_MAX_CHARS: Final = 24
ROOM_MAX_CHARS: Final = 24
DEFAULT_ROOM: Final = "lobby"
#: "ts" (Unix seconds) is below this: 9999-12-31 00:00 UTC, a day short of the end of
#: what datetime can represent, so the local time of any "ts" is a date in any time
#: zone (UTC-12..UTC+14) and a client can always show it.
TS_END_S: Final = 253_402_214_400
#: A room's member count in a "rooms" answer is at most this (a count is shown to
#: the user, so a hostile server must not send a 990-digit number).
ROOM_MEMBERS_MAX: Final = 2**32 - 1

ERROR_CODES: Final = frozenset(
    {
        "nick-taken",
        "bad-nick",
        "no-such-nick",
        "bad-room",
        "too-long",
        "bad-message",
        "not-joined",
        "already-there",
        "server-full",
    }
)
PART_REASONS: Final = frozenset({"part", "quit", "timeout", "shutdown"})

_NICK_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_[]\\^{}|`")
_NICK_CHARS = _NICK_FIRST | frozenset("0123456789-")
_ROOM_RE = re.compile(r"[a-z0-9_-]{1,24}")
#: A Fernet key as Fernet.generate_key() writes it: 32 bytes, URL-safe base64, 44
#: characters (the last is "=", the one before it one of the 16 that end 32 bytes).
_FERNET_KEY_RE = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]=")
_BAD_TEXT_CHAR = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: Fast checks of what nearly every message holds, one C call each: a valid nick (as
#: nick_error says), and a text of at most TEXT_MAX_BYTES characters without a
#: character text_error refuses. A string they do not match takes the detailed checks,
#: which say what is wrong (tests/test_messages.py holds the two to the same answer).
_NICK_RE = re.compile(
    r"[A-Za-z_\[\]\\^{}|`][A-Za-z0-9_\[\]\\^{}|`-]" + f"{{0,{NICK_MAX_CHARS - 1}}}"
)
_PLAIN_TEXT_RE = re.compile("[^\x00-\x1f\x7f-\x9f\ud800-\udfff]" + f"{{1,{TEXT_MAX_BYTES}}}")
#: Characters that are at most 4 bytes in UTF-8: a text this long fits TEXT_MAX_BYTES.
_SURELY_SHORT_CHARS = TEXT_MAX_BYTES // 4
#: A server notice's "code" (PROTOCOL.md 11.8): a word a program can match on.
_NOTICE_CODE_RE = re.compile(r"[a-z0-9-]{1,32}")


class MessageError(ValueError):
    """A message that is not valid; ``code`` is the error code to answer it with."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


# --- names and text ------------------------------------------------------------------


def nick_error(nick: str) -> str | None:
    """Why ``nick`` is not a valid nick, in words for the user, or None if it is."""
    if not isinstance(nick, str) or not nick:
        return "a nick must not be empty"
    if len(nick) > NICK_MAX_CHARS:
        return f"nick too long: {len(nick)} characters, the limit is {NICK_MAX_CHARS}"
    if not set(nick) <= _NICK_CHARS:
        return "a nick may contain only ASCII letters and digits, and _ - [ ] \\ ^ { } | `"
    if nick[0] not in _NICK_FIRST:
        return "a nick must not start with a digit or '-'"
    return None


def valid_nick(nick: str) -> bool:
    """True if ``nick`` is a valid nick (1..24 chars, see docs/PROTOCOL.md 7.2)."""
    return nick_error(nick) is None


def fold_nick(nick: str) -> str:
    """The case-insensitive key of a nick: two nicks with the same key are the same."""
    return nick.casefold()


def normalize_room(room: str) -> str:
    """What a user typed as a room name, as sent on the wire: trimmed, one leading '#'
    removed, lowercased. The result still has to pass ``room_error``."""
    room = room.strip()
    if room.startswith("#"):
        room = room[1:]
    return room.lower()


def room_error(room: str) -> str | None:
    """Why ``room`` is not a valid (normalized) room name, or None if it is."""
    if isinstance(room, str) and _ROOM_RE.fullmatch(room):
        return None
    return f"a room name is 1..{ROOM_MAX_CHARS} characters of a-z, 0-9, '_' and '-'"


def valid_room(room: str) -> bool:
    """True if ``room`` is a valid room name as sent on the wire (already normalized)."""
    return room_error(room) is None


def text_error(text: str) -> str | None:
    """Why ``text`` cannot be sent as a line, in words for the user, or None if it can."""
    if not isinstance(text, str):
        return "text must be a string"
    if not text:
        return "empty line"
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > TEXT_MAX_BYTES:
        return f"line too long: {size} bytes, the limit is {TEXT_MAX_BYTES}"
    # One regex search instead of a category lookup per character (the hot path of
    # every line a client shows): C0, DEL and C1 are exactly Unicode's "Cc", and
    # surrogates ("Cs") only arrive through a JSON "\ud800" escape.
    bad = _BAD_TEXT_CHAR.search(text)
    if bad is None:
        return None
    char = bad.group()
    if "\ud800" <= char <= "\udfff":
        return f"line contains an unpaired surrogate (U+{ord(char):04X})"
    return f"line contains a control character (U+{ord(char):04X})"


def _plain_line(room: str, nick: str, text: str, line_id: str) -> bool:
    """True if all four are valid (room_error, nick_error, text_error and
    _check_line_id would find nothing wrong), for the usual line; False says nothing
    (the detailed checks then decide). Whatever the values' types."""
    try:
        return bool(
            _ROOM_RE.fullmatch(room)
            and _NICK_RE.fullmatch(nick)
            and _PLAIN_TEXT_RE.fullmatch(text)
            and HEX_ID_RE.fullmatch(line_id)
            and (len(text) <= _SURELY_SHORT_CHARS or len(text.encode("utf-8")) <= TEXT_MAX_BYTES)
        )
    except TypeError:  # not a string (a match of bytes raises it too)
        return False


def _check_nick(nick: object) -> None:
    reason = nick_error(nick)  # type: ignore[arg-type]
    if reason is not None:
        raise MessageError("bad-nick", reason)


def _check_room(room: object) -> None:
    reason = room_error(room)  # type: ignore[arg-type]
    if reason is not None:
        raise MessageError("bad-room", reason)


def _check_text(text: object) -> None:
    reason = text_error(text)  # type: ignore[arg-type]
    if reason is not None:
        code = "too-long" if reason.startswith("line too long") else "bad-message"
        raise MessageError(code, reason)


def _check_line_id(line_id: object) -> None:
    if not isinstance(line_id, str) or not HEX_ID_RE.fullmatch(line_id):
        raise MessageError("bad-message", '"id" must be 16 lowercase hex digits')


def _check_ts(ts: object) -> None:
    if ts is None:
        return
    try:  # float() of an int beyond float range raises OverflowError
        ok = not isinstance(ts, bool) and isinstance(ts, (int, float)) and float(ts) >= 0
    except OverflowError:
        ok = False
    if not ok or not math.isfinite(ts) or not ts < TS_END_S:  # type: ignore[arg-type, operator]
        raise MessageError("bad-message", f'"ts" must be a number 0 <= ts < {TS_END_S}')


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise MessageError("bad-message", f'"{name}" must be true or false')


# --- client -> server ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """First message of every session: my nick, the room I start in, my client id."""

    TYPE: ClassVar[str] = "hello"
    nick: str
    room: str
    client: str

    def __post_init__(self) -> None:
        _check_nick(self.nick)
        _check_room(self.room)
        if not isinstance(self.client, str) or not HEX_ID_RE.fullmatch(self.client):
            raise MessageError("bad-message", '"client" must be 16 lowercase hex digits')


@dataclass(frozen=True, slots=True)
class _Line:
    """A line for the sender's room; ``line_id`` (JSON "id") names it, and stays the
    same when the line is sent again after a reconnect."""

    text: str
    line_id: str = field(metadata={"json": "id"})

    def __post_init__(self) -> None:
        _check_text(self.text)
        _check_line_id(self.line_id)


@dataclass(frozen=True, slots=True)
class Say(_Line):
    """A line for the sender's room."""

    TYPE: ClassVar[str] = "say"


@dataclass(frozen=True, slots=True)
class Me(_Line):
    """An action line (``/me waves``) for the sender's room."""

    TYPE: ClassVar[str] = "me"


@dataclass(frozen=True, slots=True)
class PrivateMsg:
    """A private line to one nick; ``line_id`` as for Say."""

    TYPE: ClassVar[str] = "msg"
    to: str
    text: str
    line_id: str = field(metadata={"json": "id"})

    def __post_init__(self) -> None:
        _check_nick(self.to)
        _check_text(self.text)
        _check_line_id(self.line_id)


@dataclass(frozen=True, slots=True)
class Nick:
    """Change my nick."""

    TYPE: ClassVar[str] = "nick"
    nick: str

    def __post_init__(self) -> None:
        _check_nick(self.nick)


@dataclass(frozen=True, slots=True)
class Join:
    """Move to a room (created if it does not exist)."""

    TYPE: ClassVar[str] = "join"
    room: str

    def __post_init__(self) -> None:
        _check_room(self.room)


@dataclass(frozen=True, slots=True)
class Part:
    """Leave my room, back to the default room."""

    TYPE: ClassVar[str] = "part"


@dataclass(frozen=True, slots=True)
class Who:
    """Who is in my room?"""

    TYPE: ClassVar[str] = "who"


@dataclass(frozen=True, slots=True)
class Rooms:
    """Which rooms have members, and how many?"""

    TYPE: ClassVar[str] = "rooms"


@dataclass(frozen=True, slots=True)
class Bye:
    """I am leaving; the server removes me and closes the session."""

    TYPE: ClassVar[str] = "bye"


@dataclass(frozen=True, slots=True)
class Caps:
    """Extension negotiation (PROTOCOL.md section 11), both ways: a client sends it
    after welcome with what it supports; a server that knows it answers with what it
    will use on this session (a version-1 server answers error "bad-message")."""

    TYPE: ClassVar[str] = "caps"
    room_keys: bool = field(metadata={"json": "room-keys"})
    # Extension "path-check" (PROTOCOL.md 11.7): absent from the JSON when None. A
    # server sends it only to a client that sent it.
    path_check: bool | None = field(default=None, metadata={"json": "path-check"})
    # Extension "notices" (PROTOCOL.md 11.8): likewise.
    notices: bool | None = field(default=None, metadata={"json": "notices"})
    # Extension "lazy-acks" (PROTOCOL.md 11.9): likewise.
    lazy_acks: bool | None = field(default=None, metadata={"json": "lazy-acks"})

    def __post_init__(self) -> None:
        _check_bool("room-keys", self.room_keys)
        if self.path_check is not None:
            _check_bool("path-check", self.path_check)
        if self.notices is not None:
            _check_bool("notices", self.notices)
        if self.lazy_acks is not None:
            _check_bool("lazy-acks", self.lazy_acks)


# --- server -> client ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    """Answer to a hello: the nick and room the session now has."""

    TYPE: ClassVar[str] = "welcome"
    nick: str
    room: str

    def __post_init__(self) -> None:
        _check_nick(self.nick)
        _check_room(self.room)


@dataclass(frozen=True, slots=True)
class _RoomLine:
    """A line in a room, with the id its sender gave it; ``ts`` is set (and
    "history": true sent) when replayed."""

    room: str
    nick: str
    text: str
    line_id: str = field(metadata={"json": "id"})
    ts: float | None = None

    def __post_init__(self) -> None:
        # A client builds one for every line it shows: the usual live line is checked
        # with a match per field here, in C; any other takes the checks below, which
        # accept the same lines and say what is wrong with the others.
        if self.ts is None and _plain_line(self.room, self.nick, self.text, self.line_id):
            return
        _check_room(self.room)
        _check_nick(self.nick)
        _check_text(self.text)
        _check_line_id(self.line_id)
        _check_ts(self.ts)

    @property
    def history(self) -> bool:
        """True for a line replayed from the room's history."""
        return self.ts is not None


@dataclass(frozen=True, slots=True)
class SayOut(_RoomLine):
    """A line said in a room."""

    TYPE: ClassVar[str] = "say"


@dataclass(frozen=True, slots=True)
class MeOut(_RoomLine):
    """An action (/me) in a room."""

    TYPE: ClassVar[str] = "me"


@dataclass(frozen=True, slots=True)
class PrivateMsgIn:
    """A private line from ``sender`` (the JSON field is "from"), with the id its
    sender gave it."""

    TYPE: ClassVar[str] = "msg"
    sender: str = field(metadata={"json": "from"})
    text: str
    line_id: str = field(metadata={"json": "id"})

    def __post_init__(self) -> None:
        _check_nick(self.sender)
        _check_text(self.text)
        _check_line_id(self.line_id)


@dataclass(frozen=True, slots=True)
class JoinNotice:
    """``nick`` has joined ``room``."""

    TYPE: ClassVar[str] = "join"
    room: str
    nick: str

    def __post_init__(self) -> None:
        _check_room(self.room)
        _check_nick(self.nick)


@dataclass(frozen=True, slots=True)
class PartNotice:
    """``nick`` has left ``room``; reason is one of PART_REASONS."""

    TYPE: ClassVar[str] = "part"
    room: str
    nick: str
    reason: str

    def __post_init__(self) -> None:
        _check_room(self.room)
        _check_nick(self.nick)
        if self.reason not in PART_REASONS:
            raise MessageError("bad-message", '"reason" is not a known part reason')


@dataclass(frozen=True, slots=True)
class NickNotice:
    """``old`` is now known as ``new``."""

    TYPE: ClassVar[str] = "nick"
    old: str
    new: str

    def __post_init__(self) -> None:
        _check_nick(self.old)
        _check_nick(self.new)


@dataclass(frozen=True, slots=True)
class WhoList:
    """One chunk of the members of ``room``; ``more`` is true if chunks follow."""

    TYPE: ClassVar[str] = "who"
    room: str
    nicks: tuple[str, ...]
    more: bool

    def __post_init__(self) -> None:
        _check_room(self.room)
        if not isinstance(self.nicks, tuple):
            raise MessageError("bad-message", '"nicks" must be a list')
        for nick in self.nicks:
            _check_nick(nick)
        _check_bool("more", self.more)


class RoomCount(NamedTuple):
    """A room and its number of members, as listed by "rooms"."""

    room: str
    members: int


@dataclass(frozen=True, slots=True)
class RoomList:
    """One chunk of the rooms that have members; ``more`` is true if chunks follow."""

    TYPE: ClassVar[str] = "rooms"
    rooms: tuple[RoomCount, ...]
    more: bool

    def __post_init__(self) -> None:
        if not isinstance(self.rooms, tuple):
            raise MessageError("bad-message", '"rooms" must be a list')
        for entry in self.rooms:
            if not isinstance(entry, tuple) or len(entry) != 2:
                raise MessageError("bad-message", '"rooms" entries are [room, count]')
            _check_room(entry[0])
            count = entry[1]
            if (
                isinstance(count, bool)
                or not isinstance(count, int)
                or not 0 <= count <= ROOM_MEMBERS_MAX
            ):
                raise MessageError("bad-message", "a room's count must be an integer 0..2^32-1")
        _check_bool("more", self.more)


@dataclass(frozen=True, slots=True)
class Error:
    """A request failed: ``code`` is one of ERROR_CODES, ``text`` is for humans."""

    TYPE: ClassVar[str] = "error"
    code: str
    text: str

    def __post_init__(self) -> None:
        if self.code not in ERROR_CODES:
            raise MessageError("bad-message", '"code" is not a known error code')
        _check_text(self.text)


#: Room key ids are 32-bit unsigned integers.
ROOM_KEY_ID_MAX = 2**32 - 1


@dataclass(frozen=True, slots=True)
class RoomKey:
    """The key (a Fernet key, 44 characters) that sealed messages of ``room`` with key
    id ``key_id`` (JSON "id") use; only to sessions that negotiated "room-keys"."""

    TYPE: ClassVar[str] = "room-key"
    room: str
    key_id: int = field(metadata={"json": "id"})
    key: str

    def __post_init__(self) -> None:
        _check_room(self.room)
        if (
            isinstance(self.key_id, bool)
            or not isinstance(self.key_id, int)
            or not 0 <= self.key_id <= ROOM_KEY_ID_MAX
        ):
            raise MessageError("bad-message", '"id" must be an integer 0..2^32-1')
        if not isinstance(self.key, str) or not _FERNET_KEY_RE.fullmatch(self.key):
            raise MessageError("bad-message", '"key" must be a Fernet key (44 characters)')


@dataclass(frozen=True, slots=True)
class ServerNotice:
    """Something about the server a member should know (extension "notices",
    PROTOCOL.md 11.8): ``code`` for programs, ``text`` for humans, ``room`` when it
    is about one room. Only to a session whose client asked for it in caps."""

    TYPE: ClassVar[str] = "notice"
    code: str
    text: str
    room: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or not _NOTICE_CODE_RE.fullmatch(self.code):
            raise MessageError("bad-message", '"code" must be 1..32 of a-z, 0-9 and -')
        _check_text(self.text)
        if self.room is not None:
            _check_room(self.room)


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The server is going away; the session will be closed."""

    TYPE: ClassVar[str] = "shutdown"
    text: str

    def __post_init__(self) -> None:
        _check_text(self.text)


ClientMessage: TypeAlias = (
    Hello | Say | Me | PrivateMsg | Nick | Join | Part | Who | Rooms | Bye | Caps
)
ServerMessage: TypeAlias = (
    Welcome
    | SayOut
    | MeOut
    | PrivateMsgIn
    | JoinNotice
    | PartNotice
    | NickNotice
    | WhoList
    | RoomList
    | Error
    | Shutdown
    | Caps
    | RoomKey
    | ServerNotice
)
Message: TypeAlias = ClientMessage | ServerMessage

# --- encoding ------------------------------------------------------------------------


def _dumps(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _plain(value: object) -> object:
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


#: Per message class, its fields as (attribute, JSON key): dataclasses.fields()
#: builds its answer anew on every call, and the server encodes every room line.
_ENCODING: dict[type, tuple[tuple[str, str], ...]] = {}


def encode(msg: Message) -> bytes:
    """The wire form of ``msg``; MessageError("too-long") if it exceeds MAX_PAYLOAD_BYTES."""
    plan = _ENCODING.get(type(msg))
    if plan is None:
        plan = tuple((f.name, f.metadata.get("json", f.name)) for f in fields(msg))
        _ENCODING[type(msg)] = plan
    obj: dict[str, object] = {"t": msg.TYPE}
    for name, key in plan:
        value = getattr(msg, name)
        if name == "ts":
            if value is not None:
                obj["ts"] = float(value)
                obj["history"] = True
        elif value is not None:  # an optional field that is absent
            obj[key] = _plain(value)
    data = _dumps(obj)
    if len(data) > MAX_PAYLOAD_BYTES:
        raise MessageError("too-long", f"message too long: {len(data)} bytes")
    return data


# --- decoding ------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise MessageError("bad-message", "duplicate field in message")
    return obj


def _no_constants(name: str) -> None:
    raise MessageError("bad-message", "NaN and Infinity are not JSON")


#: One strict decoder for every message: json.loads with these arguments builds a
#: new JSONDecoder (and its scanner) per call, a third of decoding a chat line.
_JSON: Final = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
#: Its scanner (in C), called directly for a message that is one JSON value and
#: nothing else, as every message a server sends is: JSONDecoder.decode's Python
#: around it (whitespace before and after, its errors) was a sixth of decoding a line.
_SCAN: Final = _JSON.scan_once  # type: ignore[attr-defined]  # set in __init__


def _str(obj: Mapping[str, Any], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise MessageError("bad-message", f'"{key}" must be a string')
    return value


def _int(obj: Mapping[str, Any], key: str) -> int:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError("bad-message", f'"{key}" must be an integer')
    return value


def _bool(obj: Mapping[str, Any], key: str) -> bool:
    value = obj[key]
    _check_bool(key, value)
    return bool(value)


def _optional_bool(obj: Mapping[str, Any], key: str) -> bool | None:
    return _bool(obj, key) if key in obj else None


def _optional_str(obj: Mapping[str, Any], key: str) -> str | None:
    return _str(obj, key) if key in obj else None


def _list(obj: Mapping[str, Any], key: str) -> list[Any]:
    value = obj[key]
    if not isinstance(value, list):
        raise MessageError("bad-message", f'"{key}" must be a list')
    return value


def _ts(obj: Mapping[str, Any], key: str) -> float | None:
    if "ts" not in obj and "history" not in obj:
        return None
    if "ts" not in obj or obj.get("history") is not True:
        raise MessageError("bad-message", '"ts" and "history": true go together')
    value = obj["ts"]
    _check_ts(value)
    return float(value)


def _room_count(entry: object) -> RoomCount:
    if not isinstance(entry, list) or len(entry) != 2:
        raise MessageError("bad-message", '"rooms" entries are [room, count]')
    return RoomCount(entry[0], entry[1])


def _nicks(obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    return tuple(_list(obj, key))


def _room_counts(obj: Mapping[str, Any], key: str) -> tuple[RoomCount, ...]:
    return tuple(_room_count(entry) for entry in _list(obj, key))


_Read: TypeAlias = Callable[[Mapping[str, Any], str], Any]

#: How a JSON value is read for a field, by the field's annotation (a string, as
#: ``from __future__ import annotations`` leaves it). Each reader checks the JSON type;
#: the message's __post_init__ checks the value.
_READERS: Final[dict[str, _Read]] = {
    "str": _str,
    "bool": _bool,
    "bool | None": _optional_bool,
    "str | None": _optional_str,
    "int": _int,
    "float | None": _ts,
    "tuple[str, ...]": _nicks,
    "tuple[RoomCount, ...]": _room_counts,
}


#: What a JSON string decodes to (json makes no subclasses of str).
_ONLY_STR: Final = frozenset({str})


def _taker(keys: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A function of a JSON object that returns its values for ``keys``, in order."""
    if len(keys) > 1:
        return operator.itemgetter(*keys)
    if keys:
        key = keys[0]
        return lambda obj: (obj[key],)
    return lambda obj: ()


class _Schema(NamedTuple):
    keys: frozenset[str]  # required, besides "t"
    allowed: frozenset[str]  # every key it may have: "t", required, optional
    build: Callable[[Mapping[str, Any]], Message]


def _schema(cls: type[Message]) -> _Schema:
    """The JSON keys of ``cls`` and how to build it, read off its dataclass fields the
    way ``encode`` writes them: a field's JSON key is its "json" metadata or its name,
    and the optional ``ts`` travels with "history": true."""
    keys: set[str] = set()
    optional: set[str] = set()
    readers: list[tuple[str, str, _Read]] = []
    for f in fields(cls):
        key = f.metadata.get("json", f.name)
        if f.name == "ts":
            optional |= {"ts", "history"}
        elif str(f.type).endswith("| None"):
            optional.add(key)
        else:
            keys.add(key)
        readers.append((f.name, key, _READERS[str(f.type)]))
    # The string fields (always required) are taken in one go, and checked in one go:
    # a chat line is mostly strings, and this runs for every line a client shows.
    strings = [(name, key) for name, key, read in readers if read is _str]
    others = [entry for entry in readers if entry[2] is not _str]
    names = tuple(name for name, _ in strings)
    take = _taker(tuple(key for _, key in strings))

    # When the string fields come first (all but "room-key"), they are passed in
    # place: a chat line is built from a tuple without a dict in between.
    in_place = [name for name, _, _ in readers[: len(strings)]] == list(names)
    single = len(others) == 1 and in_place
    make: Callable[..., Message] = cls  # fields in place, by position
    other_key, other_read = (others[0][1], others[0][2]) if single else ("", _str)

    def build(obj: Mapping[str, Any]) -> Message:
        taken = take(obj)
        if not _ONLY_STR >= set(map(type, taken)):
            # Fields are read in declaration order, so the first bad one is reported.
            return cls(**{name: read(obj, key) for name, key, read in readers})
        if single:  # say, me (the optional "ts"), notice, who: one more field
            return make(*taken, other_read(obj, other_key))
        if in_place and not others:
            return make(*taken)
        values = dict(zip(names, taken, strict=True))
        for name, key, read in others:
            values[name] = read(obj, key)
        return cls(**values)

    return _Schema(frozenset(keys), frozenset(keys | optional | {"t"}), build)


def _schemas(union: object) -> dict[str, _Schema]:
    return {cls.TYPE: _schema(cls) for cls in get_args(union)}


_CLIENT_SCHEMAS: Final[dict[str, _Schema]] = _schemas(ClientMessage)
_SERVER_SCHEMAS: Final[dict[str, _Schema]] = _schemas(ServerMessage)


_BYTES_TYPES: Final = (bytes, bytearray, memoryview)


def _decode(data: bytes, schemas: Mapping[str, _Schema]) -> Message:
    if not isinstance(data, _BYTES_TYPES):
        raise MessageError("bad-message", "a message is bytes")
    if len(data) > MAX_PAYLOAD_BYTES:
        raise MessageError("too-long", f"message longer than {MAX_PAYLOAD_BYTES} bytes")
    try:
        source = (data if type(data) is bytes else bytes(data)).decode("utf-8")
    except UnicodeDecodeError:
        raise MessageError("bad-message", "message is not valid UTF-8") from None
    try:
        try:
            obj, end = _SCAN(source, 0)
        except StopIteration:  # no value at 0 (whitespace first, or not JSON)
            end = -1
        if end != len(source):  # not one value alone: what decode() makes of it
            obj = _JSON.decode(source)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, MessageError):
            raise
        raise MessageError("bad-message", "message is not valid JSON") from None
    if not isinstance(obj, dict):
        raise MessageError("bad-message", "message is not a JSON object")
    kind = obj.get("t")
    schema = schemas.get(kind) if isinstance(kind, str) else None
    if schema is None:
        raise MessageError("bad-message", "unknown message type")
    keys = obj.keys()
    if not schema.keys <= keys:
        missing = schema.keys - keys
        raise MessageError("bad-message", f'"{kind}" lacks field "{min(missing)}"')
    if not keys <= schema.allowed:
        raise MessageError("bad-message", f'"{kind}" has an unexpected field')
    return schema.build(obj)


def decode_client(data: bytes) -> ClientMessage:
    """A client -> server message from its wire form, or MessageError."""
    return _decode(data, _CLIENT_SCHEMAS)  # type: ignore[return-value]


def decode_server(data: bytes) -> ServerMessage:
    """A server -> client message from its wire form, or MessageError."""
    return _decode(data, _SERVER_SCHEMAS)  # type: ignore[return-value]


# --- chunked lists -------------------------------------------------------------------

_T = TypeVar("_T")


def _chunks(items: Sequence[_T], overhead: int, size: Callable[[_T], int]) -> list[list[_T]]:
    """Split ``items`` greedily so that overhead + items + commas <= MAX_PAYLOAD_BYTES."""
    chunks: list[list[_T]] = [[]]
    used = overhead
    for item in items:
        cost = size(item) + (1 if chunks[-1] else 0)
        if chunks[-1] and used + cost > MAX_PAYLOAD_BYTES:
            chunks.append([])
            used = overhead
            cost = size(item)
        chunks[-1].append(item)
        used += cost
    return chunks


def who_chunks(room: str, nicks: Sequence[str]) -> list[WhoList]:
    """The "who" answer for ``room``: as many messages as needed, each encoding to at
    most MAX_PAYLOAD_BYTES, all but the last with more=True. Never empty."""
    overhead = len(encode(WhoList(room, (), more=False)))  # "false" outweighs "true"
    parts = _chunks(nicks, overhead, lambda nick: len(_dumps(nick)))
    return [WhoList(room, tuple(part), more=i < len(parts) - 1) for i, part in enumerate(parts)]


def rooms_chunks(rooms: Sequence[tuple[str, int]]) -> list[RoomList]:
    """The "rooms" answer, chunked like ``who_chunks``. Never empty."""
    overhead = len(encode(RoomList((), more=False)))
    parts = _chunks(rooms, overhead, lambda entry: len(_dumps(list(entry))))
    return [
        RoomList(tuple(RoomCount(*entry) for entry in part), more=i < len(parts) - 1)
        for i, part in enumerate(parts)
    ]
