"""Terminal mode (stdin is a tty): a line editor with history under the chat.

Incoming lines are printed above the input line and the line being typed is redrawn
below them intact. Editing keys: arrows (up/down walk the history), Home/End, ^A ^E
^B ^F, Backspace/^H, Delete, ^U ^K ^W, ^L redraw; Tab completes nicks and /commands
(again: the next one); ^R searches the history (udpchat.client.search), which is kept
across runs (inputhistory). ^C clears the line (Up brings it back); /quit, and ^D or
^C on an empty line, leave cleanly (bye is sent). A line that mentions the user's
nick, or a private one, rings the bell and is highlighted (Style.bell,
Style.highlight). ``raw_terminal`` puts the tty in raw mode and always restores it
(termios and the modes we set), also after an exception.

The input area is redrawn as a whole after every edit rather than patched with the
terminal's insert mode, so long lines that wrap over several rows stay correct
(udpchat.client.inputarea does the arithmetic).
"""

from __future__ import annotations

import codecs
import os
import signal
import termios
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

from twisted.conch.insults.insults import ServerProtocol
from twisted.conch.recvline import HistoricRecvLine
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from udpchat.chat import messages
from udpchat.client.commands import TAB_COLUMNS
from udpchat.client.completion import TabCompletion
from udpchat.client.display import Item, Renderer, Style, clean, nick_colour, rings_bell
from udpchat.client.inputarea import InputArea
from udpchat.client.inputhistory import SAVED_LINES, SavedHistory
from udpchat.client.link import ChatLink
from udpchat.client.search import HistorySearch

STDOUT_FD = 1
#: Input history kept for the up/down arrows: as many lines as are saved for next time.
HISTORY_MAX_LINES = SAVED_LINES
#: A typed line not acknowledged after this long is counted in the prompt ("…2").
STALLED_AFTER_S = 1.5
#: How often the prompt is refreshed for that count and the connection state.
PROMPT_REFRESH_S = 0.5
#: Written when leaving: attributes off, insert mode off, cursor visible.
RESTORE_MODES = b"\x1b[0m\x1b[4l\x1b[?25h"
BELL = b"\x07"
ESC = b"\x1b"
CTRL_C, CTRL_G, CTRL_R = b"\x03", b"\x07", b"\x12"


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
        self._area = InputArea()
        self._prompt_shown = ""
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._refresher = LoopingCall(self._refresh_prompt)
        self._closing = False
        self._completion = TabCompletion()
        self._search: HistorySearch | None = None  # Ctrl-R in progress
        # True while handling a read that holds a Tab and more: pasted text, in which a
        # tab is spaces, not a request to complete (a Tab key comes in a read alone).
        self.pasting = False

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
            CTRL_C: self._ctrl_c,  # (raw mode: no SIGINT)
            b"\x04": self._ctrl_d,
            b"\x05": self.handle_END,  # ^E
            b"\x06": self.handle_RIGHT,  # ^F
            b"\x08": self.handle_BACKSPACE,  # ^H
            b"\x0b": self._kill_to_end,  # ^K
            b"\x0c": self._redraw,  # ^L
            b"\x15": self._kill_to_start,  # ^U
            b"\x17": self._kill_word,  # ^W
            CTRL_R: self._begin_search,
            b"\t": self._tab,
        }
        self.keyHandlers.update(controls)
        self._area.resized(self._current_width() or 80)

    def initializeScreen(self) -> None:
        # Unlike recvline: no terminal reset (it would wipe the user's screen) and no
        # insert mode (the whole input area is redrawn instead).
        self.mode = "insert"

    def setTypeoverMode(self) -> None:
        self.mode = "typeover"

    def setInsertMode(self) -> None:
        self.mode = "insert"

    def terminalSize(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self._area.resized(width)
        self._render()

    def _current_width(self) -> int | None:
        """The window's width now. Asked before every redraw: SIGWINCH is handled only
        on the reactor's next turn, and a redraw for a key typed meanwhile must not use
        the old width."""
        try:
            return os.get_terminal_size(STDOUT_FD).columns or None
        except (OSError, ValueError, AttributeError):
            return None

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
        if self._search is not None and self._search_key(keyID):
            return
        handler = self.keyHandlers.get(keyID)
        if handler is not None:
            handler()
        elif isinstance(keyID, bytes) and len(keyID) == 1 and 0x20 <= keyID[0] < 0x7F:
            self._insert(keyID.decode("ascii"))

    def _insert(self, ch: str) -> None:
        if clean(ch) != ch:
            return  # a C1 control or bidi override typed or pasted: not sendable/safe
        if self._search is not None:
            self._search.type(ch)
            self._show_search()
            return
        self.characterReceived(ch.encode("utf-8"), False)

    def _tab(self) -> None:
        """Tab: complete (udpchat.client.completion); a pasted tab becomes spaces."""
        line = b"".join(self.lineBuffer).decode("utf-8", "replace")
        if self.pasting:
            before = line[: self.lineBufferIndex]
            for _ in range(TAB_COLUMNS - len(before) % TAB_COLUMNS):  # as str.expandtabs
                self.characterReceived(b" ", True)
            self._render()
            return
        nicks: list[str] = []
        if self.link is not None:
            chat = self.link.chat
            me = messages.fold_nick(chat.nick)
            nicks = [nick for nick in chat.roster.nicks() if messages.fold_nick(nick) != me]
        edit = self._completion.complete(line, self.lineBufferIndex, nicks)
        if edit is not None:
            self._set_line(edit.line.encode("utf-8"), edit.cursor)

    # --- Ctrl-R: reverse history search -------------------------------------------

    @property
    def searching(self) -> bool:
        return self._search is not None

    def _begin_search(self) -> None:
        history = [line.decode("utf-8", "replace") for line in self.historyLines]
        draft = b"".join(self.lineBuffer).decode("utf-8", "replace")
        self._search = HistorySearch(history, draft)
        self._show_search()

    def _search_key(self, keyID: bytes | object) -> bool:
        """A key while searching; False: the search was accepted, and the key is to
        be handled as usual (arrows, ^A, ^E ... then act on the found line)."""
        search = self._search
        assert search is not None
        if keyID == CTRL_R:
            search.older()
        elif keyID in (self.terminal.BACKSPACE, b"\x08"):
            search.backspace()
        elif keyID in (ESC, CTRL_G, CTRL_C):
            self._end_search(search.draft, len(search.draft))
            return True
        elif keyID in (b"\r", b"\n"):
            self._end_search(search.line, len(search.line))
            return True
        elif isinstance(keyID, bytes) and len(keyID) == 1 and 0x20 <= keyID[0] < 0x7F:
            search.type(keyID.decode("ascii"))
        else:
            self._end_search(search.line, search.cursor)
            return False
        self._show_search()
        return True

    def _show_search(self) -> None:
        assert self._search is not None
        self._set_line(self._search.line.encode("utf-8"), self._search.cursor)

    def _end_search(self, line: str, cursor: int) -> None:
        self._search = None
        self.historyPosition = len(self.historyLines)
        self._set_line(line.encode("utf-8"), cursor)

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

    def _set_line(self, line: bytes, cursor: int | None = None) -> None:
        # One list element per character, so cursor moves step over whole characters.
        self.lineBuffer = [ch.encode("utf-8") for ch in line.decode("utf-8", "replace")]
        self.lineBufferIndex = len(self.lineBuffer) if cursor is None else cursor
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
        self._area.screen_cleared()
        self._render()

    def _ctrl_d(self) -> None:
        if self.lineBuffer:
            self.handle_DELETE()
        else:
            self._quit()

    def _ctrl_c(self) -> None:
        """Clear a half-typed line (kept in the history: Up brings it back); leave
        when the line is empty already."""
        if not self.lineBuffer:
            self._quit()
            return
        self.historyLines.append(b"".join(self.lineBuffer))
        del self.historyLines[:-HISTORY_MAX_LINES]
        self.historyPosition = len(self.historyLines)
        self._set_line(b"")

    def _quit(self) -> None:
        if self.link is not None:
            self.link.quit()
        else:
            self._on_exit()

    # --- drawing ----------------------------------------------------------------

    def _prompt(self) -> tuple[str, str]:
        """The prompt as (plain text for measuring, text to write)."""
        if self._search is not None:
            failed = "failed " if self._search.failed else ""
            plain = f"({failed}reverse-i-search)'{clean(self._search.query)}': "
            return plain, plain
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
        colour = nick_colour(nick, self._style.colours_256)
        coloured = f"[\x1b[{colour}m{nick}\x1b[0m@\x1b[1m{room}\x1b[0m"
        coloured += f"\x1b[33m{state}\x1b[0m] " if state else "] "
        return plain, coloured

    def _render(self, above: str = "") -> None:
        """Redraw the input area, after printing ``above`` (complete lines) over it."""
        plain, coloured = self._prompt()
        self._prompt_shown = plain
        chars = [ch.decode("utf-8", "replace") for ch in self.lineBuffer]
        width_now = self._current_width()
        if width_now is not None:
            self._area.resized(width_now)
        text = self._area.draw(above, plain, coloured, chars, self.lineBufferIndex)
        self.terminal.write(text.encode("utf-8", "replace"))

    def _refresh_prompt(self) -> None:
        if not self._closing and self._prompt()[0] != self._prompt_shown:
            self._render()

    # --- FrontEnd ---------------------------------------------------------------

    def update(self, items: list[Item]) -> None:
        if self._closing:
            return
        nick = self.link.chat.nick if self.link is not None else None
        lines = self._renderer.lines(items, time.time(), nick)  # the date, for the reader
        above = "".join(line + "\r\n" for line in lines)
        if nick is not None and self._style.bell and any(rings_bell(i, nick) for i in items):
            self.terminal.write(BELL)
        if above or self._prompt()[0] != self._prompt_shown:
            self._render(above)

    def chat_done(self) -> None:
        self._closing = True
        if self._refresher.running:
            self._refresher.stop()
        # Leave the screen tidy: the input area erased, the shell prompt on its own line.
        self.terminal.write(self._area.erase().encode() + RESTORE_MODES)
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


class ChatServerProtocol(ServerProtocol):
    """insults' key parser, told two things it cannot know from single bytes: a read
    that is a lone ESC during a search is the Esc key that cancels it (not the start
    of a sequence still arriving: terminals send those in one write), and a read that
    holds a Tab and more is pasted text (ChatTerminal.pasting)."""

    def dataReceived(self, data: bytes) -> None:
        front = cast(ChatTerminal, self.terminalProtocol)
        if data == ESC and self.state == b"data" and front.searching:
            front.keystrokeReceived(ESC, None)
            return
        front.pasting = b"\t" in data and bool(data.strip(b"\t"))
        try:
            super().dataReceived(data)
        finally:
            front.pasting = False


def make_terminal_protocol(
    on_exit: Callable[[], None],
    clock: Callable[[], float],
    style: Style,
    saved_history: SavedHistory | None = None,
) -> ServerProtocol:
    """The insults protocol for stdio.StandardIO; its terminalProtocol (a ChatTerminal)
    exists once the transport is connected."""
    return ChatServerProtocol(ChatTerminal, on_exit, clock, style, saved_history)


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
