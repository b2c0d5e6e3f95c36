"""A hostile server cannot crash, stall or grow the client.

Anyone holding the group key can run a server of their own (or pose as the real one
on the path). Whatever it sends, the client shows every valid line, ignores the rest
(one item costs only itself), keeps its one timer, keeps its memory bounded, and in
pipe mode stops reading from the network rather than buffering output nobody reads.

The first half drives the client's pieces in memory (a fake reactor, no sockets); the
second runs the real `udpchat-client` against a fake server (tests/hostile_server.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from hostile_server import HostileServer
from test_client_link import V4, FakeReactor, Front, make_link
from twisted.internet.testing import StringTransport

from udpchat.chat import messages
from udpchat.client.chatclient import ChatClient
from udpchat.client.cli import ERRORS_KEPT, Runner
from udpchat.client.display import (
    PLAIN,
    UNSHOWABLE_REPORT_INTERVAL_S,
    Item,
    Notice,
    Renderer,
)
from udpchat.client.link import ChatLink
from udpchat.client.pipe import PipeFrontEnd
from udpchat.core import events
from udpchat.core.endpoint import ClientEndpoint, ServerEndpoint

NOW = 1_700_000_000.0
#: Past the year 9999: datetime cannot show it (the ts of issue 9, finding 6).
YEAR_10000_TS = 253_402_300_800.0


def line_id() -> str:
    return secrets.token_hex(8)


def unshowable(text: str = "bad") -> Item:
    """A history line with a ts datetime cannot show, built past the validation (as
    a decoder gap or a bug would let one through): formatting it raises."""
    item: Any = object.__new__(messages.SayOut)
    for name, value in (
        ("room", "lobby"),
        ("nick", "bob"),
        ("text", text),
        ("line_id", line_id()),
        ("ts", YEAR_10000_TS),
    ):
        object.__setattr__(item, name, value)
    return item


def say(text: str, ts: float | None = None) -> bytes:
    """A say line as a server sends it, raw: ``ts`` is not checked here."""
    obj: dict[str, object] = {"t": "say", "room": "lobby", "nick": "bob", "text": text}
    obj["id"] = line_id()
    if ts is not None:
        obj.update(ts=ts, history=True)
    return json.dumps(obj).encode()


# --- one item costs only itself -------------------------------------------------------


def test_an_item_that_cannot_be_shown_costs_only_itself() -> None:
    """Each item is formatted in its own guard: the lines around one that raises are
    all shown, in order, and it is reported once, with the exception."""
    renderer = Renderer(PLAIN)
    items: list[Item] = [Notice("one"), unshowable(), Notice("two")]
    lines = renderer.lines(items, NOW)
    assert lines[0] == "-!- one" and lines[2] == "-!- two"
    assert lines[1].startswith("!!! ignored a message that cannot be shown (ValueError: year")
    assert renderer.unshowable == 1


def test_unshowable_items_are_reported_once_a_minute_with_a_count() -> None:
    """A flood of such items costs one report per minute, which counts them; every
    valid item is still shown."""
    renderer = Renderer(PLAIN)
    shown = renderer.lines([unshowable(), Notice("a"), unshowable(), unshowable()], NOW)
    assert shown[1:] == ["-!- a"]
    later = NOW + UNSHOWABLE_REPORT_INTERVAL_S
    shown = renderer.lines([unshowable(), Notice("b")], later)
    assert shown[0].endswith("; 3 in all since the last such report")
    assert shown[1] == "-!- b"
    assert renderer.unshowable == 4


def pipe_front(link: Any = None) -> tuple[PipeFrontEnd, StringTransport]:
    front = PipeFrontEnd(lambda: None, lambda: NOW)
    transport = StringTransport()
    front.makeConnection(transport)
    return front, transport


def test_pipe_prints_every_valid_line_of_a_batch_with_a_bad_one() -> None:
    """In pipe mode, 40 lines with every other one unshowable print the 20 good ones
    and one report (before: an exception, and none of the 40)."""
    front, transport = pipe_front()
    batch: list[Item] = []
    for i in range(40):
        batch.append(
            unshowable() if i % 2 else messages.SayOut("lobby", "bob", f"good {i}", line_id())
        )
    front.update(batch)
    out = transport.value().decode().splitlines()
    assert [line for line in out if line.startswith("<bob>")] == [
        f"<bob> good {i}" for i in range(0, 40, 2)
    ]
    assert len([line for line in out if line.startswith("!!!")]) == 1


class RaisingFront(Front):
    """A front end whose update raises (a bug in a front end)."""

    def update(self, items: list[Any]) -> None:
        super().update(items)
        if any(not isinstance(item, type(None)) for item in items):
            raise RuntimeError("front end bug")


def test_a_front_end_that_raises_never_costs_the_timer() -> None:
    """An exception from the front end's update is the link's "one catch": counted,
    not escaping into the reactor, and the link's one timer is set again, so
    acknowledgements, keepalives and retransmissions go on."""
    link, reactor = make_link([V4])
    link.front = RaisingFront()
    link.chat._output.append(Notice("x"))  # something to show: update raises
    link.pump()  # before: the exception escaped here, and no timer was set
    assert link.internal_errors >= 1
    assert len(reactor.getDelayedCalls()) == 1
    for _ in range(20):
        link.chat._output.append(Notice("y"))
        reactor.advance(0.5)
        assert len(reactor.getDelayedCalls()) == 1


# --- a hostile server, in memory --------------------------------------------------------


class MemoryServer:
    """A ServerEndpoint wired by hand to a ChatLink on a FakeReactor: it welcomes the
    hello and then sends raw payloads (the hostile server of tests/hostile_server.py,
    without sockets)."""

    CLIENT_ADDR = ("127.0.0.2", 40000)

    def __init__(self, psk: bytes, link: ChatLink, reactor: FakeReactor) -> None:
        self.endpoint = ServerEndpoint(psk)
        self.link, self.reactor = link, reactor
        self.session: bytes | None = None

    def exchange(self, rounds: int = 20, hold_first: bool = False) -> None:
        """Move datagrams both ways ``rounds`` times, 10 ms apart. ``hold_first``: the
        first datagram to the client goes last (so the client's core hands on what
        arrives as one batch, as after a loss)."""
        port = self.reactor.ports[0]
        for _ in range(rounds):
            now = self.reactor.seconds()
            written, port.written[:] = list(port.written), []
            for data, _addr in written:
                self.endpoint.receive_datagram(data, self.CLIENT_ADDR, now)
            while (event := self.endpoint.next_event()) is not None:
                if isinstance(event, events.SessionStarted):
                    self.session = event.session_id
                elif isinstance(event, events.MessageReceived):
                    hello = json.loads(event.payload)
                    if hello["t"] == "hello":
                        self.send(json.dumps({"t": "welcome", "nick": "alice", "room": "lobby"}))
            out = [data for data, _ in self.endpoint.datagrams_to_send(now)]
            if hold_first and len(out) > 1:
                out.append(out.pop(0))
                hold_first = False
            for data in out:
                self.link.datagram_received(data, V4[1])
            self.reactor.advance(0.01)

    def send(self, *payloads: str | bytes) -> None:
        assert self.session is not None
        for payload in payloads:
            data = payload.encode() if isinstance(payload, str) else payload
            self.endpoint.send(self.session, data, self.reactor.seconds())


def test_a_hostile_batch_costs_the_client_only_its_bad_lines() -> None:
    """The finding reproduced in memory: a server sends 40 lines in one batch, every
    other one with a ts past the year 9999. The client (ChatLink, ChatClient, pipe
    front end) prints the 20 good lines and one notice, keeps its timer, and stays
    responsive (before: none of the 40 was printed and the timer was lost)."""
    reactor = FakeReactor()
    reactor.advance(NOW)
    psk = Fernet.generate_key()
    chat = ChatClient(ClientEndpoint(psk), "alice", pipe=True)
    front, transport = pipe_front()
    link = ChatLink(chat, [V4], reactor, front, wall=reactor.seconds)
    link.start()
    front.attach(link)
    server = MemoryServer(psk, link, reactor)
    server.exchange()
    assert chat.connected
    server.send(*[say(f"bad {i}", YEAR_10000_TS) if i % 2 else say(f"good {i}") for i in range(40)])
    server.exchange(hold_first=True)
    out = transport.value().decode().splitlines()
    assert [line for line in out if line.startswith("<bob>")] == [
        f"<bob> good {i}" for i in range(0, 40, 2)
    ]
    assert out.count("!!! ignored a malformed message from the server") == 1
    assert len(reactor.getDelayedCalls()) == 1 and link.internal_errors == 0
    server.send(say("still here"))
    server.exchange()
    assert transport.value().decode().splitlines()[-1] == "<bob> still here"


# --- pipe mode: output nobody reads -------------------------------------------------


def test_pipe_output_pauses_reading_from_the_network() -> None:
    """The pipe front end makes the link the streaming producer of its stdout: when
    stdout's buffer is full, the link stops reading its UDP sockets, and reads again
    once it drained (or once stdout is gone for good)."""
    link, reactor = make_link([V4])
    front, transport = pipe_front()
    link.front = front
    front.attach(link)
    assert transport.producer is link and transport.streaming
    port = reactor.ports[0]
    link.pauseProducing()  # what the stdout transport does above its buffer size
    assert not port.reading and link.paused
    link.resumeProducing()
    assert port.reading and not link.paused
    link.pauseProducing()
    link.stopProducing()  # stdout closed: keep reading, lines typed still go out
    assert port.reading


# --- terminal mode: errors kept for later -------------------------------------------


def test_terminal_mode_keeps_only_the_last_errors() -> None:
    """In terminal mode errors (tracebacks) are printed only once the terminal is
    restored; a flood of them keeps the last few and a count (before: all of them, a
    list that never shrank)."""
    from contextlib import ExitStack

    runner = Runner(FakeReactor(), ExitStack(), [("h", 1)], b"", "alice", "lobby", True)
    for i in range(10_000):
        runner.log_event({"isError": 1, "log_format": "error {i}", "i": i, "log_time": NOW})
    lines = runner.error_lines()
    assert len(lines) == ERRORS_KEPT + 1
    assert lines[0] == f"udpchat-client: {10_000 - ERRORS_KEPT} earlier errors not shown"
    assert lines[-1].endswith("error 9999")


# --- the real client against a hostile server ------------------------------------------

CLIENT = [sys.executable, "-m", "udpchat.client.cli", "127.0.0.1"]
#: New messages a client accepts per second (the core's message_rate_per_s, after a
#: burst of 200): a server cannot push faster, so floods here are a few hundred.
FLOOD = 400


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
def key(psk_file: Path) -> bytes:
    return psk_file.read_bytes().strip()


@pytest.fixture
def server(key: bytes) -> Iterator[HostileServer]:
    with HostileServer(key) as fake:
        yield fake


class Client:
    """The real udpchat-client, in pipe mode (stdout a pipe, read by a thread unless
    ``read=False``) or terminal mode (stdin and stdout a pty)."""

    def __init__(self, port: int, key_file: Path, env: dict[str, str], mode: str, read: bool):
        argv = [*CLIENT, "--port", str(port), "--key", str(key_file), "--nick", "alice"]
        self.out = bytearray()
        self.lock = threading.Lock()
        self.stdin: Any = None
        if mode == "terminal":
            master, slave = pty.openpty()
            env = {**env, "NO_COLOR": "1"}  # plain text to look for
            self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, env=env)
            os.close(slave)
            self.fd = master
            self.stdin = None
        else:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
            )
            assert self.proc.stdout is not None
            self.fd = self.proc.stdout.fileno()
            self.stdin = self.proc.stdin
        if read:
            self.read()

    def read(self) -> None:
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            if not data:
                return
            with self.lock:
                self.out += data

    def text(self) -> str:
        with self.lock:
            return self.out.decode("utf-8", "replace")

    def wait_for(self, needle: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert self.proc.poll() is None, f"the client exited: {self.text()}"
            assert time.monotonic() < deadline, f"{needle!r} not shown: {self.text()[-2000:]}"
            time.sleep(0.05)

    def type(self, line: str) -> None:
        if self.stdin is not None:
            self.stdin.write(line.encode() + b"\n")
            self.stdin.flush()
        else:
            os.write(self.fd, line.encode() + b"\r")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(5)
        if self.stdin is not None:
            self.stdin.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        else:
            os.close(self.fd)


@pytest.fixture
def client(server: HostileServer, psk_file: Path, subprocess_env: dict[str, str]) -> Iterator[Any]:
    started: list[Client] = []

    def start(mode: str = "pipe", read: bool = True) -> Client:
        started.append(Client(server.port, psk_file, subprocess_env, mode, read))
        server.wait_welcomed()
        return started[-1]

    yield start
    for c in started:
        c.kill()


def wait_until(condition: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_real_client_shows_every_good_line_among_bad_ones(
    server: HostileServer, client: Any
) -> None:
    """The finding against the real client: 40 lines arrive in one batch, every other
    one with a ts past the year 9999. All 20 good lines are printed, in order, with
    one notice; the client keeps running and answers both ways (before: 0 of 40
    printed, and the client's timer was lost)."""
    alice = client("pipe")
    alice.wait_for("-!- alice has joined lobby")
    batch = [say(f"bad {i}", YEAR_10000_TS) if i % 2 else say(f"good {i}") for i in range(40)]
    server.send(*batch, batch=True)
    server.send(say("after the batch"))
    alice.wait_for("<bob> after the batch")
    lines = alice.text().splitlines()
    assert [line for line in lines if "good" in line] == [
        f"<bob> good {i}" for i in range(0, 40, 2)
    ]
    assert not [line for line in lines if "bad" in line]
    assert lines.count("!!! ignored a malformed message from the server") == 1
    alice.type("still listening")
    wait_until(lambda: "still listening" in server.said(), "the client's line", 5)


@pytest.mark.parametrize("mode", ["pipe", "terminal"])
def test_a_flood_of_bad_messages_neither_stalls_nor_grows_the_client(
    server: HostileServer, client: Any, mode: str
) -> None:
    """Hundreds of messages with a ts past the year 9999, as fast as the client takes
    them (its core accepts 100 new messages a second), in pipe and in terminal mode:
    the client acknowledges them all at that pace (before: its timer was lost and it
    fell to about 12 a second, one traceback each, kept in terminal mode), still shows
    the good line after them, and its memory stays put."""
    alice = client(mode)
    alice.wait_for("alice has joined lobby")
    before = rss_kib(alice.proc.pid)
    server.send(*[say(f"bad {i}", YEAR_10000_TS) for i in range(FLOOD)], say("after the flood"))
    alice.wait_for("after the flood", timeout=FLOOD / 100 + 5)
    growth = rss_kib(alice.proc.pid) - before
    assert growth < 10_000, f"RSS grew by {growth} KiB"
    assert alice.proc.poll() is None


def test_pipe_output_nobody_reads_stops_reading_the_network(
    server: HostileServer, client: Any
) -> None:
    """When the reader of stdout stops reading, the client stops acknowledging (it no
    longer reads from the network) once about 64 KiB of output wait: its memory stays
    bounded however much the server sends (before: it took everything and buffered it).
    When the reader comes back, every line arrives, exactly once and in order: the
    server kept and retransmitted what was not acknowledged."""
    alice = client("pipe", read=False)
    fcntl.fcntl(alice.fd, fcntl.F_SETPIPE_SZ, 4096)  # the smallest pipe: fills sooner
    texts = [f"line {i:03d} " + "x" * 380 for i in range(FLOOD)]
    before = rss_kib(alice.proc.pid)
    server.send(*[say(text) for text in texts])
    acked = -1
    deadline = time.monotonic() + 10
    while acked != server.acknowledged():  # until it stops growing
        acked = server.acknowledged()
        assert time.monotonic() < deadline, "the client kept taking lines nobody read"
        time.sleep(1.0)
    # 64 KiB of output is 165 lines; the pipe, and a socket read of datagrams already
    # taken, add a few dozen. All 400 is what the client did before.
    assert acked < 300, acked
    assert rss_kib(alice.proc.pid) - before < 10_000
    alice.read()
    alice.wait_for(texts[-1], timeout=15)
    shown = [
        line[len("<bob> ") :] for line in alice.text().splitlines() if line.startswith("<bob>")
    ]
    assert shown == texts
