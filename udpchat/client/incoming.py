"""Which of the server's messages the client shows, and how: chunked who/rooms answers
become one line each, and a chat line whose line id was already shown (a line its
sender re-sent after a reconnect, or room history replayed after a reconnect or a
/join) is hidden. Sans-IO; each ChatClient owns one Incoming."""

from __future__ import annotations

from udpchat.chat import messages
from udpchat.chat.lineids import RecentIds

#: Line ids remembered (the user's own lines' included) to recognise lines shown before.
SEEN_LINE_IDS_MAX = 4096
#: Bound on who/rooms entries collected from chunks before they are shown as one line.
LISTING_MAX_ENTRIES = 10_000


#: Messages with a line id (a tuple, not a union: isinstance of a union built anew
#: for every message was a tenth of this module's work).
_LINES = (messages.SayOut, messages.MeOut, messages.PrivateMsgIn)


class Incoming:
    """Filters and merges server messages for display (see module docstring)."""

    def __init__(self) -> None:
        self._seen = RecentIds(SEEN_LINE_IDS_MAX)
        self._who: list[str] = []
        self._rooms: list[messages.RoomCount] = []

    def own_line(self, line_id: str) -> None:
        """The user typed a say/me named ``line_id``: it must never be shown as coming
        from the server (the room history the server replays contains it)."""
        self._seen.add(line_id)

    def filter(self, msg: messages.ServerMessage) -> messages.ServerMessage | None:
        """What to show for ``msg``: itself, a merged listing, or None (nothing yet,
        or already shown)."""
        if isinstance(msg, _LINES):
            return msg if self._seen.add(msg.line_id) else None
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
