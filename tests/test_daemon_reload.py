"""SIGHUP (systemctl reload) on the real daemon: settings and keys change while members
chat; what cannot change live is named; a broken config changes nothing. Key rotation
(PROTOCOL.md 4.12): a member on the previous key keeps chatting through the overlap,
loses no line, and is then told to get the new key."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from daemon import Daemon
from pipe_client import PipeClient

from udpchat.keys import previous_key_path

KEYGEN = (sys.executable, "-m", "udpchat.daemon.keygen")


def hup(daemon: Daemon, count: int = 1) -> None:
    """SIGHUP, then wait for the count-th reload line (done or failed)."""
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = daemon.log()
        if log.count("Reloaded ") + log.count("Reload failed") >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no reload line in 10 s:\n{daemon.log()}")


def wait_log(daemon: Daemon, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in daemon.log():
        assert time.monotonic() < deadline, f"{text!r} not logged in {timeout} s:\n{daemon.log()}"
        time.sleep(0.05)


def test_a_reload_with_a_new_deny_list_refuses_a_newcomer_and_keeps_the_others(
    tmp_path: Path, subprocess_env: dict[str, str], clients: Callable[..., PipeClient]
) -> None:
    """A dual-stack daemon: bob chats over IPv4. Reloaded with ::1 denied and a
    changed port, it goes on (the port needs a restart, and the log says so); carol
    over IPv6 gets silence, bob never noticed. A broken config then changes nothing
    and the daemon goes on; fixed, the next reload works again."""
    env = subprocess_env
    daemon = Daemon(tmp_path, env, interface="::").start()
    try:
        bob = clients(daemon.port, daemon.key_file, "bob", env)
        bob.wait_for("-!- bob has joined lobby")
        port = daemon.port
        daemon.settings["deny"] = "::1"
        daemon.settings["port"] = port + 1
        daemon.write_config()
        daemon.settings["port"] = port
        hup(daemon)
        log = daemon.log()
        assert "applied deny" in log
        assert "port changed but take effect only after a restart" in log
        carol = clients(port, daemon.key_file, "carol", env, host="::1")
        wait_log(daemon, "Refused [::1]:")  # carol's first datagram
        time.sleep(1.0)  # her retries too
        assert not carol.saw_start("-!- you are carol")
        bob.type("still here")
        bob.type("/who")
        bob.wait_for("-!- Users in lobby: bob")

        daemon.config.write_text("[server]\nport = not a number\n")
        hup(daemon, count=2)
        assert "Reload failed; still running with the configuration loaded before" in daemon.log()
        assert "port = 'not a number'" in daemon.log()
        bob.type("after a broken reload")
        bob.type("/who")
        bob.wait_for("-!- Users in lobby: bob", count=2)
        daemon.write_config()
        hup(daemon, count=3)
        assert daemon.log().count("Reloaded ") == 2
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        daemon.stop()
    assert "Traceback" not in daemon.log()


def test_key_rotation_keeps_the_conversation_across_the_overlap(
    tmp_path: Path, subprocess_env: dict[str, str], clients: Callable[..., PipeClient]
) -> None:
    """alice has the key; the operator rotates it and reloads. bob joins with the new
    key and alice, still on the previous one, chats with him through the overlap
    without losing a line; when the overlap ends she is told to get the new key and
    leaves the room. The previous key then gets no answer."""
    env = subprocess_env
    daemon = Daemon(tmp_path, env, key_overlap=4).start()
    try:
        old_key = tmp_path / "old.key"
        old_key.write_bytes(daemon.key_file.read_bytes())
        old_key.chmod(0o600)
        alice = clients(daemon.port, old_key, "alice", env)
        alice.wait_for("-!- alice has joined lobby")
        rotated = time.monotonic()
        keygen = subprocess.run(
            [*KEYGEN, "--rotate", str(daemon.key_file)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert "kept the old key as" in keygen.stdout and "now reload the daemon" in keygen.stdout
        hup(daemon)
        assert "key rotation: the new key" in daemon.log()
        bob = clients(daemon.port, daemon.key_file, "bob", env)
        bob.wait_for("-!- bob has joined lobby")
        lines = [f"line {n}" for n in range(10)]
        for line in lines:
            alice.type(line)
            time.sleep(0.1)
        bob.wait_until(lambda seen: bob.said("alice") == lines, "alice's lines", 10)
        assert time.monotonic() - rotated < 4, "all said within the overlap"
        alice.wait_for_start("-!- server is shutting down: the server's key was replaced", 10)
        bob.wait_for("-!- alice has left lobby (quit)")
        wait_log(daemon, "The previous key's overlap ended: 1 members")
        assert "still uses the previous key" in daemon.log()
        bob.type("/who")
        bob.wait_for("-!- Users in lobby: bob")
    finally:
        daemon.stop()
    assert Path(previous_key_path(daemon.key_file)).exists()
    assert "Traceback" not in daemon.log()


def test_a_reload_that_changes_key_overlap_moves_the_end_of_the_overlap(tmp_path: Path) -> None:
    """key_overlap is read again at a reload: the previous key's end moves with it
    (counted from the rotation, the .previous file's time), without a restart."""
    from twisted.internet.task import Clock

    from udpchat.daemon.config import load_config
    from udpchat.daemon.rotation import load_previous_key
    from udpchat.daemon.service import ChatService
    from udpchat.keys import create_key, load_key, rotate_key

    ini = tmp_path / "chat.ini"
    ini.write_text("[server]\ninterface = 127.0.0.1\nkey_overlap = 100\nhistory_file =\n")
    create_key(tmp_path / "chat.key")
    rotate_key(tmp_path / "chat.key")
    wall = time.time
    config = load_config(ini)
    previous, _ = load_previous_key(config, wall())
    assert previous is not None
    clock = Clock()
    service = ChatService(
        config, load_key(config.key_file), reactor=clock, wall=wall, previous=previous
    )
    service._schedule_retirement()
    assert 90 < service._retire_call.getTime() <= 100
    ini.write_text("[server]\ninterface = 127.0.0.1\nkey_overlap = 1000\nhistory_file =\n")
    service.reload()
    assert 990 < service._retire_call.getTime() <= 1000
    clock.advance(1001)  # the end: the previous key is retired
    assert service._previous is None and service._retire_call is None
