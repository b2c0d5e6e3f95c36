"""The client's config file: defaults for the command line, so that ``udpchat-client``
alone connects where you usually go.

$XDG_CONFIG_HOME/udpchat/client.ini (default ~/.config/udpchat/client.ini), or
``--config PATH``: an INI file with one section, [client], every key optional (KEYS).
A flag given on the command line wins over the file. ``load_client_config`` returns a
ClientConfig or raises ConfigError, whose message is one line naming the file, the
key and the fix, like the daemon's (udpchat.daemon.config); the client then exits 2.
"""

from __future__ import annotations

import argparse
import configparser
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TypeVar

from udpchat.address import split_server_list
from udpchat.chat import messages
from udpchat.client.display import TIMESTAMP_FORMATS, Timestamps, timestamps_format
from udpchat.ini import IniError, read_ini

SECTION = "client"
FILE_NAME = "client.ini"
_BOOLEANS = {"yes": True, "true": True, "on": True, "1": True}
_BOOLEANS.update({"no": False, "false": False, "off": False, "0": False})


class ConfigError(Exception):
    """The config file cannot be used; the message is one line with the file and fix."""


@dataclass(frozen=True)
class ClientConfig:
    """Settings from the config file (None: not set there). Field names are the keys of
    [client], and the ``dest`` of the matching command-line flag (``merge``)."""

    path: Path | None = None  # the file read (None: there was none)
    host: str | None = None  # HOST, with :PORT if you like; or a list of them
    port: int | None = None  # --port
    nick: str | None = None  # --nick
    room: str | None = None  # --room
    key: Path | None = None  # --key (relative: to the config file's folder)
    colours: bool | None = None  # --colours / --no-colours
    timestamps: Timestamps | None = None  # --timestamps=FORMAT
    bell: bool | None = None  # "no" = --no-bell
    input_history: bool | None = None  # "no" = --no-input-history: nothing typed is saved
    log: Path | None = None  # --log FILE (relative: to the config file's folder)
    timeout: float | None = None  # --timeout SECONDS


#: The keys of [client], in the order README lists them.
KEYS = tuple(f.name for f in fields(ClientConfig) if f.name != "path")


def config_path(env: Mapping[str, str]) -> Path:
    """Where the config file is when --config is not given."""
    config = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "udpchat" / FILE_NAME


def merge(flags: argparse.Namespace, config: ClientConfig) -> ClientConfig:
    """Each key's value from its flag when given (not None), else from ``config``."""
    given = {key: getattr(flags, key) for key in KEYS if getattr(flags, key, None) is not None}
    return replace(config, **given)


def _timestamps(text: str) -> str:
    try:
        return timestamps_format(text)
    except ValueError:
        choices = ", ".join(TIMESTAMP_FORMATS)
        raise argparse.ArgumentTypeError(f"unknown format {text!r}: use {choices}") from None


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags for the config file itself, the chat log and the display. Each
    ``dest`` is the config key it overrides (``merge``), and defaults to None: not
    given."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        type=Path,
        help="read this config file instead of $XDG_CONFIG_HOME/udpchat/client.ini",
    )
    parser.add_argument(
        "--no-config",
        action="store_true",
        help="read no config file (for scripts that must not depend on one)",
    )
    parser.add_argument(
        "--log",
        metavar="FILE",
        type=Path,
        help="append every line shown to FILE, after its ISO time (created mode 0600)",
    )
    parser.add_argument(
        "--no-history",
        dest="history",
        action="store_false",
        default=None,
        help="do not show the room's recent lines on joining it (live lines only)",
    )
    parser.add_argument(
        "--timestamps",
        metavar="FORMAT",
        nargs="?",
        const="iso",
        type=_timestamps,
        help="put the time before every line, also live ones: iso (RFC 3339 UTC, the"
        " default: 2026-12-01T21:27:37Z), hhmm (local [21:27], a terminal's default) or"
        " off; give it as --timestamps=FORMAT",
    )
    parser.add_argument(
        "--colours",
        action=argparse.BooleanOptionalAction,
        help="colour nicks in a terminal (default: yes, unless NO_COLOR or TERM=dumb)",
    )


T = TypeVar("T")


class _Reader:
    """Turns a bad value of [client] into a one-line ConfigError."""

    def __init__(self, name: str, values: dict[str, str]) -> None:
        self.name = name
        self.values = values

    def fail(self, key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(
            f"{self.name}: [{SECTION}] {key} = {self.values[key]!r} {problem}; fix: {fix}"
        )

    def get(self, key: str, parse: Callable[[str], T], problem: str, fix: str) -> T | None:
        if key not in self.values:
            return None
        try:
            return parse(self.values[key])
        except ValueError:
            raise self.fail(key, problem, fix) from None

    def named(self, key: str, error: Callable[[str], str | None], fix: str) -> str | None:
        """A nick or room: ``error`` says why the value is refused (None: it is not)."""
        if key not in self.values:
            return None
        reason = error(self.values[key])
        if reason is not None:
            raise self.fail(key, f"is refused ({reason})", fix)
        return self.values[key]


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(text)
    return port


def _boolean(text: str) -> bool:
    if text.lower() not in _BOOLEANS:
        raise ValueError(text)
    return _BOOLEANS[text.lower()]


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(text)
    return value


def _not_empty(text: str) -> str:
    if not text:
        raise ValueError(text)
    return text


def _host(text: str) -> str:
    """HOST, or a comma-separated list of them (udpchat.address)."""
    entries = split_server_list(text)  # AddressError is a ValueError
    if any(ch.isspace() for host, _ in entries for ch in host):
        raise ValueError(text)
    return text


def _read_ini(name: str) -> configparser.RawConfigParser:
    """The file parsed (udpchat.ini); FileNotFoundError is the caller's to judge."""
    try:
        return read_ini(name, SECTION)
    except IniError as exc:
        raise ConfigError(str(exc)) from None


def load_client_config(path: str | os.PathLike[str], must_exist: bool = False) -> ClientConfig:
    """Read and check the config file at ``path``; a missing file is an empty config
    unless ``must_exist`` (it was named with --config). ConfigError on mistakes."""
    name = os.fspath(path)
    try:
        parser = _read_ini(name)
    except FileNotFoundError:
        if must_exist:
            raise ConfigError(
                f"{name}: config file not found; fix: give the path of an existing file"
            ) from None
        return ClientConfig()
    for section in parser.sections():
        if section != SECTION:
            raise ConfigError(
                f"{name}: unknown section [{section}]; fix: the only valid section is [{SECTION}]"
            )
    values: dict[str, str] = {}
    if parser.has_section(SECTION):
        for key, value in parser.items(SECTION):
            if key not in KEYS:
                raise ConfigError(
                    f"{name}: [{SECTION}] unknown key {key!r}; fix: use one of {', '.join(KEYS)}"
                )
            values[key] = value.strip()
    r = _Reader(name, values)
    folder = Path(name).absolute().parent

    def file_path(key: str) -> Path | None:
        # Relative to the config file, not the cwd: the client works from any folder.
        text = r.get(key, _not_empty, "is empty", f"name a file, or remove the {key} line")
        return None if text is None else folder / Path(text).expanduser()

    bool_fix = "write yes or no"
    return ClientConfig(
        path=Path(name).absolute(),
        host=r.get(
            "host",
            _host,
            "is not a host",
            "write a name or address, e.g. chat.example.lan:12345, or a comma-separated"
            " list of them (several daemons of a cluster)",
        ),
        port=r.get("port", _port, "is not a port number", "use an integer 1-65535"),
        nick=r.named("nick", messages.nick_error, "choose another nick"),
        room=r.named(
            "room",
            lambda room: messages.room_error(messages.normalize_room(room)),
            "choose another room, e.g. room = lobby",
        ),
        key=file_path("key"),
        colours=r.get("colours", _boolean, "is not yes or no", bool_fix),
        timestamps=r.get(
            "timestamps",
            timestamps_format,
            "is not a timestamp format",
            f"use one of {', '.join(TIMESTAMP_FORMATS)}",
        ),
        bell=r.get("bell", _boolean, "is not yes or no", bool_fix),
        input_history=r.get("input_history", _boolean, "is not yes or no", bool_fix),
        log=file_path("log"),
        timeout=r.get("timeout", _seconds, "is not a positive number", "use seconds > 0, e.g. 10"),
    )
