"""ClusterRules (udpchat.chat.cluster), sans-IO: what a daemon of a cluster asks of
its engine and does with the answers. `Engine` below plays the engine's contract as
docs/CLUSTER.md states it (one ordered stream per room, its history, nicks held by
one member), in memory, so that the rules of several daemons can be run together;
tests/test_cluster.py runs the same with real Redis and real daemons."""

from __future__ import annotations

import json
from typing import Any

from udpchat.chat.cluster import (
    ClaimNick,
    ClusterRules,
    DropRoom,
    LoadRoom,
    NickClaimed,
    NickLost,
    Publish,
    ReleaseNick,
    RoomEvent,
    RoomLoaded,
)
from udpchat.chat.lineids import new_line_id
from udpchat.chat.rules import Broadcast, Close, Send


class Engine:
    """The engine's contract, in memory: every Publish is appended to its room's one
    stream and handed to every daemon following the room, in that order. A nick is
    granted if free, or held by the same member or the same client id (a takeover:
    the daemon that held it is told, NickLost, as the real one learns when renewing)."""

    def __init__(self, *daemons: ClusterRules) -> None:
        self.daemons = daemons
        self.nicks: dict[str, str] = {}  # folded nick -> member id
        self.holders: dict[str, tuple[str, ClusterRules]] = {}  # member id -> client, daemon
        self.streams: dict[str, list[RoomEvent]] = {}
        self.following: dict[ClusterRules, set[str]] = {d: set() for d in daemons}
        self.requests: list[Any] = []

    def run(self) -> None:
        """Carry out every request until none is left."""
        while any(self._step(d) for d in self.daemons):
            pass

    def _step(self, daemon: ClusterRules) -> bool:
        requests = daemon.take_requests()
        for request in requests:
            self.requests.append(request)
            if isinstance(request, ClaimNick):
                holder = self.nicks.setdefault(request.nick.lower(), request.member)
                client, old_daemon = self.holders.get(holder, (request.client, daemon))
                ok = holder == request.member or client == request.client
                if ok:
                    self.nicks[request.nick.lower()] = request.member
                    self.holders[request.member] = (request.client, daemon)
                daemon.reply(NickClaimed(request.session_id, request.nick, ok), 0.0)
                if ok and holder != request.member:
                    old_daemon.reply(NickLost(holder), 0.0)
            elif isinstance(request, ReleaseNick):
                if self.nicks.get(request.nick.lower()) == request.member:
                    del self.nicks[request.nick.lower()]
            elif isinstance(request, LoadRoom):
                self.following[daemon].add(request.room)
                lines = [e for e in self.streams.get(request.room, []) if e.kind in ("say", "me")]
                daemon.reply(RoomLoaded(request.room, tuple(lines)), 0.0)
            elif isinstance(request, DropRoom):
                self.following[daemon].discard(request.room)
            elif isinstance(request, Publish):
                room = request.event.room
                self.streams.setdefault(room, []).append(request.event)
                for other in self.daemons:
                    if room in self.following[other]:
                        other.reply(request.event, 0.0)
        return bool(requests)


def said(rules: ClusterRules) -> list[tuple[bytes, dict[str, Any]]]:
    """What the rules send, per session: (session, message), broadcasts expanded."""
    out = []
    for action in rules.take_actions():
        if isinstance(action, Send):
            out.append((action.session_id, json.loads(action.payload)))
        elif isinstance(action, Broadcast):
            message = json.loads(action.payload)
            out += [(sid, message) for sid, _ in action.members if sid != action.skip]
    return out


def hello(rules: ClusterRules, session: bytes, nick: str, client: str | None = None) -> None:
    rules.session_started(session, ("127.0.0.1", 1), 0.0)
    payload = {"t": "hello", "nick": nick, "room": "lobby", "client": client or session.hex()}
    rules.message_received(session, json.dumps(payload).encode(), 0.0)


def say(rules: ClusterRules, session: bytes, text: str, line_id: str | None = None) -> None:
    payload = {"t": "say", "text": text, "id": line_id or new_line_id()}
    rules.message_received(session, json.dumps(payload).encode(), 0.0)


def test_a_nick_is_claimed_in_the_engine_before_the_welcome_and_refused_elsewhere() -> None:
    a, b = ClusterRules("a"), ClusterRules("b")
    engine = Engine(a, b)
    hello(a, b"alice-00", "alice")
    assert said(a) == []  # nothing before the engine says the nick is hers
    engine.run()
    assert said(a)[0] == (b"alice-00", {"t": "welcome", "nick": "alice", "room": "lobby"})
    hello(b, b"alice-11", "Alice")
    engine.run()
    assert said(b) == [
        (b"alice-11", {"t": "error", "code": "nick-taken", "text": "Alice is taken"})
    ]
    a.session_ended(b"alice-00", "closed", 1.0)
    engine.run()
    assert engine.nicks == {}  # released: the nick is free for anyone again


def test_lines_reach_every_daemon_in_the_streams_order_never_echoed_nor_twice() -> None:
    a, b = ClusterRules("a"), ClusterRules("b")
    engine = Engine(a, b)
    hello(a, b"alice-00", "alice")
    hello(b, b"bob-0000", "bob")
    engine.run()
    said(a), said(b)
    say(a, b"alice-00", "one")
    say(b, b"bob-0000", "two")
    assert said(a) == [] and said(b) == []  # shown only when the engine gives them back
    engine.run()
    to_alice = [m["text"] for sid, m in said(a) if m["t"] == "say"]
    to_bob = [m["text"] for sid, m in said(b) if m["t"] == "say"]
    assert to_alice == ["two"] and to_bob == ["one"]
    # The same line again through the other daemon (its acknowledgement was lost and
    # the client reconnected there): published once more, shown by nobody.
    line_id = new_line_id()
    say(a, b"alice-00", "three", line_id)
    engine.run()
    assert [m["text"] for _, m in said(b)] == ["three"]
    engine.streams["lobby"].append(engine.streams["lobby"][-1])
    b.reply(engine.streams["lobby"][-1], 2.0)
    assert said(b) == []


def test_a_room_is_loaded_with_its_history_before_a_member_enters_and_dropped_after() -> None:
    a, b = ClusterRules("a", history_lines=2), ClusterRules("b", history_lines=2)
    engine = Engine(a, b)
    hello(a, b"alice-00", "alice")
    engine.run()
    for text in ("one", "two", "three"):
        say(a, b"alice-00", text)
    engine.run()
    said(a)
    hello(b, b"carol-00", "carol")
    engine.run()
    to_carol = [m for _, m in said(b)]
    assert [m["t"] for m in to_carol] == ["welcome", "say", "say", "join"]
    assert [m["text"] for m in to_carol[1:3]] == ["two", "three"]
    assert all(m["history"] for m in to_carol[1:3])
    b.session_ended(b"carol-00", "closed", 1.0)
    engine.run()
    assert "lobby" not in engine.following[b]
    assert [m for _, m in said(a) if m["t"] == "part"] == [
        {"t": "part", "room": "lobby", "nick": "carol", "reason": "quit"}
    ]


def test_a_member_taken_over_through_another_daemon_is_not_seen_to_leave() -> None:
    """alice's client lost its session to daemon a (a lives on) and reconnected
    through b with its client id: b's claim takes the nick over and b publishes her
    join; a learns it (NickLost) and closes its stale member, whose part (reason
    "taken-over") keeps the engine's member list right but is shown by no daemon:
    bob sees alice join again and never leave."""
    a, b = ClusterRules("a"), ClusterRules("b")
    engine = Engine(a, b)
    hello(a, b"alice-00", "alice")
    hello(b, b"bob-0000", "bob")
    engine.run()
    said(a), said(b)
    hello(b, b"alice-11", "alice", client=b"alice-00".hex())
    engine.run()
    assert [m for sid, m in said(b) if sid == b"bob-0000"] == [
        {"t": "join", "room": "lobby", "nick": "alice"}
    ]
    assert Close(b"alice-00") in a.take_actions()
    parts = [r.event for r in engine.requests if isinstance(r, Publish) and r.event.kind == "part"]
    assert [(p.nick, p.member, p.reason) for p in parts] == [("alice", "a/1", "taken-over")]
