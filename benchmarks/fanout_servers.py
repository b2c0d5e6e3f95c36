"""The two servers benchmarks/fanout.py compares, the real client it runs beside the
load, and how it reads a process's CPU and memory from /proc."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fanout_load import Tally

# The real twistd with this interpreter (as tests/conftest.py runs it).
TWISTD = [
    sys.executable,
    "-c",
    "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
]
READY_LINE = "Listening on UDP"
START_TIMEOUT_S = 20.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (fields 14 and 15 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def udp_buffer_drops() -> int:
    """Datagrams the kernel dropped for full socket receive buffers (all UDP sockets
    of the machine: /proc/net/snmp Udp RcvbufErrors)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    pairs = zip(lines, lines[1:], strict=False)
    header, values = next(pair for pair in pairs if pair[0][0] == "Udp:")
    return int(values[header.index("RcvbufErrors")])


def udp_socket_drops(port: int) -> int:
    """Datagrams dropped at the UDP socket bound to `port` (/proc/net/udp "drops")."""
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}"):
            return int(fields[-1])
    return 0


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running server process and how members reach it."""

    proc: subprocess.Popen[bytes]
    port: int
    psk: str = ""  # the Fernet key (udpchat only)
    key_file: Path | None = None
    log: Any = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not None:
            self.log.close()


def start_udpchat(
    folder: Path,
    env: dict[str, str],
    max_members: int,
    profile: Path | None = None,
    history: str = "off",
    cluster: dict[str, str] | None = None,
    idle_timeout: float = 3600,
) -> Server:
    """`twistd -n udpchat` with a benchmark config: a high handshake rate (the real
    client and the idle mode come from few addresses), a long idle timeout, and by
    default no history; `history` "memory" keeps 50 lines per room in memory, "file"
    also in the history file. With `profile`, twistd writes cProfile stats there when
    it stops. `cluster` is a [cluster] section (docs/CLUSTER.md: url, node); the
    daemons of one cluster each need a folder of their own with the same key file.
    The long `idle_timeout` keeps a member the load starves of CPU for a while."""
    from cryptography.fernet import Fernet

    key_file = folder / "chat.key"
    if not key_file.exists():
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(Fernet.generate_key() + b"\n")
    port = free_port(socket.SOCK_DGRAM)
    settings = {
        "interface": "127.0.0.1", "port": port, "key_file": key_file,
        "max_members": max_members, "history_lines": 0 if history == "off" else 50,
        "history_file": "chat.history" if history == "file" else "",
        "idle_timeout": idle_timeout, "handshake_rate": 100000, "handshake_burst": 100000,
    }  # fmt: skip
    config = folder / "chat.ini"
    text = "[server]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
    if cluster is not None:
        text += "[cluster]\n" + "".join(f"{k} = {v}\n" for k, v in cluster.items())
    config.write_text(text)
    log_file = folder / f"daemon-{port}.log"
    log = open(log_file, "wb")  # noqa: SIM115 - closed by Server.kill
    profiling = [] if profile is None else [
        f"--profile={profile}", "--profiler=cprofile", "--savestats",
    ]  # fmt: skip
    proc = subprocess.Popen(
        [*TWISTD, "-n", "--pidfile=", *profiling, "udpchat", "--config", str(config)],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder,
    )  # fmt: skip
    server = Server(proc, port, key_file.read_bytes().strip().decode(), key_file, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while READY_LINE not in log_file.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"the daemon did not start:\n{log_file.read_text()}")
        time.sleep(0.05)
    return server


def ensure_ncat() -> bool:
    """True if ncat is there, installing Debian's package when we are root."""
    if shutil.which("ncat"):
        return True
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    print("installing ncat (apt-get install -y ncat) ...", file=sys.stderr, flush=True)
    for command in (["apt-get", "install", "-y", "ncat"], ["apt-get", "update"],
                    ["apt-get", "install", "-y", "ncat"]):  # fmt: skip
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
        if shutil.which("ncat"):
            return True
    return False


def tcp_listening(port: int) -> bool:
    """Whether something listens on TCP `port` (read from /proc: connecting to ncat
    would make a chat member of the probe)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            return True
    return False


def start_ncat(max_conns: int) -> Server:
    """`ncat --chat --ssl` (a temporary self-signed certificate) on loopback."""
    port = free_port(socket.SOCK_STREAM)
    proc = subprocess.Popen(
        ["ncat", "--chat", "--ssl", "--max-conns", str(max_conns), "-l", "127.0.0.1", str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = Server(proc, port)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not tcp_listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError("ncat did not start listening")
        time.sleep(0.05)
    return server


@dataclass
class RealClient:
    """One real client process as a member (pipe mode): `udpchat-client`, or
    `ncat --ssl` for ncat. A thread reads its stdout and stamps each shown line."""

    target: str
    server: Server
    index: int
    env: dict[str, str]
    window: tuple[float, float] = (float("inf"), float("inf"))
    profile: Path | None = None  # udpchat only: cProfile stats written here at exit
    nodes: dict[int, int] | None = None  # member -> daemon, as in fanout_load.Tally
    record_order: bool = False
    proc: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        if self.target == "udpchat":
            profiling = [] if self.profile is None else ["-m", "cProfile", "-o", str(self.profile)]
            command = [
                sys.executable, *profiling, "-m", "udpchat.client.cli",
                "127.0.0.1", "--port", str(self.server.port), "--key", str(self.server.key_file),
                "--nick", f"m{self.index}",
            ]  # fmt: skip
        else:
            command = ["ncat", "--ssl", "127.0.0.1", str(self.server.port)]
        self._tally = Tally(self.nodes, self.record_order)
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=self.env,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            self._tally.window = self.window
            if b"FB" in line:
                self._tally.add(self.index, line, now)
            elif self.target == "ncat" or line.startswith(b"-!- you are"):
                self._ready.set()

    def wait_ready(self, timeout: float) -> None:
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the real {self.target} client did not join in {timeout:.0f} s")

    def tally(self) -> dict[str, Any]:
        tally = self._tally
        return {
            "sent": {}, "received": tally.per_sender(), "dups": tally.dups,
            "window_deliveries": tally.window_deliveries,
            "latencies_ms": list(tally.latencies_ms), "cpu_window_s": None, "errors": {},
            **tally.extras(),
        }  # fmt: skip

    def kill(self) -> None:
        if self.proc.poll() is None and self.profile is not None and self.proc.stdin:
            self.proc.stdin.close()  # end of input: it exits by itself and saves its profile
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(2)
