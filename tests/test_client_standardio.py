"""The client's stdio (udpchat.client.standardio): output is written at once when
nothing waits before it, and otherwise queued by Twisted in order, with Twisted's
flow control (the producer paused above the buffer size, resumed once drained).
Real pipes for stdin and stdout; a fake reactor that only records registrations, so
the tests play the reactor's part (doWrite) themselves."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

from udpchat.client.standardio import StandardIO

PIPE_BYTES = 4096  # the smallest pipe Linux makes: fills after a few lines


class FDSet:
    """The IReactorFDSet part of a reactor: who waits to read or to write."""

    def __init__(self) -> None:
        self.readers: set[Any] = set()
        self.writers: set[Any] = set()

    def addReader(self, reader: Any) -> None:
        self.readers.add(reader)

    def addWriter(self, writer: Any) -> None:
        self.writers.add(writer)

    def removeReader(self, reader: Any) -> None:
        self.readers.discard(reader)

    def removeWriter(self, writer: Any) -> None:
        self.writers.discard(writer)


@implementer(IHalfCloseableProtocol)
class Output(Protocol):
    """A protocol that only writes; records whether its output went away."""

    def __init__(self) -> None:
        self.output_lost = False

    def writeConnectionLost(self) -> None:
        self.output_lost = True

    def readConnectionLost(self) -> None:
        pass


class Producer:
    """A streaming producer (ChatLink's part) that records pause and resume."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class Stdio:
    def __init__(self) -> None:
        self.stdin_r, self.stdin_w = os.pipe()
        self.stdout_r, self.stdout_w = os.pipe()
        fcntl.fcntl(self.stdout_w, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        os.set_blocking(self.stdout_r, False)
        self.reactor = FDSet()
        self.proto = Output()
        posix_stdio: Any = StandardIO  # (mypy also sees the Windows signature)
        self.transport = posix_stdio(self.proto, self.stdin_r, self.stdout_w, self.reactor)
        self.writer: Any = self.transport._writer

    def read_all(self) -> bytes:
        data = b""
        while True:
            try:
                chunk = os.read(self.stdout_r, 65536)
            except BlockingIOError:
                return data
            if not chunk:
                return data
            data += chunk

    def reactor_turn(self) -> None:
        """What the reactor does for a writer whose fd has room."""
        if self.writer in self.reactor.writers:
            why = self.writer.doWrite()
            if why:
                self.writer.connectionLost(Failure(why))

    def close(self) -> None:
        for fd in (self.stdin_r, self.stdin_w, self.stdout_r, self.stdout_w):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def stdio() -> Iterator[Stdio]:
    pipes = Stdio()
    yield pipes
    pipes.close()


def test_a_line_is_written_at_once_without_waiting_for_the_reactor(stdio: Stdio) -> None:
    """With nothing waiting, a write reaches stdout during the call: no later
    reactor turn, and the writer never asks to be told when stdout has room (before:
    every line waited for the next turn of the reactor)."""
    stdio.transport.write(b"<bob> hello\n")
    assert stdio.read_all() == b"<bob> hello\n"
    assert stdio.writer not in stdio.reactor.writers
    stdio.transport.write(b"<bob> again\n")
    assert stdio.read_all() == b"<bob> again\n"


def test_output_that_does_not_fit_waits_in_order_and_pauses_the_producer(
    stdio: Stdio,
) -> None:
    """A reader that stops reading: what the pipe cannot take waits in Twisted's
    buffer, every later line queues behind it (even when the pipe has room again),
    the producer is paused above the buffer's size and resumed once all is written;
    the reader gets every byte, once, in order."""
    producer = Producer()
    stdio.transport.registerProducer(producer, True)
    lines = [b"line %05d " % i + b"x" * 90 + b"\n" for i in range(1000)]  # 100 KB
    for line in lines[:50]:
        stdio.transport.write(line)
    assert stdio.writer in stdio.reactor.writers  # the pipe filled: the rest waits
    got = stdio.read_all()  # the reader takes some: room again, yet ...
    stdio.transport.write(lines[50])
    assert lines[50] not in stdio.read_all()  # ... a new line waits behind the others
    for line in lines[51:]:
        stdio.transport.write(line)
    # Above 64 KiB waiting: stop reading the network (told again at every write).
    assert producer.calls and set(producer.calls) == {"pause"}
    while stdio.writer in stdio.reactor.writers:
        got += stdio.read_all()
        stdio.reactor_turn()
    got += stdio.read_all()
    assert got == b"".join(lines)
    assert producer.calls[-1] == "resume" and producer.calls.count("resume") == 1
    stdio.transport.write(b"after\n")  # drained: at once again
    assert stdio.read_all() == b"after\n"


def test_a_reader_that_went_away_is_reported(stdio: Stdio) -> None:
    """A write to a pipe whose reader closed (`| head`) is not lost silently: it
    goes the way Twisted always took, and the protocol hears writeConnectionLost."""
    os.close(stdio.stdout_r)
    stdio.transport.write(b"nobody reads this\n")
    stdio.reactor_turn()
    assert stdio.proto.output_lost
