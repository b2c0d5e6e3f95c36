"""A lossy UDP proxy for end-to-end tests: clients talk to the proxy, the proxy talks
to the daemon, and each direction loses, duplicates and reorders datagrams on a seeded
random generator, counting what it did so a test can check the impairments happened.

One thread runs a select() loop over the proxy's listening socket and one upstream
socket per client address (so the daemon sees each client as a distinct source and
replies go back to the right one). Loopback only; the thread stops when told, or by
itself after ``max_lifetime_s``.
"""

from __future__ import annotations

import heapq
import itertools
import random
import select
import socket
import threading
import time
from dataclasses import dataclass, field

Address = tuple[str, int]

#: Largest datagram read (anything udpchat sends is far smaller).
RECV_BYTES = 65535
#: The loop wakes up at least this often to notice stop() and its lifetime.
TICK_S = 0.05
#: Distinct client addresses served at once; datagrams from more are dropped.
MAX_CLIENTS = 64
#: Datagrams held back for reordering at once; beyond it they are sent at once.
MAX_DELAYED = 10_000


@dataclass(frozen=True)
class Impairment:
    """What one direction does to each datagram: drop it with probability ``loss``;
    otherwise send it twice with probability ``duplicate``; each copy is held back by
    ``delay_s`` (a uniform range) with probability ``reorder``, so later ones overtake it."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay_s: tuple[float, float] = (0.01, 0.05)


PERFECT = Impairment()


@dataclass
class Counts:
    """What happened in one direction (datagrams)."""

    received: int = 0
    forwarded: int = 0  # copies actually sent, duplicates included
    dropped: int = 0
    duplicated: int = 0
    delayed: int = 0
    reordered: int = 0  # sent after a datagram that arrived later than it


@dataclass
class _Direction:
    impairment: Impairment
    counts: Counts = field(default_factory=Counts)
    arrivals: itertools.count[int] = field(default_factory=itertools.count)
    # Per client: the latest arrival index already sent (to count real reordering).
    latest_sent: dict[Address, int] = field(default_factory=dict)


class UDPProxy:
    """Forwards datagrams between clients and ``upstream`` with impairments.

    ``to_server`` applies to client -> daemon datagrams, ``to_client`` to the replies;
    ``impair`` changes one of them on the fly. Set ``blackhole`` to drop everything (a
    network outage) until it is cleared.
    """

    def __init__(
        self,
        upstream: Address,
        *,
        to_server: Impairment = PERFECT,
        to_client: Impairment = PERFECT,
        seed: int = 0,
        host: str = "127.0.0.1",
        max_lifetime_s: float = 120.0,
    ) -> None:
        self.upstream = upstream
        self.host = host
        self.max_lifetime_s = max_lifetime_s
        self.blackhole = False
        self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._rng = random.Random(seed)
        self._directions = {
            "to_server": _Direction(to_server),
            "to_client": _Direction(to_client),
        }
        self._listener = socket.socket(self._family, socket.SOCK_DGRAM)
        self._listener.bind((host, 0))
        self._listener.setblocking(False)
        self._upstream_for: dict[Address, socket.socket] = {}
        self._client_for: dict[socket.socket, Address] = {}
        # (due, order, direction, client, arrival index, data): the datagrams held back.
        self._delayed: list[tuple[float, int, str, Address, int, bytes]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()  # guards the counts read by the test thread
        self._stop = threading.Event()
        self._rebind = threading.Event()
        self._thread = threading.Thread(target=self._run, name="udpproxy", daemon=True)

    # --- the test's side ---------------------------------------------------------

    @property
    def address(self) -> Address:
        """Where clients should send (the proxy's listening address)."""
        host, port = self._listener.getsockname()[:2]
        return (str(host), int(port))

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def to_server(self) -> Counts:
        return self.counts("to_server")

    @property
    def to_client(self) -> Counts:
        return self.counts("to_client")

    def impair(self, direction: str, impairment: Impairment) -> None:
        """From now on, treat the datagrams of ``direction`` ("to_server" or
        "to_client") as ``impairment`` says; e.g. ``Impairment(loss=1.0)`` cuts one
        direction only."""
        with self._lock:
            self._directions[direction].impairment = impairment

    def counts(self, direction: str) -> Counts:
        """A snapshot of one direction's counts ("to_server" or "to_client")."""
        with self._lock:
            c = self._directions[direction].counts
            return Counts(**vars(c))

    @property
    def clients(self) -> int:
        """Client addresses seen so far."""
        with self._lock:
            return len(self._upstream_for)

    def start(self) -> UDPProxy:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close every socket (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._close_all()

    def __enter__(self) -> UDPProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the thread ------------------------------------------------------------

    def rebind(self) -> None:
        """A NAT rebinding: from now on every client's datagrams reach the daemon from
        a new source port, and what the daemon sends to the old one is lost."""
        self._rebind.set()

    def _new_upstreams(self) -> None:
        with self._lock:
            for client, old in list(self._upstream_for.items()):
                old.close()
                del self._client_for[old]
                upstream = socket.socket(self._family, socket.SOCK_DGRAM)
                upstream.bind((self.host, 0))
                upstream.connect(self.upstream)
                upstream.setblocking(False)
                self._upstream_for[client] = upstream
                self._client_for[upstream] = client

    def _run(self) -> None:
        end = time.monotonic() + self.max_lifetime_s
        try:
            while not self._stop.is_set() and time.monotonic() < end:
                if self._rebind.is_set():
                    self._rebind.clear()
                    self._new_upstreams()
                now = time.monotonic()
                self._send_due(now)
                wait = TICK_S
                if self._delayed:
                    wait = max(0.0, min(wait, self._delayed[0][0] - now))
                readable, _, _ = select.select([self._listener, *self._client_for], [], [], wait)
                for sock in readable:
                    if sock is self._listener:
                        self._from_client()
                    else:
                        self._from_server(sock)
        finally:
            self._close_all()

    def _from_client(self) -> None:
        try:
            data, addr = self._listener.recvfrom(RECV_BYTES)
        except OSError:
            return
        client: Address = (str(addr[0]), int(addr[1]))
        if client not in self._upstream_for:
            if len(self._upstream_for) >= MAX_CLIENTS:
                return
            upstream = socket.socket(self._family, socket.SOCK_DGRAM)
            upstream.bind((self.host, 0))
            upstream.connect(self.upstream)
            upstream.setblocking(False)
            with self._lock:
                self._upstream_for[client] = upstream
                self._client_for[upstream] = client
        self._impair("to_server", client, data)

    def _from_server(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(RECV_BYTES)
        except OSError:
            return  # e.g. ECONNREFUSED while the daemon is down
        self._impair("to_client", self._client_for[sock], data)

    def _impair(self, direction: str, client: Address, data: bytes) -> None:
        d = self._directions[direction]
        imp = d.impairment
        arrival = next(d.arrivals)
        with self._lock:
            d.counts.received += 1
            if self.blackhole or self._rng.random() < imp.loss:
                d.counts.dropped += 1
                return
            copies = 1
            if self._rng.random() < imp.duplicate:
                copies = 2
                d.counts.duplicated += 1
        now = time.monotonic()
        for _ in range(copies):
            if self._rng.random() < imp.reorder and len(self._delayed) < MAX_DELAYED:
                due = now + self._rng.uniform(*imp.delay_s)
                item = (due, next(self._order), direction, client, arrival, data)
                heapq.heappush(self._delayed, item)
                with self._lock:
                    d.counts.delayed += 1
            else:
                self._forward(direction, client, data, arrival)

    def _send_due(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, _, direction, client, arrival, data = heapq.heappop(self._delayed)
            self._forward(direction, client, data, arrival)

    def _forward(self, direction: str, client: Address, data: bytes, arrival: int) -> None:
        d = self._directions[direction]
        try:
            if direction == "to_server":
                self._upstream_for[client].send(data)
            else:
                self._listener.sendto(data, client)
        except OSError:
            return  # the daemon is down, or the client is gone: UDP loses it
        with self._lock:
            d.counts.forwarded += 1
            latest = d.latest_sent.get(client, -1)
            if arrival < latest:
                d.counts.reordered += 1
            else:
                d.latest_sent[client] = arrival

    def _close_all(self) -> None:
        with self._lock:
            sockets = [self._listener, *self._upstream_for.values()]
        for sock in sockets:
            sock.close()
