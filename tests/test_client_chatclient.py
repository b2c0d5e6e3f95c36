"""ChatClient (the client's chat logic) against the real core and chat rules, in
memory: hello/welcome, own lines, nick retry, reconnect with re-sending, lines shown
once by their line ids, pipe-mode draining and its exit status; the member list on
joining, the room's nicks for completion, /msg echoes and long lines split."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from client_net import FAST, Net, Peer

from udpchat.chat import messages
from udpchat.client import chatclient as client_session
from udpchat.client import echoes
from udpchat.client.chatclient import State
from udpchat.client.display import OwnLine
from udpchat.client.outbox import OUTBOX_MAX_LINES
from udpchat.core.limits import ProtocolConfig

#: The start of the notice of a lost session; the delay until the next try follows.
LOST_RECONNECTING = "-!- connection to server lost; reconnecting in"


def said(net: Net) -> list[str]:
    """The chat lines the server received, in order ("say" text only)."""
    out = []
    for payload in net.server_seen:
        msg = json.loads(payload)
        if msg["t"] == "say":
            out.append(msg["text"])
    return out


def sent_ids(net: Net, text: str) -> list[str]:
    """The line ids of every say/me/msg with ``text`` the server received, in order."""
    msgs = [json.loads(payload) for payload in net.server_seen]
    return [m["id"] for m in msgs if m["t"] in ("say", "me", "msg") and m["text"] == text]


def test_hello_welcome_and_chat() -> None:
    """Both clients are welcomed; a line shows as "<alice> hi" for bob and, locally,
    for alice herself (the server never echoes it)."""
    net = Net()
    alice, bob = net.client("alice"), net.client("bob")
    net.run_until(lambda: alice.chat.state is State.READY and bob.chat.state is State.READY)
    net.run(1)  # the member lists asked for on joining arrive
    net.submit(alice, "hi", "/me waves")
    net.run(1)
    assert "<alice> hi" in bob.lines and "* alice waves" in bob.lines
    assert alice.lines[-2:] == ["<alice> hi", "* alice waves"]
    assert "-!- you are alice in lobby" in alice.lines
    assert alice.chat.unsent == 0


def test_lines_typed_before_welcome_are_sent_after_it_in_order() -> None:
    """Lines submitted before the client has started reach the room once it is
    connected, in the order typed."""
    net = Net()
    bob = net.client("bob")
    net.run_until(lambda: bob.chat.connected)
    alice = net.client("alice", start=False)
    for i in range(5):
        alice.chat.submit(f"early {i}", net.now)
    alice.chat.start(net.now)
    net.run(2)
    assert [line for line in bob.lines if line.startswith("<alice>")] == [
        f"<alice> early {i}" for i in range(5)
    ]


def test_taken_nick_is_retried_with_underscore() -> None:
    """A nick already taken (ignoring case) is reported, and the client retries with '_'
    appended and connects under that nick."""
    net = Net()
    net.client("bob")
    net.run(1)
    other = net.client("Bob")
    net.run_until(lambda: other.chat.connected)
    assert other.chat.nick == "Bob_"
    assert "!!! bob is taken" in other.lines
    assert "-!- trying nick Bob_" in other.lines


def test_nick_and_room_follow_the_server() -> None:
    """The prompt's nick/room change only when the server confirms them."""
    net = Net()
    alice = net.client("alice")
    net.run_until(lambda: alice.chat.connected)
    net.submit(alice, "/nick al", "/join #Dev")
    net.run(1)
    assert (alice.chat.nick, alice.chat.room) == ("al", "dev")
    assert "-!- alice is now known as al" in alice.lines
    assert "-!- al has joined dev" in alice.lines


def test_local_errors_send_nothing() -> None:
    """Lines refused locally (unknown command, control character, bad nick) send
    nothing to the server; each is reported and counted as a failure."""
    net = Net()
    alice = net.client("alice", pipe=True)
    net.run_until(lambda: alice.chat.connected and alice.chat.room_keys_active)
    sent = len(net.server_seen)  # hello and caps
    net.submit(alice, "/bogus", "x" * 401 + "\x1b", "/nick 1bad")
    net.run(1)
    assert len(net.server_seen) == sent
    assert alice.lines[-3].startswith("!!! unknown command /bogus")
    assert alice.lines[-2] == "!!! line contains a control character (U+001B)"
    assert alice.chat.failures == 3


def test_reconnect_after_outage_resends_what_was_not_acknowledged() -> None:
    """Lines typed during an outage (or sent and never acknowledged) reach the room
    exactly once, in order, after the client noticed and reconnected."""
    net = Net()
    alice, bob = net.client("alice"), net.client("bob")
    net.run_until(lambda: alice.chat.connected and bob.chat.connected)
    net.submit(alice, "before")
    net.run(1)
    net.up = False
    net.submit(alice, "during 1", "during 2")
    net.run(FAST.session_expiry_s + 1)
    assert any(
        line.startswith("-!- connection to server lost; reconnecting in") for line in alice.lines
    )
    assert alice.chat.unsent == 2
    net.up = True
    net.submit(alice, "after")
    net.run_until(lambda: alice.chat.connected and alice.chat.unsent == 0, timeout=60)
    net.run(1)
    assert said(net) == ["before", "during 1", "during 2", "after"]
    assert "-!- reconnected" in alice.lines
    assert alice.chat.state is State.READY


def test_server_crash_and_restart() -> None:
    """A restarted server knows no session: the client times out, reconnects, says
    hello again (same nick, same room) and delivers what was typed meanwhile."""
    net = Net()
    alice = net.client("alice", room="dev")
    net.run_until(lambda: alice.chat.connected)
    client_id = alice.chat.client_id
    net.start_server()
    net.submit(alice, "anyone?")
    net.run_until(lambda: alice.chat.connected and alice.chat.unsent == 0, timeout=60)
    hellos = [json.loads(p) for p in net.server_seen if json.loads(p)["t"] == "hello"]
    assert [h["client"] for h in hellos] == [client_id, client_id]
    assert hellos[-1]["room"] == "dev" and hellos[-1]["nick"] == "alice"
    assert said(net)[-1] == "anyone?"


def test_history_replayed_after_reconnect_is_not_shown_twice() -> None:
    """After a reconnect, history lines already shown are not shown again, and a line
    said while away is shown once, marked with its time."""
    net = Net()
    alice, bob = net.client("alice"), net.client("bob")
    net.run_until(lambda: alice.chat.connected and bob.chat.connected)
    net.submit(bob, "one", "two")
    net.submit(alice, "mine")
    net.run(1)
    # Alice alone loses her connection; bob keeps talking.
    alice.cut = True
    net.run(FAST.session_expiry_s + 1)
    net.submit(bob, "while away")
    alice.cut = False
    net.run_until(lambda: alice.chat.connected, timeout=60)
    net.run(1)
    assert alice.lines.count("<bob> one") == 1
    assert alice.lines.count("<alice> mine") == 1
    replayed = [line for line in alice.lines if line.endswith("<bob> while away")]
    assert len(replayed) == 1 and replayed[0].startswith("[")  # marked as history


def test_a_line_whose_ack_was_lost_is_resent_with_its_id_and_shown_once() -> None:
    """The server relayed alice's line but its acknowledgement never reached her: her
    session expires, she reconnects (a takeover) and sends the line again with the
    same line id; the server recognises it: it neither relays it to bob again nor
    stores it in the history again."""
    net = Net()
    alice, bob = net.client("alice"), net.client("bob")
    net.run_until(lambda: alice.chat.connected and bob.chat.connected)
    alice.deaf = True  # what the server sends alice is lost, acks included
    net.submit(alice, "the line")
    net.run_until(lambda: "<alice> the line" in bob.lines)
    net.run_until(
        lambda: any(
            line.startswith("-!- connection to server lost; reconnecting in")
            for line in alice.lines
        )
    )
    alice.deaf = False
    net.run_until(lambda: alice.chat.connected and alice.chat.unsent == 0, timeout=60)
    net.run(1)
    ids = sent_ids(net, "the line")
    assert len(ids) >= 2 and len(set(ids)) == 1  # sent again, under the same id
    assert bob.lines.count("<alice> the line") == 1
    history = net.chat_server.rules._rooms["lobby"].history  # noqa: SLF001 - stored once?
    lines = [json.loads(line) for line in history]
    assert [(line["text"], line["id"]) for line in lines] == [("the line", ids[0])]


def test_a_line_resent_to_a_restarted_server_is_shown_once() -> None:
    """The server relayed alice's line and crashed before her acknowledgement got
    out: the restarted server knows nothing, relays the re-sent line again (live or
    as history), and bob's client recognises its line id and does not show it again."""
    net = Net()
    alice, bob = net.client("alice"), net.client("bob")
    net.run_until(lambda: alice.chat.connected and bob.chat.connected)
    alice.deaf = True
    net.submit(alice, "the line")
    net.run_until(lambda: "<alice> the line" in bob.lines)
    net.start_server()  # the crash
    alice.deaf = False
    both = (alice, bob)
    net.run_until(lambda: all("-!- reconnected" in p.lines for p in both), timeout=60)
    net.run_until(lambda: alice.chat.unsent == 0)
    net.submit(alice, "after")
    net.run_until(lambda: "<alice> after" in bob.lines)
    assert len(sent_ids(net, "the line")) >= 2  # relayed by the new server too
    assert [line for line in bob.lines if "<alice>" in line] == [
        "<alice> the line",
        "<alice> after",
    ]


def test_a_repeated_line_id_is_never_shown_twice() -> None:
    """Whatever the server sends, a say, me or msg whose line id was shown already
    (live or as history, under any nick or text) is not shown again; lines with other
    ids are, even with the same text."""
    net = Net()
    alice = net.client("alice")
    net.run_until(lambda: alice.chat.connected)
    (session_id,) = list(net.server._sessions)  # noqa: SLF001 - a server that repeats
    first, second, third = "0000000000000001", "0000000000000002", "0000000000000003"
    for msg in (
        messages.SayOut("lobby", "bob", "hi", first),
        messages.SayOut("lobby", "bob", "hi", first),
        messages.SayOut("lobby", "bob", "hi", first, ts=net.now - 5),
        messages.MeOut("lobby", "bobby", "other text", first),
        messages.SayOut("lobby", "bob", "hi", second),
        messages.PrivateMsgIn("bob", "psst", third),
        messages.PrivateMsgIn("bob", "psst", third),
    ):
        net.server.send(session_id, messages.encode(msg), net.now)
    net.run(1)
    assert [line for line in alice.lines if "bob" in line] == [
        "<bob> hi",
        "<bob> hi",
        "*bob* psst",
    ]


def test_identical_lines_are_told_apart_by_their_ids() -> None:
    """History is de-duplicated by line id, not by text: a line said while alice was
    away is shown even though she saw an identical one before."""
    net = Net()
    net.start_server(history_lines=1)
    alice, bob = net.client("alice"), net.client("bob")
    net.run_until(lambda: alice.chat.connected and bob.chat.connected)
    net.submit(bob, "ok")
    net.run(1)
    alice.cut = True
    net.run(FAST.session_expiry_s + 1)
    net.submit(bob, "ok")  # the history now holds only this one
    alice.cut = False
    net.run_until(lambda: alice.chat.connected, timeout=60)
    net.run(1)
    shown = [line for line in alice.lines if line.endswith("<bob> ok")]
    assert len(shown) == 2 and shown[0] == "<bob> ok" and shown[1].startswith("[")


@pytest.mark.parametrize("pipe", [False, True])
def test_own_lines_in_replayed_history_are_never_shown(pipe: bool) -> None:
    """The room history the server replays (here after /join back to a room) holds
    the user's own lines; they are not shown, in pipe mode (which never shows own
    lines) or in terminal mode (which showed them when typed)."""
    net = Net()
    alice, bob = net.client("alice", pipe=pipe), net.client("bob")
    net.run_until(lambda: alice.chat.connected and bob.chat.connected)
    net.submit(alice, "mine", "/me waves", "/join dev")
    net.run_until(lambda: "-!- alice has joined dev" in alice.lines)
    net.submit(alice, "/part")
    net.run_until(lambda: alice.lines.count("-!- alice has joined lobby") == 2)
    net.run(1)
    own = [line for line in alice.lines if "mine" in line or "waves" in line]
    assert own == ([] if pipe else ["<alice> mine", "* alice waves"])


def test_pipe_finish_waits_for_delivery_then_says_bye() -> None:
    """In pipe mode, finishing on a lossy network waits until every line is delivered in
    order, without echoing them, then exits 0; the others see the lines and then the
    client leave with "(quit)"."""
    net = Net(loss=0.3)
    alice, bob = net.client("alice", pipe=True), net.client("bob")
    net.run_until(lambda: bob.chat.connected)
    net.submit(alice, *[f"line {i}" for i in range(30)])
    alice.chat.finish(net.now)
    net.run_until(lambda: alice.chat.done, timeout=60)
    assert alice.chat.exit_code == 0
    assert said(net) == [f"line {i}" for i in range(30)]
    assert not any(line.startswith("<alice>") for line in alice.lines)  # pipe: not echoed
    net.run_until(lambda: "-!- alice has left lobby (quit)" in bob.lines, timeout=30)
    got = [line for line in bob.lines if line.startswith("<alice>")]
    assert got == [f"<alice> line {i}" for i in range(30)]


def test_pipe_finish_reports_undelivered_lines_and_fails() -> None:
    """In pipe mode, finishing while the server is unreachable gives up with exit
    status 1 and reports each undelivered line as "!!! not delivered: ..."."""
    net = Net()
    alice = net.client("alice", pipe=True)
    net.up = False
    net.submit(alice, "lost 1", "lost 2")
    alice.chat.finish(net.now)
    net.run_until(lambda: alice.chat.done, timeout=client_session.DRAIN_IDLE_TIMEOUT_S + 5)
    assert alice.chat.exit_code == 1
    assert alice.lines[-2:] == ["!!! not delivered: lost 1", "!!! not delivered: lost 2"]


def test_pipe_with_nothing_to_send_ends_at_once() -> None:
    """In pipe mode, finishing with nothing to send ends at once with exit status 0."""
    net = Net()
    alice = net.client("alice", pipe=True)
    alice.chat.finish(net.now)
    assert alice.chat.done and alice.chat.exit_code == 0


def test_outbox_is_bounded_while_offline() -> None:
    """Offline, the outbox holds at most OUTBOX_MAX_LINES lines: one more is refused
    with "!!! not sent, 1000 lines already wait ..." and no further input is
    accepted."""
    net = Net()
    alice = net.client("alice")
    net.up = False
    for i in range(OUTBOX_MAX_LINES):
        alice.chat.submit(f"l{i}", net.now)
    alice.chat.submit("one too many", net.now)
    net.step()
    assert alice.lines[-1].startswith("!!! not sent, 1000 lines already wait")
    assert alice.chat.unsent == OUTBOX_MAX_LINES
    assert not alice.chat.room_for_input()


def test_quit_sends_bye_and_ends() -> None:
    """/quit delivers the lines typed before it and ends; the others then see the client
    leave with "(quit)"."""
    net = Net()
    alice, bob = net.client("alice"), net.client("bob")
    net.run_until(lambda: alice.chat.connected and bob.chat.connected)
    net.run(1)  # the member lists asked for on joining arrive
    net.submit(alice, "last words", "/quit")
    net.run_until(lambda: alice.chat.done)
    net.run(1)
    assert bob.lines[-2:] == ["<alice> last words", "-!- alice has left lobby (quit)"]


def test_quit_while_offline_reports_unsent_lines() -> None:
    """/quit while the server is unreachable ends at once, reporting the waiting line as
    "!!! not sent: ..."."""
    net = Net()
    alice = net.client("alice")
    net.up = False
    net.submit(alice, "pending", "/quit")
    assert alice.chat.done
    assert alice.lines[-1] == "!!! not sent: pending"


def test_who_chunks_are_shown_as_one_line() -> None:
    """A /who answer too big for one message, which the server sends in chunks, is shown
    as a single "Users in lobby" line with every nick, sorted ignoring case."""
    net = Net()
    nicks = [f"user_with_a_long_nick{i:03d}" for i in range(60)]
    peers = [net.client(n) for n in nicks]
    net.run_until(lambda: all(p.chat.connected for p in peers), timeout=60)
    net.run(2)  # the member lists asked for on joining
    net.submit(peers[0], "/who")
    net.run(2)
    who = [line for line in peers[0].lines if line.startswith("-!- Users in lobby:")]
    assert len(who) == 2  # on joining, alone, and now
    assert who[-1].split(": ", 1)[1].split() == sorted(nicks, key=str.casefold)


def test_malformed_server_messages_are_reported_once() -> None:
    """Repeated malformed messages from the server are reported only once."""
    net = Net()
    alice = net.client("alice")
    net.run_until(lambda: alice.chat.connected)
    for session_id in list(net.server._sessions):  # noqa: SLF001 - a hostile server
        for _ in range(3):
            net.server.send(session_id, b'{"t":"say","nick":"x\\u001b[2J"}', net.now)
    net.run(1)
    assert alice.lines.count("!!! ignored a malformed message from the server") == 1


def test_undelivered_for_other_reasons_is_reported() -> None:
    """A server that accepts no more messages (rate limit) makes the core give up:
    the lines are reported as not delivered instead of being re-sent forever."""
    config = ProtocolConfig(keepalive_s=0.5, session_expiry_s=3.0, give_up_s=5.0)
    net = Net(
        config=config, server_config=replace(config, message_rate_per_s=1e-6, message_burst=1)
    )
    alice = net.client("alice", pipe=True)
    net.run_until(lambda: alice.chat.connected)  # hello was the one message allowed
    net.submit(alice, "stuck")
    net.run(config.give_up_s + 2)
    assert "!!! not delivered: stuck" in alice.lines
    assert alice.chat.failures == 1
    assert "stuck" not in said(net)


def said_to(peer: Peer) -> list[str]:
    return [line for line in peer.lines if line.startswith("<")]


@pytest.mark.parametrize("loss", [0.0, 0.2])
def test_lossy_network_keeps_order_and_exactly_once(loss: float) -> None:
    """With or without packet loss, every line reaches the other client exactly once and
    in order."""
    net = Net(loss=loss, seed=7)
    alice, bob = net.client("alice"), net.client("bob")
    net.run_until(lambda: alice.chat.connected and bob.chat.connected, timeout=60)
    lines = [f"n{i}" for i in range(100)]
    net.submit(alice, *lines)
    net.run_until(lambda: alice.chat.unsent == 0, timeout=120)
    # With loss, bob's own session may be younger (a hello unacknowledged for
    # HELLO_ACK_TIMEOUT_S starts a new one), and the server's retransmissions to it
    # slower: wait for the lines, then a little longer for any duplicate.
    net.run_until(lambda: len(said_to(bob)) >= len(lines), timeout=30)
    net.run(2)
    assert [line for line in bob.lines if line.startswith("<alice>")] == [
        f"<alice> {text}" for text in lines
    ]


# --- which server address, and the pump ------------------------------------------------


def test_unanswered_handshake_moves_on_to_the_next_address() -> None:
    """With several server addresses, a handshake not answered within fallback_after_s
    sends the next attempt to the next address, and after the last one round again
    to the first; the client stays connecting meanwhile."""
    net = Net()
    net.up = False
    alice = net.client("alice", addresses=3, fallback_after_s=3.0)
    assert alice.chat.address_index == 0
    seen = []
    for _ in range(4):
        net.run(3.01)
        seen.append(alice.chat.address_index)
    assert seen == [1, 2, 0, 1]
    assert alice.chat.state is State.CONNECTING


def test_session_lost_while_connecting_moves_on_to_the_next_address() -> None:
    """Without a fallback time, an attempt whose session ends before it ever started
    (its handshake unanswered until the session expired) also counts as failed: the
    next attempt goes to the next address."""
    net = Net()
    net.up = False
    alice = net.client("alice", addresses=2)
    net.run_until(lambda: alice.chat.address_index == 1, timeout=FAST.session_expiry_s + 1)
    assert alice.chat.state is State.WAITING


def test_a_session_lost_moves_on_to_the_next_address() -> None:
    """Once connected, a session lost (here: the server went silent until it expired)
    sends the reconnect to the next address: several addresses may be several daemons
    of a cluster, and the one just lost comes round again after the others."""
    net = Net()
    alice = net.client("alice", addresses=2, fallback_after_s=3.0)
    net.run_until(lambda: alice.chat.connected)
    net.up = False
    net.run_until(lambda: alice.chat.state is State.WAITING, timeout=FAST.session_expiry_s + 2)
    assert alice.chat.address_index == 1
    assert alice.lines[-1].startswith(LOST_RECONNECTING)


def test_a_dead_daemon_is_left_for_the_next_with_what_it_had_not_acknowledged() -> None:
    """Two daemons, one address each. alice's daemon dies (its port refuses) just
    after it took "three" and before it acknowledged it: she moves to the other
    daemon, says hello there with the same client id, and sends again, in order and
    with their ids, exactly the lines the dead one had not acknowledged ("three", and
    "four", typed meanwhile); none of those it had acknowledged."""
    net = Net(daemons=2)
    alice = net.client("alice", addresses=2, fallback_after_s=3.0, start=False)
    alice.chat.start(net.now, addresses=2, names=["192.0.2.1:12345", "192.0.2.2:12345"])
    net.run_until(lambda: alice.chat.connected)
    net.submit(alice, "one", "two")
    net.run(1)  # acknowledged by daemon 0
    net.submit(alice, "three")  # daemon 0 receives it; its ack is due 25 ms later
    net.dead.add(0)  # killed -9 before that: its port refuses from now on
    net.submit(alice, "four")
    net.run_until(lambda: alice.chat.connected and alice.chat.unsent == 0, timeout=10)
    assert alice.chat.address_index == 1
    gone = "(nothing is listening on 192.0.2.1:12345 any more; next: 192.0.2.2:12345)"
    assert any(line.startswith(LOST_RECONNECTING) and line.endswith(gone) for line in alice.lines)
    first, second = ([json.loads(p) for p in seen] for seen in net.seen_by)
    first_lines = [(m["text"], m["id"]) for m in first if m["t"] == "say"]
    second_lines = [(m["text"], m["id"]) for m in second if m["t"] == "say"]
    assert [text for text, _ in first_lines] == ["one", "two", "three"]
    assert [text for text, _ in second_lines] == ["three", "four"]
    assert second_lines[0] == first_lines[2]  # the same line id: shown once by receivers
    hello = next(m for m in second if m["t"] == "hello")
    assert hello["client"] == alice.chat.client_id and hello["nick"] == "alice"


def test_the_pump_is_never_re_entered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Handling events never calls back into the pump loop that is handling them: a
    pipe-mode client whose input ended while connected says bye from within the one
    pump loop (the end of input and the bye are one pass, not a nested one)."""
    depth = [0, 0]  # current, deepest
    pump = client_session.ChatClient._pump  # noqa: SLF001 - observed, not replaced

    def counted(self: client_session.ChatClient, now: float) -> None:
        depth[0] += 1
        depth[1] = max(depth)
        try:
            pump(self, now)
        finally:
            depth[0] -= 1

    monkeypatch.setattr(client_session.ChatClient, "_pump", counted)
    net = Net()
    alice, bob = net.client("alice", pipe=True), net.client("bob")
    net.run_until(lambda: alice.chat.connected and bob.chat.connected)
    net.run(1)  # bob's member list, asked for on joining, arrives
    net.submit(alice, "last words")
    alice.chat.finish(net.now)
    net.run_until(lambda: alice.chat.done)
    net.run(1)
    assert alice.chat.exit_code == 0
    assert bob.lines[-2:] == ["<alice> last words", "-!- alice has left lobby (quit)"]
    assert depth[1] == 1


def test_the_member_list_is_shown_on_joining_a_room() -> None:
    """On joining (hello, /join, /part) a terminal client asks who is there and shows
    it; a pipe-mode client neither asks nor shows it (scripts see what they saw)."""
    net = Net()
    alice = net.client("alice")
    net.run_until(lambda: alice.chat.connected)
    bob = net.client("bob")
    net.run_until(lambda: bob.chat.connected)
    net.run(1)
    assert "-!- Users in lobby: alice" in alice.lines
    assert bob.lines[bob.lines.index("-!- bob has joined lobby") + 1] == (
        "-!- Users in lobby: alice bob"
    )
    asked = len(net.server_seen)
    script = net.client("script", pipe=True)
    net.run_until(lambda: script.chat.connected)
    net.run(1)
    assert not any(line.startswith("-!- Users") for line in script.lines)
    assert {"t": "who"} not in [json.loads(p) for p in net.server_seen[asked:]]
    net.submit(bob, "/join dev")
    net.run(1)
    assert bob.lines[-1] == "-!- Users in dev: bob"
    net.submit(bob, "/part")
    net.run(1)
    assert bob.lines[-1] == "-!- Users in lobby: alice bob script"


def test_the_roster_follows_the_room_for_completion() -> None:
    """The client knows its room's nicks (for Tab): from the member list, joins, parts
    and nick changes; who spoke last comes first."""
    net = Net()
    alice, bob = net.client("alice"), net.client("bob")
    net.run_until(lambda: alice.chat.connected and bob.chat.connected)
    net.run(1)
    assert alice.chat.roster.nicks() == ["alice", "bob"]
    carol = net.client("carol")
    net.run_until(lambda: carol.chat.connected)
    net.submit(carol, "hi")
    net.run(1)
    assert alice.chat.roster.nicks() == ["carol", "alice", "bob"]
    net.submit(bob, "/nick Robert")
    net.submit(carol, "/join dev")
    net.run(1)
    assert alice.chat.roster.nicks() == ["alice", "Robert"]
    assert carol.chat.roster.nicks() == ["carol"]


def test_a_msg_to_nobody_shows_only_the_error() -> None:
    """/msg to a nick nobody holds shows the server's error and no "-> *nobody*" echo;
    a /msg that arrives is echoed once the server took it, in order."""
    net = Net()
    alice, bob = net.client("alice"), net.client("bob")
    net.run_until(lambda: alice.chat.connected and bob.chat.connected)
    net.run(1)
    shown = len(alice.lines)
    for line in ("/msg nobody hi", "/msg bob psst", "/msg ghost boo", "/msg bob again"):
        alice.chat.submit(line, net.now)
    alice.collect(net.now)
    assert alice.lines[shown:] == []  # nothing before the server answered
    net.run(1)
    assert alice.lines[shown:] == [
        "!!! no such nick: nobody",
        "!!! no such nick: ghost",
        "-> *bob* psst",
        "-> *bob* again",
    ]
    assert bob.lines[-2:] == ["*alice* psst", "*alice* again"]


def test_an_echo_waits_for_an_error_in_a_later_datagram() -> None:
    """The acknowledgement of a msg and the server's error may arrive in two datagrams
    (room-keys: acks travel with sealed room lines): an error within ECHO_GRACE_S of
    the acknowledgement still cancels the echo; the echoes keep their order, and one
    waits for those before it."""
    waiting = echoes.PrivateEchoes()
    for seq, to in enumerate(["nobody", "bob", "carol"]):
        waiting.add(seq, OwnLine("alice", "hi", to=to))
    waiting.acknowledged(0, 10.0)
    waiting.acknowledged(2, 10.0)
    assert waiting.next_deadline() == 10.0 + echoes.ECHO_GRACE_S
    assert waiting.due(10.0 + echoes.ECHO_GRACE_S / 2) == []
    waiting.refused("no such nick: nobody")  # the error, in a datagram of its own
    assert waiting.next_deadline() is None  # bob's msg is not acknowledged yet
    assert waiting.due(11.0) == []  # carol's waits for bob's
    waiting.acknowledged(1, 11.0)
    assert [line.to for line in waiting.due(11.0 + echoes.ECHO_GRACE_S)] == ["bob", "carol"]
    waiting.add(3, OwnLine("alice", "lost", to="bob"))
    waiting.forget(3)  # reported as not delivered instead
    assert waiting.next_deadline() is None and waiting.due(99.0) == []
    for seq, to in enumerate(["bob", "ghost", "carol"], start=4):
        waiting.add(seq, OwnLine("alice", "hi", to=to))
    waiting.refused("no such nick: ghost")  # the one it names, not the oldest
    waiting.refused("gone")  # names none: the oldest
    for seq in (4, 5, 6):
        waiting.acknowledged(seq, 20.0)
    assert [line.to for line in waiting.due(21.0)] == ["carol"]


def test_a_long_line_arrives_as_several_lines_in_order_once() -> None:
    """A line over 400 bytes goes out as several lines, each with its own line id,
    and the room sees them once each, in order, even across a reconnect that resends
    them; the sender sees them as typed pieces."""
    net = Net()
    alice, bob = net.client("alice"), net.client("bob")
    net.run_until(lambda: alice.chat.connected and bob.chat.connected)
    net.run(1)
    words = " ".join(f"w{i:03d}" for i in range(200))
    alice.cut = True
    net.submit(alice, words)
    net.run(FAST.session_expiry_s + 1)
    alice.cut = False
    net.run_until(lambda: alice.chat.connected and alice.chat.unsent == 0, timeout=60)
    net.run(1)
    pieces = [line.removeprefix("<alice> ") for line in bob.lines if line.startswith("<alice>")]
    assert len(pieces) == 3 and " ".join(pieces) == words
    assert said(net) == pieces
    assert len({i for p in pieces for i in sent_ids(net, p)}) == 3
    assert [line for line in alice.lines if line.startswith("<alice>")] == [
        f"<alice> {piece}" for piece in pieces
    ]


def test_a_split_line_that_does_not_fit_the_outbox_is_refused_whole() -> None:
    """Pieces of one line are queued all or none: never half a line."""
    net = Net()
    alice = net.client("alice", pipe=True)
    net.up = False
    for i in range(OUTBOX_MAX_LINES - 2):
        alice.chat.submit(f"line {i}", net.now)
    alice.chat.submit(" ".join(["word"] * 200), net.now)  # 3 pieces, 2 places left
    net.step()
    assert alice.lines[-1].startswith("!!! not sent, 1000 lines already wait")
    assert alice.chat.unsent == OUTBOX_MAX_LINES - 2
