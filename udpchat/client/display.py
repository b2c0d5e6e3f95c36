"""How the client shows things: one line of text per server message or local event.

Every string that came from the network goes through ``clean`` before it is shown, so
whoever holds the group key (and can therefore impersonate the server) still cannot
send terminal escape sequences, newlines or bidi overrides to a user's terminal.
Plain style (pipes, scripts) has no colours and no timestamps on live lines; terminal
style adds [HH:MM] timestamps, a stable colour per nick (from 61 colours on a
terminal with 256, else 12) and highlights the lines that mention the user or are
private. A line replayed from a room's history always carries the time it was said
(see ``Style``), so a script can tell it from a live line; README's client section
lists every format.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal, cast

from udpchat.chat import messages

# C0, DEL and C1 controls (ESC, CSI, BEL, newlines ...), unpaired surrogates (cannot be
# encoded), line/paragraph separators (some terminals break lines on them) and bidi
# controls (they can make a line read as something else: "trojan source").
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
REPLACEMENT = "\ufffd"

# Basic 16-colour SGR codes only, readable on dark and light backgrounds alike (no
# black/white/grey), so every terminal shows them.
NICK_COLOURS = (31, 32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96)
#: The label of the nick hash (BLAKE2b "person"): changing it changes every colour.
_NICK_HASH_LABEL = b"udpchat-nick"
_RESET = "\x1b[0m"
_BOLD = "1"
_DIM = "2"
_ERROR = "1;31"
#: An item that cannot be shown is reported at most once per this long (the others
#: are counted), so a server sending nothing else cannot flood the screen with it.
UNSHOWABLE_REPORT_INTERVAL_S = 60.0
#: How much of the exception's text such a report quotes.
UNSHOWABLE_DETAIL_MAX_CHARS = 120


#: ``clean(text)``: ``text`` with every control/bidi/surrogate character replaced by
#: U+FFFD. A partial of the pattern's sub, not a function: twice per line shown, and
#: a call that stays in C.
clean: Callable[[str], str] = functools.partial(_UNSAFE.sub, REPLACEMENT)


def _cube_colours() -> tuple[int, ...]:
    """The colours of the xterm 256-colour cube that are readable on black and on white
    (contrast at least 4.5 and 2.5, WCAG's formula) and not greyish: 61 of them."""
    levels = (0, 95, 135, 175, 215, 255)

    def linear(level: int) -> float:
        c = level / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    found = []
    for r in range(6):
        for g in range(6):
            for b in range(6):
                if max(r, g, b) - min(r, g, b) < 2:
                    continue  # grey or nearly: hard to tell apart
                lum = 0.2126 * linear(levels[r]) + 0.7152 * linear(levels[g])
                lum += 0.0722 * linear(levels[b])
                if (lum + 0.05) / 0.05 >= 4.5 and 1.05 / (lum + 0.05) >= 2.5:
                    found.append(16 + 36 * r + 6 * g + b)
    return tuple(found)


#: Nick colours on a terminal with 256 colours (SGR 38;5;N).
NICK_COLOURS_256 = _cube_colours()


@functools.lru_cache(maxsize=1024)  # per line shown; a room has far fewer nicks
def nick_colour(nick: str, colours_256: bool = False) -> str:
    """The SGR code of ``nick``'s colour: the same for every run and every client, and
    the same for nicks that differ only in case (they are the same user). From
    NICK_COLOURS_256 when the terminal has 256 colours, else from NICK_COLOURS."""
    key = messages.fold_nick(nick).encode("utf-8", "replace")
    digest = hashlib.blake2b(key, digest_size=8, person=_NICK_HASH_LABEL).digest()
    number = int.from_bytes(digest, "big")
    if colours_256:
        return f"38;5;{NICK_COLOURS_256[number % len(NICK_COLOURS_256)]}"
    return str(NICK_COLOURS[number % len(NICK_COLOURS)])


def mentions(text: str, nick: str) -> bool:
    """Whether ``text`` says ``nick`` as a word of its own, ignoring case: "alice:",
    "hi Alice!" and "@alice" do, "malice" and "alice_" do not."""
    pattern = r"(?<![\w-])" + re.escape(nick) + r"(?![\w-])"
    return re.search(pattern, text, re.IGNORECASE) is not None


def is_alert(item: Item, nick: str) -> bool:
    """Whether ``item`` is for the user ``nick`` in particular: someone else's line
    that mentions the nick, or a private line from someone else."""
    if isinstance(item, messages.PrivateMsgIn):
        return messages.fold_nick(item.sender) != messages.fold_nick(nick)
    if isinstance(item, messages.SayOut | messages.MeOut):
        return messages.fold_nick(item.nick) != messages.fold_nick(nick) and mentions(
            item.text, nick
        )
    return False


def rings_bell(item: Item, nick: str) -> bool:
    """An alert as it happens (a line from the room's history is one no more)."""
    return is_alert(item, nick) and getattr(item, "ts", None) is None


# --- local things to show (the server's messages are udpchat.chat.messages classes) -------


@dataclass(frozen=True)
class OwnLine:
    """Something this user said: shown locally because the server never echoes it."""

    nick: str
    text: str
    action: bool = False  # /me
    to: str | None = None  # /msg NICK


@dataclass(frozen=True)
class Notice:
    """A status line from the client itself: shown as ``-!- text``."""

    text: str


@dataclass(frozen=True)
class Problem:
    """Something went wrong: shown as ``!!! text``."""

    text: str


@dataclass(frozen=True)
class Info:
    """Help text and the like: shown as is."""

    text: str


Item = messages.ServerMessage | OwnLine | Notice | Problem | Info


#: How lines are stamped with their time (--timestamps, config key ``timestamps``):
#: "iso" puts RFC 3339 UTC time (2026-12-01T21:27:37Z) before every line, "hhmm" the
#: local [HH:MM], "off" nothing before live lines (history lines get [HH:MM] anyway).
Timestamps = Literal["iso", "hhmm", "off"]
TIMESTAMP_FORMATS: tuple[Timestamps, ...] = ("iso", "hhmm", "off")


def timestamps_format(text: str) -> Timestamps:
    """``text`` as a Timestamps value; ValueError if it is none of TIMESTAMP_FORMATS."""
    if text not in TIMESTAMP_FORMATS:
        raise ValueError(text)
    return cast(Timestamps, text)


@dataclass(frozen=True)
class Style:
    """How to render: ``colour`` uses SGR codes (``colours_256``: nick colours from
    the 256-colour palette); ``timestamps`` says what goes before each line (see
    Timestamps): a line replayed from history carries the time it was said (ISO with
    "iso", else [HH:MM], with the date when not from today), a live line the time it
    is shown (nothing with "off"); ``history`` False leaves history lines out
    altogether (--no-history). ``highlight`` shows the lines that are alerts
    (``is_alert``) with the sender in reverse video (colour only), and ``bell`` rings
    the terminal bell for them (terminal mode)."""

    colour: bool = False
    timestamps: Timestamps = "off"
    history: bool = True
    colours_256: bool = False
    highlight: bool = False
    bell: bool = False


PLAIN = Style()
TERMINAL = Style(colour=True, timestamps="hhmm", highlight=True, bell=True)


def terminal_style(env: Mapping[str, str]) -> Style:
    """TERMINAL as the environment allows: no colours with NO_COLOR or TERM=dumb (but
    timestamps and the bell), 256 nick colours when TERM or COLORTERM says so."""
    term = env.get("TERM", "")
    if env.get("NO_COLOR") or term == "dumb":
        return Style(timestamps="hhmm", bell=True)
    many = "256color" in term or env.get("COLORTERM", "") in ("truecolor", "24bit")
    return replace(TERMINAL, colours_256=many)


@dataclass(frozen=True)
class ViewOptions:
    """What the user chose about the display (flags and config file), before the mode
    (terminal or pipe) is known; ``style`` turns it into the Style for that mode."""

    colours: bool = True  # in a terminal only, and not with NO_COLOR or TERM=dumb
    timestamps: Timestamps | None = None  # None: "hhmm" in a terminal, "off" in a pipe
    history: bool = True
    bell: bool = True  # terminal mode: for mentions and private lines (--no-bell)

    def style(self, interactive: bool, env: Mapping[str, str]) -> Style:
        if not interactive:
            return Style(False, self.timestamps or "off", self.history)
        base = terminal_style(env)
        if not self.colours:
            base = replace(base, colour=False, highlight=False)
        return replace(
            base, timestamps=self.timestamps or "hhmm", history=self.history, bell=self.bell
        )


class _Painter:
    """Applies a Style: colours only when asked, and always on cleaned text."""

    def __init__(self, style: Style) -> None:
        self.style = style

    def sgr(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}{_RESET}" if self.style.colour and text else text

    def nick(self, nick: str, bold: bool = False, reverse: bool = False) -> str:
        if not self.style.colour:
            return clean(nick)  # no colour to look up (pipe mode: every line)
        code = nick_colour(nick, self.style.colours_256) + (";1" if bold else "")
        return self.sgr(clean(nick), code + (";7" if reverse else ""))


def _clock(ts: float, now: float) -> str:
    """HH:MM of ``ts`` in local time, with the date when it is not the day of ``now``."""
    when, today = datetime.fromtimestamp(ts), datetime.fromtimestamp(now)
    return when.strftime("%H:%M" if when.date() == today.date() else "%Y-%m-%d %H:%M")


def iso_time(ts: float) -> str:
    """``ts`` as RFC 3339 UTC time to the second: 2026-12-01T21:27:37Z."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_item(
    item: Item, style: Style = PLAIN, *, now: float, highlight: bool = False
) -> str | None:
    """One display line for ``item`` (None: nothing to show), rendered in ``style``.

    ``now`` is the local time used for live timestamps and to decide whether a history
    line needs its date; ``highlight``: show the sender in reverse video (an alert, in
    colour style only). The result never contains a control character other than the
    SGR sequences this function adds itself in colour style.
    """
    return _format(item, _Painter(style), now, highlight)


def _format(item: Item, p: _Painter, now: float, highlight: bool) -> str | None:
    """format_item, with the painter of its style."""
    style = p.style
    ts = getattr(item, "ts", None)  # set on lines replayed from a room's history
    if ts is not None and not style.history:
        return None
    body = _body(item, p, highlight)
    if body is None:
        return None
    if style.timestamps == "iso":
        stamp = iso_time(now if ts is None else ts)
    elif ts is not None:
        # Also with "off": a script reading "<nick> text" lines can tell old lines
        # from live ones.
        stamp = f"[{_clock(ts, now)}]"
    elif style.timestamps == "hhmm":
        stamp = f"[{_clock(now, now)}]"
    else:
        return body
    return f"{p.sgr(stamp, _DIM)} {body}"


def _notice(p: _Painter, text: str) -> str:
    return f"{p.sgr('-!-', _DIM)} {text}"


def _body(item: Item, p: _Painter, highlight: bool = False) -> str | None:
    """The line for ``item`` without timestamp; all network strings cleaned."""
    if isinstance(item, messages.SayOut):
        return f"<{p.nick(item.nick, reverse=highlight)}> {clean(item.text)}"
    if isinstance(item, messages.MeOut):
        return f"* {p.nick(item.nick, reverse=highlight)} {clean(item.text)}"
    if isinstance(item, messages.PrivateMsgIn):
        return f"*{p.nick(item.sender, bold=True, reverse=highlight)}* {clean(item.text)}"
    if isinstance(item, OwnLine):
        if item.to is not None:
            return f"-> *{p.nick(item.to)}* {clean(item.text)}"
        if item.action:
            return f"* {p.nick(item.nick, bold=True)} {clean(item.text)}"
        return f"<{p.nick(item.nick, bold=True)}> {clean(item.text)}"
    if isinstance(item, messages.JoinNotice):
        return _notice(p, f"{p.nick(item.nick)} has joined {clean(item.room)}")
    if isinstance(item, messages.PartNotice):
        return _notice(p, f"{p.nick(item.nick)} has left {clean(item.room)} ({clean(item.reason)})")
    if isinstance(item, messages.NickNotice):
        return _notice(p, f"{p.nick(item.old)} is now known as {p.nick(item.new)}")
    if isinstance(item, messages.WhoList):
        nicks = " ".join(p.nick(n) for n in item.nicks)
        return _notice(p, f"Users in {clean(item.room)}: {nicks}".rstrip())
    if isinstance(item, messages.RoomList):
        rooms = ", ".join(f"{clean(r.room)} ({int(r.members)})" for r in item.rooms)
        return _notice(p, f"Rooms: {rooms or 'none'}")
    if isinstance(item, messages.Welcome):
        return _notice(p, f"you are {p.nick(item.nick)} in {clean(item.room)}")
    if isinstance(item, messages.ServerNotice):
        return _notice(p, clean(item.text))
    if isinstance(item, messages.Shutdown):
        return _notice(p, f"server is shutting down: {clean(item.text)}")
    if isinstance(item, messages.Error):
        return f"{p.sgr('!!!', _ERROR)} {clean(item.text)}"
    if isinstance(item, Notice):
        return _notice(p, clean(item.text))
    if isinstance(item, Problem):
        return f"{p.sgr('!!!', _ERROR)} {clean(item.text)}"
    if isinstance(item, Info):
        return clean(item.text)
    return None


_SAY_OUT = messages.SayOut


class Renderer:
    """The display lines of a batch of items in one style, each item formatted in its
    own guard: an item that cannot be formatted (a value no check foresaw, or a bug)
    costs only itself, never the rest of its batch. Such items are counted in
    ``unshowable`` and reported as a Problem line at most once per
    UNSHOWABLE_REPORT_INTERVAL_S, with how many there were since the last report."""

    def __init__(self, style: Style = PLAIN) -> None:
        self.style = style
        self._painter = _Painter(style)
        # No colour, no timestamp before a live line: pipe mode as scripts use it.
        self._plain = not style.colour and style.timestamps == "off"
        self.unshowable = 0
        self._unreported = 0
        self._reported_at: float | None = None

    def lines(self, items: Iterable[Item], now: float, nick: str | None = None) -> list[str]:
        """One line per item that shows as one, in order (see class docstring); with
        ``nick`` (the user's) and a highlighting style, alerts are highlighted."""
        out: list[str] = []
        plain = self._plain
        for item in items:
            line: str | None
            try:
                if plain and type(item) is _SAY_OUT and item.ts is None:
                    # A pipe's usual line, written out: what _format makes of it in
                    # a plain style (tests/test_client_display.py holds them equal).
                    line = f"<{clean(item.nick)}> {clean(item.text)}"
                else:
                    highlight = self.style.highlight
                    alert = highlight and nick is not None and is_alert(item, nick)
                    line = _format(item, self._painter, now, alert)
            except Exception as exc:  # anything: one item, one guard
                line = self._unshowable(exc, now)
            if line is not None:
                out.append(line)
        return out

    def _unshowable(self, exc: Exception, now: float) -> str | None:
        self.unshowable += 1
        self._unreported += 1
        if (
            self._reported_at is not None
            and self._reported_at <= now < self._reported_at + UNSHOWABLE_REPORT_INTERVAL_S
        ):
            return None
        self._reported_at = now
        count, self._unreported = self._unreported, 0
        detail = f"{type(exc).__name__}: {exc}"[:UNSHOWABLE_DETAIL_MAX_CHARS]
        text = f"ignored a message that cannot be shown ({detail})"
        if count > 1:
            text += f"; {count} in all since the last such report"
        return format_item(Problem(text), self.style, now=now)
