"""Tests for udpchat.chat.rules: the chat rules, with a ChatRules in memory (no network)."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpchat.chat.lineids import new_line_id
from udpchat.chat.messages import (
    MAX_PAYLOAD_BYTES,
    Bye,
    Caps,
    ClientMessage,
    Error,
    Hello,
    Join,
    JoinNotice,
    Me,
    MeOut,
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
    ServerMessage,
    Shutdown,
    Welcome,
    Who,
    WhoList,
    decode_server,
    encode,
)
from udpchat.chat.rules import (
    HISTORY_BYTES_PER_ROOM,
    HISTORY_LINE_OVERHEAD_BYTES,
    LINE_IDS_KEPT,
    WAITING_MAX,
    Broadcast,
    ChatRules,
    Close,
    LogEvent,
    PauseReceiving,
    Send,
)

_fresh = itertools.count(1 << 60)


def lid(n: int | None = None) -> str:
    """A line id: ``n`` as 16 hex digits, or (no ``n``) one never used before."""
    return f"{next(_fresh) if n is None else n:016x}"


class Chat:
    """A ChatRules plus the inbox of every session: what the daemon would send."""

    def __init__(self, **options: Any) -> None:
        self.server = ChatRules(**options)
        self.now = 1_700_000_000.0
        self.inbox: dict[bytes, list[ServerMessage]] = defaultdict(list)
        self.closed: list[bytes] = []
        self.log: list[LogEvent] = []
        self._next = 0

    def connect(self) -> bytes:
        """A new session whose handshake completed, not a member yet."""
        self._next += 1
        sid = self._next.to_bytes(8, "big")
        self.server.session_started(sid, ("192.0.2.1", 40000 + self._next), self.now)
        return sid

    def send(self, sid: bytes, msg: ClientMessage | bytes) -> None:
        """The session sends a message (or raw bytes); time moves on by one second."""
        self.now += 1
        payload = msg if isinstance(msg, bytes) else encode(msg)
        self.server.message_received(sid, payload, self.now)
        self.pump()

    def pump(self) -> None:
        """Carry out what the rules said, in order; every payload must fit and decode,
        and nothing is sent to a session after it was closed."""
        for action in self.server.take_actions():
            if isinstance(action, Send):
                assert action.session_id not in self.closed, "sent after its close"
                assert len(action.payload) <= MAX_PAYLOAD_BYTES
                self.inbox[action.session_id].append(decode_server(action.payload))
            elif isinstance(action, Broadcast):
                assert len(action.payload) <= MAX_PAYLOAD_BYTES
                for sid, _ in action.members:
                    if sid != action.skip:
                        assert sid not in self.closed, "sent after its close"
                        self.inbox[sid].append(decode_server(action.payload))
            elif isinstance(action, Close):
                self.closed.append(action.session_id)
            elif isinstance(action, LogEvent):
                self.log.append(action)

    def member(self, nick: str, room: str = "lobby", client: str | None = None) -> bytes:
        """A session that said hello as ``nick``; its inbox is left as it is."""
        sid = self.connect()
        self.send(sid, Hello(nick, room, client or sid.hex()))
        assert isinstance(self.inbox[sid][0], Welcome), self.inbox[sid]
        return sid

    def take(self, sid: bytes) -> list[ServerMessage]:
        """The session's inbox, emptied."""
        out, self.inbox[sid] = self.inbox[sid], []
        return out

    def clear(self) -> None:
        """Forget everything delivered so far."""
        self.inbox.clear()
        self.closed.clear()
        self.log.clear()

    def end(self, sid: bytes, reason: str) -> None:
        """The protocol core reports the session ended."""
        self.server.session_ended(sid, reason, self.now)
        self.pump()


def errors(messages: list[ServerMessage]) -> list[str]:
    """The codes of the error messages among ``messages``."""
    return [m.code for m in messages if isinstance(m, Error)]


@pytest.fixture
def chat() -> Chat:
    """A chat server with the default options."""
    return Chat()


# --- hello and nicks -----------------------------------------------------------------


def test_hello_is_welcomed_and_the_room_sees_the_join(chat: Chat) -> None:
    """A hello gets welcome then a join notice (also to the newcomer); the room's
    members see the join notice."""
    alice = chat.member("alice")
    assert chat.take(alice) == [Welcome("alice", "lobby"), JoinNotice("lobby", "alice")]
    bob = chat.member("bob")
    assert chat.take(bob) == [Welcome("bob", "lobby"), JoinNotice("lobby", "bob")]
    assert chat.take(alice) == [JoinNotice("lobby", "bob")]
    assert [(e.kind, e.nick, e.room) for e in chat.log] == [
        ("join", "alice", "lobby"),
        ("join", "bob", "lobby"),
    ]


def test_hello_starts_in_the_room_it_names(chat: Chat) -> None:
    """Everyone starts in the hello's room; other rooms hear nothing of it."""
    alice = chat.member("alice")
    bob = chat.member("bob", room="dev")
    chat.send(bob, Who())
    assert chat.take(bob)[-1] == WhoList("dev", ("bob",), more=False)
    assert chat.take(alice) == [Welcome("alice", "lobby"), JoinNotice("lobby", "alice")]


def test_nicks_are_unique_case_insensitively(chat: Chat) -> None:
    """A hello with a nick held by another client, in any case, gets nick-taken; the
    session stays unnamed (other messages: not-joined) and may retry hello."""
    chat.member("Alice")
    sid = chat.connect()
    chat.send(sid, Hello("aLiCe", "lobby", "f" * 16))
    assert errors(chat.take(sid)) == ["nick-taken"]
    chat.send(sid, Say("hi", lid()))
    assert errors(chat.take(sid)) == ["not-joined"]
    chat.send(sid, Hello("alice2", "lobby", "f" * 16))
    assert chat.take(sid)[0] == Welcome("alice2", "lobby")
    assert ("refused", "aLiCe", "nick-taken") in [(e.kind, e.nick, e.detail) for e in chat.log]


def test_bad_nick_or_room_in_hello_is_refused_with_its_code(chat: Chat) -> None:
    """An invalid nick gets bad-nick, an invalid room bad-room; no one joins."""
    sid = chat.connect()
    chat.send(sid, b'{"t":"hello","nick":"9x","room":"lobby","client":"0123456789abcdef"}')
    chat.send(sid, b'{"t":"hello","nick":"x","room":"#Lobby","client":"0123456789abcdef"}')
    assert errors(chat.take(sid)) == ["bad-nick", "bad-room"]
    assert chat.server.member_count == 0


def test_messages_before_hello_get_not_joined(chat: Chat) -> None:
    """Every message but hello and bye, before a hello was accepted: not-joined."""
    sid = chat.connect()
    for msg in (
        Say("x", lid()),
        Me("x", lid()),
        PrivateMsg("bob", "x", lid()),
        Nick("n"),
        Join("x"),
        Part(),
        Who(),
        Rooms(),
    ):
        chat.send(sid, msg)
    assert errors(chat.take(sid)) == ["not-joined"] * 8


def test_bye_before_hello_just_closes(chat: Chat) -> None:
    """A bye from an unnamed session closes it without any answer."""
    sid = chat.connect()
    chat.send(sid, Bye())
    assert chat.take(sid) == [] and chat.closed == [sid]


def test_second_hello_is_a_bad_message(chat: Chat) -> None:
    """A session says hello once."""
    alice = chat.member("alice")
    chat.send(alice, Hello("other", "lobby", "0123456789abcdef"))
    assert errors(chat.take(alice)) == ["bad-message"]
    assert chat.server.nick_of(alice) == "alice"


def test_rename_is_seen_by_the_room_only(chat: Chat) -> None:
    """/nick: everyone in the renamer's room, the renamer too, sees the nick notice;
    other rooms do not; the old nick is free again."""
    alice, bob, carol = chat.member("alice"), chat.member("bob"), chat.member("carol", "dev")
    chat.clear()
    chat.send(alice, Nick("al"))
    assert chat.take(alice) == chat.take(bob) == [NickNotice("alice", "al")]
    assert chat.take(carol) == []
    assert chat.server.nick_of(alice) == "al"
    chat.send(carol, Nick("ALICE"))
    assert chat.take(carol) == [NickNotice("carol", "ALICE")]
    assert ("rename", "al", "alice") in [(e.kind, e.nick, e.detail) for e in chat.log]


def test_rename_to_a_taken_nick_is_refused(chat: Chat) -> None:
    """/nick to someone else's nick, in any case: nick-taken, nothing changes."""
    alice, bob = chat.member("alice"), chat.member("bob")
    chat.clear()
    chat.send(alice, Nick("BOB"))
    assert errors(chat.take(alice)) == ["nick-taken"] and chat.take(bob) == []


def test_rename_may_change_only_the_case(chat: Chat) -> None:
    """/nick Alice when you are alice is a rename; /nick alice is already-there."""
    alice = chat.member("alice")
    chat.clear()
    chat.send(alice, Nick("alice"))
    assert errors(chat.take(alice)) == ["already-there"]
    chat.send(alice, Nick("Alice"))
    assert chat.take(alice) == [NickNotice("alice", "Alice")]


# --- lines ---------------------------------------------------------------------------


def test_lines_go_to_every_other_member_of_the_room_in_order(chat: Chat) -> None:
    """say and me reach the others in the sender's room, in the sender's order; the
    sender gets no echo and other rooms hear nothing."""
    alice, bob, carol = chat.member("alice"), chat.member("bob"), chat.member("carol")
    dave = chat.member("dave", "dev")
    chat.clear()
    chat.send(alice, Say("one", lid(1)))
    chat.send(alice, Me("waves", lid(2)))
    chat.send(alice, Say("three", lid(3)))
    expected = [
        SayOut("lobby", "alice", "one", lid(1)),
        MeOut("lobby", "alice", "waves", lid(2)),
        SayOut("lobby", "alice", "three", lid(3)),
    ]
    assert chat.take(bob) == chat.take(carol) == expected
    assert chat.take(alice) == [] and chat.take(dave) == []


def test_too_long_or_controlled_lines_are_refused(chat: Chat) -> None:
    """A line over 400 bytes gets too-long, one with a control character (newline,
    escape sequence), or without a valid line id, gets bad-message; none reaches
    anyone nor the history."""
    alice, bob = chat.member("alice"), chat.member("bob")
    chat.clear()
    chat.send(alice, b'{"t":"say","text":"' + b"x" * 401 + b'","id":"0000000000000001"}')
    chat.send(alice, b'{"t":"say","text":"\\u001b[2Jgotcha","id":"0000000000000002"}')
    chat.send(alice, b'{"t":"me","text":"two\\nlines","id":"0000000000000003"}')
    chat.send(alice, b'{"t":"say","text":"no id"}')
    chat.send(alice, b'{"t":"say","text":"bad id","id":"0000000000000ABC"}')
    assert errors(chat.take(alice)) == ["too-long"] + ["bad-message"] * 4
    assert chat.take(bob) == []
    late = chat.member("late")
    assert chat.take(late) == [Welcome("late", "lobby"), JoinNotice("lobby", "late")]


def test_a_line_relayed_already_is_acknowledged_but_not_relayed_again(chat: Chat) -> None:
    """A say/me whose line id was already relayed (its sender re-sent it on a new
    session because the acknowledgement was lost) is not relayed or stored again,
    whatever its text, and not in another room either (the sender may have moved
    before re-sending); the sender gets no error."""
    alice = chat.member("alice", client="a" * 16)
    bob, carol = chat.member("bob"), chat.member("carol", "dev")
    chat.send(alice, Say("hello", lid(1)))
    again = chat.connect()
    chat.send(again, Hello("alice", "lobby", "a" * 16))  # takeover: a new session
    chat.clear()
    chat.send(again, Say("hello", lid(1)))
    chat.send(again, Me("hello", lid(1)))
    assert chat.take(bob) == [] and chat.take(again) == []
    chat.send(again, Say("next", lid(2)))
    assert chat.take(bob) == [SayOut("lobby", "alice", "next", lid(2))]
    late = chat.member("late")
    history = [m for m in chat.take(late) if isinstance(m, SayOut)]
    assert [(m.text, m.line_id) for m in history] == [("hello", lid(1)), ("next", lid(2))]
    chat.send(again, Join("dev"))
    chat.clear()
    chat.send(again, Say("hello", lid(1)))
    assert chat.take(carol) == []


def test_a_private_line_relayed_already_is_not_relayed_again(chat: Chat) -> None:
    """A msg whose line id was already relayed is dropped silently, even if its
    target has left since (it did get the line: no no-such-nick error)."""
    alice, bob = chat.member("alice"), chat.member("bob")
    chat.clear()
    chat.send(alice, PrivateMsg("bob", "psst", lid(1)))
    chat.send(alice, PrivateMsg("bob", "psst", lid(1)))
    assert chat.take(bob) == [PrivateMsgIn("alice", "psst", lid(1))]
    chat.send(bob, Bye())
    chat.clear()
    chat.send(alice, PrivateMsg("bob", "psst", lid(1)))
    assert chat.take(alice) == []
    chat.send(alice, PrivateMsg("bob", "psst", lid(2)))
    assert errors(chat.take(alice)) == ["no-such-nick"]


def test_line_ids_are_remembered_for_the_last_lines_of_the_whole_server() -> None:
    """The server remembers the ids of its last LINE_IDS_KEPT lines, whatever room
    they were said in: an older id is a new line again (bounded memory). (All at one
    instant: the room's rate is lifted, or alice would be paused and then closed.)"""
    chat = Chat(room_rate_per_s=1e9, room_burst=10**9)
    alice, bob = chat.member("alice"), chat.member("bob")
    chat.send(alice, Say("x", lid(1)))
    chat.send(alice, Join("dev"))
    for i in range(2, LINE_IDS_KEPT + 2):  # one more than LINE_IDS_KEPT, in dev
        chat.server.message_received(alice, encode(Say("x", lid(i))), chat.now)
    chat.send(alice, Part())
    chat.server.take_actions()
    chat.clear()
    chat.send(alice, Say("x", lid(3)))  # among the newest: still known
    assert chat.take(bob) == []
    chat.send(alice, Say("x", lid(1)))  # forgotten: a new line
    assert chat.take(bob) == [SayOut("lobby", "alice", "x", lid(1))]


# --- history -------------------------------------------------------------------------


def test_late_joiner_gets_the_bounded_history_flagged_with_ts() -> None:
    """The last history_lines say/me lines of a room are replayed to whoever arrives,
    right after welcome, with "ts" (when said) and history: true, oldest first."""
    chat = Chat(history_lines=3)
    alice = chat.member("alice")
    said_at = []
    for i in range(5):
        chat.send(alice, Say(f"line {i}", lid(i)) if i != 3 else Me("line 3", lid(i)))
        said_at.append(chat.now)
    late = chat.member("late")
    assert chat.take(late) == [
        Welcome("late", "lobby"),
        SayOut("lobby", "alice", "line 2", lid(2), ts=said_at[2]),
        MeOut("lobby", "alice", "line 3", lid(3), ts=said_at[3]),
        SayOut("lobby", "alice", "line 4", lid(4), ts=said_at[4]),
        JoinNotice("lobby", "late"),
    ]


def test_join_sends_the_new_rooms_history_after_the_join_notice(chat: Chat) -> None:
    """/join: join notice first (the joiner sees its own), then the room's history."""
    bob = chat.member("bob", "dev")
    chat.send(bob, Say("in dev", lid(1)))
    alice = chat.member("alice")
    chat.take(alice)
    chat.send(alice, Join("dev"))
    assert chat.take(alice) == [
        JoinNotice("dev", "alice"),
        SayOut("dev", "bob", "in dev", lid(1), ts=chat.now - 2),
    ]


def test_history_of_an_empty_room_is_kept_for_a_bounded_number_of_rooms() -> None:
    """An emptied room keeps its history for whoever comes back, but only the
    idle_rooms_kept most recently emptied rooms are remembered."""
    chat = Chat(idle_rooms_kept=2)
    alice = chat.member("alice")
    for room in ("r1", "r2", "r3"):
        chat.send(alice, Join(room))
        chat.send(alice, Say(f"said in {room}", lid()))
    chat.send(alice, Part())  # r1, r2, r3 are empty now; r1 was emptied first
    chat.take(alice)
    chat.send(alice, Join("r3"))
    assert [m.text for m in chat.take(alice) if isinstance(m, SayOut)] == ["said in r3"]
    chat.send(alice, Join("r1"))
    assert [m for m in chat.take(alice) if isinstance(m, SayOut)] == []


def test_history_is_bounded_in_bytes_and_replayed_as_stored() -> None:
    """A room keeps at most HISTORY_BYTES_PER_ROOM of history (each line counted as
    its encoded size plus a little), whatever history_lines allows: the newest lines,
    in order. Every joiner gets the same stored bytes (encoded once, not per joiner)."""
    chat = Chat(history_lines=500)
    alice = chat.member("alice")
    text = "\U0001f600" + "y" * 396  # 400 bytes, the costliest as a Python str
    for i in range(500):
        chat.send(alice, Say(text, lid(i)))
    chat.clear()
    replays = []
    for nick in ("bob", "carol"):
        sid = chat.connect()
        chat.server.message_received(sid, encode(Hello(nick, "lobby", sid.hex())), chat.now)
        actions = chat.server.take_actions()
        replays.append([a.payload for a in actions if isinstance(a, Send) and a.session_id == sid])
    history = [payload for payload in replays[0] if b'"history":true' in payload]
    kept = sum(len(line) + HISTORY_LINE_OVERHEAD_BYTES for line in history)
    assert kept <= HISTORY_BYTES_PER_ROOM < kept + len(history[0]) + HISTORY_LINE_OVERHEAD_BYTES
    shown = [decode_server(line) for line in history]
    assert [m.line_id for m in shown if isinstance(m, SayOut)] == [
        lid(i) for i in range(500 - len(history), 500)
    ]
    carol_history = [payload for payload in replays[1] if b'"history":true' in payload]
    assert all(a is b for a, b in zip(history, carol_history, strict=True))


def test_zero_history_lines_keeps_no_history() -> None:
    """history_lines=0 disables the history."""
    chat = Chat(history_lines=0)
    alice = chat.member("alice")
    chat.send(alice, Say("x", lid()))
    late = chat.member("late")
    assert chat.take(late) == [Welcome("late", "lobby"), JoinNotice("lobby", "late")]


# --- rooms ---------------------------------------------------------------------------


def test_join_moves_between_rooms_with_notices(chat: Chat) -> None:
    """/join: the old room sees a part (reason "part"), the new room, the joiner
    included, sees the join; joining your own room is already-there."""
    alice, bob, carol = chat.member("alice"), chat.member("bob"), chat.member("carol", "dev")
    chat.clear()
    chat.send(alice, Join("dev"))
    assert chat.take(bob) == [PartNotice("lobby", "alice", "part")]
    assert chat.take(carol) == [JoinNotice("dev", "alice")]
    assert chat.take(alice) == [JoinNotice("dev", "alice")]
    chat.send(alice, Join("dev"))
    assert errors(chat.take(alice)) == ["already-there"]
    assert ("move", "dev", "lobby") in [(e.kind, e.room, e.detail) for e in chat.log]


def test_part_returns_to_the_default_room(chat: Chat) -> None:
    """/part leaves for the default room; in the default room it is already-there."""
    alice, bob = chat.member("alice", "dev"), chat.member("bob")
    chat.clear()
    chat.send(alice, Part())
    assert chat.take(alice) == [JoinNotice("lobby", "alice")]
    assert chat.take(bob) == [JoinNotice("lobby", "alice")]
    chat.send(alice, Part())
    assert errors(chat.take(alice)) == ["already-there"]


def test_part_uses_the_configured_default_room() -> None:
    """default_room replaces "lobby" as the room /part returns to."""
    chat = Chat(default_room="hall")
    alice = chat.member("alice", "dev")
    chat.send(alice, Part())
    assert chat.take(alice)[-1] == JoinNotice("hall", "alice")


def test_rooms_lists_occupied_rooms_with_member_counts(chat: Chat) -> None:
    """/rooms lists every room with members, by name, with its count; a room that
    empties disappears from the list."""
    alice = chat.member("alice")
    chat.member("bob", "dev")
    carol = chat.member("carol", "dev")
    chat.member("dave", "art")
    chat.send(alice, Rooms())
    before = (RoomCount("art", 1), RoomCount("dev", 2), RoomCount("lobby", 1))
    assert chat.take(alice)[-1] == RoomList(before, more=False)
    chat.send(carol, Join("art"))
    chat.send(alice, Join("dev"))
    chat.take(alice)
    chat.send(alice, Rooms())
    after = (RoomCount("art", 2), RoomCount("dev", 2))
    assert chat.take(alice) == [RoomList(after, more=False)]


def test_who_lists_the_room_chunked_to_fit_one_message_each() -> None:
    """/who with 256 members of long nicks: several who messages, each fitting one
    payload, more=true on all but the last, together naming every member once."""
    chat = Chat(max_members=256)
    names = [f"member{i:03d}_{'x' * 14}" for i in range(256)]
    sids = [chat.member(name) for name in names]
    chat.clear()
    chat.send(sids[0], Who())
    chunks = chat.take(sids[0])
    assert len(chunks) > 1 and all(isinstance(c, WhoList) for c in chunks)
    assert [c.more for c in chunks] == [True] * (len(chunks) - 1) + [False]  # type: ignore[union-attr]
    assert [n for c in chunks for n in c.nicks] == sorted(names)  # type: ignore[union-attr]


def test_rooms_answer_is_chunked_too() -> None:
    """/rooms with 200 occupied rooms of long names needs several messages."""
    chat = Chat()
    first = chat.member("m0", room=f"room-{0:03d}-{'y' * 15}")
    for i in range(1, 200):
        chat.member(f"m{i}", room=f"room-{i:03d}-{'y' * 15}")
    chat.clear()
    chat.send(first, Rooms())
    chunks = chat.take(first)
    assert len(chunks) > 1
    listed = [r for c in chunks for r in c.rooms]  # type: ignore[union-attr]
    assert len(listed) == 200 and all(count == 1 for _, count in listed)


# --- private messages ----------------------------------------------------------------


def test_private_message_reaches_only_its_target(chat: Chat) -> None:
    """msg goes to the named member (nick in any case, any room) and no one else,
    with "from" set to the sender; the sender gets nothing back."""
    alice, bob, carol = chat.member("alice"), chat.member("Bob", "dev"), chat.member("carol")
    chat.clear()
    chat.send(alice, PrivateMsg("bob", "psst", lid(1)))
    assert chat.take(bob) == [PrivateMsgIn("alice", "psst", lid(1))]
    assert chat.take(alice) == [] and chat.take(carol) == []


def test_private_message_to_an_absent_nick_is_an_error(chat: Chat) -> None:
    """msg to a nick nobody has: no-such-nick to the sender; the nick of someone who
    left is absent too."""
    alice, bob = chat.member("alice"), chat.member("bob")
    chat.send(bob, Bye())
    chat.clear()
    chat.send(alice, PrivateMsg("nobody", "x", lid()))
    chat.send(alice, PrivateMsg("bob", "x", lid()))
    assert errors(chat.take(alice)) == ["no-such-nick", "no-such-nick"]
    assert chat.take(bob) == []


# --- leaving -------------------------------------------------------------------------


def test_bye_parts_with_quit_and_closes_the_session(chat: Chat) -> None:
    """bye: the room sees a part with reason "quit", the session is handed back for
    closing, and the nick is free."""
    alice, bob = chat.member("alice"), chat.member("bob")
    chat.clear()
    chat.send(bob, Bye())
    assert chat.take(alice) == [PartNotice("lobby", "bob", "quit")]
    assert chat.closed == [bob]
    assert chat.server.nick_of(bob) is None
    chat.end(bob, "local-close")  # the daemon closed it: nothing more happens
    assert chat.take(alice) == []
    chat.member("bob")


@pytest.mark.parametrize(
    ("reason", "part_reason", "log_kind"),
    [("timeout", "timeout", "timeout"), ("closed", "quit", "leave")],
)
def test_ended_session_parts_with_its_reason(
    chat: Chat, reason: str, part_reason: str, log_kind: str
) -> None:
    """When the core ends a member's session the room sees a part: reason "timeout"
    for a timeout, "quit" for a closed session; the log records it."""
    alice, bob = chat.member("alice"), chat.member("bob")
    chat.clear()
    chat.end(bob, reason)
    assert chat.take(alice) == [PartNotice("lobby", "bob", part_reason)]
    assert [(e.kind, e.nick) for e in chat.log] == [(log_kind, "bob")]
    chat.send(bob, Say("ghost", lid()))  # a late message from a gone session is ignored
    assert chat.take(bob) == [] and chat.take(alice) == []


def test_shutdown_tells_everyone_and_closes_every_session(chat: Chat) -> None:
    """shutdown sends {"t":"shutdown"} to every session, named or not, hands them all
    for closing, and the server ignores anything that comes after."""
    alice, unnamed = chat.member("alice"), chat.connect()
    chat.clear()
    chat.server.shutdown("server going down", chat.now)
    chat.pump()
    assert chat.take(alice) == chat.take(unnamed) == [Shutdown("server going down")]
    assert sorted(chat.closed) == sorted([alice, unnamed])
    chat.send(alice, Say("anyone?", lid()))
    assert chat.take(alice) == []


# --- reconnecting clients ------------------------------------------------------------


def test_reconnect_with_same_client_id_takes_over_silently(chat: Chat) -> None:
    """A hello with the nick of a member whose client id is the same, into the same
    room, replaces the stale session: the new one is welcomed with the history, the
    old one is handed back for closing, and the room sees no part or join."""
    alice = chat.member("alice", client="a" * 16)
    bob = chat.member("bob")
    chat.send(bob, Say("while you were away", lid(1)))
    chat.clear()
    again = chat.connect()
    chat.send(again, Hello("alice", "lobby", "a" * 16))
    assert chat.take(again) == [
        Welcome("alice", "lobby"),
        SayOut("lobby", "bob", "while you were away", lid(1), ts=chat.now - 1),
    ]
    assert chat.take(bob) == [] and chat.closed == [alice]
    assert [e.kind for e in chat.log] == ["takeover"]
    chat.end(alice, "local-close")  # the daemon closes the stale session
    chat.send(bob, Say("welcome back", lid(2)))
    assert chat.take(again) == [SayOut("lobby", "bob", "welcome back", lid(2))]
    assert chat.take(bob) == [] and chat.server.member_count == 2


def test_reconnect_into_another_room_parts_and_joins(chat: Chat) -> None:
    """A takeover that changes room (or nick) is a quit of the stale member and an
    ordinary arrival of the new one."""
    alice = chat.member("alice", client="a" * 16)
    bob, carol = chat.member("bob"), chat.member("carol", "dev")
    chat.clear()
    again = chat.connect()
    chat.send(again, Hello("alice", "dev", "a" * 16))
    assert chat.take(bob) == [PartNotice("lobby", "alice", "quit")]
    assert chat.take(carol) == [JoinNotice("dev", "alice")]
    assert chat.take(again) == [Welcome("alice", "dev"), JoinNotice("dev", "alice")]
    assert chat.closed == [alice]


def test_same_nick_from_another_client_is_not_a_takeover(chat: Chat) -> None:
    """Only the client id proves a reconnect: another client asking for the nick gets
    nick-taken and the holder keeps it."""
    alice = chat.member("alice", client="a" * 16)
    intruder = chat.connect()
    chat.send(intruder, Hello("alice", "lobby", "b" * 16))
    assert errors(chat.take(intruder)) == ["nick-taken"]
    assert chat.closed == [] and chat.server.nick_of(alice) == "alice"


# --- limits and robustness -----------------------------------------------------------


def test_hello_beyond_max_members_gets_server_full() -> None:
    """With max_members members, a new hello gets server-full (the session stays
    unnamed and may retry); once someone leaves there is room again."""
    chat = Chat(max_members=2)
    chat.member("alice")
    bob = chat.member("bob")
    carol = chat.connect()
    chat.send(carol, Hello("carol", "lobby", "c" * 16))
    assert errors(chat.take(carol)) == ["server-full"]
    chat.send(bob, Bye())
    chat.send(carol, Hello("carol", "lobby", "c" * 16))
    assert chat.take(carol)[0] == Welcome("carol", "lobby")


def test_messages_from_unknown_sessions_are_ignored(chat: Chat) -> None:
    """A session the server never saw start gets nothing and changes nothing."""
    chat.send(b"stranger", Hello("alice", "lobby", "a" * 16))
    assert chat.take(b"stranger") == [] and chat.server.member_count == 0


def test_log_events_never_carry_message_text() -> None:
    """Whatever members say, privately or not, no log event contains it."""
    chat = Chat()
    alice, bob = chat.member("alice"), chat.member("bob")
    secret = "SECRET-7f3a"
    for msg in (
        Say(secret, lid()),
        Me(secret, lid()),
        PrivateMsg("bob", secret, lid()),
        Join("dev"),
        Nick("al"),
        Part(),
        Bye(),
    ):
        chat.send(alice, msg)
    chat.send(bob, Say(secret * 20, lid()))
    chat.send(bob, b'{"t":"say","text":"' + secret.encode() + b'\\u0000","id":"0123456789abcdef"}')
    chat.end(bob, "timeout")
    assert chat.log
    assert all(secret not in repr(event) for event in chat.log)


# A few ids, so that sequences repeat some of them (re-sent lines).
line_ids = st.integers(1, 6).map(lid)
client_actions = st.one_of(
    st.builds(
        Hello,
        st.sampled_from(["a", "A", "b", "c"]),
        st.sampled_from(["lobby", "x"]),
        st.sampled_from(["0" * 16, "1" * 16, "2" * 16]),
    ),
    st.builds(Say, st.sampled_from(["hi", '"\\' * 200]), line_ids),
    st.builds(Me, st.just("waves"), line_ids),
    st.builds(PrivateMsg, st.sampled_from(["a", "b", "zz"]), st.just("psst"), line_ids),
    st.builds(Nick, st.sampled_from(["a", "B", "c", "d"])),
    st.builds(Join, st.sampled_from(["lobby", "x", "y"])),
    st.sampled_from([Part(), Who(), Rooms(), Bye()]),
    st.binary(max_size=60),
    st.sampled_from(["timeout", "closed", "local-close"]),  # the core ends the session
)


@given(st.lists(st.tuples(st.integers(0, 3), client_actions), max_size=40))
def test_any_sequence_of_input_never_raises(
    steps: list[tuple[int, ClientMessage | bytes | str]],
) -> None:
    """Arbitrary interleavings of messages, garbage and session ends from several
    sessions never raise; every output fits one payload and decodes; no member ever
    receives its own line back; nicks stay unique."""
    chat = Chat(history_lines=3, max_members=3, idle_rooms_kept=1)
    sids = [chat.connect() for _ in range(4)]
    for index, action in steps:
        sid = sids[index]
        if isinstance(action, str):
            chat.end(sid, action)
            sids[index] = chat.connect()
            continue
        me = chat.server.nick_of(sid)
        chat.take(sid)
        chat.send(sid, action)
        if me is not None and isinstance(action, (Say, Me)):
            own = [m for m in chat.take(sid) if isinstance(m, (SayOut, MeOut)) and not m.ts]
            assert own == []
        nicks = [n for s in sids if (n := chat.server.nick_of(s)) is not None]
        assert len({n.casefold() for n in nicks}) == len(nicks) <= 3


def test_a_members_own_waiting_lines_are_not_shown_to_it_after_a_takeover() -> None:
    """Lines waiting for the room's rate skip their sender; when the sender's client
    comes back on a new session (takeover, same client id), they skip the new session
    too: a restarted client must not be shown its own line."""
    rules = ChatRules(room_rate_per_s=1.0, room_burst=1)
    now = 1_800_000_000.0

    def hello(session: bytes, nick: str, client: str) -> None:
        rules.session_started(session, ("127.0.0.1", 1), now)
        message = {"t": "hello", "nick": nick, "room": "lobby", "client": client}
        rules.message_received(session, json.dumps(message).encode(), now)

    hello(b"bob-0001", "bob", "b" * 16)
    hello(b"alice-01", "alice", "a" * 16)
    for text in ("first", "waits"):
        say = {"t": "say", "text": text, "id": new_line_id()}
        rules.message_received(b"alice-01", json.dumps(say).encode(), now)
    rules.take_actions()
    hello(b"alice-02", "alice", "a" * 16)  # the same client, restarted
    actions = []
    for second in range(1, 6):  # one broadcast a second
        rules.release(now + second)
        actions += rules.take_actions()
    lines = [
        a for a in actions
        if isinstance(a, Broadcast) and json.loads(a.payload).get("t") == "say"
    ]  # fmt: skip
    assert [json.loads(a.payload)["text"] for a in lines] == ["first", "waits"]
    assert {a.skip for a in lines} == {b"alice-02"}


def test_a_member_that_outruns_the_pause_is_closed_and_the_wait_stays_bounded() -> None:
    """The pause (PauseReceiving) takes effect only after what the core already took,
    and a gap filled at once delivers a burst: a member with WAITING_MAX broadcasts
    waiting anyway is closed (logged "flood"), so what waits stays bounded."""
    rules = ChatRules(room_rate_per_s=1.0, room_burst=1)
    now = 1_800_000_000.0
    for session, nick in ((b"bob-0001", "bob"), (b"mallory1", "mallory")):
        rules.session_started(session, ("127.0.0.1", 1), now)
        hi = {"t": "hello", "nick": nick, "room": "lobby", "client": session.hex()}
        rules.message_received(session, json.dumps(hi).encode(), now)
    for i in range(200):  # as one burst from the core
        say = {"t": "say", "text": f"line {i}", "id": new_line_id()}
        rules.message_received(b"mallory1", json.dumps(say).encode(), now)
    actions = rules.take_actions()
    assert Close(b"mallory1") in actions
    assert [a.kind for a in actions if isinstance(a, LogEvent)].count("flood") == 1
    paused = [a for a in actions if isinstance(a, PauseReceiving)]
    assert paused == [PauseReceiving(b"mallory1", True)]
    assert rules.waiting_broadcasts() <= WAITING_MAX + 2  # plus the join notices


def test_caps_answers_only_what_the_client_asked_about(chat: Chat) -> None:
    """PROTOCOL.md 11.1 item 4: "notices" (11.8) is in the answer only for a client
    whose caps had it; a single daemon says yes (it knows the message) and never has
    anything to say with it."""
    old, new = chat.member("old"), chat.member("new")
    chat.send(old, Caps(True, path_check=True))
    chat.send(new, Caps(True, path_check=True, notices=True))
    assert chat.take(old)[-1] == Caps(True, path_check=True)
    assert chat.take(new)[-1] == Caps(True, path_check=True, notices=True)
