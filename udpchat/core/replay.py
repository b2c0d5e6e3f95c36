"""Anti-replay window for the 64-bit message counters of one session key.

This is the RFC 6479 bitmap algorithm exactly as WireGuard implements it
(Linux ``drivers/net/wireguard/receive.c: counter_validate``): a ring of
64-bit words, cleared a whole word at a time as the window slides, so no
bitmap is ever shifted. Keeping WireGuard's semantics lets its known-answer
self-test (``selftest/counter.c``) run unchanged against this class.

Window geometry. The ring holds ``WINDOW_BITS`` = 2048 bits, but the word that
holds the newest counter is only partly "behind" it, so -- as in WireGuard --
one word is redundant and the usable window is ``WINDOW_SIZE`` = 2048 - 64 =
1984: once counter ``m`` is the highest accepted, a counter ``c`` is accepted
iff it was never accepted before and ``m - WINDOW_SIZE <= c``. Counters at or
above ``REJECT_AFTER_MESSAGES`` are always rejected, so a key must be retired
before its counter space runs out.

Use: authenticate the datagram first, *then* call :meth:`ReplayWindow.accept`.
Marking an unauthenticated counter would let anyone slide the window forward
and make the genuine traffic look old.
"""

from __future__ import annotations

WORD_BITS = 64
"""Bits per ring word (WireGuard's ``BITS_PER_LONG`` on 64-bit machines)."""

WINDOW_BITS = 2048
"""Total bits in the ring (WireGuard's ``COUNTER_BITS_TOTAL``); a power of two."""

WINDOW_SIZE = WINDOW_BITS - WORD_BITS
"""How far behind the highest accepted counter a counter may still be accepted
(WireGuard's ``COUNTER_WINDOW_SIZE``): 1984."""

REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1
"""First counter value that is never accepted (the WireGuard paper's
``Reject-After-Messages``, 2**64 - 2**13 - 1). Linux now uses
``U64_MAX - COUNTER_WINDOW_SIZE - 1`` so that its u64 arithmetic cannot wrap;
Python ints cannot wrap, and the paper's smaller value leaves that margin too."""

_RING_WORDS = WINDOW_BITS // WORD_BITS
_RING_MASK = _RING_WORDS - 1
_WORD_SHIFT = WORD_BITS.bit_length() - 1
_BIT_MASK = WORD_BITS - 1

assert WINDOW_BITS & (WINDOW_BITS - 1) == 0, "ring index uses a mask"
assert WINDOW_SIZE >= 1024, "the wire protocol promises at least 1024"


class ReplayWindow:
    """Which counters of one receiving key have been seen (RFC 6479).

    Internally, as in WireGuard, counters are stored plus one so that the
    initial state (``_top == 0``, empty ring) means "nothing accepted yet".
    """

    __slots__ = ("_ring", "_top")

    def __init__(self) -> None:
        self._ring: list[int] = [0] * _RING_WORDS
        # One more than the highest counter accepted so far; 0 = none yet.
        self._top = 0

    def accept(self, counter: int) -> bool:
        """Mark ``counter`` as seen; return False if it must be dropped.

        Returns False for a replay, for a counter more than ``WINDOW_SIZE``
        below the highest accepted one, and for a counter outside
        ``[0, REJECT_AFTER_MESSAGES)``. Call it only after the datagram
        carrying ``counter`` has authenticated.
        """
        # The state in locals: every datagram a session receives comes here (a
        # client's every room line).
        if not 0 <= counter < REJECT_AFTER_MESSAGES:
            return False
        shifted = counter + 1
        top = self._top
        if shifted + WINDOW_SIZE < top:
            return False
        ring = self._ring
        index = shifted >> _WORD_SHIFT
        if shifted > top:
            # Slide forward: zero the words the window moves into (at most the whole
            # ring), then the newest counter becomes the top.
            index_current = top >> _WORD_SHIFT
            if index != index_current:
                for i in range(1, min(index - index_current, _RING_WORDS) + 1):
                    ring[(index_current + i) & _RING_MASK] = 0
            self._top = shifted
        slot = index & _RING_MASK
        bit = 1 << (shifted & _BIT_MASK)
        word = ring[slot]
        if word & bit:
            return False
        ring[slot] = word | bit
        return True
