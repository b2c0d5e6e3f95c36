"""The Twisted glue of the client: UDP sockets, one timer, and a front end.

ChatLink moves datagrams between the sockets and a ChatClient, asks it for its next
deadline after every input and keeps exactly one reactor.callLater for it, and hands
what the ChatClient wants shown to the front end (pipe or terminal). It has no chat
logic of its own; that is all in udpchat.client.chatclient.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any, Protocol

from twisted.internet import error, threads
from twisted.internet.defer import Deferred
from twisted.internet.protocol import DatagramProtocol

from udpchat.client.chatclient import ChatClient
from udpchat.client.display import Item, Problem

Address = tuple[str, int]
#: A bug (an exception escaping the ChatClient) is shown at most once per this long.
BUG_SHOW_INTERVAL_S = 60.0


class FrontEnd(Protocol):
    """What ChatLink needs from a user interface."""

    def update(self, items: list[Item]) -> None:
        """Show ``items`` (may be empty: the chat state may still have changed)."""

    def chat_done(self) -> None:
        """The ChatClient is finished; the front end should exit."""


def resolve(host: str, port: int) -> Deferred[list[tuple[int, Address]]]:
    """Look ``host`` up (name or IPv4/IPv6 literal) in a thread, so the reactor never
    blocks on DNS. Fires with [(family, (address, port)), ...] in the system's order of
    preference, or fails with socket.gaierror."""

    def lookup() -> list[tuple[int, Address]]:
        found: list[tuple[int, Address]] = []
        for family, _, _, _, sockaddr in socket.getaddrinfo(
            host, port, 0, socket.SOCK_DGRAM, socket.IPPROTO_UDP
        ):
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

    def datagramReceived(self, datagram: bytes, addr: tuple[object, ...]) -> None:
        self.link.datagram_received(datagram, addr)


class ChatLink:
    """Runs one ChatClient over UDP for one front end (see module docstring).

    ``servers`` are the resolved addresses of the server; the ChatClient decides which
    one each connection attempt goes to (e.g. "localhost" as ::1, then 127.0.0.1).
    """

    def __init__(
        self,
        chat: ChatClient,
        servers: Sequence[tuple[int, Address]],
        reactor: Any,
        front: FrontEnd | None = None,
    ) -> None:
        if not servers:
            raise ValueError("no server address")
        self.chat = chat
        self.servers = list(servers)
        self.reactor = reactor
        self.front = front
        self._ports: dict[int, Any] = {}  # family -> IListeningPort
        self._timer: Any = None  # the one IDelayedCall
        self._finished = False
        self.internal_errors = 0  # exceptions that escaped the ChatClient (bugs)
        self._bug_shown_at: float | None = None

    @property
    def server(self) -> tuple[int, Address]:
        return self.servers[self.chat.address_index]

    def now(self) -> float:
        return float(self.reactor.seconds())

    def start(self) -> None:
        """Open the sockets (CannotListenError if none can be opened) and connect."""
        problems: list[Exception] = []
        for family in dict.fromkeys(f for f, _ in self.servers):
            interface = "::" if family == socket.AF_INET6 else ""
            try:
                port = self.reactor.listenUDP(0, _Socket(self), interface=interface)
            except error.CannotListenError as exc:
                problems.append(exc)
                continue
            self._ports[family] = port
        # An address family without a socket (IPv6 disabled, say) cannot be tried.
        self.servers = [s for s in self.servers if s[0] in self._ports]
        if not self.servers:
            raise problems[0]
        self.chat.start(self.now(), addresses=len(self.servers))
        self.pump()

    # --- inputs ------------------------------------------------------------------

    def datagram_received(self, datagram: bytes, addr: tuple[object, ...]) -> None:
        # A server listening on a wildcard address answers from whichever of its
        # addresses routing picks, not necessarily the one we wrote to: accept the
        # server's port from any address. The core authenticates every datagram.
        if addr[1] != self.server[1][1]:
            return
        try:
            self.chat.receive_datagram(datagram, self.now())
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
        """An exception escaped the sans-IO client: a bug in udpchat. It costs this
        datagram or this tick, never the client or its timer; the user is told (at
        most once a minute) with the exception, so that it can be reported."""
        self.internal_errors += 1
        now = self.now()
        if self._bug_shown_at is None or self._bug_shown_at + BUG_SHOW_INTERVAL_S <= now:
            self._bug_shown_at = now
            if self.front is not None:
                what = f"{type(exc).__name__}: {exc}"
                self.front.update([Problem(f"internal error (a bug in udpchat): {what}")])

    # --- outputs -----------------------------------------------------------------

    def pump(self) -> None:
        """Send what the ChatClient has to send, show its output, reschedule."""
        if self._finished:
            return
        now = self.now()
        family, addr = self.server
        datagrams = self.chat.datagrams_to_send(now)
        if datagrams:
            # The socket itself: Port.write validates the address three times per
            # datagram, a fifth of the client's CPU when a busy room is acknowledged.
            sendto = self._ports[family].socket.sendto
            for datagram in datagrams:
                try:
                    sendto(datagram, addr)
                except OSError:
                    pass  # e.g. network unreachable: UDP may lose it, the core retransmits
        if self.front is not None:
            self.front.update(self.chat.take_output())
        if self.chat.done:
            self._stop()
            if self.front is not None:
                self.front.chat_done()
            return
        self._schedule(self.chat.get_timer(), now)

    def _schedule(self, deadline: float | None, now: float) -> None:
        if self._timer is not None and self._timer.active():
            if deadline is not None and self._timer.getTime() <= deadline + 1e-6:
                # Keep an earlier timer: it fires, finds little to do and reschedules.
                # Moving it on every datagram (an ack due later each time) cost more.
                return
            self._timer.cancel()
        self._timer = None
        if deadline is not None:
            self._timer = self.reactor.callLater(max(0.0, deadline - now), self._on_timer)

    def _stop(self) -> None:
        self._finished = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for port in self._ports.values():
            port.stopListening()
        self._ports.clear()
