"""The client's wake-up moderation (udpchat.client.moderation): a busy room's lines
are read a batch per 30 ms instead of one wake-up each, and a line at human pace is
read the moment it comes. The rule on a fake clock, then the real port on a real
reactor and a loopback socket."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from udpchat.client.moderation import WakeModeration
from udpchat.client.reactor import ClientReactor
from udpchat.client.udpport import ErrorQueuePort


def test_a_quiet_chat_is_read_at_once_and_a_stream_once_per_interval() -> None:
    """Datagrams slower than one per interval never wait; a stream closer than that
    is looked at once per interval for as long as each look finds some; the first
    look that finds none ends it, and the next datagram is read at once."""
    m = WakeModeration(0.03)
    assert m.hold(0.0) == 0.0  # nothing seen yet
    m.found(10.0)
    assert m.hold(10.001) == 0.0  # one line after a quiet spell
    m.found(10.05)  # 50 ms later: slower than one per 30 ms, read as it comes
    assert m.hold(10.051) == 0.0
    m.found(10.06)  # 10 ms later: busy
    assert m.hold(10.061) == pytest.approx(0.029)
    assert m.hold(10.1) == 0.0  # asked late: look at once
    m.found(10.0905, held=True)  # the held look found more: the stream goes on
    assert m.hold(10.091) == pytest.approx(0.0295)
    m.found_none()  # the next held look found none: the stream is over
    assert m.hold(10.121) == 0.0
    m.found(10.5)
    assert m.hold(10.501) == 0.0


def test_an_interval_of_0_never_holds() -> None:
    off = WakeModeration(0.0)
    off.found(1.0)
    off.found(1.0)
    assert off.hold(1.0) == 0.0


class Received:
    """A protocol that keeps what it got, and when."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, float]] = []
        self.transport: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.got.append((data, time.monotonic()))

    def network_error(self, destination: tuple[str, int], error: int) -> None:
        pass


@pytest.fixture
def port() -> Iterator[tuple[ClientReactor, ErrorQueuePort, Received]]:
    reactor = ClientReactor()
    reactor.seconds = time.monotonic  # as the client runs it
    received = Received()
    opened = ErrorQueuePort(0, received, "127.0.0.1", reactor=reactor)
    opened.moderation = WakeModeration(0.03)
    opened.startListening()
    yield reactor, opened, received
    opened.stopListening()
    reactor.removeAll()
    reactor.waker.connectionLost(None)
    reactor._poller.close()


def run_until(reactor: ClientReactor, done: Callable[[], bool], limit_s: float = 2.0) -> None:
    """Turn the real reactor as its main loop does until ``done()``."""
    deadline = time.monotonic() + limit_s
    while not done():
        assert time.monotonic() < deadline, "not done in time"
        reactor.runUntilCurrent()
        timeout = reactor.timeout()
        reactor.doIteration(0.05 if timeout is None else min(timeout, 0.05))


def test_a_busy_stream_is_read_in_batches_and_a_line_after_a_pause_at_once(
    port: tuple[ClientReactor, ErrorQueuePort, Received],
) -> None:
    reactor, opened, received = port
    to = opened.socket.getsockname()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"1", to)
        run_until(reactor, lambda: len(received.got) == 1)
        sender.sendto(b"2", to)  # close behind: busy, the socket is left alone
        run_until(reactor, lambda: len(received.got) == 2)
        looked_at = received.got[1][1]
        assert opened not in reactor.getReaders()
        sender.sendto(b"3", to)
        time.sleep(0.005)
        sender.sendto(b"4", to)
        run_until(reactor, lambda: len(received.got) == 4)
        (_, third), (_, fourth) = received.got[2:]
        assert third - looked_at >= 0.025 and fourth - third < 0.01  # one look, both
        # The next look finds nothing: reading again, and a line after a pause is
        # read as soon as it comes.
        run_until(reactor, lambda: opened in reactor.getReaders())
        time.sleep(0.05)
        sender.sendto(b"5", to)
        reactor.doIteration(1.0)  # one wake-up: the line, not a hold's end
        assert len(received.got) == 5 and opened in reactor.getReaders()
    assert [data for data, _ in received.got] == [b"1", b"2", b"3", b"4", b"5"]


def test_a_consumer_pause_holds_even_a_busy_stream_until_it_resumes(
    port: tuple[ClientReactor, ErrorQueuePort, Received],
) -> None:
    """Flow control wins over moderation: paused (stdout is not being read) while a
    busy stream is held off, the port reads nothing when the hold would have ended,
    nor after; resumed, it reads what waited."""
    reactor, opened, received = port
    to = opened.socket.getsockname()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"1", to)
        run_until(reactor, lambda: len(received.got) == 1)
        sender.sendto(b"2", to)  # close behind: busy
        run_until(reactor, lambda: len(received.got) == 2)
        assert opened not in reactor.getReaders()  # busy: held off
        opened.pauseProducing()
        sender.sendto(b"3", to)
        time.sleep(0.05)  # past the hold
        for _ in range(3):
            reactor.runUntilCurrent()
            reactor.doIteration(0.02)
        assert [data for data, _ in received.got] == [b"1", b"2"]
        assert opened not in reactor.getReaders()
        opened.resumeProducing()
        run_until(reactor, lambda: len(received.got) == 3)
    assert received.got[2][0] == b"3"
