"""Specification of the daemon's INI config: defaults, resolution, and one-line errors."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from pathlib import Path

import pytest

from udpchat.core.limits import TESTING_SHORT_IDLE_ENV
from udpchat.daemon.config import DEFAULTS, ConfigError, ServerConfig, load_config


def write_ini(tmp_path: Path, text: str, name: str = "chat.ini") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_for(tmp_path: Path, text: str) -> str:
    """The ConfigError message for a config file with `text`; it must be one line."""
    path = write_ini(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


# --- defaults and resolution ------------------------------------------------------------


def test_empty_server_section_gives_documented_defaults(tmp_path: Path) -> None:
    """Every key is optional; the defaults are those documented in etc/chat.ini."""
    config = load_config(write_ini(tmp_path, "[server]\n"))
    assert config == ServerConfig(
        path=tmp_path / "chat.ini",
        interface="",
        port=12345,
        key_file=tmp_path / "chat.key",
        history_lines=50,
        idle_timeout=30.0,
        max_members=256,
        allow=(),
        deny=(),
        log_rejects_interval=60.0,
        handshake_rate=20.0,
        handshake_burst=5,
        log_level="info",
        history_file=tmp_path / "chat.history",
        metrics=None,
    )


def test_shipped_example_config_loads_and_matches_the_defaults(repo_root: Path) -> None:
    """etc/chat.ini (used from a fresh clone) is valid and states the real defaults."""
    shipped = load_config(repo_root / "etc" / "chat.ini")
    assert shipped.key_file == repo_root / "etc" / "chat.key"
    text = (repo_root / "etc" / "chat.ini").read_text()
    for key, value in DEFAULTS.items():
        assert f"\n{key} = {value}".rstrip() in text, key


def test_relative_key_file_resolves_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative key_file is relative to the config file's folder, not the cwd."""
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    write_ini(conf_dir, "[server]\nkey_file = keys/chat.key\n")
    monkeypatch.chdir(tmp_path)
    config = load_config("conf/chat.ini")
    assert config.key_file == conf_dir / "keys" / "chat.key"
    assert config.key_file.is_absolute() and config.path.is_absolute()


def test_absolute_key_file_is_kept(tmp_path: Path) -> None:
    """An absolute key_file (e.g. /var/lib/udpchat/chat.key) is used as written."""
    config = load_config(write_ini(tmp_path, "[server]\nkey_file = /var/lib/udpchat/chat.key\n"))
    assert config.key_file == Path("/var/lib/udpchat/chat.key")


def test_all_keys_are_parsed(tmp_path: Path) -> None:
    """Each key's value is converted to its type."""
    config = load_config(
        write_ini(
            tmp_path,
            "[server]\n"
            "interface = 127.0.0.1\nport = 4000\nhistory_lines = 0\nidle_timeout = 25\n"
            "max_members = 3\nallow = 10.0.0.0/8, 192.168.1.7,2001:db8::/32\n"
            "deny = 10.9.0.0/16\nlog_rejects_interval = 5\nhandshake_rate = 0.5\n"
            "handshake_burst = 1\n",
        )
    )
    assert (config.interface, config.port, config.history_lines) == ("127.0.0.1", 4000, 0)
    assert (config.idle_timeout, config.max_members) == (25.0, 3)
    assert config.allow == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.7/32"),
        ipaddress.ip_network("2001:db8::/32"),
    )
    assert config.deny == (ipaddress.ip_network("10.9.0.0/16"),)
    assert (config.log_rejects_interval, config.handshake_rate) == (5.0, 0.5)
    assert config.handshake_burst == 1


@pytest.mark.parametrize(
    ("value", "level"),
    [("debug", "debug"), ("INFO", "info"), ("Warning", "warning"), ("error", "error")],
)
def test_log_level_names_a_level_in_any_case(tmp_path: Path, value: str, level: str) -> None:
    """log_level is one of debug, info, warning, error (written in any case)."""
    config = load_config(write_ini(tmp_path, f"[server]\nlog_level = {value}\n"))
    assert config.log_level == level


@pytest.mark.parametrize("value", ["warn", "verbose", "", "3"])
def test_bad_log_level_lists_the_levels(tmp_path: Path, value: str) -> None:
    """Anything else is one line naming the key, the value and the four levels."""
    path = write_ini(tmp_path, f"[server]\nlog_level = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: [server] log_level = {value!r} is not a log level; "
        "use one of debug, info, warning, error"
    )


@pytest.mark.parametrize("interface", ["", '""', "0.0.0.0", "::", "127.0.0.1"])
def test_wildcard_and_loopback_interfaces_are_accepted(tmp_path: Path, interface: str) -> None:
    """ "" (all IPv4), "::" (dual stack), 0.0.0.0 and a local address are all fine."""
    if interface == "::" and not ipv6_loopback_available():
        pytest.skip("no IPv6 on this machine")
    config = load_config(write_ini(tmp_path, f"[server]\ninterface = {interface}\n"))
    assert config.interface == ("" if interface == '""' else interface)


def test_ipv6_loopback_interface_is_accepted(tmp_path: Path) -> None:
    """::1 is an address of this machine where IPv6 is enabled."""
    if not ipv6_loopback_available():
        pytest.skip("no IPv6 on this machine")
    assert load_config(write_ini(tmp_path, "[server]\ninterface = ::1\n")).interface == "::1"


# --- allow / deny -----------------------------------------------------------------------


def test_address_allowed_with_empty_lists_allows_everyone(tmp_path: Path) -> None:
    """Empty allow and deny lists let every source address in."""
    config = load_config(write_ini(tmp_path, "[server]\n"))
    assert config.address_allowed("203.0.113.9") and config.address_allowed("::1")


def test_address_allowed_applies_allow_then_deny(tmp_path: Path) -> None:
    """Only allowed networks get in, and deny wins over allow."""
    config = load_config(
        write_ini(tmp_path, "[server]\nallow = 10.0.0.0/8, ::1\ndeny = 10.6.6.0/24\n")
    )
    assert config.address_allowed("10.1.2.3")
    assert config.address_allowed("::1")
    assert not config.address_allowed("10.6.6.6")
    assert not config.address_allowed("192.0.2.1")
    assert not config.address_allowed("not-an-address")


def test_address_allowed_matches_ipv4_clients_of_a_dual_stack_socket(tmp_path: Path) -> None:
    """On a "::" socket IPv4 peers look like ::ffff:a.b.c.d; IPv4 CIDRs still match them."""
    config = load_config(write_ini(tmp_path, "[server]\nallow = 127.0.0.0/8\n"))
    assert config.address_allowed("::ffff:127.0.0.1")
    assert not config.address_allowed("::ffff:192.0.2.1")


# --- errors: one line naming file, section/key and the fix -----------------------------


def test_missing_config_file_names_it_and_says_what_to_do(tmp_path: Path) -> None:
    """A config path that does not exist is an error naming the path, --config, and
    the command that writes the example there (a pip install has no etc/ folder)."""
    path = tmp_path / "missing.ini"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: config file not found; fix: pass --config PATH, or write the example "
        f"there: udpchat-example config > {path}"
    )


@pytest.mark.parametrize("value", ["abc", "0", "65536", "-1", "", "12.5"])
def test_bad_port_names_file_key_value_and_valid_range(tmp_path: Path, value: str) -> None:
    """A port that is not 1-65535 is reported exactly like this."""
    message = error_for(tmp_path, f"[server]\nport = {value}\n")
    assert message == (
        f"{tmp_path / 'chat.ini'}: [server] port = {value!r} is not a port number; "
        f"use an integer 1-65535"
    )


def test_unknown_key_lists_the_valid_keys(tmp_path: Path) -> None:
    """A misspelt key is reported with the list of valid keys."""
    message = error_for(tmp_path, "[server]\nprot = 1\n")
    assert "[server] unknown key 'prot'" in message
    for key in DEFAULTS:
        assert key in message


@pytest.mark.parametrize("section", ["log", "DEFAULT", "Server"])
def test_unknown_section_names_the_valid_one(tmp_path: Path, section: str) -> None:
    """Any section but [server] (even [DEFAULT]) is an error naming [server]."""
    message = error_for(tmp_path, f"[{section}]\nport = 1\n")
    assert f"unknown section [{section}]" in message and "[server]" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.0/33", "'10.0.0.0/33', which is not an IP network"),
        ("example.com", "'example.com', which is not an IP network"),
        ("10.0.0.1/8", "which has host bits set; did you mean 10.0.0.0/8?"),
    ],
)
def test_bad_cidr_is_named_with_the_fix(tmp_path: Path, value: str, expected: str) -> None:
    """allow/deny entries must be networks; the bad entry and a fix are named."""
    message = error_for(tmp_path, f"[server]\ndeny = 192.0.2.0/24, {value}\n")
    assert "[server] deny = " in message and expected in message


def test_interface_that_is_not_on_this_machine_is_refused(tmp_path: Path) -> None:
    """An address this machine does not have (TEST-NET-1) cannot be listened on."""
    message = error_for(tmp_path, "[server]\ninterface = 192.0.2.1\n")
    assert message == (
        f"{tmp_path / 'chat.ini'}: [server] interface = '192.0.2.1' is not an address of "
        "this machine; use an address of this machine, '' for all IPv4 or '::' for IPv4 and IPv6"
    )


def test_interface_that_is_a_hostname_asks_for_an_ip_literal(tmp_path: Path) -> None:
    """Host names are not resolved: the interface must be an IP literal."""
    message = error_for(tmp_path, "[server]\ninterface = localhost\n")
    assert "[server] interface = 'localhost' is not an IP address" in message
    assert "127.0.0.1" in message


@pytest.mark.parametrize(
    ("key", "value", "fix"),
    [
        ("history_lines", "-1", "use an integer 0-500"),
        ("history_lines", "many", "use an integer 0-500"),
        ("max_members", "0", "use an integer 1 or more"),
        ("handshake_burst", "1.5", "use an integer 1 or more"),
        ("idle_timeout", "0", "use a number of seconds from 15 to 3600"),
        ("idle_timeout", "nan", "use a number of seconds from 15 to 3600"),
        ("idle_timeout", "5", "use a number of seconds from 15 to 3600"),
        ("log_rejects_interval", "soon", "use a number of seconds > 0"),
        ("handshake_rate", "-3", "use a number of handshakes per second > 0"),
        ("key_file", "", "name the PSK file"),
    ],
)
def test_bad_numbers_name_key_value_and_fix(tmp_path: Path, key: str, value: str, fix: str) -> None:
    """Each numeric key rejects out-of-range values, naming key, value and valid range."""
    message = error_for(tmp_path, f"[server]\n{key} = {value}\n")
    assert f"[server] {key} = {value!r} " in message
    assert fix in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("port = 1\n", "line 1: a key before any section; fix: put [server] first"),
        ("[server]\nport = 1\nport = 2\n", "line 3: [server] port is set twice"),
        ("[server]\n[server]\n", "line 2: section [server] appears twice"),
        ("[server]\njust words\n", "line 2: cannot parse 'just words'"),
    ],
)
def test_syntax_errors_name_the_line(tmp_path: Path, text: str, expected: str) -> None:
    """INI syntax mistakes are one line naming the line number."""
    assert expected in error_for(tmp_path, text)


def test_config_that_is_not_utf8_is_reported(tmp_path: Path) -> None:
    """A config file in another encoding is one clear line, not a traceback."""
    path = tmp_path / "chat.ini"
    path.write_bytes(b"[server]\n# caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


def test_percent_signs_are_not_interpolated(tmp_path: Path) -> None:
    """Values are taken literally (no configparser interpolation): '%' is just a char."""
    config = load_config(write_ini(tmp_path, "[server]\nkey_file = 100%.key\n"))
    assert config.key_file.name == "100%.key"


# --- what twistd prints for a bad config ------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "bad.ini: config file not found"),
        ("[server]\nport = abc\n", "bad.ini: [server] port = 'abc' is not a port number"),
        ("[server]\ninterface = 192.0.2.1\n", "is not an address of this machine"),
        ("[server]\nallow = 10.0.0.0/99\n", "which is not an IP network"),
    ],
)
def test_twistd_with_a_bad_config_exits_with_one_line_and_no_traceback(
    tmp_path: Path,
    twistd_argv: list[str],
    subprocess_env: dict[str, str],
    text: str | None,
    expected: str,
) -> None:
    """`twistd -n udpchat --config bad.ini` prints only `udpchat: <file>: ...` on stderr
    and exits 78 (EX_CONFIG), before any key file is created."""
    if text is not None:
        write_ini(tmp_path, text, "bad.ini")
    result = subprocess.run(
        [*twistd_argv, "-n", "--pidfile=", "udpchat", "--config", "bad.ini"],
        cwd=tmp_path,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 78
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("udpchat: bad.ini: ") and expected in lines[0]
    assert not (tmp_path / "chat.key").exists()


def test_the_test_suite_alone_may_set_a_short_idle_timeout(tmp_path: Path) -> None:
    """With UDPCHAT_TESTING_ALLOW_SHORT_IDLE_TIMEOUT=1 in the environment (the end-to-end
    tests set it for the daemons they start), idle_timeout goes down to 1 s; without
    it, 15 s is the minimum."""
    path = tmp_path / "chat.ini"
    path.write_text("[server]\nidle_timeout = 3\n")
    testing = {TESTING_SHORT_IDLE_ENV: "1"}
    assert load_config(path, environ=testing).idle_timeout == 3.0
    with pytest.raises(ConfigError, match="from 15 to 3600"):
        load_config(path, environ={})
    path.write_text("[server]\nidle_timeout = 0.5\n")
    with pytest.raises(ConfigError, match="from 1 to 3600"):
        load_config(path, environ=testing)
