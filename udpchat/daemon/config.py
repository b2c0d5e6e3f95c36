"""INI configuration of the udpchat daemon: parse, validate, and explain every mistake.

`load_config(path)` returns a frozen ServerConfig or raises ConfigError whose message is
one line naming the file, the section/key and the fix. etc/chat.ini documents each key.
"""

from __future__ import annotations

import configparser
import errno
import ipaddress
import math
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar

from udpchat.core.limits import IDLE_TIMEOUT_MAX_S, idle_timeout_floor_s
from udpchat.daemon import clusterconfig
from udpchat.daemon.clusterconfig import ClusterConfig
from udpchat.ini import IniError, read_ini

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SECTION = "server"
# History is sent to a joiner as one message per line, all queued at once: it must fit
# the session's send queue (64 + 1024 messages) with room for what else is going on.
MAX_HISTORY_LINES = 500
# log_level values, least to most severe (udpchat.daemon.logs maps them to Twisted's).
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """The config cannot be used; the message is one line with the file and the fix."""


@dataclass(frozen=True)
class ServerConfig:
    """Validated daemon settings; field names are the [server] keys of the INI file."""

    path: Path  # the config file this came from (absolute)
    interface: str = ""  # "" = all IPv4 addresses; "::" = all IPv4 and IPv6
    port: int = 12345
    key_file: Path = Path("chat.key")  # absolute once loaded from a file
    history_lines: int = 50  # chat lines replayed to someone joining a room
    idle_timeout: float = 30.0  # seconds of silence before a session expires
    max_members: int = 256  # concurrent sessions
    allow: tuple[IPNetwork, ...] = ()  # empty = every source address is allowed
    deny: tuple[IPNetwork, ...] = ()  # checked after allow; deny wins
    log_rejects_interval: float = 60.0  # seconds between summaries of rejected datagrams
    handshake_rate: float = 20.0  # handshakes per second per source address (refill)
    handshake_burst: int = 5  # handshakes a source address may send at once
    log_level: str = "info"  # least severe log lines written: debug, info, warning, error
    key_overlap: float = 86400.0  # seconds a rotated-out key (KEY_FILE.previous) still works
    # The rooms' history on disk (udpchat.daemon.history), absolute once loaded; None =
    # in memory only. The file's default is DEFAULT_HISTORY_FILE: a ServerConfig made
    # in code keeps no file unless it is given one.
    history_file: Path | None = None
    metrics: tuple[str, int] | None = None  # (address, port) of the Prometheus endpoint
    cluster: ClusterConfig | None = None  # the [cluster] section (docs/CLUSTER.md)

    def address_allowed(self, host: str) -> bool:
        """True if datagrams from IP `host` may be answered (allow/deny lists).

        An IPv4 client seen through a dual-stack "::" socket arrives as ::ffff:a.b.c.d;
        it is matched as the IPv4 address so that IPv4 CIDRs keep working.
        """
        if not self.allow and not self.deny:
            return True  # the default; parsing the address showed in busy profiles
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if self.allow and not any(addr in net for net in self.allow):
            return False
        return not any(addr in net for net in self.deny)


def _ini_text(value: object) -> str:
    """A default as it is written in the INI file (etc/chat.ini): 30.0 is "30"."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


#: history_file's default: relative, so in the state folder (_history_file).
DEFAULT_HISTORY_FILE = "chat.history"

# Keys of [server] and their defaults, as they would be written in the file. Derived
# from ServerConfig so that each default is written once; `path` is not a key.
DEFAULTS: dict[str, str] = {
    f.name: _ini_text(f.default) for f in fields(ServerConfig) if f.name not in ("path", "cluster")
} | {"history_file": DEFAULT_HISTORY_FILE}


T = TypeVar("T")


class _Reader:
    """Reads one section's raw values and turns a bad one into a one-line ConfigError."""

    def __init__(self, name: str, values: dict[str, str]) -> None:
        self.name = name
        self.values = values

    def fail(self, key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(
            f"{self.name}: [{SECTION}] {key} = {self.values[key]!r} {problem}; {fix}"
        )

    def get(self, key: str, parse: Callable[[str], T], problem: str, fix: str) -> T:
        try:
            return parse(self.values[key])
        except ValueError:
            raise self.fail(key, problem, fix) from None

    def integer(self, key: str, low: int, high: int | None = None) -> int:
        def parse(text: str) -> int:
            value = int(text)
            if value < low or (high is not None and value > high):
                raise ValueError(text)
            return value

        span = f"{low}-{high}" if high is not None else f"{low} or more"
        return self.get(key, parse, "is not a valid whole number", f"use an integer {span}")

    def number(self, key: str, unit: str, low: float = 0.0, high: float = math.inf) -> float:
        def parse(text: str) -> float:
            value = float(text)
            if not math.isfinite(value) or value <= 0 or not low <= value <= high:
                raise ValueError(text)
            return value

        if low > 0:
            return self.get(
                key, parse, "is out of range", f"use a number of {unit} from {low:g} to {high:g}"
            )
        return self.get(key, parse, "is not a positive number", f"use a number of {unit} > 0")


def _parse_port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(text)
    return port


def _unquote(text: str) -> str:
    """Accept `""`/`''` for an empty value: people copy the documented default literally."""
    return "" if text in ('""', "''") else text


def _parse_networks(reader: _Reader, key: str) -> tuple[IPNetwork, ...]:
    text = _unquote(reader.values[key])
    networks = []
    # Commas are documented; whitespace/newlines also split so multi-line values work.
    for item in text.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError:
            try:
                loose = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise reader.fail(
                    key,
                    f"has {item!r}, which is not an IP network",
                    "use comma-separated CIDRs like 10.0.0.0/8, 2001:db8::/32 or single addresses",
                ) from None
            raise reader.fail(
                key, f"has {item!r}, which has host bits set", f"did you mean {loose}?"
            ) from None
    return tuple(networks)


def _log_level(reader: _Reader) -> str:
    key = "log_level"
    value = _unquote(reader.values[key]).lower()
    if value not in LOG_LEVELS:
        raise reader.fail(key, "is not a log level", f"use one of {', '.join(LOG_LEVELS)}")
    return value


def _check_interface(reader: _Reader) -> str:
    """Return the interface if it is "" or an IP address this machine can bind."""
    key = "interface"
    value = _unquote(reader.values[key].strip())
    if not value:
        return ""
    wildcards = "'' for all IPv4 or '::' for IPv4 and IPv6"
    fix = f"use an address of this machine, {wildcards}"
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise reader.fail(
            key, "is not an IP address", f"use an IP literal such as 127.0.0.1 or ::1, {wildcards}"
        ) from None
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    # Binding port 0 is the only portable "is this address mine?" test; the probe
    # socket is closed at once, so it never holds the real port.
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((value, 0))
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            raise reader.fail(key, "is not an address of this machine", fix) from None
        raise reader.fail(key, f"cannot be used here ({exc.strerror})", fix) from None
    return value


def _history_file(reader: _Reader, key_file: Path, environ: Mapping[str, str]) -> Path | None:
    """The history file, or None for history in memory only (an empty value).

    A relative path is in the state folder: systemd's StateDirectory= when the unit
    sets one ($STATE_DIRECTORY, /var/lib/udpchat for etc/udpchat.service), else the
    key file's folder (etc/ in a checkout): where the daemon keeps what it writes."""
    key = "history_file"
    text = _unquote(reader.values[key])
    if not text:
        return None
    path = Path(text).expanduser()
    if not path.is_absolute():
        state = Path(environ.get("STATE_DIRECTORY", "").split(":")[0])
        path = (state if state.is_absolute() else key_file.parent) / path
    if path.is_dir():
        raise reader.fail(
            key, f"is a folder ({path})", f"name a file in it, e.g. {path / DEFAULT_HISTORY_FILE}"
        )
    return path


def _parse_metrics(reader: _Reader) -> tuple[str, int] | None:
    """Where to serve the Prometheus metrics: (IP address, TCP port), or None (off)."""
    key = "metrics"
    text = _unquote(reader.values[key].strip())
    if not text:
        return None
    example = "use ADDRESS:PORT such as 127.0.0.1:9120 or [::1]:9120, or nothing to turn it off"
    host, colon, port_text = text.rpartition(":")
    if not colon or not host:
        raise reader.fail(key, "is not ADDRESS:PORT", example)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise reader.fail(
            key, "has an IPv6 address without brackets", f"write [{host}]:{port_text}"
        )
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise reader.fail(key, f"has {host!r}, which is not an IP address", example) from None
    port = reader.get(key, lambda _: _parse_port(port_text), "has no valid port", example)
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    try:  # as for interface: is the address this machine's? (port 0: never the real one)
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
    except OSError as exc:
        fix = "use an address of this machine, e.g. 127.0.0.1:9120"
        if exc.errno == errno.EADDRNOTAVAIL:
            raise reader.fail(key, "is not an address of this machine", fix) from None
        raise reader.fail(key, f"cannot be used here ({exc.strerror})", fix) from None
    return host, port


def _read_ini(name: str) -> configparser.RawConfigParser:
    try:
        return read_ini(name, SECTION)
    except FileNotFoundError:
        raise ConfigError(
            f"{name}: config file not found; fix: pass --config PATH, or write the "
            f"example there: udpchat-example config > {name}"
        ) from None
    except IniError as exc:
        raise ConfigError(str(exc)) from None


def load_config(
    path: str | os.PathLike[str], environ: Mapping[str, str] | None = None
) -> ServerConfig:
    """Read and validate the daemon's INI file; raise ConfigError (one line) on mistakes.

    ``environ`` (default os.environ) is read only for the test suite's
    UDPCHAT_TESTING_ALLOW_SHORT_IDLE_TIMEOUT (udpchat.core.limits) and for systemd's
    STATE_DIRECTORY (where a relative history_file goes)."""
    environ = os.environ if environ is None else environ
    idle_min_s = idle_timeout_floor_s(environ)
    name = os.fspath(path)
    parser = _read_ini(name)
    for section in parser.sections():
        if section not in (SECTION, clusterconfig.SECTION):
            raise ConfigError(
                f"{name}: unknown section [{section}]; fix: the valid sections are "
                f"[{SECTION}] and [{clusterconfig.SECTION}]"
            )
    values = dict(DEFAULTS)
    if parser.has_section(SECTION):
        for key, value in parser.items(SECTION):
            if key not in DEFAULTS:
                raise ConfigError(
                    f"{name}: [{SECTION}] unknown key {key!r}; "
                    f"fix: use one of {', '.join(sorted(DEFAULTS))}"
                )
            values[key] = value.strip()
    reader = _Reader(name, values)

    config_path = Path(name).absolute()
    key_text = _unquote(values["key_file"])
    if not key_text:
        raise reader.fail("key_file", "is empty", "name the PSK file, e.g. key_file = chat.key")
    # Relative to the config file, not the cwd, so the daemon works from any directory.
    key_file = config_path.parent / Path(key_text).expanduser()

    port = reader.get("port", _parse_port, "is not a port number", "use an integer 1-65535")
    return ServerConfig(
        path=config_path,
        interface=_check_interface(reader),
        port=port,
        key_file=key_file,
        history_lines=reader.integer("history_lines", 0, MAX_HISTORY_LINES),
        # Clients send a keepalive every 10 s: below 15 s idle members would expire.
        idle_timeout=reader.number("idle_timeout", "seconds", idle_min_s, IDLE_TIMEOUT_MAX_S),
        max_members=reader.integer("max_members", 1),
        allow=_parse_networks(reader, "allow"),
        deny=_parse_networks(reader, "deny"),
        log_rejects_interval=reader.number("log_rejects_interval", "seconds"),
        handshake_rate=reader.number("handshake_rate", "handshakes per second"),
        handshake_burst=reader.integer("handshake_burst", 1),
        log_level=_log_level(reader),
        key_overlap=reader.number("key_overlap", "seconds"),
        history_file=_history_file(reader, key_file, environ),
        metrics=_parse_metrics(reader),
        cluster=_cluster(parser, name, port),
    )


def _cluster(parser: configparser.RawConfigParser, name: str, port: int) -> ClusterConfig | None:
    if not parser.has_section(clusterconfig.SECTION):
        return None
    values = {k: _unquote(v.strip()) for k, v in parser.items(clusterconfig.SECTION)}
    return clusterconfig.load_cluster(name, values, clusterconfig.default_node(port), ConfigError)
