"""The input area of the terminal (prompt and the line being typed, wrapped over as
many rows as it needs): where it is on the screen and the text that redraws it.

Pure: the terminal front end (udpchat.client.terminal) writes what this returns, so
the arithmetic of wrapped rows and of resizes is tested without a terminal. The area
is redrawn as a whole each time: back up to its first row, erase to the end of the
screen, print any new chat lines, then the prompt and the line, and put the cursor in
its place.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

#: Narrower windows are treated as this wide (the prompt alone needs about this much).
MIN_WIDTH = 10


def char_width(ch: str) -> int:
    """Columns a character takes on a terminal (wide East Asian: 2, combining: 0)."""
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def text_width(text: str) -> int:
    return sum(char_width(ch) for ch in text)


class InputArea:
    """The input area's geometry (see module docstring)."""

    def __init__(self, width: int = 80) -> None:
        self.width = max(width, MIN_WIDTH)
        self.cursor_row = 0  # rows between the area's first row and the cursor
        self.cursor_offset = 0  # columns from the area's start to the cursor, unwrapped

    def resized(self, width: int) -> None:
        """The window is ``width`` columns wide now. The terminal has re-wrapped the
        area to it, as terminals that reflow do (tmux, VTE, kitty, iTerm2 ...): the
        cursor is as many rows below the area's start as the new width makes, not as
        the old one made, and the next redraw must back up that far, or rows of the
        old prompt stay behind. (A terminal that does not reflow, such as xterm, may
        then lose a chat line above the area instead.)"""
        width = max(width, MIN_WIDTH)
        if width != self.width:
            self.width = width
            self.cursor_row = self.cursor_offset // width

    def screen_cleared(self) -> None:
        """The screen was cleared and the cursor is at its top left corner."""
        self.cursor_row = 0

    def erase(self) -> str:
        """Back to the area's first row, and erase it and everything below."""
        up = f"\x1b[{self.cursor_row}A" if self.cursor_row else ""
        self.cursor_row = 0
        return up + "\r\x1b[J"

    def draw(
        self, above: str, prompt: str, prompt_written: str, chars: Sequence[str], cursor: int
    ) -> str:
        """The text that redraws the area: ``above`` (complete chat lines, each ending
        in CR LF) over it, then ``prompt_written`` (``prompt`` with colours), the
        characters of the line, and the cursor before ``chars[cursor]``."""
        start = self.erase()
        before = text_width(prompt) + text_width("".join(chars[:cursor]))
        total = text_width(prompt) + text_width("".join(chars))
        out = [start, above, prompt_written, "".join(chars)]
        if total % self.width == 0:
            out.append("\r\n")  # leave the "pending wrap" state at the right margin
        row, col = divmod(before, self.width)
        end_row = total // self.width
        if end_row > row:
            out.append(f"\x1b[{end_row - row}A")
        out.append("\r" + (f"\x1b[{col}C" if col else ""))
        self.cursor_row = row
        self.cursor_offset = before
        return "".join(out)
