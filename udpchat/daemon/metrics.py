"""The daemon's metrics for Prometheus (`metrics = 127.0.0.1:9120`): members, rooms,
sessions, lines, datagrams, drops by reason, handshakes, retransmissions, queued
bytes and the history file's writes, at http://ADDRESS:PORT/metrics in the text
exposition format (version 0.0.4) that Prometheus and its kin scrape.

The page is made on demand, in the reactor thread, from counters the daemon keeps
anyway: nothing is measured between scrapes, and nothing is read from another
thread while the reactor changes it. It holds numbers only: its labels are drop
reasons (a fixed list, udpchat.core.stats) and kinds of line, never a nick, a room
name or a line. The endpoint has no authentication: anyone who reaches the port
reads the numbers, so it listens on loopback unless told otherwise.
"""

from __future__ import annotations

import errno
import math
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from udpchat.core.stats import DropReason
from udpchat.daemon.memory import resident_bytes

if TYPE_CHECKING:
    from udpchat.daemon.service import ChatService

log = Logger(namespace="udpchat")

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
#: Drop reasons counted outside the core (udpchat.chat.server, udpchat.daemon.udp).
OTHER_DROP_REASONS = ("address-refused", "internal-error", "send-error")
#: Every drop reason is shown from the start, at 0: rate() then sees the first drop.
DROP_REASONS: tuple[str, ...] = (*get_args(DropReason), *OTHER_DROP_REASONS)
#: An HTTP connection idle this long is closed (a scrape takes milliseconds).
HTTP_TIMEOUT_S = 30

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Family:
    """One metric and its samples. A counter's name ends in "_total"."""

    name: str
    kind: Literal["counter", "gauge"]
    help: str
    samples: tuple[tuple[Labels, float], ...]


def gauge(name: str, help: str, value: float) -> Family:
    return Family(name, "gauge", help, (((), value),))


def counter(name: str, help: str, value: float, labels: Labels = ()) -> Family:
    return Family(name, "counter", help, ((labels, value),))


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def exposition(families: Sequence[Family]) -> bytes:
    """The families in the text exposition format, version 0.0.4."""
    out: list[str] = []
    for family in families:
        out.append(f"# HELP {family.name} {family.help}")
        out.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            shown = ",".join(f'{key}="{_label_value(text)}"' for key, text in labels)
            out.append(f"{family.name}{{{shown}}} {_number(value)}" if shown else
                       f"{family.name} {_number(value)}")  # fmt: skip
    return ("\n".join(out) + "\n").encode()


def collect(chat: ChatService, started_at: float) -> list[Family]:
    """The daemon's numbers now (reactor thread)."""
    protocol = chat.protocol
    server = protocol.server
    rules = server.rules
    endpoint = server.endpoint
    drops = protocol.drops_total()
    families = [
        gauge("udpchat_members", "Members (sessions that said hello).", rules.member_count),
        gauge("udpchat_members_max", "The max_members setting.", chat.config.max_members),
        gauge("udpchat_rooms", "Rooms with members.", rules.room_count),
        gauge(
            "udpchat_rooms_kept",
            "Rooms kept: with members, or empty and kept for their history.",
            rules.kept_room_count,
        ),
        gauge(
            "udpchat_sessions",
            "Sessions of the protocol core, established or completing a handshake.",
            len(endpoint),
        ),
        gauge(
            "udpchat_send_queue_bytes",
            "Bytes the sessions' send queues are charged with (waiting or unacknowledged).",
            endpoint.send_queue_bytes(),
        ),
        Family(
            "udpchat_lines_relayed_total",
            "counter",
            "Chat lines relayed: say/me accepted for a room, private messages passed on.",
            (
                ((("kind", "room"),), rules.lines_relayed),
                ((("kind", "private"),), rules.private_relayed),
            ),
        ),
        counter(
            "udpchat_datagrams_received_total", "Datagrams received.", protocol.datagrams_received
        ),
        counter("udpchat_datagrams_sent_total", "Datagrams sent.", protocol.datagrams_sent),
        counter("udpchat_received_bytes_total", "UDP bytes received.", protocol.bytes_received),
        counter("udpchat_sent_bytes_total", "UDP bytes sent.", protocol.bytes_sent),
        Family(
            "udpchat_dropped_datagrams_total",
            "counter",
            "Datagrams dropped without answer, by reason (PROTOCOL.md; some reasons count "
            "evictions from bounded tables, cookie replies or withheld datagrams).",
            tuple(
                ((("reason", reason),), drops.get(reason, 0))
                for reason in sorted({*DROP_REASONS, *drops})
            ),
        ),
        counter("udpchat_handshakes_total", "Handshakes completed.", server.handshakes),
        counter("udpchat_rekeys_total", "Rekeys of established sessions.", server.rekeys),
        counter(
            "udpchat_retransmissions_total",
            "Messages sent again after a loss or a retransmission timeout.",
            endpoint.stats.retransmissions,
        ),
        gauge("udpchat_start_time_seconds", "When the daemon started (Unix time).", started_at),
    ]
    history = chat.history
    if history is not None:
        families += [
            counter(
                "udpchat_history_lines_written_total",
                "Lines written to the history file.",
                history.lines_written,
            ),
            counter(
                "udpchat_history_write_errors_total",
                "Writes to the history file that failed (their lines kept in memory only).",
                history.write_errors,
            ),
            counter(
                "udpchat_history_write_seconds_total",
                "Time the reactor spent writing the history file.",
                history.write_seconds,
            ),
        ]
    rss = resident_bytes()
    if rss is not None:
        families.append(gauge("process_resident_memory_bytes", "Resident memory.", rss))
    return families


class MetricsPage(Resource):
    """GET /metrics: the exposition; anything else: 404 with a pointer."""

    isLeaf = True

    def __init__(self, families: Callable[[], Sequence[Family]]) -> None:
        super().__init__()
        self._families = families

    def render_GET(self, request: Request) -> bytes:
        if request.path != b"/metrics":
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"udpchat: the metrics are at /metrics\n"
        request.setHeader(b"content-type", CONTENT_TYPE)
        return exposition(self._families())


class _QuietSite(Site):
    """No access log line per scrape, no "Starting factory" lines."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


class MetricsError(Exception):
    """The metrics address cannot be had; the message is one line with the fix.
    `transient`: the port is in use (a later start may work)."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class MetricsService(Service):
    """Serves MetricsPage over HTTP while the daemon runs. The TCP socket is bound when
    the service is made (in makeService, before twistd forks), so that a taken port
    ends the start with one line and an exit status, as the UDP port does; the
    reactor adopts it at start."""

    def __init__(self, address: tuple[str, int], chat: ChatService, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._reactor: Any = reactor  # IReactorSocket
        self.address = address
        self._chat = chat
        self._started_at = time.time()
        self.site = _QuietSite(MetricsPage(lambda: collect(chat, self._started_at)))
        self.site.timeOut = HTTP_TIMEOUT_S
        self._port: Any = None
        self._socket: socket.socket | None = self._bind()

    @property
    def where(self) -> str:
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _bind(self) -> socket.socket:
        host, port = self.address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(50)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            in_use = exc.errno == errno.EADDRINUSE
            fix = "stop what uses the port or set another" if in_use else "set another address in"
            raise MetricsError(
                f"cannot serve metrics on {self.where}: {exc.strerror}; fix: {fix} "
                f"[server] metrics in {self._chat.config.path}",
                transient=in_use,
            ) from None
        return sock

    def startService(self) -> None:
        sock, self._socket = self._socket, None
        if sock is None:
            sock = self._bind()
        try:
            # The port works on its own duplicate of the descriptor.
            self._port = self._reactor.adoptStreamPort(sock.fileno(), sock.family, self.site)
        finally:
            sock.close()
        super().startService()
        log.info(
            "Serving metrics at http://{where}/metrics (no authentication: anyone who "
            "reaches that address reads the numbers)",
            where=self.where,
        )

    def stopService(self) -> Any:
        super().stopService()
        port, self._port = self._port, None
        return None if port is None else port.stopListening()
