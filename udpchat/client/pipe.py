"""Pipe mode (stdin is not a terminal): for scripts.

Every input line is sent in order (commands work too; a line starting with '/' that is
not a command is an error, '//' escapes it; /quit acts as end of input, and the lines
after it are not read). Every event is printed as one plain line
on stdout and flushed at once. The user's own lines are NOT printed: a script already
knows what it wrote, and its output then holds only what others said, notices and
errors. On end of input the client waits until the server acknowledged every line,
says bye and exits 0; if a line was refused or could not be delivered it is printed
("!!! not delivered: LINE") and the exit status is 1.
With --timestamps each line starts with its time; README lists the formats.

What the client says about reaching the server (udpchat.client.reachability: "no
answer from HOST:PORT ...") goes to stderr instead, so that stdout holds the chat.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import interfaces
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

from udpchat.client.display import PLAIN, Item, Renderer, Style, clean
from udpchat.client.link import ChatLink
from udpchat.client.reachability import Diagnosis

#: An input line longer than this cannot be a valid chat line: it is skipped (reported)
#: instead of being buffered without bound.
MAX_INPUT_LINE_BYTES = 16 * 1024
#: Lines submitted per batch, so datagrams go out while a long input is read.
BATCH_LINES = 64


@implementer(interfaces.IHalfCloseableProtocol)
class PipeFrontEnd(Protocol):
    """stdin lines in, plain event lines out (see module docstring).

    Implements IHalfCloseableProtocol so that end of input does not close stdout:
    events keep being printed while the last lines are delivered.
    """

    transport: Any  # stdio.StandardIO: also a producer (pause/resume reading)

    def __init__(
        self,
        on_exit: Callable[[], None],
        clock: Callable[[], float],
        style: Style = PLAIN,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        """``warn`` writes one line on stderr (default: "udpchat-client: LINE")."""
        self.link: ChatLink | None = None
        self._warn = warn or _warn
        self._on_exit = on_exit
        self._clock = clock
        self._buffer = b""
        self._skipping = False  # inside an over-long line, until its newline
        self._line_number = 0
        self._eof = False
        self._finished = False
        self._paused = False
        self._stdout_gone = False
        self._feeding = False
        self._renderer = Renderer(style)  # plain: never colours

    def attach(self, link: ChatLink) -> None:
        """Start reading: only now can lines go anywhere. The link becomes the producer
        of our stdout: when more than the transport's buffer (64 KiB) waits there
        because the reader stopped reading, the link stops reading from the network
        until it drains (see ChatLink.pauseProducing)."""
        self.link = link
        if self.transport is not None:
            self.transport.registerProducer(link, True)
        self._feed()

    # --- stdin -------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        self._feed()

    def readConnectionLost(self) -> None:
        self._eof = True
        self._feed()

    def writeConnectionLost(self) -> None:
        # Nobody reads our output any more (`| head`): keep delivering the input.
        self._stdout_gone = True

    def _feed(self) -> None:
        """Submit complete lines while the client has room; pause stdin otherwise."""
        link = self.link
        if link is None or self._finished or self._feeding:
            return
        self._feeding = True  # submit() shows output, and update() calls us again
        try:
            while link.chat.room_for_input() and not link.chat.done:
                lines = self._take(BATCH_LINES)
                if not lines:
                    break
                link.submit(lines)
            more = b"\n" in self._buffer or bool(self._eof and self._buffer)
            if more != self._paused and self.transport is not None:
                # Backpressure: stop reading stdin while the outbox is full.
                self._paused = more
                if more:
                    self.transport.pauseProducing()
                else:
                    self.transport.resumeProducing()
            if self._eof and not more and not self._finished and not link.chat.done:
                self._finished = True
                link.finish()
        finally:
            self._feeding = False

    def _take(self, limit: int) -> list[str]:
        """Up to ``limit`` complete input lines, decoded (bad ones reported, skipped)."""
        lines: list[str] = []
        while len(lines) < limit:
            raw = self._next_line()
            if raw is None:
                break
            line = self._decode(raw)
            if line is not None:
                lines.append(line)
        return lines

    def _next_line(self) -> bytes | None:
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                if len(self._buffer) > MAX_INPUT_LINE_BYTES:
                    self._too_long()
                    self._skipping = True
                    self._buffer = b""
                if self._eof and self._buffer:
                    raw, self._buffer = self._buffer, b""  # last line without newline
                    return None if self._skipping else raw
                return None
            raw, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
            if self._skipping:
                self._skipping = False
                continue
            if len(raw) > MAX_INPUT_LINE_BYTES:
                self._too_long()
                continue
            return raw

    def _too_long(self) -> None:
        self._line_number += 1
        assert self.link is not None
        self.link.chat.reject_input(f"input line {self._line_number} is far too long; skipped")

    def _decode(self, raw: bytes) -> str | None:
        self._line_number += 1
        try:
            return raw.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            assert self.link is not None
            self.link.chat.reject_input(f"input line {self._line_number} is not UTF-8; skipped")
            return None

    # --- stdout ------------------------------------------------------------------

    def update(self, items: list[Item]) -> None:
        if items:
            shown: list[Item] = []
            for item in items:
                if isinstance(item, Diagnosis):
                    self._warn(clean(item.text))
                else:
                    shown.append(item)
            lines = self._renderer.lines(shown, self._clock())
            if lines and not self._stdout_gone and self.transport is not None:
                text = "\n".join(lines) + "\n"
                self.transport.write(text.encode("utf-8", "replace"))
        if self._buffer or self._eof or self._paused:
            self._feed()  # the outbox may have room again (else: nothing to feed)

    def chat_done(self) -> None:
        if self._stdout_gone or self.transport is None:
            self._on_exit()
        else:
            self.transport.loseConnection()  # connectionLost follows once stdout drained

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._on_exit()


def _warn(text: str) -> None:
    print(f"udpchat-client: {text}", file=sys.stderr, flush=True)
