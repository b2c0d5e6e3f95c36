"""Handshake floods (issue 9, finding 4): how long newcomers wait to be welcomed, and
how slowly members' lines are acknowledged, while one key holder sends authentic
message 1s from forged sources.

Starts `twistd -n udpchat` on loopback with one member (the protocol core over a
socket, saying a line every 0.2 s), starts the flood of tests/handshake_flood.py,
and after --head-start seconds starts --newcomers real clients
(`python -m udpchat.client.cli`, pipe mode) at once; reports when each was
welcomed (or that it was not within --patience seconds), the member's
acknowledgement times (median, p95) during the flood, and what the flood offered.

Usage (from a checkout, PYTHONPATH=<checkout>):
  python benchmarks/handshake_flood.py                  # 6,000/s, 4 newcomers
  python benchmarks/handshake_flood.py --rate 0         # no flood, for comparison
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from daemon import ChatClient, Daemon  # noqa: E402
from test_client_e2e import PipeClient  # noqa: E402

from udpchat.core import events  # noqa: E402

FLOOD = HERE.parent / "tests" / "handshake_flood.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=6000.0)
    parser.add_argument("--newcomers", type=int, default=4)
    parser.add_argument("--head-start", type=float, default=2.0)
    parser.add_argument("--patience", type=float, default=45.0)
    args = parser.parse_args()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE.parent), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("NOTIFY_SOCKET", None)
    with tempfile.TemporaryDirectory() as folder:
        daemon = Daemon(Path(folder), env, log_rejects_interval=5)
        flood = None
        newcomers: list[PipeClient] = []
        try:
            daemon.start()
            member = ChatClient(daemon.address, daemon.psk, nick="member")
            member.wait_for(lambda m: m.get("t") == "welcome")
            if args.rate > 0:
                seconds = args.head_start + args.patience + 5
                flood = subprocess.Popen(
                    [sys.executable, str(FLOOD), "127.0.0.1", str(daemon.port)]
                    + [str(daemon.key_file), "--rate", str(args.rate), "--seconds", str(seconds)],
                    stdout=subprocess.PIPE,
                    text=True,
                    env=env,
                )
                assert flood.stdout is not None and flood.stdout.readline().strip() == "ready"
            sent_at: dict[int, float] = {}
            latencies: list[float] = []
            next_line = time.monotonic()
            start_newcomers = time.monotonic() + args.head_start
            started = 0.0
            welcomed: dict[str, float] = {}
            end = start_newcomers + args.patience
            while time.monotonic() < end:
                now = time.monotonic()
                if not newcomers and now >= start_newcomers:
                    started = now
                    for i in range(args.newcomers):
                        nick = f"newcomer{i}"
                        newcomers.append(PipeClient(daemon.port, daemon.key_file, nick, env))
                for client in newcomers:
                    if client.nick not in welcomed and any(
                        line.startswith("-!- you are ") for line in client.lines
                    ):
                        welcomed[client.nick] = now - started
                if newcomers and len(welcomed) == len(newcomers):
                    break
                if now >= next_line:
                    next_line = now + 0.2
                    message_id = member.send(
                        {"t": "say", "text": "tick", "id": os.urandom(8).hex()}
                    )
                    sent_at[message_id] = now
                before = len(member.events)
                member.poll(0.02)
                for event in member.events[before:]:
                    if isinstance(event, events.MessageDelivered) and event.message_id in sent_at:
                        latencies.append(time.monotonic() - sent_at.pop(event.message_id))
            flood_result = None
            if flood is not None:
                flood.terminate()
                out, _ = flood.communicate(timeout=10)
                flood_result = out
        finally:
            for client in newcomers:
                client.kill()
            if flood is not None and flood.poll() is None:
                flood.kill()
            daemon.kill()
            log = daemon.log()
    print(f"flood: {args.rate:.0f}/s asked ({flood_result and flood_result.strip()})")
    for client in newcomers:
        got = welcomed.get(client.nick)
        print(
            f"{client.nick}: "
            + (
                f"welcomed after {got:.1f} s"
                if got is not None
                else f"not welcomed within {args.patience:.0f} s"
            )
        )
    if latencies:
        latencies.sort()
        p95 = latencies[int(0.95 * (len(latencies) - 1))]
        print(
            f"member: {len(latencies)} lines acknowledged, median "
            f"{statistics.median(latencies) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms; "
            f"{len(sent_at)} unacknowledged"
        )
    print("\n".join(line for line in log.splitlines() if "handshake" in line.lower())[-2000:])


if __name__ == "__main__":
    main()
