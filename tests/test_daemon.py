"""The real daemon, `twistd -n udpchat --config ...`, as a subprocess on loopback."""

from __future__ import annotations

import random
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from daemon import ChatClient, Daemon

from udpchat.core import wire


@pytest.fixture
def daemon(tmp_path: Path, subprocess_env: dict[str, str]) -> Iterator[Daemon]:
    d = Daemon(tmp_path, subprocess_env, log_rejects_interval=1)
    yield d
    d.kill()


def test_starts_creates_its_key_and_says_where_clients_connect(daemon: Daemon) -> None:
    """On first start the daemon creates the key file (0600), logs where it is and
    the address clients should use, and never logs the key itself."""
    assert not daemon.key_file.exists()
    daemon.start()
    mode = stat.S_IMODE(daemon.key_file.stat().st_mode)
    assert mode == 0o600
    log = daemon.log()
    assert str(daemon.key_file) in log
    assert "clients need a copy" in log
    assert f"Clients can connect to 127.0.0.1:{daemon.port}" in log
    assert daemon.psk.decode() not in log
    assert daemon.stop() == 0


def test_two_members_chat_and_sigterm_tells_them_and_exits_quickly(daemon: Daemon) -> None:
    """Two real clients exchange a line through the daemon; on SIGTERM each member
    is told the server is going away and the daemon exits 0 within 2 seconds."""
    daemon.start()
    alice = ChatClient(daemon.address, daemon.psk, "alice")
    alice.wait_for(lambda m: m["t"] == "welcome")
    bob = ChatClient(daemon.address, daemon.psk, "bob")
    bob.wait_for(lambda m: m["t"] == "welcome", also=(alice,))
    alice.send({"t": "say", "text": "hello bob", "id": "0123456789abcdef"})
    got = bob.wait_for(lambda m: m["t"] == "say", also=(alice,))
    assert got == {
        "t": "say",
        "room": "lobby",
        "nick": "alice",
        "text": "hello bob",
        "id": "0123456789abcdef",
    }
    assert "hello bob" not in daemon.log(), "message text is never logged"
    assert "alice joined lobby from 127.0.0.1:" in daemon.log()

    assert daemon.proc is not None
    started = time.monotonic()
    daemon.proc.terminate()
    bob.wait_for(lambda m: m["t"] == "shutdown", timeout=2)
    daemon.proc.wait(timeout=2)
    assert time.monotonic() - started < 2.0
    assert daemon.proc.returncode == 0
    assert daemon.stop() == 0
    alice.close()
    bob.close()


def test_garbage_flood_gets_no_answer_and_real_clients_keep_working(daemon: Daemon) -> None:
    """Thousands of garbage datagrams (random, truncated, wrong type, valid-looking
    headers, wrong key) get not one byte back; the daemon keeps serving real clients
    and logs a periodic summary of what it dropped, not a line per datagram."""
    daemon.start()
    member = ChatClient(daemon.address, daemon.psk, "member")
    member.wait_for(lambda m: m["t"] == "welcome")

    rng = random.Random(7)
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.settimeout(0.2)
    wrong_key = ChatClient(daemon.address, Fernet.generate_key(), "intruder")
    sent = 0
    deadline = time.monotonic() + 20
    shapes = [
        lambda: rng.randbytes(rng.randrange(0, 1300)),
        lambda: bytes([wire.HANDSHAKE_INIT]) + rng.randbytes(169),
        lambda: bytes([wire.DATA]) + rng.randbytes(rng.randrange(0, 200)),
        lambda: bytes([wire.HANDSHAKE_RESPONSE]) + rng.randbytes(145),
        lambda: b"",
    ]
    while sent < 3000 and time.monotonic() < deadline:
        flood.sendto(shapes[sent % len(shapes)](), daemon.address)
        sent += 1
        if sent % 500 == 0:
            member.poll(0.01)
            wrong_key.poll(0.01)
    wrong_key.poll(1.0)
    with pytest.raises(TimeoutError):
        flood.recvfrom(2048)
    assert wrong_key.messages == [] and not wrong_key.core.connected

    member.send({"t": "who"})
    who = member.wait_for(lambda m: m["t"] == "who")
    assert who["nicks"] == ["member"]
    deadline = time.monotonic() + 5
    while "Dropped" not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.05)  # the summary comes once per log_rejects_interval (1 s here)
    log = daemon.log()
    assert "Dropped" in log and "without answer" in log
    assert log.count("Dropped") < 20, "summaries, not one line per datagram"
    assert "Traceback" not in log
    assert daemon.stop() == 0
    for client in (member, wrong_key):
        client.close()
    flood.close()


def test_denied_address_gets_silence_and_one_log_line(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """A source address outside allow (or inside deny) gets no answer at all, and the
    refusal is logged once per minute, not once per datagram."""
    daemon = Daemon(tmp_path, subprocess_env, deny="127.0.0.0/8")
    try:
        daemon.start()
        client = ChatClient(daemon.address, daemon.psk, "denied")
        client.poll(1.3)  # the first handshake and its retry after 1 s
        assert not client.core.connected and client.messages == []
        assert daemon.log().count("Refused 127.0.0.1") == 1
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_a_full_server_says_so(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    """With max_members = 1, a second key holder is told the server is full (with
    the limit), at once, instead of timing out; the first keeps chatting."""
    daemon = Daemon(tmp_path, subprocess_env, max_members=1)
    try:
        daemon.start()
        first = ChatClient(daemon.address, daemon.psk, "first")
        first.wait_for(lambda m: m["t"] == "welcome")
        second = ChatClient(daemon.address, daemon.psk, "second")
        refused = second.wait_for(lambda m: m["t"] == "error", timeout=5)
        assert refused["code"] == "server-full" and "(1 members)" in refused["text"]
        first.send({"t": "who"})
        assert first.wait_for(lambda m: m["t"] == "who")["nicks"] == ["first"]
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_listens_on_ipv6_loopback(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    """interface = ::1 serves IPv6 clients."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    daemon = Daemon(tmp_path, subprocess_env, interface="::1")
    try:
        daemon.start()
        client = ChatClient(("::1", daemon.port), daemon.psk, "six")
        assert client.wait_for(lambda m: m["t"] == "welcome")["nick"] == "six"
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_dual_stack_serves_ipv4_and_ipv6(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    """interface = :: serves both IPv4 and IPv6 clients on one port."""
    daemon = Daemon(tmp_path, subprocess_env, interface="::")
    try:
        daemon.start()
        v4 = ChatClient(("127.0.0.1", daemon.port), daemon.psk, "four")
        v6 = ChatClient(("::1", daemon.port), daemon.psk, "six")
        v4.wait_for(lambda m: m["t"] == "welcome", also=(v6,))
        v6.wait_for(lambda m: m["t"] == "welcome", also=(v4,))
        v4.send({"t": "say", "text": "over IPv4", "id": "0123456789abcdef"})
        assert v6.wait_for(lambda m: m["t"] == "say", also=(v4,))["text"] == "over IPv4"
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_port_in_use_is_one_clear_line(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    """A port another program holds stops the daemon with one line and no traceback."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    daemon = Daemon(tmp_path, subprocess_env, port=holder.getsockname()[1])
    try:
        with pytest.raises(AssertionError, match="daemon exited"):
            daemon.start()
        log = daemon.log()
        assert "cannot listen on 127.0.0.1:" in log and "fix:" in log
        assert "Traceback" not in log
        assert daemon.proc is not None and daemon.proc.returncode != 0
    finally:
        daemon.kill()
        holder.close()


def test_tells_systemd_ready_once_listening_and_stopping_on_the_way_down(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """Under Type=notify the daemon sends READY=1 to $NOTIFY_SOCKET once it listens
    (a client is answered by then) and STOPPING=1 when asked to stop."""
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(20)
    env = dict(subprocess_env, NOTIFY_SOCKET=str(notify_path))
    daemon = Daemon(tmp_path, env)
    try:
        daemon.start()
        assert listener.recv(256) == b"READY=1"
        client = ChatClient(daemon.address, daemon.psk, "ready")
        client.wait_for(lambda m: m["t"] == "welcome")
        assert daemon.stop() == 0
        assert listener.recv(256) == b"STOPPING=1"
        client.close()
    finally:
        daemon.kill()
        listener.close()
