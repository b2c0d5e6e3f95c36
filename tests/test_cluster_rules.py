"""ClusterRules (udpchat.chat.cluster), sans-IO: what a daemon of a cluster asks of
its engine and does with the answers. `Engine` below plays the engine's contract as
docs/CLUSTER.md states it (one ordered stream per room, its history, nicks held by
one member), in memory, so that the rules of several daemons can be run together;
tests/test_cluster.py runs the same with real Redis and real daemons."""

from __future__ import annotations

import json
from typing import Any

import pytest

from udpchat.chat.cluster import ENGINE_DOWN_TEXT, ClusterRules
from udpchat.chat.engine import (
    ClaimNick,
    DropRoom,
    EngineBack,
    EngineLost,
    LoadRoom,
    NickClaimed,
    NickLost,
    Publish,
    Register,
    ReleaseNick,
    RoomEvent,
    RoomLoaded,
    RoomLoadFailed,
)
from udpchat.chat.lineids import new_line_id
from udpchat.chat.rules import Broadcast, Close, LogEvent, Send


class Engine:
    """The engine's contract, in memory: every Publish is appended to its room's one
    stream, which every daemon following the room reads in that order; nicks are
    held by one member (docs/CLUSTER.md: the claim's rules, "provisional" ones
    displaced by a "firm" one); the member lists follow joins, renames and parts.

    A daemon can be cut off (`cut`: it is told EngineLost, and what it asks fails,
    as the adapter answers) and let back in (`back`: EngineBack); `wipe` is a Redis
    that restarted empty."""

    def __init__(self, *daemons: ClusterRules) -> None:
        self.daemons = daemons
        # folded nick -> (member id, client, flag "f" or "p", its daemon)
        self.nicks: dict[str, tuple[str, str, str, ClusterRules]] = {}
        self.streams: dict[str, list[RoomEvent]] = {}
        self.members: dict[str, dict[str, str]] = {}  # room -> member id -> nick
        self.following: dict[ClusterRules, set[str]] = {d: set() for d in daemons}
        self.read: dict[tuple[ClusterRules, str], int] = {}  # where each reader is
        self.requests: list[Any] = []
        self.cut_off: set[ClusterRules] = set()
        self.displaced: list[tuple[ClusterRules, str]] = []  # NickLost due at `renew`

    def run(self) -> None:
        """Carry out every request, and hand every daemon what it has not read yet of
        the streams it follows, until nothing is left."""
        while any([self._step(d) or self.deliver(d) for d in self.daemons]):
            pass

    def deliver(self, daemon: ClusterRules) -> bool:
        """What the daemon's reader gets: the events after where it is."""
        if daemon in self.cut_off:
            return False
        got = False
        for room in list(self.following[daemon]):
            stream = self.streams.get(room, [])
            while (at := self.read.get((daemon, room), 0)) < len(stream):
                if room not in self.following[daemon]:
                    break  # dropped while reading
                self.read[daemon, room] = at + 1
                daemon.reply(stream[at], 0.0)
                got = True
        return got

    def cut(self, *daemons: ClusterRules) -> None:
        for daemon in daemons:
            self.cut_off.add(daemon)
            daemon.reply(EngineLost(), 1.0)

    def back(self, daemon: ClusterRules, lost_data: bool = False, reaped: bool = False) -> None:
        self.cut_off.discard(daemon)
        daemon.reply(EngineBack(lost_data, reaped), 2.0)
        self.run()

    def wipe(self) -> None:
        self.nicks.clear()
        self.streams.clear()
        self.members.clear()
        self.read.clear()  # the daemons read the new streams from their start

    def renew(self) -> None:
        """The daemons renew their nicks' leases and learn which they lost."""
        displaced, self.displaced = self.displaced, []
        for daemon, member in displaced:
            daemon.reply(NickLost(member, "displaced"), 3.0)
        self.run()

    def who(self, room: str) -> list[str]:
        return sorted(self.members.get(room, {}).values())

    def _step(self, daemon: ClusterRules) -> bool:
        requests = daemon.take_requests()
        for request in requests:
            self.requests.append(request)
            if daemon in self.cut_off:
                self._fail(daemon, request)
            elif isinstance(request, ClaimNick):
                self._claim(daemon, request)
            elif isinstance(request, ReleaseNick):
                held = self.nicks.get(request.nick.lower())
                if held is not None and held[0] == request.member:
                    del self.nicks[request.nick.lower()]
            elif isinstance(request, LoadRoom):
                self.following[daemon].add(request.room)
                stream = self.streams.get(request.room, [])
                self.read[daemon, request.room] = len(stream)
                lines = [e for e in stream if e.kind in ("say", "me")]
                daemon.reply(RoomLoaded(request.room, tuple(lines)), 0.0)
            elif isinstance(request, DropRoom):
                self.following[daemon].discard(request.room)
            elif isinstance(request, Register):
                event = request.event
                self.members.setdefault(event.room, {})[event.member] = event.nick
            elif isinstance(request, Publish):
                self.append(request.event)
        return bool(requests)

    def append(self, event: RoomEvent) -> None:
        """An event into its room's stream (and the room's member list)."""
        room = event.room
        self.streams.setdefault(room, []).append(event)
        members = self.members.setdefault(room, {})
        if event.kind in ("join", "nick"):
            members[event.member] = event.nick
        elif event.kind == "part":
            members.pop(event.member, None)

    def _claim(self, daemon: ClusterRules, request: ClaimNick) -> None:
        key = request.nick.lower()
        held = self.nicks.get(key)
        ok = (
            held is None
            or held[0] == request.member
            or held[1] == request.client
            or (request.kind == "firm" and held[2] == "p")
        )
        if ok:
            if held is not None and held[0] != request.member and held[1] != request.client:
                self.displaced.append((held[3], held[0]))
            flag = "p" if request.kind == "provisional" else "f"
            self.nicks[key] = (request.member, request.client, flag, daemon)
        reply = NickClaimed(
            request.session_id, request.nick, ok, kind=request.kind, member=request.member
        )
        daemon.reply(reply, 0.0)
        if ok and held is not None and held[0] != request.member and held[1] == request.client:
            # a takeover: the daemon that held it learns it (as the real one does when
            # renewing its nicks)
            held[3].reply(NickLost(held[0], "takeover"), 0.0)

    def _fail(self, daemon: ClusterRules, request: Any) -> None:
        """What the adapter answers when Redis does not."""
        if isinstance(request, ClaimNick):
            reply = NickClaimed(
                request.session_id, request.nick, False, True, request.kind, request.member
            )
            daemon.reply(reply, 0.0)
        elif isinstance(request, LoadRoom):
            daemon.reply(RoomLoadFailed(request.room), 0.0)


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


def inbox(messages: list[tuple[bytes, dict[str, Any]]], session: bytes) -> list[str]:
    """What one session got, as the reference client prints it (roughly)."""
    out = []
    for sid, m in messages:
        if sid != session:
            continue
        if m["t"] == "say":
            out.append(f"<{m['nick']}> {m['text']}")
        elif m["t"] in ("join", "part"):
            out.append(f"{m['nick']} {m['t']}s {m['room']}")
        elif m["t"] == "nick":
            out.append(f"{m['old']} is now {m['new']}")
        elif m["t"] in ("notice", "error"):
            out.append(f"{m['t']} {m.get('code')}: {m['text']}")
        elif m["t"] == "welcome":
            out.append(f"welcome {m['nick']}")
    return out


def hello(
    rules: ClusterRules,
    session: bytes,
    nick: str,
    room: str = "lobby",
    notices: bool = False,
    client: str | None = None,
) -> None:
    rules.session_started(session, ("127.0.0.1", 1), 0.0)
    payload = {"t": "hello", "nick": nick, "room": room, "client": client or session.hex()}
    rules.message_received(session, json.dumps(payload).encode(), 0.0)
    if notices:  # welcomed already (split): the caps of the reference client
        caps(rules, session)


def caps(rules: ClusterRules, session: bytes) -> None:
    """What the reference client sends after its welcome: it asks for notices."""
    message = {"t": "caps", "room-keys": False, "path-check": True, "notices": True}
    rules.message_received(session, json.dumps(message).encode(), 0.0)


def say(rules: ClusterRules, session: bytes, text: str, line_id: str | None = None) -> None:
    payload = {"t": "say", "text": text, "id": line_id or new_line_id()}
    rules.message_received(session, json.dumps(payload).encode(), 0.0)


def send(rules: ClusterRules, session: bytes, **message: Any) -> None:
    rules.message_received(session, json.dumps(message).encode(), 0.0)


def logged(rules: ClusterRules) -> list[LogEvent]:
    return [a for a in rules.take_actions() if isinstance(a, LogEvent)]


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


# --- split and merge (docs/CLUSTER.md, "Split and merge") ------------------------------

ALICE, CAROL, BOB = b"alice-00", b"carol-00", b"bob-0000"


def lines_of(messages: list[tuple[bytes, dict[str, Any]]], session: bytes) -> list[str]:
    return [line for line in inbox(messages, session) if line.startswith("<")]


def three_members() -> tuple[ClusterRules, ClusterRules, Engine]:
    """alice (asked for notices) and carol (an old client: no notices) on daemon a,
    bob (notices) on daemon b, all in lobby; everything before is taken."""
    a, b = ClusterRules("a"), ClusterRules("b")
    engine = Engine(a, b)
    hello(a, ALICE, "alice")
    hello(a, CAROL, "carol")
    hello(b, BOB, "bob")
    engine.run()
    caps(a, ALICE)
    caps(b, BOB)
    a.take_actions(), b.take_actions()
    return a, b, engine


def test_cut_off_from_the_engine_a_daemon_serves_its_own_members_and_tells_them() -> None:
    """While the engine does not answer, a daemon shows its members' lines to its
    other members at once, as a single daemon would, and keeps them; a member that
    asked for notices hears that its room is split, an old client nothing new; the
    log says so; /who lists the members it can see."""
    a, b, engine = three_members()
    engine.cut(a, b)
    actions = a.take_actions()
    told = said_of(actions)
    assert inbox(told, ALICE) == [
        "notice split: lobby is split: this server cannot reach the rest of the chat "
        "cluster, so you see only the members connected here; what is said here is kept, "
        "and goes to the others when the cluster is whole again"
    ]
    assert inbox(told, CAROL) == []
    assert [(e.kind, e.detail) for e in actions if isinstance(e, LogEvent)] == [
        ("split", "lobby (2 members here)")
    ]
    assert inbox(said(b), BOB)[0].startswith("notice split: lobby is split")
    say(a, ALICE, "one")
    say(b, BOB, "two")
    engine.run()
    to_a, to_b = said(a), said(b)
    assert inbox(to_a, CAROL) == ["<alice> one"] and inbox(to_a, ALICE) == []  # not echoed
    assert inbox(to_b, BOB) == []
    assert (a.kept_events, b.kept_events) == (1, 1)
    assert [e.kind for e in engine.streams["lobby"]] == ["join"] * 3  # nothing said there
    send(a, CAROL, t="who")
    assert [m["nicks"] for _, m in said(a) if m["t"] == "who"] == [["alice", "carol"]]


def said_of(actions: list[Any]) -> list[tuple[bytes, dict[str, Any]]]:
    out = []
    for action in actions:
        if isinstance(action, Send):
            out.append((action.session_id, json.loads(action.payload)))
        elif isinstance(action, Broadcast):
            message = json.loads(action.payload)
            out += [(sid, message) for sid, _ in action.members if sid != action.skip]
    return out


@pytest.mark.parametrize("lost_data", [True, False])
def test_merged_back_a_daemon_publishes_what_it_kept_and_nothing_is_shown_twice(
    lost_data: bool,
) -> None:
    """When the engine answers again, each daemon claims its members' nicks again,
    puts them back into the member lists (a Redis that restarted empty has lost
    them) and publishes what it kept, in order: the others show it, once; it does
    not show it again; its members hear that the room is whole again."""
    a, b, engine = three_members()
    engine.cut(a, b)
    say(a, ALICE, "one")
    say(b, BOB, "two")
    say(a, CAROL, "three")
    say(a, ALICE, "four")
    engine.run()
    said(a), said(b)
    if lost_data:
        engine.wipe()
    engine.back(a, lost_data=lost_data)
    to_a = said(a)
    assert [line for line in inbox(to_a, ALICE) if not line.startswith("notice")] == []
    assert inbox(to_a, ALICE) == [
        "notice merged: lobby is whole again: this server reaches the rest of the chat "
        "cluster, and what was said here meanwhile goes to the others now"
    ]
    assert inbox(to_a, CAROL) == []
    assert [e.text for e in engine.streams["lobby"] if e.kind == "say"] == ["one", "three", "four"]
    assert {"alice", "carol"} <= set(engine.who("lobby"))
    assert {"alice", "carol"} <= set(engine.nicks)
    assert a.kept_events == 0  # given back
    engine.back(b, lost_data=lost_data)
    to_a, to_b = said(a), said(b)
    assert lines_of(to_b, BOB) == ["<alice> one", "<carol> three", "<alice> four"]
    assert lines_of(to_a, ALICE) == lines_of(to_a, CAROL) == ["<bob> two"]
    assert engine.who("lobby") == ["alice", "bob", "carol"]
    assert set(engine.nicks) == {"alice", "bob", "carol"}
    # Whatever the engine hands out again is shown by nobody.
    for event in list(engine.streams["lobby"]):
        a.reply(event, 5.0)
        b.reply(event, 5.0)
    assert said(a) == [] and said(b) == []


@pytest.mark.parametrize("reached_the_engine", [False, True])
def test_a_line_in_flight_when_the_engine_went_away_is_shown_then_and_reaches_all_once(
    reached_the_engine: bool,
) -> None:
    """A line published as the engine went away, and not given back yet: this daemon
    shows it to its members when it splits off, and publishes it again at the merge
    (it cannot know whether the engine got it). The others show it once, whether the
    engine had it (then they saw it already) or not; this daemon not again."""
    a, b, engine = three_members()
    say(a, ALICE, "in flight")
    (publish,) = a.take_requests()
    assert isinstance(publish, Publish)
    if reached_the_engine:  # appended, and b read it; a's reader had not yet
        engine.append(publish.event)
        engine.deliver(b)
        assert lines_of(said(b), BOB) == ["<alice> in flight"]
    engine.cut(a, b)
    assert lines_of(said(a), CAROL) == ["<alice> in flight"]
    engine.back(a)
    engine.back(b)
    to_a, to_b = said(a), said(b)
    assert lines_of(to_a, CAROL) == []
    assert lines_of(to_b, BOB) == ([] if reached_the_engine else ["<alice> in flight"])
    assert a.kept_events == 0


def test_at_its_bound_a_split_daemon_refuses_a_line_with_an_error_never_takes_and_loses_it() -> (
    None
):
    """What a split daemon keeps is bounded: past it, a line is answered with error
    "server-full" quoting it (its sender is told; nothing is acknowledged and lost), a
    move or a rename likewise; a member leaving still fits. Once merged, everything
    kept reaches the others."""
    a, b = ClusterRules("a", kept_max=3), ClusterRules("b")
    engine = Engine(a, b)
    hello(a, ALICE, "alice")
    hello(a, CAROL, "carol")
    hello(b, BOB, "bob")
    engine.run()
    said(a), said(b)
    engine.cut(a)
    for text in ("one", "two", "three", "four is one too many"):
        say(a, ALICE, text)
    send(a, ALICE, t="join", room="dev")
    send(a, ALICE, t="nick", nick="alicia")
    told = said(a)
    assert lines_of(told, CAROL) == ["<alice> one", "<alice> two", "<alice> three"]
    full = (
        "this server already keeps 3 events for the chat cluster, whose message engine "
        "does not answer; try again when it is whole"
    )
    assert [line for line in inbox(told, ALICE) if line.startswith("error")] == [
        f'error server-full: not sent: "four is one too many": {full}',
        f"error server-full: not sent: {full}",
        f"error server-full: not sent: {full}",
    ]
    a.session_ended(CAROL, "closed", 1.0)  # leaving always fits
    assert inbox(said(a), ALICE) == ["carol parts lobby"]
    engine.back(a)
    assert lines_of(said(b), BOB) == ["<alice> one", "<alice> two", "<alice> three"]
    assert engine.who("lobby") == ["alice", "bob"]


def test_a_nick_taken_on_two_daemons_while_split_is_kept_by_the_first_to_claim_it_again() -> None:
    """Two newcomers take "dave" on two split daemons. At the merge the engine decides:
    the daemon whose claim comes first keeps it; the later claimant is renamed
    ("dave_"), its room sees the rename, it is told why (notice "renamed"), the log
    says so; never two members with one nick."""
    a, b, engine = three_members()
    engine.cut(a, b)
    hello(a, b"dave-aaa", "dave", notices=True)
    hello(b, b"dave-bbb", "dave", notices=True)
    assert inbox(said(a), b"dave-aaa")[0] == "welcome dave"
    assert inbox(said(b), b"dave-bbb")[0] == "welcome dave"
    engine.back(a)
    engine.back(b)
    to_b = b.take_actions()
    assert inbox(said_of(to_b), b"dave-bbb")[1:] == [
        "notice renamed: the nick dave was taken elsewhere in the chat cluster while it "
        "was split; you are dave_ now",
        "dave joins lobby",  # a's dave, as a kept it
        "dave is now dave_",  # b's, renamed
    ]
    assert inbox(said_of(to_b), BOB)[1:] == ["dave joins lobby", "dave is now dave_"]
    assert ("renamed", "dave_", "dave") in [
        (e.kind, e.nick, e.detail) for e in to_b if isinstance(e, LogEvent)
    ]
    assert engine.nicks["dave"][3] is a and engine.nicks["dave_"][3] is b
    assert "dave is now dave_" in inbox(said(a), ALICE)
    assert sorted(engine.who("lobby")) == ["alice", "bob", "carol", "dave", "dave_"]


def test_a_nick_held_before_the_split_is_kept_even_if_a_newcomer_claims_it_first() -> None:
    """Redis restarted empty; meanwhile a newcomer on daemon a took "bob", whom a
    could not know was on daemon b. a merges first and gets "bob" (provisionally),
    then b claims it again for the bob who held it before the split: the engine gives
    it back to him, and a, learning it when it renews its nicks, renames its own."""
    a, b, engine = three_members()
    engine.cut(a, b)
    hello(a, b"bob-aaaa", "bob", notices=True)
    said(a)
    engine.wipe()
    engine.back(a, lost_data=True)
    assert engine.nicks["bob"][3] is a
    engine.back(b, lost_data=True)
    assert engine.nicks["bob"][3] is b and engine.nicks["bob"][0] == b.member_id(BOB)
    said(a), said(b)
    engine.renew()
    assert inbox(said(a), b"bob-aaaa")[-2:] == [
        "notice renamed: the nick bob was taken elsewhere in the chat cluster while it "
        "was split; you are bob_ now",
        "bob is now bob_",
    ]
    assert "bob is now bob_" in inbox(said(b), BOB)
    assert engine.nicks["bob_"][3] is a


def test_a_member_whose_room_could_not_be_loaded_is_refused_not_left_waiting() -> None:
    """The engine went away between the nick's claim and the room's load: a hello is
    refused with "server-full" (the client comes back later, as after a failed claim);
    a member moving to another room is told and closed, so that its client comes
    back into the room it knows. Neither waits unwelcomed."""
    a, b, engine = three_members()
    hello(a, b"erin-000", "erin", room="dev")
    send(a, ALICE, t="join", room="den")
    requests = a.take_requests()
    assert [type(r).__name__ for r in requests] == ["ClaimNick", "Publish", "LoadRoom"]
    claim, part, load = requests
    assert isinstance(claim, ClaimNick)
    a.reply(NickClaimed(claim.session_id, claim.nick, True, member=claim.member), 0.0)
    loads = a.take_requests()
    assert loads == [LoadRoom("dev")]
    engine.cut(a)
    a.reply(RoomLoadFailed("dev"), 0.0)
    a.reply(RoomLoadFailed("den"), 0.0)
    actions = a.take_actions()
    told = said_of(actions)
    assert inbox(told, b"erin-000") == [f"error server-full: {ENGINE_DOWN_TEXT}"]
    assert [line for line in inbox(told, ALICE) if line.startswith("error")] == [
        f"error server-full: could not enter den: {ENGINE_DOWN_TEXT}"
    ]
    assert Close(ALICE) in actions
    assert a.nick_of(b"erin-000") is None and a.nick_of(ALICE) is None
    hello(a, b"erin-000", "erin", room="dev")  # its client tries again: split, it is let in
    assert inbox(said(a), b"erin-000")[:2] == ["welcome erin", "erin joins dev"]


def test_a_daemon_taken_for_dead_shows_its_members_coming_back() -> None:
    """Redis kept its data but a reaper took daemon a for dead while it was cut off
    (its members were seen to leave): at the merge, the others see them join again,
    as they were, before what a kept."""
    a, b, engine = three_members()
    engine.cut(a)
    for member, nick in ((a.member_id(ALICE), "alice"), (a.member_id(CAROL), "carol")):
        assert member is not None
        engine.append(RoomEvent("part", "lobby", nick, member, reason="timeout"))
    engine.run()
    assert inbox(said(b), BOB) == ["alice parts lobby", "carol parts lobby"]
    say(a, ALICE, "still here")
    engine.back(a, reaped=True)
    assert inbox(said(b), BOB) == ["alice joins lobby", "carol joins lobby", "<alice> still here"]
    assert engine.who("lobby") == ["alice", "bob", "carol"]


def test_while_split_a_private_line_to_a_member_elsewhere_is_refused_naming_the_nick() -> None:
    """A /msg to a nick not on this daemon cannot be routed while split: its sender is
    told, with the nick named (the client cancels that msg's echo by it); to a member
    here it goes as ever."""
    a, b, engine = three_members()
    engine.cut(a, b)
    said(a)
    send(a, ALICE, t="msg", to="bob", text="psst", id=new_line_id())
    send(a, ALICE, t="msg", to="carol", text="hi", id=new_line_id())
    told = said(a)
    assert inbox(told, ALICE) == [f"error no-such-nick: cannot reach bob: {ENGINE_DOWN_TEXT}"]
    assert [m["text"] for sid, m in told if sid == CAROL and m["t"] == "msg"] == ["hi"]


def test_a_room_entered_while_split_is_loaded_at_the_merge_with_the_history_of_both() -> None:
    """A member who moves to a room its daemon did not follow, while split, is let in
    at once (with what this daemon knows: nothing); at the merge the room is loaded
    before the daemon's events in it are published, so it sees them come back, and
    later members get the engine's older lines, then those said here."""
    a, b = ClusterRules("a", history_lines=5), ClusterRules("b", history_lines=5)
    engine = Engine(a, b)
    hello(b, BOB, "bob", room="dev")
    hello(a, ALICE, "alice")
    engine.run()
    say(b, BOB, "before")
    engine.run()
    said(a), said(b)
    engine.cut(a)
    send(a, ALICE, t="join", room="dev")
    say(a, ALICE, "during")
    assert inbox(said(a), ALICE) == ["alice joins dev"]
    engine.back(a)
    assert [type(r).__name__ for r in engine.requests[-6:]].index("LoadRoom") < [
        type(r).__name__ for r in engine.requests[-6:]
    ].index("Publish")
    assert lines_of(said(b), BOB) == ["<alice> during"]
    assert a.kept_events == 0
    hello(a, CAROL, "carol", room="dev")
    engine.run()
    history = [m["text"] for sid, m in said(a) if sid == CAROL and m.get("history")]
    assert history == ["before", "during"]


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
