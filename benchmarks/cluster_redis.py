"""What one Redis can carry for a cluster (issue 13, docs/CLUSTER.md "Scale"): room
lines through the daemons' own script, and nick lease renewals, at rates one room on
this 2-core machine cannot reach.

benchmarks/cluster_fanout.py measures real daemons, but one room is capped at 100
lines/s (the room's rate) and the Python load drivers cap the members. This script
leaves the daemons out and does to a real `redis-server` what D daemons following
every room would: one writer appends lines with the daemons' publish script
(udpchat.daemon.cluster.PUBLISH_SCRIPT, sealed-sized payloads, pipelined, paced),
and D readers each follow every room's stream with one blocking XREAD, as
ClusterLink does. Per (readers, rate) it reports Redis' CPU per line (utime+stime of
redis-server from /proc over the window), Redis' own time inside commands, XREADs
per line, and whether every reader got every line. Then it times one lease renewal
(udpchat.daemon.cluster.RENEW_SCRIPT) over N nicks, which a daemon runs every
idle_timeout/15 s (2 s by default) for all its members' nicks.

Usage (from a checkout, or with PYTHONPATH=<checkout>):
  python benchmarks/cluster_redis.py                        # readers 1,3 x 1000,4000 lines/s
  python benchmarks/cluster_redis.py --readers 3 --rates 8000 --rooms 500 --seconds 10
redis-server comes from Debian's package (`apt-get install redis-server`); nothing is
installed here. Loopback only; bounded in time; every child is stopped at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fanout_servers import cpu_seconds, rss_mb

from udpchat.daemon.cluster import PUBLISH_SCRIPT, READ_COUNT, RENEW_SCRIPT, STREAM_MAXLEN
from udpchat.daemon.resp import encode_command, parse_reply

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the Redis the cluster tests run

from redis_server import REDIS_SERVER, SKIP_REASON, RedisServer  # noqa: E402

#: A line event as the daemons seal it: Fernet of the event's JSON with a 64-byte
#: line is this long (base64 text; measured with RoomEvent and Fernet).
SEALED_BYTES = 376
TICK_S = 0.01


class Connection:
    """A blocking RESP connection: pipelined commands, replies read in order."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buffer = bytearray()

    def send(self, *commands: tuple[Any, ...]) -> None:
        self.sock.sendall(b"".join(encode_command(c) for c in commands))

    def replies(self, count: int) -> list[Any]:
        out: list[Any] = []
        pos = 0
        while len(out) < count:
            parsed = parse_reply(self.buffer, pos)
            if parsed is None:
                del self.buffer[:pos]
                pos = 0
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("Redis closed the connection")
                self.buffer += chunk
                continue
            value, pos = parsed
            out.append(value)
        del self.buffer[:pos]
        return out

    def call(self, *args: Any) -> Any:
        self.send(args)
        return self.replies(1)[0]


def room_keys(room: int) -> tuple[bytes, bytes, bytes]:
    base = f"udpchat:room:{room:032x}:"
    return (base + "events").encode(), (base + "history").encode(), (base + "members").encode()


def reader(port: int, rooms: int, stop_at: float, queue: Any) -> None:
    """Follow every room's stream, as one daemon whose members are in all of them."""
    conn = Connection(port)
    streams = [room_keys(r)[0] for r in range(rooms)]
    last = dict.fromkeys(streams, b"0-0")  # FLUSHALL came first: every entry counts
    got = calls = 0
    while time.monotonic() < stop_at:
        block_ms = max(1, int((stop_at - time.monotonic()) * 1000))
        reply = conn.call(
            "XREAD", "COUNT", READ_COUNT, "BLOCK", block_ms, "STREAMS", *streams,
            *(last[s] for s in streams),
        )  # fmt: skip
        calls += 1
        for stream, entries in reply or ():
            got += len(entries)
            last[stream] = entries[-1][0]
    queue.put((got, calls))


def writer(port: int, rooms: int, rate: float, start_at: float, seconds: float, queue: Any) -> None:
    """Append `rate` lines/s to random rooms with the daemons' publish script."""
    conn = Connection(port)
    sha = conn.call("SCRIPT", "LOAD", PUBLISH_SCRIPT)
    payload = os.urandom(SEALED_BYTES * 3 // 4).hex()[:SEALED_BYTES].encode()
    sent = 0
    time.sleep(max(0.0, start_at - time.monotonic()))
    end = start_at + seconds
    while (now := time.monotonic()) < end:
        due = int((now - start_at) * rate) - sent
        if due > 0:
            batch = []
            for _ in range(due):
                stream, history, members = room_keys(random.randrange(rooms))
                keys = (stream, history, members, b"udpchat:rooms", b"udpchat:node:x:members")
                args = (payload, "line", STREAM_MAXLEN, 0, "m", "", "", "")
                batch.append(("EVALSHA", sha, len(keys), *keys, *args, ""))
            conn.send(*batch)
            conn.replies(len(batch))
            sent += due
        time.sleep(TICK_S)
    queue.put(sent)


def command_stats(conn: Connection) -> dict[str, tuple[int, int]]:
    stats = {}
    for line in conn.call("INFO", "commandstats").decode().splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line[len("cmdstat_") :].partition(":")
            fields = dict(part.split("=", 1) for part in rest.split(","))
            stats[name] = (int(fields["calls"]), int(fields["usec"]))
    return stats


def run_lines(port: int, pid: int, readers: int, rate: float, args: argparse.Namespace) -> dict:
    admin = Connection(port)
    admin.call("FLUSHALL")
    queue: Any = multiprocessing.Queue()
    start_at = time.monotonic() + 1.0
    stop_at = start_at + args.seconds + 1.0  # the readers drain the last lines
    procs = [
        multiprocessing.Process(target=reader, args=(port, args.rooms, stop_at, queue))
        for _ in range(readers)
    ]
    procs.append(
        multiprocessing.Process(
            target=writer, args=(port, args.rooms, rate, start_at, args.seconds, queue)
        )
    )
    for proc in procs:
        proc.start()
    try:
        time.sleep(max(0.0, start_at + 0.5 - time.monotonic()))
        cpu0, stats0, t0 = cpu_seconds(pid), command_stats(admin), time.monotonic()
        time.sleep(max(0.0, start_at + args.seconds - 0.5 - time.monotonic()))
        cpu1, stats1, t1 = cpu_seconds(pid), command_stats(admin), time.monotonic()
        results = [queue.get(timeout=args.seconds + 30) for _ in procs]
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
    sent = next(r for r in results if isinstance(r, int))
    read = [r for r in results if isinstance(r, tuple)]
    lines = rate * (t1 - t0)
    calls = {c: n - stats0.get(c, (0, 0))[0] for c, (n, _) in stats1.items()}
    usec = sum(u - stats0.get(c, (0, 0))[1] for c, (_, u) in stats1.items() if c != "info")
    return {
        "readers": readers, "rate": rate, "rooms": args.rooms, "sent": sent,
        "read_each": [got for got, _ in read],
        "redis_cpu_percent": (cpu1 - cpu0) / (t1 - t0) * 100,
        "redis_us_per_line": (cpu1 - cpu0) / lines * 1e6,
        "inside_us_per_line": usec / lines,
        "xread_per_line": calls.get("xread", 0) / lines,
        "redis_rss_mb": rss_mb(pid),
    }  # fmt: skip


def run_renewal(port: int, nicks: int) -> dict[str, float]:
    """One lease renewal of `nicks` nicks held by one daemon, as ClusterLink sends it."""
    conn = Connection(port)
    conn.call("FLUSHALL")
    keys = [f"udpchat:nick:{i:032x}".encode() for i in range(nicks)]
    owners = [f"{i:032x}".encode() for i in range(nicks)]
    for start in range(0, nicks, 1000):
        batch = [
            ("SET", k, o + b"c" * 32 + b"sealed-owner", "PX", 30000)
            for k, o in zip(keys[start : start + 1000], owners[start : start + 1000], strict=True)
        ]
        conn.send(*batch)
        conn.replies(len(batch))
    stats0 = command_stats(conn)
    began = time.monotonic()
    lost = conn.call("EVAL", RENEW_SCRIPT, nicks, *keys, *owners, 30000)
    wall_ms = (time.monotonic() - began) * 1000
    stats1 = command_stats(conn)
    inside = stats1["eval"][1] - stats0.get("eval", (0, 0))[1]
    return {"nicks": nicks, "wall_ms": wall_ms, "inside_ms": inside / 1000,
            "us_per_nick": inside / nicks, "lost": len(lost)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", default="1,3", help="daemons following every room")
    parser.add_argument("--rates", default="1000,4000", help="lines/s, all rooms together")
    parser.add_argument("--rooms", type=int, default=200, help="rooms (streams)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured window")
    parser.add_argument("--nicks", type=int, default=10000, help="nicks in one renewal")
    args = parser.parse_args(argv)
    if REDIS_SERVER is None:
        raise SystemExit(f"cluster_redis: {SKIP_REASON}")
    began = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory(prefix="cluster-redis-") as folder:
        redis = RedisServer(Path(folder)).start()
        try:
            assert redis.proc is not None
            for readers in [int(n) for n in args.readers.split(",")]:
                for rate in [float(r) for r in args.rates.split(",")]:
                    rows.append(run_lines(redis.port, redis.proc.pid, readers, rate, args))
            renewal = run_renewal(redis.port, args.nicks)
        finally:
            redis.stop()
    print(
        f"{args.rooms} rooms, one writer (publish script, {SEALED_BYTES}-byte sealed lines, "
        f"pipelined every {TICK_S * 1000:.0f} ms), D readers each following every room; "
        f"{args.seconds:g} s per row"
    )
    print("readers | lines/s | Redis CPU % | Redis µs/line | inside commands µs/line | "
          "XREAD/line | every line read | Redis RSS MB")  # fmt: skip
    for r in rows:
        complete = all(got == r["sent"] for got in r["read_each"])
        print(
            f"{r['readers']:7d} | {r['rate']:7.0f} | {r['redis_cpu_percent']:11.1f} | "
            f"{r['redis_us_per_line']:13.1f} | {r['inside_us_per_line']:23.1f} | "
            f"{r['xread_per_line']:10.2f} | {'yes' if complete else r['read_each']!s:>15} | "
            f"{r['redis_rss_mb']:12.0f}"
        )
    print(
        f"lease renewal of {renewal['nicks']} nicks in one EVAL: {renewal['inside_ms']:.1f} ms "
        f"inside Redis ({renewal['us_per_nick']:.2f} µs per nick), {renewal['wall_ms']:.1f} ms "
        f"as the caller saw it; Redis runs nothing else meanwhile"
    )
    print(f"(took {time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()
