"""Terminal mode for real: udpchat-client in a tmux pane against the real daemon.

Incoming lines appear above the input line while what is typed stays intact; the
prompt shows nick and room; history works; ^D and ^C leave cleanly (the room sees the
quit) and the tty settings are exactly as before.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon import Daemon
from test_client_cli import CLIENT, LineReader

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


class Pane:
    """One tmux pane on a private tmux server (-L), running a script."""

    def __init__(self, folder: Path, script: str) -> None:
        self.socket = f"udpchat-test-{folder.name}-{time.monotonic_ns()}"
        path = folder / "run.sh"
        path.write_text(script)
        self.tmux("new-session", "-d", "-s", "t", "-x", "80", "-y", "24", f"bash --norc {path}")

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True
        ).stdout

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def text(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", "-l", *keys)  # literally, no key names

    def screen(self) -> list[str]:
        return self.tmux("capture-pane", "-p", "-t", "t").splitlines()

    def wait(self, check: Callable[[list[str]], bool], timeout: float = 20) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if check(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError("screen never matched:\n" + "\n".join(screen))
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def daemon(tmp_path: Path, subprocess_env: dict[str, str]) -> Iterator[Daemon]:
    folder = tmp_path / "server"
    folder.mkdir()
    d = Daemon(folder, subprocess_env)
    yield d.start()
    d.kill()


@pytest.fixture
def alice(tmp_path: Path, daemon: Daemon, subprocess_env: dict[str, str]) -> Iterator[Pane]:
    """alice's udpchat-client in a tmux pane; when it exits the pane shows EXIT=<status>
    and the tty settings before and after are in tmp_path."""
    env = " ".join(
        f"{k}={shlex.quote(v)}"
        for k, v in subprocess_env.items()
        if k
        in ("PATH", "PYTHONPATH", "HOME", "LANG", "LC_ALL", "XDG_STATE_HOME", "XDG_CONFIG_HOME")
    )
    command = " ".join(
        shlex.quote(part)
        for part in [
            *CLIENT,
            "127.0.0.1",
            "--port",
            str(daemon.port),
            "--key",
            str(daemon.key_file),
            "--nick",
            "alice",
        ]
    )
    script = (
        f"export {env} TERM=xterm-256color\n"
        f"stty -a > {tmp_path}/stty.before\n"
        f"{command}\n"
        "status=$?\n"
        # EXIT= shows only once stty.after is written: the tests read it right away.
        f"stty -a > {tmp_path}/stty.after\n"
        "echo EXIT=$status\n"
        "sleep 60\n"
    )
    pane = Pane(tmp_path, script)
    yield pane
    pane.close()


@pytest.fixture
def bob(
    daemon: Daemon, subprocess_env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[str], LineReader]]:
    """bob, a pipe-mode client: write lines to his stdin, read what he sees."""
    proc = subprocess.Popen(
        [*CLIENT, "127.0.0.1", "--port", str(daemon.port), "--key", str(daemon.key_file)]
        + ["--nick", "bob"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env,
    )
    reader = LineReader(proc)
    reader.wait_for("-!- bob has joined lobby")
    yield proc, reader
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def has(text: str) -> Callable[[list[str]], bool]:
    return lambda screen: any(text in line for line in screen)


def say(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def test_incoming_lines_do_not_disturb_typing_and_ctrl_d_leaves_cleanly(
    bob: tuple[subprocess.Popen[str], LineReader], alice: Pane, tmp_path: Path
) -> None:
    """A line arriving while alice types appears above her input line and what she
    typed stays intact; Up recalls her last line; Ctrl-D leaves (bob sees her go),
    and the tty settings afterwards are exactly those from before."""
    bob_proc, bob_sees = bob
    alice.wait(has("[alice@lobby]"))
    bob_sees.wait_for("-!- alice has joined lobby")

    alice.text("half a thought")
    say(bob_proc, "interrupting you")
    screen = alice.wait(has("<bob> interrupting you"))
    body = [line for line in screen if line.strip()]
    assert body[-1] == "[alice@lobby] half a thought"  # still there, below the news
    assert body[-2].endswith("<bob> interrupting you")
    assert "\x1b" not in "".join(screen)

    alice.text(", finished é")
    alice.keys("Enter")
    assert bob_sees.wait_for("<alice>") == ["<alice> half a thought, finished é"]
    alice.wait(has("<alice> half a thought, finished é"))  # own line shown like others'

    alice.keys("Up")
    alice.wait(lambda s: any(line == "[alice@lobby] half a thought, finished é" for line in s))
    alice.keys("C-u")
    alice.text("/join #Dev")
    alice.keys("Enter")
    alice.wait(has("[alice@dev]"))

    alice.keys("C-d")
    alice.wait(has("EXIT=0"))
    bob_sees.wait_for("-!- alice has left lobby (part)")
    assert (tmp_path / "stty.before").read_text() == (tmp_path / "stty.after").read_text()


def test_ctrl_c_tells_the_server_and_restores_the_terminal(
    bob: tuple[subprocess.Popen[str], LineReader], alice: Pane, tmp_path: Path
) -> None:
    """Ctrl-C leaves cleanly: the half-typed line is not sent, bob sees alice quit,
    and the terminal is restored."""
    _, bob_sees = bob
    alice.wait(has("[alice@lobby]"))
    bob_sees.wait_for("-!- alice has joined lobby")
    alice.text("never sent")
    alice.keys("C-c")
    alice.wait(has("EXIT=0"))
    bob_sees.wait_for("-!- alice has left lobby (quit)")
    assert (tmp_path / "stty.before").read_text() == (tmp_path / "stty.after").read_text()


def test_quit_command_leaves_and_restores_the_terminal(
    bob: tuple[subprocess.Popen[str], LineReader], alice: Pane, tmp_path: Path
) -> None:
    """/quit tells the server (bob sees alice quit), exits 0 and restores the tty."""
    _, bob_sees = bob
    alice.wait(has("[alice@lobby]"))
    bob_sees.wait_for("-!- alice has joined lobby")
    alice.text("/quit")
    alice.keys("Enter")
    alice.wait(has("EXIT=0"))
    bob_sees.wait_for("-!- alice has left lobby (quit)")
    assert (tmp_path / "stty.before").read_text() == (tmp_path / "stty.after").read_text()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
