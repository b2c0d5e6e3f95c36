"""A hostile udpchat server for black-box tests of the real client: a key holder
running its own server on loopback. It speaks the real protocol (the core's
ServerEndpoint with the group's key), welcomes every hello, and then sends whatever
application payloads the test queues, raw bytes, valid or not, as fast as the
reliable stream lets it. One thread, one UDP socket on 127.0.0.1."""

from __future__ import annotations

import json
import queue
import select
import socket
import threading
import time
from types import TracebackType

from udpchat.core import events
from udpchat.core.endpoint import QueueFull, ServerEndpoint, UnknownSession

#: The longest the loop sleeps without looking at its timers and its queue.
TICK_S = 0.02


class HostileServer:
    """See module docstring. Use as a context manager; ``port`` is where it listens."""

    def __init__(self, psk: bytes) -> None:
        self.endpoint = ServerEndpoint(psk)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])
        self.received: list[dict[str, object]] = []  # the client's messages, decoded
        self.queued = 0  # payloads the test asked to send
        self.handed = 0  # of those, handed to the core (queued for reliable delivery)
        self.delivered = 0  # messages the client acknowledged (welcome included)
        self._outgoing: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._session: bytes | None = None
        self._hold_first = False  # see send(batch=True)
        self._welcomed = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def wait_welcomed(self, timeout: float = 10.0) -> None:
        assert self._welcomed.wait(timeout), "the client never said hello"

    def send(self, *payloads: bytes, batch: bool = False) -> None:
        """Queue ``payloads`` for the client, in order (after its welcome). ``batch``:
        the datagram with the first one is sent after the others (as a lost and
        retransmitted one would be), so the client's core holds them back and hands
        them on all at once, one batch for the display."""
        if batch:
            self._outgoing.put(None)
        for payload in payloads:
            self._outgoing.put(payload)
        with self._lock:
            self.queued += len(payloads)

    def all_handed(self) -> bool:
        """Whether every queued payload went to the core (not necessarily arrived)."""
        with self._lock:
            return self.handed == self.queued

    def acknowledged(self) -> int:
        with self._lock:
            return self.delivered

    def said(self) -> list[str]:
        """Texts of the client's say lines received so far."""
        with self._lock:
            return [str(m["text"]) for m in self.received if m.get("t") == "say"]

    # --- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        backlog: list[bytes | None] = []
        while not self._stop.is_set():
            timer = self.endpoint.get_timer()
            wait = TICK_S if timer is None else min(TICK_S, max(0.0, timer - time.time()))
            readable, _, _ = select.select([self.sock], [], [], wait)
            now = time.time()
            if readable:
                for _ in range(256):
                    try:
                        data, addr = self.sock.recvfrom(2048)
                    except BlockingIOError:
                        break
                    self.endpoint.receive_datagram(data, addr, now)
            timer = self.endpoint.get_timer()
            if timer is not None and timer <= now:
                self.endpoint.handle_timer(now)
            while (event := self.endpoint.next_event()) is not None:
                self._on_event(event, now)
            if self._session is not None and self._welcomed.is_set():
                while not self._outgoing.empty():
                    backlog.append(self._outgoing.get())
                backlog = self._hand(backlog, now)
            datagrams = self.endpoint.datagrams_to_send(now)
            if self._hold_first and len(datagrams) > 1:
                self._hold_first = False
                datagrams.append(datagrams.pop(0))
            for data, addr in datagrams:
                try:
                    self.sock.sendto(data, addr)
                except OSError:
                    pass

    def _hand(self, backlog: list[bytes | None], now: float) -> list[bytes | None]:
        """Give the core what it takes now; the rest waits for acknowledgements."""
        assert self._session is not None
        taken = handed = 0
        try:
            for payload in backlog:
                if payload is None:
                    self._hold_first = True
                else:
                    self.endpoint.send(self._session, payload, now)
                    handed += 1
                taken += 1
        except (QueueFull, UnknownSession):
            pass
        with self._lock:
            self.handed += handed
        return backlog[taken:]

    def _on_event(self, event: events.Event, now: float) -> None:
        if isinstance(event, events.SessionStarted):
            self._session = event.session_id
        elif isinstance(event, events.MessageDelivered):
            with self._lock:
                self.delivered += 1
        elif isinstance(event, events.MessageReceived):
            message = json.loads(event.payload)
            with self._lock:
                self.received.append(message)
            if message.get("t") == "hello" and event.session_id == self._session:
                nick, room = message["nick"], message["room"]
                for reply in (
                    {"t": "welcome", "nick": nick, "room": room},
                    {"t": "join", "room": room, "nick": nick},
                ):
                    self.endpoint.send(event.session_id, json.dumps(reply).encode(), now)
                self._welcomed.set()
