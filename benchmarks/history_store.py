"""What keeping the rooms' history in a file costs per line (udpchat.daemon.history).

Writes lines as the daemon does, each in its own transaction (one reactor pass per
datagram, one line per datagram), into a fresh history file in a temporary folder,
and reports the reactor's time per line, p50/p99/max:

* normal: the daemon's setting (WAL, synchronous=NORMAL, no checkpoint in the
  writer; a thread checkpoints every second meanwhile, as the daemon's worker
  does): the line is in the operating system's hands, safe from a crash of the
  daemon, not from a power loss;
* full: synchronous=FULL, for comparison: each commit waits for the disk (fsync),
  what surviving a power loss line by line would cost the reactor;
* batch: ten lines per transaction (a busy pass), per line;
* checkpoint: the worker thread's checkpoints during "normal", the time they take
  off the reactor (the fsyncs);
* seal: Fernet alone (the part of a write that is the encryption);
* start: reading a full history back (what a daemon start opens: 256 rooms, each
  with as many lines as its 64 KiB hold), once, in seconds.

Usage: python benchmarks/history_store.py [--lines 3000] [--folder DIR]
(--folder: measure on that file system, e.g. the one /var/lib/udpchat is on; the
default is a temporary folder.) Numbers are from one machine; compare the rows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.fernet import Fernet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from udpchat.chat.messages import SayOut, encode  # noqa: E402
from udpchat.chat.rules import HISTORY_BYTES_PER_ROOM, Remember  # noqa: E402
from udpchat.daemon.history import HistoryFile, HistoryKeys  # noqa: E402

PSK = Fernet.generate_key()


def line(n: int, text_bytes: int) -> Remember:
    said = SayOut("lobby", "alice", "x" * text_bytes, f"{n:016x}", ts=1_800_000_000.0 + n)
    return Remember("lobby", encode(said))


def timed(count: int, step: Callable[[int], None]) -> list[float]:
    times = []
    for n in range(count):
        started = time.perf_counter()
        step(n)
        times.append(time.perf_counter() - started)
    return times


def report(name: str, times: list[float], per: int = 1) -> None:
    ordered = sorted(t / per for t in times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(
        f"{name:<11} {statistics.mean(ordered) * 1e6:9.1f} {ordered[len(ordered) // 2] * 1e6:9.1f}"
        f" {p99 * 1e6:9.1f} {ordered[-1] * 1e6:10.1f}"
    )


def history(
    folder: Path, name: str, synchronous: str = "NORMAL", max_lines: int = 50
) -> HistoryFile:
    store = HistoryFile(folder / name, PSK, max_lines)
    store.recover()
    store.open()
    assert store._writer is not None
    store._writer.execute(f"PRAGMA synchronous = {synchronous}")
    return store


def start_time(folder: Path, text_bytes: int, rooms: int) -> tuple[int, float]:
    """Lines read back and seconds, for a file whose rooms are all full."""
    store = history(folder, "start.history", max_lines=500)
    per_room = HISTORY_BYTES_PER_ROOM // (len(line(0, text_bytes).line) + 48) + 10
    for room in range(rooms):
        name = f"room{room}"
        batch = []
        for n in range(per_room):
            said = SayOut(name, "alice", "x" * text_bytes, f"{room:08x}{n:08x}", ts=1.8e9 + n)
            batch.append(Remember(name, encode(said)))
        store.write(batch)
    store.close()
    started = time.perf_counter()
    kept = HistoryFile(folder / "start.history", PSK, 500).recover()
    return sum(len(lines) for _, lines in kept), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=3000, help="lines per measurement")
    parser.add_argument("--text-bytes", type=int, default=100, help="chat text length")
    parser.add_argument("--folder", type=Path, help="where to put the files (default: tmp)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        folder = Path(tmp)
        lines = [line(n, args.text_bytes) for n in range(args.lines)]
        print(f"{args.lines} lines of {len(lines[0].line)} bytes, in {folder}")
        print(f"{'µs per line':<11} {'mean':>9} {'p50':>9} {'p99':>9} {'max':>10}")

        keys = HistoryKeys.derive(PSK)
        report("seal", timed(args.lines, lambda n: keys.records.encrypt_at_time(lines[n].line, 0)))

        store = history(folder, "normal.history")
        checkpoints: list[float] = []
        done = threading.Event()

        def checkpointer() -> None:
            while not done.wait(1.0):
                started = time.perf_counter()
                store.checkpoint()
                checkpoints.append(time.perf_counter() - started)

        worker = threading.Thread(target=checkpointer)
        worker.start()
        report("normal", timed(args.lines, lambda n: store.write([lines[n]])))
        done.set()
        worker.join()
        store.close()

        store = history(folder, "batch.history")
        batches = args.lines // 10
        report("batch", timed(batches, lambda n: store.write(lines[10 * n : 10 * n + 10])), per=10)
        store.close()

        store = history(folder, "full.history", synchronous="FULL")
        full_count = max(50, args.lines // 10)  # each waits for the disk
        report("full", timed(full_count, lambda n: store.write([lines[n]])))
        store.close()

        read, seconds = start_time(folder, args.text_bytes, 256)
        print(f"start: {read} lines of 256 full rooms read back in {seconds:.2f} s")
        if checkpoints:
            print(
                f"checkpoints (worker thread, not the reactor): {len(checkpoints)}, "
                f"mean {statistics.mean(checkpoints) * 1e3:.1f} ms, "
                f"max {max(checkpoints) * 1e3:.1f} ms"
            )


if __name__ == "__main__":
    main()
