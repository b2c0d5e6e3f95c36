"""Who is in the user's room, as far as the client has seen: for Tab completion.

Filled from the member list (``who``, asked for on every join in terminal mode) and
kept current from the room's join, part and nick notices and from who speaks. Nicks
that spoke last come first, as in IRC clients: the one you answer is usually the one
who just spoke. Sans-IO; ChatClient owns one.
"""

from __future__ import annotations

import itertools

from udpchat.chat import messages

#: Bound on the nicks kept (a room's member list is bounded by the server anyway).
ROSTER_MAX_NICKS = 10_000


_ROOM_LINES = (messages.SayOut, messages.MeOut)


class Roster:
    """The nicks of one room, with when each last spoke (see module docstring)."""

    def __init__(self) -> None:
        self.room: str | None = None
        self._nicks: dict[str, tuple[str, int]] = {}  # folded -> (as spelled, last spoke)
        self._clock = itertools.count(1)

    def nicks(self) -> list[str]:
        """The room's nicks: who spoke most recently first, then the rest by name."""
        entries = sorted(self._nicks.items(), key=lambda kv: (-kv[1][1], kv[0]))
        return [spelled for _, (spelled, _) in entries]

    def __contains__(self, nick: str) -> bool:
        return messages.fold_nick(nick) in self._nicks

    def enter(self, room: str, nick: str) -> None:
        """The user is now in ``room`` as ``nick``: an empty list but for the user."""
        self.room = room
        self._nicks.clear()
        self._add(nick, spoke=False)

    def update(self, msg: messages.ServerMessage) -> None:
        """Follow one message from the server (the user's own joins are ``enter``)."""
        if isinstance(msg, _ROOM_LINES):  # most messages: first
            if msg.room == self.room and msg.ts is None:  # live lines only
                self._add(msg.nick, spoke=True)
        elif isinstance(msg, messages.WhoList) and msg.room == self.room and not msg.more:
            known = {messages.fold_nick(n) for n in msg.nicks}
            for folded in [f for f in self._nicks if f not in known]:
                del self._nicks[folded]
            for nick in msg.nicks:
                if messages.fold_nick(nick) not in self._nicks:
                    self._add(nick, spoke=False)
        elif isinstance(msg, messages.JoinNotice) and msg.room == self.room:
            self._add(msg.nick, spoke=False)
        elif isinstance(msg, messages.PartNotice) and msg.room == self.room:
            self._nicks.pop(messages.fold_nick(msg.nick), None)
        elif isinstance(msg, messages.NickNotice):
            old = self._nicks.pop(messages.fold_nick(msg.old), None)
            if old is not None:
                self._nicks[messages.fold_nick(msg.new)] = (msg.new, old[1])

    def _add(self, nick: str, spoke: bool) -> None:
        folded = messages.fold_nick(nick)
        if folded not in self._nicks and len(self._nicks) >= ROSTER_MAX_NICKS:
            return
        last = next(self._clock) if spoke else self._nicks.get(folded, (nick, 0))[1]
        self._nicks[folded] = (nick, last)
