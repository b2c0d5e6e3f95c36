"""The whole chat server (udpchat.chat.server.ChatServer) on the in-memory lossy
network with a fake clock: real protocol cores, real rules, no Twisted, no sockets.

These are the daemon's behaviours; tests/test_daemon_udp.py checks the thin Twisted
adapter around them and tests/test_daemon.py the real `twistd` process.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from client_net import Net
from cryptography.fernet import Fernet
from sim import ChatWorld, LossyNetwork

from udpchat.chat.server import (
    HELLO_DEADLINE_S,
    REFUSAL_LOG_MAX_LINES,
    SHUTDOWN_LINGER_S,
    ChatServer,
    LogLimit,
    ServerSettings,
    sessions_for,
)
from udpchat.core import events
from udpchat.core.limits import ProtocolConfig

PSK = Fernet.generate_key()


def world(network: LossyNetwork | None = None, **settings: Any) -> ChatWorld:
    return ChatWorld(ChatServer(PSK, ServerSettings(**settings)), network)


def join(w: ChatWorld, nick: str, port: int, hello: bool = True) -> Any:
    addr = ("127.0.0.1", port)
    hi = {"t": "hello", "nick": nick, "room": "lobby", "client": f"{port:016x}"}
    w.add_client(addr, PSK, hi if hello else None)
    w.settle()
    return addr


def kinds(w: ChatWorld) -> list[str]:
    return [entry.kind for entry in w.log]


def test_a_taken_nick_is_refused_across_the_whole_stack() -> None:
    """A second member asking for a nick in use (any case) gets error nick-taken."""
    w = world()
    join(w, "alice", 1001)
    bob = join(w, "ALICE", 1002)
    assert w.inbox[bob][-1]["t"] == "error"
    assert w.inbox[bob][-1]["code"] == "nick-taken"


def test_lines_reach_the_room_in_order_and_history_is_bounded() -> None:
    """Lines go to the others in the sender's order; a late joiner gets only the last
    history_lines of them, marked as history."""
    w = world(history_lines=3)
    alice = join(w, "alice", 1001)
    bob = join(w, "bob", 1002)
    for i in range(5):
        w.send(alice, t="say", text=f"line {i}", id=f"{i:016x}")
    w.settle()
    assert [m["text"] for m in w.inbox[bob] if m["t"] == "say"] == [f"line {i}" for i in range(5)]
    carol = join(w, "carol", 1003)
    history = [m for m in w.inbox[carol] if m["t"] == "say"]
    assert [m["text"] for m in history] == ["line 2", "line 3", "line 4"]
    assert all(m["history"] is True for m in history)
    assert not [m for m in w.inbox[alice] if m["t"] == "say"], "never echoed"


def test_every_line_arrives_once_in_order_over_a_lossy_network() -> None:
    """With 20% loss, duplication and reordering between every member and the
    server, each member sees every other member's lines exactly once, in order."""
    w = world(LossyNetwork(seed=7, loss=0.2, duplicate=0.05, delay_s=0.01, jitter_s=0.03))
    members = [join(w, nick, 1001 + i) for i, nick in enumerate(("alice", "bob", "carol"))]
    w.run(lambda: all(any(m["t"] == "welcome" for m in w.inbox[a]) for a in members), 30)
    for i in range(30):
        for n, addr in enumerate(members):
            w.send(addr, t="say", text=f"{n}:{i}", id=f"{n:08x}{i:08x}")
    expected = {n: [f"{n}:{i}" for i in range(30)] for n in range(3)}

    def seen(addr: Any, n: int) -> list[str]:
        return [m["text"] for m in w.inbox[addr] if m["t"] == "say" and m["text"][0] == str(n)]

    def all_seen() -> bool:
        return all(
            seen(a, n) == expected[n]
            for n, sender in enumerate(members)
            for a in members
            if a != sender
        )

    w.run(all_seen, 120)
    for n, addr in enumerate(members):
        assert seen(addr, n) == [], "never echoed"


def test_private_message_to_an_absent_nick_is_an_error_to_the_sender() -> None:
    """/msg to nobody is an error back, not a silent drop; /msg to someone reaches
    only them."""
    w = world()
    alice, bob, carol = join(w, "alice", 1001), join(w, "bob", 1002), join(w, "carol", 1003)
    w.send(alice, t="msg", to="nobody", text="hi", id="000000000000000a")
    w.settle()
    assert w.inbox[alice][-1]["code"] == "no-such-nick"
    w.send(alice, t="msg", to="bob", text="psst", id="000000000000000b")
    w.settle()
    psst = {"t": "msg", "from": "alice", "text": "psst", "id": "000000000000000b"}
    assert w.inbox[bob][-1] == psst
    assert not [m for m in w.inbox[carol] if m["t"] == "msg"]


def test_a_silent_member_times_out_and_the_room_is_told() -> None:
    """A member that falls silent is dropped after idle_timeout; the others see a
    part notice with reason timeout and the log says who and from where."""
    w = world(idle_timeout_s=15.0)
    alice = join(w, "alice", 1001)
    bob = join(w, "bob", 1002)
    w.cut.add(alice)
    w.advance(20.0)
    assert {"t": "part", "room": "lobby", "nick": "alice", "reason": "timeout"} in w.inbox[bob]
    [timeout] = [e for e in w.log if e.kind == "timeout"]
    assert (timeout.nick, timeout.addr) == ("alice", alice)


def test_a_full_server_says_so_and_a_takeover_still_gets_in() -> None:
    """Issue 10: on a full server a key holder's handshake completes and its hello is
    answered "server-full", with the limit in the text (it used to get silence and
    time out like at a dead server); a member coming back with its client id (a
    restarted client) still takes its own place at once."""
    w = world(max_members=2)
    join(w, "alice", 1001)
    join(w, "bob", 1002)
    third = join(w, "carol", 1003)
    assert w.inbox[third][-1]["t"] == "error"
    assert w.inbox[third][-1]["code"] == "server-full"
    assert "(2 members)" in w.inbox[third][-1]["text"]
    assert "welcome" not in [m["t"] for m in w.inbox[third]]
    again = ("127.0.0.1", 2001)  # alice restarted: a new session, her client id
    hi = {"t": "hello", "nick": "alice", "room": "lobby", "client": f"{1001:016x}"}
    w.add_client(again, PSK, hi)
    w.settle()
    assert w.inbox[again][0]["t"] == "welcome"


def test_beyond_the_spare_sessions_a_handshake_gets_silence_and_one_log_entry() -> None:
    """The core holds a few sessions beyond max_members (sessions_for), so that
    newcomers can be told the server is full; beyond those, an authentic handshake
    is answered with nothing at all, however often it is retried, and the refusal is
    logged once, not once per datagram."""
    w = world(max_members=1)
    join(w, "alice", 1001)
    spare = [join(w, f"spare{i}", 1100 + i, hello=False) for i in range(sessions_for(1) - 1)]
    assert all(w.clients[addr].connected for addr in spare)
    second = join(w, "second", 1002)
    w.advance(5.0)  # within HELLO_DEADLINE_S: the spare sessions still hold their slots
    assert not w.clients[second].connected
    assert all(addr != second for _, addr in w.written)
    assert kinds(w).count("server-full") == 1
    assert w.server.take_drops()["server-full"] >= 3, "every retry is counted"


def test_refused_addresses_are_counted_and_logged_once_per_address() -> None:
    """A datagram from an address the allow/deny lists refuse is not answered; each
    address is logged once a minute, and at most a few lines a minute in all,
    because source addresses cost nothing to forge."""
    w = world()
    for _ in range(3):
        w.server.address_refused(("127.0.0.99", 4000), w.now)
    for i in range(500):
        w.server.address_refused((f"127.0.{i // 200}.{i % 200 + 1}", 4000), w.now)
    w.flush()
    refusals = [e for e in w.log if e.kind == "address-refused"]
    assert refusals[0].addr == ("127.0.0.99", 4000)
    assert len(refusals) == REFUSAL_LOG_MAX_LINES
    assert w.server.take_drops() == {"address-refused": 503}
    assert w.server.take_suppressed() == {"address-refused": 503 - REFUSAL_LOG_MAX_LINES}
    assert w.written == []
    w.advance(61.0)
    w.server.address_refused(("127.0.0.99", 4000), w.now)
    assert [e.kind for e in w.server.take_log()] == ["address-refused"], "a minute later"


def test_rejected_datagrams_are_counted_by_reason_not_logged() -> None:
    """Garbage is dropped silently and counted; take_drops() gives the counts since
    the last call."""
    w = world()
    for i in range(100):
        w.datagram(bytes([i % 5]) * (i + 1), ("127.0.0.1", 2000 + i))
    assert w.written == [] and w.log == []
    drops = w.server.take_drops()
    assert sum(drops.values()) == 100
    assert w.server.take_drops() == {}, "nothing new"


def test_shutdown_tells_every_member_and_closes_their_sessions() -> None:
    """On shutdown every member gets a shutdown message and, once it acknowledged
    it, its session is closed; `done` then says the server has finished."""
    w = world()
    alice, bob = join(w, "alice", 1001), join(w, "bob", 1002)
    w.server.shutdown(w.now)
    w.run(lambda: w.server.done, SHUTDOWN_LINGER_S / 2)  # acknowledged: no need to wait
    w.settle()
    for addr in (alice, bob):
        assert w.inbox[addr][-1]["t"] == "shutdown"
        ended = [e for e in w.client_events[addr] if isinstance(e, events.SessionEnded)]
        assert [e.reason for e in ended] == ["closed"]
    assert not [e for e in w.log if e.kind in ("leave", "timeout")], "no notices after shutdown"


def test_shutdown_waits_at_most_the_linger_time_for_silent_members() -> None:
    """A member that never acknowledges the notice delays shutdown by at most
    SHUTDOWN_LINGER_S; then its session is closed anyway."""
    w = world()
    alice = join(w, "alice", 1001)
    w.cut.add(alice)
    start = w.now
    w.server.shutdown(w.now)
    w.run(lambda: w.server.done, SHUTDOWN_LINGER_S + 0.5)
    assert start + SHUTDOWN_LINGER_S <= w.now <= start + SHUTDOWN_LINGER_S + 0.01
    w.flush()
    assert len(w.server.endpoint) == 0, "every session closed"


def test_a_session_that_never_says_hello_is_closed_and_frees_its_slot() -> None:
    """A key holder that completes handshakes but never says hello cannot hold member
    slots: its session is closed HELLO_DEADLINE_S after the handshake."""
    w = world(max_members=1)
    squatter = join(w, "unused", 1001, hello=False)
    assert w.clients[squatter].connected
    w.advance(HELLO_DEADLINE_S + 1)
    ended = [e for e in w.client_events[squatter] if isinstance(e, events.SessionEnded)]
    assert [e.reason for e in ended] == ["closed"]
    member = join(w, "member", 1002)
    assert w.inbox[member][0] == {"t": "welcome", "nick": "member", "room": "lobby"}


def test_shutdown_leaves_no_timer_behind() -> None:
    """Once shutdown has finished, nothing of the chat is still scheduled (hello
    deadlines included)."""
    w = world()
    join(w, "alice", 1001)
    join(w, "nobody-yet", 1002, hello=False)
    w.server.shutdown(w.now)
    w.run(lambda: w.server.done, 2)
    assert w.server.get_timer() is None


def test_a_member_that_moves_is_logged_with_both_addresses() -> None:
    """When a member's datagrams start coming from a new address (NAT rebinding),
    replies follow it and the log names the member, the old and the new address."""
    w = world()
    alice = join(w, "alice", 1001)
    bob = join(w, "bob", 1002)
    moved = ("127.0.0.1", 2001)
    client = w.clients.pop(alice)
    w.clients[moved], w.inbox[moved], w.client_events[moved] = client, [], []
    w.send(moved, t="say", text="from my new port", id="00000000000000aa")
    w.settle()
    w.send(bob, t="say", text="welcome back", id="00000000000000bb")
    w.settle()
    assert [m["text"] for m in w.inbox[moved] if m["t"] == "say"] == ["welcome back"]
    [roamed] = [e for e in w.log if e.kind == "roamed"]
    assert (roamed.nick, roamed.old_addr, roamed.addr) == ("alice", alice, moved)


def roam_to(w: ChatWorld, old: Any, new: Any) -> Any:
    """The client at `old` sends its next datagram from `new` (NAT rebinding)."""
    w.clients[new] = w.clients.pop(old)
    w.inbox[new], w.client_events[new] = w.inbox.pop(old), w.client_events.pop(old)
    w.send(new, t="who")
    w.settle()
    return new


def test_a_member_who_joins_renames_moves_and_leaves_gets_every_line() -> None:
    """The limits are for floods: one member's ordinary session (join, a rename, a
    room move and back, a new address, bye) is logged line by line."""
    w = world()
    alice = join(w, "alice", 1001)
    w.send(alice, t="nick", nick="alicia")
    w.settle()
    w.send(alice, t="join", room="dev")
    w.settle()
    w.send(alice, t="part")
    w.settle()
    alice = roam_to(w, alice, ("127.0.0.1", 2001))
    w.send(alice, t="bye")
    w.settle()
    assert kinds(w) == ["join", "rename", "move", "move", "roamed", "leave"]
    assert w.server.take_suppressed() == {}


def test_one_session_repeating_a_logged_thing_gets_a_burst_then_one_line_per_interval() -> None:
    """A member renaming in a loop gets session_log_burst lines, then one per
    session_log_interval_s; the rest are counted by kind for the summary. Its leave
    line, which comes once per session, is still written."""
    w = world(session_log_burst=3, session_log_interval_s=10.0)
    alice = join(w, "alice", 1001)
    for i in range(50):
        w.send(alice, t="nick", nick=f"alice{i}")
    w.settle()
    assert kinds(w) == ["join"] + ["rename"] * 3
    assert w.server.take_suppressed() == {"rename": 47}
    w.advance(10.0)
    for i in range(5):
        w.send(alice, t="nick", nick=f"again{i}")
    w.settle()
    assert kinds(w).count("rename") == 4, "one more after the interval"
    assert w.server.take_suppressed() == {"rename": 4}
    w.send(alice, t="bye")
    w.settle()
    assert kinds(w)[-1] == "leave"


def test_roaming_back_and_forth_is_limited_per_session_not_for_the_others() -> None:
    """A member alternating between two source ports moves on every datagram; its
    lines stop after the burst (its other lines too), while another member's still
    appear."""
    w = world(session_log_burst=5)
    alice, bob = join(w, "alice", 1001), join(w, "bob", 1002)
    ports = [("127.0.0.1", 2001), alice]
    for i in range(40):
        alice = roam_to(w, alice, ports[i % 2])
    assert kinds(w).count("roamed") == 5
    assert w.server.take_suppressed() == {"roamed": 35}
    roam_to(w, bob, ("127.0.0.1", 3002))
    w.send(alice, t="nick", nick="alicia")
    w.settle()
    assert [(e.kind, e.nick) for e in w.log[-1:]] == [("roamed", "bob")]
    assert w.server.take_suppressed() == {"rename": 1}


def test_the_lines_of_all_sessions_together_are_limited_per_minute() -> None:
    """However many sessions share a flood, at most log_lines_per_minute lines are
    written in any minute (joins included); a minute later lines appear again."""
    w = world(log_lines_per_minute=8)
    members = [join(w, f"m{i}", 1001 + i) for i in range(4)]
    for n in range(3):
        for i, addr in enumerate(members):
            w.send(addr, t="nick", nick=f"m{i}x{n}")
    w.settle()
    assert kinds(w) == ["join"] * 4 + ["rename"] * 4
    assert w.server.take_suppressed() == {"rename": 8}
    w.advance(60.0)
    w.send(members[0], t="nick", nick="back")
    w.settle()
    assert kinds(w)[-1] == "rename"
    assert w.server.take_suppressed() == {}


def test_refused_hellos_are_limited_per_session() -> None:
    """A session asking again and again for a nick in use is refused every time, but
    logged only for the first few."""
    w = world(session_log_burst=2)
    join(w, "alice", 1001)
    bob = join(w, "alice", 1002)
    for _ in range(20):
        w.send(bob, t="hello", nick="alice", room="lobby", client="00000000000003ea")
    w.settle()
    assert sum(m.get("code") == "nick-taken" for m in w.inbox[bob]) == 21
    assert kinds(w) == ["join", "refused", "refused"]
    assert w.server.take_suppressed() == {"refused": 19}


def test_the_log_limit_remembers_few_keys_and_keeps_the_flooding_one() -> None:
    """Memory is bounded by max_keys; the key forgotten is the one least recently
    seen, so a key still flooding keeps its empty bucket while others come and go."""
    limit = LogLimit(burst=2, interval_s=10.0, max_lines=100, window_s=60.0, max_keys=2)
    now = 1000.0
    assert [limit.allow("flood", "rename", now) for _ in range(3)] == [True, True, False]
    for i in range(10):
        assert limit.allow(f"quiet{i}", "join", now)
        assert not limit.allow("flood", "rename", now)
    assert len(limit._buckets) == 2
    assert limit.take_suppressed() == {"rename": 11}
    assert limit.allow("flood", "rename", now + 10.0), "one more per interval"


# --- flow control: nobody is pushed out because others talk fast (issue 9, finding 2) ---


def test_two_fast_talkers_wait_for_the_room_and_push_nobody_out() -> None:
    """Two members say 90 lines a second each for 5 s, more than a client accepts
    (100 messages/s). Before, the daemon closed the third member when its send queue
    filled, and it never saw most of the lines (the server's queue is shortened here
    so that this happens in seconds, as it did in 30 s with the default). Now the room
    goes at 100 broadcasts a second and the talkers are paused, not acknowledged, so
    their clients hold their lines and send them again: every member stays, and sees
    every line once, in order; no talker is told a line failed."""
    fast = ProtocolConfig(keepalive_s=1.0, sealed_ack_delay_s=0.05)
    net = Net(config=fast, server_config=replace(fast, send_queue_max=50))
    alice, bob, carol = net.client("alice"), net.client("bob"), net.client("carol")
    net.run_until(lambda: all(p.chat.room_keys_active for p in (alice, bob, carol)), 60)
    said = {"alice": [f"a{i}" for i in range(450)], "bob": [f"b{i}" for i in range(450)]}
    for tick in range(50):  # 9 lines each per 0.1 s
        for peer in (alice, bob):
            net.submit(peer, *said[peer.chat.nick][tick * 9 : tick * 9 + 9])
        net.run(0.1)
    net.run_until(
        lambda: sum(line.startswith(("<alice>", "<bob>")) for line in carol.lines) >= 900, 120
    )
    assert [line for line in carol.lines if line.startswith("<alice>")] == [
        f"<alice> {text}" for text in said["alice"]
    ]
    assert [line for line in carol.lines if line.startswith("<bob>")] == [
        f"<bob> {text}" for text in said["bob"]
    ]
    for peer in (alice, bob, carol):
        assert peer.chat.failures == 0
        assert not [line for line in peer.lines if line.startswith("!!!") or "reconnect" in line]
    assert not [e for e in net.chat_server.take_log() if e.kind == "queue-full"]


def test_a_member_that_acknowledges_nothing_is_dropped_and_the_room_sees_it_time_out() -> None:
    """A member whose every incoming datagram is lost (it acknowledges nothing) while
    the room talks is closed once its queue is full: the others see it leave with
    reason "timeout", and the log says how many messages it never acknowledged."""
    fast = ProtocolConfig(keepalive_s=1.0, sealed_ack_delay_s=0.05)
    net = Net(config=fast, server_config=replace(fast, send_queue_max=20))
    alice, carol = net.client("alice"), net.client("carol")
    net.run_until(lambda: alice.chat.room_keys_active and carol.chat.room_keys_active, 60)
    carol.deaf = True
    log = []
    for tick in range(40):
        net.submit(alice, *[f"line {tick}.{i}" for i in range(5)])
        net.run(0.1)
        log += net.chat_server.take_log()
        if any(entry.kind == "queue-full" for entry in log):
            break
    [full] = [entry for entry in log if entry.kind == "queue-full"]
    assert full.nick == "carol" and int(full.detail or 0) >= 20 + 64
    net.run(1)
    assert "-!- carol has left lobby (timeout)" in alice.lines
