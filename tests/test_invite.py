"""Invite lines (udpchat.invite): `udpchat-keygen --invite HOST[:PORT]` prints
udpchat://HOST:PORT/#KEY; udpchat-client takes it as HOST and, with --save-key, keeps
its key where it looks by default, under every key-file rule (0600, folders 0700, a
different key never replaced without --force). The line is the secret: no message
ever quotes it. (Connecting with one, for real: test_client_diagnosis.py.)"""

from __future__ import annotations

import argparse
import base64
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpchat.client.cli import build_parser, servers_and_key
from udpchat.client.config import ClientConfig
from udpchat.daemon.keygen import main as keygen_main
from udpchat.fingerprint import fingerprint
from udpchat.invite import Invite, InviteError, is_invite, parse_invite, save_key
from udpchat.keys import KeyFileError, create_key, load_key

#: A fixed key (pytest-xdist needs the same test ids in every worker).
KEY = base64.urlsafe_b64encode(bytes(range(100, 132)))
K = KEY.decode()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("line", "host", "port"),
    [
        (f"udpchat://chat.example:4000/#{K}", "chat.example", 4000),
        (f"udpchat://192.0.2.2:12345/#{K}", "192.0.2.2", 12345),
        (f"udpchat://[2001:db8::2]:4000/#{K}", "2001:db8::2", 4000),
        (f"udpchat://chat.example#{K}", "chat.example", 12345),  # no port, no slash
        (f"  UDPCHAT://chat.example/#{K[:-1]}%3D\n", "chat.example", 12345),  # pasted, mailed
    ],
)
def test_an_invite_line_gives_host_port_and_key(line: str, host: str, port: int) -> None:
    assert is_invite(line)
    assert parse_invite(line) == Invite(host, port, KEY)


@given(
    st.sampled_from(["chat.example", "192.0.2.2", "2001:db8::2", "::1"]),
    st.integers(1, 65535),
    st.binary(min_size=32, max_size=32),
)
def test_what_keygen_writes_the_client_reads(host: str, port: int, raw: bytes) -> None:
    """str(Invite) and parse_invite are inverses (IPv6 hosts in brackets)."""
    invite = Invite(host, port, base64.urlsafe_b64encode(raw))
    assert parse_invite(str(invite)) == invite
    assert str(invite).startswith(f"udpchat://{'[' if ':' in host else ''}{host}")


@pytest.mark.parametrize(
    "line",
    [
        "udpchat://chat.example:4000/",  # no key
        f"udpchat://chat.example:4000/#{K[:-2]}",  # key cut short
        f"udpchat://chat.example:4000/#{K.replace('-', '+').replace('_', '/')}x",
        f"udpchat://chat.example:99999/#{K}",
        f"udpchat://user@chat.example/#{K}",
        f"udpchat://chat.example/room?x=1#{K}",
        f"udpchat://[::1/#{K}",
        f"http://chat.example/#{K}",
    ],
)
def test_a_bad_invite_line_is_refused_without_quoting_its_key(line: str) -> None:
    with pytest.raises(InviteError) as refused:
        parse_invite(line)
    assert K[:20] not in str(refused.value)


def test_save_key_writes_0600_in_a_new_0700_folder_and_keeps_the_same_key(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config" / "udpchat" / "chat.key"
    assert save_key(path, KEY) is True
    assert load_key(path) == KEY
    assert mode_of(path) == 0o600 and mode_of(path.parent) == 0o700
    assert save_key(path, KEY) is False  # already there: nothing to do


def test_save_key_never_replaces_a_different_key_without_force(tmp_path: Path) -> None:
    """Another key at the path (another server's, maybe) is kept, and the refusal shows
    both fingerprints and the two ways on; with force it is replaced."""
    path = tmp_path / "chat.key"
    old = create_key(path)
    with pytest.raises(KeyFileError) as refused:
        save_key(path, KEY)
    text = str(refused.value)
    assert fingerprint(old) in text and fingerprint(KEY) in text
    assert "--force" in text and "--key PATH" in text and K not in text
    assert load_key(path) == old
    assert save_key(path, KEY, force=True) is True
    assert load_key(path) == KEY and mode_of(path) == 0o600


def test_save_key_follows_the_key_file_rules(tmp_path: Path) -> None:
    """A folder others may write is refused (a client's advice, no key_file)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(KeyFileError) as refused:
        save_key(shared / "chat.key", KEY, force=True)
    assert "writable by group and others" in str(refused.value)
    assert not (shared / "chat.key").exists()


# --- udpchat-keygen --invite -------------------------------------------------------------


def test_keygen_invite_prints_one_line_and_warns_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One line on stdout, for HOST:PORT with the key at PATH; the warning that it is
    the secret (with the key's fingerprint) on stderr, so `> file` holds the line only."""
    path = tmp_path / "chat.key"
    key = create_key(path)
    assert keygen_main(["--invite", "chat.example:4000", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"udpchat://chat.example:4000/#{key.decode()}\n"
    assert "whoever sees it can join" in err and fingerprint(key) in err
    assert key.decode() not in err


def test_keygen_invite_takes_key_and_port_from_the_daemons_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without PATH, --config INI names the key (its key_file) and the port (unless
    HOST has one); --key PATH works as PATH."""
    config = tmp_path / "chat.ini"
    config.write_text("[server]\nport = 4444\nkey_file = keys/chat.key\n")
    key = create_key(tmp_path / "keys" / "chat.key")
    assert keygen_main(["--invite", "[2001:db8::2]", "--config", str(config)]) == 0
    assert capsys.readouterr().out == f"udpchat://[2001:db8::2]:4444/#{key.decode()}\n"
    assert keygen_main(["--invite", "h:5", "--key", str(tmp_path / "keys" / "chat.key")]) == 0
    assert capsys.readouterr().out == f"udpchat://h:5/#{key.decode()}\n"


def test_keygen_invite_without_a_key_names_both_ways(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("udpchat.daemon.keygen.DAEMON_CONFIG_PATH", str(tmp_path / "none.ini"))
    with pytest.raises(SystemExit) as usage:
        keygen_main(["--invite", "chat.example"])
    assert usage.value.code == 2
    assert "--key PATH" in capsys.readouterr().err


# --- the client's HOST as an invite ------------------------------------------------------


def client_args(*argv: str) -> argparse.Namespace:
    return build_parser({}).parse_args(list(argv))


def test_the_client_saves_the_invites_key_where_it_looks_by_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--save-key keeps the key at $XDG_CONFIG_HOME/udpchat/chat.key (0600), where the
    next run finds it; without it, the client says how to keep it."""
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    line = f"udpchat://chat.example:4000/#{K}"
    assert servers_and_key(client_args(line), ClientConfig(), env) == (
        [("chat.example", 4000)],
        KEY,
    )
    err = capsys.readouterr().err
    assert "add --save-key" in err and "udpchat-client chat.example:4000" in err
    default = tmp_path / "config" / "udpchat" / "chat.key"
    assert not default.exists()
    assert servers_and_key(client_args(line, "--save-key"), ClientConfig(), env) == (
        [("chat.example", 4000)],
        KEY,
    )
    assert load_key(default) == KEY and mode_of(default) == 0o600
    assert f"saved the invite's key in {default}" in capsys.readouterr().err
    assert servers_and_key(client_args("chat.example:4000"), ClientConfig(), env)[1] == KEY


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--key", "x.key"], "an invite line carries its key"),
        (["--force"], "--force goes with --save-key"),
        (["--port", "5000"], "--port says 5000"),
    ],
)
def test_invite_options_that_contradict_it_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], words: str
) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    with pytest.raises(SystemExit) as usage:
        servers_and_key(client_args(f"udpchat://h:4000/#{K}", *extra), ClientConfig(), env)
    assert usage.value.code == 2
    err = capsys.readouterr().err
    assert words in err and K not in err


def test_save_key_and_force_need_an_invite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        servers_and_key(client_args("chat.example", "--save-key"), ClientConfig(), {})
    assert "go with an invite line" in capsys.readouterr().err


def test_a_different_saved_key_is_kept_and_the_run_stops(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    old = create_key(tmp_path / "udpchat" / "chat.key")
    with pytest.raises(SystemExit) as refused:
        servers_and_key(client_args(f"udpchat://h/#{K}", "--save-key"), ClientConfig(), env)
    assert refused.value.code == 2
    assert "holds a different key" in capsys.readouterr().err
    assert load_key(tmp_path / "udpchat" / "chat.key") == old
    assert os.access(tmp_path / "udpchat" / "chat.key", os.R_OK)
