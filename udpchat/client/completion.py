"""Tab completion of the line being typed: nicks of the room and /commands.

The word before the cursor is completed: at the start of the line a nick becomes
"nick: " (how one addresses someone on IRC) and "/wh" becomes "/who "; elsewhere a nick
becomes "nick ". Tab again puts in the next candidate instead, round and round. Pure
string logic, no terminal: the terminal front end hands in the line and the cursor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from udpchat.chat import messages
from udpchat.client.commands import COMMANDS

#: What follows a nick completed at the start of the line.
ADDRESS_SUFFIX = ": "


@dataclass(frozen=True)
class Edit:
    """A line with its cursor (an index into ``line``)."""

    line: str
    cursor: int


def candidates(word: str, at_start: bool, nicks: Sequence[str]) -> list[str]:
    """The completions of ``word`` (what precedes them excluded), in order: commands
    for "/..." at the start of the line, otherwise the ``nicks`` that start with
    ``word`` ignoring case, in the order given (the roster's: recent speakers first)."""
    if at_start and word.startswith("/"):
        name = word[1:].lower()
        return [f"/{command}" for command in sorted(COMMANDS) if command.startswith(name)]
    folded = messages.fold_nick(word)
    return [nick for nick in nicks if messages.fold_nick(nick).startswith(folded)]


@dataclass
class _Run:
    start: int  # where the completed word starts
    after: str  # the line after the cursor, kept as is
    options: list[str]  # each with its suffix
    index: int
    shown: Edit  # what the last Tab produced: the next Tab continues from it


class TabCompletion:
    """Successive Tabs on one word (see module docstring). A Tab on a line other than
    the one the last Tab produced starts afresh, so no other key needs to reset it."""

    def __init__(self) -> None:
        self._run: _Run | None = None

    def complete(self, line: str, cursor: int, nicks: Sequence[str]) -> Edit | None:
        """The line after one Tab, or None when there is nothing to complete."""
        run = self._run
        if run is not None and run.shown == Edit(line, cursor):
            run.index = (run.index + 1) % len(run.options)
        else:
            run = self._start(line, cursor, nicks)
            if run is None:
                return None
        before = line[: run.start] + run.options[run.index]
        run.shown = Edit(before + run.after, len(before))
        self._run = run
        return run.shown

    def _start(self, line: str, cursor: int, nicks: Sequence[str]) -> _Run | None:
        start = line.rfind(" ", 0, cursor) + 1
        word, head, after = line[start:cursor], line[:start], line[cursor:]
        at_start = not head.strip(" ")
        found = candidates(word, at_start, nicks)
        if not found:
            self._run = None
            return None
        if at_start and word.startswith("/"):
            suffix = " "
        elif at_start:
            suffix = ADDRESS_SUFFIX
        else:
            suffix = " "  # "/msg bob " and nicks within a line
        if after.startswith(" "):
            suffix = suffix.rstrip(" ")
        options = [found_one + suffix for found_one in found]
        return _Run(start, after, options, 0, Edit(line, cursor))
