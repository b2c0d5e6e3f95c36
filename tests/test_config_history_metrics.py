"""Specification of the config keys history_file and metrics: where a relative
history file goes, and one-line errors that name file, key and fix."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from udpchat.daemon.config import ConfigError, ServerConfig, load_config


def load(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> ServerConfig:
    path = tmp_path / "chat.ini"
    path.write_text("[server]\n" + text)
    return load_config(path, environ={} if environ is None else environ)


def error_for(tmp_path: Path, text: str) -> str:
    path = tmp_path / "chat.ini"
    path.write_text("[server]\n" + text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: [server] ")
    return message


# --- history_file ----------------------------------------------------------------------


def test_history_file_defaults_to_the_key_files_folder(tmp_path: Path) -> None:
    """Without systemd's StateDirectory=, a relative history file is next to the key:
    the folder the daemon already writes (etc/ in a checkout)."""
    (tmp_path / "keys").mkdir()
    config = load(tmp_path, "key_file = keys/chat.key\n")
    assert config.history_file == tmp_path / "keys" / "chat.history"
    config = load(tmp_path, "key_file = keys/chat.key\nhistory_file = rooms/h.db\n")
    assert config.history_file == tmp_path / "keys" / "rooms" / "h.db"


def test_relative_history_file_goes_to_systemds_state_directory(tmp_path: Path) -> None:
    """Under the unit, $STATE_DIRECTORY (StateDirectory=) is the state folder, wherever
    the key file is (it may be a read-only copy under /etc)."""
    state = tmp_path / "state"
    config = load(tmp_path, "key_file = /etc/udpchat/chat.key\n", {"STATE_DIRECTORY": str(state)})
    assert config.history_file == state / "chat.history"
    config = load(tmp_path, "history_file = /srv/chat/history\n", {"STATE_DIRECTORY": str(state)})
    assert config.history_file == Path("/srv/chat/history")


@pytest.mark.parametrize("value", ["", '""', "''"])
def test_empty_history_file_keeps_history_in_memory_only(tmp_path: Path, value: str) -> None:
    assert load(tmp_path, f"history_file = {value}\n").history_file is None


def test_history_file_that_is_a_folder_is_refused_with_a_file_name_to_use(tmp_path: Path) -> None:
    message = error_for(tmp_path, f"history_file = {tmp_path}\n")
    assert f"history_file = '{tmp_path}' is a folder" in message
    assert f"e.g. {tmp_path / 'chat.history'}" in message


# --- metrics ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:9120", ("127.0.0.1", 9120)), ("[::1]:9120", ("::1", 9120)), ("", None)],
)
def test_metrics_address_is_ip_and_port(
    tmp_path: Path, value: str, expected: tuple[str, int] | None
) -> None:
    assert load(tmp_path, f"metrics = {value}\n").metrics == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("9120", "is not ADDRESS:PORT; use ADDRESS:PORT such as 127.0.0.1:9120"),
        (":9120", "is not ADDRESS:PORT; use ADDRESS:PORT such as 127.0.0.1:9120"),
        ("localhost:9120", "has 'localhost', which is not an IP address; use ADDRESS:PORT"),
        ("::1:9120", "has an IPv6 address without brackets; write [::1]:9120"),
        ("127.0.0.1:99999", "has no valid port; use ADDRESS:PORT"),
        ("127.0.0.1:http", "has no valid port; use ADDRESS:PORT"),
        ("192.0.2.1:9120", "is not an address of this machine; use an address of this machine"),
    ],
)
def test_bad_metrics_address_names_key_value_and_fix(
    tmp_path: Path, value: str, expected: str
) -> None:
    message = error_for(tmp_path, f"metrics = {value}\n")
    assert f"metrics = {value!r} {expected}" in message


def test_twistd_with_an_unusable_history_file_exits_78_with_one_line(
    tmp_path: Path, twistd_argv: list[str], subprocess_env: dict[str, str]
) -> None:
    """A history file the daemon cannot create (here: its folder is missing) stops
    twistd before it serves, with one line naming the file, the key and the fix."""
    (tmp_path / "chat.ini").write_text("[server]\nhistory_file = /nonexistent/udpchat/h.db\n")
    result = subprocess.run(
        [*twistd_argv, "-n", "--pidfile=", "udpchat", "--config", "chat.ini"],
        cwd=tmp_path,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 78
    assert "Traceback" not in result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("udpchat: /nonexistent/udpchat/h.db: history file cannot be created")
    assert f"[server] history_file in {tmp_path / 'chat.ini'}" in line
    assert (
        "fix: create that folder" in line and "(or empty, to keep history in memory only)" in line
    )
