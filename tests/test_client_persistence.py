"""What the client keeps and what scripts may rely on, with the real daemon and the
real client: input history across a restart (in tmux), the config file, the chat log,
--no-history and --timestamps in pipe mode."""

from __future__ import annotations

import re
import shlex
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon import Daemon
from pipe_client import CLIENT, PipeClient
from test_client_cli import assert_setup_error, run_client
from test_client_terminal import Pane, has

from udpchat.client.cli import main

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
HHMM = r"\[\d\d:\d\d\]"


@pytest.fixture
def daemon(tmp_path: Path, subprocess_env: dict[str, str]) -> Iterator[Daemon]:
    folder = tmp_path / "server"
    folder.mkdir()
    d = Daemon(folder, subprocess_env, history_lines=3)
    yield d.start()
    d.kill()


def client_args(daemon: Daemon, nick: str, *more: str) -> list[str]:
    return ["127.0.0.1", "--port", str(daemon.port), "--key", str(daemon.key_file)] + [
        "--nick",
        nick,
        *more,
    ]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_input_history_survives_a_restart(
    tmp_path: Path, daemon: Daemon, subprocess_env: dict[str, str]
) -> None:
    """alice types a line and quits; started again, Up brings the line back. It was
    kept in $XDG_STATE_HOME/udpchat/history: folder 0700, file 0600."""
    env = " ".join(
        f"{k}={shlex.quote(v)}"
        for k, v in subprocess_env.items()
        if k in ("PATH", "PYTHONPATH", "HOME", "LANG", "LC_ALL")
        or k.startswith("XDG_")  # state: the history; config: none of the user's
    )
    command = shlex.join([*CLIENT, *client_args(daemon, "alice")])
    script = f"export {env} TERM=xterm-256color\n{command}\n{command}\n"
    pane = Pane(tmp_path, script + "echo EXIT=$?\nsleep 60\n")
    try:
        pane.wait(has("[alice@lobby]"))
        pane.text("remember me")
        pane.keys("Enter")
        pane.wait(has("<alice> remember me"))
        pane.keys("C-d")  # leaves; the script starts the client again
        pane.wait(lambda screen: sum("you are alice in lobby" in line for line in screen) == 2)
        pane.wait(lambda screen: [line for line in screen if line.strip()][-1] == "[alice@lobby]")
        pane.keys("Up")
        pane.wait(lambda screen: "[alice@lobby] remember me" in screen)
        pane.keys("C-u", "C-d")
        pane.wait(has("EXIT=0"))
    finally:
        pane.close()
    folder = Path(subprocess_env["XDG_STATE_HOME"]) / "udpchat"
    assert (folder / "history").read_text() == "remember me\n"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "history").stat().st_mode) == 0o600


def test_no_history_and_timestamps_for_scripts(
    tmp_path: Path,
    daemon: Daemon,
    subprocess_env: dict[str, str],
    clients: Callable[..., PipeClient],
) -> None:
    """A one-shot `echo hi | udpchat-client --no-history --timestamps` prints only live
    lines, each after its RFC 3339 UTC time. --timestamps=hhmm stamps live lines with
    [HH:MM], as history lines are; --log writes what was shown after its ISO time
    (history lines with the time they were said) to a new 0600 file."""
    alice = clients(daemon.port, daemon.key_file, "alice", subprocess_env)
    alice.type("old news", "/who")
    alice.wait_for("-!- Users in lobby: alice")  # "old news" is in the history now

    one_shot = run_client(
        client_args(daemon, "carol", "--no-history", "--timestamps"), subprocess_env, "hi\n"
    )
    assert one_shot.returncode == 0, one_shot
    lines = one_shot.stdout.splitlines()
    assert any(re.fullmatch(f"{ISO} -!- carol has joined lobby", line) for line in lines), lines
    assert all(re.match(f"{ISO} ", line) for line in lines), lines
    assert not [line for line in lines if "old news" in line]
    alice.wait_for("<carol> hi")

    log = tmp_path / "dave.log"
    dave = clients(
        daemon.port, daemon.key_file, "dave", subprocess_env, "--timestamps=hhmm", "--log", str(log)
    )
    dave.wait_until(
        lambda lines: any(re.fullmatch(f"{HHMM} -!- dave has joined lobby", x) for x in lines),
        "a stamped join",
    )
    alice.type("live news")
    dave.wait_until(
        lambda lines: any(re.fullmatch(f"{HHMM} <alice> live news", x) for x in lines),
        "a stamped live line",
    )
    assert dave.finish() == 0
    assert [line for line in dave.lines if re.fullmatch(f"{HHMM} <alice> old news", line)]
    logged = log.read_text().splitlines()
    for line in ("<alice> old news", "<alice> live news", "-!- dave has joined lobby"):
        assert [x for x in logged if re.fullmatch(f"{ISO} {re.escape(line)}", x)], logged
    assert len(logged) == len(dave.lines)  # everything shown, one line each
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_config_file_values_are_used_and_flags_win(
    daemon: Daemon, subprocess_env: dict[str, str]
) -> None:
    """client.ini in $XDG_CONFIG_HOME/udpchat gives host, port, key, nick, room and
    timestamps, so `udpchat-client` alone connects; flags given win over it."""
    folder = Path(subprocess_env["XDG_CONFIG_HOME"]) / "udpchat"
    folder.mkdir()
    (folder / "client.ini").write_text(
        f"[client]\nhost = 127.0.0.1\nport = {daemon.port}\nkey = {daemon.key_file}\n"
        "nick = cfgnick\nroom = #Cfgroom\ntimestamps = iso\n"
    )
    result = run_client([], subprocess_env, "hi\n")
    assert result.returncode == 0, result
    assert re.fullmatch(f"{ISO} -!- you are cfgnick in cfgroom", result.stdout.splitlines()[0])

    flags = ["--nick", "flagnick", "--room", "other", "--timestamps=off"]
    result = run_client(flags, subprocess_env, "hi\n")
    assert result.returncode == 0, result
    assert result.stdout.splitlines()[0] == "-!- you are flagnick in other"


def test_a_malformed_config_exits_2_naming_file_key_and_fix(
    subprocess_env: dict[str, str], psk_file: Path
) -> None:
    """The real process: one line on stderr, exit status 2, before any connection."""
    folder = Path(subprocess_env["XDG_CONFIG_HOME"]) / "udpchat"
    folder.mkdir()
    config = folder / "client.ini"
    config.write_text("[client]\nport = twelve\n")
    assert_setup_error(
        run_client(["127.0.0.1", "--key", str(psk_file)], subprocess_env),
        f"{config}: [client] port = 'twelve' is not a port number; fix: use an integer 1-65535",
    )


@pytest.mark.parametrize(
    ("args", "config_text", "message"),
    [
        (
            ["--config", "{cfg}/client.ini"],
            "[client]\ncolor = no\n",
            "{cfg}/client.ini: [client] unknown key 'color'; fix: use one of host, port, nick,",
        ),
        (
            ["--config", "{cfg}/nothing.ini"],
            "",
            "{cfg}/nothing.ini: config file not found; fix: give the path of an existing file",
        ),
        (
            [],
            "[client]\nnick = alice\n",
            "no HOST given; fix: udpchat-client HOST, or set host = HOST in [client] of"
            " {cfg}/client.ini",
        ),
        (
            ["--no-config", "127.0.0.1", "--log", "{cfg}/no/chat.log"],
            "[client]\nbroken\n",
            "cannot create log file {cfg}/no/chat.log: folder {cfg}/no does not exist; fix:",
        ),
        (
            [],
            "[client]\nhost = 127.0.0.1\nkey = nokey\n",
            "key file {cfg}/nokey does not exist; get a copy of the server's key file from its"
            " operator and put it at {cfg}/nokey (named by key in {cfg}/client.ini)",
        ),
    ],
    ids=["unknown-key", "missing-config", "no-host", "bad-log", "config-key-missing"],
)
def test_setup_mistakes_are_one_line_and_status_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    psk_file: Path,
    args: list[str],
    config_text: str,
    message: str,
) -> None:
    """Config, HOST and log mistakes stop the client before it connects, with one line
    naming the file (and key) and the fix, exit status 2; --no-config skips a broken
    config file."""
    cfg = tmp_path / "udpchat"
    cfg.mkdir()
    if config_text:
        (cfg / "client.ini").write_text(config_text)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("UDPCHAT_KEY_FILE", raising=False)
    key = [] if "key =" in config_text else ["--key", str(psk_file)]
    with pytest.raises(SystemExit) as exited:
        main([arg.format(cfg=cfg) for arg in args] + key)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("udpchat-client: ") and message.format(cfg=cfg) in err, err


def test_help_documents_the_new_options(capsys: pytest.CaptureFixture[str]) -> None:
    """--help names the config file, the history file and each new flag."""
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for needle in ("client.ini", "udpchat/history", "--no-history", "--timestamps", "--log"):
        assert needle in out
