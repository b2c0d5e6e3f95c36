"""Fan-out benchmark (issue 8): the real udpchat daemon against `ncat --chat --ssl`.

One room of N receivers and S senders, each sender saying R lines/s, driven by several
load processes (benchmarks/fanout_load.py) so that the driver is not the bottleneck.
The same load runs against each target, one after the other, in one run. Per target
it prints deliveries/s (a delivery is one line shown at one member; senders are
members too and receive each other's lines), the server's CPU (utime+stime from
/proc/PID/stat) per delivery over the measured window, latency send -> display
(p50/p99/max, CLOCK_MONOTONIC shared by all processes), lines lost and duplicated
(counted after waiting for stragglers; must be 0 for udpchat), and the server's RSS;
then the udpchat/ncat ratios. One member is a real client process (`udpchat-client`
in pipe mode; `ncat --ssl` for ncat) whose CPU per received line is reported apart:
that is the client cost users feel. The drivers' own CPU is printed too, to check
they were not the bottleneck (daemon and drivers share the machine's cores).

Usage (from a checkout with the project installed, or PYTHONPATH=<checkout>):
  python benchmarks/fanout.py --load a            # 50 receivers + 10 senders x 10/s
  python benchmarks/fanout.py --load b            # 200 receivers + 4 senders x 5/s
  python benchmarks/fanout.py --load c            # light: 50 + 2 x 5/s, for latency
  python benchmarks/fanout.py --receivers 100 --senders 5 --rate 8 --seconds 20
  python benchmarks/fanout.py --load a --repeat 3 # targets interleaved, 3 times each
  python benchmarks/fanout.py --load a --plot cpu.png --plot-sizes 10,50,100,200
  python benchmarks/fanout.py --idle-sessions 10000  # daemon RSS with idle members
  python benchmarks/fanout.py --load a --targets udpchat --history file  # with history
  add --json FILE to save the numbers; --targets udpchat to skip ncat.
ncat is installed with `apt-get install -y ncat` when missing and we are root;
otherwise its column is skipped (and the output says so). --plot needs matplotlib.
Only loopback addresses (127.0.0.0/8) are used; every child is killed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fanout_servers import (
    RealClient,
    Server,
    cpu_seconds,
    ensure_ncat,
    rss_mb,
    start_ncat,
    start_udpchat,
    udp_buffer_drops,
    udp_socket_drops,
)

HERE = Path(__file__).resolve().parent
PRESETS = {  # receivers, senders, lines/s per sender
    "a": (50, 10, 10.0),
    "b": (200, 4, 5.0),
    "c": (50, 2, 5.0),
}
SETTLE_S = 1.0  # after every member joined: let the join notices drain


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def source_address(index: int) -> str:
    """A distinct loopback source per member, so the daemon sees distinct clients."""
    return f"127.10.{index // 200}.{index % 200 + 1}"


class Drivers:
    """The load processes: start with a plan each, wait for 'ready', 'go', results."""

    def __init__(self, plans: list[dict[str, Any]], env: dict[str, str]) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        for plan in plans:
            proc = subprocess.Popen(
                [sys.executable, str(HERE / "fanout_load.py")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(plan).encode() + b"\n")
            proc.stdin.flush()
            self.procs.append(proc)

    def wait_line(self, expect: str, timeout: float) -> list[str]:
        lines = []
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            assert proc.stdout is not None
            line = read_line(proc, deadline)
            if not line.startswith(expect):
                raise RuntimeError(f"load driver said {line!r} instead of {expect!r}")
            lines.append(line)
        return lines

    def go(self, t0: float) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(f"go {t0:.6f}\n".encode())
            proc.stdin.flush()

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def read_line(proc: subprocess.Popen[bytes], deadline: float) -> str:
    """One stdout line of `proc`, or an error after `deadline` (monotonic)."""
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while not selector.select(max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                raise RuntimeError("load driver did not answer in time")
    line = proc.stdout.readline().decode()
    if not line:
        raise RuntimeError(f"load driver exited with status {proc.wait()}")
    return line.strip()


def plan_members(receivers: int, senders: int, drivers: int, real_client: bool) -> list[list[Any]]:
    """Members 0..S-1 are the senders (sender id = index), then the receivers; the
    last receiver is the real client when there is one (not in any driver)."""
    total = senders + receivers - (1 if real_client else 0)
    shares: list[list[Any]] = [[] for _ in range(drivers)]
    for index in range(total):
        spec = {"index": index, "source": source_address(index)}
        if index < senders:
            spec["sender"] = index
        shares[index % drivers].append(spec)
    return shares


def pin(args: argparse.Namespace, server_pid: int | None, others: list[int]) -> None:
    """--pin: the server alone on CPU 0, the load (drivers, real client) on the rest,
    the same for every target. Without it the drivers' share of the two cores makes
    the server's CPU per delivery depend on how busy the drivers are."""
    cpus = sorted(os.sched_getaffinity(0))
    if not args.pin or len(cpus) < 2:
        return
    if server_pid is not None:
        os.sched_setaffinity(server_pid, {cpus[0]})
    for pid in others:
        os.sched_setaffinity(pid, set(cpus[1:]))


def run_target(target: str, args: argparse.Namespace, workdir: Path, env: dict[str, str]) -> dict:
    receivers, senders, rate = args.receivers, args.senders, args.rate
    members = receivers + senders
    real_index = members - 1
    began = time.monotonic()
    server: Server | None = None
    drivers: Drivers | None = None
    client: RealClient | None = None
    if args.profile is not None:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    try:
        if target == "udpchat":
            profile = None if args.profile is None else Path(args.profile) / "daemon.prof"
            server = start_udpchat(
                workdir, env, max_members=members + 10, profile=profile, history=args.history
            )
        else:
            server = start_ncat(max_conns=members + 10)
        shares = plan_members(receivers, senders, args.drivers, real_client=True)
        setup_s = 30.0 + members * 0.2
        common = {
            "target": target, "host": "127.0.0.1", "port": server.port, "psk": server.psk,
            "rate": rate, "line_bytes": args.line_bytes, "total_senders": senders,
            "warmup_s": args.warmup, "seconds": args.seconds, "stragglers_s": args.stragglers,
            "hard_deadline_s": setup_s + args.warmup + args.seconds + args.stragglers + 60,
            "room_keys": args.room_keys == "on",
        }  # fmt: skip
        drivers = Drivers([{**common, "members": share} for share in shares if share], env)
        pin(args, server.pid, [proc.pid for proc in drivers.procs])
        client_profile = None
        if args.profile is not None and target == "udpchat":
            client_profile = Path(args.profile) / "client.prof"
        client = RealClient(target, server, real_index, env, profile=client_profile)
        pin(args, None, [client.pid])
        drivers.wait_line("ready", setup_s)
        client.wait_ready(setup_s)
        time.sleep(SETTLE_S)
        t0 = time.monotonic() + 0.3
        window = (t0 + args.warmup, t0 + args.warmup + args.seconds)
        client.window = window
        drivers.go(t0)
        kernel_drops = udp_buffer_drops()
        time.sleep(max(0.0, window[0] - time.monotonic()))
        server_cpu0, client_cpu0 = cpu_seconds(server.pid), cpu_seconds(client.pid)
        time.sleep(max(0.0, window[1] - time.monotonic()))
        server_cpu1, client_cpu1 = cpu_seconds(server.pid), cpu_seconds(client.pid)
        server_rss, client_rss = rss_mb(server.pid), rss_mb(client.pid)
        results = [
            json.loads(line)
            for line in drivers.wait_line("{", args.stragglers + 60)
        ]  # fmt: skip
        client_tally = client.tally()
        kernel_drops = udp_buffer_drops() - kernel_drops
        server_drops = udp_socket_drops(server.port) if target == "udpchat" else 0
    finally:
        for part in (drivers, client, server):
            if part is not None:
                part.kill()
    counted = count_results(results, client_tally, members)
    deliveries, latencies = counted["deliveries"], counted["latencies_ms"]
    driver_cpu = counted["driver_cpu_s"]
    driver_deliveries = deliveries - client_tally["window_deliveries"]
    return {
        "target": target,
        "receivers": receivers, "senders": senders, "rate": rate, "seconds": args.seconds,
        "lines_sent": counted["lines_sent"],
        "deliveries_per_s": deliveries / args.seconds,
        "server_us_per_delivery": (server_cpu1 - server_cpu0) / max(1, deliveries) * 1e6,
        "server_cpu_percent": (server_cpu1 - server_cpu0) / args.seconds * 100,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies, default=float("nan")),
        "lost": counted["lost"], "dup": counted["dup"], "server_rss_mb": server_rss,
        "driver_cpu_percent": driver_cpu / args.seconds * 100,
        "driver_us_per_line": driver_cpu / max(1, driver_deliveries) * 1e6,
        "client_us_per_line": (client_cpu1 - client_cpu0)
        / max(1, client_tally["window_deliveries"]) * 1e6,
        "client_lines": client_tally["window_deliveries"],
        "client_p50_ms": percentile(client_tally["latencies_ms"], 0.5),
        "client_rss_mb": client_rss,
        "errors": counted["errors"], "udp_rcvbuf_drops": kernel_drops,
        "server_socket_drops": server_drops,
        "wall_s": time.monotonic() - began,
    }  # fmt: skip


def count_results(
    results: list[dict[str, Any]], client_tally: dict[str, Any], members: int
) -> dict[str, Any]:
    """The drivers' and the real client's tallies added up: lines sent, deliveries
    and latencies in the window, lines lost (a member that did not get a line some
    other member said) and duplicated, the drivers' CPU, the errors members saw."""
    sent: dict[int, int] = {}
    received: dict[int, dict[int, int]] = {}
    latencies: list[float] = []
    deliveries = dups = 0
    driver_cpu = 0.0
    errors: dict[str, int] = {}
    for result in [*results, client_tally]:
        sent.update({int(s): n for s, n in result["sent"].items()})
        for r, counts in result["received"].items():
            received[int(r)] = {int(s): n for s, n in counts.items()}
        latencies += result["latencies_ms"]
        deliveries += result["window_deliveries"]
        dups += result["dups"]
        driver_cpu += result.get("cpu_window_s") or 0.0
        for error, n in result["errors"].items():
            errors[error] = errors.get(error, 0) + n
    lost = 0
    for r in range(members):
        got = received.get(r, {})
        lost += sum(n - got.get(s, 0) for s, n in sent.items() if s != r)
    return {
        "lines_sent": sum(sent.values()), "deliveries": deliveries, "latencies_ms": latencies,
        "lost": lost, "dup": dups, "driver_cpu_s": driver_cpu, "errors": errors,
    }  # fmt: skip


COLUMNS = [  # header, key, format
    ("target", "target", "{}"),
    ("deliveries/s", "deliveries_per_s", "{:.0f}"),
    ("server µs/delivery", "server_us_per_delivery", "{:.1f}"),
    ("server CPU %", "server_cpu_percent", "{:.0f}"),
    ("p50 ms", "p50_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"),
    ("max ms", "max_ms", "{:.1f}"),
    ("lost", "lost", "{}"),
    ("dup", "dup", "{}"),
    ("server RSS MB", "server_rss_mb", "{:.1f}"),
    ("driver CPU %", "driver_cpu_percent", "{:.0f}"),
]
RATIO_KEYS = ["deliveries_per_s", "server_us_per_delivery", "p50_ms", "p99_ms", "server_rss_mb"]


def table(rows: list[dict[str, Any]]) -> str:
    cells = [[h for h, _, _ in COLUMNS]] + [[f.format(r[k]) for _, k, f in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = [" | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                        enumerate(zip(row, widths, strict=True))) for row in cells]  # fmt: skip
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def mean_of(rows: list[dict[str, Any]], target: str, key: str) -> float:
    values = [r[key] for r in rows if r["target"] == target]
    return sum(values) / len(values) if values else float("nan")


def ratio(mine: float, theirs: float) -> float:
    return mine / theirs if theirs else float("nan")  # e.g. no CPU tick in a short run


def report(rows: list[dict[str, Any]], args: argparse.Namespace, notes: list[str]) -> str:
    out = [
        f"load: {args.receivers} receivers + {args.senders} senders x {args.rate:g} lines/s, "
        f"{args.seconds:g} s measured after {args.warmup:g} s warm-up, "
        f"{args.drivers} load drivers, {args.line_bytes}-byte lines",
        table(rows),
    ]
    targets = {r["target"] for r in rows}
    if {"udpchat", "ncat"} <= targets:
        ratios = ", ".join(
            f"{k} {ratio(mean_of(rows, 'udpchat', k), mean_of(rows, 'ncat', k)):.2f}"
            for k in RATIO_KEYS
        )
        out.append(f"ratios udpchat/ncat: {ratios}")
    for target in sorted(targets):
        out.append(
            f"{target}: real client {mean_of(rows, target, 'client_us_per_line'):.0f} µs CPU per "
            f"received line ({mean_of(rows, target, 'client_lines'):.0f} lines, p50 "
            f"{mean_of(rows, target, 'client_p50_ms'):.2f} ms, RSS "
            f"{mean_of(rows, target, 'client_rss_mb'):.0f} MB); load drivers "
            f"{mean_of(rows, target, 'driver_us_per_line'):.0f} µs per received line"
        )
    for row in rows:
        if row["errors"]:
            out.append(f"{row['target']} errors seen by members: {row['errors']}")
        if row["target"] == "udpchat" and (row["udp_rcvbuf_drops"] or row["server_socket_drops"]):
            out.append(
                f"{row['target']}: the kernel dropped {row['udp_rcvbuf_drops']} UDP datagrams "
                "for full receive buffers from 'go' to the end (every socket of the machine); the "
                "daemon's "
                f"socket dropped {row['server_socket_drops']} since it opened (joins "
                "included). Lost datagrams wait for a retransmission timeout (>= 200 ms)."
            )
    return "\n".join(out + notes)


def run_load(args: argparse.Namespace, targets: list[str], env: dict[str, str]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="fanout-") as folder:
        for _ in range(args.repeat):
            for target in targets:
                rows.append(run_target(target, args, Path(folder), env))
                print(f"  ({target}: {rows[-1]['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    return rows


def plot(args: argparse.Namespace, targets: list[str], env: dict[str, str]) -> list[dict]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install '.[bench]'") from None
    rows = []
    for size in [int(s) for s in args.plot_sizes.split(",")]:
        rows += run_load(argparse.Namespace(**{**vars(args), "receivers": size}), targets, env)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for target in targets:
        mine = [r for r in rows if r["target"] == target]
        sizes = [r["receivers"] + r["senders"] for r in mine]
        costs = [r["server_us_per_delivery"] for r in mine]
        axes.plot(sizes, costs, marker="o", label=target)
    axes.set_xlabel("room size (members)")
    axes.set_ylabel("server CPU µs per delivered line")
    axes.set_title(f"{args.senders} senders x {args.rate:g} lines/s")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(args.plot, dpi=120, bbox_inches="tight")
    print(f"wrote {args.plot}")
    return rows


def idle_sessions(count: int, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """Connect `count` idle members (hello done, rooms of 10) and read the daemon's RSS."""
    began = time.monotonic()
    drivers = server = None
    with tempfile.TemporaryDirectory(prefix="fanout-idle-") as folder:
        try:
            server = start_udpchat(Path(folder), env, max_members=count + 10)
            time.sleep(1.0)
            baseline = rss_mb(server.pid)
            shares: list[list[Any]] = [[] for _ in range(args.drivers)]
            for index in range(count):
                room = f"r{index // 10}"  # one big room would cost N^2 join notices
                spec = {"index": index, "source": source_address(index), "room": room}
                shares[index % args.drivers].append(spec)
            setup_s = 60.0 + count * 0.02
            common = {
                "target": "udpchat", "host": "127.0.0.1", "port": server.port, "psk": server.psk,
                "rate": 1.0, "line_bytes": 0, "total_senders": 0, "warmup_s": 0.0,
                "seconds": args.idle_hold, "stragglers_s": 0.0,
                "hard_deadline_s": setup_s + args.idle_hold + 60,
            }  # fmt: skip
            drivers = Drivers([{**common, "members": share} for share in shares], env)
            drivers.wait_line("ready", setup_s)
            established_s = time.monotonic() - began
            drivers.go(time.monotonic())  # hold: keepalives keep flowing both ways
            results = [json.loads(line) for line in drivers.wait_line("{", args.idle_hold + 60)]
            rss = rss_mb(server.pid)
        finally:
            for part in (drivers, server):
                if part is not None:
                    part.kill()
    errors: dict[str, int] = {}
    for result in results:
        for error, n in result["errors"].items():
            errors[error] = errors.get(error, 0) + n
    return {
        "idle_sessions": count, "server_rss_mb": rss, "baseline_rss_mb": baseline,
        "kib_per_session": (rss - baseline) * 1024 / count, "established_s": established_s,
        "wall_s": time.monotonic() - began, "errors": errors,
    }  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", choices=sorted(PRESETS), default="a", help="preset load")
    parser.add_argument("--receivers", type=int, help="receivers in the room (N)")
    parser.add_argument("--senders", type=int, help="senders in the room (S)")
    parser.add_argument("--rate", type=float, help="lines per second per sender (R)")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=3.0, help="load before the window")
    parser.add_argument("--stragglers", type=float, default=4.0, help="wait before counting")
    parser.add_argument("--drivers", type=int, default=2, help="load processes")
    parser.add_argument("--line-bytes", type=int, default=64, help="chat text length")
    parser.add_argument("--targets", default="udpchat,ncat", help="comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved runs per target")
    parser.add_argument("--json", metavar="FILE", help="save the numbers as JSON")
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the server alone on the first CPU and the load on the others"
        " (default on; --no-pin lets the scheduler mix them)",
    )
    parser.add_argument(
        "--room-keys",
        choices=("on", "off"),
        default="on",
        help="whether the load drivers negotiate room keys (PROTOCOL.md 11); off measures"
        " the per-member path that version-1 clients get (the real client always asks)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="write cProfile stats of the udpchat daemon (daemon.prof, via twistd --profile)"
        " and of the real client (client.prof) into DIR; their CPU figures then include"
        " the profiler's overhead",
    )
    parser.add_argument(
        "--history",
        choices=("off", "memory", "file"),
        default="off",
        help="the daemon's room history: off (history_lines = 0, the default), memory"
        " (50 lines, history_file empty) or file (50 lines, also in the history file)",
    )
    parser.add_argument("--plot", metavar="PNG", help="server CPU per delivery vs room size")
    parser.add_argument("--plot-sizes", default="10,50,100,200", help="receivers for --plot")
    parser.add_argument("--idle-sessions", type=int, metavar="N", help="idle-memory mode")
    parser.add_argument("--idle-hold", type=float, default=5.0, help="seconds held idle")
    args = parser.parse_args(argv)
    receivers, senders, rate = PRESETS[args.load]
    args.receivers = args.receivers if args.receivers is not None else receivers
    args.senders = args.senders if args.senders is not None else senders
    args.rate = args.rate if args.rate is not None else rate
    if args.receivers < 1 or args.senders < 1 or args.rate <= 0 or args.senders > 9999:
        parser.error("need at least 1 receiver, 1 to 9999 senders and a rate > 0")
    return args


def stop_on_signal(number: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {number}")  # so the finally blocks kill children


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGINT, stop_on_signal)  # even when started with SIGINT ignored
    env = dict(os.environ)
    checkout = str(HERE.parent)  # this checkout's udpchat and twisted/plugins first
    env["PYTHONPATH"] = os.pathsep.join(p for p in (checkout, env.get("PYTHONPATH")) if p)
    env.pop("NOTIFY_SOCKET", None)
    began = time.monotonic()
    if args.idle_sessions:
        result = idle_sessions(args.idle_sessions, args, env)
        print(
            f"{result['idle_sessions']} idle sessions established in "
            f"{result['established_s']:.0f} s: daemon RSS {result['server_rss_mb']:.1f} MB "
            f"(empty daemon {result['baseline_rss_mb']:.1f} MB, "
            f"{result['kib_per_session']:.1f} KiB per session); "
            f"errors: {result['errors'] or 'none'}"
        )
        output: Any = result
    else:
        targets = args.targets.split(",")
        notes = []
        if "ncat" in targets and not ensure_ncat():
            targets.remove("ncat")
            notes.append("ncat column skipped: ncat is missing and could not be installed")
        rows = plot(args, targets, env) if args.plot else run_load(args, targets, env)
        print(report(rows, args, notes))
        output = rows
    print(f"(took {time.monotonic() - began:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(output, indent=1) + "\n")


if __name__ == "__main__":
    main()
