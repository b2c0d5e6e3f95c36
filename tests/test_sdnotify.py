"""Specification of systemd notifications: sd_notify datagrams and when the daemon sends them."""

from __future__ import annotations

import os
import socket
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import free_udp_port
from twisted.application.service import Service

from udpchat.daemon.config import ServerConfig
from udpchat.daemon.listen import Listening
from udpchat.daemon.sdnotify import notify
from udpchat.daemon.tap import Options, makeService


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A real AF_UNIX datagram socket in tmp_path, standing in for systemd's."""
    path = str(tmp_path / "n.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield sock, path


@pytest.fixture
def abstract_receiver() -> Iterator[tuple[socket.socket, str]]:
    """A socket in the Linux abstract namespace; systemd spells it '@name'."""
    name = f"udpchat-test-{os.getpid()}-{os.urandom(4).hex()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        yield sock, "@" + name


def test_notify_without_notify_socket_does_nothing() -> None:
    """Outside systemd ($NOTIFY_SOCKET unset or empty) notify is a no-op returning False."""
    assert notify("READY=1", environ={}) is False
    assert notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False


def test_notify_sends_one_datagram_to_a_socket_path(
    receiver: tuple[socket.socket, str],
) -> None:
    """The state string arrives as one datagram on the socket named by $NOTIFY_SOCKET."""
    sock, path = receiver
    assert notify("READY=1", environ={"NOTIFY_SOCKET": path}) is True
    assert sock.recv(4096) == b"READY=1"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux")
def test_notify_supports_abstract_namespace_sockets(
    abstract_receiver: tuple[socket.socket, str],
) -> None:
    """A $NOTIFY_SOCKET starting with '@' names an abstract socket (leading NUL byte)."""
    sock, name = abstract_receiver
    assert notify("STATUS=serving 0 members", environ={"NOTIFY_SOCKET": name}) is True
    assert sock.recv(4096) == b"STATUS=serving 0 members"


def test_notify_reads_os_environ_by_default(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Called with just a state, notify uses the process environment."""
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify("STOPPING=1") is True
    assert sock.recv(4096) == b"STOPPING=1"


@pytest.mark.parametrize(
    "value", ["/nonexistent/notify.sock", "relative.sock", "vsock:2:1234", "/bad\0path"]
)
def test_notify_failures_are_reported_not_raised(tmp_path: Path, value: str) -> None:
    """A missing, unsupported or malformed socket address returns False, never raises."""
    assert notify("READY=1", environ={"NOTIFY_SOCKET": value}) is False


def test_notify_to_a_path_that_is_not_a_socket_returns_false(tmp_path: Path) -> None:
    """A $NOTIFY_SOCKET pointing at a plain file is a failure, not a crash."""
    plain = tmp_path / "plain"
    plain.write_text("")
    assert notify("READY=1", environ={"NOTIFY_SOCKET": str(plain)}) is False


# --- when the daemon notifies -----------------------------------------------------------


class RecordingChatService(Service):
    """Stands in for udpchat.daemon.server's service; records whether systemd was told yet."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.seen_at_start: list[bytes] = []
        self.seen_at_stop: list[bytes] = []

    def _drain(self) -> list[bytes]:
        got = []
        self.sock.setblocking(False)
        try:
            while True:
                got.append(self.sock.recv(4096))
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(5)
        return got

    def startService(self) -> None:
        super().startService()
        self.seen_at_start = self._drain()

    def stopService(self) -> None:
        self.seen_at_stop = self._drain()
        super().stopService()


def test_daemon_reports_ready_after_the_chat_service_and_stopping_before_it(
    tmp_path: Path,
    receiver: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """makeService sends READY=1 only once the chat service has started (port bound), and
    STOPPING=1 before the chat service stops (says goodbye to members)."""
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    made: list[tuple[ServerConfig, bytes, RecordingChatService]] = []

    def make_chat_service(
        config: ServerConfig, psk: bytes, listening: Listening, **_: object
    ) -> Service:
        listening.sock.close()  # the tap bound it; this stand-in serves nothing
        service = RecordingChatService(sock)
        made.append((config, psk, service))
        return service

    stub = types.ModuleType("udpchat.daemon.service")
    stub.ChatService = make_chat_service  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "udpchat.daemon.service", stub)

    ini = tmp_path / "chat.ini"
    port = free_udp_port()
    ini.write_text(f"[server]\ninterface = 127.0.0.1\nport = {port}\n")
    options = Options()
    options.parseOptions(["--config", str(ini)])
    top = makeService(options)

    [(config, psk, chat)] = made
    assert config.port == port and (tmp_path / "chat.key").read_bytes() == psk + b"\n"

    top.startService()
    assert chat.seen_at_start == []
    assert sock.recv(4096) == b"READY=1"
    top.stopService()
    assert chat.seen_at_stop == [b"STOPPING=1"]
