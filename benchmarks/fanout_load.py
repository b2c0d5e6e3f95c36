"""One load-driver process of benchmarks/fanout.py: many chat members in one loop.

fanout.py starts several of these so that the load is not limited by one Python
process. Each runs its share of the room's members in one selectors loop: udpchat
members are the sans-IO ClientEndpoint over one non-blocking UDP socket each (from
its own 127.x.y.z address, so the daemon sees distinct clients); ncat members are
TLS connections made with Python's ssl module. Not meant to be run by hand.

Conversation with fanout.py (one line each, JSON where it says so):
  stdin  <- the plan (JSON), then later "go T0" (T0 on the CLOCK_MONOTONIC scale)
  stdout -> "ready" once every member joined, then the result (JSON) at the end.
End of stdin (fanout.py died) or the plan's hard deadline stops the process.
benchmarks/cluster_fanout.py uses it too: a member's spec may name its own daemon's
"port", and the plan may carry "nodes" and "record_order" (see Tally).

A chat line's text is `FB<sender>:<seq>:<monotonic send time>:` plus padding, so a
receiver measures latency (all processes share CLOCK_MONOTONIC) and loss/duplicates.
"""

from __future__ import annotations

import heapq
import json
import os
import re
import resource
import selectors
import socket
import ssl
import sys
import time
from typing import Any

from udpchat.chat.roomkeys import open_sealed
from udpchat.core import events

MARKER = re.compile(rb"FB(\d{4}):(\d{7}):(\d+\.\d{6}):")
#: Members whose handshake/hello is in progress at once, per driver: the daemon keeps
#: at most 1024 half-open sessions, and a burst of handshakes only costs retries.
CONNECTING_MAX = 48
RECV_BATCH = 64
LOOP_WAIT_MAX_S = 0.05


def line_text(sender: int, seq: int, line_bytes: int) -> str:
    head = f"FB{sender:04d}:{seq:07d}:{time.monotonic():.6f}:"
    return head + "x" * max(0, line_bytes - len(head))


class Tally:
    """What this driver's members received: unique lines per (receiver, sender),
    duplicates, and latencies of the lines received inside the measured window.

    With `nodes` (member index -> the daemon it is on; a sender's id is its member
    index) the window's latencies are also kept apart for lines that crossed from
    one daemon to another and lines that did not (benchmarks/cluster_fanout.py);
    with `record_order` each receiver's lines are kept in the order shown."""

    def __init__(self, nodes: dict[int, int] | None = None, record_order: bool = False) -> None:
        self.seen: dict[int, set[tuple[int, int]]] = {}
        self.dups = 0
        self.window = (float("inf"), float("inf"))
        self.window_deliveries = 0
        self.latencies_ms: list[float] = []
        self.total = 0
        self.nodes = nodes
        self.crossing_ms: dict[str, list[float]] = {"same": [], "cross": []}
        self.order: dict[int, list[tuple[int, int]]] | None = {} if record_order else None
        self.last_new = float("-inf")  # when a line was last seen for the first time

    def add(self, receiver: int, raw: bytes, now: float) -> None:
        for match in MARKER.finditer(raw):
            key = (int(match[1]), int(match[2]))
            seen = self.seen.setdefault(receiver, set())
            if key in seen:
                self.dups += 1
                continue
            seen.add(key)
            self.total += 1
            self.last_new = now
            if self.order is not None:
                self.order.setdefault(receiver, []).append(key)
            if self.window[0] <= now < self.window[1]:
                self.window_deliveries += 1
                latency = round((now - float(match[3])) * 1000, 3)
                self.latencies_ms.append(latency)
                if self.nodes is not None:
                    crossed = self.nodes.get(receiver) != self.nodes.get(key[0])
                    self.crossing_ms["cross" if crossed else "same"].append(latency)

    def extras(self) -> dict[str, Any]:
        """What only a cluster run asks for (see the class docstring), for the result."""
        extras: dict[str, Any] = {}
        if self.nodes is not None:
            extras["crossing_ms"] = self.crossing_ms
            extras["last_new"] = self.last_new
        if self.order is not None:
            extras["order"] = {str(r): keys for r, keys in self.order.items()}
        return extras

    def per_sender(self) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = {}
        for receiver, keys in self.seen.items():
            counts: dict[str, int] = {}
            for sender, _ in keys:
                counts[str(sender)] = counts.get(str(sender), 0) + 1
            result[str(receiver)] = counts
        return result


class UdpMember:
    """One udpchat member: a ClientEndpoint and its own UDP socket."""

    def __init__(self, spec: dict[str, Any], plan: dict[str, Any]) -> None:
        from udpchat.core.endpoint import ClientEndpoint

        self.index: int = spec["index"]
        self.sender: int | None = spec.get("sender")
        self.nick = f"m{self.index}"
        self.room: str = spec.get("room", "lobby")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((spec["source"], 0))
        self.sock.connect((plan["host"], spec.get("port", plan["port"])))  # its own daemon
        self.sock.setblocking(False)
        # The real client's timers (its 100 ms ack delay above all): the server's cost
        # per line depends on how often members acknowledge.
        from udpchat.client.cli import client_protocol_config

        self.core = ClientEndpoint(plan["psk"].encode(), client_protocol_config(3600.0))
        self.room_keys_wanted = bool(plan.get("room_keys", True))
        self.room_keys: dict[int, Any] = {}  # key id -> BinaryFernet (extension "room-keys")
        self.joined = False
        self.started = False
        self.scheduled: float | None = None
        self.errors: list[str] = []
        self.seq = 0

    def start(self, now: float) -> None:
        self.started = True
        self.core.connect(now)
        hello = {"t": "hello", "nick": self.nick, "room": self.room, "client": os.urandom(8).hex()}
        self.core.send(json.dumps(hello).encode(), now)

    def say(self, text: str, now: float) -> bool:
        from udpchat.core.endpoint import NotConnected, QueueFull

        message = {"t": "say", "text": text, "id": os.urandom(8).hex()}
        try:
            self.core.send(json.dumps(message, separators=(",", ":")).encode(), now)
        except (QueueFull, NotConnected) as exc:
            self.errors.append(type(exc).__name__)
            return False
        return True

    def readable(self, tally: Tally) -> None:
        now = time.time()
        for _ in range(RECV_BATCH):
            try:
                data = self.sock.recv(2048)
            except (BlockingIOError, ConnectionRefusedError):
                break
            self.core.receive_datagram(data, now)
        self.flush(now, tally)

    def flush(self, now: float, tally: Tally, timer: bool = False) -> None:
        if timer:  # as the real client: only when the core's timer is due
            self.core.handle_timer(now)
        for data in self.core.datagrams_to_send(now):
            try:
                self.sock.send(data)
            except (BlockingIOError, ConnectionRefusedError):
                pass  # UDP: the core retransmits
        while (event := self.core.next_event()) is not None:
            if isinstance(event, events.MessageReceived):
                payload = event.payload
                if event.sealed:  # a room message sealed once for the whole room
                    payload = open_sealed(self.room_keys, payload)
                if payload.startswith(b'{"t":"room-key"'):
                    from udpchat.core.fernet import BinaryFernet

                    key = json.loads(payload)  # first: a key's base64 may contain "FB"
                    self.room_keys[key["id"]] = BinaryFernet.from_key(key["key"])
                elif b"FB" in payload:
                    tally.add(self.index, payload, time.monotonic())
                elif not self.joined and b'"welcome"' in payload:
                    self.joined = True
                    if self.room_keys_wanted:  # as the real client asks (PROTOCOL.md 11)
                        self.core.send(b'{"t":"caps","room-keys":true,"lazy-acks":true}', now)
                elif payload.startswith(b'{"t":"caps"'):
                    answer = json.loads(payload)
                    if answer.get("room-keys"):
                        self.core.use_envelopes()  # acks as ENVELOPEs: an HMAC, not Fernet
                    if answer.get("lazy-acks"):
                        self.core.use_lazy_acks()  # every 32 sealed messages or 1 s
                elif b'"error"' in payload:
                    self.errors.append(payload.decode(errors="replace")[:120])
            elif isinstance(event, events.SessionEnded):
                self.errors.append(f"session ended: {event.reason}")


class NcatMember:
    """One ncat --chat member: a TLS connection; output is buffered when TLS would block."""

    def __init__(self, spec: dict[str, Any], plan: dict[str, Any], ctx: ssl.SSLContext) -> None:
        self.index: int = spec["index"]
        self.sender: int | None = spec.get("sender")
        raw = socket.create_connection(
            (plan["host"], plan["port"]), timeout=10, source_address=(spec["source"], 0)
        )
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        self.sock.setblocking(False)
        self.joined = True
        self.closed = False
        self.errors: list[str] = []
        self.pending = b""
        self.partial = b""
        self.seq = 0

    def say(self, text: str, now: float) -> bool:
        self.pending += text.encode() + b"\n"
        self.write()
        return True

    def write(self) -> None:
        while self.pending:
            try:
                sent = self.sock.send(self.pending)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                return
            self.pending = self.pending[sent:]

    def readable(self, tally: Tally) -> None:
        chunks = []
        while True:
            try:
                data = self.sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                break
            if not data:
                self.errors.append("ncat closed the connection")
                self.closed = True
                break
            chunks.append(data)
        if not chunks:
            return
        data = self.partial + b"".join(chunks)
        complete, _, self.partial = data.rpartition(b"\n")
        if complete:
            tally.add(self.index, complete, time.monotonic())
        self.write()


def run(plan: dict[str, Any]) -> dict[str, Any]:
    hard_deadline = time.monotonic() + plan["hard_deadline_s"]
    selector = selectors.DefaultSelector()
    stdin = sys.stdin.buffer.raw  # type: ignore[attr-defined]
    os.set_blocking(stdin.fileno(), False)
    selector.register(stdin, selectors.EVENT_READ, None)
    nodes = {int(i): n for i, n in plan["nodes"].items()} if "nodes" in plan else None
    tally = Tally(nodes, record_order=bool(plan.get("record_order")))
    members: list[Any] = []
    if plan["target"] == "ncat":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        for spec in plan["members"]:
            members.append(NcatMember(spec, plan, ctx))
    else:
        members = [UdpMember(spec, plan) for spec in plan["members"]]
    for member in members:
        selector.register(member.sock, selectors.EVENT_READ, member)
    timers: list[tuple[float, int, UdpMember]] = []

    def reschedule(member: UdpMember) -> None:
        deadline = member.core.get_timer()
        if deadline is not None and deadline != member.scheduled:
            member.scheduled = deadline
            heapq.heappush(timers, (deadline, member.index, member))

    go_at: float | None = None
    ready_sent = False
    stdin_buffer = b""
    senders = [m for m in members if m.sender is not None]
    sends: list[tuple[float, int]] = []
    window_cpu: list[float] = []
    rate, line_bytes = plan["rate"], plan["line_bytes"]
    waiting = [m for m in members if not m.joined]
    waiting.reverse()
    connecting: list[UdpMember] = []
    while True:
        mono = time.monotonic()
        if mono > hard_deadline:
            raise SystemExit("driver: hard deadline passed")
        now = time.time()
        # Join gradually: a bounded number of handshakes/hellos in flight.
        connecting = [m for m in connecting if not m.joined]
        while waiting and len(connecting) < CONNECTING_MAX:
            member = waiting.pop()
            member.start(now)
            member.flush(now, tally)
            reschedule(member)
            connecting.append(member)
        if not ready_sent and not waiting and not connecting:
            print("ready", flush=True)
            ready_sent = True
        if go_at is not None:
            window_start = go_at + plan["warmup_s"]
            window_end = window_start + plan["seconds"]
            tally.window = (window_start, window_end)
            if len(window_cpu) == 0 and mono >= window_start:
                window_cpu.append(cpu_seconds())
            if len(window_cpu) == 1 and mono >= window_end:
                window_cpu.append(cpu_seconds())
            while sends and sends[0][0] <= mono and mono < window_end:
                due, position = heapq.heappop(sends)
                member = senders[position]
                if member.say(line_text(member.sender, member.seq, line_bytes), now):
                    member.seq += 1
                    if isinstance(member, UdpMember):
                        member.flush(now, tally)
                        reschedule(member)
                heapq.heappush(sends, (due + 1.0 / rate, position))
            if mono >= window_end:
                sends = []  # sending is over: only receive (stragglers)
            if mono >= window_end + plan["stragglers_s"]:
                break
        while timers and timers[0][0] <= now:
            deadline, _, member = heapq.heappop(timers)
            if member.scheduled == deadline:
                member.scheduled = None
                member.flush(now, tally, timer=True)
                reschedule(member)
        for member in senders:
            if isinstance(member, NcatMember) and member.pending:
                member.write()
        wait = LOOP_WAIT_MAX_S
        if timers:
            wait = min(wait, timers[0][0] - time.time())
        if sends:
            wait = min(wait, sends[0][0] - time.monotonic())
        for key, _ in selector.select(max(0.0, wait)):
            member = key.data
            if member is None:
                chunk = stdin.read(4096)
                if not chunk:
                    raise SystemExit("driver: stdin closed (fanout.py went away)")
                stdin_buffer += chunk
                if b"\n" in stdin_buffer:
                    command = stdin_buffer.split(b"\n", 1)[0].split()
                    if command[0] == b"go" and go_at is None:
                        go_at = float(command[1])
                        # Stagger senders evenly over one send interval.
                        total = plan["total_senders"]
                        sends = [
                            (go_at + m.sender / (total * rate), i) for i, m in enumerate(senders)
                        ]
                        heapq.heapify(sends)
                    stdin_buffer = b""
            else:
                member.readable(tally)
                if isinstance(member, UdpMember):
                    reschedule(member)
                elif member.closed:
                    selector.unregister(member.sock)
    errors: dict[str, int] = {}
    for member in members:
        for error in member.errors:
            errors[error] = errors.get(error, 0) + 1
        if isinstance(member, UdpMember):  # datagrams the member's core dropped
            for reason, count in member.core.stats.take().items():
                key = f"client core drop: {reason}"
                errors[key] = errors.get(key, 0) + count
    return {
        "sent": {str(m.sender): m.seq for m in senders},
        "received": tally.per_sender(),
        "dups": tally.dups,
        "window_deliveries": tally.window_deliveries,
        "latencies_ms": tally.latencies_ms,
        "cpu_window_s": window_cpu[1] - window_cpu[0] if len(window_cpu) == 2 else None,
        "errors": errors,
        **tally.extras(),
    }


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    plan = json.loads(sys.stdin.buffer.readline())
    print(json.dumps(run(plan)), flush=True)


if __name__ == "__main__":
    main()
