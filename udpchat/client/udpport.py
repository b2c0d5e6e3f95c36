"""A UDP port that also hears what the network says about the datagrams it sent.

When nothing listens on the server's port, the server's machine answers a datagram
with an ICMP "port unreachable"; a router may answer "host unreachable". That is the
only way to tell "nothing is listening" from "no answer" (udpchat.client.reachability).

A connected UDP socket would report these errors, but the client's socket must stay
unconnected: a daemon on a wildcard address answers from whichever of its addresses
routing picks, and a connected socket drops answers from any other (the client then
never completes a handshake). Linux reports the errors of an unconnected socket too,
with IP_RECVERR: each goes to the socket's error queue, with the destination of the
datagram it is about, so it can be matched to the server.

Twisted knows none of that: its epoll and poll reactors take the bare error event of
such a socket for the end of the connection and stop reading it. This port reads the
error queue itself and reads on: when the reactor says "closed" (an error and no
datagram), and when a read fails (the socket reports a pending error before the
datagrams that wait). It does not look at the error queue for every datagram: that
was two system calls per received line. An error whose pending mark a send took
instead (the send fails with it) stays queued, and the reactor says "closed" for it
as soon as no datagram waits. Elsewhere than on Linux it is a plain UDP port, and the
client only goes by silence.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import udp
from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.python import log
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

from udpchat.client.moderation import WakeModeration

# Linux values (Python 3.11's socket module does not name them): <linux/in.h>,
# <linux/in6.h>, <linux/socket.h>, <linux/errqueue.h>.
IP_RECVERR = 11
IPV6_RECVERR = 25
MSG_ERRQUEUE = 0x2000
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
#: struct sock_extended_err: errno, origin, type, code, pad, info, data.
SOCK_EXTENDED_ERR = struct.Struct("=IBBBBII")
#: Errors read per wake-up at most: forged ICMP errors cannot keep the client busy.
ERRORS_PER_READ = 64
#: A read that fails with one of these found nothing (more): as udp.Port.
READ_AGAIN_ERRORS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR})

_RECVERR = {
    socket.AF_INET: (socket.IPPROTO_IP, IP_RECVERR),
    socket.AF_INET6: (socket.IPPROTO_IPV6, IPV6_RECVERR),
}

Address = tuple[str, int]


@implementer(IHalfCloseableDescriptor)
class ErrorQueuePort(udp.Port):
    """A udp.Port whose protocol also gets ``network_error(destination, errno)`` for
    every ICMP error about a datagram it sent (see module docstring)."""

    #: Whether the system reports errors of this unconnected socket (Linux).
    hears_errors = False

    def _bindSocket(self) -> None:
        super()._bindSocket()
        if sys.platform.startswith("linux"):
            level, option = _RECVERR[self.addressFamily]
            try:
                self.socket.setsockopt(level, option, 1)
                self.hears_errors = True
            except OSError:
                pass

    def read_errors(self) -> None:
        """Hand the queued network errors to the protocol, then clear the socket's
        pending error (or the reactor would wake us for it again and again)."""
        if not self.hears_errors:
            return
        for _ in range(ERRORS_PER_READ):
            try:
                _, ancillary, _, destination = self.socket.recvmsg(0, 512, MSG_ERRQUEUE)
            except OSError:  # EAGAIN: the queue is empty
                break
            for _level, _kind, data in ancillary:
                if len(data) < SOCK_EXTENDED_ERR.size:
                    continue
                error, origin = SOCK_EXTENDED_ERR.unpack_from(data)[:2]
                if origin in (SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6) and destination:
                    self.protocol.network_error((str(destination[0]), int(destination[1])), error)
        try:
            self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError:
            pass

    #: Wake-up moderation (udpchat.client.moderation), or None to read each datagram
    #: as soon as it comes.
    moderation: WakeModeration | None = None
    #: Datagrams read in one go at most when moderated: a flood cannot keep the
    #: client from its keyboard and timers.
    DATAGRAMS_PER_LOOK = 256
    _resume: Any = None
    #: Paused by its consumer (flow control: stdout is not being read): no look,
    #: held or not, reads until it resumes.
    _paused = False

    def doRead(self) -> None:
        """Read one datagram, as udp.Port.doRead does but for the loop: the reactor
        comes back at once if more wait, and looking for more cost a read that finds
        the socket empty (an exception) at every wake-up, more than a turn of the
        reactor costs in a burst. Moderated, the same after a quiet spell; in a
        stream, all that wait (a batch), then hold off. A read that fails with a
        network error (the socket's pending error, see the module docstring) has the
        error queue read, and is tried again."""
        if self.moderation is None:
            self._read_one()
        else:
            self._look(held=False)

    def _read_one(self) -> bool:
        """Read and deliver one datagram; False if none waited."""
        try:
            data, addr = self.socket.recvfrom(self.maxPacketSize)
        except OSError as exc:
            if not self._after_error(exc):
                return False
            data, addr = self._read_after_errors()
            if data is None:
                return False
        if self.addressFamily == socket.AF_INET6:
            addr = addr[:2]  # (host, port), as udp.Port gives it
        try:
            self.protocol.datagramReceived(data, addr)
        except BaseException:
            log.err()
        return True

    def _look(self, held: bool) -> None:
        """Read what waits (moderated), then hold off if the stream is busy."""
        moderation = self.moderation
        assert moderation is not None
        if not held:
            # Woken by the socket. A datagram after a quiet spell (every line of a
            # quiet room) is read alone, as unmoderated: looking for a second one
            # found the socket empty, a system call and an exception per line, and
            # the reactor comes back at once if more wait. In a stream, the rest is
            # read now and the socket left alone for a while.
            if not self._read_one() or not self._reading:
                return
            now = self.reactor.seconds()
            moderation.found(now)
            hold = moderation.hold(now)
            if not hold:
                return
            self._read_waiting(1)
            if self._reading:  # (the protocol may have paused or stopped meanwhile)
                self.stopReading()
                self._resume = self.reactor.callLater(hold, self._resume_looking)
            return
        read = self._read_waiting(0)
        if not self._reading:  # the protocol paused or stopped listening meanwhile
            return
        if not read:
            moderation.found_none()
            self.startReading()
            return
        now = self.reactor.seconds()
        moderation.found(now, held)
        hold = moderation.hold(now)
        if hold > 0:
            self._resume = self.reactor.callLater(hold, self._resume_looking)
        else:
            self.startReading()

    def _read_waiting(self, read: int) -> int:
        """Read what waits, up to DATAGRAMS_PER_LOOK in all with the ``read`` already
        read in this look; return how many in all."""
        while read < self.DATAGRAMS_PER_LOOK and self._reading and self._read_one():
            read += 1
        return read

    @property
    def _reading(self) -> bool:
        """Still listening, and not paused by the consumer."""
        return bool(self.connected) and not self._paused

    def _resume_looking(self) -> None:
        self._resume = None
        if self._reading:
            self._look(held=True)

    def _cancel_hold(self) -> None:
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._resume = None

    def pauseProducing(self) -> None:
        """Flow control (ChatLink.pauseProducing): read nothing more, held or not,
        until resumeProducing."""
        self._paused = True
        self._cancel_hold()
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        super().resumeProducing()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._cancel_hold()
        super().connectionLost(reason)

    def _after_error(self, exc: OSError) -> bool:
        """A read failed with ``exc``: True if it was a network error, now read from
        the error queue (read again); False if nothing waits (or, as udp.Port, for a
        refusal elsewhere than on Linux); raise what is neither."""
        if exc.errno in READ_AGAIN_ERRORS:
            return False
        if not self.hears_errors:
            if exc.errno == errno.ECONNREFUSED:
                return False
            raise exc
        self.read_errors()
        return True

    def _read_after_errors(self) -> tuple[Any, Any]:
        """A datagram, read once the network's errors are; (None, None) if none."""
        for _ in range(ERRORS_PER_READ):
            try:
                return self.socket.recvfrom(self.maxPacketSize)
            except OSError as exc:
                if not self._after_error(exc):
                    break
        return None, None

    def readConnectionLost(self, reason: Failure) -> None:
        # epoll/poll: an error with no datagram waiting wakes the reactor as "closed",
        # and it stopped reading us. It was only an error: read it, and read on.
        self.read_errors()
        if self.connected:  # still listening (Twisted's name for it)
            self.startReading()

    def writeConnectionLost(self, reason: Failure) -> None:
        """Never happens to a UDP port (it never waits to write)."""


def listen_udp(reactor: Any) -> Callable[[int, Any, str], Any]:
    """A listenUDP for ChatLink that opens ErrorQueuePorts on ``reactor``, their
    wake-ups moderated (udpchat.client.moderation)."""

    def listen(port: int, protocol: Any, interface: str = "") -> Any:
        opened = ErrorQueuePort(port, protocol, interface, reactor=reactor)
        opened.moderation = WakeModeration()
        opened.startListening()
        return opened

    return listen
