"""Log floods (issue 9, finding 5): how many log lines per second the real daemon
writes while one key holder repeats something that is logged (roaming between two
source ports, renames, room moves, refused hellos, members coming and going).

For each flood: start `twistd -n udpchat` on loopback, run the flood for --seconds,
stop the daemon, and count the lines of that kind in its log and the suppressed
count its periodic summary reported.

Usage (from a checkout, PYTHONPATH=<checkout>):
  python benchmarks/log_floods.py                   # every flood, 5 s each
  python benchmarks/log_floods.py --seconds 3 --floods roamed,rename
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from daemon import Daemon  # noqa: E402
from floods import FLOODS, lines_of, suppressed  # noqa: E402


def measure(kind: str, seconds: float) -> tuple[int, float, int, int]:
    """(actions, elapsed seconds, lines of that kind, lines reported suppressed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE.parent), env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("NOTIFY_SOCKET", None)
    with tempfile.TemporaryDirectory() as folder:
        daemon = Daemon(Path(folder), env, log_rejects_interval=1)
        try:
            daemon.start()
            started = time.monotonic()
            actions = FLOODS[kind](daemon.address, daemon.psk, seconds, 10**9)
            elapsed = time.monotonic() - started
            daemon.stop()
            log = daemon.log()
        finally:
            daemon.kill()
    return actions, elapsed, lines_of(log, kind), sum(suppressed(log).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--floods", default=",".join(FLOODS))
    args = parser.parse_args()
    print(f"{'flood':>8} {'actions':>8} {'seconds':>8} {'lines':>7} {'lines/s':>8} {'suppr.':>7}")
    for kind in args.floods.split(","):
        actions, elapsed, lines, held_back = measure(kind, args.seconds)
        print(
            f"{kind:>8} {actions:>8} {elapsed:>8.1f} {lines:>7} "
            f"{lines / elapsed:>8.1f} {held_back:>7}",
            flush=True,
        )


if __name__ == "__main__":
    main()
