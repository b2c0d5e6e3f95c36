"""Log floods against a real daemon: what a key holder can do, over and over, that
makes the daemon write a log line each time (roaming, renames, room moves, refused
hellos, sessions coming and going).

Each flood runs the real protocol core over real loopback sockets for a bounded
time and count, as fast as the daemon answers, and returns how many times it did the
thing. Used by tests/test_daemon_logs.py and benchmarks/log_floods.py.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from udpchat.core import events
from udpchat.core.endpoint import ClientEndpoint

Address = tuple[str, int]
#: Messages sent but not yet acknowledged, at most: enough to keep the daemon busy,
#: few enough never to fill the core's send queue.
IN_FLIGHT_MAX = 32


class FloodClient:
    """One session of the protocol core whose datagrams leave through `sources`
    loopback sockets in turn: with two, the session moves on every datagram."""

    def __init__(
        self, server: Address, psk: bytes, sources: int = 1, host: str = "127.0.0.1"
    ) -> None:
        self.server = server
        self.core = ClientEndpoint(psk)
        self.sockets = []
        for _ in range(sources):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((host, 0))
            sock.setblocking(False)
            self.sockets.append(sock)
        self.datagrams_sent = 0
        self.delivered = 0
        self.sent = 0
        self.messages: list[dict[str, Any]] = []
        self.ended = False
        self.core.connect(time.time())

    def send(self, message: dict[str, Any]) -> None:
        self.core.send(json.dumps(message).encode(), time.time())
        self.sent += 1

    @property
    def in_flight(self) -> int:
        return self.sent - self.delivered

    def pump(self) -> None:
        """Send what the core has to send, read what has arrived; never blocks."""
        now = time.time()
        self.core.handle_timer(now)
        for data in self.core.datagrams_to_send(now):
            sock = self.sockets[self.datagrams_sent % len(self.sockets)]
            self.datagrams_sent += 1
            sock.sendto(data, self.server)
        for sock in self.sockets:
            while True:
                try:
                    data, addr = sock.recvfrom(2048)
                except BlockingIOError:
                    break
                if addr[:2] == self.server:
                    self.core.receive_datagram(data, time.time())
        while (event := self.core.next_event()) is not None:
            if isinstance(event, events.MessageDelivered):
                self.delivered += 1
            elif isinstance(event, events.MessageReceived):
                self.messages.append(json.loads(event.payload))
            elif isinstance(event, events.SessionEnded):
                self.ended = True

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"not reached in {timeout} s; got {self.messages[-5:]}")
            self.pump()
            time.sleep(0.001)

    def hello(self, nick: str) -> None:
        """Join the default room as `nick` and wait for the welcome."""
        self.wait_for(lambda: self.core.connected)
        self.send({"t": "hello", "nick": nick, "room": "lobby", "client": os.urandom(8).hex()})
        self.wait_for(lambda: any(m["t"] == "welcome" for m in self.messages))

    def repeat(self, messages: Callable[[int], dict[str, Any]], seconds: float, count: int) -> int:
        """Send messages(0), messages(1), ... for at most `seconds` and `count`
        messages, keeping at most IN_FLIGHT_MAX unacknowledged; return how many
        the daemon acknowledged."""
        end = time.monotonic() + seconds
        first = self.sent
        while time.monotonic() < end and self.sent - first < count:
            if self.in_flight < IN_FLIGHT_MAX:
                self.send(messages(self.sent - first))
            self.pump()
        self.wait_for(lambda: self.in_flight == 0, timeout=5.0)
        return self.sent - first

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def roam(server: Address, psk: bytes, seconds: float, count: int) -> int:
    """One member whose datagrams come from two source ports in turn: the session
    moves on every authentic datagram. It sends pings (an empty authentic datagram,
    as a key holder may send at will) as fast as it can. Returns how many."""
    client = FloodClient(server, psk, sources=2)
    try:
        client.hello("roamer")
        session: Any = client.core._session  # a key holder can make any datagram
        before = client.datagrams_sent
        end = time.monotonic() + seconds
        while time.monotonic() < end and client.datagrams_sent - before < count:
            session._ping_needed = True
            client.pump()
        return client.datagrams_sent - before
    finally:
        client.close()


def rename(server: Address, psk: bytes, seconds: float, count: int) -> int:
    """One member changing its nick back and forth (/nick)."""
    client = FloodClient(server, psk)
    try:
        client.hello("renamer")
        return client.repeat(lambda i: {"t": "nick", "nick": f"renamer{i % 2}"}, seconds, count)
    finally:
        client.close()


def move(server: Address, psk: bytes, seconds: float, count: int) -> int:
    """One member joining another room and parting back to the lobby (/join, /part)."""
    client = FloodClient(server, psk)
    try:
        client.hello("mover")
        return client.repeat(
            lambda i: {"t": "join", "room": "elsewhere"} if i % 2 == 0 else {"t": "part"},
            seconds,
            count,
        )
    finally:
        client.close()


def refused_hello(server: Address, psk: bytes, seconds: float, count: int) -> int:
    """One session asking again and again for a nick a member already has."""
    holder = FloodClient(server, psk)
    client = FloodClient(server, psk)
    try:
        holder.hello("taken")
        client.wait_for(lambda: client.core.connected)
        hello = {"t": "hello", "nick": "taken", "room": "lobby", "client": os.urandom(8).hex()}
        return client.repeat(lambda i: hello, seconds, count)
    finally:
        holder.close()
        client.close()


def churn(server: Address, psk: bytes, seconds: float, count: int) -> int:
    """Members joining and leaving (hello, bye), each from its own loopback address
    (127.0.1.x) so that the per-address handshake limit does not slow them down."""
    end = time.monotonic() + seconds
    done = 0
    while time.monotonic() < end and done < count:
        client = FloodClient(server, psk, host=f"127.0.1.{done % 250 + 1}")
        try:
            client.hello(f"churner{done}")
            client.send({"t": "bye"})
            client.wait_for(lambda: client.ended, timeout=5.0)  # noqa: B023 - called here
        finally:
            client.close()
        done += 1
    return done


FLOODS: dict[str, Callable[[Address, bytes, float, int], int]] = {
    "roamed": roam,
    "rename": rename,
    "move": move,
    "refused": refused_hello,
    "join": churn,
}

#: What the lines each flood causes look like in the daemon's log.
LINE_PATTERNS = {
    "roamed": re.compile(r"Session of .+ moved from "),
    "rename": re.compile(r" is now known as "),
    "move": re.compile(r"\] (?!Session of )\S+ moved from \S+ to "),
    "refused": re.compile(r"Refused a hello from "),
    "join": re.compile(r" joined lobby from | left \("),
}
SUMMARY = re.compile(r"Suppressed (\d+) log lines over the rate limits \((.*)\)")


def lines_of(log: str, flood: str) -> int:
    """How many lines of the kind `flood` causes the daemon wrote."""
    return len(LINE_PATTERNS[flood].findall(log))


def suppressed(log: str) -> Counter[str]:
    """The suppressed counts of every summary in the log, added up by kind."""
    counts: Counter[str] = Counter()
    for _, kinds in SUMMARY.findall(log):
        for item in kinds.split(", "):
            kind, n = item.split(": ")
            counts[kind] += int(n)
    return counts
