"""Tests for udpchat.core.replay: WireGuard's known-answer sequence and properties."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udpchat.core.replay import (
    REJECT_AFTER_MESSAGES,
    WINDOW_BITS,
    WINDOW_SIZE,
    ReplayWindow,
)

T_LIM = WINDOW_SIZE + 1
RAM = REJECT_AFTER_MESSAGES

# Linux drivers/net/wireguard/selftest/counter.c, first block, numbered as there.
WIREGUARD_SEQUENCE: list[tuple[int, bool]] = [
    (0, True),  # 1
    (1, True),  # 2
    (1, False),  # 3
    (9, True),  # 4
    (8, True),  # 5
    (7, True),  # 6
    (7, False),  # 7
    (T_LIM, True),  # 8
    (T_LIM - 1, True),  # 9
    (T_LIM - 1, False),  # 10
    (T_LIM - 2, True),  # 11
    (2, True),  # 12
    (2, False),  # 13
    (T_LIM + 16, True),  # 14
    (3, False),  # 15
    (T_LIM + 16, False),  # 16
    (T_LIM * 4, True),  # 17
    (T_LIM * 4 - (T_LIM - 1), True),  # 18
    (10, False),  # 19
    (T_LIM * 4 - T_LIM, False),  # 20
    (T_LIM * 4 - (T_LIM + 1), False),  # 21
    (T_LIM * 4 - (T_LIM - 2), True),  # 22
    (T_LIM * 4 + 1 - T_LIM, False),  # 23
    (0, False),  # 24
    (RAM, False),  # 25
    (RAM - 1, True),  # 26
    (RAM, False),  # 27
    (RAM - 1, False),  # 28
    (RAM - 2, True),  # 29
    (RAM + 1, False),  # 30
    (RAM + 2, False),  # 31
    (RAM - 2, False),  # 32
    (RAM - 3, True),  # 33
    (0, False),  # 34
]


def _bulk_sequences() -> Iterator[tuple[str, list[tuple[int, bool]]]]:
    """Yield counter.c's bulk blocks, each run against a fresh window."""
    w = WINDOW_SIZE
    yield (
        "ascending 1..W, then 0 once",
        [(i, True) for i in range(1, w + 1)] + [(0, True), (0, False)],
    )
    yield (
        "ascending 2..W+1, then 1 once, 0 too old",
        [(i, True) for i in range(2, w + 2)] + [(1, True), (0, False)],
    )
    yield (
        "descending W..0",
        [(i, True) for i in range(w, -1, -1)],
    )
    yield (
        "descending W+1..1, then 0 too old",
        [(i, True) for i in range(w + 1, 0, -1)] + [(0, False)],
    )
    yield (
        "descending W..1, then W+1 new, 0 too old",
        [(i, True) for i in range(w, 0, -1)] + [(w + 1, True), (0, False)],
    )
    yield (
        "descending W..1, then 0, then W+1",
        [(i, True) for i in range(w, 0, -1)] + [(0, True), (w + 1, True)],
    )


def _run(sequence: list[tuple[int, bool]]) -> list[int]:
    """Feed a fresh window; return the 1-based numbers of the steps that fail."""
    window = ReplayWindow()
    failures = []
    for number, (counter, expected) in enumerate(sequence, start=1):
        if window.accept(counter) != expected:
            failures.append(number)
    return failures


def test_constants() -> None:
    """The window is 2048 bits, 1984 usable; REJECT is the WireGuard paper's value."""
    assert WINDOW_BITS == 2048
    assert WINDOW_SIZE == 1984
    assert REJECT_AFTER_MESSAGES == 2**64 - 2**13 - 1


def test_wireguard_known_answer_sequence() -> None:
    """Every step of WireGuard's counter self-test gives the same verdict here."""
    assert _run(WIREGUARD_SEQUENCE) == []


@pytest.mark.parametrize(
    "sequence", [s for _, s in _bulk_sequences()], ids=[n for n, _ in _bulk_sequences()]
)
def test_wireguard_bulk_sequences(sequence: list[tuple[int, bool]]) -> None:
    """WireGuard's bulk self-test blocks (full-window sweeps) pass unchanged."""
    assert _run(sequence) == []


def test_window_follows_the_highest_accepted_counter() -> None:
    """The window ends WINDOW_SIZE below the largest counter accepted so far: a
    smaller counter, or a rejected one past REJECT_AFTER_MESSAGES, does not move it."""
    window = ReplayWindow()
    top = 3 * WINDOW_BITS
    assert window.accept(top)
    assert window.accept(top - 100)
    assert not window.accept(RAM)
    assert not window.accept(top - WINDOW_SIZE - 1)
    assert window.accept(top - WINDOW_SIZE)


def test_rejected_replay_changes_nothing() -> None:
    """A replayed counter is refused every time, and refusing it marks nothing new."""
    window = ReplayWindow()
    assert window.accept(7)
    assert not window.accept(7)
    assert not window.accept(7)
    assert window.accept(6) and window.accept(8)


@pytest.mark.parametrize("counter", [-1, -(2**64), RAM, 2**64 - 1, 2**64, 2**80])
def test_out_of_range_counters_rejected(counter: int) -> None:
    """Negative counters and counters at or past REJECT_AFTER_MESSAGES never pass."""
    window = ReplayWindow()
    assert not window.accept(counter)
    assert not window.accept(counter)
    assert window.accept(0)  # the rejected counter did not slide the window


def test_jump_far_ahead_clears_whole_ring() -> None:
    """After a jump of more than the ring, old bits cannot make new counters look seen."""
    window = ReplayWindow()
    for i in range(WINDOW_BITS):
        assert window.accept(i)
    far = 10 * WINDOW_BITS
    assert window.accept(far)
    for i in range(far - WINDOW_SIZE, far):
        assert window.accept(i), i
    assert not window.accept(far - WINDOW_SIZE - 1)


# --- properties --------------------------------------------------------------


class _ModelWindow:
    """The window's specification as a set: obviously right, O(n) memory."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.highest: int | None = None

    def accept(self, counter: int) -> bool:
        if not 0 <= counter < REJECT_AFTER_MESSAGES or counter in self.seen:
            return False
        if self.highest is not None and counter < self.highest - WINDOW_SIZE:
            return False
        self.seen.add(counter)
        self.highest = counter if self.highest is None else max(self.highest, counter)
        return True


@st.composite
def _counter_runs(draw: st.DrawFn) -> list[int]:
    """Counters clustered around a base so window edges and slides are hit often."""
    base = draw(
        st.sampled_from([0, WINDOW_SIZE, 2**32, RAM - 3 * WINDOW_BITS]) | st.integers(0, RAM - 1)
    )
    edges = [0, 1, WINDOW_SIZE - 1, WINDOW_SIZE, WINDOW_SIZE + 1, WINDOW_BITS]
    offsets = st.integers(-3 * WINDOW_BITS, 3 * WINDOW_BITS) | st.sampled_from(
        edges + [-e for e in edges]
    )
    nearby = offsets.map(lambda offset: max(0, base + offset))
    return draw(st.lists(nearby | st.integers(0, 2**64 - 1), max_size=200))


@settings(max_examples=300)
@given(_counter_runs())
def test_matches_specification_model(counters: list[int]) -> None:
    """On any sequence, accept() agrees with the set-based specification.

    This covers: no counter accepted twice; any counter more than WINDOW_SIZE
    below the highest seen is rejected; every fresh counter within the window
    is accepted exactly once.
    """
    window, model = ReplayWindow(), _ModelWindow()
    for counter in counters:
        expected = model.accept(counter)
        assert window.accept(counter) == expected, counter


@settings(max_examples=300)
@given(_counter_runs())
def test_no_counter_accepted_twice(counters: list[int]) -> None:
    """Replaying an entire sequence after it was received accepts nothing."""
    window = ReplayWindow()
    accepted = [c for c in counters if window.accept(c)]
    assert len(accepted) == len(set(accepted))
    assert not any(window.accept(c) for c in counters)


@given(_counter_runs(), st.integers(1, 2**64))
def test_too_old_always_rejected(counters: list[int], lag: int) -> None:
    """A counter more than WINDOW_SIZE below the highest accepted never passes."""
    window = ReplayWindow()
    accepted = [counter for counter in counters if window.accept(counter)]
    if not accepted:
        return
    old = max(accepted) - WINDOW_SIZE - lag
    assert not window.accept(old)


@settings(max_examples=50)
@given(st.integers(0, RAM - 1), st.integers(0, 2**32))
def test_every_counter_in_window_accepted_once(top: int, seed: int) -> None:
    """After `top`, each of the WINDOW_SIZE counters below it passes once, in any order."""
    lags = list(range(1, WINDOW_SIZE + 1))
    random.Random(seed).shuffle(lags)
    window = ReplayWindow()
    assert window.accept(top)
    counters = [top - lag for lag in lags if top - lag >= 0]
    assert all(window.accept(c) for c in counters)
    assert not any(window.accept(c) for c in counters + [top])


@given(st.lists(st.integers(0, 2**64 - 1), max_size=50))
def test_accept_never_raises(counters: list[int]) -> None:
    """accept() returns a bool for every 64-bit counter, in any order."""
    window = ReplayWindow()
    for counter in counters:
        assert window.accept(counter) in (True, False)
