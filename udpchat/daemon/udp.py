"""The daemon's UDP adapter: one DatagramProtocol over the sans-IO ChatServer.

It checks allow/deny, feeds datagrams in, hands the lines for the history file over
(before anything is written: a line is kept before its acknowledgement leaves),
writes what comes out, keeps one reactor timer at the server's next deadline, turns
the server's log entries into log lines and counts datagrams for the metrics. Every
chat rule and timer policy lives in udpchat.chat.server.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from udpchat.chat.rules import Forget, LogEvent, Remember
from udpchat.chat.server import ChatServer

#: An unexpected exception (a bug) is logged with its traceback at most once per this
#: many seconds; the others are counted as "internal-error" in the summary.
TRACEBACK_LOG_INTERVAL_S = 60.0

log = Logger(namespace="udpchat")

_TEXTS = {
    "join": "{nick} joined {room} from {addr}",
    "leave": "{nick} left ({detail}) from {addr}",
    "timeout": "{nick} timed out at {addr}",
    "rename": "{detail} is now known as {nick} ({addr})",
    "move": "{nick} moved from {detail} to {room}",
    "takeover": "{nick} reconnected from {addr}",
    "refused": "Refused a hello from {addr}: {detail}",
    "roamed": "Session of {nick} moved from {old} to {addr}",
    "address-refused": "Refused {addr}: its address is not allowed by allow/deny "
    "(silently; logged once a minute)",
    "server-full": "Refused {addr}: the member limit ({limit}) is reached "
    "(silently; logged once a minute)",
    "flood": "Closing the session of {nick} at {addr}: it kept sending past flow "
    "control ({detail} lines waiting for the room's rate)",
    "queue-full": "Closing the session of {nick} at {addr}: its send queue is full "
    "({detail} messages it never acknowledged; the room sees it time out)",
    "key-retired": "Closing the session of {nick} at {addr}: it still uses the previous "
    "key, whose overlap has ended (it was told to get the new key)",
    "renamed": "{detail} is now known as {nick} ({addr}): another member of the cluster "
    "holds {detail} (taken while the cluster was split)",
    "split": "Cluster: split: serving {detail} on this daemon alone until Redis answers; "
    "what its members say is kept for the others",
    "merged": "Cluster: merged again: {detail}",
}


#: How a dual-stack ("::") socket spells an IPv4 client: ::ffff:a.b.c.d (RFC 4291 2.5.5.2).
IPV4_MAPPED_PREFIX = "::ffff:"


class HistorySink(Protocol):
    """Where the rooms' history is kept beyond memory (udpchat.daemon.history)."""

    def write(self, changes: Sequence[Remember | Forget]) -> None: ...


def format_addr(addr: Any) -> str:
    """An address as an operator writes it: 192.0.2.7:5000, [2001:db8::7]:5000; an
    IPv4 client of a dual-stack socket shows as the IPv4 address it is, the way
    allow/deny match it."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = str(addr[0]), addr[1]
        if host[: len(IPV4_MAPPED_PREFIX)].lower() == IPV4_MAPPED_PREFIX and "." in host:
            host = host[len(IPV4_MAPPED_PREFIX) :]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(addr)


class ChatProtocol(DatagramProtocol):
    """The UDP face of the chat server (see module docstring)."""

    noisy = False  # the service logs what matters, in the operator's words

    def __init__(
        self,
        server: ChatServer,
        allowed: Callable[[str], bool],
        clock: Any,
        wall: Callable[[], float] = time.time,
        history: HistorySink | None = None,
    ) -> None:
        """`clock`: the reactor, on monotonic time (udpchat.reactorclock); `wall`
        reads the system clock, for the Unix time in handshakes and history."""
        self.server = server
        self.allowed = allowed  # the allow/deny lists; a reload may replace them
        self.history = history
        # For the metrics: what came in and went out, and every drop ever counted
        # (take_drops empties the server's counters for the periodic summary).
        self.datagrams_received = 0
        self.bytes_received = 0
        self.datagrams_sent = 0
        self.bytes_sent = 0
        self._drops_unsummarised: Counter[str] = Counter()
        self._drops_total: Counter[str] = Counter()
        self._clock: Any = clock  # IReactorTime (zope interfaces are opaque to mypy)
        self._wall = wall
        self._timer: Any = None  # the one IDelayedCall
        self._timer_at: float | None = None
        self._internal_errors = 0
        self._send_errors = 0
        self._traceback_logged_at: float | None = None
        self._stopped: Deferred[None] | None = None
        # Called after each datagram, timer and call(): a cluster's engine adapter
        # (udpchat.daemon.cluster) takes the server's requests for the engine there.
        self.after_service: Callable[[], None] | None = None

    def _now(self) -> float:
        now: float = self._clock.seconds()
        self.server.set_wall_clock(self._wall(), now)
        return now

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        now = self._now()
        self.datagrams_received += 1
        self.bytes_received += len(data)
        try:
            if self.allowed(addr[0]):
                self.server.receive_datagram(data, addr, now)
            else:
                self.server.address_refused(addr, now)
        except Exception:
            self._bug(now)
        self._service(now)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._now()
        try:
            self.server.handle_timer(now)
        except Exception:
            self._bug(now)
        self._service(now)

    def set_keys(self, psk: bytes, previous: bytes | None) -> int:
        """Key rotation (ChatServer.set_keys): returns how many members on a key no
        longer accepted were told and are being closed."""
        now = self._now()
        closed = 0
        try:
            closed = self.server.set_keys(psk, previous, now)
        except Exception:
            self._bug(now)
        self._service(now)
        return closed

    def call(self, feed: Callable[[float], None]) -> None:
        """Give the server something that is neither a datagram nor a timer (the
        cluster's engine answered): `feed(now)`, then write and reschedule."""
        now = self._now()
        try:
            feed(now)
        except Exception:
            self._bug(now)
        self._service(now)

    def shutdown(self) -> Deferred[None]:
        """Say goodbye (see ChatServer.shutdown); fires once every session is closed."""
        self._stopped = Deferred()
        now = self._now()
        try:
            self.server.shutdown(now)
        except Exception:
            self._bug(now)
        self._service(now)
        return self._stopped

    def take_drops(self) -> dict[str, int]:
        """Datagrams dropped since the last call, by reason (the periodic summary)."""
        self._collect_drops()
        out, self._drops_unsummarised = self._drops_unsummarised, Counter()
        return dict(out)

    def drops_total(self) -> dict[str, int]:
        """Datagrams dropped since the start, by reason (the metrics)."""
        self._collect_drops()
        return dict(self._drops_total)

    def _collect_drops(self) -> None:
        drops = Counter(self.server.take_drops())
        if self._internal_errors:
            drops["internal-error"] += self._internal_errors
        if self._send_errors:
            drops["send-error"] += self._send_errors
        self._internal_errors = self._send_errors = 0
        self._drops_unsummarised.update(drops)
        self._drops_total.update(drops)

    def take_suppressed(self) -> dict[str, int]:
        """Log lines the server held back (over its limits) since the last call."""
        return self.server.take_suppressed()

    def _bug(self, now: float) -> None:
        # A bug must cost one datagram or one tick, never the daemon or its timer.
        self._internal_errors += 1
        last = self._traceback_logged_at
        if last is None or last + TRACEBACK_LOG_INTERVAL_S <= now:
            self._traceback_logged_at = now
            log.failure("Internal error while handling chat traffic (a bug in udpchat)")

    def _service(self, now: float) -> None:
        try:
            # What the core acknowledged in this pass is kept (history file) and
            # handed to the cluster's engine before the acknowledgements leave.
            self._keep_history()
            if self.after_service is not None:
                self.after_service()
            self._write(now)
            for entry in self.server.take_log():
                self._log(entry)
        except Exception:
            self._bug(now)
        finally:  # whatever happened, the one timer stays set
            try:
                self._reschedule(self.server.get_timer(), now)
            except Exception:
                self._bug(now)
        if self.server.done and self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)

    def _keep_history(self) -> None:
        # Before _write, and every datagram leaves through _write: whatever the core
        # acknowledged in this pass is kept before the acknowledgement goes out.
        changes = self.server.take_history()
        if changes and self.history is not None:
            self.history.write(changes)

    def _write(self, now: float) -> None:
        out = self.server.datagrams_to_send(now)
        transport: Any = self.transport  # IUDPTransport (opaque to mypy)
        if not out or transport is None:
            return
        # The socket itself: Port.write re-validates the address three times per
        # datagram, which showed in profiles of a busy room; the core's are valid.
        # A room line is one datagram per member: the counters are added up once.
        sendto = transport.socket.sendto
        sent = sent_bytes = 0
        try:
            for data, addr in out:
                try:
                    sendto(data, addr)
                except OSError:
                    self._send_errors += 1  # UDP may lose it; the core retransmits
                else:
                    sent += 1
                    sent_bytes += len(data)
        finally:
            self.datagrams_sent += sent
            self.bytes_sent += sent_bytes

    def _reschedule(self, at: float | None, now: float) -> None:
        if self._timer is not None and self._timer.active():
            if at == self._timer_at:
                return
            self._timer.cancel()
        self._timer, self._timer_at = None, at
        if at is not None:
            self._timer = self._clock.callLater(max(0.0, at - now), self._on_timer)

    def _log(self, entry: LogEvent) -> None:
        log.info(
            _TEXTS[entry.kind],
            nick=entry.nick or "(no nick yet)", room=entry.room, detail=entry.detail,
            addr=format_addr(entry.addr), old=format_addr(entry.old_addr),
            limit=self.server.settings.max_members,
        )  # fmt: skip
