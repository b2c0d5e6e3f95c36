"""A long soak of the real daemon (issue 10): 50 members chatting through a lossy
network for 30 minutes, with members wandering between rooms and rekeys.

45 members stay in the lobby and each says a line every 5 s (9 lines/s in all); 5
more wander between the lobby and other rooms every 20-40 s, talking as they go.
Everything passes a UDP proxy that loses 5 % of the datagrams each way (and
duplicates and reorders a few). Every client rekeys every 2 minutes as usual.

It reports, every minute, the daemon's RSS and the lines so far, and at the end:
lines lost and shown twice among the lobby members (each must see every line of
every other lobby member once, in order: both must be 0), lines a sender was told
failed, sessions that ended, and rekeys done.

Run: python benchmarks/soak.py [--minutes 30] [--members 50] [--loss 0.05]
Loopback only; it starts and stops its own daemon and proxy, and stops by itself.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from fanout_servers import start_udpchat  # noqa: E402
from member import Member  # noqa: E402
from udpproxy import Impairment, UDPProxy  # noqa: E402

from udpchat.core import events  # noqa: E402


class Chatter(Member):
    """A member that says numbered lines in its room and keeps which lobby lines of
    whom it was shown."""

    def __init__(self, server: tuple[str, int], psk: bytes, nick: str) -> None:
        super().__init__(server, psk, nick)
        self.room = "lobby"
        self.said = 0
        self.seen: dict[str, list[int]] = {}  # lobby lines by sender: their numbers
        self.rekeys = 0

    def say_next(self) -> None:
        self.say(f"{self.room} {self.said}")
        self.said += 1

    def received(self, message: dict[str, Any]) -> None:
        if message.get("t") == "say" and message["room"] == "lobby":
            room, number = message["text"].split()
            if room == "lobby":
                self.seen.setdefault(message["nick"], []).append(int(number))

    def other(self, event: events.Event) -> None:
        if isinstance(event, events.SessionRekeyed):
            self.rekeys += 1


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--wanderers", type=int, default=5)
    parser.add_argument("--loss", type=float, default=0.05)
    args = parser.parse_args()
    rng = random.Random(1)
    env = dict(os.environ, PYTHONPATH=str(HERE.parent))
    lossy = Impairment(loss=args.loss, duplicate=0.01, reorder=0.02, delay_s=(0.005, 0.03))
    with tempfile.TemporaryDirectory(prefix="soak-") as folder:
        server = start_udpchat(Path(folder), env, max_members=args.members + 10)
        proxy = UDPProxy(
            ("127.0.0.1", server.port), to_server=lossy, to_client=lossy,
            max_lifetime_s=args.minutes * 60 + 300,
        ).start()  # fmt: skip
        try:
            psk = server.psk.encode()
            members = [Chatter(proxy.address, psk, f"m{i:02d}") for i in range(args.members)]
            sitters = members[: args.members - args.wanderers]
            wanderers = members[args.members - args.wanderers :]
            start = time.monotonic()
            end = start + args.minutes * 60
            next_say = {m.nick: start + 5 + rng.uniform(0, 5) for m in members}
            next_walk = {m.nick: start + 20 + rng.uniform(0, 20) for m in wanderers}
            next_report = start + 60
            print(f"soak: {args.members} members, {args.loss:.0%} loss, {args.minutes:g} min")
            print(f"minute 0: daemon RSS {rss_mb(server.pid):.1f} MB", flush=True)
            while time.monotonic() < end:
                now = time.monotonic()
                for member in members:
                    if now >= next_say[member.nick]:
                        member.say_next()
                        next_say[member.nick] = now + 5
                    member.pump()
                for member in wanderers:
                    if now >= next_walk[member.nick]:
                        away = f"side{rng.randrange(3)}"
                        member.room = "lobby" if member.room != "lobby" else away
                        member.send({"t": "join", "room": member.room})
                        next_walk[member.nick] = now + rng.uniform(20, 40)
                if now >= next_report:
                    minute = round((now - start) / 60)
                    lines = sum(m.said for m in members)
                    print(
                        f"minute {minute}: daemon RSS {rss_mb(server.pid):.1f} MB, "
                        f"{lines} lines said, rekeys so far {sum(m.rekeys for m in members)}",
                        flush=True,
                    )
                    next_report += 60
                time.sleep(0.002)
            settle = time.monotonic() + 30
            while time.monotonic() < settle:  # stragglers and retransmissions
                for member in members:
                    member.pump()
                time.sleep(0.002)
            lost = twice = out_of_order = 0
            for observer in sitters:
                for sender in sitters:
                    if sender is observer:
                        continue
                    got = observer.seen.get(sender.nick, [])
                    want = list(range(sender.said))
                    lost += len(set(want) - set(got))
                    twice += len(got) - len(set(got))
                    out_of_order += got != sorted(got)
            print(
                f"end: {sum(m.said for m in members)} lines said; among the "
                f"{len(sitters)} lobby members: {lost} lost, {twice} shown twice, "
                f"{out_of_order} out of order"
            )
            print(
                f"senders told a line failed: {sum(m.failed for m in members)}; sessions "
                f"ended: {sum(m.ended for m in members)}; rekeys: "
                f"{sum(m.rekeys for m in members)}; daemon RSS {rss_mb(server.pid):.1f} MB"
            )
            counts = proxy.counts("to_server"), proxy.counts("to_client")
            print(f"proxy: to the daemon {counts[0]}; to the clients {counts[1]}")
        finally:
            proxy.stop()
            server.kill()


if __name__ == "__main__":
    main()
