"""Log floods against the real daemon (`twistd -n udpchat`) on loopback: whatever a
key holder repeats, the daemon writes a bounded number of log lines and its periodic
summary counts the rest.

Each flood runs as fast as the daemon answers, for a bounded count (at most
FLOOD_S seconds): far more than the limits let through, a second or so of the floods
that before the limits wrote 135 to 3,600 lines/s (benchmarks/log_floods.py measures
them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Daemon
from floods import FLOODS, lines_of, suppressed

from udpchat.chat.server import ServerSettings

FLOOD_S = 1.5
#: The daemon's defaults: per session a burst, then one line per interval; in all,
#: at most so many lines a minute.
BURST = ServerSettings.session_log_burst
INTERVAL_S = ServerSettings.session_log_interval_s
PER_MINUTE = ServerSettings.log_lines_per_minute


@pytest.fixture
def daemon(tmp_path: Path, subprocess_env: dict[str, str]) -> Iterator[Daemon]:
    d = Daemon(tmp_path, subprocess_env, log_rejects_interval=1)
    yield d
    d.kill()


def flood(daemon: Daemon, name: str, count: int) -> tuple[int, float, str]:
    """Run one flood against a fresh daemon, stop it (which writes a last summary);
    return what the flood did, how long it took and the daemon's log."""
    daemon.start()
    started = time.monotonic()
    actions = FLOODS[name](daemon.address, daemon.psk, FLOOD_S, count)
    elapsed = time.monotonic() - started
    assert daemon.stop() == 0
    log = daemon.log()
    assert "Traceback" not in log
    return actions, elapsed, log


def per_session_bound(elapsed: float) -> int:
    """The most lines one session may cause in `elapsed` seconds (+1 for rounding)."""
    return BURST + math.ceil(elapsed / INTERVAL_S) + 1


@pytest.mark.parametrize("name", ["rename", "move", "refused"])
def test_a_member_repeating_a_logged_command_gets_a_few_lines_and_a_count(
    daemon: Daemon, name: str
) -> None:
    """Renames (/nick), room moves (/join, /part) and hellos for a nick in use, in a
    loop: every one is carried out (or refused) as usual, but the daemon writes only
    the session's burst of such lines, far under its minute's limit; the summary
    counts every other one."""
    actions, elapsed, log = flood(daemon, name, count=150)  # within the core's message burst
    assert actions == 150
    lines = lines_of(log, name)
    assert 1 <= lines <= per_session_bound(elapsed) <= PER_MINUTE
    assert suppressed(log)[name] == actions - lines, "the summary counts the rest"


def test_a_session_moving_between_two_ports_on_every_datagram(daemon: Daemon) -> None:
    """A member whose datagrams come from two source ports in turn moves on each
    (before the limits: about 4,000 lines/s); now a few lines and a count."""
    datagrams, elapsed, log = flood(daemon, "roamed", count=3000)
    lines = lines_of(log, "roamed")
    assert 1 <= lines <= per_session_bound(elapsed)
    assert suppressed(log)["roamed"] >= min(500, datagrams // 4)


def test_members_coming_and_going_are_limited_in_total(daemon: Daemon) -> None:
    """Many sessions, each joining and leaving once (each from its own address): the
    per-session limit does not apply to lines a session causes once, the total
    does: at most log_lines_per_minute join and leave lines, the rest counted."""
    sessions, elapsed, log = flood(daemon, "join", count=80)
    # What the flood must reach is more lines than the minute's limit, not all 80 of
    # its sessions in FLOOD_S: on a machine running two suites at once it got 75.
    assert 2 * sessions > PER_MINUTE, "more joins and leaves than a minute allows"
    lines = lines_of(log, "join")
    assert lines <= PER_MINUTE * math.ceil(elapsed / 60)
    held_back = suppressed(log)
    assert lines + held_back["join"] + held_back["leave"] == 2 * sessions
