"""A real `redis-server` on a free loopback port, in a folder of the test's own, for
the cluster tests (docs/CLUSTER.md). No persistence: stopped, it forgets, as a
Redis that restarts without a disk would."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server")
SKIP_REASON = (
    "redis-server is not installed (Debian: apt-get install redis-server; .ci/run "
    "installs it when run as root)"
)


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """`redis-server` on 127.0.0.1:port; start() waits until it answers PING."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_tcp_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file = folder / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        assert REDIS_SERVER is not None, SKIP_REASON
        argv = [
            REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.folder),
            "--logfile", str(self.log_file), "--protected-mode", "yes",
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not start: {self.log()}")
            time.sleep(0.02)
        return self

    def ping(self) -> bool:
        try:
            return self.command(b"PING") == b"+PONG"
        except OSError:
            return False

    def command(self, *args: bytes) -> bytes:
        """One command in RESP, the first line of the answer (tests read little)."""
        request = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(request)
            return sock.makefile("rb").readline().rstrip(b"\r\n")

    def keys(self) -> list[bytes]:
        """Every key name (KEYS *, answered as an array)."""
        request = b"*2\r\n$4\r\nKEYS\r\n$1\r\n*\r\n"
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(request)
            reader = sock.makefile("rb")
            count = int(reader.readline()[1:])
            names = []
            for _ in range(count):
                reader.readline()
                names.append(reader.readline().rstrip(b"\r\n"))
            return names

    def raw(self, *args: bytes) -> bytes:
        """The whole answer to one command, as RESP bytes (read until it pauses)."""
        request = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(request)
            sock.settimeout(0.2)
            out = b""
            while True:
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    return out
                if not chunk:
                    return out
                out += chunk

    def dump(self) -> bytes:
        """Every key and everything in it, as RESP bytes: what a reader of Redis sees."""
        out = b""
        for key in self.keys():
            kind = self.command(b"TYPE", key)
            read = {
                b"+string": (b"GET", key),
                b"+hash": (b"HGETALL", key),
                b"+list": (b"LRANGE", key, b"0", b"-1"),
                b"+stream": (b"XRANGE", key, b"-", b"+"),
                b"+zset": (b"ZRANGE", key, b"0", b"-1", b"WITHSCORES"),
            }[kind]
            out += key + b"\n" + self.raw(*read)
        return out

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def freeze(self) -> None:
        """SIGSTOP: Redis answers nothing and closes nothing (a hung process, or a
        network that drops everything), keeping its data; thaw() lets it go on."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # if frozen, or it could not end
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
