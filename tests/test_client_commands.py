"""What a typed line turns into: messages for the server, a local action, or an error;
long texts split into several lines, tabs expanded."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpchat.chat import messages
from udpchat.client.commands import (
    Action,
    CommandError,
    LocalHelp,
    LocalQuit,
    help_lines,
    parse_line,
    split_text,
    typed_form,
)

ID = "0123456789abcdef"  # the line id a chat line gets


def parse(line: str) -> Action | None:
    """The one action ``line`` makes (None: nothing), every chat line named ID."""
    actions = parse_line(line, lambda: ID)
    assert len(actions) <= 1
    return actions[0] if actions else None


def numbered() -> Callable[[], str]:
    """Line ids 0000000000000001, ...2, ... in turn."""
    count = itertools.count(1)
    return lambda: f"{next(count):016x}"


def test_plain_text_is_said() -> None:
    """A line that does not start with '/' is said to the room, as typed."""
    assert parse("hello  world ") == messages.Say("hello  world ", ID)


def test_blank_lines_do_nothing() -> None:
    """Empty and whitespace-only lines are not sent (and are not an error)."""
    assert parse("") is None
    assert parse("   ") is None


def test_double_slash_sends_a_literal_slash() -> None:
    """'//text' says '/text', so a line may start with a slash."""
    assert parse("//etc/passwd is a file") == messages.Say("/etc/passwd is a file", ID)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/nick al", messages.Nick("al")),
        ("/NICK al", messages.Nick("al")),
        ("/who", messages.Who()),
        ("/rooms", messages.Rooms()),
        ("/part", messages.Part()),
        ("/me waves  hello", messages.Me("waves  hello", ID)),
        ("/msg bob hi there", messages.PrivateMsg("bob", "hi there", ID)),
        ("/msg bob   spaced", messages.PrivateMsg("bob", "spaced", ID)),
        ("/join dev", messages.Join("dev")),
        ("/join #Dev", messages.Join("dev")),
        ("/help", LocalHelp()),
        ("/quit", LocalQuit()),
    ],
)
def test_commands(line: str, expected: object) -> None:
    """Each command maps to its message; names are case-insensitive; /join strips
    one leading '#' and lowercases the room."""
    assert parse(line) == expected


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("/frobnicate", "unknown command /frobnicate"),
        ("/", "unknown command /"),
        ("/nick", "usage: /nick NAME"),
        ("/nick a b", "usage: /nick NAME"),
        ("/nick 9lives", "must not start with a digit"),
        ("/nick " + "a" * 25, "nick too long"),
        ("/nick al!ce", "only ASCII letters and digits"),
        ("/nick élise", "only ASCII letters and digits"),
        ("/me", "usage: /me ACTION"),
        ("/me   ", "usage: /me ACTION"),
        ("/msg bob", "usage: /msg NICK TEXT"),
        ("/msg", "usage: /msg NICK TEXT"),
        ("/msg b@b hi", "only ASCII letters"),
        ("/join", "usage: /join ROOM"),
        ("/join #", "a room name is"),
        ("/join bad.room", "a room name is"),
        ("/join a b", "usage: /join ROOM"),
        ("/part now", "usage: /part"),
        ("/who me", "usage: /who"),
        ("/quit bye", "usage: /quit"),
    ],
)
def test_bad_commands_are_local_errors(line: str, error: str) -> None:
    """Unknown commands and bad arguments raise CommandError with a helpful message."""
    with pytest.raises(CommandError, match=re.escape(error)):
        parse(line)


def test_text_limit_is_400_utf8_bytes() -> None:
    """400 bytes are one line; 401 are two, counted in UTF-8 bytes (not characters)."""
    assert parse("x" * 400) == messages.Say("x" * 400, ID)
    assert parse_line("x" * 401, numbered()) == [
        messages.Say("x" * 400, "0000000000000001"),
        messages.Say("x", "0000000000000002"),
    ]
    assert [len(a.text) for a in parse_line("é" * 201, numbered())] == [200, 1]  # type: ignore[union-attr]


def test_long_lines_are_split_into_lines_of_the_same_kind() -> None:
    """A long /me is several /me lines, a long /msg several msgs to the same nick, a
    long '//' line several says of which only the first starts with '/': each with a
    line id of its own, in order."""
    words = " ".join(f"w{i:03d}" for i in range(200))  # 999 bytes
    assert len(words.encode()) == 999
    for line, kind in (
        (words, messages.Say),
        ("/me " + words, messages.Me),
        ("/msg bob " + words, messages.PrivateMsg),
    ):
        actions = parse_line(line, numbered())
        assert [type(a) for a in actions] == [kind] * 3
        assert [a.line_id for a in actions] == [f"{i:016x}" for i in (1, 2, 3)]  # type: ignore[union-attr]
        assert " ".join(a.text for a in actions) == words  # type: ignore[union-attr]
        assert all(getattr(a, "to", "bob") == "bob" for a in actions)
    said = parse_line("//" + words, numbered())
    assert said[0].text.startswith("/w000") and not said[1].text.startswith("/")  # type: ignore[union-attr]


def test_typed_form_is_what_one_would_type() -> None:
    """A piece of a split line is reported (e.g. "not delivered: ...") as it would be
    typed on its own."""
    assert typed_form(messages.Say("hi", ID)) == "hi"
    assert typed_form(messages.Say("/etc", ID)) == "//etc"
    assert typed_form(messages.Me("waves", ID)) == "/me waves"
    assert typed_form(messages.PrivateMsg("bob", "psst", ID)) == "/msg bob psst"


def test_split_cuts_at_spaces_and_drops_them() -> None:
    """Each piece ends at the last space that keeps it within the limit; the spaces at
    the cut go (the cut is the line break), other spaces stay."""
    assert split_text("aaa bbb ccc", 7) == ["aaa bbb", "ccc"]
    assert split_text("aaa   bbb", 5) == ["aaa", "bbb"]
    assert split_text("a  b", 5) == ["a  b"]  # within the limit: untouched
    assert split_text("  lead and trail  ", 400) == ["  lead and trail  "]
    assert split_text("aaaa bbbbbbbbbb", 7) == ["aaaa", "bbbbbbb", "bbb"]  # word too long


def test_split_never_cuts_a_character_or_its_marks() -> None:
    """Without spaces the cut is between characters by their UTF-8 size, and it keeps
    a letter with its combining marks and a joined emoji together."""
    assert split_text("é" * 5, 4) == ["éé", "éé", "é"]
    assert split_text("日本語テキスト", 7) == ["日本", "語テ", "キス", "ト"]
    assert split_text("ab\u0301c", 3) == ["a", "b\u0301", "c"]  # b + combining acute
    coder = "\U0001f469\U0001f3fd\u200d\U0001f4bb"  # woman, skin tone, ZWJ, laptop
    assert len(coder.encode()) == 15
    assert split_text("x" + coder, 15) == ["x", coder]
    # Longer than the limit on its own: cut where the limit falls, after the joiner.
    assert split_text("x" + coder, 14) == ["x", coder[:3], coder[3:]]


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=2000))
def test_split_pieces_fit_and_lose_only_spaces_at_cuts(text: str) -> None:
    """Every piece fits in 400 bytes; nothing but spaces is lost; a text that fits is
    returned whole."""
    pieces = split_text(text)
    assert all(len(piece.encode()) <= 400 for piece in pieces)
    if len(text.encode()) <= 400:
        assert pieces == [text]
    else:
        assert all(pieces)
        assert "".join(pieces).replace(" ", "") == text.replace(" ", "")


def test_tabs_become_spaces() -> None:
    """A tab (pasted, or in a piped line) is expanded to the next multiple of 8
    columns instead of being refused or dropped."""
    assert parse("a\tb") == messages.Say("a       b", ID)
    assert parse("name\tscore\tok") == messages.Say("name    score   ok", ID)
    assert parse("/msg\tbob\thi") == messages.PrivateMsg("bob", "hi", ID)


@pytest.mark.parametrize("bad", ["\x1b[31m", "\x07", "\x00", "\x7f", "\x9b", "a\rb", "a\nb"])
def test_control_characters_are_refused(bad: str) -> None:
    """No C0/DEL/C1 control character is ever sent (escape sequences, CR, LF ...)."""
    with pytest.raises(CommandError, match="control character"):
        parse("hi " + bad)
    with pytest.raises(CommandError, match="control character"):
        parse("/me " + bad)


def test_help_lists_every_command() -> None:
    """The /help text mentions every command."""
    text = "\n".join(help_lines())
    for name in ("/nick", "/who", "/me", "/msg", "/join", "/part", "/rooms", "/help", "/quit"):
        assert name in text


@given(st.text(max_size=1500))
def test_parse_never_crashes_and_results_encode(line: str) -> None:
    """Any input either is refused with CommandError or yields things sendable."""
    try:
        actions = parse_line(line, numbered())
    except CommandError as exc:
        assert str(exc)
        return
    for action in actions:
        if isinstance(action, messages.Say | messages.Me | messages.PrivateMsg):
            assert len(messages.encode(action)) <= messages.MAX_PAYLOAD_BYTES
        elif not isinstance(action, LocalHelp | LocalQuit):
            messages.encode(action)
