"""The real daemon's memory under attack: within its budget, and given back
(issue 9, finding 3). benchmarks/memory_attack.py runs the same with 254 members."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon import Daemon
from memory_attack import run_attack

from udpchat.chat.rules import HISTORY_BYTES_PER_ROOM
from udpchat.chat.server import ServerSettings
from udpchat.core.limits import TESTING_SHORT_IDLE_ENV
from udpchat.daemon.memory import (
    FIXED_BYTES,
    MIB,
    SESSION_BYTES,
    TRIM_AFTER_SESSIONS_ENDED,
    MemoryReturn,
    memory_budget,
)
from udpchat.daemon.service import MEMORY_CHECK_INTERVAL_S

ATTACKERS = 32
MAX_MEMBERS = 64
HISTORY_LINES = 50
IDLE_TIMEOUT_S = 1.5
#: What the daemon may keep once every attacking session expired, beyond where it
#: started: the history of their rooms (kept by design, bounded) and this much that
#: the allocators keep for reuse (fragmentation).
RETURN_MARGIN_BYTES = 12 * MIB
#: Tables bounded by constants that grow a little with any traffic (rate limiter,
#: replay cache, line ids, log limits).
TABLES_SLACK_BYTES = 8 * MIB


@pytest.fixture
def daemon(tmp_path: Path, subprocess_env: dict[str, str]) -> Iterator[Daemon]:
    env = {**subprocess_env, TESTING_SHORT_IDLE_ENV: "1"}
    d = Daemon(
        tmp_path,
        env,
        max_members=MAX_MEMBERS,
        history_lines=HISTORY_LINES,
        idle_timeout=IDLE_TIMEOUT_S,
        log_rejects_interval=1,
    )
    yield d
    d.kill()


def test_memory_under_attack_stays_in_budget_and_is_given_back(daemon: Daemon) -> None:
    """Members that fill their rooms' history with the costliest lines, then stop
    acknowledging, replay whole histories into their send queues and stuff the
    daemon's receive buffers out of order: the daemon grows by no more than the
    budget of that many members (send queue, receive buffer, session, a room's
    history each), stays under the budget its max_members implies, and once their
    sessions expired it is back near where it started, history aside."""
    began = time.monotonic()
    daemon.start()
    assert daemon.proc is not None
    time.sleep(0.5)
    budget = memory_budget(ServerSettings(max_members=MAX_MEMBERS, history_lines=HISTORY_LINES))
    report = run_attack(
        daemon.address,
        daemon.psk,
        daemon.proc.pid,
        ATTACKERS,
        HISTORY_LINES,
        hold_s=1.0,
        settle_s=IDLE_TIMEOUT_S + 2 * MEMORY_CHECK_INTERVAL_S + 1.0,
        stuffed=120,  # beyond the receive budget (about 78 of 1,000 bytes), and light
    )
    log = daemon.log()
    assert daemon.stop() == 0
    assert "receive-buffer-full" in log, "the receive buffers were stuffed to their budget"
    their_history = ATTACKERS * HISTORY_BYTES_PER_ROOM
    growth = report.peak_rss - report.start_rss
    assert growth <= ATTACKERS * budget.per_member_bytes + their_history + TABLES_SLACK_BYTES
    assert report.peak_rss <= budget.total_bytes
    assert "gave memory back" in log
    assert report.end_rss - report.start_rss <= their_history + RETURN_MARGIN_BYTES, (
        f"RSS {report.start_rss / MIB:.1f} MiB at the start, {report.peak_rss / MIB:.1f} "
        f"at its highest, {report.end_rss / MIB:.1f} after"
    )
    assert time.monotonic() - began < 60.0


def test_budget_is_fixed_plus_each_members_queues_plus_every_rooms_history() -> None:
    """The budget max_members implies: the fixed part, each member's send queue and
    receive buffer (the core's byte bounds) and session, and a full history for one
    room per member plus the empty rooms kept (none without history)."""
    settings = ServerSettings(max_members=256)
    protocol = settings.protocol_config()
    budget = memory_budget(settings)
    per_member = protocol.send_queue_bytes + protocol.receive_buffer_bytes + SESSION_BYTES
    assert budget.per_member_bytes == per_member
    assert budget.total_bytes == FIXED_BYTES + 256 * per_member + 512 * HISTORY_BYTES_PER_ROOM
    assert budget.total_bytes == 228 * MIB  # etc/udpchat.service and the docs say so
    no_history = memory_budget(ServerSettings(max_members=256, history_lines=0))
    assert no_history.total_bytes == FIXED_BYTES + 256 * per_member


def test_memory_is_trimmed_only_after_many_sessions_ended() -> None:
    """MemoryReturn trims once TRIM_AFTER_SESSIONS_ENDED fewer sessions exist than the
    most seen since the last trim, not for members coming and going; without
    malloc_trim (not glibc) it only collects garbage."""
    trims: list[int] = []
    memory = MemoryReturn(trim=lambda: trims.append(1))
    assert not memory.check(100)
    assert not memory.check(100 - TRIM_AFTER_SESSIONS_ENDED + 1)
    assert not memory.check(100)
    assert memory.check(100 - TRIM_AFTER_SESSIONS_ENDED)
    assert trims == [1]
    assert not memory.check(100 - TRIM_AFTER_SESSIONS_ENDED)  # counted from there
    assert memory.check(0)
    assert MemoryReturn(trim=None).check(0) is False
    without = MemoryReturn(trim=None)
    without.check(TRIM_AFTER_SESSIONS_ENDED)
    assert without.check(0) and without.trims == 1
