"""Specification of etc/udpchat.service and etc/udpchat.socket: valid for systemd,
hardened for a UDP daemon, and agreeing with each other and with chat.ini."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Key -> values of a unit file (comments dropped; repeated keys accumulate)."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


@pytest.fixture
def unit(repo_root: Path) -> Path:
    return repo_root / "etc" / "udpchat.service"


@pytest.fixture
def socket_unit(repo_root: Path) -> Path:
    return repo_root / "etc" / "udpchat.socket"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_reports_nothing_but_the_uninstalled_binary(
    unit: Path, socket_unit: Path
) -> None:
    """`systemd-analyze verify` accepts both units (the socket finds its service); the
    only thing it may report here is that the ExecStart binary (installed by the
    deployment) does not exist."""
    exec_start = unit_settings(unit)["ExecStart"][0].split()[0]
    result = subprocess.run(
        ["systemd-analyze", "verify", str(socket_unit), str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and exec_start not in line
    ]
    assert problems == []
    if result.returncode != 0:
        assert not Path(exec_start).exists()


def test_unit_runs_twistd_in_the_foreground_with_the_system_config(unit: Path) -> None:
    """systemd supervises twistd directly (no daemonizing, no pidfile), Type=notify."""
    settings = unit_settings(unit)
    assert settings["Type"] == ["notify"]
    command = settings["ExecStart"][0].split()
    assert command[0].endswith("/twistd")
    assert command[1:] == [
        "--nodaemon",
        "--pidfile=",
        "udpchat",
        "--config",
        "/etc/udpchat/chat.ini",
    ]
    assert settings["ConfigurationDirectory"] == ["udpchat"]
    assert settings["StateDirectory"] == ["udpchat"]
    # A config/key mistake exits 78 (udpchat.daemon.tap.EXIT_CONFIG): restarting cannot help.
    assert settings["RestartPreventExitStatus"] == ["78"]


def test_unit_is_sandboxed(unit: Path) -> None:
    """The unit uses the sandboxing options that do not get in a UDP daemon's way."""
    settings = unit_settings(unit)
    expected = {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "RestrictRealtime": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert settings.get(key) == [value], key
    assert "@system-service" in settings["SystemCallFilter"]


def test_memory_limit_covers_the_budget_of_the_shipped_config(unit: Path, repo_root: Path) -> None:
    """MemoryMax= and MemoryHigh= leave room for the memory budget that the shipped
    chat.ini's max_members implies (udpchat.daemon.memory), and not much more."""
    from udpchat.chat.server import ServerSettings
    from udpchat.daemon.config import load_config
    from udpchat.daemon.memory import MIB, memory_budget
    from udpchat.daemon.service import settings_of

    config = load_config(str(repo_root / "etc" / "chat.ini"))
    assert settings_of(config) == ServerSettings(
        history_lines=config.history_lines, max_members=config.max_members
    )
    budget = memory_budget(settings_of(config)).total_bytes
    settings = unit_settings(unit)
    high = int(settings["MemoryHigh"][0].removesuffix("M")) * MIB
    limit = int(settings["MemoryMax"][0].removesuffix("M")) * MIB
    assert budget <= high <= limit <= 1.25 * budget


def test_unit_logs_as_udpchat(unit: Path) -> None:
    """journald files the lines under udpchat (`journalctl -t udpchat`), not twistd."""
    assert unit_settings(unit)["SyslogIdentifier"] == ["udpchat"]


def test_socket_unit_passes_one_dual_stack_udp_socket_on_the_configs_port(
    socket_unit: Path, repo_root: Path
) -> None:
    """udpchat.socket binds one UDP socket (the daemon serves exactly one) on the
    shipped chat.ini's port, for IPv4 and IPv6, with the daemon's socket buffers; and
    it is named after the service, which it therefore activates."""
    from udpchat.daemon.config import load_config
    from udpchat.daemon.service import SOCKET_BUFFER_BYTES

    settings = unit_settings(socket_unit)
    config = load_config(repo_root / "etc" / "chat.ini")
    assert settings["ListenDatagram"] == [str(config.port)]
    assert not {"ListenStream", "ListenSequentialPacket", "Accept", "Service"} & settings.keys()
    assert settings["BindIPv6Only"] == ["both"]
    assert settings["ReceiveBuffer"] == settings["SendBuffer"] == ["4M"]
    assert SOCKET_BUFFER_BYTES == 4 * 1024 * 1024
    assert settings["WantedBy"] == ["sockets.target"]
