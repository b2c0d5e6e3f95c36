"""Terminal mode (stdin is a tty): a line editor with history under the chat.

Incoming lines are printed above the input line and the line being typed is redrawn
below them intact. Editing keys: arrows (up/down walk the history), Home/End, ^A ^E
^B ^F, Backspace/^H, Delete, ^U ^K ^W, ^L redraw. /quit, ^D on an empty line and ^C
leave cleanly (bye is sent). The history is kept across runs (inputhistory).
``run_raw`` puts the tty in raw mode and always restores it (termios and the modes we
set), also after an exception.

The input area is redrawn as a whole after every edit rather than patched with the
terminal's insert mode, so long lines that wrap over several rows stay correct.
"""

from __future__ import annotations

import codecs
import os
import signal
import termios
import time
import tty
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from twisted.conch.insults.insults import ServerProtocol
from twisted.conch.recvline import HistoricRecvLine
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from udpchat.client.display import Item, Renderer, Style, clean, nick_colour
from udpchat.client.inputhistory import SAVED_LINES, SavedHistory
from udpchat.client.link import ChatLink

STDOUT_FD = 1
#: Input history kept for the up/down arrows: as many lines as are saved for next time.
HISTORY_MAX_LINES = SAVED_LINES
#: A typed line not acknowledged after this long is counted in the prompt ("…2").
STALLED_AFTER_S = 1.5
#: How often the prompt is refreshed for that count and the connection state.
PROMPT_REFRESH_S = 0.5
#: Written when leaving: attributes off, insert mode off, cursor visible.
RESTORE_MODES = b"\x1b[0m\x1b[4l\x1b[?25h"


def char_width(ch: str) -> int:
    """Columns a character takes on a terminal (wide East Asian: 2, combining: 0)."""
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def text_width(text: str) -> int:
    return sum(char_width(ch) for ch in text)


class ChatTerminal(HistoricRecvLine):
    """The chat's terminal front end (see module docstring); a FrontEnd for ChatLink."""

    def __init__(
        self,
        on_exit: Callable[[], None],
        clock: Callable[[], float],
        style: Style,
        saved_history: SavedHistory | None = None,
    ):
        self.link: ChatLink | None = None
        self._saved_history = saved_history
        self._on_exit = on_exit
        self._clock = clock
        self._style = style
        self._renderer = Renderer(style)
        self._cursor_row = 0  # rows between the first input row and the cursor
        self._prompt_shown = ""
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._refresher = LoopingCall(self._refresh_prompt)
        self._closing = False

    def attach(self, link: ChatLink) -> None:
        self.link = link
        self._render()
        self._refresher.start(PROMPT_REFRESH_S, now=False)

    # --- setup (recvline hooks) -------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        if self._saved_history is not None:  # lines typed in earlier runs
            self.historyLines = self._saved_history.load()[-HISTORY_MAX_LINES:]
            self.historyPosition = len(self.historyLines)
        controls: dict[bytes, Callable[[], None]] = {
            b"\x01": self.handle_HOME,  # ^A
            b"\x02": self.handle_LEFT,  # ^B
            b"\x03": self._quit,  # ^C (raw mode: no SIGINT)
            b"\x04": self._ctrl_d,
            b"\x05": self.handle_END,  # ^E
            b"\x06": self.handle_RIGHT,  # ^F
            b"\x08": self.handle_BACKSPACE,  # ^H
            b"\x0b": self._kill_to_end,  # ^K
            b"\x0c": self._redraw,  # ^L
            b"\x15": self._kill_to_start,  # ^U
            b"\x17": self._kill_word,  # ^W
        }
        self.keyHandlers.update(controls)
        self.keyHandlers.pop(self.terminal.TAB, None)  # a tab cannot be sent anyway
        try:
            self.width = os.get_terminal_size(STDOUT_FD).columns or 80
        except (OSError, ValueError, AttributeError):
            self.width = 80

    def initializeScreen(self) -> None:
        # Unlike recvline: no terminal reset (it would wipe the user's screen) and no
        # insert mode (the whole input area is redrawn instead).
        self.mode = "insert"

    def setTypeoverMode(self) -> None:
        self.mode = "typeover"

    def setInsertMode(self) -> None:
        self.mode = "insert"

    def terminalSize(self, width: int, height: int) -> None:
        self.width, self.height = max(width, 10), height
        self._render()

    # --- keys -------------------------------------------------------------------

    def keystrokeReceived(self, keyID: bytes | object, modifier: object) -> None:
        if self._closing or modifier is not None:
            return  # Alt-<key> (Esc prefix): no bindings, and not text either
        if isinstance(keyID, bytes) and len(keyID) == 1 and keyID[0] >= 0x80:
            # insults hands us UTF-8 one byte at a time: assemble characters.
            ch = self._utf8.decode(keyID)
            if ch:
                self._insert(ch)
            return
        self._utf8.reset()
        handler = self.keyHandlers.get(keyID)
        if handler is not None:
            handler()
        elif isinstance(keyID, bytes) and len(keyID) == 1 and 0x20 <= keyID[0] < 0x7F:
            self._insert(keyID.decode("ascii"))

    def _insert(self, ch: str) -> None:
        if clean(ch) != ch:
            return  # a C1 control or bidi override typed or pasted: not sendable/safe
        self.characterReceived(ch.encode("utf-8"), False)

    def characterReceived(self, ch: bytes, moreCharactersComing: bool) -> None:
        if self.mode == "insert":
            self.lineBuffer.insert(self.lineBufferIndex, ch)
        else:
            self.lineBuffer[self.lineBufferIndex : self.lineBufferIndex + 1] = [ch]
        self.lineBufferIndex += 1
        if not moreCharactersComing:
            self._render()

    def handle_LEFT(self) -> None:
        self.lineBufferIndex = max(0, self.lineBufferIndex - 1)
        self._render()

    def handle_RIGHT(self) -> None:
        self.lineBufferIndex = min(len(self.lineBuffer), self.lineBufferIndex + 1)
        self._render()

    def handle_HOME(self) -> None:
        self.lineBufferIndex = 0
        self._render()

    def handle_END(self) -> None:
        self.lineBufferIndex = len(self.lineBuffer)
        self._render()

    def handle_BACKSPACE(self) -> None:
        if self.lineBufferIndex > 0:
            self.lineBufferIndex -= 1
            del self.lineBuffer[self.lineBufferIndex]
            self._render()

    def handle_DELETE(self) -> None:
        if self.lineBufferIndex < len(self.lineBuffer):
            del self.lineBuffer[self.lineBufferIndex]
            self._render()

    def handle_UP(self) -> None:
        if self.lineBuffer and self.historyPosition == len(self.historyLines):
            self.historyLines.append(b"".join(self.lineBuffer))  # keep the draft
        if self.historyPosition > 0:
            self.historyPosition -= 1
            self._set_line(self.historyLines[self.historyPosition])

    def handle_DOWN(self) -> None:
        if self.historyPosition < len(self.historyLines) - 1:
            self.historyPosition += 1
            self._set_line(self.historyLines[self.historyPosition])
        else:
            self.historyPosition = len(self.historyLines)
            self._set_line(b"")

    def handle_RETURN(self) -> None:
        line = b"".join(self.lineBuffer)
        if line:
            self.historyLines.append(line)
            del self.historyLines[:-HISTORY_MAX_LINES]
            if self._saved_history is not None:
                self._saved_history.add(line)
        self.historyPosition = len(self.historyLines)
        self._set_line(b"")
        self.lineReceived(line)

    def lineReceived(self, line: bytes) -> None:
        if self.link is not None:
            self.link.submit([line.decode("utf-8", "replace")])

    def _set_line(self, line: bytes) -> None:
        # One list element per character, so cursor moves step over whole characters.
        self.lineBuffer = [ch.encode("utf-8") for ch in line.decode("utf-8", "replace")]
        self.lineBufferIndex = len(self.lineBuffer)
        self._render()

    def _kill_to_start(self) -> None:
        del self.lineBuffer[: self.lineBufferIndex]
        self.lineBufferIndex = 0
        self._render()

    def _kill_to_end(self) -> None:
        del self.lineBuffer[self.lineBufferIndex :]
        self._render()

    def _kill_word(self) -> None:
        start = self.lineBufferIndex
        while start > 0 and self.lineBuffer[start - 1] == b" ":
            start -= 1
        while start > 0 and self.lineBuffer[start - 1] != b" ":
            start -= 1
        del self.lineBuffer[start : self.lineBufferIndex]
        self.lineBufferIndex = start
        self._render()

    def _redraw(self) -> None:
        self.terminal.write(b"\x1b[2J\x1b[H")
        self._cursor_row = 0
        self._render()

    def _ctrl_d(self) -> None:
        if self.lineBuffer:
            self.handle_DELETE()
        else:
            self._quit()

    def _quit(self) -> None:
        if self.link is not None:
            self.link.quit()
        else:
            self._on_exit()

    # --- drawing ----------------------------------------------------------------

    def _prompt(self) -> tuple[str, str]:
        """The prompt as (plain text for measuring, text to write)."""
        nick, room, state = "?", "?", ""
        if self.link is not None:
            chat = self.link.chat
            nick, room = clean(chat.nick), clean(chat.room)
            stalled = chat.stalled(self._clock(), STALLED_AFTER_S)
            state = "" if chat.connected else " offline"
            state += f" \u2026{stalled}" if stalled else ""
        plain = f"[{nick}@{room}{state}] "
        if not self._style.colour:
            return plain, plain
        coloured = f"[\x1b[{nick_colour(nick)}m{nick}\x1b[0m@\x1b[1m{room}\x1b[0m"
        coloured += f"\x1b[33m{state}\x1b[0m] " if state else "] "
        return plain, coloured

    def _to_input_start(self) -> str:
        up = f"\x1b[{self._cursor_row}A" if self._cursor_row else ""
        self._cursor_row = 0
        return up + "\r\x1b[J"

    def _render(self, above: str = "") -> None:
        """Redraw the input area, after printing ``above`` (complete lines) over it."""
        plain, coloured = self._prompt()
        self._prompt_shown = plain
        chars = [ch.decode("utf-8", "replace") for ch in self.lineBuffer]
        start = self._to_input_start()
        width = max(self.width, 10)
        before = text_width(plain) + text_width("".join(chars[: self.lineBufferIndex]))
        total = text_width(plain) + text_width("".join(chars))
        out = [start, above, coloured, "".join(chars)]
        if total % width == 0:
            out.append("\r\n")  # leave the "pending wrap" state at the right margin
        row, col = divmod(before, width)
        end_row = total // width
        if end_row > row:
            out.append(f"\x1b[{end_row - row}A")
        out.append("\r" + (f"\x1b[{col}C" if col else ""))
        self._cursor_row = row
        self.terminal.write("".join(out).encode("utf-8", "replace"))

    def _refresh_prompt(self) -> None:
        if not self._closing and self._prompt()[0] != self._prompt_shown:
            self._render()

    # --- FrontEnd ---------------------------------------------------------------

    def update(self, items: list[Item]) -> None:
        if self._closing:
            return
        lines = self._renderer.lines(items, time.time())  # the date, for the reader
        above = "".join(line + "\r\n" for line in lines)
        if above or self._prompt()[0] != self._prompt_shown:
            self._render(above)

    def chat_done(self) -> None:
        self._closing = True
        if self._refresher.running:
            self._refresher.stop()
        # Leave the screen tidy: the input area erased, the shell prompt on its own line.
        self.terminal.write(self._to_input_start().encode() + RESTORE_MODES)
        # Not self.terminal.loseConnection(): insults would send a full terminal reset,
        # which clears the screen (and the chat the user may want to scroll back to).
        self.terminal.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._refresher.running:
            self._refresher.stop()
        self._on_exit()


@contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """The tty on ``fd`` in raw mode for the block; always restored afterwards (termios
    attributes, our modes, blocking I/O), also if the block raises."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
        try:
            os.set_blocking(fd, True)  # Twisted's stdio made it non-blocking
            os.set_blocking(STDOUT_FD, True)
            os.write(STDOUT_FD, RESTORE_MODES)
        except (OSError, AttributeError, ValueError):
            pass


def make_terminal_protocol(
    on_exit: Callable[[], None],
    clock: Callable[[], float],
    style: Style,
    saved_history: SavedHistory | None = None,
) -> ServerProtocol:
    """The insults protocol for stdio.StandardIO; its terminalProtocol (a ChatTerminal)
    exists once the transport is connected."""
    return ServerProtocol(ChatTerminal, on_exit, clock, style, saved_history)


@contextmanager
def follow_window_size(front: ChatTerminal, reactor: Any) -> Iterator[None]:
    """Tell ``front`` the new width whenever the window is resized (SIGWINCH)."""

    def resized() -> None:
        try:
            size = os.get_terminal_size(STDOUT_FD)
        except (OSError, ValueError, AttributeError):
            return
        front.terminalSize(size.columns, size.lines)

    def on_signal(signum: int, frame: object) -> None:
        # Signal handlers may run at any point: do the work from the reactor loop.
        reactor.callFromThread(resized)

    previous = signal.signal(signal.SIGWINCH, on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)
