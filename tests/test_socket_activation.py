"""Specification of socket activation: the daemon serves the UDP socket systemd passes
(the sd_listen_fds protocol: LISTEN_PID, LISTEN_FDS, descriptors from 3) instead of
binding its own, so the port outlives the daemon."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon import ChatClient, Daemon, free_udp_port
from pipe_client import PipeClient

from udpchat.daemon.listen import (
    ListenError,
    adopt_systemd_socket,
    open_socket,
    systemd_descriptors,
)

#: What systemd does between fork and exec, as a tiny exec wrapper: the socket at
#: descriptor 3, LISTEN_FDS=1 and LISTEN_PID naming the process that then execs twistd.
LAUNCHER = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); "
    "os.environ['LISTEN_FDS'] = '1'; os.environ['LISTEN_PID'] = str(os.getpid()); "
    "os.execvp(sys.argv[2], sys.argv[2:])"
)


@pytest.fixture
def passed_socket() -> Iterator[socket.socket]:
    """The UDP socket "systemd" bound (on 127.0.0.1), held by the test throughout."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


def test_the_daemon_serves_the_socket_systemd_passed_and_the_port_outlives_it(
    tmp_path: Path,
    subprocess_env: dict[str, str],
    passed_socket: socket.socket,
    clients: Callable[..., PipeClient],
) -> None:
    """Given a socket as systemd gives it, the daemon serves it (not the config's
    port, which it warns about), a real client chats through it, and after the
    daemon is gone the port is still bound (datagrams wait for the next start)."""
    fd = passed_socket.fileno()
    port = passed_socket.getsockname()[1]
    configured = free_udp_port()
    daemon = Daemon(
        tmp_path,
        subprocess_env,
        prefix=(sys.executable, "-c", LAUNCHER, str(fd)),
        pass_fds=(fd,),
        port=configured,
    )
    try:
        daemon.start()
        log = daemon.log()
        assert f"Serving the UDP socket systemd passed (socket activation): 127.0.0.1:{port}" in log
        assert f"Listening on UDP 127.0.0.1:{port};" in log
        assert f"[udpchat#warn] The socket systemd passed is on 127.0.0.1:{port}, not on " in log
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", configured))  # the config's port was never bound

        bob = ChatClient(("127.0.0.1", port), daemon.psk, "bob")
        bob.wait_for(lambda m: m["t"] == "welcome")
        alice = clients(port, daemon.key_file, "alice", subprocess_env)
        alice.wait_for("-!- alice has joined lobby", timeout=40)
        alice.type("through the socket systemd passed")
        said = bob.wait_for(lambda m: m["t"] == "say")
        assert said["text"] == "through the socket systemd passed"
        bob.send({"t": "say", "text": "and back", "id": "0123456789abcdef"})
        deadline = time.monotonic() + 20
        while "<bob> and back" not in alice.lines and time.monotonic() < deadline:
            bob.poll(0.05)  # sends, and acknowledges, while alice waits
        assert "<bob> and back" in alice.lines
        bob.close()
        daemon.kill()  # even a crash leaves the port to systemd, not free for others

        alice.kill()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.bind(("127.0.0.1", 0))
            sender.sendto(b"waits for the next start", ("127.0.0.1", port))
            passed_socket.settimeout(5)
            while True:  # after what the clients sent that the daemon did not read
                data, source = passed_socket.recvfrom(2048)
                if source == sender.getsockname():
                    break
        assert data == b"waits for the next start"
    finally:
        daemon.kill()


# --- the sd_listen_fds protocol ---------------------------------------------------------


def test_descriptors_for_this_process_start_at_3_and_the_variables_are_removed() -> None:
    """LISTEN_FDS=2 for our pid means descriptors 3 and 4; LISTEN_PID, LISTEN_FDS and
    LISTEN_FDNAMES are unset so no child takes them."""
    environ = {"LISTEN_PID": "42", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "HOME": "/"}
    assert systemd_descriptors(environ, pid=42) == [3, 4]
    assert environ == {"HOME": "/"}


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"LISTEN_FDS": "1"},
        {"LISTEN_PID": "41", "LISTEN_FDS": "1"},  # for another process (our parent)
        {"LISTEN_PID": "42", "LISTEN_FDS": "many"},
        {"LISTEN_PID": "", "LISTEN_FDS": "1"},
    ],
)
def test_variables_meant_for_another_process_or_garbled_mean_no_socket(
    environ: dict[str, str],
) -> None:
    """Without a LISTEN_PID naming this process, nothing was passed to us; the
    variables are removed all the same."""
    assert systemd_descriptors(environ, pid=42) == []
    assert environ == {}


def test_without_socket_activation_the_daemon_binds_its_own_socket() -> None:
    """No LISTEN_* variables: the config's interface and port are bound."""
    port = free_udp_port()
    listening = open_socket("127.0.0.1", port, Path("chat.ini"), environ={}, pid=1)
    with listening.sock:
        assert not listening.from_systemd
        assert listening.sock.getsockname() == ("127.0.0.1", port)
        assert listening.sock.getblocking() is False


def test_dual_stack_means_ipv4_and_ipv6_whatever_the_sysctl_says() -> None:
    """interface = :: is bound with IPV6_V6ONLY off: IPv4 clients reach it too."""
    listening = open_socket("::", 0, Path("chat.ini"), environ={}, pid=1)
    with listening.sock as sock:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0


def test_a_passed_socket_is_made_non_blocking_and_close_on_exec() -> None:
    """The adopted descriptor is what Twisted needs (non-blocking) and is not leaked
    to programs the daemon might start."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as original:
        original.bind(("127.0.0.1", 0))
        original.setblocking(True)
        sock = adopt_systemd_socket([original.detach()])
        with sock:
            assert sock.getblocking() is False
            assert sock.get_inheritable() is False
            assert sock.family == socket.AF_INET and sock.type == socket.SOCK_DGRAM


def test_a_stream_socket_is_refused_with_the_fix() -> None:
    """ListenStream= by mistake: one line asking for ListenDatagram=."""
    stream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(ListenError, match=r"is not a UDP socket; fix: use ListenDatagram="):
        adopt_systemd_socket([stream.detach()])


def test_more_than_one_socket_is_refused_with_the_fix() -> None:
    """The daemon serves one socket: two ListenDatagram= lines are a mistake to fix."""
    with pytest.raises(ListenError, match=r"systemd passed 2 sockets .* exactly one"):
        adopt_systemd_socket([3, 4])
