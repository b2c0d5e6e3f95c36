"""A deterministic in-memory network and clock for driving the protocol core.

No sockets, no sleeping: datagrams sit in a heap ordered by arrival time, the clock
jumps to the next arrival or timer, and a seeded random generator decides loss,
duplication and delay (different delays reorder datagrams).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

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
