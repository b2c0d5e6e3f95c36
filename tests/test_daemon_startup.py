"""Specification of how the daemon starts, or fails to: the real `twistd udpchat`,
daemonized (the launcher returns) or not, and the advice that fits each cause."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import ChatClient, free_udp_port

from udpchat.daemon import tap
from udpchat.daemon.config import ServerConfig
from udpchat.daemon.listen import bind_problem, unprivileged_port_start
from udpchat.daemon.tap import EXIT_CONFIG, EXIT_TEMPFAIL, key_problem

CONFIG = Path("/etc/udpchat/chat.ini")


@pytest.fixture
def holder() -> Iterator[socket.socket]:
    """A UDP port on 127.0.0.1 that another program holds."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


def write_config(folder: Path, port: int) -> Path:
    path = folder / "chat.ini"
    path.write_text(f"[server]\ninterface = 127.0.0.1\nport = {port}\n")
    return path


def daemonized(
    twistd_argv: list[str], env: dict[str, str], folder: Path, config: Path
) -> subprocess.CompletedProcess[str]:
    """`twistd udpchat` without -n, pidfile and log file in `folder`; returns when the
    launcher does (a hung launcher fails the test after 10 s)."""
    return subprocess.run(
        [
            *twistd_argv,
            f"--pidfile={folder / 'twistd.pid'}",
            f"--logfile={folder / 'twistd.log'}",
            "udpchat",
            "--config",
            str(config),
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
    )


def test_daemonized_start_on_a_taken_port_exits_at_once_without_a_pidfile(
    tmp_path: Path,
    twistd_argv: list[str],
    subprocess_env: dict[str, str],
    holder: socket.socket,
) -> None:
    """Started without -n on a port another program holds, the launcher ends within
    5 s with the one-line reason on stderr and EX_TEMPFAIL (75: systemd may retry),
    and leaves no pidfile (it used to wait forever for a child that had died)."""
    port = holder.getsockname()[1]
    started = time.monotonic()
    result = daemonized(twistd_argv, subprocess_env, tmp_path, write_config(tmp_path, port))
    assert time.monotonic() - started < 5
    assert result.returncode == EXIT_TEMPFAIL == 75
    assert result.stderr.splitlines() == [
        f"udpchat: cannot listen on 127.0.0.1:{port}: another program uses UDP port {port} "
        f"(ss -ulpn 'sport = :{port}' shows which); fix: stop it, or set another [server] "
        f"port in {tmp_path / 'chat.ini'}"
    ]
    assert not (tmp_path / "twistd.pid").exists()


def test_daemonized_start_returns_and_the_daemon_serves_until_sigterm(
    tmp_path: Path, twistd_argv: list[str], subprocess_env: dict[str, str]
) -> None:
    """A good daemonized start: the launcher exits 0 at once, the pidfile names the
    daemon, which answers a client; SIGTERM stops it and removes the pidfile."""
    port = free_udp_port()
    result = daemonized(twistd_argv, subprocess_env, tmp_path, write_config(tmp_path, port))
    assert result.returncode == 0, result.stderr
    pid = int((tmp_path / "twistd.pid").read_text())
    try:
        client = ChatClient(("127.0.0.1", port), (tmp_path / "chat.key").read_bytes().strip(), "bg")
        client.wait_for(lambda m: m["t"] == "welcome")
        client.close()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while (tmp_path / "twistd.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not (tmp_path / "twistd.pid").exists()
        assert "Listening on UDP 127.0.0.1:" in (tmp_path / "twistd.log").read_text()
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --- the advice fits the cause -----------------------------------------------------------


def test_privileged_port_advises_a_high_port_a_capability_or_socket_activation() -> None:
    """EACCES on a port below the unprivileged start says so and names the three
    fixes; restarting cannot help (not transient: exit 78)."""
    problem = bind_problem(OSError(errno.EACCES, "Permission denied"), "", 80, CONFIG, 1024)
    assert not problem.transient
    text = str(problem)
    assert text.startswith("cannot listen on *:80: ports below 1024 are privileged")
    assert "set [server] port to 1024 or more in /etc/udpchat/chat.ini" in text
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in text
    assert "socket activation (udpchat.socket" in text
    assert "stop" not in text  # nothing else holds the port


def test_port_in_use_advises_finding_the_program_and_may_be_retried() -> None:
    """EADDRINUSE names the port and how to find its user; a later start may succeed
    (the old instance still stopping), so it is transient (exit 75)."""
    problem = bind_problem(OSError(errno.EADDRINUSE, "Address in use"), "::", 12345, CONFIG, 1024)
    assert problem.transient
    assert str(problem).startswith("cannot listen on [::]:12345: another program uses UDP port")
    assert "ss -ulpn 'sport = :12345'" in str(problem)


def test_permission_denied_on_a_high_port_is_not_called_a_privileged_port() -> None:
    """A port above the unprivileged start refused for another reason (a security
    policy) keeps the system's words and a generic fix."""
    problem = bind_problem(OSError(errno.EACCES, "Permission denied"), "", 5000, CONFIG, 1024)
    assert "privileged" not in str(problem)
    assert str(problem).startswith("cannot listen on *:5000: Permission denied; fix:")


def test_unprivileged_port_start_reads_the_sysctl(tmp_path: Path) -> None:
    """The privileged range comes from net.ipv4.ip_unprivileged_port_start, 1024 when
    the file cannot be read (e.g. ProcSubset=pid hides /proc/sys)."""
    sysctl = tmp_path / "ip_unprivileged_port_start"
    sysctl.write_text("443\n")
    assert unprivileged_port_start(sysctl) == 443
    assert unprivileged_port_start(tmp_path / "missing") == 1024


requires_root_tools = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("unshare") is None,
    reason="needs root, setpriv and unshare to take a capability away or mount read-only",
)


@requires_root_tools
def test_a_privileged_port_without_the_capability_exits_78_with_that_advice(
    tmp_path: Path, twistd_argv: list[str], subprocess_env: dict[str, str]
) -> None:
    """The real daemon without CAP_NET_BIND_SERVICE (as an unprivileged user is) on
    a port below 1024: one line with the advice, exit 78, nothing left running."""
    if unprivileged_port_start() <= 1:
        pytest.skip("this machine has no privileged ports")
    config = write_config(tmp_path, 1)  # refused for the capability before any "in use"
    result = subprocess.run(
        [
            "setpriv",
            "--bounding-set=-net_bind_service",
            *twistd_argv,
            "-n",
            "--pidfile=",
            "udpchat",
            "--config",
            str(config),
        ],
        cwd=tmp_path,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == EXIT_CONFIG
    [line] = result.stderr.splitlines()
    assert line.startswith("udpchat: cannot listen on 127.0.0.1:1: ports below ")
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in line


@requires_root_tools
def test_a_key_folder_on_a_read_only_mount_points_to_the_state_folder(
    tmp_path: Path, twistd_argv: list[str], subprocess_env: dict[str, str]
) -> None:
    """As under ProtectSystem=strict, the config's folder is mounted read-only and the
    key does not exist yet: the advice is key_file in the unit's state folder
    ($STATE_DIRECTORY), not making the folder writable; exit 78."""
    etc = tmp_path / "etc"
    etc.mkdir()
    config = write_config(etc, free_udp_port())
    state = tmp_path / "state"
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh", str(etc), *twistd_argv]
        + ["-n", "--pidfile=", "udpchat", "--config", str(config)],
        cwd=tmp_path,
        env={**subprocess_env, "STATE_DIRECTORY": str(state)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert result.stderr.splitlines() == [
        f"udpchat: cannot create key file {etc / 'chat.key'}: {etc} is on a read-only "
        "file system (under systemd, ProtectSystem=strict makes /etc read-only); fix: set "
        f"key_file = {state / 'chat.key'} in {config} (the unit's StateDirectory=, which "
        "the daemon may write)"
    ]


def test_a_key_problem_on_a_writable_folder_keeps_the_key_modules_advice(
    tmp_path: Path,
) -> None:
    """Only a missing key on a read-only mount gets the state-folder advice; any
    other key problem is explained by udpchat.keys as before."""
    config = ServerConfig(path=tmp_path / "chat.ini", key_file=tmp_path / "chat.key")
    assert key_problem("as is", config, {}) == "as is"


def test_the_read_only_advice_defaults_to_the_shipped_units_state_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside systemd ($STATE_DIRECTORY unset) the advice names /var/lib/udpchat, the
    shipped unit's StateDirectory=."""
    monkeypatch.setattr(tap, "_read_only", lambda folder: True)
    config = ServerConfig(path=CONFIG, key_file=Path("/etc/udpchat/chat.key"))
    advice = key_problem("unused", config, {})
    assert "fix: set key_file = /var/lib/udpchat/chat.key in /etc/udpchat/chat.ini" in advice


def test_daemonized_start_with_the_metrics_port_taken_exits_at_once_without_a_pidfile(
    tmp_path: Path, twistd_argv: list[str], subprocess_env: dict[str, str]
) -> None:
    """The metrics port is bound before twistd forks too: taken, the launcher ends at
    once with one line naming the setting, EX_TEMPFAIL, and no pidfile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        metrics_port = taken.getsockname()[1]
        config = write_config(tmp_path, free_udp_port())
        config.write_text(config.read_text() + f"metrics = 127.0.0.1:{metrics_port}\n")
        started = time.monotonic()
        result = daemonized(twistd_argv, subprocess_env, tmp_path, config)
    assert time.monotonic() - started < 5
    assert result.returncode == EXIT_TEMPFAIL
    [line] = result.stderr.splitlines()
    assert line.startswith(f"udpchat: cannot serve metrics on 127.0.0.1:{metrics_port}: ")
    assert f"[server] metrics in {config}" in line
    assert not (tmp_path / "twistd.pid").exists()
