"""The terminal front end's keys, fed as the bytes a terminal sends, in memory: Tab
and pasted tabs, Ctrl-R and its Esc, Ctrl-C clearing first, the bell and --no-bell.
(tests/test_client_terminal.py does the same for real, in tmux, against the daemon.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import cast

from cryptography.fernet import Fernet
from twisted.internet.testing import StringTransport

from udpchat.chat import messages
from udpchat.client.chatclient import ChatClient
from udpchat.client.display import TERMINAL, Style
from udpchat.client.terminal import BELL, ChatTerminal, make_terminal_protocol
from udpchat.core.endpoint import ClientEndpoint

ID = "0123456789abcdef"


class Link:
    """What the terminal needs of a ChatLink: the chat, and where lines go."""

    def __init__(self) -> None:
        self.chat = ChatClient(ClientEndpoint(Fernet.generate_key()), "alice")
        self.chat.roster.enter("lobby", "alice")
        for nick in ("bob", "Bea", "carol"):
            self.chat.roster.update(messages.JoinNotice("lobby", nick))
        self.sent: list[str] = []
        self.quit_asked = False

    def submit(self, lines: Sequence[str]) -> None:
        self.sent.extend(lines)

    def quit(self) -> None:
        self.quit_asked = True


class Screen:
    """A ChatTerminal on a fake terminal transport."""

    def __init__(self, style: Style = TERMINAL) -> None:
        self.protocol = make_terminal_protocol(lambda: None, lambda: 1_700_000_000.0, style)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.front = cast(ChatTerminal, self.protocol.terminalProtocol)
        self.link = Link()
        self.front.link = self.link  # type: ignore[assignment]

    def press(self, *reads: bytes) -> None:
        """Each of ``reads`` as one read from the terminal."""
        for data in reads:
            self.protocol.dataReceived(data)

    @property
    def line(self) -> str:
        return b"".join(self.front.lineBuffer).decode()

    @property
    def cursor(self) -> int:
        return int(self.front.lineBufferIndex)


def test_tab_completes_and_cycles_and_a_pasted_tab_is_spaces() -> None:
    """A Tab read alone completes a nick of the room (not the user's own), Tab again
    the next (nobody spoke yet: by name); a tab that comes with other text (a paste)
    is spaces."""
    screen = Screen()
    screen.press(b"b", b"\t")
    assert screen.line == "Bea: "
    screen.press(b"\t")
    assert screen.line == "bob: "
    screen.press(b"\x15", b"a\tb")  # ^U, then a paste
    assert screen.line == "a       b"
    screen.press(b"\x15", b"a", b"\t")  # "alice" is the user: nothing to complete
    assert screen.line == "a"


def test_ctrl_c_clears_first_and_leaves_on_an_empty_line() -> None:
    """Ctrl-C on a half-typed line clears it (Up brings it back) and sends nothing;
    Ctrl-C on an empty line leaves."""
    screen = Screen()
    screen.press(b"half a thought", b"\x03")
    assert screen.line == "" and not screen.link.quit_asked and screen.link.sent == []
    screen.press(b"\x1b[A")  # Up
    assert screen.line == "half a thought"
    screen.press(b"\x03", b"\x03")
    assert screen.link.quit_asked


def test_ctrl_r_searches_enter_takes_esc_cancels() -> None:
    """Ctrl-R with a few letters shows the newest line holding them, in the search
    prompt; Enter takes it into the line without sending; Esc (a lone ESC read)
    brings back the draft; another key takes the match and acts."""
    screen = Screen(Style())
    for line in (b"an apple a day", b"banana split", b"apple pie"):
        screen.press(line, b"\r")
    assert screen.link.sent == ["an apple a day", "banana split", "apple pie"]
    screen.press(b"draft", b"\x12", b"ap")
    assert screen.line == "apple pie" and screen.cursor == 0
    assert b"(reverse-i-search)'ap': apple pie" in screen.transport.value()
    screen.press(b"\x12")
    assert screen.line == "an apple a day" and screen.cursor == 3
    screen.press(b"\x1b")
    assert screen.line == "draft"
    screen.press(b"\x12", b"ban", b"\r")
    assert screen.line == "banana split" and len(screen.link.sent) == 3  # not sent
    screen.press(b"\x15", b"\x12", b"pie", b"\x1b[D")  # Left: take it, then move
    assert screen.line == "apple pie" and screen.cursor == 5
    screen.press(b"\x12", b"xyz", b"\x07")  # ^G cancels a failed search too
    assert screen.line == "apple pie"
    assert b"(failed reverse-i-search)'xyz'" in screen.transport.value()


def test_a_mention_or_a_private_line_rings_the_bell_unless_told_not_to() -> None:
    """BEL goes out for a line that says the user's nick or a private line, not for
    other lines, and never with bell=False (--no-bell)."""
    screen = Screen()
    screen.transport.clear()
    screen.front.update([messages.SayOut("lobby", "bob", "hi all", ID)])
    assert BELL not in screen.transport.value()
    screen.front.update([messages.SayOut("lobby", "bob", "alice: lunch?", ID)])
    assert BELL in screen.transport.value()
    screen.transport.clear()
    screen.front.update([messages.PrivateMsgIn("bob", "psst", ID)])
    assert BELL in screen.transport.value()
    quiet = Screen(replace(TERMINAL, bell=False))
    quiet.transport.clear()
    quiet.front.update([messages.PrivateMsgIn("bob", "psst", ID)])
    assert BELL not in quiet.transport.value()
    assert b"\x1b[" in quiet.transport.value()  # still highlighted
