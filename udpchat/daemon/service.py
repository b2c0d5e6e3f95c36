"""The chat daemon as a twistd service: binds the UDP port, announces where clients
connect, handles SIGTERM, logs a periodic summary of dropped datagrams and of log
lines held back by the rate limits, and on stop says goodbye to every member before
releasing the port."""

from __future__ import annotations

import gc
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from udpchat.chat.server import ChatServer, ServerSettings
from udpchat.core.stats import COOKIE_REPLIES, EVICTIONS, WITHHELD
from udpchat.daemon.config import ServerConfig
from udpchat.daemon.memory import MemoryReturn, resident_bytes
from udpchat.daemon.netinfo import listening_addresses
from udpchat.daemon.udp import ChatProtocol
from udpchat.reactorclock import use_monotonic_clock

log = Logger(namespace="udpchat")


def settings_of(config: ServerConfig) -> ServerSettings:
    """The chat server's settings from the operator's [server] section."""
    return ServerSettings(
        history_lines=config.history_lines,
        max_members=config.max_members,
        idle_timeout_s=config.idle_timeout,
        handshake_rate=config.handshake_rate,
        handshake_burst=config.handshake_burst,
    )


#: How often the daemon looks whether many sessions ended, to give their memory back
#: to the system (udpchat.daemon.memory): a look is one len().
MEMORY_CHECK_INTERVAL_S = 1.0

#: Socket buffers the daemon asks for. A line to a room of N members leaves as N
#: datagrams at once and their acknowledgements come back together: with the default
#: (about 208 KiB) a busy room overflowed the receive buffer, and every datagram the
#: kernel dropped waited a retransmission timeout (200 ms or more). The kernel caps
#: the request at net.core.rmem_max / wmem_max.
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024


def _enlarge_buffers(sock: socket.socket) -> None:
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        except OSError:
            pass  # the default still works, only bursts are lost sooner


class ChatService(Service):
    """Binds the UDP port at start; at stop, says goodbye and releases it."""

    def __init__(
        self,
        config: ServerConfig,
        psk: bytes,
        reactor: Any = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """`reactor`: the global one by default, put on monotonic time; `wall` reads
        the system clock (tests give a fake reactor and clock)."""
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
            use_monotonic_clock(reactor)  # timers immune to steps of the system clock
        self._reactor: Any = reactor  # IReactorTime + IReactorUDP
        self.config = config
        node = None
        if config.cluster is not None:  # several daemons share rooms (docs/CLUSTER.md)
            from udpchat.daemon.cluster import incarnation

            node = incarnation(config.cluster.node)
        server = ChatServer(psk, settings_of(config), node=node)
        self.protocol = ChatProtocol(server, config.address_allowed, reactor, wall)
        self.cluster: Any = None
        if config.cluster is not None:
            from udpchat.daemon.cluster import ClusterLink

            self.cluster = ClusterLink(
                config.cluster, psk, self.protocol, reactor, config.idle_timeout,
                config.history_lines,
            )  # fmt: skip
        self._port: Any = None
        self._summary = LoopingCall(self.log_rejections)
        self._summary.clock = reactor
        self.memory = MemoryReturn()
        self._memory_check = LoopingCall(self.return_memory)
        self._memory_check.clock = reactor

    def startService(self) -> None:
        config = self.config
        try:
            self._port = self._reactor.listenUDP(
                config.port, self.protocol, interface=config.interface
            )
        except error.CannotListenError as exc:
            where = f"{config.interface or '*'}:{config.port}"
            print(
                f"udpchat: cannot listen on {where}: {exc.socketError}; fix: stop what uses "
                f"the port or set another [server] port in {config.path}",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(1) from None
        _enlarge_buffers(self._port.socket)
        super().startService()
        if self.cluster is not None:
            self.cluster.start()
        # Announced once the reactor runs (and SIGTERM is handled), so whoever waits
        # for this line may stop the daemon at once.
        self._reactor.callWhenRunning(self._announce)
        self._summary.start(self.config.log_rejects_interval, now=False)
        self._memory_check.start(MEMORY_CHECK_INTERVAL_S, now=False)

    def _announce(self) -> None:
        # Everything made while starting (Twisted, the config, the protocol) lives as
        # long as the daemon: out of the collector's way, its full collections look
        # only at sessions and messages. In a profile of a busy room they were 9 % of
        # the daemon's CPU, mostly walking those start-up objects again and again.
        gc.collect()
        gc.freeze()
        # twistd's own SIGTERM handler makes the process die by the signal after a
        # clean shutdown; a stop that was asked for and went well is exit status 0.
        signal.signal(signal.SIGTERM, self._on_sigterm)
        config = self.config
        port = self._port.getHost().port
        addresses = listening_addresses(config.interface)
        for address in addresses:
            shown = f"[{address}]" if ":" in address else address
            log.info("Clients can connect to {address}:{port}", address=shown, port=port)
        if not addresses:
            log.info(
                "Could not list this machine's addresses; clients connect to its name "
                "or address, port {port}",
                port=port,
            )
        log.info(
            "Listening on UDP {interface}:{port}; pre-shared key: {key} "
            "(every client needs a copy)",
            interface=config.interface or "*",
            port=port,
            key=str(config.key_file),
        )

    def _on_sigterm(self, number: int, frame: object) -> None:
        log.info("Received SIGTERM: telling members and shutting down")
        self._reactor.callFromThread(self._reactor.stop)

    def log_rejections(self) -> None:
        """One summary line of what was dropped since the last one (never per datagram),
        one of the log lines held back by the rate limits, and flood warnings."""
        counts = self.protocol.take_drops()
        evictions = {r: counts.pop(r) for r in EVICTIONS & counts.keys()}
        withheld = sum(counts.pop(r) for r in WITHHELD & counts.keys())
        cookies = sum(counts.pop(r) for r in COOKIE_REPLIES & counts.keys())
        if cookies:
            # Over the handshake budget: message 1s must return a cookie for their
            # source address; forged sources cannot, newcomers pay one round trip.
            log.warn(
                "Under handshake load: asking for cookies; answered {n} handshakes with "
                "a cookie reply (PROTOCOL.md 4.7)",
                n=cookies,
            )
        if withheld:
            # A session moved to an address that has not answered: maybe a member's
            # new NAT mapping, maybe a forged source aimed at a third party.
            log.info(
                "Withheld {n} datagrams from addresses not yet proven (PROTOCOL.md 5.3)",
                n=withheld,
            )
        if counts:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))
            log.info(
                "Dropped {total} datagrams without answer ({reasons})",
                total=sum(counts.values()),
                reasons=reasons,
            )
        suppressed = self.protocol.take_suppressed()
        if suppressed:
            # A key holder flooding (roaming, renames, ...) or forged sources refused.
            log.info(
                "Suppressed {total} log lines over the rate limits ({kinds})",
                total=sum(suppressed.values()),
                kinds=", ".join(f"{kind}: {n}" for kind, n in sorted(suppressed.items())),
            )
        if evictions:
            # Bounded tables forgetting entries early: someone is flooding handshakes.
            log.warn(
                "Handshake flood: {evictions}",
                evictions=", ".join(f"{r}: {n}" for r, n in sorted(evictions.items())),
            )

    def return_memory(self) -> None:
        """Give memory back to the system once many sessions have ended: freed,
        it stays with the process otherwise (udpchat.daemon.memory)."""
        sessions = len(self.protocol.server.endpoint)
        before = resident_bytes()
        if self.memory.check(sessions) and before is not None:
            after = resident_bytes() or 0
            log.info(
                "Sessions ended: gave memory back, RSS {before:.1f} -> {after:.1f} MB "
                "({sessions} sessions left)",
                before=before / 1e6,
                after=after / 1e6,
                sessions=sessions,
            )

    def stopService(self) -> Deferred[object]:
        super().stopService()
        for call in (self._summary, self._memory_check):
            if call.running:
                call.stop()
        self.log_rejections()
        done = self.protocol.shutdown()
        if self.cluster is not None:  # after the goodbyes went to the engine too
            done.addCallback(lambda _: self.cluster.stop())

        def stop_listening(_: object) -> object:
            port, self._port = self._port, None
            return None if port is None else port.stopListening()

        return done.addCallback(stop_listening)
