"""Run the real daemon (`twistd -n udpchat`) as a subprocess on loopback, and talk
to it with a small blocking client built on the protocol core.

Used by the end-to-end tests of the daemon and of the terminal client.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from conftest import TWISTD

from udpchat.core import events
from udpchat.core.endpoint import ClientEndpoint

READY_LINE = "Listening on UDP"


def free_udp_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class Daemon:
    """`twistd -n udpchat --config` on a temporary config, stopped by SIGTERM."""

    def __init__(
        self,
        folder: Path,
        env: dict[str, str],
        prefix: tuple[str, ...] = (),
        pass_fds: tuple[int, ...] = (),
        **settings: Any,
    ) -> None:
        """`prefix` goes before the command, e.g. ("ip", "netns", "exec", NAME);
        `pass_fds` are descriptors the command inherits (e.g. for socket activation)."""
        self.folder = folder
        self.env = env
        self.prefix = prefix
        self.pass_fds = pass_fds
        self.settings = {"interface": "127.0.0.1", "port": free_udp_port(), **settings}
        self.config = folder / "chat.ini"
        self.key_file = folder / "chat.key"
        self.log_file = folder / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config()

    @property
    def port(self) -> int:
        return int(self.settings["port"])

    @property
    def address(self) -> tuple[str, int]:
        return (str(self.settings["interface"]), self.port)

    def write_config(self) -> None:
        lines = ["[server]"] + [f"{k} = {v}" for k, v in self.settings.items()]
        self.config.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 20.0) -> Daemon:
        """Start it and wait until it listens (a restart waits for its own ready line:
        the log is appended to)."""
        ready_before = self.log().count(READY_LINE)
        self._log = open(self.log_file, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*self.prefix, *TWISTD, "-n", "--pidfile=", "udpchat", "--config", str(self.config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.folder,
            pass_fds=self.pass_fds,
        )
        deadline = time.monotonic() + timeout
        while self.log().count(READY_LINE) <= ready_before:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon not ready in {timeout} s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    @property
    def psk(self) -> bytes:
        return self.key_file.read_bytes().strip()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait, and return the exit status (kills if it does not stop)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class ChatClient:
    """A blocking test client: the real protocol core over a real loopback socket."""

    def __init__(self, server: tuple[str, int], psk: bytes, nick: str | None = None) -> None:
        self.server = server
        self.core = ClientEndpoint(psk)
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.messages: list[dict[str, Any]] = []
        self.events: list[events.Event] = []
        self.core.connect(time.time())
        if nick is not None:
            self.send({"t": "hello", "nick": nick, "room": "lobby", "client": os.urandom(8).hex()})

    def send(self, message: dict[str, Any]) -> int:
        return self.core.send(json.dumps(message).encode(), time.time())

    def poll(self, seconds: float) -> None:
        """Run the core for `seconds` of real time."""
        end = time.monotonic() + seconds
        while True:
            now = time.time()
            self.core.handle_timer(now)
            for data in self.core.datagrams_to_send(now):
                self.sock.sendto(data, self.server)
            while (event := self.core.next_event()) is not None:
                self.events.append(event)
                if isinstance(event, events.MessageReceived):
                    self.messages.append(json.loads(event.payload))
            left = end - time.monotonic()
            if left <= 0:
                return
            try:
                data, addr = self.sock.recvfrom(2048)
            except BlockingIOError:
                # Sleep until a datagram or the core's next timer (at most 50 ms), not
                # in a busy loop: the suite's CPU is what bounds its time.
                timer = self.core.get_timer()
                wait = min(left, 0.05, max(0.0, timer - time.time()) if timer else 0.05)
                select.select([self.sock], [], [], wait)
                continue
            if addr[:2] == self.server:
                self.core.receive_datagram(data, time.time())

    def wait_for(
        self, predicate: Any, timeout: float = 10.0, also: tuple[Any, ...] = ()
    ) -> dict[str, Any]:
        """Poll (this client and `also`) until a received message satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for message in self.messages[seen:]:
                if predicate(message):
                    return message
            seen = len(self.messages)
            self.poll(0.05)
            for other in also:
                other.poll(0.0)
        raise AssertionError(f"not received in {timeout} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()
