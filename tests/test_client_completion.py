"""Line-editing helpers of the terminal, as pure logic: Tab completion of nicks and
/commands (cycling on repeated Tabs) and Ctrl-R's reverse history search."""

from __future__ import annotations

from udpchat.client.completion import Edit, TabCompletion, candidates
from udpchat.client.search import HistorySearch

ROOM = ["carol", "bob", "Bea", "alice"]  # as the roster gives them: recent speakers first


def tabs(line: str, times: int, nicks: list[str] = ROOM, cursor: int | None = None) -> list[str]:
    """The line after each of ``times`` Tabs, starting from ``line``."""
    completion = TabCompletion()
    edit = Edit(line, len(line) if cursor is None else cursor)
    shown = []
    for _ in range(times):
        result = completion.complete(edit.line, edit.cursor, nicks)
        assert result is not None
        edit = result
        shown.append(edit.line)
    return shown


def test_a_nick_at_the_start_of_the_line_is_addressed() -> None:
    """Tab after "b": the first nick starting with b (ignoring case), then ": "."""
    assert tabs("b", 1) == ["bob: "]


def test_repeated_tab_cycles_through_the_candidates_and_round() -> None:
    """Each further Tab puts in the next candidate, in the roster's order, and after
    the last the first again."""
    assert tabs("b", 3) == ["bob: ", "Bea: ", "bob: "]


def test_a_nick_within_a_line_gets_a_space() -> None:
    """Elsewhere in the line a nick is followed by a space, not a colon; what follows
    the cursor stays."""
    assert tabs("thanks al", 1) == ["thanks alice "]
    completion = TabCompletion()
    edit = completion.complete("ask c and me", 5, ROOM)
    assert edit == Edit("ask carol and me", 9)  # no double space: one was there


def test_commands_complete_at_the_start() -> None:
    """A slash and a few letters complete to a command and a space; the nick after
    /msg completes like any nick within a line."""
    assert tabs("/wh", 1) == ["/who "]
    assert tabs("/m", 2) == ["/me ", "/msg "]
    assert tabs("/msg a", 1) == ["/msg alice "]
    assert candidates("/", True, ROOM)[:3] == ["/help", "/join", "/me"]


def test_nothing_to_complete() -> None:
    """A word nothing starts with, or an unknown command, leaves the line alone."""
    assert TabCompletion().complete("zed", 3, ROOM) is None
    assert TabCompletion().complete("/zap", 4, ROOM) is None
    assert candidates("x", False, []) == []


def test_a_changed_line_starts_a_new_completion() -> None:
    """After typing something else, Tab completes the new word instead of cycling."""
    completion = TabCompletion()
    first = completion.complete("b", 1, ROOM)
    assert first == Edit("bob: ", 5)
    again = completion.complete("bob: hi c", 9, ROOM)
    assert again == Edit("bob: hi carol ", 14)


def test_empty_tab_offers_every_nick() -> None:
    """Tab on an empty line goes through the room's nicks, recent speakers first."""
    assert tabs("", 4) == ["carol: ", "bob: ", "Bea: ", "alice: "]


HISTORY = ["an apple a day", "banana split", "Apple pie", "cherry"]


def test_search_finds_the_newest_line_containing_the_query() -> None:
    """Typing shows the newest line holding what was typed so far, ignoring case, with
    the cursor at the match."""
    search = HistorySearch(HISTORY, "draft")
    assert search.line == "draft"
    search.type("an")
    assert (search.line, search.cursor) == ("banana split", 1)
    search.type("a")
    assert (search.line, search.cursor) == ("banana split", 1)
    search = HistorySearch(HISTORY, "draft")
    search.type("PP")
    assert (search.line, search.cursor) == ("Apple pie", 1)
    assert not search.failed


def test_ctrl_r_again_goes_to_older_lines() -> None:
    """Ctrl-R again: the next older match; past the oldest the search fails and the
    last match stays shown."""
    search = HistorySearch(HISTORY, "")
    search.type("app")
    search.older()
    assert (search.line, search.cursor) == ("an apple a day", 3)
    search.older()
    assert search.failed and search.line == "an apple a day"


def test_backspace_searches_again_from_the_newest() -> None:
    """A shorter query is searched from the newest line again."""
    search = HistorySearch(HISTORY, "")
    search.type("applx")
    assert search.failed
    search.backspace()
    assert search.line == "Apple pie" and not search.failed
    search.backspace()
    search.backspace()
    search.backspace()
    search.backspace()
    assert search.query == "" and search.line == ""


def test_repeats_are_skipped() -> None:
    """The same line typed twice is found once: Ctrl-R moves to a different one."""
    search = HistorySearch(["hello", "other", "hello"], "")
    search.type("o")
    assert search.index == 2
    search.older()
    assert search.line == "other"
    search.older()
    assert search.failed and search.line == "other"
