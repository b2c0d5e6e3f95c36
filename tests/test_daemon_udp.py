"""The daemon's Twisted adapter (udpchat.daemon.udp.ChatProtocol) with real protocol
cores in memory: no sockets, no reactor.

A twisted Clock drives time and a recording transport captures what the adapter
writes; clients are ClientEndpoints whose datagrams the test carries by hand. The chat
server's behaviour itself is specified in tests/test_chat_server.py; these tests are
about what the adapter adds: allow/deny, writing, the one timer, log lines, the
shutdown Deferred, and surviving a bug.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.fernet import Fernet
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher

from udpchat.chat.server import ChatServer, sessions_for
from udpchat.core import events
from udpchat.core.endpoint import ClientEndpoint
from udpchat.daemon.config import ServerConfig
from udpchat.daemon.service import ChatService, settings_of
from udpchat.daemon.udp import ChatProtocol

PSK = Fernet.generate_key()
START = 1_800_000_000.0


class RecordingSocket:
    def __init__(self, written: list[tuple[bytes, Any]]) -> None:
        self.sendto = lambda data, addr: written.append((data, addr))


class RecordingTransport:
    """A UDP port whose socket records what is sent (the adapter writes to it)."""

    def __init__(self) -> None:
        self.written: list[tuple[bytes, Any]] = []
        self.socket = RecordingSocket(self.written)


class World:
    """One ChatProtocol, any number of in-memory clients, one clock."""

    def __init__(self, **settings: Any) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.config = ServerConfig(path=Path("/test/chat.ini"), **settings)
        chat = ChatServer(PSK, settings_of(self.config))
        # The system clock: the test clock, unless a test steps it (wall_step).
        self.wall_step = 0.0
        self.server = ChatProtocol(
            chat,
            self.config.address_allowed,
            self.clock,
            wall=lambda: self.clock.seconds() + self.wall_step,
        )
        self.transport = RecordingTransport()
        self.server.transport = self.transport  # type: ignore[assignment]
        self.clients: dict[Any, ClientEndpoint] = {}
        self.inbox: dict[Any, list[dict[str, Any]]] = {}
        self.client_events: dict[Any, list[events.Event]] = {}

    def join(self, nick: str, port: int, psk: bytes = PSK, hello: bool = True) -> Any:
        addr = ("127.0.0.1", port)
        client = ClientEndpoint(psk)
        client.connect(self.clock.seconds())
        if hello:
            hi = {"t": "hello", "nick": nick, "room": "lobby", "client": f"{port:016x}"}
            client.send(json.dumps(hi).encode(), self.clock.seconds())
        self.clients[addr], self.inbox[addr], self.client_events[addr] = client, [], []
        self.settle()
        return addr

    def say(self, addr: Any, **message: Any) -> None:
        self.clients[addr].send(json.dumps(message).encode(), self.clock.seconds())
        self.settle()

    def settle(self, rounds: int = 20, silent: tuple[Any, ...] = ()) -> None:
        """Carry datagrams both ways until nothing moves (clients in `silent` are cut off)."""
        for _ in range(rounds):
            moved = False
            now = self.clock.seconds()
            for addr, client in self.clients.items():
                client.handle_timer(now)
                for data in client.datagrams_to_send(now):
                    if addr not in silent:
                        self.server.datagramReceived(data, addr)
                        moved = True
            written = list(self.transport.written)
            self.transport.written.clear()
            for data, addr in written:
                if addr in self.clients and addr not in silent:
                    self.clients[addr].receive_datagram(data, now)
                    moved = True
            for addr, client in self.clients.items():
                while (event := client.next_event()) is not None:
                    self.client_events[addr].append(event)
                    if isinstance(event, events.MessageReceived):
                        self.inbox[addr].append(json.loads(event.payload))
            if not moved:
                return

    def advance(self, seconds: float, step: float = 0.5, silent: tuple[Any, ...] = ()) -> None:
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            self.clock.advance(step)
            self.settle(silent=silent)


@pytest.fixture
def logged() -> Any:
    lines: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "udpchat" and event.get("log_level") >= LogLevel.info:
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(cast(ILogObserver, observer))
    yield lines
    globalLogPublisher.removeObserver(cast(ILogObserver, observer))


def test_member_events_become_log_lines_in_the_operators_words(logged: list[str]) -> None:
    """Joins and timeouts are logged with nick and address as the operator reads them."""
    world = World(idle_timeout=15.0)
    world.join("alice", 1001)
    world.join("bob", 1002)
    alice = ("127.0.0.1", 1001)
    world.advance(20.0, silent=(alice,))
    assert any("alice joined lobby from 127.0.0.1:1001" in line for line in logged)
    assert any("alice timed out at 127.0.0.1:1001" in line for line in logged)


def test_member_limit_and_deny_list_answer_with_silence(logged: list[str]) -> None:
    """Beyond max_members and the spare sessions (which let a newcomer be told the
    server is full), and from a denied address, nothing at all is written back; each
    refusal is logged once, not once per datagram."""
    world = World(max_members=1, handshake_burst=50, deny=(ipaddress.ip_network("127.0.0.99/32"),))
    world.join("alice", 1001)
    for i in range(sessions_for(1) - 1):
        world.join(f"spare{i}", 1100 + i, hello=False)
    before = len(world.transport.written)
    second = world.join("second", 1002)
    world.advance(3.0)
    assert not world.clients[second].connected
    denied = ("127.0.0.99", 1003)
    client = ClientEndpoint(PSK)
    client.connect(world.clock.seconds())
    for _ in range(5):
        for data in client.datagrams_to_send(world.clock.seconds()):
            world.server.datagramReceived(data, denied)
    assert all(addr[0] != "127.0.0.99" for _, addr in world.transport.written[before:])
    assert sum("member limit (1) is reached" in line for line in logged) == 1
    assert sum("Refused 127.0.0.99" in line for line in logged) == 1


def test_rejected_datagrams_are_summarised_not_logged_one_by_one(logged: list[str]) -> None:
    """Garbage is dropped silently; the service's periodic summary writes one line
    with the counts, and nothing when nothing new was dropped."""
    clock = Clock()
    config = ServerConfig(path=Path("/test/chat.ini"))
    service = ChatService(config, PSK, reactor=clock)
    transport = RecordingTransport()
    service.protocol.transport = transport  # type: ignore[assignment]
    for i in range(100):
        service.protocol.datagramReceived(bytes([i % 5]) * (i + 1), ("127.0.0.1", 2000 + i))
    assert transport.written == []
    assert logged == []
    service.log_rejections()
    assert len(logged) == 1 and "Dropped 100 datagrams without answer" in logged[0]
    service.log_rejections()
    assert len(logged) == 1, "nothing new, nothing logged"


def test_log_lines_over_the_limits_are_counted_in_the_summary(logged: list[str]) -> None:
    """A member renaming in a loop gets a few lines (ServerSettings.session_log_burst);
    the service's periodic summary says how many more were held back, by kind."""
    clock = Clock()
    config = ServerConfig(path=Path("/test/chat.ini"))
    service = ChatService(config, PSK, reactor=clock, wall=clock.seconds)
    world = World()
    world.clock, world.server = clock, service.protocol
    world.server.transport = world.transport  # type: ignore[assignment]
    alice = world.join("alice", 1001)
    for i in range(20):
        world.say(alice, t="nick", nick=f"alice{i}")
    burst = service.protocol.server.settings.session_log_burst
    assert sum("is now known as" in line for line in logged) == burst
    service.log_rejections()
    held_back = 20 - burst
    assert (
        logged[-1] == f"Suppressed {held_back} log lines over the rate limits (rename: {held_back})"
    )
    service.log_rejections()
    assert sum(line.startswith("Suppressed") for line in logged) == 1, "nothing new, no line"


def test_shutdown_fires_once_every_session_is_closed_and_leaves_no_timer() -> None:
    """shutdown() returns a Deferred that fires once members acknowledged the notice
    and their sessions are closed; nothing of the chat is scheduled afterwards."""
    world = World()
    alice = world.join("alice", 1001)
    world.join("nobody-yet", 1002, hello=False)
    done = world.server.shutdown()
    world.advance(0.2, step=0.01)
    assert done.called
    assert world.inbox[alice][-1]["t"] == "shutdown"
    ended = [e for e in world.client_events[alice] if isinstance(e, events.SessionEnded)]
    assert [e.reason for e in ended] == ["closed"]
    assert world.clock.getDelayedCalls() == []


def test_a_bug_costs_one_datagram_and_one_traceback_a_minute(logged: list[str]) -> None:
    """An exception escaping the chat server (a bug) is logged with its traceback at
    most once a minute and counted; the daemon, its timer and its members go on."""
    world = World()
    alice = world.join("alice", 1001)
    bob = world.join("bob", 1002)
    errors: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None:
            errors.append(event)

    real = world.server.server.receive_datagram
    calls = 0

    def broken(data: bytes, addr: Any, now: float) -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError("a bug")
        real(data, addr, now)

    world.server.server.receive_datagram = broken  # type: ignore[method-assign]
    globalLogPublisher.addObserver(cast(ILogObserver, observer))
    try:
        for _ in range(3):
            world.server.datagramReceived(b"x", ("127.0.0.1", 9))
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, observer))
    assert len(errors) == 1 and "a bug" in str(errors[0]["log_failure"].value)
    assert world.server.take_drops()["internal-error"] == 3
    assert world.clock.getDelayedCalls(), "the timer is still set"
    world.say(alice, t="say", text="still here", id="00000000000000cc")
    assert [m["text"] for m in world.inbox[bob] if m["t"] == "say"] == ["still here"]


def test_a_bug_while_sending_on_a_timer_tick_keeps_the_timer(logged: list[str]) -> None:
    """An exception while the adapter writes out what a timer tick produced is logged
    and counted like any bug, and the one timer is set again: retransmissions,
    expiry and deadlines go on."""
    world = World()
    world.join("alice", 1001)
    assert world.clock.getDelayedCalls()
    real = world.server.server.datagrams_to_send
    calls = 0

    def broken(now: float) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return real(now)

    world.server.server.datagrams_to_send = broken  # type: ignore[method-assign]
    call: Any = world.clock.getDelayedCalls()[0]
    world.clock.advance(call.getTime() - world.clock.seconds())
    assert world.clock.getDelayedCalls(), "the daemon still has its timer"
    assert world.server.take_drops()["internal-error"] == 1
