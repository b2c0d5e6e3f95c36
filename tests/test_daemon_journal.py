"""Specification of the daemon's log output: journald's native format when stdout is
the journal, the operator's log_level, Twisted's chatter below info, and addresses
as operators write them."""

from __future__ import annotations

import io
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon import ChatClient, Daemon
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from udpchat.daemon.logs import (
    JournalObserver,
    LevelFilter,
    daemon_observer,
    journal_stream_matches,
)
from udpchat.daemon.udp import format_addr


def journal_stream_of(path: Path) -> str:
    """$JOURNAL_STREAM as systemd sets it for a stdout that is `path`."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


@pytest.fixture
def daemon(tmp_path: Path, subprocess_env: dict[str, str]) -> Iterator[Daemon]:
    d = Daemon(tmp_path, subprocess_env, interface="::", log_level="debug")
    d.log_file.touch()
    d.env = {**subprocess_env, "JOURNAL_STREAM": journal_stream_of(d.log_file)}
    yield d
    d.kill()


def test_with_stdout_on_the_journal_every_line_has_its_priority_and_no_timestamp(
    daemon: Daemon,
) -> None:
    """When $JOURNAL_STREAM names stdout, each line starts with its sd-daemon priority
    (<6> info, <7> debug: Twisted's own lines) and carries no timestamp (journald has
    its own); an IPv4 member of a dual-stack daemon is logged as IPv4."""
    daemon.start()
    client = ChatClient(("127.0.0.1", daemon.port), daemon.psk, "bob")
    client.wait_for(lambda m: m["t"] == "welcome")
    client.close()
    assert daemon.stop() == 0
    lines = daemon.log().splitlines()
    assert lines and all(re.match(r"<[2-7]>", line) for line in lines), lines
    assert not any(re.match(r"<\d>\d{4}-\d\d-\d\d", line) for line in lines)
    assert f"<6>Listening on UDP [::]:{daemon.port}; pre-shared key: " in daemon.log()
    assert f"<7>ChatProtocol starting on {daemon.port}" in lines
    assert f"<7>(UDP Port {daemon.port} Closed)" in lines
    assert any(line.startswith("<6>bob joined lobby from 127.0.0.1:") for line in lines)
    assert "::ffff:" not in daemon.log()


def test_a_start_up_failure_on_the_journal_is_an_error(
    tmp_path: Path, twistd_argv: list[str], subprocess_env: dict[str, str]
) -> None:
    """The one line of a failed start carries <3> when stderr is the journal, so
    `journalctl -p err` finds why the daemon did not start."""
    (tmp_path / "bad.ini").write_text("[server]\nport = eighty\n")
    stderr = tmp_path / "stderr"
    with open(stderr, "w") as fh:
        env = {**subprocess_env, "JOURNAL_STREAM": journal_stream_of(stderr)}
        result = subprocess.run(
            [*twistd_argv, "-n", "--pidfile=", "udpchat", "--config", "bad.ini"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=fh,
            timeout=30,
        )
    assert result.returncode == 78
    [line] = stderr.read_text().splitlines()
    assert line.startswith("<3>udpchat: bad.ini: [server] port = 'eighty' is not a port")


# --- which output, which lines -------------------------------------------------------------


def event(namespace: str, level: LogLevel, text: str, **fields: Any) -> dict[str, Any]:
    return {
        "log_namespace": namespace,
        "log_level": level,
        "log_format": text,
        "log_time": 0.0,
        **fields,
    }


def test_twisted_chatter_counts_as_debug_and_the_level_can_change_live() -> None:
    """At info, Twisted's own info lines (legacy log.msg, twisted.* loggers) are held
    back while udpchat's, stdout's and Twisted's warnings pass; at debug everything
    passes, Twisted's chatter marked debug."""
    seen: list[dict[str, Any]] = []
    log_filter = LevelFilter(seen.append, LogLevel.info)
    chatter = [
        event("log_legacy", LogLevel.info, "ChatProtocol starting on 12345"),
        event("twisted.internet.base", LogLevel.info, "Main loop terminated."),
    ]
    kept = [
        event("udpchat", LogLevel.info, "bob joined lobby"),
        event("stdout", LogLevel.info, "printed"),
        event("twisted.internet.defer", LogLevel.critical, "Unhandled error in Deferred"),
        event("log_legacy", LogLevel.warn, "a legacy warning"),
    ]
    for item in chatter + kept:
        log_filter(item)
    assert seen == kept
    seen.clear()
    log_filter.level = LogLevel.debug
    log_filter(chatter[0])
    assert [e["log_level"] for e in seen] == [LogLevel.debug]
    seen.clear()
    log_filter.level = LogLevel.error
    for item in kept:
        log_filter(item)
    assert [e["log_format"] for e in seen] == ["Unhandled error in Deferred"]


def test_journal_lines_carry_sd_daemon_priorities_on_every_line() -> None:
    """error <3>, warning <4>, info <6>, debug <7>; a traceback keeps the prefix on
    each of its lines (journald reads it per line)."""
    out = io.StringIO()
    journal = JournalObserver(out)
    journal(event("udpchat", LogLevel.error, "error {n}", n=1))
    journal(event("udpchat", LogLevel.warn, "warning"))
    journal(event("udpchat", LogLevel.info, "info"))
    journal(event("udpchat", LogLevel.debug, "debug"))
    assert out.getvalue() == "<3>error 1\n<4>warning\n<6>info\n<7>debug\n"
    out.seek(0)
    out.truncate()
    try:
        raise ValueError("boom")
    except ValueError:
        failure = Failure()
    journal(event("udpchat", LogLevel.critical, "bug", log_failure=failure))
    lines = out.getvalue().splitlines()
    assert lines[0] == "<2>bug" and len(lines) > 2
    assert all(line.startswith("<2>") for line in lines)
    assert lines[-1] == "<2>builtins.ValueError: boom"


def test_journal_stream_must_name_the_very_stream(tmp_path: Path) -> None:
    """Only the device:inode of the descriptor itself counts: a stdout redirected to a
    file or pipe inherits $JOURNAL_STREAM but is not the journal."""
    ours, other = tmp_path / "ours", tmp_path / "other"
    ours.touch()
    other.touch()
    with open(ours) as fh:
        fd = fh.fileno()
        assert journal_stream_matches({"JOURNAL_STREAM": journal_stream_of(ours)}, fd)
        assert not journal_stream_matches({"JOURNAL_STREAM": journal_stream_of(other)}, fd)
        assert not journal_stream_matches({"JOURNAL_STREAM": "garbage"}, fd)
        assert not journal_stream_matches({}, fd)


def test_the_observer_follows_twistds_options(tmp_path: Path) -> None:
    """twistd -n on the journal: journal lines; on a terminal or file: twistd's
    classic lines with timestamps; --logfile (or daemonized): that file; --syslog,
    --logger, or no twistd at all: twistd's own observer is left alone."""
    stdout_path = tmp_path / "stdout"
    with open(stdout_path, "w") as stdout:
        journal = {"JOURNAL_STREAM": journal_stream_of(stdout_path)}
        nodaemon = {"nodaemon": True, "logfile": None, "syslog": False, "logger": None}

        on_journal = daemon_observer(nodaemon, LogLevel.info, stdout, journal)
        assert on_journal is not None and isinstance(on_journal.observer, JournalObserver)

        classic = daemon_observer(nodaemon, LogLevel.info, stdout, {})
        assert classic is not None
        classic(event("udpchat", LogLevel.info, "classic line"))
        stdout.flush()
        assert re.match(
            r"\d{4}-\d\d-\d\dT.* \[udpchat#info\] classic line\n", stdout_path.read_text()
        )

    logfile = tmp_path / "twistd.log"
    to_file = daemon_observer(
        {**nodaemon, "nodaemon": False, "logfile": str(logfile)}, LogLevel.info, stdout, {}
    )
    assert to_file is not None
    to_file(event("udpchat", LogLevel.info, "in the file"))
    assert "[udpchat#info] in the file" in logfile.read_text()

    assert daemon_observer({**nodaemon, "syslog": True}, LogLevel.info, stdout, journal) is None
    assert daemon_observer({**nodaemon, "logger": object()}, LogLevel.info, stdout, {}) is None
    assert daemon_observer(None, LogLevel.info, stdout, journal) is None


@pytest.mark.parametrize(
    ("addr", "shown"),
    [
        (("::ffff:127.0.0.1", 5000, 0, 0), "127.0.0.1:5000"),
        (("::FFFF:192.0.2.7", 5000), "192.0.2.7:5000"),
        (("192.0.2.7", 5000), "192.0.2.7:5000"),
        (("2001:db8::7", 5000, 0, 0), "[2001:db8::7]:5000"),
        (("::ffff:0:1", 5000), "[::ffff:0:1]:5000"),  # not a mapped IPv4 address
    ],
)
def test_addresses_are_logged_as_operators_write_them(addr: tuple[Any, ...], shown: str) -> None:
    """An IPv4 client of a dual-stack socket (::ffff:a.b.c.d) is logged as the IPv4
    address it is, like allow/deny match it; IPv6 addresses get brackets."""
    assert format_addr(addr) == shown
