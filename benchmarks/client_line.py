"""What the client does per received line, in memory and deterministic (issue 8).

The receiving side is the real ChatLink, ChatClient and pipe front end (with its
renderer), on a fake reactor, socket and stdout; a sans-IO ChatServer and a sending
endpoint complete the room (room keys negotiated, as with the real daemon). It
prints the CPU per line with warm caches, and with --bytecodes the Python bytecodes
executed per line by module: a figure that does not move between runs, unlike the
real client's CPU in benchmarks/fanout.py (±15 %), where a wake-up per line with
cold caches costs several times the warm figure. What it leaves out: the reactor's
turn, the system calls and stdout's writer (see docs/PERFORMANCE.md, "The client").

Usage (from a checkout, or PYTHONPATH=<checkout>):
  python benchmarks/client_line.py                # warm µs per line
  python benchmarks/client_line.py --bytecodes    # bytecodes per line, by module
"""

from __future__ import annotations

import argparse
import collections
import json
import socket
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from cryptography.fernet import Fernet
from twisted.internet.task import Clock

from udpchat.chat.server import ChatServer, ServerSettings
from udpchat.client.chatclient import ChatClient
from udpchat.client.cli import client_protocol_config
from udpchat.client.link import ChatLink
from udpchat.client.pipe import PipeFrontEnd
from udpchat.core.endpoint import ClientEndpoint

RX, TX = ("127.0.0.1", 40001), ("127.0.0.1", 40002)  # as the server sees them
SERVER = ("127.0.0.1", 7777)
ROOT = str(Path(__file__).resolve().parent.parent) + "/"


class Room:
    """A server, a sender and the receiving client, moving datagrams in memory."""

    def __init__(self) -> None:
        psk = Fernet.generate_key()
        self.server = ChatServer(psk, ServerSettings(history_lines=0))
        room = self

        # What the client sends (its acks) reaches the server after the client's
        # handling of the datagram: the server's work is not the client's.
        self.from_client: list[bytes] = []

        class Socket:
            def sendto(self, data: bytes, addr: Any) -> None:
                room.from_client.append(data)

        class Port:
            socket = Socket()

            def stopListening(self) -> None: ...
            def pauseProducing(self) -> None: ...
            def resumeProducing(self) -> None: ...

        class Reactor(Clock):
            def listenUDP(self, port: int, proto: Any, interface: str = "") -> Port:
                return Port()

        class Stdout:
            def write(self, data: bytes) -> None: ...
            def registerProducer(self, producer: Any, streaming: bool) -> None: ...
            def pauseProducing(self) -> None: ...
            def resumeProducing(self) -> None: ...

        self.reactor = Reactor()
        self.reactor.advance(1_800_000_000)
        self.chat = ChatClient(ClientEndpoint(psk, client_protocol_config(30.0)), "rx", pipe=True)
        front = PipeFrontEnd(lambda: None, self.reactor.seconds)
        front.makeConnection(Stdout())
        self.link = ChatLink(
            self.chat, [(socket.AF_INET, SERVER)], self.reactor, front, wall=self.reactor.seconds
        )
        front.link = self.link
        self.link.start()
        front.attach(self.link)
        self.sender = ClientEndpoint(psk)
        self.sender.connect(self.reactor.seconds())
        hello = {"t": "hello", "nick": "tx", "room": "lobby", "client": "0" * 15 + "1"}
        self.sender.send(json.dumps(hello).encode(), self.reactor.seconds())
        self.lines = 0

    def move(self, received: Any = None) -> None:
        """One round: datagrams to the server, the server's out; ``received`` wraps
        the client's handling of each datagram (to measure it)."""
        now = self.reactor.seconds()
        for data in self.sender.datagrams_to_send(now):
            self.server.receive_datagram(data, TX, now)
        for data, addr in self.server.datagrams_to_send(now):
            if addr == RX:
                if received is None:
                    self.link.datagram_received(data, SERVER)
                else:
                    received(lambda d=data: self.link.datagram_received(d, SERVER))
            else:
                self.sender.receive_datagram(data, now)
        sent, self.from_client = self.from_client, []
        for data in sent:
            self.server.receive_datagram(data, RX, now)
        self.sender.handle_timer(now)
        deadline = self.server.get_timer()
        if deadline is not None and deadline <= now:
            self.server.handle_timer(now)

    def say(self, received: Any = None) -> None:
        """The sender says a line (64 bytes of text, as in fanout.py) 10 ms later."""
        self.reactor.advance(0.01)
        self.lines += 1
        text = f"line {self.lines} " + "x" * 50
        line = {"t": "say", "text": text, "id": f"{self.lines:016x}"}
        self.sender.send(json.dumps(line).encode(), self.reactor.seconds())
        self.move(received)


def ready_room() -> Room:
    room = Room()
    for _ in range(60):  # handshakes, hello, caps, the room key
        room.reactor.advance(0.05)
        room.move()
    if not room.chat.room_keys_active:
        sys.exit("the client did not negotiate room keys")
    for _ in range(200):  # warm
        room.say()
    return room


def cpu_per_line(lines: int) -> float:
    room = ready_room()
    spent = [0.0]

    def timed(handle: Any) -> None:
        start = time.process_time()
        handle()
        spent[0] += time.process_time() - start

    for _ in range(lines):
        room.say(timed)
    return spent[0] / lines


def bytecodes_per_line(lines: int) -> collections.Counter[str]:
    room = ready_room()
    counts: collections.Counter[str] = collections.Counter()

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            name = frame.f_code.co_filename
            counts[name.split("/site-packages/")[-1].replace(ROOT, "")] += 1
        return trace

    def traced(handle: Any) -> None:
        sys.settrace(trace)
        try:
            handle()
        finally:
            sys.settrace(None)

    for _ in range(lines):
        room.say(traced)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--bytecodes", action="store_true", help="count, by module")
    args = parser.parse_args()
    if args.bytecodes:
        counts = bytecodes_per_line(args.lines)
        print(f"{sum(counts.values()) / args.lines:.0f} bytecodes per received line")
        for name, count in counts.most_common(20):
            print(f"  {count / args.lines:7.1f}  {name}")
    else:
        print(f"{cpu_per_line(args.lines) * 1e6:.1f} µs CPU per received line (warm)")


if __name__ == "__main__":
    main()
