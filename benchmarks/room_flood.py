"""Two fast talkers and a listener, against the real daemon (issue 9, finding 2).

Two members each say RATE lines a second for SECONDS; a third only listens, with the
reference client's protocol settings (it accepts 100 new messages a second). The
issue found the listener closed within 30 s at 90 lines/s each, missing 1,393 of
5,400 lines, with no sender told. This prints what happens now: whether the
listener stayed, how many lines it saw of how many were said, how many the talkers
were told failed, and how long the room took to deliver the last line.

Run: python benchmarks/room_flood.py [--rate 90] [--seconds 30]
Loopback only; it starts and stops its own daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fanout_servers import start_udpchat  # noqa: E402

from udpchat.chat.lineids import new_line_id  # noqa: E402
from udpchat.client.cli import client_protocol_config  # noqa: E402
from udpchat.core import events  # noqa: E402
from udpchat.core.endpoint import ClientEndpoint, QueueFull  # noqa: E402


class Member:
    """The protocol core of a client over one non-blocking loopback socket."""

    def __init__(self, port: int, psk: bytes, nick: str) -> None:
        self.addr = ("127.0.0.1", port)
        self.core = ClientEndpoint(psk, client_protocol_config(30.0))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.nick = nick
        self.seen: list[str] = []
        self.failed = 0
        self.ended = False
        self.backlog: list[bytes] = []
        self.core.connect(time.time())
        hello = {"t": "hello", "nick": nick, "room": "lobby", "client": os.urandom(8).hex()}
        self.core.send(json.dumps(hello).encode(), time.time())

    def say(self, text: str) -> None:
        message = {"t": "say", "text": text, "id": new_line_id()}
        self.backlog.append(json.dumps(message).encode())

    def _feed(self, now: float) -> None:
        """Hand the core what it takes (as the real client's outbox does)."""
        while self.backlog:
            try:
                self.core.send(self.backlog[0], now)
            except QueueFull:
                return
            self.backlog.pop(0)

    def pump(self) -> None:
        now = time.time()
        self._feed(now)
        while True:
            try:
                data, _ = self.sock.recvfrom(2048)
            except BlockingIOError:
                break
            self.core.receive_datagram(data, now)
        timer = self.core.get_timer()
        if timer is not None and timer <= now:
            self.core.handle_timer(now)
        for data in self.core.datagrams_to_send(now):
            self.sock.sendto(data, self.addr)
        while (event := self.core.next_event()) is not None:
            if isinstance(event, events.MessageReceived):
                message = json.loads(event.payload)
                if message.get("t") == "say":
                    self.seen.append(message["text"])
            elif isinstance(event, events.MessageNotDelivered):
                self.failed += 1
            elif isinstance(event, events.SessionEnded):
                self.ended = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=90.0, help="lines/s per talker")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long they talk")
    args = parser.parse_args()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1])])
    with tempfile.TemporaryDirectory(prefix="room-flood-") as folder:
        server = start_udpchat(Path(folder), env, max_members=10)
        try:
            psk = server.psk.encode()
            listener = Member(server.port, psk, "listener")
            talkers = [Member(server.port, psk, f"talker{i}") for i in range(2)]
            members = [listener, *talkers]
            end = time.monotonic() + 3
            while time.monotonic() < end:  # join
                for member in members:
                    member.pump()
                time.sleep(0.002)
            said = 0
            start = time.monotonic()
            next_line = start
            while time.monotonic() < start + args.seconds:
                if time.monotonic() >= next_line:
                    for talker in talkers:
                        talker.say(f"{talker.nick} {said}")
                    said += 1
                    next_line += 1 / args.rate
                for member in members:
                    member.pump()
                time.sleep(0.001)
            total = said * len(talkers)
            last_line = time.monotonic()
            drain_end = time.monotonic() + 90
            while time.monotonic() < drain_end and len(listener.seen) < total:
                for member in members:
                    member.pump()
                if len(listener.seen) < total:
                    last_line = time.monotonic()
                time.sleep(0.002)
            print(
                f"{len(talkers)} talkers x {args.rate:g} lines/s for {args.seconds:g} s: "
                f"{total} lines said"
            )
            print(
                f"listener: {'closed' if listener.ended else 'stayed'}, saw {len(listener.seen)}"
                f" ({total - len(listener.seen)} missing, "
                f"{len(listener.seen) - len(set(listener.seen))} twice)"
            )
            print(
                f"talkers told a line failed: {sum(t.failed for t in talkers)}; "
                f"last line shown {last_line - start:.1f} s after the first was said"
            )
        finally:
            server.kill()


if __name__ == "__main__":
    main()
