"""The input area's arithmetic: how a prompt and a long line wrap, where the cursor
goes, and how far a redraw backs up, also after the window was resized while a long
draft wrapped (no stale prompt rows)."""

from __future__ import annotations

import re

from udpchat.client.inputarea import InputArea, text_width

PROMPT = "[alice@lobby] "  # 14 columns


def moves(text: str) -> list[str]:
    """The cursor moves in ``text``: "up N", "right N", "CR", "LF", "erase"."""
    found = []
    for match in re.finditer(r"\x1b\[(\d*)([ACJ])|\r|\n", text):
        if match.group(0) == "\r":
            found.append("CR")
        elif match.group(0) == "\n":
            found.append("LF")
        elif match.group(2) == "J":
            found.append("erase")
        else:
            found.append(f"{'up' if match.group(2) == 'A' else 'right'} {match.group(1)}")
    return found


def test_a_short_line_stays_on_one_row() -> None:
    """Prompt and line on the first row; the cursor after what is typed."""
    area = InputArea(80)
    text = area.draw("", PROMPT, PROMPT, list("hello"), 5)
    assert text.startswith("\r\x1b[J" + PROMPT + "hello")
    assert moves(text) == ["CR", "erase", "CR", "right 19"]
    assert area.cursor_row == 0


def test_a_long_line_wraps_and_the_next_redraw_backs_up_over_it() -> None:
    """120 characters after a 14-column prompt take two rows of 80; with the cursor at
    the end the next redraw first goes up one row to the area's start."""
    area = InputArea(80)
    area.draw("", PROMPT, PROMPT, list("x" * 120), 120)
    assert area.cursor_row == 1
    assert moves(area.erase()) == ["up 1", "CR", "erase"]
    area.draw("", PROMPT, PROMPT, list("x" * 120), 10)  # cursor moved to the first row
    assert area.cursor_row == 0


def test_a_line_ending_at_the_margin_leaves_the_pending_wrap() -> None:
    """A line that fills its row exactly is followed by CR LF, so the terminal's
    "pending wrap" state does not swallow the next cursor move."""
    area = InputArea(20)
    text = area.draw("", PROMPT, PROMPT, list("x" * 6), 6)
    assert moves(text) == ["CR", "erase", "CR", "LF", "CR"]
    assert area.cursor_row == 1


def test_after_narrowing_the_redraw_backs_up_over_the_rewrapped_rows() -> None:
    """A terminal that reflows re-wraps the area to the new width: 134 columns were
    two rows at 80 and are four at 40, and the next redraw must back up three rows,
    not one, or the old prompt rows stay on the screen."""
    area = InputArea(80)
    area.draw("", PROMPT, PROMPT, list("x" * 120), 120)
    area.resized(40)
    assert moves(area.erase()) == ["up 3", "CR", "erase"]
    area.draw("", PROMPT, PROMPT, list("x" * 120), 120)
    area.resized(200)  # wider again: one row
    assert area.erase().startswith("\r")


def test_wide_and_combining_characters_are_measured_in_columns() -> None:
    """Wide characters take two columns and combining marks none."""
    assert text_width("日本") == 4
    assert text_width("e\u0301") == 1
    area = InputArea(20)
    area.draw("", PROMPT, PROMPT, list("日本語"), 3)  # 14 + 6 = 20: the margin
    assert area.cursor_row == 1 and area.cursor_offset == 20


def test_lines_above_are_printed_before_the_prompt() -> None:
    """New chat lines go where the area was; the area follows below them."""
    area = InputArea(80)
    area.draw("", PROMPT, PROMPT, list("draft"), 5)
    text = area.draw("<bob> hi\r\n", PROMPT, PROMPT, list("draft"), 5)
    assert text.index("<bob> hi") < text.index(PROMPT)
