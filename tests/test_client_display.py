"""How the client shows things, and that nothing from the network reaches the terminal
unsanitized."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpchat.chat import messages
from udpchat.client.display import (
    NICK_COLOURS,
    NICK_COLOURS_256,
    PLAIN,
    TERMINAL,
    Info,
    Notice,
    OwnLine,
    Problem,
    Renderer,
    Style,
    ViewOptions,
    clean,
    format_item,
    is_alert,
    mentions,
    nick_colour,
    rings_bell,
    terminal_style,
)

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC

ID = "0123456789abcdef"  # a line id


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Timestamps are local time: pin the zone so the expected strings are stable."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def plain(item: object) -> str | None:
    return format_item(item, PLAIN, now=NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("item", "line"),
    [
        (messages.SayOut("lobby", "alice", "hello", ID), "<alice> hello"),
        (messages.MeOut("lobby", "alice", "waves", ID), "* alice waves"),
        (messages.PrivateMsgIn("bob", "psst", ID), "*bob* psst"),
        (OwnLine("alice", "hi"), "<alice> hi"),
        (OwnLine("alice", "waves", action=True), "* alice waves"),
        (OwnLine("alice", "psst", to="bob"), "-> *bob* psst"),
        (messages.JoinNotice("lobby", "bob"), "-!- bob has joined lobby"),
        (messages.PartNotice("lobby", "bob", "timeout"), "-!- bob has left lobby (timeout)"),
        (messages.PartNotice("dev", "bob", "part"), "-!- bob has left dev (part)"),
        (messages.PartNotice("dev", "bob", "quit"), "-!- bob has left dev (quit)"),
        (messages.PartNotice("dev", "bob", "shutdown"), "-!- bob has left dev (shutdown)"),
        (messages.NickNotice("alice", "al"), "-!- alice is now known as al"),
        (messages.WhoList("lobby", ("alice", "bob"), False), "-!- Users in lobby: alice bob"),
        (
            messages.RoomList(
                (messages.RoomCount("dev", 1), messages.RoomCount("lobby", 3)), False
            ),
            "-!- Rooms: dev (1), lobby (3)",
        ),
        (messages.RoomList((), False), "-!- Rooms: none"),
        (
            messages.Error("nick-taken", 'nick "bob" is already taken'),
            '!!! nick "bob" is already taken',
        ),
        (messages.Welcome("alice", "lobby"), "-!- you are alice in lobby"),
        (messages.Shutdown("maintenance"), "-!- server is shutting down: maintenance"),
        (messages.ServerNotice("split", "lobby is split: ...", "lobby"), "-!- lobby is split: ..."),
        (
            Notice("connection to server lost; reconnecting"),
            "-!- connection to server lost; reconnecting",
        ),
        (Problem("not delivered: hi"), "!!! not delivered: hi"),
        (Info("  /who  list"), "  /who  list"),
    ],
)
def test_plain_formats(item: object, line: str) -> None:
    """The contract's formats, exactly (scripts parse them)."""
    assert plain(item) == line


def test_history_lines_carry_their_time() -> None:
    """Lines replayed from history are marked with their timestamp, also in plain style,
    and with the date when they are not from today."""
    today = messages.SayOut("lobby", "alice", "old news", ID, ts=NOW - 3600)
    assert plain(today) == "[21:13] <alice> old news"
    older = messages.MeOut("lobby", "alice", "waved", ID, ts=NOW - 2 * 86400)
    assert plain(older) == "[2023-11-12 22:13] * alice waved"


def test_terminal_style_has_timestamps_and_colours() -> None:
    """Terminal style prefixes the time and colours the nick with its own colour;
    without the colour codes the line is the plain one with a timestamp."""
    line = format_item(messages.SayOut("lobby", "alice", "hi", ID), TERMINAL, now=NOW)
    assert line is not None
    assert "22:13" in line
    assert f"\x1b[{nick_colour('alice')}malice\x1b[0m" in line
    assert re.sub(r"\x1b\[[0-9;]*m", "", line) == "[22:13] <alice> hi"


def test_a_servers_notice_is_a_notice_line_in_both_modes() -> None:
    """A notice (PROTOCOL.md 11.8) shows as the server's text after "-!-", cleaned, in
    a pipe and on a terminal alike; its code is for programs, not shown."""
    notice = messages.ServerNotice("split", "lobby is split: \u202eevil", "lobby")
    assert plain(notice) == "-!- lobby is split: \ufffdevil"
    line = format_item(notice, TERMINAL, now=NOW)
    assert line is not None
    assert re.sub(r"\x1b\[[0-9;]*m", "", line) == "[22:13] -!- lobby is split: \ufffdevil"


def test_timestamps_without_colour() -> None:
    """NO_COLOR: timestamps but not a single escape sequence."""
    line = format_item(
        messages.SayOut("lobby", "alice", "hi", ID), Style(timestamps="hhmm"), now=NOW
    )
    assert line == "[22:13] <alice> hi"


LIVE = messages.SayOut("lobby", "alice", "now", ID)
TODAY = messages.SayOut("lobby", "alice", "old news", ID, ts=NOW - 3600)
OLDER = messages.MeOut("lobby", "alice", "waved", ID, ts=NOW - 2 * 86400 - 17)


@pytest.mark.parametrize(
    ("timestamps", "item", "line"),
    [
        ("off", LIVE, "<alice> now"),
        ("off", TODAY, "[21:13] <alice> old news"),
        ("off", OLDER, "[2023-11-12 22:13] * alice waved"),
        ("hhmm", LIVE, "[22:13] <alice> now"),
        ("hhmm", TODAY, "[21:13] <alice> old news"),
        ("hhmm", OLDER, "[2023-11-12 22:13] * alice waved"),
        ("hhmm", Notice("reconnected"), "[22:13] -!- reconnected"),
        ("iso", LIVE, "2023-11-14T22:13:20Z <alice> now"),
        ("iso", TODAY, "2023-11-14T21:13:20Z <alice> old news"),
        ("iso", OLDER, "2023-11-12T22:13:03Z * alice waved"),
        ("iso", Problem("not delivered: hi"), "2023-11-14T22:13:20Z !!! not delivered: hi"),
    ],
)
def test_timestamp_formats(timestamps: Any, item: object, line: str) -> None:
    """The formats README documents for scripts: "iso" stamps every line with RFC 3339
    UTC time (history lines with the time they were said), "hhmm" with local [HH:MM],
    "off" only history lines (with [HH:MM], or the date and time if not from today)."""
    assert format_item(item, Style(timestamps=timestamps), now=NOW) == line  # type: ignore[arg-type]


def test_iso_time_is_utc_whatever_the_local_zone() -> None:
    """ISO stamps do not depend on the time zone; [HH:MM] is local time."""
    os.environ["TZ"] = "Asia/Kolkata"  # +05:30; the utc fixture restores it
    time.tzset()
    iso = format_item(LIVE, Style(timestamps="iso"), now=NOW)
    assert iso == "2023-11-14T22:13:20Z <alice> now"
    assert format_item(LIVE, Style(timestamps="hhmm"), now=NOW) == "[03:43] <alice> now"


def test_no_history_style_leaves_history_lines_out() -> None:
    """--no-history: lines replayed from history are not shown at all; live lines and
    notices are."""
    style = Style(timestamps="iso", history=False)
    assert format_item(TODAY, style, now=NOW) is None
    assert format_item(OLDER, style, now=NOW) is None
    assert format_item(LIVE, style, now=NOW) == "2023-11-14T22:13:20Z <alice> now"
    assert format_item(messages.Welcome("al", "lobby"), style, now=NOW) is not None


@pytest.mark.parametrize(
    ("view", "interactive", "env", "style"),
    [
        (ViewOptions(), False, {}, PLAIN),
        (ViewOptions(), True, {}, TERMINAL),
        (ViewOptions(), True, {"NO_COLOR": "1"}, Style(timestamps="hhmm", bell=True)),
        (ViewOptions(), True, {"TERM": "dumb"}, Style(timestamps="hhmm", bell=True)),
        (ViewOptions(colours=False), True, {}, Style(timestamps="hhmm", bell=True)),
        (ViewOptions(bell=False), True, {}, replace(TERMINAL, bell=False)),
        (ViewOptions(), True, {"TERM": "xterm-256color"}, replace(TERMINAL, colours_256=True)),
        (ViewOptions(timestamps="iso"), False, {}, Style(timestamps="iso")),
        (ViewOptions(timestamps="off"), True, {}, replace(TERMINAL, timestamps="off")),
        (ViewOptions(history=False), False, {}, Style(history=False)),
    ],
)
def test_view_options_choose_the_style(
    view: ViewOptions, interactive: bool, env: dict[str, str], style: Style
) -> None:
    """A pipe never gets colours and gets no live timestamps unless asked; a terminal
    gets colours (unless NO_COLOR, TERM=dumb or colours = no) and [HH:MM] by default."""
    assert view.style(interactive, env) == style


def test_nick_colour_is_stable_and_case_insensitive() -> None:
    """A nick's colour ignores letter case, is the same in every run and version (a
    known answer), and different nicks are spread over the whole palette."""
    for many in (False, True):
        assert (
            nick_colour("Alice", many) == nick_colour("alice", many) == nick_colour("ALICE", many)
        )
    assert (nick_colour("alice"), nick_colour("alice", True)) == ("32", "38;5;37")
    assert {nick_colour(f"user{i}") for i in range(200)} == {str(c) for c in NICK_COLOURS}
    spread = {nick_colour(f"user{i}", True) for i in range(1000)}
    assert spread == {f"38;5;{c}" for c in NICK_COLOURS_256}


def test_the_usual_names_have_colours_of_their_own() -> None:
    """alice, bob, carol, dave and eve never share a colour, with 12 colours or 256."""
    names = ("alice", "bob", "carol", "dave", "eve")
    for many in (False, True):
        assert len({nick_colour(name, many) for name in names}) == len(names)


def test_the_256_colour_palette_is_large_and_readable() -> None:
    """61 colours of the xterm cube: no greys, none too dark for a black background
    or too light for a white one (the darkest blue and the palest yellow are out)."""
    assert len(NICK_COLOURS_256) == 61
    assert all(16 <= c <= 231 for c in NICK_COLOURS_256)
    assert 17 not in NICK_COLOURS_256 and 230 not in NICK_COLOURS_256  # navy, cream
    assert not set(range(232, 256)) & set(NICK_COLOURS_256)  # the grey ramp


def test_terminal_style_follows_the_environment() -> None:
    """256 nick colours when TERM or COLORTERM says so; none at all with NO_COLOR or
    TERM=dumb (the bell and timestamps stay)."""
    assert terminal_style({"TERM": "xterm-256color"}).colours_256
    assert terminal_style({"TERM": "xterm", "COLORTERM": "truecolor"}).colours_256
    basic = terminal_style({"TERM": "xterm"})
    assert basic.colour and not basic.colours_256 and basic.bell and basic.highlight
    for env in ({"TERM": "dumb"}, {"TERM": "xterm-256color", "NO_COLOR": "1"}):
        style = terminal_style(env)
        assert not style.colour and style.timestamps and style.bell


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("alice: lunch?", True),
        ("hi Alice!", True),
        ("ping @ALICE", True),
        ("(alice)", True),
        ("malice aforethought", False),
        ("alice_ is someone else", False),
        ("alice-bob", False),
        ("alices", False),
        ("", False),
    ],
)
def test_a_mention_is_the_nick_as_a_word_ignoring_case(text: str, said: bool) -> None:
    """The nick counts as said when it stands as a word of its own: letters, digits,
    '_' and '-' around it make it part of another word."""
    assert mentions(text, "alice") is said


def test_mentions_of_nicks_with_brackets() -> None:
    """Nicks may hold characters that mean something in a pattern: taken literally."""
    assert mentions("thanks [x]!", "[x]")
    assert not mentions("thanks x!", "[x]")
    assert mentions("a^b: hi", "a^b") and not mentions("aab: hi", "a^b")


def test_alerts_are_mentions_and_private_lines_from_others() -> None:
    """Someone else saying the user's nick, or a private line from someone else, is an
    alert; the user's own lines and notices are not; history alerts ring no bell."""
    assert is_alert(messages.SayOut("lobby", "bob", "alice: hi", ID), "alice")
    assert is_alert(messages.MeOut("lobby", "bob", "pokes Alice", ID), "alice")
    assert is_alert(messages.PrivateMsgIn("bob", "psst", ID), "alice")
    assert not is_alert(messages.PrivateMsgIn("Alice", "note to self", ID), "alice")
    assert not is_alert(messages.SayOut("lobby", "ALICE", "alice here", ID), "alice")
    assert not is_alert(messages.SayOut("lobby", "bob", "hi all", ID), "alice")
    assert not is_alert(messages.JoinNotice("lobby", "alice"), "alice")
    assert not is_alert(OwnLine("bob", "alice: hi"), "alice")
    old = messages.SayOut("lobby", "bob", "alice: hi", ID, ts=NOW - 60)
    assert is_alert(old, "alice") and not rings_bell(old, "alice")
    assert rings_bell(messages.PrivateMsgIn("bob", "psst", ID), "alice")


def test_alerts_show_the_sender_in_reverse_video() -> None:
    """In a highlighting colour style an alert shows its sender in reverse video (SGR
    7); other lines do not, and plain style never has escapes."""
    renderer = Renderer(TERMINAL)
    mention = messages.SayOut("lobby", "bob", "alice: hi", ID)
    other = messages.SayOut("lobby", "bob", "hi all", ID)
    private = messages.PrivateMsgIn("bob", "psst", ID)
    lines = renderer.lines([mention, other, private], NOW, "alice")
    assert f"\x1b[{nick_colour('bob')};7mbob" in lines[0]
    assert ";7m" not in lines[1]
    assert f"\x1b[{nick_colour('bob')};1;7mbob" in lines[2]
    assert Renderer(PLAIN).lines([mention], NOW, "alice") == ["<bob> alice: hi"]
    unlit = Renderer(Style(colour=True)).lines([mention], NOW, "alice")
    assert ";7m" not in unlit[0]


@pytest.mark.parametrize(
    "evil",
    [
        "\x1b]0;pwned\x07",  # set window title
        "\x1b[2J\x1b[H",  # clear screen
        "\x9b31m",  # 8-bit CSI
        "line\nfake line",
        "back\rover",
        "\u202eevil",  # right-to-left override
        "\u2028sep",
        "\ud800",  # unpaired surrogate
        "\x00\x7f",
    ],
)
def test_clean_removes_everything_a_terminal_could_interpret(evil: str) -> None:
    """clean() leaves no C0, DEL or C1 control character, bidirectional override, line
    or paragraph separator, or lone surrogate; its result always encodes as UTF-8."""
    cleaned = clean(evil)
    assert not re.search("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2028\u2029\ud800-\udfff]", cleaned)
    cleaned.encode("utf-8")  # no surrogates left


def test_hostile_server_cannot_inject_escapes() -> None:
    """Messages built without validation (a fake server holding the key could send
    anything the decoder lets through, or the client could have a bug) are still shown
    without a single control character, in plain and in terminal style."""
    evil = "\x1b[2J\x1b]0;x\x07\u202e\n"
    items = [
        object.__new__(messages.SayOut),
        object.__new__(messages.PrivateMsgIn),
        object.__new__(messages.PartNotice),
        object.__new__(messages.WhoList),
        object.__new__(messages.Error),
    ]
    for field in ("room", "nick", "text", "reason"):
        for item in (items[0], items[2]):
            if hasattr(type(item), field):
                object.__setattr__(item, field, evil)
    object.__setattr__(items[0], "ts", None)
    object.__setattr__(items[1], "sender", evil)
    object.__setattr__(items[1], "text", evil)
    object.__setattr__(items[3], "room", evil)
    object.__setattr__(items[3], "nicks", (evil, evil))
    object.__setattr__(items[3], "more", False)
    object.__setattr__(items[4], "code", "bad-message")
    object.__setattr__(items[4], "text", evil)
    for item in items:
        for style in (PLAIN, TERMINAL):
            line = format_item(item, style, now=NOW)  # type: ignore[arg-type]
            assert line is not None
            without_our_sgr = re.sub(r"\x1b\[[0-9;]*m", "", line)
            assert not re.search("[\x00-\x1f\x7f-\x9f\u202e]", without_our_sgr), line
            assert "\ufffd" in line


@given(st.text(), st.text(), st.text())
def test_no_control_character_survives_formatting(nick: str, room: str, text: str) -> None:
    """Property: whatever the strings, plain output has no control characters at all."""
    for cls in (messages.SayOut, messages.MeOut):
        item: Any = object.__new__(cls)
        for name, value in (("room", room), ("nick", nick), ("text", text), ("ts", None)):
            object.__setattr__(item, name, value)
        line = format_item(item, PLAIN, now=NOW)
        assert line is not None
        assert not re.search("[\x00-\x1f\x7f-\x9f\ud800-\udfff]", line)


@given(st.text(), st.text(), st.sampled_from([None, NOW - 60]), st.booleans())
def test_a_pipes_live_line_is_rendered_as_format_item_renders_it(
    nick: str, text: str, ts: float | None, history: bool
) -> None:
    """The renderer of a plain style writes a live line out itself (a pipe's every
    line); the line is the one format_item gives, for any strings, and lines from a
    room's history still take format_item's way (their time, or --no-history)."""
    style = Style(timestamps="off", history=history)
    item: Any = object.__new__(messages.SayOut)
    for name, value in (("room", "lobby"), ("nick", nick), ("text", text), ("ts", ts)):
        object.__setattr__(item, name, value)
    expected = format_item(item, style, now=NOW)
    assert Renderer(style).lines([item], NOW) == ([] if expected is None else [expected])
