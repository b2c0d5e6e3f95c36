"""The chat daemon as a twistd service: serves the UDP socket the tap opened (or
systemd passed), announces where clients connect, handles SIGTERM, reloads on SIGHUP
(settings and keys, key rotation), logs a periodic summary of dropped datagrams and of
log lines held back by the rate limits, and on stop says goodbye to every member
before releasing the port. With a history file it restores the rooms' history when
made, writes it as the chat goes, and syncs it to the disk from a worker thread."""

from __future__ import annotations

import gc
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from udpchat.chat.server import ChatServer, ServerSettings
from udpchat.core.stats import COOKIE_REPLIES, EVICTIONS, WITHHELD
from udpchat.daemon.config import ConfigError, ServerConfig, load_config
from udpchat.daemon.history import HistoryFile, HistoryFileError
from udpchat.daemon.listen import Listening, open_socket, where
from udpchat.daemon.logs import LEVELS
from udpchat.daemon.memory import MemoryReturn, resident_bytes
from udpchat.daemon.netinfo import listening_addresses
from udpchat.daemon.rotation import PreviousKey, load_previous_key, when
from udpchat.daemon.udp import ChatProtocol
from udpchat.fingerprint import fingerprint
from udpchat.keys import KeyFileError, load_key
from udpchat.reactorclock import use_monotonic_clock

log = Logger(namespace="udpchat")


#: What a reload (SIGHUP) applies while members chat; any other change of the config
#: file needs a restart, and the reload's log line says so. key_file and key_overlap
#: are read again too (the keys themselves, PROTOCOL.md 4.12).
LIVE_SETTINGS = frozenset(
    {
        "allow",
        "deny",
        "max_members",
        "history_lines",
        "log_level",
        "log_rejects_interval",
        "key_file",
        "key_overlap",
    }
)


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
    """Serves the UDP socket from start; at stop, says goodbye and releases it.

    Made before twistd forks (makeService): the history file is checked and read
    here, so that a file the daemon cannot use stops it with one line (HistoryFileError),
    and opened for writing only in startService, after the fork.

    `listening` is the socket the tap opened before twistd daemonized; without it,
    startService opens one (a failure is then a ListenError from startService).
    `reactor`: the global one by default, put on monotonic time; `wall` reads the
    system clock (tests give a fake reactor and clock)."""

    def __init__(
        self,
        config: ServerConfig,
        psk: bytes,
        reactor: Any = None,
        listening: Listening | None = None,
        wall: Callable[[], float] = time.time,
        previous: PreviousKey | None = None,
    ) -> None:
        """`previous`: a rotated-out key still in its overlap (udpchat.daemon.rotation)."""
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
            use_monotonic_clock(reactor)  # timers immune to steps of the system clock
        self._reactor: Any = reactor  # IReactorTime + IReactorUDP
        self.config = config
        # Shown at start-up: a client whose key differs gets no answer at all, and
        # compares its key's fingerprint with this one (udpchat.fingerprint).
        self.key_fingerprint = fingerprint(psk)
        node = None
        if config.cluster is not None:  # several daemons share rooms (docs/CLUSTER.md)
            from udpchat.daemon.cluster import incarnation

            node = incarnation(config.cluster.node)
        server = ChatServer(psk, settings_of(config), node=node)
        self._psk, self._previous = psk, previous
        if previous is not None:
            server.set_keys(psk, previous.psk, 0.0)  # no session yet: nobody to tell
        self._retire_call: Any = None  # the end of the previous key's overlap
        self._wall = wall
        self.history = self._restore_history(server, psk, previous)
        self.protocol = ChatProtocol(
            server, config.address_allowed, reactor, wall=wall, history=self.history
        )
        self._checkpoints = LoopingCall(self.checkpoint_history)
        self._checkpoints.clock = reactor
        self._checkpoint: Deferred[None] | None = None  # the one in a worker thread
        self._checkpoint_error_at: float | None = None
        self.cluster: Any = None
        if config.cluster is not None:
            from udpchat.daemon.cluster import ClusterLink

            self.cluster = ClusterLink(
                config.cluster, psk, self.protocol, reactor, config.idle_timeout,
                config.history_lines,
            )  # fmt: skip
        self._port: Any = None
        self._listening = listening
        self._from_systemd = False
        self._summary = LoopingCall(self.log_rejections)
        self._summary.clock = reactor
        self.memory = MemoryReturn()
        self._memory_check = LoopingCall(self.return_memory)
        self._memory_check.clock = reactor

    def _restore_history(
        self, server: ChatServer, psk: bytes, previous: PreviousKey | None
    ) -> HistoryFile | None:
        """The history file's rooms, put back into the server; the file, or None if
        the history is in memory only. Raises HistoryFileError."""
        config = self.config
        if config.history_file is None or not config.history_lines or config.cluster:
            # In a cluster the rooms' history lives in the engine (docs/CLUSTER.md).
            return None
        history = HistoryFile(
            config.history_file,
            psk,
            config.history_lines,
            setting=f"[server] history_file in {config.path}",
            previous=None if previous is None else previous.psk,
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
                # It was checked before the fork: this is rare (the disk filled up
                # since, say). Losing the file is better than refusing the chat.
                log.error(
                    "{why}; keeping the rooms' history in memory only until a restart",
                    why=str(exc),
                )
                self.history = self.protocol.history = None
            else:
                self._checkpoints.start(HISTORY_CHECKPOINT_INTERVAL_S, now=False)
        listening = self._listening or open_socket(config.interface, config.port, config.path)
        self._listening = None
        sock = listening.sock
        # The port works on its own duplicate of the descriptor.
        self._port = self._reactor.adoptDatagramPort(sock.fileno(), sock.family, self.protocol)
        sock.close()
        self._from_systemd = listening.from_systemd
        _enlarge_buffers(self._port.socket)
        super().startService()
        if self.cluster is not None:
            self.cluster.start()
        # Announced once the reactor runs (and SIGTERM is handled), so whoever waits
        # for this line may stop the daemon at once.
        self._reactor.callWhenRunning(self._announce)
        self._summary.start(self.config.log_rejects_interval, now=False)
        self._memory_check.start(MEMORY_CHECK_INTERVAL_S, now=False)
        self._schedule_retirement()

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
        # systemctl reload (ExecReload=): re-read the config and keys, keep everyone.
        signal.signal(signal.SIGHUP, self._on_sighup)
        config = self.config
        host = self._port.getHost()
        port = host.port
        interface = "" if host.host == "0.0.0.0" else host.host
        at = where(interface, port)
        if self._from_systemd:
            log.info("Serving the UDP socket systemd passed (socket activation): {where}", where=at)
            configured = "" if config.interface == "0.0.0.0" else config.interface
            if port != config.port or configured not in ("", interface):
                log.warn(
                    "The socket systemd passed is on {where}, not on {config_where} as "
                    "[server] interface and port in {path} say; serving {where}. Fix: "
                    "make udpchat.socket's ListenDatagram= and the config agree",
                    where=at,
                    config_where=where(configured, config.port),
                    path=str(config.path),
                )
        addresses = listening_addresses(interface)
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
            "Listening on UDP {where}; pre-shared key: {key}, "
            "fingerprint {fingerprint} (every client needs a copy)",
            where=at,
            key=str(config.key_file),
            fingerprint=self.key_fingerprint,
        )
        if self._previous is not None:
            log.info(
                "Key rotation: the previous key {path} is accepted too, until {until} "
                "(key_overlap); members on it are then told to get the new key",
                path=self._previous.path,
                until=when(self._previous.until),
            )

    def _on_sigterm(self, number: int, frame: object) -> None:
        log.info("Received SIGTERM: telling members and shutting down")
        self._reactor.callFromThread(self._reactor.stop)

    def _on_sighup(self, number: int, frame: object) -> None:
        self._reactor.callFromThread(self.reload)

    # -- reload and key rotation ---------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: read the config file and the keys again and apply what can change
        while members chat (LIVE_SETTINGS, the keys); say what needs a restart. A
        config or key that cannot be used changes nothing: the daemon goes on with what
        it had, and says why."""
        old = self.config
        try:
            new = load_config(old.path)
            psk = load_key(new.key_file)
            previous, expired = load_previous_key(new, self._wall())
        except (ConfigError, KeyFileError) as exc:
            log.error(
                "Reload failed; still running with the configuration loaded before: {why}",
                why=str(exc),
            )
            return
        changed = [f.name for f in fields(new) if getattr(new, f.name) != getattr(old, f.name)]
        live = [name for name in changed if name in LIVE_SETTINGS]
        later = [name for name in changed if name not in LIVE_SETTINGS]
        self.config = new
        self.protocol.allowed = new.address_allowed
        self.protocol.server.update_settings(settings_of(new))
        if self.history is not None and new.history_lines:
            self.history.max_lines = new.history_lines
        log_filter = getattr(self.parent, "log_filter", None)
        if log_filter is not None:
            log_filter.level = LEVELS[new.log_level]
        if "log_rejects_interval" in live and self._summary.running:
            self._summary.stop()
            self._summary.start(new.log_rejects_interval, now=False)
        rotated = self._set_keys(psk, previous, expired)
        log.info(
            "Reloaded {path}: {applied}{later}",
            path=str(new.path),
            applied=(f"applied {', '.join(live)}" if live else "no setting changed")
            + (f"; {rotated}" if rotated else ""),
            later=(
                f"; {', '.join(later)} changed but take effect only after a restart"
                if later
                else ""
            ),
        )

    def _set_keys(self, psk: bytes, previous: PreviousKey | None, expired: str | None) -> str:
        """Apply the keys read at a reload; what changed, for the reload's log line."""
        before = (self._psk, None if self._previous is None else self._previous.psk)
        after = (psk, None if previous is None else previous.psk)
        if expired is not None:
            log.info(expired)
        if before == after:
            old_until = None if self._previous is None else self._previous.until
            self._previous = previous
            if previous is not None and previous.until != old_until:
                self._schedule_retirement()  # key_overlap changed
                return f"the previous key is accepted until {when(previous.until)}"
            return ""
        self._psk, self._previous = psk, previous
        self.key_fingerprint = fingerprint(psk)
        closed = self.protocol.set_keys(psk, after[1])
        if self.history is not None and before[0] != psk:
            self.history.rekey(psk)  # the file follows the current key
        self._schedule_retirement()
        if previous is not None:
            return (
                f"key rotation: the new key {self.config.key_file} (fingerprint "
                f"{self.key_fingerprint}) and, until {when(previous.until)}, the previous "
                f"key {previous.path} (fingerprint {fingerprint(previous.psk)}) are accepted"
            )
        text = f"the key {self.config.key_file} changed"
        if closed:
            text += f"; {closed} members on the key no longer accepted were told and closed"
        return text

    def _schedule_retirement(self) -> None:
        if self._retire_call is not None and self._retire_call.active():
            self._retire_call.cancel()
        self._retire_call = None
        if self._previous is not None:
            delay = max(0.0, self._previous.until - self._wall())
            self._retire_call = self._reactor.callLater(delay, self._retire_previous_key)

    def _retire_previous_key(self) -> None:
        """The end of the overlap: members still on the previous key are told to get
        the new one and closed (PROTOCOL.md 4.12)."""
        self._retire_call = None
        previous, self._previous = self._previous, None
        if previous is None:
            return
        closed = self.protocol.set_keys(self._psk, None)
        log.info(
            "The previous key's overlap ended: {closed} members still on it were told "
            "to get the new key and disconnected; {path} can be deleted",
            closed=closed,
            path=previous.path,
        )

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
        if self._retire_call is not None and self._retire_call.active():
            self._retire_call.cancel()
        for call in (self._summary, self._memory_check, self._checkpoints):
            if call.running:
                call.stop()
        self.log_rejections()
        done = self.protocol.shutdown()
        if self.cluster is not None:  # after the goodbyes went to the engine too
            done.addCallback(lambda _: self.cluster.stop())

        def stop_listening(_: object) -> object:
            port, self._port = self._port, None
            return None if port is None else port.stopListening()

        return done.addCallback(stop_listening).addBoth(self._close_history)
