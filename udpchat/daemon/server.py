"""The chat daemon's Twisted side: one DatagramProtocol over the sans-IO core.

ChatProtocol moves bytes between the UDP port and a ServerEndpoint, feeds the
endpoint's events to a ChatServer, sends what the ChatServer says, and keeps one
reactor timer at the endpoint's next deadline. All protocol and chat logic lives in
the core (udpchat.core.endpoint) and the rules (udpchat.chat.rules).
"""

from __future__ import annotations

import signal
import sys
from collections import Counter, OrderedDict
from typing import Any

from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from udpchat.chat.rules import ChatServer, LogEvent
from udpchat.core import events
from udpchat.core.endpoint import MessageTooLarge, QueueFull, ServerEndpoint, UnknownSession
from udpchat.core.limits import ProtocolConfig
from udpchat.daemon.config import ServerConfig
from udpchat.daemon.netinfo import listening_addresses

#: A refused source address is logged at most once per this many seconds ...
REFUSAL_LOG_INTERVAL_S = 60.0
#: ... and this many such addresses are remembered (bounded: sources can be spoofed) ...
REFUSAL_LOG_MAX_ADDRESSES = 1024
#: ... and, since spoofed sources are endless, at most this many refusal lines are
#: written per interval in all; the rest only count in the periodic summary.
REFUSAL_LOG_MAX_LINES = 10

SHUTDOWN_TEXT = "stopped by its operator"
#: A session that has not said a valid hello this long after its handshake is closed
#: (it would otherwise hold a member slot without being a member).
HELLO_DEADLINE_S = 10.0
#: On shutdown, wait at most this long for members to acknowledge the notice.
SHUTDOWN_LINGER_S = 1.0

log = Logger(namespace="udpchat")


def protocol_config(config: ServerConfig) -> ProtocolConfig:
    """The core's timers and limits, with the operator's settings applied."""
    return ProtocolConfig(
        session_expiry_s=config.idle_timeout,
        # A silent peer must end its session before any message gives up on it.
        give_up_s=max(60.0, 2 * config.idle_timeout),
        handshake_rate_per_s=config.handshake_rate,
        handshake_burst=config.handshake_burst,
    )


class ChatProtocol(DatagramProtocol):
    """The UDP face of the chat server (see module docstring)."""

    noisy = False  # the service logs what matters, in the operator's words

    def __init__(self, config: ServerConfig, psk: bytes, clock: Any) -> None:
        self.config = config
        self._clock: Any = clock  # IReactorTime (zope interfaces are opaque to mypy)
        self.endpoint = ServerEndpoint(psk, protocol_config(config), config.max_members)
        self.chat = ChatServer(history_lines=config.history_lines, max_members=config.max_members)
        self.refused: Counter[str] = Counter()  # datagrams refused here, by reason
        self._refusal_logged: OrderedDict[str, float] = OrderedDict()
        self._refusal_lines: list[float] = []  # times of the latest refusal lines
        self._hello_deadlines: dict[bytes, Any] = {}  # session id -> IDelayedCall
        self._timer: Any = None  # IDelayedCall
        self._timer_at: float | None = None
        self._held: list[bytes] | None = None  # while shutting down: sessions to close last

    # -- input ---------------------------------------------------------------------

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        host = addr[0]
        now = self._clock.seconds()
        if not self.config.address_allowed(host):
            self.refused["address-refused"] += 1
            self._log_refusal(host, "its address is not allowed by allow/deny", now)
            return
        full_before = self.endpoint.stats["server-full"]
        self.endpoint.receive_datagram(data, addr, now)
        if self.endpoint.stats["server-full"] != full_before:
            self._log_refusal(host, f"the member limit ({self.config.max_members}) is reached", now)
        self._pump(now)

    def _log_refusal(self, host: str, why: str, now: float) -> None:
        last = self._refusal_logged.get(host)
        if last is not None and last + REFUSAL_LOG_INTERVAL_S > now:
            return
        recent = [t for t in self._refusal_lines if t + REFUSAL_LOG_INTERVAL_S > now]
        if len(recent) >= REFUSAL_LOG_MAX_LINES:
            self._refusal_lines = recent
            return  # counted as address-refused / server-full in the summary
        self._refusal_lines = [*recent, now]
        self._refusal_logged[host] = now
        self._refusal_logged.move_to_end(host)
        while len(self._refusal_logged) > REFUSAL_LOG_MAX_ADDRESSES:
            self._refusal_logged.popitem(last=False)
        log.info("Refused {host}: {why} (silently; logged once a minute)", host=host, why=why)

    # -- the pump: core events -> chat rules -> core -> socket ---------------------

    def _pump(self, now: float) -> None:
        try:
            while True:
                self._dispatch_events(now)
                for outgoing in self.chat.drain():
                    self._send(outgoing.session_id, outgoing.payload, now)
                self._flush(now)  # before closing, so a last reply still goes out
                closures = self.chat.drain_closures()
                if self._held is not None:  # shutting down: close once the notice is acked
                    self._held.extend(closures)
                    closures = []
                for session_id in closures:
                    try:
                        self.endpoint.close_session(session_id, now)
                    except UnknownSession:
                        pass
                for entry in self.chat.drain_log():
                    self._log_chat(entry)
                if not closures and not self.endpoint.has_events:
                    break
            self._flush(now)
        except Exception:
            # A bug must cost one datagram or one tick, never the daemon or its timer.
            self.refused["internal-error"] += 1
            log.failure("Internal error while handling chat traffic")
        finally:
            self._reschedule(now)

    def _dispatch_events(self, now: float) -> None:
        while (event := self.endpoint.next_event()) is not None:
            if isinstance(event, events.SessionStarted):
                self.chat.session_started(event.session_id, event.addr, now)
                self._hello_deadlines[event.session_id] = self._clock.callLater(
                    HELLO_DEADLINE_S, self._require_hello, event.session_id
                )
            elif isinstance(event, events.MessageReceived):
                self.chat.message_received(event.session_id, event.payload, now)
            elif isinstance(event, events.SessionEnded):
                self._cancel_hello_deadline(event.session_id)
                if self._held is None:  # after the shutdown notice, no more notices
                    self.chat.session_ended(event.session_id, event.reason, now)
            elif isinstance(event, events.SessionRoamed):
                self.chat.session_roamed(event.session_id, event.new_addr)
                log.info(
                    "Session moved from {old} to {new}",
                    old=_format_addr(event.old_addr),
                    new=_format_addr(event.new_addr),
                )

    def _cancel_hello_deadline(self, session_id: bytes) -> None:
        deadline = self._hello_deadlines.pop(session_id, None)
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _require_hello(self, session_id: bytes) -> None:
        self._hello_deadlines.pop(session_id, None)
        if self._held is not None or self.chat.nick_of(session_id) is not None:
            return
        try:
            self.endpoint.close_session(session_id, self._clock.seconds())
        except UnknownSession:
            return
        self._pump(self._clock.seconds())

    def _send(self, session_id: bytes, payload: bytes, now: float) -> None:
        try:
            self.endpoint.send(session_id, payload, now)
        except UnknownSession:
            pass  # it ended while the chat was still answering it
        except QueueFull:
            # A member that acknowledges nothing while its queue overflows is gone
            # in all but name; closing it tells the room instead of growing memory.
            log.warn("Closing a session whose send queue is full")
            self.endpoint.close_session(session_id, now)
        except MessageTooLarge:
            log.failure("The chat produced a message too large for one datagram")

    def _flush(self, now: float) -> None:
        transport: Any = self.transport  # IUDPTransport (opaque to mypy)
        if transport is None:
            return
        for data, addr in self.endpoint.datagrams_to_send(now):
            try:
                transport.write(data, addr)
            except OSError:
                self.refused["send-error"] += 1

    def _reschedule(self, now: float) -> None:
        at = self.endpoint.get_timer()
        if at == self._timer_at and self._timer is not None and self._timer.active():
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer, self._timer_at = None, at
        if at is not None:
            self._timer = self._clock.callLater(max(0.0, at - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        now = self._clock.seconds()
        try:
            self.endpoint.handle_timer(now)
        finally:
            self._pump(now)

    # -- logs and shutdown ---------------------------------------------------------

    def _log_chat(self, entry: LogEvent) -> None:
        text = {
            "join": "{nick} joined {room} from {addr}",
            "leave": "{nick} left ({detail}) from {addr}",
            "timeout": "{nick} timed out at {addr}",
            "rename": "{detail} is now known as {nick} ({addr})",
            "move": "{nick} moved from {detail} to {room}",
            "takeover": "{nick} reconnected from {addr}",
            "refused": "Refused a hello from {addr}: {detail}",
        }[entry.kind]
        log.info(
            text, nick=entry.nick, room=entry.room, detail=entry.detail,
            addr=_format_addr(entry.addr),
        )  # fmt: skip

    def log_rejections(self) -> None:
        """One summary line of what was dropped since the last one (never per datagram)."""
        counts = Counter(self.endpoint.stats.take())
        counts.update(self.refused)
        self.refused.clear()
        if counts:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))
            log.info(
                "Dropped {total} datagrams without answer ({reasons})",
                total=sum(counts.values()),
                reasons=reasons,
            )

    def shutdown(self) -> Deferred[None]:
        """Tell every member the server is going away, wait (briefly) for them to
        acknowledge it, then close every session. Fires when done."""
        now = self._clock.seconds()
        self._held = []
        for session_id in list(self._hello_deadlines):
            self._cancel_hello_deadline(session_id)
        self.chat.shutdown(SHUTDOWN_TEXT, now)
        self._pump(now)
        done: Deferred[None] = Deferred()
        deadline = now + SHUTDOWN_LINGER_S

        def close_when_acknowledged() -> None:
            now = self._clock.seconds()
            held = self._held or []
            if now < deadline and not all(self.endpoint.is_idle(s) for s in held):
                self._clock.callLater(0.02, close_when_acknowledged)
                return
            for session_id in held:
                try:
                    self.endpoint.close_session(session_id, now)
                except UnknownSession:
                    pass
            self._flush(now)
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            done.callback(None)

        close_when_acknowledged()
        return done


def _format_addr(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr)


class ChatService(Service):
    """Binds the UDP port at start; at stop, says goodbye and releases it."""

    def __init__(self, config: ServerConfig, psk: bytes, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._reactor: Any = reactor  # IReactorTime + IReactorUDP
        self.config = config
        self.protocol = ChatProtocol(config, psk, reactor)
        self._port: Any = None
        self._summary = LoopingCall(self.protocol.log_rejections)
        self._summary.clock = reactor

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
        super().startService()
        # Announced once the reactor runs (and SIGTERM is handled), so whoever waits
        # for this line may stop the daemon at once.
        self._reactor.callWhenRunning(self._announce)
        self._summary.start(self.config.log_rejects_interval, now=False)

    def _announce(self) -> None:
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

    def stopService(self) -> Deferred[object]:
        super().stopService()
        if self._summary.running:
            self._summary.stop()
        self.protocol.log_rejections()
        done = self.protocol.shutdown()

        def stop_listening(_: object) -> object:
            port, self._port = self._port, None
            return None if port is None else port.stopListening()

        return done.addCallback(stop_listening)


def make_chat_service(config: ServerConfig, psk: bytes) -> ChatService:
    """The service twistd runs (see udpchat.daemon.tap)."""
    return ChatService(config, psk)
