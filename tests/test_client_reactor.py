"""The client's reactor (udpchat.client.reactor): Twisted's epoll reactor without a
log context per event, which must still do what the reactor does with events: call
the ready descriptor's handler, and catch, log and disconnect a handler that raises
while the others go on. A reactor of its own (not the global one) on real pipes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet.abstract import FileDescriptor
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from udpchat.client.reactor import ClientReactor


class PipeReader(FileDescriptor):
    """Reads a pipe; ``broken`` makes its handler raise (a bug in a protocol)."""

    def __init__(self, reactor: Any, fd: int, broken: bool = False) -> None:
        super().__init__(reactor)
        self.fd, self.broken = fd, broken
        self.data = b""
        self.lost: Failure | None = None

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        if self.broken:
            raise RuntimeError("a bug")
        self.data += os.read(self.fd, 1024)

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason
        super().connectionLost(reason)


@pytest.fixture
def pipes() -> Iterator[list[tuple[int, int]]]:
    made = [os.pipe() for _ in range(2)]
    yield made
    for read_end, write_end in made:
        os.close(read_end)
        os.close(write_end)


@pytest.fixture
def reactor(pipes: list[tuple[int, int]]) -> Iterator[ClientReactor]:
    made = ClientReactor()
    yield made
    made.removeAll()  # before the pipes are closed
    made.waker.connectionLost(None)
    made._poller.close()


def test_a_readable_descriptor_is_read(
    reactor: ClientReactor, pipes: list[tuple[int, int]]
) -> None:
    reader = PipeReader(reactor, pipes[0][0])
    reader.startReading()
    os.write(pipes[0][1], b"hello")
    reactor.iterate(0)
    assert reader.data == b"hello"
    reactor.iterate(0)  # nothing more to read: not called again
    assert reader.data == b"hello" and reader.lost is None


def test_a_handler_that_raises_is_logged_and_disconnected_and_the_others_go_on(
    reactor: ClientReactor, pipes: list[tuple[int, int]]
) -> None:
    """As in Twisted's own reactor: the error is logged (no longer with the name of
    the descriptor), the descriptor that raised is disconnected, and a descriptor
    ready in the same round is still read."""
    logged: list[dict[str, Any]] = []
    broken = PipeReader(reactor, pipes[0][0], broken=True)
    healthy = PipeReader(reactor, pipes[1][0])
    broken.startReading()
    healthy.startReading()
    os.write(pipes[0][1], b"x")
    os.write(pipes[1][1], b"still read")
    observer: Any = logged.append
    globalLogPublisher.addObserver(observer)
    try:
        reactor.iterate(0)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert broken.lost is not None and broken.lost.check(RuntimeError)
    assert broken not in reactor.getReaders()
    failures = [e.get("log_failure") or e.get("failure") for e in logged]
    assert any(f is not None and f.check(RuntimeError) for f in failures)
    assert healthy.data == b"still read" and healthy in reactor.getReaders()


def test_the_client_installs_it_unless_a_reactor_is_there_already(
    subprocess_env: dict[str, str],
) -> None:
    script = (
        "from udpchat.client.reactor import install\n"
        "first, again = install(), install()\n"
        "from twisted.internet import reactor\n"
        "print(first, again, type(reactor).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=subprocess_env, capture_output=True, text=True
    )
    assert out.stdout.split() == ["True", "False", "ClientReactor"], out.stderr


def test_a_turn_runs_what_is_due_and_only_that(reactor: ClientReactor) -> None:
    """A turn with nothing due is answered at once (a datagram woke the client); a
    timer that is due, a new one that is due, a call from another thread, and one
    cancelled while many others wait still take Twisted's way, as before."""
    now = [100.0]
    reactor.seconds = lambda: now[0]
    ran: list[str] = []
    reactor.callLater(5, ran.append, "later")
    reactor.runUntilCurrent()
    reactor.runUntilCurrent()  # nothing due: nothing runs
    assert ran == []
    now[0] = 105.0
    reactor.callLater(0, ran.append, "new")
    reactor.callFromThread(ran.append, "thread")
    reactor.runUntilCurrent()
    assert sorted(ran) == ["later", "new", "thread"]
    calls = [reactor.callLater(60, ran.append, "never") for _ in range(60)]
    for call in calls:
        call.cancel()
    reactor.runUntilCurrent()  # more than 50 cancelled: Twisted tidies its heap
    assert reactor.getDelayedCalls() == [] and reactor._cancellations == 0
