"""The daemon's memory: the budget its settings imply, and giving memory back to the
system once many sessions have ended.

The budget (docs/ARCHITECTURE.md, "Memory budget") is what the daemon may hold at
most, by construction: a fixed part, a part per member (its send queue and receive
buffer, bounded in bytes by the core, and the session itself) and the rooms'
history. etc/udpchat.service sets MemoryMax= from it for the shipped max_members.

Freed memory does not go back to the system by itself: CPython's small-object
allocator and glibc's malloc keep it for reuse, so a daemon that once held a few
hundred busy sessions kept their memory for good (issue 9). glibc's malloc_trim()
returns the free parts of its heap; MemoryReturn calls it after many sessions ended.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable
from dataclasses import dataclass

from udpchat.chat.rules import HISTORY_BYTES_PER_ROOM, IDLE_ROOMS_KEPT
from udpchat.chat.server import ServerSettings
from udpchat.core.limits import ProtocolConfig

KIB = 1024
MIB = 1024 * KIB

#: What the daemon holds however its members behave: the interpreter, Twisted and
#: cryptography (an empty daemon is about 45 MB of RSS), plus the tables bounded by
#: constants rather than by members: up to 1,024 half-open sessions (about 8 KiB
#: each with their candidate keys), the replay cache of message 1 (4,096), the
#: handshake rate limiter (4,096 addresses), the line ids (8,192), the log limits.
#: Rounded up, with room for the allocator's fragmentation.
FIXED_BYTES = 72 * MIB
#: What one established member costs besides its send queue and receive buffer: the
#: session (keys of up to two epochs, timers, replay windows), the member and its
#: indexes in the rules, its log bucket. Measured: 10,000 idle sessions cost about
#: 5 KiB each (benchmarks/fanout.py --idle-sessions); rounded up to cover a rekey
#: in progress (candidate key sets) and its room's key.
SESSION_BYTES = 16 * KIB


@dataclass(frozen=True)
class MemoryBudget:
    """The most the daemon holds under a configuration, in bytes, by part."""

    max_members: int
    fixed_bytes: int
    per_member_bytes: int  # send queue + receive buffer + the session itself
    history_bytes: int  # every room that can keep a history, full

    @property
    def members_bytes(self) -> int:
        return self.max_members * self.per_member_bytes

    @property
    def total_bytes(self) -> int:
        return self.fixed_bytes + self.members_bytes + self.history_bytes


def memory_budget(settings: ServerSettings) -> MemoryBudget:
    """The budget `settings` imply: each member's byte-bounded queues, the history of
    every room that may exist (one per member at most, plus the empty ones kept),
    and the fixed part."""
    protocol: ProtocolConfig = settings.protocol_config()
    per_member = protocol.send_queue_bytes + protocol.receive_buffer_bytes + SESSION_BYTES
    rooms = settings.max_members + IDLE_ROOMS_KEPT
    history = rooms * HISTORY_BYTES_PER_ROOM if settings.history_lines else 0
    return MemoryBudget(settings.max_members, FIXED_BYTES, per_member, history)


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's malloc_trim(0), or None where there is none (musl, macOS, ...)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


MALLOC_TRIM = _malloc_trim()


def resident_bytes(pid: int | str = "self") -> int | None:
    """The resident set size of a process (Linux /proc), or None where unknown."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


#: Sessions that must have ended since the last trim (counted from the most there
#: were) before the next one: trimming walks the whole heap (milliseconds for a few
#: hundred MB), so a member coming and going does not pay it.
TRIM_AFTER_SESSIONS_ENDED = 16


class MemoryReturn:
    """Gives freed memory back to the system after many sessions ended: `check` is
    called periodically with the number of sessions; after TRIM_AFTER_SESSIONS_ENDED
    fewer than the most seen since the last trim, it collects garbage and trims the
    malloc heap. Without malloc_trim only the collection happens."""

    def __init__(self, trim: Callable[[], object] | None = MALLOC_TRIM) -> None:
        self._trim = trim
        self._peak = 0
        self.trims = 0

    def check(self, sessions: int) -> bool:
        """Trim if enough sessions ended; True if it did."""
        self._peak = max(self._peak, sessions)
        if self._peak - sessions < TRIM_AFTER_SESSIONS_ENDED:
            return False
        self._peak = sessions
        gc.collect()
        if self._trim is not None:
            self._trim()
        self.trims += 1
        return True
