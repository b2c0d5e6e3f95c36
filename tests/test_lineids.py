"""Tests for udpchat.chat.lineids: fresh line ids and the bounded memory of recent ones."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpchat.chat.lineids import HEX_ID_RE, RecentIds, new_line_id
from udpchat.chat.messages import Say


def test_new_line_ids_are_16_lowercase_hex_digits_and_differ() -> None:
    """A line id is 64 random bits as 16 lowercase hex digits, valid in a message;
    ids drawn one after the other do not repeat."""
    ids = [new_line_id() for _ in range(1000)]
    assert all(HEX_ID_RE.fullmatch(line_id) for line_id in ids)
    assert len(set(ids)) == len(ids)
    assert Say("x", ids[0]).line_id == ids[0]


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("0123456789abcdef", True),
        ("0123456789ABCDEF", False),  # lowercase only: one id, one spelling
        ("0123456789abcde", False),
        ("0123456789abcdef0", False),
        ("0123456789abcdeg", False),
    ],
)
def test_hex_id_form_is_exactly_16_lowercase_hex_digits(text: str, valid: bool) -> None:
    """HEX_ID_RE, the form of line ids and client ids, matches 16 lowercase hex digits
    and nothing else."""
    assert bool(HEX_ID_RE.fullmatch(text)) is valid


def test_recent_ids_tell_new_from_seen() -> None:
    """add() says whether an id is new; a seen id stays seen."""
    recent = RecentIds(3)
    assert recent.add("a") and recent.add("b")
    assert not recent.add("a")
    assert "a" in recent and "c" not in recent and len(recent) == 2


def test_recent_ids_forget_the_oldest_first() -> None:
    """Beyond max_ids, the id added first is forgotten (seeing it again does not make
    it younger), and is new again afterwards."""
    recent = RecentIds(2)
    recent.add("a")
    recent.add("b")
    assert not recent.add("a")  # still "a", "b": first in, first out
    recent.add("c")
    assert "a" not in recent and "b" in recent and "c" in recent
    assert recent.add("a")
    assert RecentIds(0).add("x") and len(RecentIds(0)) == 0
    with pytest.raises(ValueError):
        RecentIds(-1)


@given(st.integers(0, 8), st.lists(st.sampled_from("abcdefghij"), max_size=60))
def test_recent_ids_hold_exactly_the_last_distinct_ids(max_ids: int, adds: list[str]) -> None:
    """After any sequence of adds, the set holds the last ``max_ids`` ids that were new
    when added, and nothing else."""
    recent = RecentIds(max_ids)
    accepted: list[str] = []
    for line_id in adds:
        if recent.add(line_id):
            accepted.append(line_id)
    kept = accepted[-max_ids:] if max_ids else []
    assert len(recent) == len(kept)
    assert all(line_id in recent for line_id in kept)
