"""ChatLink, the client's Twisted glue: datagrams to and from the server address only,
one timer, the next server address when a handshake goes unanswered; and the pipe
front end's input handling. A fake reactor (task.Clock + fake UDP ports), no sockets."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from client_net import FAST, Net
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from udpchat.client.chatclient import ChatClient, State
from udpchat.client.link import ChatLink
from udpchat.client.pipe import PipeFrontEnd
from udpchat.core.endpoint import ClientEndpoint

ID = "0123456789abcdef"  # a line id


class FakeSocket:
    def __init__(self, written: list[tuple[bytes, tuple[str, int]]]) -> None:
        self.written = written

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.written.append((data, addr))


class FakePort:
    """A listening UDP port; the link sends on its socket."""

    def __init__(self, proto: Any, interface: str) -> None:
        self.proto, self.interface = proto, interface
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.socket = FakeSocket(self.written)
        self.listening = True
        self.reading = True

    def stopListening(self) -> None:
        self.listening = False

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True


class FakeReactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakePort] = []

    def listenUDP(self, port: int, proto: Any, interface: str = "") -> FakePort:
        fake = FakePort(proto, interface)
        self.ports.append(fake)
        return fake


class Front:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self.done = False

    def update(self, items: list[Any]) -> None:
        self.items.extend(items)

    def chat_done(self) -> None:
        self.done = True


V4 = (socket.AF_INET, ("192.0.2.1", 12345))
V6 = (socket.AF_INET6, ("2001:db8::1", 12345))


def make_link(servers: list[Any], fallback: float | None = None) -> tuple[ChatLink, FakeReactor]:
    reactor = FakeReactor()
    reactor.advance(1_700_000_000)
    net = Net()
    chat = ChatClient(ClientEndpoint(net.psk, FAST), "alice", fallback_after_s=fallback)
    link = ChatLink(chat, servers, reactor, Front(), wall=reactor.seconds)
    link.start()
    return link, reactor


def test_handshake_goes_to_the_server_on_a_socket_of_its_family() -> None:
    """For an IPv6 server the link opens one socket on "::", and the handshake datagrams
    it sends all go to the server's address."""
    link, reactor = make_link([V6])
    assert [port.interface for port in reactor.ports] == ["::"]
    assert reactor.ports[0].written and all(a == V6[1] for _, a in reactor.ports[0].written)


def test_datagrams_from_other_ports_never_reach_the_core() -> None:
    """Only the server's port is listened to; the address may differ (a multi-homed
    server on a wildcard address answers from the address routing picks), and the
    core authenticates whatever comes."""
    link, reactor = make_link([V4])
    link.datagram_received(b"\x02junk", ("192.0.2.1", 9999))
    assert link.chat.endpoint.stats.take() == {}
    link.datagram_received(b"\x02junk", ("192.0.2.1", 12345))
    link.datagram_received(b"\x02junk", ("192.0.2.66", 12345))
    assert sum(link.chat.endpoint.stats.take().values()) == 2  # the server's port: judged


def test_exactly_one_timer_is_scheduled() -> None:
    """The link keeps exactly one timer pending at all times."""
    link, reactor = make_link([V4])
    for _ in range(50):
        reactor.advance(0.7)
        assert len(reactor.getDelayedCalls()) == 1


class TickingReactor(FakeReactor):
    """A reactor whose clock moves on a little at every reading, as a real one does."""

    def seconds(self) -> float:
        self.rightNow += 10e-6
        return self.rightNow


def test_a_deadline_that_did_not_move_keeps_its_timer() -> None:
    """Input that leaves the ChatClient's next deadline where it was (most datagrams:
    the ack was already due) leaves the reactor's timer alone, although the clock
    moved on between reading it and arming the timer (before: the timer ended a few
    microseconds after the deadline, and was cancelled and armed again for every
    datagram, a reactor round trip per received line)."""
    reactor = TickingReactor()
    reactor.advance(1_700_000_000)
    chat = ChatClient(ClientEndpoint(Net().psk, FAST), "alice")
    link = ChatLink(chat, [V4], reactor, Front(), wall=reactor.seconds)
    link.start()
    calls: list[Any] = list(reactor.getDelayedCalls())
    [timer] = calls
    deadline = chat.get_timer()
    assert deadline is not None and timer.getTime() > deadline
    for _ in range(20):
        link.pump()  # what every datagram ends with
    assert reactor.getDelayedCalls() == [timer] and timer.active()
    reactor.advance(timer.getTime() - reactor.rightNow)  # it fires: armed anew, once
    calls = list(reactor.getDelayedCalls())
    [after] = calls
    assert after is not timer and after.active()


def test_the_system_clock_is_told_when_it_moves() -> None:
    """The ChatClient hears what the system clock says (for its handshakes) at the
    start and whenever it moved against monotonic time, a step or a drift of a
    millisecond, not again and again for every datagram when it did not."""
    reactor = FakeReactor()
    reactor.advance(1_700_000_000)
    step = [0.0]
    chat = ChatClient(ClientEndpoint(Net().psk, FAST), "alice")
    told: list[float] = []
    tell = chat.set_wall_clock

    def recorded(wall: float, now: float) -> None:
        told.append(wall - now)
        tell(wall, now)

    chat.set_wall_clock = recorded  # type: ignore[method-assign]
    link = ChatLink(chat, [V4], reactor, Front(), wall=lambda: reactor.seconds() + step[0])
    link.start()
    for _ in range(10):
        reactor.advance(0.1)
        link.datagram_received(b"\x02junk", V4[1])
    assert told == [0.0]
    step[0] = -300.0  # stepped back five minutes
    link.datagram_received(b"\x02junk", V4[1])
    step[0] += 0.0005  # slewed: less than the tolerance
    link.datagram_received(b"\x02junk", V4[1])
    step[0] += 0.001
    link.datagram_received(b"\x02junk", V4[1])
    assert told == [0.0, -300.0, pytest.approx(-299.9985)]
    assert chat.endpoint.clock.offset == pytest.approx(-299.9985)


def test_a_bug_costs_one_datagram_is_shown_once_and_keeps_the_timer() -> None:
    """An exception escaping the ChatClient (a bug in udpchat) is caught by the link:
    the user is shown it once a minute at most, it is counted, and the client and its
    one timer go on."""
    link, reactor = make_link([V4])
    front = link.front
    assert isinstance(front, Front)

    def broken(data: bytes, now: float) -> None:
        raise RuntimeError("a bug")

    link.chat.receive_datagram = broken  # type: ignore[method-assign]
    for _ in range(3):
        link.datagram_received(b"x", V4[1])
    problems = [i for i in front.items if "internal error" in str(i)]
    assert len(problems) == 1 and "RuntimeError: a bug" in str(problems[0])
    assert link.internal_errors == 3
    assert len(reactor.getDelayedCalls()) == 1
    reactor.advance(61)
    link.datagram_received(b"x", V4[1])
    assert len([i for i in front.items if "internal error" in str(i)]) == 2


def test_unanswered_handshake_moves_on_to_the_next_address() -> None:
    """When the first server address does not answer within the fallback time, the
    handshake moves on to the next address (the client still connecting), and after
    another fallback time round again to the first."""
    link, reactor = make_link([V6, V4], fallback=3.0)
    v6_port, v4_port = reactor.ports
    assert v6_port.written and not v4_port.written
    reactor.advance(3.1)
    assert v4_port.written and all(a == V4[1] for _, a in v4_port.written)
    assert link.chat.state is State.CONNECTING
    reactor.advance(3.1)
    assert len(v6_port.written) > 1  # and round again


def test_stopping_closes_the_sockets_and_the_timer() -> None:
    """Quitting before connected ends at once: the front end is told it is done, the
    socket stops listening and no timer is left."""
    link, reactor = make_link([V4])
    link.quit()  # not connected: ends at once
    assert link.front.done  # type: ignore[union-attr]
    assert not reactor.ports[0].listening
    assert reactor.getDelayedCalls() == []


# --- the pipe front end ----------------------------------------------------------------


class RecordingLink:
    """Stands in for ChatLink: records submitted lines; the chat always has room."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.finished = False
        self.rejected: list[str] = []
        link = self

        class Chat:
            done = False

            def room_for_input(self) -> bool:
                return True

            def reject_input(self, text: str) -> None:
                link.rejected.append(text)

        self.chat = Chat()

    def submit(self, lines: list[str]) -> None:
        self.lines.extend(lines)

    def finish(self) -> None:
        self.finished = True


def pipe() -> tuple[PipeFrontEnd, RecordingLink, StringTransport]:
    exits: list[bool] = []
    front = PipeFrontEnd(lambda: exits.append(True), lambda: 0.0)
    transport = StringTransport()
    front.makeConnection(transport)
    link = RecordingLink()
    front.attach(link)  # type: ignore[arg-type]
    return front, link, transport


def test_pipe_splits_lines_across_reads_and_strips_crlf() -> None:
    """Piped input is split into lines across reads, each without its CRLF or LF
    ending; at end of input a last line without a newline is submitted too and the
    link is told to finish."""
    front, link, _ = pipe()
    front.dataReceived(b"one\r\ntw")
    front.dataReceived(b"o\nthree")
    assert link.lines == ["one", "two"]
    front.readConnectionLost()
    assert link.lines == ["one", "two", "three"]  # the last line needs no newline
    assert link.finished


def test_pipe_reports_bad_utf8_and_huge_lines_and_goes_on() -> None:
    """An input line that is not UTF-8 or is far too long is skipped with a message
    naming its line number, and the lines after it are still submitted."""
    front, link, _ = pipe()
    front.dataReceived(b"ok\n\xff\xfe\n" + b"x" * 20000 + b"\nafter\n")
    assert link.lines == ["ok", "after"]
    assert link.rejected == [
        "input line 2 is not UTF-8; skipped",
        "input line 3 is far too long; skipped",
    ]


def test_pipe_prints_events_as_plain_lines() -> None:
    """The pipe front end writes events to its output in the plain format, one line
    each."""
    from udpchat.chat import messages

    front, _, transport = pipe()
    front.update([messages.SayOut("lobby", "bob", "hi", ID), messages.JoinNotice("lobby", "eve")])
    assert transport.value() == b"<bob> hi\n-!- eve has joined lobby\n"
