"""Memory exhaustion (issue 9, finding 3): the real daemon's RSS while key holders
try to grow it, and after their sessions have expired.

Starts `twistd -n udpchat` on loopback (idle_timeout short, for the test suite's
environment variable), runs tests/memory_attack.py's attack with --sessions members
(each fills its room's history, then stops acknowledging, moves through full rooms
and stuffs the daemon's receive buffer), and prints the daemon's RSS at the start,
at its highest and once the sessions expired, beside the budget the configuration
implies (udpchat.daemon.memory, if this checkout has it). Also prints what one line
of room history costs the chat rules (tracemalloc), stored as they store it.

Usage (from a checkout, PYTHONPATH=<checkout>):
  python benchmarks/memory_attack.py                  # 254 members, max_members 256
  python benchmarks/memory_attack.py --sessions 64 --max-members 64 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from conftest import REPO_ROOT  # noqa: E402
from daemon import Daemon  # noqa: E402
from memory_attack import ATTACK_TEXT, run_attack  # noqa: E402

MB = 1e6


def history_bytes_per_line(lines: int = 500, text: str = ATTACK_TEXT) -> float:
    """What one stored history line costs the chat rules (tracemalloc), averaged
    over `lines` lines of `text` said in one room."""
    from udpchat.chat.rules import ChatRules

    rules = ChatRules(history_lines=lines)
    rules.session_started(b"s" * 8, ("127.0.0.1", 1), 0.0)
    hello = {"t": "hello", "nick": "alice", "room": "lobby", "client": "c" * 16}
    rules.message_received(b"s" * 8, json.dumps(hello).encode(), 0.0)
    payloads = [
        json.dumps({"t": "say", "text": text, "id": f"{i:016x}"}).encode() for i in range(lines)
    ]
    rules.take_actions()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i, payload in enumerate(payloads):
        rules.message_received(b"s" * 8, payload, 1_800_000_000.0 + i)
        rules.take_actions()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=254, help="attacking members")
    parser.add_argument("--max-members", type=int, default=256, help="daemon's max_members")
    parser.add_argument("--history-lines", type=int, default=50, help="daemon's history_lines")
    parser.add_argument("--idle-timeout", type=float, default=3.0, help="daemon's idle_timeout")
    parser.add_argument("--hold", type=float, default=3.0, help="seconds the attack holds")
    parser.add_argument("--settle", type=float, default=8.0, help="seconds watched after it")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--log", action="store_true", help="print the daemon's log")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["UDPCHAT_TESTING_ALLOW_SHORT_IDLE_TIMEOUT"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    result: dict[str, object] = {"history_bytes_per_line": history_bytes_per_line()}
    try:
        from udpchat.chat.server import ServerSettings
        from udpchat.daemon.memory import memory_budget

        settings = ServerSettings(max_members=args.max_members, history_lines=args.history_lines)
        result["budget_bytes"] = memory_budget(settings).total_bytes
    except ImportError:
        result["budget_bytes"] = None  # a checkout from before the budgets
    with tempfile.TemporaryDirectory(prefix="memory-attack-") as folder:
        daemon = Daemon(
            Path(folder),
            env,
            max_members=args.max_members,
            history_lines=args.history_lines,
            idle_timeout=args.idle_timeout,
            log_rejects_interval=1,
        )
        daemon.start()
        assert daemon.proc is not None
        try:
            time.sleep(1.0)
            report = run_attack(
                daemon.address,
                daemon.psk,
                daemon.proc.pid,
                args.sessions,
                args.history_lines,
                hold_s=args.hold,
                settle_s=args.idle_timeout + args.settle,
            )
        finally:
            daemon.stop()
            if args.log:
                print(daemon.log())
    result.update(
        sessions=report.sessions, moves=report.moves, start_rss=report.start_rss,
        peak_rss=report.peak_rss, end_rss=report.end_rss, seconds=report.seconds,
        samples=report.samples,
    )  # fmt: skip
    budget = result["budget_bytes"]
    print(
        f"{report.sessions} attacking members ({report.moves} room moves each), "
        f"{report.seconds:.0f} s: daemon RSS {report.start_rss / MB:.1f} MB at the start, "
        f"{report.peak_rss / MB:.1f} MB at its highest, {report.end_rss / MB:.1f} MB once "
        "their sessions expired"
        + (f"; budget {budget / MB:.1f} MB" if isinstance(budget, int) else "; no budget")
    )
    print(f"one line of room history costs {result['history_bytes_per_line']:.0f} bytes")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
