"""The client is never silent about an unreachable server (issue 11): what it tells
while waiting for the server's answer (Reachability), how it treats the network's
errors once connected (LinkCheck), --timeout, and how the network's errors reach it
(ErrorQueuePort, ChatLink). Pure code on a fake clock, the in-memory network, and one
real loopback socket; the real daemon and client are in test_client_diagnosis.py."""

from __future__ import annotations

import errno
import select
import socket
from typing import Any

import pytest
from client_net import START, Net
from test_client_link import V4, V6, make_link
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from udpchat.client.chatclient import REFUSED_FALLBACK_S, State
from udpchat.client.reachability import (
    DIAGNOSE_AFTER_S,
    PROBE_AFTER_REFUSAL_S,
    Diagnosis,
    Finding,
    LinkCheck,
    Reachability,
)
from udpchat.client.udpport import ErrorQueuePort

SERVER = "chat.example:12345"


def texts(items: list[Diagnosis]) -> list[str]:
    return [item.text for item in items]


def reach(**kw: Any) -> Reachability:
    r = Reachability(SERVER, 12345, "ABCD-EFGH", **kw)
    r.begin(START)
    return r


# --- Reachability: what is told while waiting ------------------------------------------


def test_silence_is_explained_after_five_seconds_with_the_causes_in_order() -> None:
    """No answer and no error: nothing before DIAGNOSE_AFTER_S (5 s), then one
    diagnosis naming the server, the likely causes in order (daemon down or filtered,
    key differs with this key's fingerprint, address not allowed); not repeated."""
    r = reach()
    r.sent(0, START)
    assert r.deadline() == START + DIAGNOSE_AFTER_S
    assert r.on_timer(START + DIAGNOSE_AFTER_S - 0.01, 1) == []
    told = texts(r.on_timer(START + DIAGNOSE_AFTER_S, 1))
    assert told[0] == f"no answer from {SERVER} after 5 s; still trying. Likely:"
    assert told[1].startswith("1. the daemon is not running there, or a firewall drops UDP")
    assert "port 12345" in told[1]
    assert told[2].startswith("2. your key differs") and "fingerprint ABCD-EFGH" in told[2]
    assert told[3].startswith("3. the server does not allow your address")
    assert r.on_timer(START + 60, 1) == []


def test_two_refusals_tell_at_once_that_nothing_is_listening() -> None:
    """Two "port unreachable" errors (the first attempt and its retry) tell at once
    that nothing listens there, with what to check; one alone waits for the
    deadline, then tells the same."""
    r = reach()
    assert r.network_error(0, Finding.REFUSED, START + 0.001, 1) == []
    told = texts(r.network_error(0, Finding.REFUSED, START + 1.0, 1))
    assert told[0] == f"nothing is listening on {SERVER} (the network refused); still trying"
    assert "Clients can connect to ADDRESS:PORT" in told[1]
    assert r.on_timer(START + DIAGNOSE_AFTER_S, 1) == []  # told already
    once = reach()
    once.sent(0, START)
    assert once.network_error(0, Finding.REFUSED, START + 0.001, 1) == []
    assert texts(once.on_timer(START + DIAGNOSE_AFTER_S, 1))[0].startswith("nothing is listening")


def test_a_finding_that_changes_is_told_again() -> None:
    """Refused, then a later attempt meets no error for a second (the daemon came up,
    but does not answer: another key, say): the silence diagnosis follows."""
    r = reach()
    r.sent(0, START)
    r.network_error(0, Finding.REFUSED, START, 1)
    r.sent(0, START + 1)
    assert texts(r.network_error(0, Finding.REFUSED, START + 1, 1))[0].startswith("nothing is")
    r.sent(0, START + 3)
    r.network_error(0, Finding.REFUSED, START + 3.001, 1)
    assert r.on_timer(START + DIAGNOSE_AFTER_S, 1) == []  # still refused: told already
    r.sent(0, START + 7)  # meets no error
    assert r.on_timer(START + 7.5, 1) == []  # within ERROR_GRACE_S: still "refused"
    told = texts(r.on_timer(START + 9.6, 1))  # the next check (every RECHECK_S)
    assert told[0].startswith(f"no answer from {SERVER} after 10 s")


def test_with_several_addresses_refused_means_all_of_them() -> None:
    """ "localhost" as ::1 (refused: an IPv4-only daemon) and 127.0.0.1 (silent: another
    key): silence is told, noting the refusal; when every address refused, "nothing is
    listening"."""
    r = reach()
    r.sent(0, START)
    r.network_error(0, Finding.REFUSED, START, 2)
    r.sent(1, START + 0.3)
    assert r.network_error(0, Finding.REFUSED, START + 1, 2) == []
    told = texts(r.on_timer(START + DIAGNOSE_AFTER_S, 2))
    assert told[0].startswith("no answer") and "1 of its addresses refused" in told[1]
    both = reach()
    both.network_error(0, Finding.REFUSED, START, 2)
    both.network_error(1, Finding.REFUSED, START + 0.3, 2)
    assert texts(both.network_error(0, Finding.REFUSED, START + 1, 2))[0].startswith("nothing")


def test_unreachable_and_ipv6_hints() -> None:
    """Host unreachable is told as such; a refused IPv6 address adds that a default
    daemon listens on IPv4 only."""
    r = reach()
    r.network_error(0, Finding.UNREACHABLE, START, 1)
    told = texts(r.network_error(0, Finding.UNREACHABLE, START + 1, 1))
    assert told[0] == f"{SERVER} is unreachable (the network says); still trying"
    v6 = reach(ipv6=True)
    v6.network_error(0, Finding.REFUSED, START, 1)
    told = texts(v6.network_error(0, Finding.REFUSED, START + 1, 1))
    assert any("listens on IPv4 only" in line and "interface = ::" in line for line in told)


def test_an_answer_ends_the_wait_and_says_so_only_after_a_diagnosis() -> None:
    r = reach()
    assert r.answered() == [] and r.deadline() is None
    r.begin(START + 10)
    r.on_timer(START + 10 + DIAGNOSE_AFTER_S, 1)
    assert texts(r.answered()) == [f"{SERVER} answers now"]
    assert r.since is None and r.waited_s(START + 100) is None


# --- LinkCheck: the network's errors while connected -----------------------------------


def test_one_refusal_probes_and_a_second_confirms() -> None:
    """One refusal is only a hint: a probe is due PROBE_AFTER_REFUSAL_S later. A second
    one, that late or later, with nothing heard from the server in between, is the
    verdict."""
    check = LinkCheck()
    assert not check.network_error(START, heard_at=START - 3)
    assert not check.probe_due(START + PROBE_AFTER_REFUSAL_S - 0.01)
    assert check.probe_due(START + PROBE_AFTER_REFUSAL_S)
    assert not check.probe_due(START + 1)  # once
    assert check.network_error(START + PROBE_AFTER_REFUSAL_S + 0.001, heard_at=START - 3)


def test_errors_for_one_burst_or_around_an_answer_are_not_a_verdict() -> None:
    """Errors within PROBE_AFTER_REFUSAL_S of the first (datagrams sent together) count
    as one; an authentic datagram from the server in between starts over (a forged
    or stale error followed by a live server)."""
    check = LinkCheck()
    check.network_error(START, heard_at=START - 3)
    assert not check.network_error(START + 0.1, heard_at=START - 3)
    assert not check.network_error(START + 2, heard_at=START + 1)  # the server spoke
    assert check.network_error(START + 3, heard_at=START + 1)


# --- ChatClient: the in-memory network --------------------------------------------------


def test_a_server_gone_while_connected_is_noticed_when_the_client_next_sends() -> None:
    """The server process dies (its port refuses): the next line the client sends
    meets a refusal, the probe half a second later another, and the client says the
    connection is lost and reconnects; the line is not lost."""
    net = Net()
    alice, bob = net.client("alice"), net.client("bob")
    net.run_until(lambda: alice.chat.connected and bob.chat.connected)
    net.refusing = True
    net.submit(alice, "anyone?")
    net.run(PROBE_AFTER_REFUSAL_S + 0.1)
    assert alice.chat.state in (State.WAITING, State.CONNECTING)
    notice = "-!- connection to server lost; reconnecting in"
    detail = "(nothing is listening on the server any more)"
    assert any(line.startswith(notice) and line.endswith(detail) for line in alice.lines)
    net.start_server()
    net.refusing = False
    net.run_until(lambda: alice.chat.connected and bob.chat.connected)
    net.run(1)
    assert sum(line.endswith("<alice> anyone?") for line in bob.lines) == 1


def test_a_single_refusal_while_connected_changes_nothing() -> None:
    """One (forged or stale) refusal while the server is alive: the client probes, the
    server keeps talking, the session stays."""
    net = Net()
    alice = net.client("alice")
    net.run_until(lambda: alice.chat.connected)
    session = alice.chat.endpoint.session_id
    alice.chat.network_error(0, Finding.REFUSED, net.now)
    net.run(5)
    assert alice.chat.state is State.READY and alice.chat.endpoint.session_id == session
    assert not any("connection to server lost" in line for line in alice.lines)


def test_a_refused_address_is_left_at_once_for_the_next() -> None:
    """With several addresses, one the network refused is left after
    REFUSED_FALLBACK_S instead of the whole fallback time."""
    net = Net()
    net.up = False  # no answer from either address
    alice = net.client("alice", addresses=2, fallback_after_s=3.0, start=False)
    alice.chat.start(net.now, addresses=2)
    assert alice.chat.address_index == 0
    alice.chat.network_error(0, Finding.REFUSED, net.now)
    net.run(REFUSED_FALLBACK_S + 0.05)
    assert alice.chat.address_index == 1


def test_timeout_gives_up_with_the_diagnosis_when_never_answered() -> None:
    """--timeout: a server that never answers ends the run after that long: the
    diagnosis (even before 5 s), a line saying the client gives up, the lines typed
    reported not delivered, and timed_out set (exit status 3)."""
    net = Net()
    net.up = False
    alice = net.client("alice", pipe=True, give_up_after_s=2.0)
    net.submit(alice, "hello")
    net.run(1.9)
    assert not alice.chat.done
    net.run(0.2)
    assert alice.chat.done and alice.chat.timed_out
    assert any(line.startswith("-!- no answer from the server after 2 s") for line in alice.lines)
    assert "-!- no answer from the server within 2 s (--timeout); giving up" in alice.lines
    assert "!!! not delivered: hello" in alice.lines


def test_with_timeout_an_empty_input_still_waits_to_see_the_server_answer() -> None:
    """Without input, --timeout makes the run a reachability check: the client waits
    for the server's answer, leaves, and is not timed out; without --timeout it ends
    at once."""
    net = Net()
    alice = net.client("alice", pipe=True, give_up_after_s=5.0)
    alice.chat.finish(net.now)
    net.run_until(lambda: alice.chat.done)
    assert not alice.chat.timed_out and "-!- you are alice in lobby" in alice.lines
    bob = net.client("bob", pipe=True)
    bob.chat.finish(net.now)
    assert bob.chat.done and bob.lines == []


def test_a_reconnect_that_meets_silence_says_when_it_tries_again() -> None:
    """After the lost connection, a server that stays silent gets the diagnosis, and
    each new round says when it comes."""
    net = Net()
    alice = net.client("alice")
    net.run_until(lambda: alice.chat.connected)
    net.up = False
    net.run(4 + DIAGNOSE_AFTER_S + 4 + 1)  # expiry (4 s, FAST), the wait, one more round
    lost = [line for line in alice.lines if line.startswith("-!- connection to server lost")]
    assert len(lost) == 1
    assert any(line.startswith("-!- no answer from the server after") for line in alice.lines)
    assert any(
        line.startswith("-!- still no answer from the server; retrying in") for line in alice.lines
    )


# --- ChatLink and ErrorQueuePort: the network's errors reach the ChatClient ------------


def test_the_link_passes_on_errors_about_the_servers_addresses_only() -> None:
    """An ICMP error about a datagram to one of the server's addresses reaches the
    ChatClient with that address's index; one about another destination, or of a kind
    that says nothing about the server, is ignored."""
    link, reactor = make_link([V6, V4], fallback=3.0)
    seen: list[tuple[int, Finding]] = []

    def record(address: int, finding: Finding, now: float) -> None:
        seen.append((address, finding))

    link.chat.network_error = record  # type: ignore[method-assign]
    link.network_error(("192.0.2.99", 12345), errno.ECONNREFUSED)
    link.network_error(V4[1], errno.EMSGSIZE)
    assert seen == []
    link.network_error(V4[1], errno.ECONNREFUSED)
    link.network_error(V6[1], errno.EHOSTUNREACH)
    assert seen == [(1, Finding.REFUSED), (0, Finding.UNREACHABLE)]


class _Reactor:
    """What a udp.Port needs of a reactor to listen, for one real socket."""

    def __init__(self) -> None:
        self.readers: set[Any] = set()

    def addReader(self, reader: Any) -> None:
        self.readers.add(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.discard(reader)

    def callLater(self, *args: Any) -> None:
        pass


class _Proto:
    def __init__(self) -> None:
        self.errors: list[tuple[tuple[str, int], int]] = []
        self.datagrams: list[bytes] = []
        self.transport: Any = None

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def doStart(self) -> None:
        pass

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.datagrams.append(data)

    def network_error(self, destination: tuple[str, int], error: int) -> None:
        self.errors.append((destination, error))


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unconnected_socket_hears_port_unreachable_and_keeps_reading() -> None:
    """A real loopback socket (Linux): a datagram to a port nobody listens on comes
    back as ECONNREFUSED about that destination, read from the error queue whether the
    reactor says "readable" or "closed"; the port reads on, and still gets datagrams
    from anyone (it is not connected)."""
    reactor = _Reactor()
    proto = _Proto()
    port = ErrorQueuePort(0, proto, "127.0.0.1", reactor=reactor)
    port.startListening()
    try:
        assert port.hears_errors
        dead = ("127.0.0.1", closed_port())
        port.socket.sendto(b"hello?", dead)
        port.readConnectionLost(Failure(ConnectionDone()))  # epoll: an error alone
        assert proto.errors == [(dead, errno.ECONNREFUSED)]
        assert port in reactor.readers
        port.socket.sendto(b"again", dead)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.sendto(b"from elsewhere", port.socket.getsockname())
        port.doRead()
        assert proto.errors[1:] == [(dead, errno.ECONNREFUSED)]
        assert proto.datagrams == [b"from elsewhere"]
        assert port.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    finally:
        port.socket.close()


def test_the_error_queue_is_read_only_when_an_error_is_pending() -> None:
    """Reading datagrams when no network error is pending does not look at the error
    queue (it was two system calls per received line). An error whose pending mark a
    send took (that send failed with it) is still read, when the reactor says "closed"
    once no datagram waits (select.poll stands in for the reactor's epoll here)."""
    reactor = _Reactor()
    proto = _Proto()
    port = ErrorQueuePort(0, proto, "127.0.0.1", reactor=reactor)
    port.startListening()
    looked: list[bool] = []
    read_errors = port.read_errors

    def counted() -> None:
        looked.append(True)
        read_errors()

    port.read_errors = counted  # type: ignore[method-assign]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            for text in (b"one", b"two"):
                other.sendto(text, port.socket.getsockname())
            port.doRead()  # one datagram per turn of the reactor
            port.doRead()
            assert proto.datagrams == [b"one", b"two"] and looked == []
            dead = ("127.0.0.1", closed_port())
            port.socket.sendto(b"hello?", dead)
            with pytest.raises(ConnectionRefusedError):
                port.socket.sendto(b"hello?", dead)  # takes the pending mark
            other.sendto(b"three", port.socket.getsockname())
            port.doRead()
            assert proto.datagrams[-1] == b"three" and proto.errors == []
            poller = select.poll()
            poller.register(port.socket.fileno(), select.POLLIN)
            assert poller.poll(0) == [(port.socket.fileno(), select.POLLERR)]  # "closed"
            port.readConnectionLost(Failure(ConnectionDone()))
            assert proto.errors == [(dead, errno.ECONNREFUSED)]
            assert poller.poll(0) == []
    finally:
        port.socket.close()
