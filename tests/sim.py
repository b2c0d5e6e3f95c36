"""A deterministic in-memory network and clock for driving the protocol core.

No sockets, no sleeping: datagrams sit in a heap ordered by arrival time, the clock
jumps to the next arrival or timer, and a seeded random generator decides loss,
duplication and delay (different delays reorder datagrams).
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from udpchat.chat.rules import LogEvent
from udpchat.chat.server import ChatServer
from udpchat.core import events
from udpchat.core.endpoint import ClientEndpoint, ServerEndpoint
from udpchat.core.limits import MAX_DATAGRAM_BYTES

SERVER_ADDR = ("127.0.0.1", 12345)
START = 1_800_000_000.0  # Fernet stamps tokens with `now`, so it must look like Unix time


@dataclass
class LossyNetwork:
    """Loses, duplicates, delays and thereby reorders datagrams, reproducibly."""

    seed: int = 0
    loss: float = 0.0
    duplicate: float = 0.0
    delay_s: float = 0.01
    jitter_s: float = 0.0
    rng: random.Random = field(init=False)
    _queue: list[tuple[float, int, bytes, object, object]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)
    sent: list[tuple[bytes, object, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def send(self, data: bytes, src: object, dst: object, now: float) -> None:
        assert len(data) <= MAX_DATAGRAM_BYTES, len(data)
        self.sent.append((data, src, dst))
        if self.rng.random() < self.loss:
            return
        copies = 2 if self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            at = now + self.delay_s + self.rng.uniform(0, self.jitter_s)
            heapq.heappush(self._queue, (at, next(self._order), data, src, dst))

    def next_arrival(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def arrivals(self, now: float) -> list[tuple[bytes, object, object]]:
        out = []
        while self._queue and self._queue[0][0] <= now:
            _, _, data, src, dst = heapq.heappop(self._queue)
            out.append((data, src, dst))
        return out


class Pair:
    """One ClientEndpoint and one ServerEndpoint joined by a LossyNetwork."""

    def __init__(
        self,
        server: ServerEndpoint,
        client: ClientEndpoint,
        network: LossyNetwork,
        client_addr: tuple[str, int] = ("127.0.0.2", 40000),
    ) -> None:
        self.server = server
        self.client = client
        self.network = network
        self.client_addr = client_addr
        self.now = START
        self.server_events: list[events.Event] = []
        self.client_events: list[events.Event] = []

    def flush(self) -> None:
        for data in self.client.datagrams_to_send(self.now):
            self.network.send(data, self.client_addr, SERVER_ADDR, self.now)
        for data, addr in self.server.datagrams_to_send(self.now):
            self.network.send(data, SERVER_ADDR, addr, self.now)
        while (event := self.server.next_event()) is not None:
            self.server_events.append(event)
        while (event := self.client.next_event()) is not None:
            self.client_events.append(event)

    def step(self) -> bool:
        """Advance the clock to the next arrival or timer and process it."""
        self.flush()
        times = [
            t
            for t in (self.network.next_arrival(), self.client.get_timer(), self.server.get_timer())
            if t is not None
        ]
        if not times:
            return False
        self.now = max(self.now, min(times))
        for data, _src, dst in self.network.arrivals(self.now):
            if dst == SERVER_ADDR:
                self.server.receive_datagram(data, _src, self.now)
            elif dst == self.client_addr:
                self.client.receive_datagram(data, self.now)
            # else: sent to an address the client left (roaming): lost
        self.client.handle_timer(self.now)
        self.server.handle_timer(self.now)
        self.flush()
        return True

    def run(
        self,
        until: Callable[[], bool],
        max_seconds: float,
        before_step: Callable[[], None] = lambda: None,
    ) -> None:
        deadline = self.now + max_seconds
        while not until():
            before_step()
            assert self.step(), "nothing left to happen"
            assert self.now <= deadline, "simulation ran out of time"

    def connect(self) -> bytes:
        self.client.connect(self.now)
        self.run(
            lambda: (
                self.client.connected
                and any(isinstance(e, events.SessionStarted) for e in self.server_events)
            ),
            30,
        )
        session_id = self.client.session_id
        assert session_id is not None
        return session_id


def received(events_: list[events.Event]) -> list[bytes]:
    return [e.payload for e in events_ if isinstance(e, events.MessageReceived)]


class ChatWorld:
    """The whole chat server (ChatServer) and any number of clients (ClientEndpoints)
    on one LossyNetwork with one fake clock: the daemon without Twisted or sockets.

    Each client's decoded messages land in ``inbox[addr]`` (sealed room messages of
    the "room-keys" extension only in ``client_events``), its core events in
    ``client_events[addr]``, and the server's log entries in ``log``. Addresses in
    ``cut`` lose every datagram both ways (a member that fell silent).
    """

    def __init__(self, server: ChatServer, network: LossyNetwork | None = None) -> None:
        self.server = server
        self.network = network or LossyNetwork()
        self.now = START
        self.clients: dict[Any, ClientEndpoint] = {}
        self.inbox: dict[Any, list[dict[str, Any]]] = {}
        self.client_events: dict[Any, list[events.Event]] = {}
        self.log: list[LogEvent] = []
        self.written: list[tuple[bytes, Any]] = []  # everything the server sent
        self.cut: set[Any] = set()

    def add_client(self, addr: Any, psk: bytes, hello: dict[str, Any] | None = None) -> Any:
        """A client that connects now and (if given) says ``hello`` first."""
        client = ClientEndpoint(psk, self.server.protocol)
        client.connect(self.now)
        if hello is not None:
            client.send(json.dumps(hello).encode(), self.now)
        self.clients[addr], self.inbox[addr], self.client_events[addr] = client, [], []
        self.flush()
        return addr

    def send(self, addr: Any, **message: Any) -> None:
        self.clients[addr].send(json.dumps(message).encode(), self.now)
        self.flush()

    def datagram(self, data: bytes, src: Any) -> None:
        """A datagram from anywhere (garbage, a forged source) reaches the server now."""
        self.server.receive_datagram(data, src, self.now)
        self.flush()

    def flush(self) -> None:
        for addr, client in self.clients.items():
            for data in client.datagrams_to_send(self.now):
                if addr not in self.cut:
                    self.network.send(data, addr, SERVER_ADDR, self.now)
        for data, addr in self.server.datagrams_to_send(self.now):
            self.written.append((data, addr))
            if addr not in self.cut:
                self.network.send(data, SERVER_ADDR, addr, self.now)
        self.log.extend(self.server.take_log())
        for addr, client in self.clients.items():
            while (event := client.next_event()) is not None:
                self.client_events[addr].append(event)
                if isinstance(event, events.MessageReceived) and not event.sealed:
                    self.inbox[addr].append(json.loads(event.payload))

    def step(self, limit: float) -> bool:
        """Advance to the next arrival or timer (at most to ``limit``) and handle it."""
        self.flush()
        times = [self.network.next_arrival(), self.server.get_timer()]
        times += [client.get_timer() for client in self.clients.values()]
        due = min((t for t in times if t is not None), default=None)
        if due is None or due > limit:
            self.now = max(self.now, limit)
            return False
        self.now = max(self.now, due)
        for data, src, dst in self.network.arrivals(self.now):
            if dst == SERVER_ADDR:
                self.server.receive_datagram(data, src, self.now)
            elif dst in self.clients:
                self.clients[dst].receive_datagram(data, self.now)
        for client in self.clients.values():
            client.handle_timer(self.now)
        if (timer := self.server.get_timer()) is not None and timer <= self.now:
            self.server.handle_timer(self.now)
        self.flush()
        return True

    def settle(self, max_seconds: float = 5.0) -> None:
        """Run until nothing is in flight (timers may still be pending)."""
        limit = self.now + max_seconds
        while self.network.next_arrival() is not None:
            assert self.step(limit), "the network did not settle"

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of fake time pass, handling everything that happens."""
        limit = self.now + seconds
        while self.step(limit):
            pass

    def run(self, until: Callable[[], bool], max_seconds: float) -> None:
        limit = self.now + max_seconds
        while not until():
            assert self.step(limit), "simulation ran out of time"
