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
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fanout_servers import start_udpchat  # noqa: E402
from member import Member  # noqa: E402


class Listener(Member):
    """A member that keeps the texts of the say lines it is shown."""

    def __init__(self, server: tuple[str, int], psk: bytes, nick: str) -> None:
        super().__init__(server, psk, nick)
        self.seen: list[str] = []

    def received(self, message: dict[str, Any]) -> None:
        if message.get("t") == "say":
            self.seen.append(message["text"])


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
            address = ("127.0.0.1", server.port)
            listener = Listener(address, psk, "listener")
            talkers = [Listener(address, psk, f"talker{i}") for i in range(2)]
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
