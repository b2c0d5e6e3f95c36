"""Run the reactor's timers on the monotonic clock.

Twisted schedules `callLater` by `reactor.seconds()`, which is `time.time()`
(twisted/twisted#2424, open since 2007). A step of the system clock then moves every
pending timer: stepped back by five minutes, the daemon's one timer (retransmissions,
keepalives, expiry) and the client's would wait five minutes longer; stepped forward,
they fire at once. The protocol core runs its timers on monotonic time
(udpchat.core.clock), and so must the reactor that wakes it. Both the daemon and the
client call `use_monotonic_clock` before they schedule anything.

The price is Twisted's own assumption that `reactor.seconds()` is Unix time: nothing
udpchat uses relies on it (its log timestamps come from `time.time()`), and udpchat's
own code reads `time.time()` wherever it means the date.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["use_monotonic_clock"]


def use_monotonic_clock(reactor: Any) -> None:
    """Make `reactor` schedule by `time.monotonic`; timers already pending keep their
    delays. Idempotent."""
    if reactor.seconds is time.monotonic:
        return
    shift = time.monotonic() - reactor.seconds()
    for call in reactor.getDelayedCalls():
        call.time += shift  # the same shift for all: the reactor's heap order holds
        call.seconds = time.monotonic
    reactor.seconds = time.monotonic
