"""The daemon's log output: the operator's log_level, Twisted's own chatter moved
below info, and journald's native format when stdout is the journal.

twistd builds its log observer (stdout, a file, syslog) from its command line; the tap
hands it this module's observer instead (as the application's ILogObserver), built
from the same options, so the level filter applies wherever the lines go.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from typing import IO, Any

from twisted.logger import (
    ILogObserver,
    LogEvent,
    LogLevel,
    eventAsText,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer  # type: ignore[import-untyped]

#: The config's log_level values (udpchat.daemon.config.LOG_LEVELS) as Twisted levels.
LEVELS: dict[str, LogLevel] = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
}

#: sd-daemon(3) / syslog priorities of Twisted's levels, written as "<N>" line prefixes.
PRIORITIES: dict[LogLevel, int] = {
    LogLevel.debug: 7,
    LogLevel.info: 6,
    LogLevel.warn: 4,
    LogLevel.error: 3,
    LogLevel.critical: 2,
}


def journal_stream_matches(environ: Mapping[str, str], fd: int) -> bool:
    """True if `fd` is the stream systemd connected to the journal ($JOURNAL_STREAM is
    "device:inode" of it). A redirected stdout (a file, a pipe) keeps the variable but
    has another inode, and gets the classic format."""
    try:
        device, inode = (int(part) for part in environ.get("JOURNAL_STREAM", "").split(":"))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def is_twisted_chatter(event: LogEvent) -> bool:
    """Twisted's own info lines ("ChatProtocol starting on 12345", "(UDP Port 12345
    Closed)", "twistd 26.10 starting up", "Main loop terminated"): no operator acts on
    them, so they count as debug. Its warnings and errors keep their level."""
    if event.get("log_level") != LogLevel.info:
        return False
    namespace = str(event.get("log_namespace", ""))
    # "log_legacy": twisted.python.log.msg, which the reactor's ports still use.
    return namespace == "log_legacy" or namespace.startswith("twisted.")


@implementer(ILogObserver)
class LevelFilter:
    """Passes on events at or above `level` (changeable while running); Twisted's
    chatter (is_twisted_chatter) is passed on as debug."""

    def __init__(self, observer: Callable[[LogEvent], None], level: LogLevel) -> None:
        self.observer = observer
        self.level = level

    def __call__(self, event: LogEvent) -> None:
        if is_twisted_chatter(event):
            event = {**event, "log_level": LogLevel.debug}
        if event.get("log_level", LogLevel.info) >= self.level:
            self.observer(event)


@implementer(ILogObserver)
class JournalObserver:
    """Writes each event as lines "<priority>text": journald stores the priority
    (`journalctl -p err` finds errors) and its own timestamp, so none is written."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, event: LogEvent) -> None:
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        if not text:
            return
        prefix = f"<{PRIORITIES.get(event.get('log_level', LogLevel.info), 6)}>"
        # journald reads the prefix per line: every line of a traceback keeps it.
        self._stream.write("".join(f"{prefix}{line}\n" for line in text.rstrip("\n").split("\n")))
        self._stream.flush()


def _rotate_on_sigusr1(log_file: LogFile) -> None:
    """What twistd does for its own log file: SIGUSR1 rotates it (unless the signal
    is already taken)."""
    if signal.getsignal(signal.SIGUSR1):
        return

    def rotate(number: int, frame: object) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(log_file.rotate)

    signal.signal(signal.SIGUSR1, rotate)


def daemon_observer(
    twistd: Mapping[str, Any] | None,
    level: LogLevel,
    stdout: IO[str],
    environ: Mapping[str, str] | None = None,
) -> LevelFilter | None:
    """The observer twistd should log to, given its options (`twistd`), or None to
    leave twistd's own: --syslog and --logger are the operator's explicit choice, and
    without twistd's options (makeService called directly) nothing is installed.

    `stdout` must be the real standard output, taken before twistd redirects it into
    the log."""
    if twistd is None or twistd.get("syslog") or twistd.get("logger"):
        return None
    logfile = twistd.get("logfile") or ""
    inner: Callable[[LogEvent], None]
    if twistd.get("nodaemon") and logfile in ("", "-"):
        environ = os.environ if environ is None else environ
        try:
            journal = journal_stream_matches(environ, stdout.fileno())
        except (OSError, ValueError, AttributeError):
            journal = False  # a stream without a descriptor is not the journal
        inner = JournalObserver(stdout) if journal else textFileLogObserver(stdout)
    elif logfile == "-":
        return None  # twistd itself refuses: a daemon cannot log to stdout
    else:
        log_file = LogFile.fromFullPath(logfile or "twistd.log")  # twistd's default
        _rotate_on_sigusr1(log_file)
        inner = textFileLogObserver(log_file)
    return LevelFilter(inner, level)
