"""What the daemon does per delivered line, in memory and deterministic (issue 8).

A sans-IO ChatServer relays one room of N receivers and S senders, each sender saying
R lines/s on a fake clock; the members are real ClientEndpoints that negotiate room
keys and lazy acks as the real client does, so the server gets their ACKs as in
benchmarks/fanout.py. Only the server's calls are timed (or traced): it prints the
server's CPU per delivery with warm caches, and with --bytecodes the Python bytecodes
the server executes per delivery, by function: a figure that does not move between
runs, unlike the real daemon's CPU in fanout.py (±15 %), where the same code runs with
cold caches between wake-ups and costs several times as much. What it leaves out: the
reactor's turn, the socket's system calls and what the C code does (the HMACs).

Usage (from a checkout, or PYTHONPATH=<checkout>):
  python benchmarks/server_fanout.py                  # load a: warm µs per delivery
  python benchmarks/server_fanout.py --load b
  python benchmarks/server_fanout.py --bytecodes      # bytecodes per delivery
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Any

from cryptography.fernet import Fernet

from udpchat.chat.server import ChatServer, ServerSettings
from udpchat.client.cli import client_protocol_config
from udpchat.core import events
from udpchat.core.endpoint import ClientEndpoint

PRESETS = {"a": (50, 10, 10.0), "b": (200, 4, 5.0)}  # as in fanout.py
STEP_S = 0.005  # the fake clock's step
START = 1_800_000_000.0


class Room:
    """The server and its members, datagrams moved by hand; `server_call` runs every
    call into the server (timed, or traced)."""

    def __init__(self, members: int, server_call: Callable[[Callable[[], Any]], Any]) -> None:
        psk = Fernet.generate_key()
        settings = ServerSettings(
            history_lines=0, max_members=members + 10, handshake_rate=1e6, handshake_burst=100_000
        )
        self.server = ChatServer(psk, settings)
        self.call = server_call
        self.now = START
        self.clients: dict[tuple[str, int], ClientEndpoint] = {}
        for i in range(members):
            client = ClientEndpoint(psk, client_protocol_config(3600.0))
            client.connect(self.now)
            hello = {"t": "hello", "nick": f"m{i}", "room": "lobby", "client": f"{i:016x}"}
            client.send(json.dumps(hello).encode(), self.now)
            self.clients[("127.0.0.1", 20000 + i)] = client
        self.deliveries = 0
        self.wakeups = 0  # the server's timer came due (the daemon wakes up for each)
        self.said = 0  # lines said so far: each has an id of its own
        self.settle()
        for client in self.clients.values():
            client.send(b'{"t":"caps","room-keys":true,"lazy-acks":true}', self.now)
        self.settle()
        for client in self.clients.values():
            client.use_envelopes()  # the server said yes to both (checked below)
            client.use_lazy_acks()
        self.deliveries = 0

    def settle(self) -> None:
        for _ in range(10):
            self.step()

    def step(self) -> None:
        """Move every datagram once and fire the due timers; count the lines shown."""
        now = self.now
        for addr, client in self.clients.items():
            timer = client.get_timer()
            if timer is not None and timer <= now:
                client.handle_timer(now)
            for data in client.datagrams_to_send(now):
                self._deliver(self.call(partial(self._receive, data, addr)))
        self._deliver(self.call(self._timer))
        for client in self.clients.values():
            while (event := client.next_event()) is not None:
                if isinstance(event, events.MessageReceived) and event.sealed:
                    self.deliveries += 1
        self.now += STEP_S

    def _receive(self, data: bytes, addr: Any) -> list[tuple[bytes, Any]]:
        self.server.receive_datagram(data, addr, self.now)
        out = self.server.datagrams_to_send(self.now)
        self.server.get_timer()
        return out

    def _timer(self) -> list[tuple[bytes, Any]]:
        timer = self.server.get_timer()
        if timer is not None and timer <= self.now:
            self.wakeups += 1
            self.server.handle_timer(self.now)
        return self.server.datagrams_to_send(self.now)

    def _deliver(self, out: list[tuple[bytes, Any]]) -> None:
        for data, addr in out:
            self.clients[addr].receive_datagram(data, self.now)

    def run(self, senders: int, rate: float, seconds: float) -> int:
        """Lines said for `seconds`; returns the deliveries (sealed lines shown)."""
        talkers = list(self.clients.values())[:senders]
        self.deliveries = self.wakeups = 0
        end = self.now + seconds
        next_line = self.now
        while self.now < end:
            while next_line <= self.now:
                for client in talkers:
                    self.said += 1
                    said = self.said
                    line = {"t": "say", "text": f"line {said} " + "x" * 56, "id": f"{said:016x}"}
                    client.send(json.dumps(line).encode(), self.now)
                next_line += 1.0 / rate
            self.step()
        return self.deliveries


def timed(seconds_spent: list[float]) -> Callable[[Callable[[], Any]], Any]:
    def call(function: Callable[[], Any]) -> Any:
        began = time.perf_counter()
        try:
            return function()
        finally:
            seconds_spent[0] += time.perf_counter() - began

    return call


def traced(counts: collections.Counter[str], on: list[bool]) -> Callable[[Callable[[], Any]], Any]:
    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode" and on[0]:
            code = frame.f_code
            counts[f"{code.co_filename.rsplit('/', 2)[-1]}:{code.co_name}"] += 1
        return trace

    def call(function: Callable[[], Any]) -> Any:
        sys.settrace(trace)
        try:
            return function()
        finally:
            sys.settrace(None)

    return call


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", choices=sorted(PRESETS), default="a")
    parser.add_argument("--seconds", type=float, default=5.0, help="of the fake clock")
    parser.add_argument("--bytecodes", action="store_true", help="count, by function")
    parser.add_argument("--top", type=int, default=15, help="functions listed")
    args = parser.parse_args(argv)
    receivers, senders, rate = PRESETS[args.load]
    counts: collections.Counter[str] = collections.Counter()
    on = [False]
    spent = [0.0]
    room = Room(receivers + senders, traced(counts, on) if args.bytecodes else timed(spent))
    room.run(senders, rate, 1.0)  # warm-up: every member holds the room key
    counts.clear()
    spent[0] = 0.0
    on[0] = True
    deliveries = room.run(senders, rate, args.seconds)
    expected = round(args.seconds * rate) * senders * (receivers + senders - 1)
    print(
        f"load {args.load}: {receivers} receivers + {senders} senders x {rate:g} lines/s, "
        f"{args.seconds:g} s: {deliveries} deliveries ({expected} lines said x members), "
        f"{room.wakeups / args.seconds:.0f} timer wake-ups/s"
    )
    if args.bytecodes:
        total = sum(counts.values())
        print(f"{total / deliveries:.0f} bytecodes per delivery in the server")
        for name, count in counts.most_common(args.top):
            print(f"  {count / deliveries:8.1f}  {name}")
    else:
        print(f"{spent[0] / deliveries * 1e6:.1f} µs of server CPU per delivery (warm caches)")


if __name__ == "__main__":
    main()
