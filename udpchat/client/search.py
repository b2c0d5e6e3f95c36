"""Ctrl-R: search the input history backwards, as readline's reverse-i-search does.

Typing extends the query and shows the newest line that contains it (ignoring case);
Ctrl-R again goes on to an older one; Backspace shortens the query and searches again
from the newest. The terminal shows ``(reverse-i-search)'query': line`` and decides
what accepting or cancelling means. Pure: no terminal here.
"""

from __future__ import annotations

from collections.abc import Sequence


class HistorySearch:
    """One search through ``history`` (oldest first), begun while ``draft`` was typed."""

    def __init__(self, history: Sequence[str], draft: str) -> None:
        self.history = list(history)
        self.draft = draft
        self.query = ""
        self.index: int | None = None  # the match's place in history; None: none yet
        self.failed = False  # the query (or Ctrl-R once more) found nothing
        self._shown: set[str] = set()  # matches shown since the query last changed

    @property
    def line(self) -> str:
        """The line shown: the match, else the draft (until something matched)."""
        return self.draft if self.index is None else self.history[self.index]

    @property
    def cursor(self) -> int:
        """Where the cursor goes in ``line``: at the match, like readline."""
        if self.index is None or not self.query:
            return len(self.line)
        return max(0, self.line.casefold().find(self.query.casefold()))

    def type(self, text: str) -> None:
        """The query grew: the current match stays if it still contains it."""
        self.query += text
        self._shown.clear()
        self._search(len(self.history) - 1 if self.index is None else self.index)

    def backspace(self) -> None:
        """The query shrank: search again from the newest line."""
        self.query = self.query[:-1]
        self.index = None
        self.failed = False
        self._shown.clear()
        if self.query:
            self._search(len(self.history) - 1)

    def older(self) -> None:
        """Ctrl-R again: the next older line that contains the query and was not shown
        already (a line typed many times is found once)."""
        if self.index is None:
            self._search(len(self.history) - 1)
        else:
            self._search(self.index - 1)

    def _search(self, start: int) -> None:
        query = self.query.casefold()
        for index in range(start, -1, -1):
            line = self.history[index]
            if query in line.casefold() and line not in self._shown:
                self.index = index
                self.failed = False
                self._shown.add(line)
                return
        self.failed = True  # the last match (if any) stays shown, as in readline
