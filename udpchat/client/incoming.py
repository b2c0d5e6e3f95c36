"""Which of the server's messages the client shows, and how: chunked who/rooms answers
become one line each, and the room history the server replays after a reconnect is
hidden where it was already on screen. Sans-IO; each ChatClient owns one Incoming."""

from __future__ import annotations

from collections import Counter, deque

from udpchat import messages

#: Room lines remembered to recognise them in the history replayed after a reconnect.
SEEN_LINES_MAX = 500
#: Bound on who/rooms entries collected from chunks before they are shown as one line.
LISTING_MAX_ENTRIES = 10_000

_Key = tuple[str, str, str]  # room, nick, text


class Incoming:
    """Filters and merges server messages for display (see module docstring)."""

    def __init__(self) -> None:
        self._seen: deque[_Key] = deque(maxlen=SEEN_LINES_MAX)
        self._replayed: Counter[_Key] = Counter()
        self._who: list[str] = []
        self._rooms: list[messages.RoomCount] = []

    def shown_own_line(self, room: str, nick: str, text: str) -> None:
        """The user's own line was shown locally (it comes back in history too)."""
        self._seen.append((room, nick, text))

    def reconnected(self) -> None:
        """A new session was welcomed: the history that follows repeats, at least in
        part, what is already on screen. Counted, so a line said twice shows twice."""
        self._replayed = Counter(self._seen)

    def filter(self, msg: messages.ServerMessage) -> messages.ServerMessage | None:
        """What to show for ``msg``: itself, a merged listing, or None (nothing yet,
        or already shown)."""
        is_line = isinstance(msg, messages.SayOut | messages.MeOut)
        if not (is_line and msg.history):  # type: ignore[union-attr]
            self._replayed.clear()  # the replay ends at the first live message
        if isinstance(msg, messages.SayOut | messages.MeOut):
            key = (msg.room, msg.nick, msg.text)
            if msg.history and self._replayed[key] > 0:
                self._replayed[key] -= 1
                return None
            if not msg.history:
                self._seen.append(key)
            return msg
        if isinstance(msg, messages.WhoList):
            if len(self._who) < LISTING_MAX_ENTRIES:
                self._who.extend(msg.nicks)
            if msg.more:
                return None
            nicks, self._who = tuple(self._who), []
            return messages.WhoList(msg.room, nicks, False)
        if isinstance(msg, messages.RoomList):
            if len(self._rooms) < LISTING_MAX_ENTRIES:
                self._rooms.extend(msg.rooms)
            if msg.more:
                return None
            rooms, self._rooms = tuple(self._rooms), []
            return messages.RoomList(rooms, False)
        return msg
