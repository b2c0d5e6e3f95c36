"""Clocks (PROTOCOL.md 2.7 and 4.11): timers run on monotonic time, handshakes carry
Unix time, and a client whose clock differs from the server's is told so and still
gets in.

The core tests give each endpoint its own system clock with set_wall_clock (the sim
passes monotonic `now`); the daemon test steps the real daemon's system clock with
libfaketime while its monotonic clock runs on.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from daemon import Daemon
from pipe_client import PipeClient
from sim import START, LossyNetwork, Pair, received
from test_daemon_udp import World

from udpchat.client.chatclient import clock_skew_text
from udpchat.core import events
from udpchat.core.endpoint import ClientEndpoint, ServerEndpoint
from udpchat.core.handshake import CLOCK_PROBE_OFFSETS
from udpchat.core.limits import ProtocolConfig

MINUTES = 60.0
HOURS = 3600.0


def make_pair(config: ProtocolConfig = ProtocolConfig(), seed: int = 7, **network: Any) -> Pair:
    psk = Fernet.generate_key()
    net = LossyNetwork(seed=seed, **network)
    return Pair(ServerEndpoint(psk, config), ClientEndpoint(psk, config), net)


def step_clock(endpoint: ServerEndpoint | ClientEndpoint, now: float, by: float) -> None:
    """Step `endpoint`'s system clock by `by` seconds at monotonic `now`."""
    endpoint.set_wall_clock(endpoint.clock.local(now) + by, now)


def chat_for(pair: Pair, seconds: float, every_s: float = 2.0) -> list[bytes]:
    """Both sides say something every `every_s` for `seconds`; what arrived."""
    sid = pair.client.session_id
    assert sid is not None
    said: list[bytes] = []
    end = pair.now + seconds
    while pair.now < end:
        text = f"line {len(said)}".encode()
        pair.client.send(text, pair.now)
        pair.server.send(sid, text, pair.now)
        said.append(text)
        until = pair.now + every_s
        # (the next thing to happen may be a keepalive, later than `until`)
        pair.run(lambda until=until: pair.now >= until, every_s + 15)  # type: ignore[misc]
    pair.run(lambda: pair.client.idle and pair.server.is_idle(sid), 10)
    assert received(pair.server_events)[-len(said) :] == said
    assert received(pair.client_events)[-len(said) :] == said
    return said


def ended(pair: Pair) -> list[events.Event]:
    return [
        e for e in pair.server_events + pair.client_events if isinstance(e, events.SessionEnded)
    ]


@pytest.mark.parametrize("by", [10 * MINUTES, -10 * MINUTES, 2 * HOURS, -2 * HOURS])
def test_a_step_of_the_servers_clock_moves_no_timer(by: float) -> None:
    """Sessions, retransmissions and keepalives run on monotonic time: a step of the
    server's system clock by minutes or hours, either way, expires nothing and loses
    nothing, across the keepalive interval and the session expiry. (With `now` as
    Unix time, +10 min expired every session at once and -10 min froze every timer.)
    The next rekey finds the clocks 10 min apart: the client measures that and
    stamps its handshakes in the server's time."""
    config = ProtocolConfig(rekey_after_s=40.0)
    pair = make_pair(config, delay_s=0.01)
    pair.connect()
    step_clock(pair.server, pair.now, by)
    chat_for(pair, 70.0)  # past keepalive_s, session_expiry_s and a rekey
    assert ended(pair) == []
    rekeys = [e for e in pair.server_events if isinstance(e, events.SessionRekeyed)]
    assert rekeys, "a rekey completed with the clocks apart"
    skews = [e for e in pair.client_events if isinstance(e, events.ClockSkew)]
    assert len(skews) == 1 and abs(skews[0].seconds - by) <= 2


def test_rate_limits_and_caches_do_not_notice_a_step() -> None:
    """The handshake rate limit and the cookie budget refill on monotonic time: with
    the server's clock stepped back 10 min (which froze the token buckets before),
    handshakes keep being answered at the configured rate."""
    config = ProtocolConfig(handshake_rate_per_s=1.0, handshake_burst=2)
    psk = Fernet.generate_key()
    server = ServerEndpoint(psk, config)
    now = START
    answered = 0
    for i in range(10):
        if i == 2:
            step_clock(server, now, -10 * MINUTES)
        client = ClientEndpoint(psk, config)
        client.set_wall_clock(server.clock.local(now), now)  # agree with the server
        client.connect(now)
        for data in client.datagrams_to_send(now):
            server.receive_datagram(data, ("127.0.0.2", 40000), now)
        answered += len(server.datagrams_to_send(now))
        now += 1.0  # the limit refills one handshake a second
    assert answered == 10
    assert server.stats["rate-limited"] == 0


def test_a_message_1_seen_before_a_backward_step_is_still_a_replay() -> None:
    """The replay cache remembers a message 1 while its timestamp could still pass for
    fresh: stepped back, the server's clock makes old message 1s fresh again for that
    much longer, and the cache keeps them that much longer."""
    psk = Fernet.generate_key()
    server = ServerEndpoint(psk)
    client = ClientEndpoint(psk)
    now = START
    client.connect(now)
    (message_1,) = client.datagrams_to_send(now)
    server.receive_datagram(message_1, ("127.0.0.2", 40000), now)
    assert server.datagrams_to_send(now), "answered once"
    now += 95.0  # the cache's 90 s are over
    server.handle_timer(now)
    step_clock(server, now, -100.0)  # the token is 95 - 100 = -5 s old again: fresh
    server.receive_datagram(message_1, ("127.0.0.3", 40001), now)
    assert server.datagrams_to_send(now) == []
    assert server.stats["replayed-handshake"] == 1


@pytest.mark.parametrize(
    "skew",
    [-45.0, 45.0, -7 * MINUTES, 50 * MINUTES, -5.5 * HOURS, 9 * HOURS, -13.75 * HOURS],
)
def test_a_client_whose_clock_is_off_is_told_and_gets_in(skew: float) -> None:
    """A client `skew` seconds off the server's clock (ahead when positive): its
    message 1s are stale or from the future for the server, which stays silent as
    for anyone. After two unanswered message 1s the client sends the same message 1
    stamped at other times (PROTOCOL.md 4.11); the server answers the one that fits;
    message 2 tells the client the difference. Within the handshake's third retry it
    is connected and has a ClockSkew event to show; its rekeys need no probe."""
    config = ProtocolConfig(rekey_after_s=30.0)
    pair = make_pair(config)
    step_clock(pair.client, pair.now, skew)
    started = pair.now
    pair.connect()
    assert pair.now - started < 4.0, "connected right after the probes"
    skews = [e for e in pair.client_events if isinstance(e, events.ClockSkew)]
    assert len(skews) == 1 and abs(skews[0].seconds + skew) <= 2  # the server's minus ours
    sent = len(pair.network.sent)
    chat_for(pair, 40.0)
    assert any(isinstance(e, events.SessionRekeyed) for e in pair.server_events)
    assert len(pair.network.sent) - sent < 100, "the rekey needed no probes"


def test_a_client_that_agrees_with_the_server_sends_no_probe() -> None:
    pair = make_pair()
    pair.connect()
    assert len(pair.network.sent) <= 4  # message 1, message 2, a confirmation, an ack
    assert not any(isinstance(e, events.ClockSkew) for e in pair.client_events)


def test_probes_go_out_once_until_a_handshake_completes() -> None:
    """Nobody answers (no server, or no clock within 14 h of ours): one round of
    probes, then plain retries, however long the client keeps trying."""
    psk = Fernet.generate_key()
    client = ClientEndpoint(psk)
    now = START
    client.connect(now)
    sent = []
    while now < START + 120:
        client.handle_timer(now)
        sent.append(len(client.datagrams_to_send(now)))
        now += 0.5
    assert sum(sent) == sum(1 for n in sent if n) + len(CLOCK_PROBE_OFFSETS)
    client.connect(now)  # a new session (as after a reconnect): still no new probes
    for _ in range(40):
        client.handle_timer(now)
        assert len(client.datagrams_to_send(now)) <= 1
        now += 0.5


def test_probes_cover_a_day_of_time_zones_and_the_hour_around_us() -> None:
    """Which clock differences probes find: every second within an hour either way,
    and whole quarters of an hour to 14 h (a clock set to local time as if it were
    UTC), within the responder's window of -60..+30 s around each probe."""

    def found(difference: float) -> bool:
        # A probe stamped ours + offset is fresh for a server whose clock is ours +
        # difference when difference - 30 < offset <= difference + 60.
        return any(difference - 30 < o <= difference + 60 for o in (0.0, *CLOCK_PROBE_OFFSETS))

    assert all(found(d) for d in range(-3600, 3601))
    assert all(found(q * 900 + d) for q in range(-56, 57) for d in (-50, 0, 25))
    assert not found(15 * HOURS)
    assert all(isinstance(o, float) for o in CLOCK_PROBE_OFFSETS)
    assert len(CLOCK_PROBE_OFFSETS) < 200  # about 33 KB, once


def test_the_notice_says_how_far_and_which_way() -> None:
    assert clock_skew_text(-45.2).startswith(
        "your clock differs from the server's by about 45 s (yours is ahead of it)"
    )
    assert "about 7 min (yours is behind it)" in clock_skew_text(7 * MINUTES + 3)
    assert "about 5.5 h" in clock_skew_text(-5.5 * HOURS)


def test_the_daemon_adapter_keeps_members_and_dates_history_by_the_system_clock() -> None:
    """The adapter gives the core monotonic time and the system clock separately:
    the system clock stepped 10 min forward keeps every member through the idle
    timeout, and the history shows the time by the new clock; stepped back, a
    newcomer (its clock 10 min ahead now) is told and gets in."""
    world = World(idle_timeout=15.0)
    alice = world.join("alice", 1001)
    bob = world.join("bob", 1002)
    world.wall_step = 10 * MINUTES
    world.advance(20.0)
    world.say(alice, t="say", text="still here", id="00000000000000a1")
    assert any(m.get("text") == "still here" for m in world.inbox[bob])
    world.wall_step = -10 * MINUTES
    world.advance(20.0)
    carol = world.join("carol", 1003)
    world.advance(5.0)
    history = [m for m in world.inbox[carol] if m.get("history")]
    assert [m["text"] for m in history] == ["still here"]
    assert abs(history[0]["ts"] - (START + 10 * MINUTES + 20)) < 3
    skews = [e for e in world.client_events[carol] if isinstance(e, events.ClockSkew)]
    assert len(skews) == 1 and abs(skews[0].seconds + 10 * MINUTES) <= 2
    timeouts = [e for c in world.client_events.values() for e in c]
    assert not any(isinstance(e, events.SessionEnded) for e in timeouts)


FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


@pytest.mark.skipif(
    not FAKETIME.exists() or shutil.which("twistd") is None,
    reason="libfaketime is not installed (apt-get install faketime; .ci/run does)",
)
def test_the_real_daemons_clock_stepped_both_ways_keeps_the_chat(
    tmp_path: Path, subprocess_env: dict[str, str], clients: Callable[..., PipeClient]
) -> None:
    """The real daemon under libfaketime: its system clock is stepped 10 minutes
    forward, then 20 back, while its monotonic clock runs on. Members keep chatting
    through both steps, and a newcomer whose clock now differs by 10 minutes is told
    so and chats too."""
    offset_file = tmp_path / "faketime"
    offset_file.write_text("+0\n")
    faked = dict(
        subprocess_env,
        LD_PRELOAD=str(FAKETIME),
        FAKETIME_TIMESTAMP_FILE=str(offset_file),
        FAKETIME_NO_CACHE="1",
        FAKETIME_DONT_FAKE_MONOTONIC="1",
    )
    env = subprocess_env
    server = tmp_path / "server"
    server.mkdir()
    daemon = Daemon(server, faked, idle_timeout=15).start()
    try:
        key = daemon.key_file
        alice = clients(daemon.port, key, "alice", env)
        alice.wait_for("-!- alice has joined lobby")
        bob = clients(daemon.port, key, "bob", env)
        bob.wait_for("-!- bob has joined lobby")
        offset_file.write_text("+600\n")
        time.sleep(1.0)
        alice.type("after a step forward")
        bob.wait_for("<alice> after a step forward")
        offset_file.write_text("-600\n")
        time.sleep(1.0)
        bob.type("after a step back")
        alice.wait_for("<bob> after a step back")
        carol = clients(daemon.port, key, "carol", env)
        carol.wait_for_start("-!- your clock differs from the server's by about 10 min", 10)
        carol.wait_for("-!- carol has joined lobby")
        carol.type("hello from the future")
        alice.wait_for("<carol> hello from the future")
        assert not any("timed out" in line for line in alice.lines + bob.lines)
    finally:
        daemon.stop()
    assert "timed out" not in daemon.log()
