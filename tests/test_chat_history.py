"""Specification of how the chat hands its history to a file and takes it back: the
rules' Remember and Forget actions, restore_room, and the adapter's order (a line is
kept before its acknowledgement leaves). Sans-IO: no file, no socket, no reactor."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from cryptography.fernet import Fernet
from twisted.internet.task import Clock

from udpchat.chat.messages import (
    Hello,
    Join,
    MeOut,
    Part,
    PrivateMsg,
    Say,
    SayOut,
    decode_server,
    encode,
)
from udpchat.chat.rules import Action, Broadcast, ChatRules, Forget, KeptLine, Remember, Send
from udpchat.chat.server import ChatServer
from udpchat.core import events
from udpchat.core.endpoint import ClientEndpoint
from udpchat.daemon.udp import ChatProtocol

PSK = Fernet.generate_key()
NOW = 1_800_000_000.0


class Rules:
    """A ChatRules and every action it took, in order."""

    def __init__(self, **options: Any) -> None:
        self.rules = ChatRules(**options)
        self.actions: list[Action] = []
        self._next = 0

    def take(self) -> list[Action]:
        out = self.rules.take_actions()
        self.actions += out
        return out

    def member(self, nick: str, room: str = "lobby") -> bytes:
        self._next += 1
        sid = self._next.to_bytes(8, "big")
        self.rules.session_started(sid, ("192.0.2.1", 40000 + self._next), NOW)
        self.send(sid, encode(Hello(nick, room, sid.hex())))
        return sid

    def send(self, sid: bytes, payload: bytes, now: float = NOW) -> list[Action]:
        self.rules.message_received(sid, payload, now)
        return self.take()


def history_sent(actions: Sequence[Action], sid: bytes) -> list[bytes]:
    """The history lines sent to `sid` (as bytes, as the rules queued them)."""
    return [
        a.payload
        for a in actions
        if isinstance(a, Send) and a.session_id == sid and b'"history":true' in a.payload
    ]


def test_a_line_is_remembered_when_accepted_even_while_it_waits_for_the_rate() -> None:
    """Remember comes with the line's acceptance, before its Broadcast, in the room's
    order, and holds exactly what a late joiner is replayed; a line that waits for the
    room's rate is remembered at once (it is acknowledged at once too)."""
    chat = Rules(room_burst=1, room_rate_per_s=1.0)
    alice = chat.member("alice")
    chat.member("bob")  # the join notice uses the room's one token
    got = chat.send(alice, encode(Say("first", "0000000000000001")), NOW + 0.5)
    got += chat.send(alice, encode(Say("second", "0000000000000002")), NOW + 0.6)
    remembered = [a for a in got if isinstance(a, Remember)]
    assert [decode_server(r.line) for r in remembered] == [
        SayOut("lobby", "alice", "first", "0000000000000001", ts=NOW + 0.5),
        SayOut("lobby", "alice", "second", "0000000000000002", ts=NOW + 0.6),
    ]
    assert not any(isinstance(a, Broadcast) for a in got), "both wait for the room's rate"
    for later in (10, 20, 30):  # one a time: the join notice, then both lines
        chat.rules.release(NOW + later)
    assert chat.rules.waiting_broadcasts() == 0
    chat.take()
    late = chat.member("late")
    assert history_sent(chat.actions, late) == [r.line for r in remembered]


def test_no_history_no_remember_but_lines_are_counted() -> None:
    """history_lines = 0: nothing to keep; the metrics still count lines relayed."""
    chat = Rules(history_lines=0)
    alice = chat.member("alice")
    bob = chat.member("bob")
    chat.send(alice, encode(Say("hi", "0000000000000001")))
    chat.send(alice, encode(PrivateMsg("bob", "psst", "0000000000000002")))
    assert not any(isinstance(a, Remember | Forget) for a in chat.actions)
    assert (chat.rules.lines_relayed, chat.rules.private_relayed) == (1, 1)
    assert bob


def test_an_empty_room_forgotten_is_a_forget_action() -> None:
    """Beyond idle_rooms_kept, the oldest emptied room is forgotten: Forget(room), so
    the file forgets it too (and stays bounded like memory)."""
    chat = Rules(idle_rooms_kept=1)
    alice = chat.member("alice", "r1")
    chat.send(alice, encode(Say("in r1", "0000000000000001")))
    chat.send(alice, encode(Join("r2")))
    chat.send(alice, encode(Say("in r2", "0000000000000002")))
    got = chat.send(alice, encode(Part()))  # r2 empties: r1 is one too many
    assert [a for a in got if isinstance(a, Forget)] == [Forget("r1")]
    assert (chat.rules.room_count, chat.rules.kept_room_count) == (1, 2)


def restored(n: int, room: str = "lobby", text: str = "kept") -> list[KeptLine]:
    """Lines as a history file gives them back: encoded as Remember gave them."""
    lines = [
        (SayOut if i % 2 else MeOut)(room, "alice", f"{text} {i}", f"{i:016x}", ts=NOW - 100 + i)
        for i in range(n)
    ]
    return [KeptLine(encode(line), line.line_id) for line in lines]


def test_restored_history_is_replayed_as_it_was_kept() -> None:
    """restore_room puts a room's lines back: a joiner gets them byte for byte, within
    the usual bounds (history_lines), and the room is kept like an emptied one."""
    chat = Rules(history_lines=3)
    lines = restored(5)
    chat.rules.restore_room("lobby", lines)
    assert chat.take() == []
    assert chat.rules.kept_room_count == 1 and chat.rules.room_count == 0
    bob = chat.member("bob")
    assert history_sent(chat.actions, bob) == [kept.line for kept in lines[2:]]


def test_a_restored_line_sent_again_is_not_relayed_or_kept_twice() -> None:
    """A line whose acknowledgement the restart cut off comes again from its client
    (same line id): it is in the history already, so it is neither relayed nor
    remembered again."""
    chat = Rules()
    lines = restored(2)
    chat.rules.restore_room("lobby", lines)
    alice = chat.member("alice")
    chat.member("bob")
    got = chat.send(alice, encode(Say("kept 1", lines[1].line_id)))
    assert not any(isinstance(a, Broadcast | Remember) for a in got)


def test_restoring_more_rooms_than_kept_forgets_the_least_recently_active() -> None:
    """Rooms come back in the order they were last active; beyond idle_rooms_kept the
    oldest are forgotten again, with Forget so that the file drops them."""
    chat = Rules(idle_rooms_kept=2)
    for room in ("old", "mid", "new"):
        chat.rules.restore_room(room, restored(1, room))
    assert chat.take() == [Forget("old")]
    joiner = chat.member("bob", "old")
    assert history_sent(chat.actions, joiner) == []


def test_restore_is_only_for_a_server_without_sessions() -> None:
    """Restoring is a start-up step: once a session exists, it is the caller's mistake."""
    chat = Rules()
    chat.member("alice")
    with pytest.raises(RuntimeError):
        chat.rules.restore_room("lobby", restored(1))


def test_server_hands_history_over_in_order_and_counts_for_metrics() -> None:
    """ChatServer.restore_history feeds the rules; take_history returns Remember and
    Forget in order, once."""
    server = ChatServer(PSK)
    server.restore_history([("lobby", restored(2))], NOW)
    assert server.take_history() == []
    assert server.rules.kept_room_count == 1


# --- the adapter: kept before acknowledged ---------------------------------------------


class Transport:
    def __init__(self) -> None:
        self.written: list[tuple[bytes, Any]] = []

        class Socket:
            sendto = staticmethod(lambda data, addr: self.written.append((data, addr)))

        self.socket = Socket()


class RecordingHistory:
    """A history sink that records, with each write, how many datagrams had been
    written to the socket before it."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.writes: list[tuple[int, list[Remember | Forget]]] = []

    def write(self, changes: Sequence[Remember | Forget]) -> None:
        self.writes.append((len(self.transport.written), list(changes)))


def test_a_line_is_kept_before_its_acknowledgement_leaves() -> None:
    """The adapter hands a pass's history to the sink before it writes the pass's
    datagrams: the datagram that acknowledges a line to its sender (the first whose
    delivery makes the sender's core report MessageDelivered), even one that leaves
    in the very pass the line arrived in, is written after the line was kept."""
    clock = Clock()
    clock.advance(NOW)
    transport = Transport()
    history = RecordingHistory(transport)
    protocol = ChatProtocol(ChatServer(PSK), lambda host: True, clock, clock.seconds, history)
    protocol.transport = transport  # type: ignore[assignment]
    client = ClientEndpoint(PSK)
    addr = ("127.0.0.1", 5000)
    delivered: list[int] = []  # index in transport.written after which it was reported

    def carry(rounds: int = 20) -> None:
        seen = 0
        for _ in range(rounds):
            now = clock.seconds()
            for data in client.datagrams_to_send(now):
                protocol.datagramReceived(data, addr)
            clock.advance(0.01)  # the core's ack delay and timers
            for i in range(seen, len(transport.written)):
                client.receive_datagram(transport.written[i][0], clock.seconds())
                while (event := client.next_event()) is not None:
                    if isinstance(event, events.MessageDelivered):
                        delivered.append(i)
            seen = len(transport.written)

    client.connect(clock.seconds())
    hello = {"t": "hello", "nick": "alice", "room": "lobby", "client": "00000000000000aa"}
    client.send(json.dumps(hello).encode(), clock.seconds())
    carry()
    transport.written.clear()
    delivered.clear()
    line = {"t": "say", "text": "kept first", "id": "00000000000000bb"}
    client.send(json.dumps(line).encode(), clock.seconds())
    # In the same datagram, a question: its answer goes out in the same pass and
    # carries the line's acknowledgement with it (not after the usual ack delay).
    client.send(json.dumps({"t": "who"}).encode(), clock.seconds())
    said_at = clock.seconds()
    carry()
    [(written_before, changes)] = history.writes
    assert [decode_server(c.line) for c in changes if isinstance(c, Remember)] == [
        SayOut("lobby", "alice", "kept first", "00000000000000bb", ts=said_at)
    ]
    assert delivered and delivered[0] == written_before, "the pass's first datagram acks it"
