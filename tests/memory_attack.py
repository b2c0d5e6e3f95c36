"""A memory-exhaustion attack on a real daemon (issue 9, finding 3), by key holders.

Each attacking member, over its own loopback socket and source address (so the
handshake rate limit per address does not slow the test), runs the real protocol
core in this one process:

1. joins its own room and fills its history with the largest lines (400 bytes of
   UTF-8 with one 4-byte character, the costliest as Python strings);
2. then stops reading what the daemon sends (so it acknowledges nothing) and, in one
   burst, moves through other full rooms, each move replaying a whole history into
   its send queue at the daemon; and sends messages of 1,000 bytes after a gap in
   its sequence numbers, which the daemon can only buffer out of order;
3. keeps its session alive with pings for `hold_s`, then falls silent: its session
   expires after the daemon's idle_timeout.

Meanwhile the daemon's RSS is read from /proc/PID/status. Used by
tests/test_daemon_memory.py and benchmarks/memory_attack.py.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from udpchat.core import events, limits
from udpchat.core.endpoint import ClientEndpoint
from udpchat.core.limits import ProtocolConfig

Address = tuple[str, int]
#: The costliest history line: 400 bytes of UTF-8 (the limit), 397 characters, one
#: of which needs 4 bytes, so that a Python str holds every character in 4 bytes;
#: the others are quotes, which JSON escapes: the encoded line is about 900 bytes.
ATTACK_TEXT = "\U0001f600" + '"' * 396
#: Out-of-order messages sent after the gap: the receive window (256) less the gap.
STUFFED_MESSAGES = 255
STUFFED_BYTES = 1000  # MAX_PAYLOAD_BYTES
#: New messages the daemon accepts from one session at once (its message_burst).
MESSAGE_BURST = 200
#: Room moves at most: each replays a history of 50 lines, plus a few notices, and
#: 18 moves stay below the 1,088 messages of a send queue without byte bounds.
MAX_MOVES = 18


def rss_bytes(pid: int) -> int:
    """The resident set size of process `pid` (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no VmRSS for process {pid}")


def rx_queue_bytes(port: int) -> int:
    """Bytes waiting in the receive buffer of the UDP socket bound to `port`."""
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(name).read_text().splitlines()[1:]:
            columns = line.split()
            if columns[1].endswith(f":{port:04X}"):
                return int(columns[4].split(":")[1], 16)
    return 0


def source_address(index: int) -> str:
    """A distinct loopback source per attacker (127.0.0.0/8 all reaches the daemon)."""
    return f"127.20.{index // 250}.{index % 250 + 1}"


def attacker_config() -> ProtocolConfig:
    """An attacker's core: a send window over the whole receive window, so that its
    burst goes out at once without waiting for acknowledgements, and no byte bound
    of its own (the field exists only once the core has byte budgets)."""
    names = {f.name for f in fields(ProtocolConfig)}
    extra = {"send_queue_bytes": 1 << 30} if "send_queue_bytes" in names else {}
    return ProtocolConfig(send_window=512, send_queue_max=4096, **extra)


def moves_that_fit(history_lines: int) -> int:
    """Room moves whose histories fit the daemon's send queue without overflowing it
    (an attacker holds the most memory just below the limit, and the daemon closes
    a session whose queue overflows)."""
    history = history_lines or 1
    overhead = getattr(limits, "MESSAGE_OVERHEAD_BYTES", None)
    budget = getattr(ProtocolConfig(), "send_queue_bytes", None)
    if overhead is None or budget is None:
        return MAX_MOVES
    text = json.dumps(ATTACK_TEXT, ensure_ascii=False).encode()
    line = len(text) + 110 + overhead  # with the other fields, ts and history: true
    return max(1, min(MAX_MOVES, int(0.85 * budget) // (history * line) - 1))


@dataclass
class Attacker:
    """One attacking member: a ClientEndpoint and a socket bound to its own source."""

    index: int
    server: Address
    psk: bytes
    core: ClientEndpoint = field(init=False)
    sock: socket.socket = field(init=False)
    delivered: int = 0
    sent: int = 0
    welcomed: bool = False
    listening: bool = True
    stuffed: int = 0
    stuff_total: int = STUFFED_MESSAGES

    def __post_init__(self) -> None:
        self.core = ClientEndpoint(self.psk, attacker_config())
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source_address(self.index), 0))
        self.sock.setblocking(False)
        self.core.connect(time.time())

    @property
    def room(self) -> str:
        return f"a{self.index}"

    def send(self, message: dict[str, Any] | bytes) -> None:
        payload = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.core.send(payload, time.time())
        self.sent += 1

    def pump(self) -> None:
        """Send what the core has to send; read (if still listening) what came."""
        now = time.time()
        if self.listening:
            self.core.handle_timer(now)
        for data in self.core.datagrams_to_send(now):
            try:
                self.sock.sendto(data, self.server)
            except BlockingIOError:
                pass  # UDP: as good as lost
        while True:
            try:
                data, addr = self.sock.recvfrom(2048)
            except BlockingIOError:
                break
            if self.listening and addr[:2] == self.server:
                self.core.receive_datagram(data, time.time())
        while (event := self.core.next_event()) is not None:
            if isinstance(event, events.MessageDelivered):
                self.delivered += 1
            elif isinstance(event, events.MessageReceived):
                if json.loads(event.payload).get("t") == "welcome":
                    self.welcomed = True

    def attack(self, count: int, moves: int) -> None:
        """Stop listening, move through `moves` full rooms, then stuff the daemon's
        receive buffer: a gap in the sequence numbers, then 1,000-byte messages."""
        self.listening = False
        for step in range(1, moves + 1):
            self.send({"t": "join", "room": f"a{(self.index + step) % count}"})
        session: Any = self.core._session  # noqa: SLF001 - a key holder sends any seq
        session._sendq._next_seq += 1  # noqa: SLF001 - the gap: this seq never comes
        self.stuff(MESSAGE_BURST - moves - 1)

    def stuff(self, most: int) -> None:
        """Up to `most` more out-of-order messages, `stuff_total` in all."""
        for _ in range(min(most, self.stuff_total - self.stuffed)):
            self.send(os.urandom(STUFFED_BYTES // 2).hex().encode())
            self.stuffed += 1
        self.pump()

    def ping(self) -> None:
        """An authentic datagram that keeps the session from expiring, and no ack."""
        session: Any = self.core._session  # noqa: SLF001
        session._ping_needed = True  # noqa: SLF001
        self.pump()

    def close(self) -> None:
        self.sock.close()


@dataclass
class AttackReport:
    """RSS of the daemon (bytes) before, at its highest during, and after the attack."""

    sessions: int
    moves: int
    start_rss: int
    peak_rss: int
    end_rss: int
    samples: list[tuple[float, int]]
    seconds: float


class Keepalive:
    """Pings every attacker's session each PING_INTERVAL_S: the daemon under test
    expires sessions after an idle_timeout of a second or two, shorter than the
    phases of the attack and than the core's 10 s keepalive."""

    PING_INTERVAL_S = 0.5

    def __init__(self, attackers: list[Attacker]) -> None:
        self.attackers = attackers
        self.next_at = time.monotonic() + self.PING_INTERVAL_S

    def tick(self) -> None:
        if time.monotonic() >= self.next_at:
            self.next_at = time.monotonic() + self.PING_INTERVAL_S
            for attacker in self.attackers:
                attacker.ping()


def _pump_until(
    keepalive: Keepalive, done: Callable[[Attacker], bool], timeout: float, what: str
) -> None:
    attackers = keepalive.attackers
    deadline = time.monotonic() + timeout
    while not all(done(a) for a in attackers):
        if time.monotonic() > deadline:
            late = sum(not done(a) for a in attackers)
            raise AssertionError(f"{late} of {len(attackers)} attackers not {what} in {timeout} s")
        for attacker in attackers:
            attacker.pump()
        keepalive.tick()
        time.sleep(0.005)  # a poll, not a busy loop: tests run beside this


def _drained(port: int, keepalive: Keepalive, timeout: float = 5.0) -> None:
    """Wait until the daemon's socket buffer is nearly empty."""
    deadline = time.monotonic() + timeout
    while rx_queue_bytes(port) > 64 * 1024 and time.monotonic() < deadline:
        time.sleep(0.002)
    keepalive.tick()


def run_attack(
    server: Address,
    psk: bytes,
    pid: int,
    count: int,
    history_lines: int,
    hold_s: float,
    settle_s: float,
    stuffed: int = STUFFED_MESSAGES,
) -> AttackReport:
    """The attack of the module docstring with `count` members against the daemon
    at `server` (process `pid`), each sending `stuffed` messages after its gap.
    After `hold_s` of holding, the attackers fall silent; the RSS is then read for
    `settle_s` more (long enough for the daemon's sessions to expire and for it to
    give their memory back); `end_rss` is the last reading."""
    began = time.monotonic()
    samples: list[tuple[float, int]] = []

    def sample() -> int:
        rss = rss_bytes(pid)
        samples.append((time.monotonic() - began, rss))
        return rss

    start = sample()
    moves = moves_that_fit(history_lines)
    attackers = [Attacker(i, server, psk) for i in range(count)]
    for attacker in attackers:
        attacker.stuff_total = stuffed
    keepalive = Keepalive(attackers)
    try:
        _pump_until(keepalive, lambda a: a.core.connected, 20.0, "connected")
        for attacker in attackers:
            hello = {"nick": f"m{attacker.index}", "room": attacker.room}
            attacker.send({"t": "hello", **hello, "client": os.urandom(8).hex()})
        _pump_until(keepalive, lambda a: a.welcomed, 20.0, "welcomed")
        for attacker in attackers:
            for _ in range(history_lines):
                attacker.send({"t": "say", "text": ATTACK_TEXT, "id": os.urandom(8).hex()})
            attacker.pump()
            _drained(server[1], keepalive)
        _pump_until(keepalive, lambda a: a.delivered == a.sent, 30.0, "done with history")
        sample()
        # Let each session's message bucket fill up again (100/s, burst 200).
        refilled = time.monotonic() + (history_lines + 1) / 100 + 0.2
        while time.monotonic() < refilled:
            keepalive.tick()
            time.sleep(0.01)
        # One burst at a time, each once the daemon has read the one before: the
        # attackers do not retransmit, and a burst that overflowed the daemon's
        # socket buffer would be lost.
        for attacker in attackers:
            attacker.attack(count, moves)
            _drained(server[1], keepalive)
        sample()
        for attacker in attackers:
            attacker.stuff(MESSAGE_BURST)
            _drained(server[1], keepalive)
        hold_until = time.monotonic() + hold_s
        while time.monotonic() < hold_until:
            sample()
            keepalive.tick()
            time.sleep(0.1)
    finally:
        for attacker in attackers:
            attacker.close()
    peak = max(rss for _, rss in samples)
    settled = time.monotonic() + settle_s
    while time.monotonic() < settled:
        sample()
        time.sleep(0.2)
    end = sample()
    return AttackReport(count, moves, start, peak, end, samples, time.monotonic() - began)
