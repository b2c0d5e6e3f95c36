"""The chat daemon as a twistd service: binds the UDP port, announces where clients
connect, handles SIGTERM, logs a periodic summary of dropped datagrams and of log
lines held back by the rate limits, and on stop says goodbye to every member before
releasing the port. With a history file it restores the rooms' history when made,
writes it as the chat goes, and syncs it to the disk from a worker thread."""

from __future__ import annotations

import gc
import signal
import socket
import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from udpchat.chat.server import ChatServer, ServerSettings
from udpchat.core.stats import COOKIE_REPLIES, EVICTIONS, WITHHELD
from udpchat.daemon.config import ServerConfig
from udpchat.daemon.history import HistoryFile, HistoryFileError
from udpchat.daemon.memory import MemoryReturn, resident_bytes
from udpchat.daemon.netinfo import listening_addresses
from udpchat.daemon.udp import ChatProtocol

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

#: How often the history file is synced to the disk (a checkpoint in a worker thread),
#: if anything was written: what a power loss can cost, at most, besides the checkpoint
#: itself (udpchat.daemon.history).
HISTORY_CHECKPOINT_INTERVAL_S = 1.0
#: A failing checkpoint is logged at most once per this many seconds.
HISTORY_ERROR_LOG_INTERVAL_S = 60.0

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
    """Binds the UDP port at start; at stop, says goodbye and releases it.

    Made before twistd forks (makeService): the history file is checked and read
    here, so that a file the daemon cannot use stops it with one line (HistoryFileError),
    and opened for writing only in startService, after the fork."""

    def __init__(self, config: ServerConfig, psk: bytes, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._reactor: Any = reactor  # IReactorTime + IReactorUDP
        self.config = config
        server = ChatServer(psk, settings_of(config))
        self.history = self._restore_history(server, psk)
        self.protocol = ChatProtocol(server, config.address_allowed, reactor, self.history)
        self._checkpoints = LoopingCall(self.checkpoint_history)
        self._checkpoints.clock = reactor
        self._checkpoint: Deferred[None] | None = None  # the one in a worker thread
        self._checkpoint_error_at: float | None = None
        self._port: Any = None
        self._summary = LoopingCall(self.log_rejections)
        self._summary.clock = reactor
        self.memory = MemoryReturn()
        self._memory_check = LoopingCall(self.return_memory)
        self._memory_check.clock = reactor

    def _restore_history(self, server: ChatServer, psk: bytes) -> HistoryFile | None:
        """The history file's rooms, put back into the server; the file, or None if
        the history is in memory only. Raises HistoryFileError."""
        config = self.config
        if config.history_file is None or not config.history_lines:
            return None
        history = HistoryFile(
            config.history_file,
            psk,
            config.history_lines,
            setting=f"[server] history_file in {config.path}",
        )
        rooms = history.recover()
        server.restore_history(rooms, self._reactor.seconds())
        lines = sum(len(kept) for _, kept in rooms)
        log.info(
            "Room history is kept in {path}: restored {lines} line{s} of {rooms} room{rs}",
            path=str(history.path),
            lines=lines,
            s="" if lines == 1 else "s",
            rooms=len(rooms),
            rs="" if len(rooms) == 1 else "s",
        )
        return history

    def startService(self) -> None:
        config = self.config
        if self.history is not None:
            try:
                self.history.open()
            except HistoryFileError as exc:
                print(f"udpchat: {exc}", file=sys.stderr, flush=True)
                raise SystemExit(1) from None
            self._checkpoints.start(HISTORY_CHECKPOINT_INTERVAL_S, now=False)
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
        if self.history is None and config.history_lines:
            log.info("Room history is kept in memory only (history_file is empty)")
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

    def checkpoint_history(self) -> Deferred[None] | None:
        """Sync what was written to the history file to the disk, in a worker thread
        (the fsyncs must not hold up the reactor); nothing if nothing was written.
        The LoopingCall waits for it: one checkpoint at a time."""
        history = self.history
        if history is None or not history.unsynced:
            return None
        history.unsynced = False
        pool = self._reactor.getThreadPool()
        done: Deferred[None] = deferToThreadPool(self._reactor, pool, history.checkpoint)
        done.addErrback(self._checkpoint_failed)
        self._checkpoint = done
        return done

    def _checkpoint_failed(self, failure: Any) -> None:
        if self.history is None:
            return  # stopping: close() checkpoints once more
        now = self._reactor.seconds()
        last = self._checkpoint_error_at
        if last is None or now >= last + HISTORY_ERROR_LOG_INTERVAL_S:
            self._checkpoint_error_at = now
            log.error(
                "Could not sync the history file {path} to the disk ({error}); its lines "
                "are safe from a crash of the daemon, not from a power loss (logged at "
                "most once a minute)",
                path=str(self.history.path),
                error=str(failure.value),
            )
        self.history.unsynced = True  # try again next time

    def _close_history(self, result: object) -> object:
        """After the last write (the goodbye pass): wait for a checkpoint in flight,
        then checkpoint, cut the WAL back and close."""
        history, self.history = self.history, None
        if history is None:
            return result
        self.protocol.history = None
        in_flight = self._checkpoint
        if in_flight is None or in_flight.called:
            history.close()
            return result
        return in_flight.addBoth(lambda _: history.close()).addBoth(lambda _: result)

    def stopService(self) -> Deferred[object]:
        super().stopService()
        for call in (self._summary, self._memory_check, self._checkpoints):
            if call.running:
                call.stop()
        self.log_rejections()
        done = self.protocol.shutdown()

        def stop_listening(_: object) -> object:
            port, self._port = self._port, None
            return None if port is None else port.stopListening()

        return done.addCallback(stop_listening).addBoth(self._close_history)
