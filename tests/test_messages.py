"""Tests for udpchat.chat.messages: the application message format, as a specification."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from udpchat.chat.lineids import HEX_ID_RE
from udpchat.chat.messages import (
    ERROR_CODES,
    NICK_MAX_CHARS,
    PART_REASONS,
    ROOM_MAX_CHARS,
    ROOM_MEMBERS_MAX,
    TEXT_MAX_BYTES,
    TS_END_S,
    Bye,
    Caps,
    Error,
    Hello,
    Join,
    JoinNotice,
    Me,
    MeOut,
    Message,
    MessageError,
    Nick,
    NickNotice,
    Part,
    PartNotice,
    PrivateMsg,
    PrivateMsgIn,
    RoomCount,
    RoomList,
    Rooms,
    Say,
    SayOut,
    ServerNotice,
    Shutdown,
    Welcome,
    Who,
    WhoList,
    decode_client,
    decode_server,
    encode,
    fold_nick,
    normalize_room,
    rooms_chunks,
    text_error,
    valid_nick,
    valid_room,
    who_chunks,
)
from udpchat.core.limits import MAX_PAYLOAD_BYTES

# --- strategies ----------------------------------------------------------------------

NICK_RE = r"[A-Za-z_\[\]\\^{}|`][A-Za-z0-9_\-\[\]\\^{}|`]{0,23}"
nicks = st.from_regex(NICK_RE, fullmatch=True)
rooms = st.from_regex(r"[a-z0-9_-]{1,24}", fullmatch=True)
client_ids = st.from_regex(HEX_ID_RE, fullmatch=True)
line_ids = client_ids  # the same form
ID = "0123456789abcdef"  # a line id
texts = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=100
).filter(lambda t: len(t.encode()) <= TEXT_MAX_BYTES)
# Text that JSON has to escape, to push encoded sizes towards their maximum.
escaped_texts = st.text(alphabet='"\\', min_size=1, max_size=TEXT_MAX_BYTES)
any_text = texts | escaped_texts
timestamps = st.none() | st.floats(min_value=0, max_value=TS_END_S, exclude_max=True)

client_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, nicks, rooms, client_ids),
    st.builds(Say, any_text, line_ids),
    st.builds(Me, any_text, line_ids),
    st.builds(PrivateMsg, nicks, any_text, line_ids),
    st.builds(Nick, nicks),
    st.builds(Join, rooms),
    st.just(Part()),
    st.just(Who()),
    st.just(Rooms()),
    st.just(Bye()),
)
server_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Welcome, nicks, rooms),
    st.builds(SayOut, rooms, nicks, any_text, line_ids, timestamps),
    st.builds(MeOut, rooms, nicks, any_text, line_ids, timestamps),
    st.builds(PrivateMsgIn, nicks, any_text, line_ids),
    st.builds(JoinNotice, rooms, nicks),
    st.builds(PartNotice, rooms, nicks, st.sampled_from(sorted(PART_REASONS))),
    st.builds(NickNotice, nicks, nicks),
    st.builds(WhoList, rooms, st.lists(nicks, max_size=10).map(tuple), st.booleans()),
    st.builds(
        RoomList,
        st.lists(st.builds(RoomCount, rooms, st.integers(0, 10**6)), max_size=10).map(tuple),
        st.booleans(),
    ),
    st.builds(Error, st.sampled_from(sorted(ERROR_CODES)), any_text),
    st.builds(Shutdown, any_text),
    st.builds(
        ServerNotice, st.from_regex(r"[a-z0-9-]{1,32}", fullmatch=True), any_text, st.none() | rooms
    ),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
KNOWN_TYPES = [
    "hello",
    "say",
    "me",
    "msg",
    "nick",
    "join",
    "part",
    "who",
    "rooms",
    "bye",
    "welcome",
    "error",
    "shutdown",
]
KNOWN_KEYS = [
    "nick",
    "room",
    "client",
    "text",
    "to",
    "from",
    "old",
    "new",
    "reason",
    "nicks",
    "rooms",
    "more",
    "code",
    "ts",
    "history",
    "id",
]
# Objects that look almost like messages: a known "t" and known keys, arbitrary values.
message_like = st.builds(
    lambda t, rest: {"t": t, **rest},
    st.sampled_from(KNOWN_TYPES) | st.text(max_size=8),
    st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=4), json_values, max_size=5),
)


def with_id(data: bytes) -> bytes:
    """A client's JSON object (as bytes) with a valid line id added at its end."""
    assert data.endswith(b"}")
    return data[:-1] + b',"id":"' + ID.encode() + b'"}'


def raw(obj: Any) -> bytes:
    """Any JSON value, compactly encoded the way a (possibly hostile) peer could."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def decode_any(data: bytes) -> None:
    """Both decoders, which must fail with MessageError only."""
    for decode in (decode_client, decode_server):
        try:
            decode(data)
        except MessageError as exc:
            assert exc.code in ERROR_CODES
            assert text_error(str(exc)) is None  # fit to send back as an error text


# --- the wire form -------------------------------------------------------------------


def test_a_message_may_fill_exactly_one_core_payload() -> None:
    """One application message must fit one payload of the protocol core: a message of
    exactly MAX_PAYLOAD_BYTES decodes, one byte more is "too-long"."""
    data = encode(Who())
    padded = data + b" " * (MAX_PAYLOAD_BYTES - len(data))  # JSON allows the blanks
    assert decode_client(padded) == Who()
    with pytest.raises(MessageError) as info:
        decode_client(padded + b" ")
    assert info.value.code == "too-long"


def test_encode_is_compact_utf8_json_with_t_first() -> None:
    """encode writes compact JSON, non-ASCII as UTF-8 (not \\u escapes), "t" first."""
    assert (
        encode(Say("héllo ☃", ID))
        == '{"t":"say","text":"héllo ☃","id":"0123456789abcdef"}'.encode()
    )
    assert encode(Hello("alice", "lobby", "0123456789abcdef")) == (
        b'{"t":"hello","nick":"alice","room":"lobby","client":"0123456789abcdef"}'
    )
    assert encode(Part()) == b'{"t":"part"}'


def test_private_message_in_uses_the_from_field() -> None:
    """The server's "msg" names the sender in "from"; the client's names "to"."""
    assert encode(PrivateMsgIn("bob", "hi", ID)) == (
        b'{"t":"msg","from":"bob","text":"hi","id":"0123456789abcdef"}'
    )
    msg = b'{"t":"msg","to":"bob","text":"hi","id":"0123456789abcdef"}'
    assert decode_client(msg) == PrivateMsg("bob", "hi", ID)


def test_chat_lines_carry_their_line_id_both_ways() -> None:
    """say, me and msg carry the sender's line id as "id", from the client and (the
    same id) from the server, live and in history."""
    assert json.loads(encode(Me("waves", ID)))["id"] == ID
    for msg in (
        SayOut("lobby", "al", "x", ID),
        MeOut("lobby", "al", "x", ID, ts=1.5),
        PrivateMsgIn("al", "x", ID),
    ):
        assert json.loads(encode(msg))["id"] == ID
        assert decode_server(encode(msg)).line_id == ID  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "line_id", ["0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", "0123456789abcdeg", 5]
)
@pytest.mark.parametrize(
    "obj",
    [
        {"t": "say", "text": "x"},
        {"t": "me", "text": "x"},
        {"t": "msg", "to": "bob", "text": "x"},
    ],
)
def test_line_id_is_required_and_exactly_16_lowercase_hex(
    obj: dict[str, Any], line_id: object
) -> None:
    """A client's say/me/msg without "id", or with anything but 16 lowercase hex
    digits as "id", is a bad-message; the server's lines are held to the same rule."""
    for bad in (obj, {**obj, "id": line_id}):
        with pytest.raises(MessageError) as info:
            decode_client(raw(bad))
        assert info.value.code == "bad-message"
    room_line = {"room": "lobby", "nick": "al", "text": "x"}
    for server_obj in (
        {"t": "say", **room_line},
        {"t": "me", **room_line, "ts": 1.0, "history": True},
        {"t": "msg", "from": "al", "text": "x"},
    ):
        for bad in (server_obj, {**server_obj, "id": line_id}):
            with pytest.raises(MessageError):
                decode_server(raw(bad))


def test_history_lines_carry_ts_and_history_true() -> None:
    """A replayed line has "ts" and "history": true; a live line has neither."""
    live = b'{"t":"say","room":"lobby","nick":"al","text":"x","id":"0123456789abcdef"}'
    assert encode(SayOut("lobby", "al", "x", ID)) == live
    line = SayOut("lobby", "al", "x", ID, ts=1700000000.5)
    assert line.history
    assert json.loads(encode(line)) == {
        "t": "say",
        "room": "lobby",
        "nick": "al",
        "text": "x",
        "id": ID,
        "ts": 1700000000.5,
        "history": True,
    }
    assert decode_server(encode(line)) == line


@pytest.mark.parametrize(
    "obj",
    [
        {"t": "say", "room": "a", "nick": "b", "text": "x", "id": ID, "ts": 1.0},  # no history
        {"t": "say", "room": "a", "nick": "b", "text": "x", "id": ID, "history": True},  # no ts
        {"t": "say", "room": "a", "nick": "b", "text": "x", "id": ID, "ts": 1.0, "history": False},
        {"t": "say", "room": "a", "nick": "b", "text": "x", "id": ID, "ts": -1.0, "history": True},
        {"t": "say", "room": "a", "nick": "b", "text": "x", "id": ID, "ts": "1", "history": True},
        {"t": "say", "room": "a", "nick": "b", "text": "x", "id": ID, "ts": True, "history": True},
        {
            "t": "say",
            "room": "a",
            "nick": "b",
            "text": "x",
            "id": ID,
            "ts": 10**400,
            "history": True,
        },
    ],
)
def test_ts_and_history_are_both_there_or_both_absent(obj: dict[str, Any]) -> None:
    """The "ts" field (a finite number >= 0) and "history": true come together or not at all."""
    with pytest.raises(MessageError):
        decode_server(raw(obj))


@pytest.mark.parametrize("ts", [TS_END_S, 253402300800, 1e12, 1.7e308, 2**64])
def test_ts_beyond_the_year_9999_is_a_bad_message(ts: float) -> None:
    """A "ts" a client could not show as a date (datetime ends with the year 9999; the
    limit leaves a day for time zones) is a bad message, whoever sends it: a hostile
    server cannot make the display raise with it."""
    obj = {"t": "say", "room": "a", "nick": "b", "text": "x", "id": ID, "ts": ts, "history": True}
    with pytest.raises(MessageError) as info:
        decode_server(raw(obj))
    assert info.value.code == "bad-message"
    with pytest.raises(MessageError):
        SayOut("a", "b", "x", ID, ts=ts)
    last = TS_END_S - 0.5
    assert decode_server(raw({**obj, "ts": last})) == SayOut("a", "b", "x", ID, ts=last)


def test_room_member_counts_are_bounded() -> None:
    """A room's member count is an integer 0..2^32-1: nothing longer reaches the screen."""
    for count in (ROOM_MEMBERS_MAX + 1, 10**900):
        with pytest.raises(MessageError):
            decode_server(raw({"t": "rooms", "rooms": [["a", count]], "more": False}))
    ok = decode_server(raw({"t": "rooms", "rooms": [["a", ROOM_MEMBERS_MAX]], "more": False}))
    assert ok == RoomList((RoomCount("a", ROOM_MEMBERS_MAX),), False)


def test_largest_server_message_fits_one_payload() -> None:
    """The largest server->client message (a replayed line: 400 bytes of text that JSON
    escapes to twice its size, nick and room at their maximum, the nick made of
    escaped characters too, the line id, the longest float repr as ts) fits
    MAX_PAYLOAD_BYTES: 981 bytes."""
    text = '"\\' * (TEXT_MAX_BYTES // 2)
    assert len(text.encode()) == TEXT_MAX_BYTES
    nick = "\\" * NICK_MAX_CHARS
    room = "r" * ROOM_MAX_CHARS
    ts = 2.2250738585072014e-308  # 23 characters, the longest repr of a float >= 0
    assert len(repr(ts)) == 23
    for msg in (SayOut(room, nick, text, ID, ts), MeOut(room, nick, text, ID, ts)):
        data = encode(msg)
        assert len(data) <= MAX_PAYLOAD_BYTES
        assert decode_server(data) == msg
    assert len(encode(SayOut(room, nick, text, ID, ts))) == 981
    assert len(encode(PrivateMsgIn(nick, text, ID))) <= MAX_PAYLOAD_BYTES
    assert len(encode(PrivateMsg(nick, text, ID))) <= MAX_PAYLOAD_BYTES
    assert len(encode(Error("already-there", text))) <= MAX_PAYLOAD_BYTES


@given(client_messages)
def test_client_messages_roundtrip(msg: Message) -> None:
    """Every valid client message encodes within MAX_PAYLOAD_BYTES and decodes to itself."""
    data = encode(msg)
    assert len(data) <= MAX_PAYLOAD_BYTES
    assert decode_client(data) == msg


@given(server_messages)
def test_server_messages_roundtrip(msg: Message) -> None:
    """Every valid server message encodes within MAX_PAYLOAD_BYTES and decodes to itself."""
    data = encode(msg)
    assert len(data) <= MAX_PAYLOAD_BYTES
    assert decode_server(data) == msg


# --- strict decoding -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xff\xfe", "bad-message"),  # not UTF-8
        (with_id('{"t":"say","text":"\udcff"}'.encode("utf-8", "surrogatepass")), "bad-message"),
        (b"", "bad-message"),
        (b"not json", "bad-message"),
        (b'["say"]', "bad-message"),  # not an object
        (b'"say"', "bad-message"),
        (b"{}", "bad-message"),  # no "t"
        (b'{"t":5}', "bad-message"),
        (b'{"t":"shout","text":"x"}', "bad-message"),  # unknown type
        (b'{"t":"welcome","nick":"a","room":"b"}', "bad-message"),  # server type
        (with_id(b'{"t":"say"}'), "bad-message"),  # missing field
        (with_id(b'{"t":"say","text":5}'), "bad-message"),  # wrong type
        (with_id(b'{"t":"say","text":"x","extra":1}'), "bad-message"),  # extra field
        (b'{"t":"part","room":"x"}', "bad-message"),
        (with_id(b'{"t":"say","text":"a","text":"b"}'), "bad-message"),  # duplicate field
        (with_id(b'{"t":"say","text":""}'), "bad-message"),  # empty text
        (with_id(b'{"t":"say","text":"a\\nb"}'), "bad-message"),  # C0 control
        (with_id(b'{"t":"say","text":"\\u001b[31mred"}'), "bad-message"),  # terminal escape
        (with_id('{"t":"say","text":"\u009b31m"}'.encode()), "bad-message"),  # C1 CSI
        (with_id(b'{"t":"say","text":"\\u007f"}'), "bad-message"),  # DEL
        (with_id(b'{"t":"say","text":"\\ud800"}'), "bad-message"),  # lone surrogate
        (with_id(raw({"t": "say", "text": "x" * 401})), "too-long"),
        (with_id(raw({"t": "say", "text": "é" * 201})), "too-long"),  # 402 bytes, 201 chars
        (with_id(b'{"t":"say","text":"' + b"x" * 1000 + b'"}'), "too-long"),  # > MAX_PAYLOAD_BYTES
        (b'{"t":"nick","nick":"9lives"}', "bad-nick"),
        (b'{"t":"nick","nick":"-dash"}', "bad-nick"),
        (b'{"t":"nick","nick":"a b"}', "bad-nick"),
        (b'{"t":"nick","nick":"' + b"a" * 25 + b'"}', "bad-nick"),
        (raw({"t": "nick", "nick": "caf\u00e9"}), "bad-nick"),
        (b'{"t":"join","room":"Lobby"}', "bad-room"),  # the client lowercases
        (b'{"t":"join","room":"#dev"}', "bad-room"),  # the client strips '#'
        (b'{"t":"join","room":""}', "bad-room"),
        (b'{"t":"hello","nick":"a","room":"lobby","client":"0123456789ABCDEF"}', "bad-message"),
        (b'{"t":"hello","nick":"a","room":"lobby","client":"0123"}', "bad-message"),
        (with_id(b'{"t":"say","text":NaN}'), "bad-message"),
        (b"[" * 400 + b"]" * 400, "bad-message"),
    ],
)
def test_decode_client_rejects(data: bytes, code: str) -> None:
    """Anything but exactly a listed client message raises MessageError with the code
    the server answers with."""
    with pytest.raises(MessageError) as info:
        decode_client(data)
    assert info.value.code == code


@pytest.mark.parametrize(
    "obj",
    [
        {"t": "part", "room": "a", "nick": "b", "reason": "kicked"},
        {"t": "error", "code": "oops", "text": "x"},
        {"t": "who", "room": "a", "nicks": "alice", "more": False},
        {"t": "who", "room": "a", "nicks": ["9x"], "more": False},
        {"t": "who", "room": "a", "nicks": [], "more": 0},
        {"t": "rooms", "rooms": [["a"]], "more": False},
        {"t": "rooms", "rooms": [["a", -1]], "more": False},
        {"t": "rooms", "rooms": [["a", True]], "more": False},
        {"t": "rooms", "rooms": [["a", 1.5]], "more": False},
        {"t": "msg", "to": "bob", "text": "x", "id": ID},  # the client's form, not the server's
        {"t": "hello", "nick": "a", "room": "b", "client": "0123456789abcdef"},
        {"t": "notice", "code": "Split", "text": "x"},  # codes are lowercase words
        {"t": "notice", "code": "", "text": "x"},
        {"t": "notice", "code": "split", "text": "x", "room": "Lobby"},
        {"t": "notice", "code": "split", "text": "a\nb"},
        {"t": "notice", "code": "split"},
        {"t": "caps", "room-keys": True, "notices": 1},
    ],
)
def test_decode_server_rejects(obj: dict[str, Any]) -> None:
    """A client is as strict about what the server sends."""
    with pytest.raises(MessageError):
        decode_server(raw(obj))


@pytest.mark.parametrize(
    ("changes", "reported"),
    [
        ({"nick": 5}, '"nick" must be a string'),
        ({"nick": 5, "text": None}, '"nick" must be a string'),  # the first bad field
        ({"room": ["lobby"], "nick": 5}, '"room" must be a string'),
        ({"text": 7, "ts": "noon", "history": True}, '"text" must be a string'),
        ({"ts": "noon", "history": True}, '"ts" must be a number 0 <= ts < 253402214400'),
    ],
)
def test_a_field_of_the_wrong_type_is_reported_first_in_field_order(
    changes: dict[str, Any], reported: str
) -> None:
    """The error names the first field (in the order the message declares them)
    whose JSON type is wrong, whatever the others hold."""
    obj = {"t": "say", "room": "lobby", "nick": "bob", "text": "hi", "id": ID, **changes}
    with pytest.raises(MessageError) as info:
        decode_server(raw(obj))
    assert str(info.value) == reported


@given(st.binary(max_size=1200))
@example(b"\xed\xa0\x80")  # UTF-8-encoded surrogate
def test_arbitrary_bytes_raise_only_message_error(data: bytes) -> None:
    """No byte string makes a decoder raise anything but MessageError."""
    decode_any(data)


@given(json_values | message_like)
def test_arbitrary_json_raises_only_message_error(obj: Any) -> None:
    """No JSON value, even one shaped like a message, raises anything but MessageError."""
    decode_any(raw(obj))


def test_constructors_validate_so_invalid_messages_cannot_be_encoded() -> None:
    """Building a message with an invalid field raises MessageError with its code."""
    with pytest.raises(MessageError) as info:
        Say("x" * 401, ID)
    assert info.value.code == "too-long"
    with pytest.raises(MessageError) as info:
        Say("x", "not-a-line-id")
    assert info.value.code == "bad-message"
    with pytest.raises(MessageError) as info:
        Nick("-x")
    assert info.value.code == "bad-nick"
    with pytest.raises(MessageError) as info:
        JoinNotice("Bad Room", "al")
    assert info.value.code == "bad-room"
    with pytest.raises(MessageError):
        Error("no-such-code", "x")


# --- names and text ------------------------------------------------------------------


@pytest.mark.parametrize("nick", ["a", "Alice", "_x", "[bot]", "\\o", "a-1", "`^{}|", "a" * 24])
def test_valid_nicks(nick: str) -> None:
    """Nicks are 1..24 of letters, digits, _-[]\\^{}|` not starting with - or a digit."""
    assert valid_nick(nick)


@pytest.mark.parametrize("nick", ["", "1a", "-a", "a b", "a.b", "é", "a" * 25, "a\n"])
def test_invalid_nicks(nick: str) -> None:
    """Anything else is not a nick."""
    assert not valid_nick(nick)


def test_fold_nick_is_case_insensitive() -> None:
    """Nicks differing only in case fold to the same key."""
    assert fold_nick("Alice") == fold_nick("aLICE") == fold_nick("alice")
    assert fold_nick("alice") != fold_nick("alice_")


@pytest.mark.parametrize(
    ("typed", "wire"), [("#Dev", "dev"), ("dev", "dev"), (" #Lobby ", "lobby"), ("##x", "#x")]
)
def test_normalize_room(typed: str, wire: str) -> None:
    """A typed room name is trimmed, loses one leading '#', and is lowercased."""
    assert normalize_room(typed) == wire


def test_room_validity() -> None:
    """Rooms on the wire are 1..24 of a-z, 0-9, '_' and '-'."""
    assert valid_room("lobby") and valid_room("a-b_9") and valid_room("x" * 24)
    assert not valid_room("") and not valid_room("Lobby") and not valid_room("#x")
    assert not valid_room("x" * 25) and not valid_room("a b")


def test_text_error_explains_what_is_wrong() -> None:
    """text_error gives the client a message to show before sending anything."""
    assert text_error("hello") is None
    assert text_error("é" * 200) is None  # 400 bytes exactly
    assert text_error("x" * 532) == "line too long: 532 bytes, the limit is 400"
    assert text_error("é" * 201) == "line too long: 402 bytes, the limit is 400"
    assert text_error("") == "empty line"
    assert text_error("a\tb") == "line contains a control character (U+0009)"
    assert text_error("\x1b[2J") == "line contains a control character (U+001B)"
    assert text_error("\x85") == "line contains a control character (U+0085)"


# --- chunked lists -------------------------------------------------------------------


@given(rooms, st.lists(nicks, max_size=300))
def test_who_chunks_fit_and_keep_every_nick_in_order(room: str, names: list[str]) -> None:
    """who_chunks splits any member list into messages that each fit MAX_PAYLOAD_BYTES,
    all flagged more=true but the last, together holding every nick in order."""
    chunks = who_chunks(room, names)
    assert chunks
    assert [c.more for c in chunks] == [True] * (len(chunks) - 1) + [False]
    assert [n for c in chunks for n in c.nicks] == names
    for chunk in chunks:
        assert len(encode(chunk)) <= MAX_PAYLOAD_BYTES
        assert chunk.room == room


def test_who_chunks_are_full_before_starting_a_new_one() -> None:
    """A chunk ends only when the next nick would not fit: 256 nicks of 24 characters
    that JSON escapes (50 bytes each with the comma) go 18 to a message, 15 messages."""
    names = ["\\" * 23 + f"{i:x}" for i in range(16)] * 16
    chunks = who_chunks("r" * 24, names)
    assert [len(c.nicks) for c in chunks] == [18] * 14 + [4]
    for chunk, following in zip(chunks, chunks[1:], strict=False):
        grown = WhoList(chunk.room, (*chunk.nicks, following.nicks[0]), more=False)
        with pytest.raises(MessageError):  # too long to encode
            encode(grown)


@given(st.lists(st.tuples(rooms, st.integers(1, 10**6)), max_size=300))
def test_rooms_chunks_fit_and_keep_every_room(counts: list[tuple[str, int]]) -> None:
    """rooms_chunks splits the room list the same way."""
    chunks = rooms_chunks(counts)
    assert [c.more for c in chunks] == [True] * (len(chunks) - 1) + [False]
    assert [tuple(r) for c in chunks for r in c.rooms] == counts
    for chunk in chunks:
        assert len(encode(chunk)) <= MAX_PAYLOAD_BYTES
        assert decode_server(encode(chunk)) == chunk


def test_a_server_notice_has_a_code_for_programs_and_a_text_for_humans() -> None:
    """Extension "notices" (PROTOCOL.md 11.8): {"t":"notice","code":C,"text":T} with an
    optional "room"; asked for with "notices": true in caps, which the answer echoes."""
    notice = ServerNotice("split", "lobby is split", "lobby")
    assert encode(notice) == b'{"t":"notice","code":"split","text":"lobby is split","room":"lobby"}'
    assert decode_server(b'{"t":"notice","code":"some-new-code","text":"hi"}') == ServerNotice(
        "some-new-code", "hi"
    )
    assert decode_client(b'{"t":"caps","room-keys":true,"notices":true}') == Caps(True, None, True)
    assert encode(Caps(True, path_check=True, notices=True)) == (
        b'{"t":"caps","room-keys":true,"path-check":true,"notices":true}'
    )
    assert encode(Caps(False)) == b'{"t":"caps","room-keys":false}'


def _detailed_line_ok(room: object, nick: object, text: object, line_id: object) -> bool:
    try:
        SayOut(room, nick, text, line_id, ts=0.0)  # type: ignore[arg-type]  # not live
    except MessageError:
        return False
    return True


@given(
    room=rooms | st.text(max_size=30) | st.none(),
    nick=nicks | st.text(max_size=30) | st.binary(max_size=4),
    text=texts | st.text(max_size=420) | st.sampled_from(["é" * 200, "é" * 201, "x" * 400]),
    line_id=line_ids | st.text(max_size=17),
)
def test_the_fast_check_of_a_live_line_agrees_with_the_detailed_checks(
    room: Any, nick: Any, text: Any, line_id: Any
) -> None:
    """A live room line is checked with one match per field (every line a client
    shows); it accepts exactly the lines the detailed checks accept, which then say
    what is wrong with the others (a history line, with "ts", takes only those)."""
    from udpchat.chat.messages import _plain_line

    assert _plain_line(room, nick, text, line_id) == _detailed_line_ok(room, nick, text, line_id)
