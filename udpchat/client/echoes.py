"""The echo of a private line (``-> *bob* hi``), held back until the server took it.

A /msg to a nick nobody holds is refused by the server (``no-such-nick``), and the
user should then see only that error, not first an echo that looks like success. The
protocol has no request ids, and the server's error normally travels in the same
datagram as its acknowledgement of the msg. So an echo waits until its msg is
acknowledged and then ECHO_GRACE_S more (an error sent in a separate datagram a
moment later still catches it); a ``no-such-nick`` meanwhile cancels the oldest
waiting echo to a nick its text names (the reference server says "no such nick:
NICK"), or else the oldest waiting echo (errors come in the order of the msgs, but a
msg that arrived gets no answer at all). Sans-IO; ChatClient owns one.
"""

from __future__ import annotations

from dataclasses import dataclass

from udpchat.client.display import OwnLine, mentions

#: How long an acknowledged msg's echo still waits for an error to cancel it.
ECHO_GRACE_S = 0.2


@dataclass
class _Echo:
    seq: int  # the outbox line's typing order
    line: OwnLine
    due_at: float | None = None  # set once the msg is acknowledged


class PrivateEchoes:
    """Echoes of private lines waiting to be shown, in typing order."""

    def __init__(self) -> None:
        self.waiting: list[_Echo] = []  # read-only outside: empty, nothing to do

    def add(self, seq: int, line: OwnLine) -> None:
        """A msg (outbox line ``seq``) was queued; ``line`` is its echo."""
        self.waiting.append(_Echo(seq, line))

    def acknowledged(self, seq: int, now: float) -> None:
        """The server acknowledged msg ``seq``: its echo shows after the grace time."""
        for echo in self.waiting:
            if echo.seq == seq and echo.due_at is None:
                echo.due_at = now + ECHO_GRACE_S

    def refused(self, text: str = "") -> None:
        """The server answered a msg with ``no-such-nick`` saying ``text``: cancel the
        echo of that msg (see module docstring)."""
        for index, echo in enumerate(self.waiting):
            if echo.line.to is not None and mentions(text, echo.line.to):
                del self.waiting[index]
                return
        if self.waiting:
            del self.waiting[0]

    def forget(self, seq: int) -> None:
        """Msg ``seq`` will never be delivered (reported as such): no echo."""
        self.waiting = [echo for echo in self.waiting if echo.seq != seq]

    def clear(self) -> None:
        self.waiting.clear()

    def due(self, now: float) -> list[OwnLine]:
        """The echoes to show now, in order: an echo waits for those before it."""
        out: list[OwnLine] = []
        while self.waiting and (due_at := self.waiting[0].due_at) is not None and due_at <= now:
            out.append(self.waiting.pop(0).line)
        return out

    def next_deadline(self) -> float | None:
        """When ``due`` may next have something (None: nothing is acknowledged)."""
        if self.waiting:
            return self.waiting[0].due_at
        return None
