"""Cluster fan-out benchmark (issue 13): one room split over one, two and three daemons.

The load of benchmarks/fanout.py (one room, N receivers and S senders each saying R
lines/s, driven by its load processes; one member is a real `udpchat-client`) run
against four configurations, one after the other in one run:

  single     one daemon without a [cluster] section: the baseline;
  cluster-1  one daemon with a [cluster] section: what the engine itself costs;
  cluster-2  two daemons on one Redis, the members spread evenly over them;
  cluster-3  three daemons on one Redis, likewise.

Member i is on daemon i mod D, so the senders (members 0..S-1) are spread evenly too.
Each cluster configuration starts a fresh `redis-server` (tests/redis_server.py, no
persistence) on a free loopback port. Per configuration it prints deliveries/s, the
daemons' CPU per delivery (utime+stime of every daemon from /proc over the measured
window, summed, per line shown at a member), Redis' CPU per room line (redis-server's
/proc, per line said), the commands Redis ran per line (INFO commandstats), latency
send -> display (p50/p99/max) over all deliveries and apart for receivers on the
sender's daemon ("same") and on another daemon ("cross"), lines lost and duplicated
(must be 0), receivers who saw the room's lines in another order than the others
(must be 0), and RSS; then each configuration's ratios to `single` within the run.

By default (`--pin`, as fanout.py) every server process (the daemons and Redis) runs
on the first CPU and the load on the others, so the servers' CPU is what they cost
together on one core.

Usage (from a checkout, or with PYTHONPATH=<checkout>):
  python benchmarks/cluster_fanout.py                   # 50 + 10 x 10/s, 15 s each
  python benchmarks/cluster_fanout.py --repeat 3        # configurations interleaved
  python benchmarks/cluster_fanout.py --configs single,cluster-3 --seconds 10
  python benchmarks/cluster_fanout.py --idle 3000       # idle members: CPU, RSS, Redis
  add --json FILE to save the numbers.

redis-server comes from Debian's package (`apt-get install redis-server`, which
.ci/run installs for the cluster tests); this script installs nothing and stops with
that advice when it is missing. Only loopback addresses (127.0.0.0/8) are used; the
run is bounded in time (each load driver has a hard deadline) and every child
process is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fanout import (
    SETTLE_S,
    Drivers,
    count_results,
    percentile,
    pin,
    plan_members,
    source_address,
    stop_on_signal,
)
from fanout_servers import (
    CLK_TCK,
    RealClient,
    Server,
    cpu_seconds,
    rss_mb,
    start_udpchat,
    udp_buffer_drops,
)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the Redis the cluster tests run

from redis_server import REDIS_SERVER, SKIP_REASON, RedisServer  # noqa: E402

#: name -> (daemons, with a [cluster] section)
CONFIGS = {
    "single": (1, False),
    "cluster-1": (1, True),
    "cluster-2": (2, True),
    "cluster-3": (3, True),
}


class Cluster:
    """The daemons of one configuration (and their Redis, for a cluster)."""

    def __init__(
        self,
        name: str,
        folder: Path,
        env: dict[str, str],
        max_members: int,
        history: str = "off",
        idle_timeout: float = 3600,
    ) -> None:
        count, clustered = CONFIGS[name]
        self.redis: RedisServer | None = None
        self.daemons: list[Server] = []
        folder.mkdir()
        from cryptography.fernet import Fernet

        key = Fernet.generate_key() + b"\n"  # one key file for every daemon
        if clustered:
            (folder / "redis").mkdir()
            self.redis = RedisServer(folder / "redis").start()

        def start(index: int) -> Server:
            home = folder / f"daemon-{index}"
            home.mkdir()
            key_file = home / "chat.key"
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(key)
            section = None
            if self.redis is not None:
                section = {"url": self.redis.url, "node": f"bench-{index}"}
            return start_udpchat(
                home, env, max_members, history=history, cluster=section,
                idle_timeout=idle_timeout,
            )  # fmt: skip

        try:
            with ThreadPoolExecutor(count) as pool:  # each start waits for its daemon
                self.daemons = list(pool.map(start, range(count)))
        except BaseException:
            self.stop()
            raise

    def pids(self) -> list[int]:
        redis = [] if self.redis is None or self.redis.proc is None else [self.redis.proc.pid]
        return [d.pid for d in self.daemons] + redis

    def daemons_cpu(self) -> float:
        return sum(cpu_seconds(d.pid) for d in self.daemons)

    def redis_cpu(self) -> float:
        if self.redis is None or self.redis.proc is None:
            return 0.0
        return cpu_seconds(self.redis.proc.pid)

    def redis_commands(self) -> dict[str, tuple[int, int]]:
        """INFO commandstats: command -> (calls, µs spent in it), since Redis started."""
        if self.redis is None:
            return {}
        stats = {}
        for line in self.redis.raw(b"INFO", b"commandstats").decode().splitlines():
            if line.startswith("cmdstat_"):
                name, _, rest = line[len("cmdstat_") :].partition(":")
                fields = dict(part.split("=", 1) for part in rest.split(","))
                stats[name] = (int(fields["calls"]), int(fields["usec"]))
        return stats

    def stuck(self) -> list[int]:
        """The daemons that exited before they were told to stop (index)."""
        return [i for i, d in enumerate(self.daemons) if d.proc.poll() is not None]

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.kill()
        if self.redis is not None:
            self.redis.stop()


def machine_ticks() -> tuple[float, float]:
    """CPU seconds the whole machine was busy and stolen from it by its host, since
    boot (/proc/stat, all CPUs): other engineers' work shares these two cores."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


def cpu_pressure_s() -> float:
    """Seconds some task waited for a CPU, since boot (/proc/pressure/cpu), or NaN."""
    try:
        line = Path("/proc/pressure/cpu").read_text().split("\n", 1)[0]
    except OSError:
        return float("nan")
    return int(line.rsplit("total=", 1)[1]) / 1e6


def wait_quiet(limit_s: float, pressure_max: float = 20.0) -> float:
    """Wait up to `limit_s` for the machine to calm down: until the share of the last
    10 s in which some task waited for a CPU (/proc/pressure/cpu avg10) is below
    `pressure_max` %. Returns that share as it was when the wait ended."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            line = Path("/proc/pressure/cpu").read_text().split("\n", 1)[0]
            avg10 = float(line.split("avg10=", 1)[1].split()[0])
        except (OSError, IndexError, ValueError):
            return float("nan")
        if avg10 < pressure_max or time.monotonic() >= deadline:
            return avg10
        time.sleep(2.0)


def order_disagreements(orders: dict[int, list[list[int]]]) -> int:
    """Receivers that saw some two lines in the other order than the room's order,
    taken as the order of the receiver that got the most lines (lines it missed
    are not judged)."""
    if not orders:
        return 0
    reference = max(orders.values(), key=len)
    position = {tuple(key): i for i, key in enumerate(reference)}
    wrong = 0
    for keys in orders.values():
        places = [position[tuple(k)] for k in keys if tuple(k) in position]
        if any(a > b for a, b in zip(places, places[1:], strict=False)):
            wrong += 1
    return wrong


def run_config(name: str, args: argparse.Namespace, workdir: Path, env: dict[str, str]) -> dict:
    count, clustered = CONFIGS[name]
    receivers, senders, rate = args.receivers, args.senders, args.rate
    members = receivers + senders
    real_index = members - 1
    nodes = {index: index % count for index in range(members)}
    began = time.monotonic()
    cluster: Cluster | None = None
    drivers: Drivers | None = None
    client: RealClient | None = None
    try:
        home = workdir / f"{name}-{int(began * 1000)}"
        cluster = Cluster(name, home, env, members + 10, args.history)
        ports = [d.port for d in cluster.daemons]
        shares = plan_members(receivers, senders, args.drivers, real_client=True)
        for share in shares:
            for spec in share:
                spec["port"] = ports[nodes[spec["index"]]]
        setup_s = 30.0 + members * 0.2
        first = cluster.daemons[0]
        common = {
            "target": "udpchat", "host": "127.0.0.1", "port": first.port, "psk": first.psk,
            "rate": rate, "line_bytes": args.line_bytes, "total_senders": senders,
            "warmup_s": args.warmup, "seconds": args.seconds, "stragglers_s": args.stragglers,
            "hard_deadline_s": setup_s + args.warmup + args.seconds + args.stragglers + 60,
            "room_keys": True, "nodes": {str(i): n for i, n in nodes.items()},
            "record_order": True,
        }  # fmt: skip
        drivers = Drivers([{**common, "members": share} for share in shares if share], env)
        client = RealClient(
            "udpchat", cluster.daemons[nodes[real_index]], real_index, env,
            nodes=nodes, record_order=True,
        )  # fmt: skip
        for pid in cluster.pids():
            pin(args, pid, [])
        pin(args, None, [proc.pid for proc in drivers.procs] + [client.pid])
        drivers.wait_line("ready", setup_s)
        client.wait_ready(setup_s)
        time.sleep(SETTLE_S)
        t0 = time.monotonic() + 0.3
        window = (t0 + args.warmup, t0 + args.warmup + args.seconds)
        client.window = window
        drivers.go(t0)
        kernel_drops = udp_buffer_drops()
        time.sleep(max(0.0, window[0] - time.monotonic()))
        daemons0, redis0 = cluster.daemons_cpu(), cluster.redis_cpu()
        client0, (busy0, steal0), waited0 = (
            cpu_seconds(client.pid),
            machine_ticks(),
            cpu_pressure_s(),
        )
        cmds0 = cluster.redis_commands()
        time.sleep(max(0.0, window[1] - time.monotonic()))
        daemons1, redis1 = cluster.daemons_cpu(), cluster.redis_cpu()
        client1, (busy1, steal1), waited1 = (
            cpu_seconds(client.pid),
            machine_ticks(),
            cpu_pressure_s(),
        )
        cmds1 = cluster.redis_commands()
        daemon_rss = [rss_mb(d.pid) for d in cluster.daemons]
        redis_rss = rss_mb(cluster.pids()[-1]) if clustered else 0.0
        results = [json.loads(line) for line in drivers.wait_line("{", args.stragglers + 60)]
        client_tally = client.tally()
        kernel_drops = udp_buffer_drops() - kernel_drops
        stuck = cluster.stuck()
    finally:
        for part in (drivers, client):
            if part is not None:
                part.kill()
        if cluster is not None:
            cluster.stop()
    counted = count_results(results, client_tally, members)
    # A line still on its way when the drivers stopped counting is "lost" too: say
    # whether new lines were still arriving in the last second before that.
    counted_at = window[1] + args.stragglers
    last_new = max(r["last_new"] for r in [*results, client_tally])
    deliveries, latencies = counted["deliveries"], counted["latencies_ms"]
    lines = deliveries / max(1, members - 1)  # room lines shown in the window
    crossing: dict[str, list[float]] = {"same": [], "cross": []}
    orders: dict[int, list[list[int]]] = {}
    for result in [*results, client_tally]:
        for kind in crossing:
            crossing[kind] += result["crossing_ms"][kind]
        orders.update({int(r): keys for r, keys in result["order"].items()})
    commands = {
        command: (calls - cmds0.get(command, (0, 0))[0], usec - cmds0.get(command, (0, 0))[1])
        for command, (calls, usec) in cmds1.items()
    }
    commands = {c: v for c, v in commands.items() if v[0] > 0 and c not in ("info",)}
    return {
        "config": name, "daemons": count, "clustered": clustered,
        "receivers": receivers, "senders": senders, "rate": rate, "seconds": args.seconds,
        "lines_sent": counted["lines_sent"],
        "deliveries_per_s": deliveries / args.seconds,
        "daemons_us_per_delivery": (daemons1 - daemons0) / max(1, deliveries) * 1e6,
        "daemons_cpu_percent": (daemons1 - daemons0) / args.seconds * 100,
        "redis_us_per_line": (redis1 - redis0) / max(1.0, lines) * 1e6,
        "redis_cpu_percent": (redis1 - redis0) / args.seconds * 100,
        "redis_commands_per_line": {c: n / max(1.0, lines) for c, (n, _) in commands.items()},
        "redis_command_us_per_line": sum(us for _, us in commands.values()) / max(1.0, lines),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies, default=float("nan")),
        "same_p50_ms": percentile(crossing["same"], 0.50),
        "same_p99_ms": percentile(crossing["same"], 0.99),
        "cross_p50_ms": percentile(crossing["cross"], 0.50),
        "cross_p99_ms": percentile(crossing["cross"], 0.99),
        "cross_deliveries": len(crossing["cross"]),
        "lost": counted["lost"], "dup": counted["dup"],
        "still_arriving": counted_at - last_new < 1.0,
        "order_disagreements": order_disagreements(orders),
        "daemon_rss_mb": daemon_rss, "redis_rss_mb": redis_rss,
        "driver_cpu_percent": counted["driver_cpu_s"] / args.seconds * 100,
        # What else ran on the machine meanwhile (other engineers' work): busy CPU
        # not ours, time stolen by the host, time some task waited for a CPU.
        "others_cpu_percent": (
            (busy1 - busy0) - (daemons1 - daemons0) - (redis1 - redis0)
            - counted["driver_cpu_s"] - (client1 - client0)
        ) / args.seconds * 100,
        "steal_percent": (steal1 - steal0) / args.seconds * 100,
        "cpu_wait_percent": (waited1 - waited0) / args.seconds * 100,
        "errors": counted["errors"], "udp_rcvbuf_drops": kernel_drops, "stuck": stuck,
        "wall_s": time.monotonic() - began,
    }  # fmt: skip


def run_idle(name: str, args: argparse.Namespace, workdir: Path, env: dict[str, str]) -> dict:
    """`args.idle` established members doing nothing (rooms of 10, member i on daemon
    i mod D, so that a room spans every daemon), held `args.idle_hold` seconds with
    the daemons' default idle_timeout (30 s: keepalives every 10 s, a rekey every
    120 s, and in a cluster the leases of nodes and nicks renewed every 2 s): what
    members cost the daemons and Redis when nobody talks."""
    count, clustered = CONFIGS[name]
    began = time.monotonic()
    cluster: Cluster | None = None
    drivers: Drivers | None = None
    try:
        home = workdir / f"idle-{name}-{int(began * 1000)}"
        cluster = Cluster(name, home, env, args.idle + 10, idle_timeout=30)
        time.sleep(1.0)
        empty_rss = [rss_mb(d.pid) for d in cluster.daemons]
        shares: list[list[Any]] = [[] for _ in range(args.drivers)]
        for index in range(args.idle):
            spec = {
                "index": index, "source": source_address(index), "room": f"r{index // 10}",
                "port": cluster.daemons[index % count].port,
            }  # fmt: skip
            shares[index % args.drivers].append(spec)
        setup_s = 60.0 + args.idle * 0.03
        first = cluster.daemons[0]
        common = {
            "target": "udpchat", "host": "127.0.0.1", "port": first.port, "psk": first.psk,
            "rate": 1.0, "line_bytes": 0, "total_senders": 0, "warmup_s": 0.0,
            "seconds": args.idle_hold, "stragglers_s": 0.0,
            "hard_deadline_s": setup_s + args.idle_hold + 60,
        }  # fmt: skip
        drivers = Drivers([{**common, "members": share} for share in shares], env)
        for pid in cluster.pids():
            pin(args, pid, [])
        pin(args, None, [proc.pid for proc in drivers.procs])
        drivers.wait_line("ready", setup_s)
        established_s = time.monotonic() - began
        time.sleep(2.0)  # the last joins' notices
        daemons0, redis0, cmds0 = (
            cluster.daemons_cpu(),
            cluster.redis_cpu(),
            cluster.redis_commands(),
        )
        (busy0, _), t0 = machine_ticks(), time.monotonic()
        drivers.go(t0)  # hold: keepalives and rekeys keep flowing both ways
        results = [json.loads(line) for line in drivers.wait_line("{", args.idle_hold + 60)]
        held_s = time.monotonic() - t0
        daemons1, redis1, cmds1 = (
            cluster.daemons_cpu(),
            cluster.redis_cpu(),
            cluster.redis_commands(),
        )
        busy1, _ = machine_ticks()
        rss = [rss_mb(d.pid) for d in cluster.daemons]
        redis_rss = rss_mb(cluster.pids()[-1]) if clustered else 0.0
        stuck = cluster.stuck()
    finally:
        if drivers is not None:
            drivers.kill()
        if cluster is not None:
            cluster.stop()
    errors: dict[str, int] = {}
    for result in results:
        for error, n in result["errors"].items():
            errors[error] = errors.get(error, 0) + n
    calls = {c: n - cmds0.get(c, (0, 0))[0] for c, (n, _) in cmds1.items()}
    usec = {c: u - cmds0.get(c, (0, 0))[1] for c, (_, u) in cmds1.items()}
    members = args.idle
    return {
        "config": name, "daemons": count, "clustered": clustered, "idle": members,
        "established_s": established_s, "held_s": held_s,
        "daemons_us_per_member_s": (daemons1 - daemons0) / held_s / members * 1e6,
        "redis_us_per_member_s": (redis1 - redis0) / held_s / members * 1e6,
        "redis_calls_per_s": {c: n / held_s for c, n in calls.items() if n and c != "info"},
        "redis_eval_us_per_call": usec.get("eval", 0) / max(1, calls.get("eval", 0)),
        "daemon_rss_mb": rss, "empty_rss_mb": empty_rss, "redis_rss_mb": redis_rss,
        "kib_per_member": (sum(rss) - sum(empty_rss)) * 1024 / members,
        "machine_busy_percent": (busy1 - busy0) / held_s * 100,
        "errors": errors, "stuck": stuck, "wall_s": time.monotonic() - began,
    }  # fmt: skip


def idle_report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    out = [
        f"{args.idle} idle members in rooms of 10, member i on daemon i mod D, held "
        f"{args.idle_hold:g} s with idle_timeout 30 s:"
    ]
    for r in rows:
        line = (
            f"  {r['config']}: established in {r['established_s']:.0f} s; daemons "
            f"{r['daemons_us_per_member_s']:.1f} µs CPU per member per second "
            f"({r['daemons_us_per_member_s'] * 1000 / 1e4:.1f} % of a core per 1,000 members), "
            f"{r['kib_per_member']:.1f} KiB RSS per member "
            f"(daemons {'+'.join(f'{m:.0f}' for m in r['daemon_rss_mb'])} MB)"
        )
        if r["clustered"]:
            calls = ", ".join(
                f"{n:.1f} {c.upper()}" for c, n in sorted(r["redis_calls_per_s"].items())
            )
            line += (
                f"; Redis {r['redis_us_per_member_s']:.2f} µs CPU per member per second, "
                f"{r['redis_rss_mb']:.0f} MB RSS, per second {calls}, "
                f"{r['redis_eval_us_per_call']:.0f} µs per EVAL"
            )
        line += f"; machine busy {r['machine_busy_percent']:.0f} % (of 200)"
        if r["errors"] or r["stuck"]:
            line += f"; errors {r['errors']}, exited daemons {r['stuck']}"
        out.append(line)
    return "\n".join(out)


def fmt(value: float, spec: str) -> str:
    return "-" if value != value else spec.format(value)  # NaN: nothing measured


def pair(row: dict[str, Any], first: str, second: str, spec: str = "{:.0f}") -> str:
    return f"{fmt(row[first], spec)}/{fmt(row[second], spec)}"


def if_clustered(row: dict[str, Any], key: str, spec: str) -> str:
    return spec.format(row[key]) if row["clustered"] else "-"


COLUMNS = [  # header, how to show a row
    ("config", lambda r: r["config"]),
    ("deliveries/s", lambda r: f"{r['deliveries_per_s']:.0f}"),
    ("daemons µs/delivery", lambda r: f"{r['daemons_us_per_delivery']:.1f}"),
    ("daemons CPU %", lambda r: f"{r['daemons_cpu_percent']:.0f}"),
    ("Redis µs/line", lambda r: if_clustered(r, "redis_us_per_line", "{:.0f}")),
    ("Redis CPU %", lambda r: if_clustered(r, "redis_cpu_percent", "{:.1f}")),
    ("p50 ms", lambda r: f"{r['p50_ms']:.1f}"),
    ("p99 ms", lambda r: f"{r['p99_ms']:.1f}"),
    ("max ms", lambda r: f"{r['max_ms']:.0f}"),
    ("same p50/p99", lambda r: pair(r, "same_p50_ms", "same_p99_ms", "{:.1f}")),
    ("cross p50/p99", lambda r: pair(r, "cross_p50_ms", "cross_p99_ms", "{:.1f}")),
    ("lost", lambda r: str(r["lost"])),
    ("dup", lambda r: str(r["dup"])),
    ("order", lambda r: str(r["order_disagreements"])),
    ("RSS MB daemons", lambda r: "+".join(f"{m:.0f}" for m in r["daemon_rss_mb"])),
    ("Redis RSS", lambda r: if_clustered(r, "redis_rss_mb", "{:.0f}")),
    ("drivers CPU %", lambda r: f"{r['driver_cpu_percent']:.0f}"),
    ("others/steal/wait %", lambda r: f"{r['others_cpu_percent']:.0f}/"
     + pair(r, "steal_percent", "cpu_wait_percent")),
]  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    cells = [[h for h, _ in COLUMNS]] + [[show(r) for _, show in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = [
        " | ".join(c.rjust(w) if i else c.ljust(w)
                   for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in cells
    ]  # fmt: skip
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


RATIO_KEYS = ["daemons_us_per_delivery", "p50_ms", "p99_ms"]


def spread(values: list[float], spec: str = "{:.2f}") -> str:
    """One value, or the least and the most of several (one per repeat)."""
    shown = [v for v in values if v == v]
    if not shown:
        return "-"
    low, high = min(shown), max(shown)
    return spec.format(low) if low == high else f"{spec.format(low)} to {spec.format(high)}"


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    out = [
        f"load: {args.receivers} receivers + {args.senders} senders x {args.rate:g} lines/s "
        f"in one room, spread evenly over the daemons; {args.seconds:g} s measured after "
        f"{args.warmup:g} s warm-up, {args.drivers} load drivers, {args.line_bytes}-byte "
        f"lines, history {args.history}, {'servers pinned to CPU 0' if args.pin else 'no pinning'}",
        table(rows),
    ]
    names = list(dict.fromkeys(r["config"] for r in rows))
    runs = [rows[i : i + len(names)] for i in range(0, len(rows), len(names))]
    if "single" in names:
        out.append("ratios to single within each run (least to most over the runs):")
        for name in names:
            if name == "single":
                continue
            parts = []
            for key in RATIO_KEYS:
                values = []
                for run in runs:
                    mine = [r[key] for r in run if r["config"] == name]
                    base = [r[key] for r in run if r["config"] == "single"]
                    if mine and base and base[0]:
                        values.append(mine[0] / base[0])
                parts.append(f"{key} {spread(values)}")
            out.append(f"  {name}: " + ", ".join(parts))
    for name in names:
        mine = [r for r in rows if r["config"] == name]
        if mine[0]["clustered"]:
            added = [r["cross_p50_ms"] - r["same_p50_ms"] for r in mine]
            commands: dict[str, list[float]] = {}
            for r in mine:
                for command, per_line in r["redis_commands_per_line"].items():
                    commands.setdefault(command, []).append(per_line)
            listed = ", ".join(f"{spread(v)} {c.upper()}" for c, v in sorted(commands.items()))
            inside = spread([r["redis_command_us_per_line"] for r in mine], "{:.0f}")
            note = f"{name}: Redis ran per room line {listed} ({inside} µs inside commands)"
            if mine[0]["daemons"] > 1:
                note += f"; crossing daemons adds {spread(added)} ms at p50 (cross - same)"
            out.append(note)
    for row in rows:
        if row["lost"] and row["still_arriving"]:
            out.append(
                f"{row['config']}: lines were still arriving when they were counted: some "
                "of the lost may be late (a longer --stragglers tells)"
            )
        if row["errors"]:
            out.append(f"{row['config']}: errors seen by members: {row['errors']}")
        if row["stuck"]:
            out.append(f"{row['config']}: daemon(s) {row['stuck']} exited during the run")
        if row["udp_rcvbuf_drops"]:
            out.append(
                f"{row['config']}: the kernel dropped {row['udp_rcvbuf_drops']} UDP datagrams "
                "for full receive buffers (any socket of the machine)"
            )
    bad = [r["config"] for r in rows if r["lost"] or r["dup"] or r["order_disagreements"]]
    out.append(
        "lost, duplicated, out of order: none"
        if not bad
        else f"LOST, DUPLICATED OR OUT OF ORDER in: {', '.join(bad)}"
    )
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma-separated, of: " + ", ".join(CONFIGS)
    )
    parser.add_argument("--receivers", type=int, default=50, help="receivers in the room")
    parser.add_argument("--senders", type=int, default=10, help="senders in the room")
    parser.add_argument("--rate", type=float, default=10.0, help="lines per second per sender")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=3.0, help="load before the window")
    parser.add_argument(
        "--stragglers", type=float, default=8.0, help="wait for late lines before counting"
    )
    parser.add_argument("--drivers", type=int, default=2, help="load processes")
    parser.add_argument("--line-bytes", type=int, default=64, help="chat text length")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved runs of each")
    parser.add_argument(
        "--history",
        choices=("off", "memory"),
        default="off",
        help="history_lines 0 (off) or 50 (kept in Redis for a cluster)",
    )
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the servers (daemons, Redis) on the first CPU, the load on the others",
    )
    parser.add_argument("--json", metavar="FILE", help="save the numbers as JSON")
    parser.add_argument(
        "--idle", type=int, metavar="N", help="idle mode: N members who say nothing"
    )
    parser.add_argument("--idle-hold", type=float, default=130.0, help="seconds held idle")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each configuration, wait up to S seconds for the machine's CPU"
        " pressure (other work on a shared machine) to fall below 20 %%",
    )
    parser.add_argument(
        "--keep", metavar="DIR", help="keep the run's folder (logs, configs) inside DIR"
    )
    args = parser.parse_args(argv)  # fmt: skip
    args.configs = args.configs.split(",")
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        parser.error(
            f"unknown configuration(s) {', '.join(sorted(unknown))}; known: {', '.join(CONFIGS)}"
        )
    if args.receivers < 1 or args.senders < 1 or args.rate <= 0 or args.senders > 9999:
        parser.error("need at least 1 receiver, 1 to 9999 senders and a rate > 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if any(CONFIGS[name][1] for name in args.configs) and REDIS_SERVER is None:
        raise SystemExit(f"cluster_fanout: {SKIP_REASON}; or run --configs single")
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGINT, stop_on_signal)
    env = dict(os.environ)
    checkout = str(HERE.parent)  # this checkout's udpchat and twisted/plugins first
    env["PYTHONPATH"] = os.pathsep.join(p for p in (checkout, env.get("PYTHONPATH")) if p)
    env.pop("NOTIFY_SOCKET", None)
    began = time.monotonic()
    rows = []
    folder = Path(tempfile.mkdtemp(prefix="cluster-fanout-", dir=args.keep))
    try:
        for _ in range(args.repeat):
            for name in args.configs:
                pressure = wait_quiet(args.wait_quiet) if args.wait_quiet else float("nan")
                run = run_idle if args.idle else run_config
                rows.append(run(name, args, folder, env))
                rows[-1]["cpu_pressure_before"] = pressure
                print(f"  ({name}: {rows[-1]['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"(the daemons' and Redis' logs are kept in {folder})", file=sys.stderr)
    print(idle_report(rows, args) if args.idle else report(rows, args))
    print(f"(took {time.monotonic() - began:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
