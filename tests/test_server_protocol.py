"""The daemon's ChatProtocol with real protocol cores in memory: no sockets, no reactor.

A twisted Clock drives time and a recording transport captures what the server
writes; clients are ClientEndpoints whose datagrams the test carries by hand.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from udpchat.core import events
from udpchat.core.endpoint import ClientEndpoint
from udpchat.daemon.config import ServerConfig
from udpchat.daemon.server import ChatProtocol

PSK = Fernet.generate_key()
START = 1_800_000_000.0


class RecordingTransport:
    def __init__(self) -> None:
        self.written: list[tuple[bytes, Any]] = []

    def write(self, data: bytes, addr: Any) -> None:
        self.written.append((data, addr))


class World:
    """One ChatProtocol, any number of in-memory clients, one clock."""

    def __init__(self, **settings: Any) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        config = ServerConfig(path=Path("/test/chat.ini"), **settings)
        self.server = ChatProtocol(config, PSK, self.clock)
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
            written, self.transport.written = self.transport.written, []
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

    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


def test_a_taken_nick_is_refused_across_the_whole_stack() -> None:
    """A second member asking for a nick in use (any case) gets error nick-taken."""
    world = World()
    world.join("alice", 1001)
    bob = world.join("ALICE", 1002)
    assert world.inbox[bob][-1]["t"] == "error"
    assert world.inbox[bob][-1]["code"] == "nick-taken"


def test_lines_reach_the_room_in_order_and_history_is_bounded() -> None:
    """Lines go to the others in the sender's order; a late joiner gets only the last
    history_lines of them, marked as history."""
    world = World(history_lines=3)
    alice = world.join("alice", 1001)
    bob = world.join("bob", 1002)
    for i in range(5):
        world.say(alice, t="say", text=f"line {i}", id=f"{i:016x}")
    assert [m["text"] for m in world.inbox[bob] if m["t"] == "say"] == [
        f"line {i}" for i in range(5)
    ]
    carol = world.join("carol", 1003)
    history = [m for m in world.inbox[carol] if m["t"] == "say"]
    assert [m["text"] for m in history] == ["line 2", "line 3", "line 4"]
    assert all(m["history"] is True for m in history)
    assert not [m for m in world.inbox[alice] if m["t"] == "say"], "never echoed"


def test_private_message_to_an_absent_nick_is_an_error_to_the_sender() -> None:
    """/msg to nobody is an error back, not a silent drop; /msg to someone reaches
    only them."""
    world = World()
    alice = world.join("alice", 1001)
    bob = world.join("bob", 1002)
    carol = world.join("carol", 1003)
    world.say(alice, t="msg", to="nobody", text="hi", id="000000000000000a")
    assert world.inbox[alice][-1]["code"] == "no-such-nick"
    world.say(alice, t="msg", to="bob", text="psst", id="000000000000000b")
    assert world.inbox[bob][-1] == {
        "t": "msg",
        "from": "alice",
        "text": "psst",
        "id": "000000000000000b",
    }
    assert not [m for m in world.inbox[carol] if m["t"] == "msg"]


def test_a_silent_member_times_out_and_the_room_is_told(logged: list[str]) -> None:
    """A member that falls silent is dropped after idle_timeout; the others see a
    part notice with reason timeout and the log says who and from where."""
    world = World(idle_timeout=15.0)
    world.join("alice", 1001)
    bob = world.join("bob", 1002)
    alice = ("127.0.0.1", 1001)
    world.advance(20.0, silent=(alice,))
    assert {"t": "part", "room": "lobby", "nick": "alice", "reason": "timeout"} in world.inbox[bob]
    assert any("alice timed out at 127.0.0.1:1001" in line for line in logged)


def test_member_limit_and_deny_list_answer_with_silence(logged: list[str]) -> None:
    """Beyond max_members, and from a denied address, nothing at all is written back;
    each refusal is logged once, not once per datagram."""
    world = World(max_members=1, deny=(ipaddress.ip_network("127.0.0.99/32"),))
    world.join("alice", 1001)
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
    """Garbage is dropped silently; log_rejections() writes one line with counts."""
    world = World()
    for i in range(100):
        world.server.datagramReceived(bytes([i % 5]) * (i + 1), ("127.0.0.1", 2000 + i))
    assert world.transport.written == []
    assert logged == []
    world.server.log_rejections()
    assert len(logged) == 1 and "Dropped 100 datagrams without answer" in logged[0]
    world.server.log_rejections()
    assert len(logged) == 1, "nothing new, nothing logged"


def test_shutdown_tells_every_member_and_closes_their_sessions() -> None:
    """On shutdown every member gets a shutdown message and its session is closed."""
    world = World()
    alice = world.join("alice", 1001)
    bob = world.join("bob", 1002)
    done = world.server.shutdown()
    world.advance(0.2, step=0.01)  # members acknowledge the notice; sessions close
    assert done.called
    for addr in (alice, bob):
        assert world.inbox[addr][-1]["t"] == "shutdown"
        ended = [e for e in world.client_events[addr] if isinstance(e, events.SessionEnded)]
        assert [e.reason for e in ended] == ["closed"]


def test_a_session_that_never_says_hello_is_closed_and_frees_its_slot() -> None:
    """A key holder that completes handshakes but never says hello cannot hold member
    slots: its session is closed HELLO_DEADLINE_S after the handshake."""
    from udpchat.daemon.server import HELLO_DEADLINE_S

    world = World(max_members=1)
    squatter = world.join("unused", 1001, hello=False)
    assert world.clients[squatter].connected
    world.advance(HELLO_DEADLINE_S + 1)
    ended = [e for e in world.client_events[squatter] if isinstance(e, events.SessionEnded)]
    assert [e.reason for e in ended] == ["closed"]
    member = world.join("member", 1002)
    assert world.inbox[member][0] == {"t": "welcome", "nick": "member", "room": "lobby"}


def test_spoofed_sources_cannot_flood_the_log(logged: list[str]) -> None:
    """Refusals are logged once per address per minute, and at most a few lines per
    minute in all: source addresses are free to forge, log lines are not."""
    world = World(deny=(ipaddress.ip_network("127.0.0.0/8"),))
    for i in range(500):
        world.server.datagramReceived(b"x", (f"127.0.{i // 200}.{i % 200 + 1}", 4000))
    refusals = [line for line in logged if line.startswith("Refused")]
    assert 1 <= len(refusals) <= 10
    world.server.log_rejections()
    assert "address-refused: 500" in logged[-1]


def test_shutdown_leaves_no_timer_behind() -> None:
    """Once shutdown has finished, nothing of the chat is still scheduled (hello
    deadlines included)."""
    world = World()
    world.join("alice", 1001)
    world.join("nobody-yet", 1002, hello=False)
    done = world.server.shutdown()
    world.advance(1.5, step=0.01)
    assert done.called
    assert world.clock.getDelayedCalls() == []
