"""The optional chat log (``--log FILE``, config key ``log``): what the user was shown,
one line per event, each line as pipe mode prints it after its RFC 3339 UTC time
(``2026-12-01T21:27:37Z <alice> hi``; a line from a room's history with the time it
was said).

The log holds private conversation, so a new file is created mode 0600 (exactly,
whatever the umask: fchmod on the descriptor, never a chmod by path); an existing
file is appended to as it is. It is opened before the client connects, so a path
that cannot be used is a setup error (exit status 2) instead of a surprise later.
Every batch of lines is written at once, unbuffered, so a client killed with -9 has
logged all it showed. A write that fails later (a full disk) is reported once on
screen and the log is closed; the chat goes on.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING

from udpchat.client.display import Item, Problem, Renderer, Style

if TYPE_CHECKING:  # a type only: importing link would import Twisted before it is used
    from udpchat.client.link import FrontEnd

LOG_FILE_MODE = 0o600
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
# O_NONBLOCK: a named pipe at the path makes open fail (no reader) or return at
# once instead of hanging; fstat then refuses anything but a regular file.
_OPEN_FLAGS = _APPEND_FLAGS | os.O_NONBLOCK


class ChatLogError(Exception):
    """The log file cannot be used; the message is one line naming it and the fix."""


def _open(name: str) -> int:
    """A descriptor appending to ``name``; a new file is made mode 0600."""
    try:
        fd = os.open(name, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, LOG_FILE_MODE)
    except FileExistsError:
        return os.open(name, _OPEN_FLAGS)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != LOG_FILE_MODE:
            os.fchmod(fd, LOG_FILE_MODE)  # the umask can only take bits away
    except OSError:
        os.close(fd)
        raise
    return fd


def open_chat_log(path: str | os.PathLike[str], history: bool = True) -> ChatLog:
    """Open (or create) the log at ``path``; ChatLogError if it cannot be used.
    ``history`` False leaves lines replayed from history out, as on screen."""
    name = os.fspath(path)
    try:
        fd = _open(name)
    except FileNotFoundError:
        folder = os.path.dirname(os.path.abspath(name))
        raise ChatLogError(
            f"cannot create log file {name}: folder {folder} does not exist;"
            " fix: create it, or give another path"
        ) from None
    except IsADirectoryError:
        raise ChatLogError(
            f"log file {name} is a folder; fix: give the path of a file in it"
        ) from None
    except PermissionError:
        raise ChatLogError(
            f"cannot write log file {name} (permission denied); fix: give a path you can write"
        ) from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a named pipe nobody reads
            raise ChatLogError(
                f"log file {name} is a named pipe; fix: give the path of a regular file"
            ) from None
        raise ChatLogError(f"cannot open log file {name}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ChatLogError(f"log file {name} is not a regular file; fix: give a file's path")
    os.set_blocking(fd, True)
    return ChatLog(fd, name, history)


class ChatLog:
    """An open chat log (see module docstring); ``record`` writes a batch of items."""

    def __init__(self, fd: int, name: str, history: bool = True) -> None:
        self.fd: int | None = fd
        self.name = name
        self._renderer = Renderer(Style(colour=False, timestamps="iso", history=history))

    def record(self, items: list[Item], now: float) -> list[Item]:
        """Append the lines of ``items``; returns what to show besides them: nothing,
        or once, a Problem saying the log failed (it is then closed)."""
        if self.fd is None or not items:
            return []
        data = "".join(line + "\n" for line in self._renderer.lines(items, now))
        try:
            view = memoryview(data.encode("utf-8", "replace"))
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            self.close()
            return [Problem(f"cannot write log file {self.name}: {exc.strerror}; logging stopped")]
        return []

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


class LoggedFrontEnd:
    """A front end for ChatLink that logs what it passes on to the real one: the log
    sees exactly the items the screen (or stdout) gets, in the same order."""

    def __init__(self, front: FrontEnd, log: ChatLog, clock: Callable[[], float]) -> None:
        self.front = front
        self.log = log
        self._clock = clock

    def update(self, items: list[Item]) -> None:
        problems = self.log.record(items, self._clock())
        self.front.update(items + problems)

    def chat_done(self) -> None:
        self.log.close()
        self.front.chat_done()
