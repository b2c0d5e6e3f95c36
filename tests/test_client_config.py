"""The client's config file (udpchat/client/config.py): every key is read and checked,
a mistake is one line naming the file, the key and the fix, and a flag given on the
command line wins over the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from udpchat.client.cli import build_parser
from udpchat.client.config import (
    KEYS,
    ClientConfig,
    ConfigError,
    config_path,
    load_client_config,
    merge,
)


def write(folder: Path, text: str) -> Path:
    path = folder / "client.ini"
    path.write_text(text)
    return path


def test_every_key_is_read(tmp_path: Path) -> None:
    """Each key of [client] with its type; key and log paths are relative to the
    config file's folder (or ~), whatever the current folder."""
    path = write(
        tmp_path,
        "[client]\n"
        "host = chat.example.lan:4000\nport = 4001\nnick = alice\nroom = #Dev\n"
        "key = keys/chat.key\ncolours = no\ntimestamps = iso\nbell = off\n"
        "input_history = no\nlog = ~/chat.log\ntimeout = 7.5\n",
    )
    config = load_client_config(path)
    assert config == ClientConfig(
        path=path,
        host="chat.example.lan:4000",
        port=4001,
        nick="alice",
        room="#Dev",
        key=tmp_path / "keys" / "chat.key",
        colours=False,
        timestamps="iso",
        bell=False,
        input_history=False,
        log=Path("~/chat.log").expanduser(),
        timeout=7.5,
    )
    assert KEYS == tuple(
        "host port nick room key colours timestamps bell input_history log timeout".split()
    )


def test_host_may_be_a_list_of_daemons(tmp_path: Path) -> None:
    """host = takes the daemons of a cluster, comma-separated (spaces allowed)."""
    path = write(tmp_path, "[client]\nhost = chat-a:4000, chat-b:4001\n")
    assert load_client_config(path).host == "chat-a:4000, chat-b:4001"


def test_a_missing_file_is_no_config_unless_named(tmp_path: Path) -> None:
    """No file at the default place: nothing is set. A file named with --config must
    exist."""
    assert load_client_config(tmp_path / "none.ini") == ClientConfig()
    with pytest.raises(ConfigError, match="none.ini: config file not found; fix: "):
        load_client_config(tmp_path / "none.ini", must_exist=True)


def test_config_path_follows_xdg() -> None:
    """$XDG_CONFIG_HOME/udpchat/client.ini, else ~/.config/udpchat/client.ini."""
    assert config_path({"XDG_CONFIG_HOME": "/x"}) == Path("/x/udpchat/client.ini")
    assert config_path({}) == Path("~/.config/udpchat/client.ini").expanduser()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[client]\nport = 99999\n", "[client] port = '99999' is not a port number; fix: use an"),
        ("[client]\nnick = 9lives\n", "[client] nick = '9lives' is refused (a nick must not"),
        ("[client]\nroom = a b\n", "[client] room = 'a b' is refused (a room name is 1..24"),
        ("[client]\ntimestamps = utc\n", "timestamps = 'utc' is not a timestamp format; fix: use"),
        ("[client]\ncolours = maybe\n", "[client] colours = 'maybe' is not yes or no; fix: write"),
        ("[client]\nbell = 2\n", "[client] bell = '2' is not yes or no; fix: write yes or no"),
        ("[client]\ntimeout = -1\n", "[client] timeout = '-1' is not a positive number; fix: "),
        ("[client]\nhost = a b\n", "[client] host = 'a b' is not a host; fix: write a name"),
        ("[client]\nhost = a:1,,b:2\n", "[client] host = 'a:1,,b:2' is not a host; fix: "),
        ("[client]\nkey =\n", "[client] key = '' is empty; fix: name a file, or remove the key"),
        ("[client]\nnick = a\ncolor = yes\n", "[client] unknown key 'color'; fix: use one of host"),
        ("[server]\nport = 1\n", "unknown section [server]; fix: the only valid section is"),
        ("port = 1\n", "line 1: a key before any section; fix: put [client] first"),
        ("[client]\nport = 1\nport = 2\n", "line 3: [client] port is set twice; fix: keep one"),
        ("[client]\nthis is not ini\n", "line 2: cannot parse 'this is not ini'; fix: write"),
    ],
)
def test_a_mistake_names_the_file_the_key_and_the_fix(
    tmp_path: Path, text: str, message: str
) -> None:
    """One line: the file's path, then the key (with its value) and the fix."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_client_config(path)
    line = str(caught.value)
    assert "\n" not in line
    assert line.startswith(f"{path}: ")
    assert message in line


def test_flags_win_over_the_file() -> None:
    """merge: a flag given (not None) wins; otherwise the file's value is used; keys
    without a flag yet (bell, timeout) pass through."""
    config = ClientConfig(
        host="h1", port=1, nick="filenick", room="fileroom", timestamps="hhmm", bell=False,
        timeout=5.0, colours=False,
    )  # fmt: skip
    args = build_parser({}).parse_args(["h2", "--nick", "flagnick", "--timestamps", "--colours"])
    merged = merge(args, config)
    assert (merged.host, merged.port, merged.nick, merged.room) == ("h2", 1, "flagnick", "fileroom")
    assert (merged.timestamps, merged.colours) == ("iso", True)  # bare --timestamps: iso
    assert (merged.bell, merged.timeout) == (False, 5.0)
    assert merge(build_parser({}).parse_args([]), config) == config


def test_input_history_can_be_left_unsaved() -> None:
    """--no-input-history, or input_history = no: nothing typed is kept across runs
    (for what should not be on disk, /msg texts included); the flag wins."""
    assert build_parser({}).parse_args(["h"]).input_history is None  # the file decides
    flag = build_parser({}).parse_args(["h", "--no-input-history"])
    assert merge(flag, ClientConfig(input_history=True)).input_history is False
    assert merge(build_parser({}).parse_args(["h"]), ClientConfig(input_history=False)) == (
        ClientConfig(host="h", input_history=False)
    )


def test_timestamps_flag_takes_a_format() -> None:
    """--timestamps=hhmm, --timestamps=off; anything else is a usage error."""
    parser = build_parser({})
    assert parser.parse_args(["--timestamps=hhmm"]).timestamps == "hhmm"
    assert parser.parse_args(["--timestamps", "off"]).timestamps == "off"
    assert parser.parse_args([]).timestamps is None
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--timestamps=utc"])
    assert exited.value.code == 2
