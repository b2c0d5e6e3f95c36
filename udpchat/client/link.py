"""The Twisted glue of the client: UDP sockets, one timer, and a front end.

ChatLink moves datagrams between the sockets and a ChatClient, asks it for its next
deadline after every input and keeps exactly one reactor.callLater for it, and hands
what the ChatClient wants shown to the front end (pipe or terminal). It is also the
producer of that output (IPushProducer): a front end whose output backs up pauses it,
which stops reading from the network. It has no chat logic of its own; that is all in
udpchat.client.chatclient.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet import error, interfaces, threads
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer  # type: ignore[import-untyped]

from udpchat.address import join_host_port
from udpchat.client.chatclient import ChatClient
from udpchat.client.display import Item, Problem
from udpchat.client.reachability import Finding

Address = tuple[str, int]
#: A bug (an exception escaping the ChatClient) is shown at most once per this long.
BUG_SHOW_INTERVAL_S = 60.0
#: If the ChatClient cannot even say when it next needs the timer (a bug), it gets
#: one this soon anyway: a client without a timer would never retransmit again.
BUG_RETRY_S = 1.0
#: The system clock is told to the ChatClient again when it moved this much against
#: monotonic time (handshake timestamps are whole seconds; NTP slews 0.5 ms/s at most).
WALL_CLOCK_TOLERANCE_S = 0.001
#: What an ICMP error (as errno) says about the server (udpchat.client.udpport).
FINDINGS = {
    errno.ECONNREFUSED: Finding.REFUSED,
    errno.EHOSTUNREACH: Finding.UNREACHABLE,
    errno.ENETUNREACH: Finding.UNREACHABLE,
}
#: A socket with an ICMP error pending fails the next send with it, without sending:
#: that datagram is sent again once (the error itself is read from the error queue).
SEND_AGAIN_ERRORS = frozenset(FINDINGS)


class FrontEnd(Protocol):
    """What ChatLink needs from a user interface."""

    def update(self, items: list[Item]) -> None:
        """Show ``items`` (may be empty: the chat state may still have changed)."""

    def chat_done(self) -> None:
        """The ChatClient is finished; the front end should exit."""


class LookupFailed(OSError):
    """One of the servers' names could not be resolved (``host``; ``error`` says why)."""

    def __init__(self, host: str, error: OSError) -> None:
        super().__init__(str(error))
        self.host = host
        self.error = error


def resolve(servers: Sequence[tuple[str, int]]) -> Deferred[list[tuple[int, Address]]]:
    """Look each (host, port) up (name or IPv4/IPv6 literal) in a thread, so the
    reactor never blocks on DNS. Fires with [(family, (address, port)), ...]: each
    server's addresses in the system's order of preference, the servers in the order
    given, each address once; or fails with LookupFailed for the first that fails."""

    def lookup() -> list[tuple[int, Address]]:
        found: list[tuple[int, Address]] = []
        for host, port in servers:
            try:
                answers = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
            except OSError as exc:
                raise LookupFailed(host, exc) from exc
            for family, _, _, _, sockaddr in answers:
                if family in (socket.AF_INET, socket.AF_INET6):
                    entry = (family, (str(sockaddr[0]), int(sockaddr[1])))
                    if entry not in found:
                        found.append(entry)
        return found

    return threads.deferToThread(lookup)


class _Socket(DatagramProtocol):
    """One UDP socket (one per address family) feeding its datagrams to the link."""

    def __init__(self, link: ChatLink) -> None:
        self.link = link
        # Straight to the link: one call less per datagram.
        self.datagramReceived = link.datagram_received  # type: ignore[method-assign]

    def datagramReceived(self, datagram: bytes, addr: tuple[object, ...]) -> None:
        self.link.datagram_received(datagram, addr)  # (replaced in __init__)

    def network_error(self, destination: Address, error: int) -> None:
        """The network refused a datagram we sent to ``destination`` (ErrorQueuePort)."""
        self.link.network_error(destination, error)


@implementer(interfaces.IPushProducer)
class ChatLink:
    """Runs one ChatClient over UDP for one front end (see module docstring).

    ``servers`` are the resolved addresses of the server (or of several daemons of a
    cluster); the ChatClient decides which one each connection attempt goes to (e.g.
    "localhost" as ::1, then 127.0.0.1; after a lost session, the next one).
    """

    def __init__(
        self,
        chat: ChatClient,
        servers: Sequence[tuple[int, Address]],
        reactor: Any,
        front: FrontEnd | None = None,
        wall: Callable[[], float] = time.time,
        listen: Callable[[int, Any, str], Any] | None = None,
    ) -> None:
        """``listen`` opens a UDP port like reactor.listenUDP (the default); the client
        gives udpchat.client.udpport.listen_udp, to hear the network's errors."""
        if not servers:
            raise ValueError("no server address")
        self.chat = chat
        self.servers = list(servers)
        self.reactor = reactor  # on monotonic time (udpchat.reactorclock)
        self.front = front
        self._wall = wall  # the system clock
        self._wall_offset: float | None = None  # system clock - monotonic, as last told
        self._listen = listen or reactor.listenUDP
        self._ports: dict[int, Any] = {}  # family -> IListeningPort
        self._timer: Any = None  # the one IDelayedCall
        self._timer_at = 0.0  # the deadline it was set for (its getTime() is later)
        self._finished = False
        self.paused = False  # the front end's output is full: not reading the network
        self.internal_errors = 0  # exceptions that escaped the ChatClient (bugs)
        self._bug_shown_at: float | None = None

    @property
    def server(self) -> tuple[int, Address]:
        return self.servers[self.chat.address_index]

    def now(self) -> float:
        """Monotonic time for the ChatClient (see udpchat.reactorclock), after telling
        it what the system clock says, for its handshakes: when that moved against
        monotonic time (a step, or a drift past WALL_CLOCK_TOLERANCE_S); telling it
        the same again changes nothing, and cost a fifth of the link's work per line."""
        now = float(self.reactor.seconds())
        wall = self._wall()
        offset = wall - now
        last = self._wall_offset
        if last is None or not -WALL_CLOCK_TOLERANCE_S < offset - last < WALL_CLOCK_TOLERANCE_S:
            self._wall_offset = offset
            self.chat.set_wall_clock(wall, now)
        return now

    def start(self) -> None:
        """Open the sockets (CannotListenError if none can be opened) and connect."""
        problems: list[Exception] = []
        for family in dict.fromkeys(f for f, _ in self.servers):
            interface = "::" if family == socket.AF_INET6 else ""
            try:
                port = self._listen(0, _Socket(self), interface)
            except error.CannotListenError as exc:
                problems.append(exc)
                continue
            self._ports[family] = port
        # An address family without a socket (IPv6 disabled, say) cannot be tried.
        self.servers = [s for s in self.servers if s[0] in self._ports]
        if not self.servers:
            raise problems[0]
        names = [join_host_port(*address) for _, address in self.servers]
        self.chat.start(self.now(), addresses=len(self.servers), names=names)
        self.pump()

    # --- inputs ------------------------------------------------------------------

    def datagram_received(self, datagram: bytes, addr: tuple[object, ...]) -> None:
        # A server listening on a wildcard address answers from whichever of its
        # addresses routing picks, not necessarily the one we wrote to: accept the
        # server's port from any address. The core authenticates every datagram.
        if addr[1] != self.servers[self.chat.address_index][1][1]:  # self.server's port
            return
        now = self.now()
        try:
            self.chat.receive_datagram(datagram, now)
        except Exception as exc:
            self._bug(exc)
        self.pump(now)

    def network_error(self, destination: Address, error: int) -> None:
        """An ICMP error about a datagram to ``destination``: a hint for the ChatClient
        if it is about one of the server's addresses (unauthenticated: it decides)."""
        finding = FINDINGS.get(error)
        if finding is None:
            return
        indexes = [i for i, (_, address) in enumerate(self.servers) if address == destination]
        if not indexes:
            return
        index = indexes[0]
        try:
            self.chat.network_error(index, finding, self.now())
        except Exception as exc:
            self._bug(exc)
        self.pump()

    def submit(self, lines: Sequence[str]) -> None:
        """Lines typed by the user, in order."""
        now = self.now()
        for line in lines:
            self.chat.submit(line, now)
        self.pump()

    def quit(self) -> None:
        self.chat.quit(self.now())
        self.pump()

    def finish(self) -> None:
        self.chat.finish(self.now())
        self.pump()

    def abort(self) -> None:
        """Interrupted: close the session now (the server is told) and stop."""
        self.chat.abort(self.now())
        self.pump()

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.chat.handle_timer(self.now())
        except Exception as exc:
            self._bug(exc)
        self.pump()

    def _bug(self, exc: Exception) -> None:
        """An exception escaped the sans-IO client or the front end: a bug in udpchat.
        It costs this datagram or this tick, never the client or its timer; the user
        is told (at most once a minute) with the exception, so that it can be reported."""
        self.internal_errors += 1
        now = self.now()
        if self._bug_shown_at is None or self._bug_shown_at + BUG_SHOW_INTERVAL_S <= now:
            self._bug_shown_at = now
            if self.front is not None:
                what = f"{type(exc).__name__}: {exc}"
                try:
                    self.front.update([Problem(f"internal error (a bug in udpchat): {what}")])
                except Exception:
                    pass  # the front end itself is what fails: it was counted, go on

    # --- outputs -----------------------------------------------------------------

    def pump(self, now: float | None = None) -> None:
        """Send what the ChatClient has to send, show its output, reschedule. An
        exception on the way (a bug, in the client or the front end) costs this
        round's datagrams or output at most: the timer is always set again. ``now``:
        the time the input that led here was handled at (default: read the clock)."""
        if self._finished:
            return
        if now is None:
            now = self.now()
        chat, front = self.chat, self.front
        try:
            datagrams = chat.datagrams_to_send(now)
            if datagrams:  # after most datagrams received, none
                self._send(datagrams)
        except Exception as exc:
            self._bug(exc)
        if front is not None:
            try:
                front.update(chat.take_output())
            except Exception as exc:
                self._bug(exc)
        if chat.done:
            self._stop()
            if front is not None:
                front.chat_done()
            return
        try:
            deadline = chat.get_timer()
        except Exception as exc:
            self._bug(exc)
            deadline = now + BUG_RETRY_S
        self._schedule(deadline, now)

    def _send(self, datagrams: list[bytes]) -> None:
        # The socket itself: Port.write validates the address three times per
        # datagram, a fifth of the client's CPU when a busy room is acknowledged.
        family, addr = self.server
        sendto = self._ports[family].socket.sendto
        for datagram in datagrams:
            try:
                sendto(datagram, addr)
            except OSError as exc:
                # e.g. network unreachable: UDP may lose it, the core retransmits
                if exc.errno in SEND_AGAIN_ERRORS:
                    try:
                        sendto(datagram, addr)
                    except OSError:
                        pass

    def _schedule(self, deadline: float | None, now: float) -> None:
        if self._timer is not None:  # pending (None once fired: _on_timer)
            if deadline is not None and self._timer_at <= deadline:
                # Keep an earlier timer: it fires, finds little to do and reschedules.
                # Moving it on every datagram (an ack due later each time) cost more.
                # Compared with the deadline asked for, not with getTime(): the
                # reactor's clock moved on between ``now`` and callLater, so getTime()
                # is a little later than the deadline and the timer was re-armed for
                # every datagram even when the deadline stayed the same.
                return
            self._timer.cancel()
        self._timer = None
        if deadline is not None:
            self._timer = self.reactor.callLater(max(0.0, deadline - now), self._on_timer)
            self._timer_at = deadline

    # --- IPushProducer: what the front end shows is produced from the network -------

    def pauseProducing(self) -> None:
        """The front end's output is full (nobody reads it): stop reading from the
        network until it drains, so that memory stays bounded. What the server sends
        meanwhile waits in the socket buffer or is lost, and is not acknowledged: the
        server keeps it and retransmits it, so nothing is skipped. Timers go on."""
        self.paused = True
        for port in self._ports.values():
            port.pauseProducing()

    def resumeProducing(self) -> None:
        """The output drained: read from the network again."""
        self.paused = False
        for port in self._ports.values():
            port.resumeProducing()

    def stopProducing(self) -> None:
        """The output is gone for good (its reader closed it, or we are done): keep
        reading, so that what the user typed is still delivered."""
        self.resumeProducing()

    def _stop(self) -> None:
        self._finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for port in self._ports.values():
            port.stopListening()
        self._ports.clear()
