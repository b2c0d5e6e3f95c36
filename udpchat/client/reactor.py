"""The client's reactor: Twisted's epoll reactor, without a log context per event.

EPollReactor hands every ready file descriptor to log.callWithLogger, which copies
the log context and pushes it on a thread-local stack, so that what is logged while
the event is handled names the descriptor ("system"). For a client woken once per
received line that was about 40 µs of CPU per line (measured: a bare Twisted UDP
receiver at 100 datagrams/s costs 177 µs per datagram with it, 135 without), a
tenth of what the whole client costs. The client logs nothing per event; an error a
handler raises is still caught and logged by the reactor (_doReadOrWrite), only
without the descriptor's name. Linux only (epoll); elsewhere the client runs on
Twisted's default reactor.

A quiet room wakes the client once per line, each time with cold caches, where the
same Python costs four to five times what it costs warm: so the two steps of
Twisted's loop that run at every wake-up and nearly always find nothing to do
(running the due timers; telling a read event from the others) are written out
here for that case, and left to Twisted for every other.
"""

from __future__ import annotations

import errno
import select
import sys

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.posixbase import _NO_FILEDESC
from twisted.python import log

#: An event of a descriptor that has something to read, and nothing else to say.
_READABLE_ONLY = select.EPOLLIN


class ClientReactor(EPollReactor):
    """EPollReactor whose poll calls each ready descriptor's handler directly."""

    def doPoll(self, timeout: float | None) -> None:
        """As EPollReactor.doPoll, less log.callWithLogger (see module docstring)."""
        if timeout is None:
            timeout = -1  # wait until something happens
        try:
            ready = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        for fd, event in ready:
            selectable = selectables.get(fd)
            if selectable is None:  # removed by a handler earlier in this round
                continue
            if event != _READABLE_ONLY:
                self._doReadOrWrite(selectable, fd, event)
                continue
            # _doReadOrWrite for a read event alone (a datagram, a line typed),
            # written out: what it does with one, step for step.
            why: BaseException | None = None
            in_read = False
            try:
                if selectable.fileno() == -1:
                    why = _NO_FILEDESC
                else:
                    why = selectable.doRead()
                    in_read = True
            except BaseException:
                why = sys.exc_info()[1]
                log.err()
            if why:
                self._disconnectSelectable(selectable, why, in_read)

    doIteration = doPoll

    def runUntilCurrent(self) -> None:
        """As Twisted's, which finds nothing to do when a datagram woke us (no call
        from a thread, no timer new or due, no heap to tidy, not stopping): that
        case is told here in one test."""
        pending = self._pendingTimedCalls
        if (
            not self.threadCallQueue
            and not self._newTimedCalls
            and not self._justStopped
            and self._cancellations <= 50
            and (not pending or pending[0].time > self.seconds())
        ):
            return
        super().runUntilCurrent()


def install() -> bool:
    """Make a ClientReactor Twisted's reactor; False (and nothing done) if a reactor
    is installed already."""
    if "twisted.internet.reactor" in sys.modules:
        return False
    from twisted.internet.main import installReactor

    installReactor(ClientReactor())
    return True
