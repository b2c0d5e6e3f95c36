"""Terminal mode for real: udpchat-client in a tmux pane against the real daemon.

Incoming lines appear above the input line while what is typed stays intact; the
prompt shows nick and room; history works; ^D and ^C leave cleanly (the room sees the
quit) and the tty settings are exactly as before. The comforts, as a person uses
them: the member list on joining, Tab completion, the bell and highlight for a
mention, Ctrl-R, Ctrl-C clearing the line first, long lines split, a resize while a
long draft wraps.
"""

from __future__ import annotations

import re
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

    def screen_with_attributes(self) -> list[str]:
        """The screen with its SGR sequences (colours, reverse video)."""
        return self.tmux("capture-pane", "-p", "-e", "-t", "t").splitlines()

    def bell_rang(self) -> bool:
        """tmux's bell flag of the window: set when the program wrote BEL."""
        return self.tmux("display", "-p", "-t", "t", "#{window_bell_flag}").strip() == "1"

    def input_line(self) -> str:
        """The last non-blank row: where the prompt and what is typed are."""
        return [line for line in self.screen() if line.strip()][-1]

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


def test_ctrl_c_clears_the_line_first_then_leaves(
    bob: tuple[subprocess.Popen[str], LineReader], alice: Pane, tmp_path: Path
) -> None:
    """Ctrl-C on a half-typed line clears it (not sent; Up brings it back); Ctrl-C on
    an empty line leaves cleanly: bob sees alice quit, and the terminal is restored."""
    _, bob_sees = bob
    alice.wait(has("[alice@lobby]"))
    bob_sees.wait_for("-!- alice has joined lobby")
    alice.text("never sent")
    alice.wait(lambda s: alice.input_line() == "[alice@lobby] never sent")
    alice.keys("C-c")
    alice.wait(lambda s: alice.input_line() == "[alice@lobby]")
    alice.keys("Up")
    alice.wait(lambda s: alice.input_line() == "[alice@lobby] never sent")
    alice.keys("C-c")
    alice.wait(lambda s: alice.input_line() == "[alice@lobby]")
    assert not any("EXIT=" in line for line in alice.screen())  # still running
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


def test_member_list_tab_completion_and_a_mention_rings_the_bell(
    bob: tuple[subprocess.Popen[str], LineReader], alice: Pane
) -> None:
    """On joining alice is shown who is there; "b" Tab completes to "bob: " and the
    line goes out so; bob saying her nick rings the bell and highlights his nick
    (reverse video); a pasted tab becomes spaces instead of vanishing."""
    bob_proc, bob_sees = bob
    alice.wait(has("-!- Users in lobby: alice bob"))
    assert not alice.bell_rang()

    alice.text("b")
    alice.keys("Tab")
    alice.wait(lambda s: alice.input_line() == "[alice@lobby] bob:")  # "bob: " + cursor
    alice.text("a\tb")  # pasted: arrives in one read with the tab
    expanded = "bob: a\tb".expandtabs(8)  # to the next multiple of 8 columns
    assert expanded == "bob: a  b"
    alice.wait(lambda s: alice.input_line() == "[alice@lobby] " + expanded)
    alice.keys("Enter")
    assert bob_sees.wait_for("<alice>")[-1] == "<alice> " + expanded

    say(bob_proc, "hey Alice, look")
    screen = alice.wait(has("<bob> hey Alice, look"))
    deadline = time.monotonic() + 5
    while not alice.bell_rang():
        assert time.monotonic() < deadline, "the bell never rang"
        time.sleep(0.05)
    line = next(row for row in alice.screen_with_attributes() if "hey Alice, look" in row)
    # bob's nick in reverse video (SGR 7, however tmux spells it): the line is for alice
    assert re.search(r"\x1b\[(?:\d+;)*7(?:;\d+)*m(?:\x1b\[[\d;]*m)*bob", line), repr(line)
    own = next(row for row in alice.screen_with_attributes() if expanded in row)
    assert re.search(r"\x1b\[[\d;]*m", own) and "\x1b[7m" not in own  # coloured, not reversed
    assert screen


def test_ctrl_r_finds_an_earlier_line(
    bob: tuple[subprocess.Popen[str], LineReader], alice: Pane
) -> None:
    """Ctrl-R and a few letters show the newest earlier line containing them; Ctrl-R
    again an older one; Enter takes it into the input line (Enter again sends it);
    Esc gives back the draft typed before the search."""
    _, bob_sees = bob
    alice.wait(has("-!- Users in lobby: alice bob"))
    for text in ("an apple a day", "banana split", "apple pie"):
        alice.text(text)
        alice.keys("Enter")
        bob_sees.wait_for(f"<alice> {text}")

    alice.text("draft")
    alice.keys("C-r")
    alice.text("app")
    alice.wait(lambda s: alice.input_line() == "(reverse-i-search)'app': apple pie")
    alice.keys("C-r")
    alice.wait(lambda s: alice.input_line() == "(reverse-i-search)'app': an apple a day")
    alice.keys("Escape")
    alice.wait(lambda s: alice.input_line() == "[alice@lobby] draft")

    alice.keys("C-u", "C-r")
    alice.text("ban")
    alice.wait(lambda s: alice.input_line() == "(reverse-i-search)'ban': banana split")
    alice.keys("Enter")
    alice.wait(lambda s: alice.input_line() == "[alice@lobby] banana split")
    alice.keys("Enter")
    bob_sees.wait_for("<alice> banana split")


def test_a_long_line_arrives_as_several_in_order(
    bob: tuple[subprocess.Popen[str], LineReader], alice: Pane
) -> None:
    """A 1,000-byte line typed by alice is not refused: bob gets it as three lines, cut
    at spaces, in order, each once."""
    _, bob_sees = bob
    alice.wait(has("-!- Users in lobby: alice bob"))
    words = [f"w{i:03d}" for i in range(200)]  # 200 words of 4 letters + spaces
    line = " ".join(words)
    assert len(line.encode()) == 999
    alice.text(line)
    alice.keys("Enter")
    got = bob_sees.wait_for("w199")
    pieces = [text.removeprefix("<alice> ") for text in got if text.startswith("<alice>")]
    assert len(pieces) == 3
    assert " ".join(pieces) == line
    assert all(len(piece.encode()) <= 400 for piece in pieces)


def test_no_stale_prompt_rows_after_a_resize(
    bob: tuple[subprocess.Popen[str], LineReader], alice: Pane
) -> None:
    """A draft wrapping over two rows, then the window narrowed to half: the prompt is
    on the screen once, with the whole draft, also after the next incoming line."""
    bob_proc, _ = bob
    alice.wait(has("-!- Users in lobby: alice bob"))
    draft = "".join(f"{i:02d}-" for i in range(40))  # 120 characters
    alice.text(draft)
    alice.wait(has(draft[-20:]))
    alice.tmux("resize-window", "-t", "t", "-x", "40")
    alice.keys("End")  # any key redraws; SIGWINCH did already
    say(bob_proc, "after the resize")
    screen = alice.wait(has("<bob> after the resize"))
    assert sum("[alice@lobby]" in line for line in screen) == 1, "\n".join(screen)
    rows = [line for line in screen if line.strip()]
    start = next(i for i, line in enumerate(rows) if line.startswith("[alice@lobby]"))
    assert "".join(rows[start:]) == "[alice@lobby] " + draft


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
