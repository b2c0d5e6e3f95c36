"""What a typed line turns into: a message for the server, a local action, or an error."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from udpchat.chat import messages
from udpchat.client.commands import CommandError, LocalHelp, LocalQuit, help_lines, parse_line

ID = "0123456789abcdef"  # the line id a chat line gets


def test_plain_text_is_said() -> None:
    """A line that does not start with '/' is said to the room, as typed."""
    assert parse_line("hello  world ", ID) == messages.Say("hello  world ", ID)


def test_blank_lines_do_nothing() -> None:
    """Empty and whitespace-only lines are not sent (and are not an error)."""
    assert parse_line("", ID) is None
    assert parse_line("   ", ID) is None


def test_double_slash_sends_a_literal_slash() -> None:
    """'//text' says '/text', so a line may start with a slash."""
    assert parse_line("//etc/passwd is a file", ID) == messages.Say("/etc/passwd is a file", ID)


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
    assert parse_line(line, ID) == expected


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
        parse_line(line, ID)


def test_text_limit_is_400_utf8_bytes() -> None:
    """400 bytes pass; 401 are refused, counted in UTF-8 bytes (not characters)."""
    assert parse_line("x" * 400, ID) == messages.Say("x" * 400, ID)
    with pytest.raises(CommandError, match="line too long: 401 bytes, the limit is 400"):
        parse_line("x" * 401, ID)
    with pytest.raises(CommandError, match="line too long: 402 bytes"):
        parse_line("é" * 201, ID)  # 201 characters, 402 bytes
    with pytest.raises(CommandError, match="too long"):
        parse_line("/me " + "x" * 401, ID)
    with pytest.raises(CommandError, match="too long"):
        parse_line("/msg bob " + "x" * 401, ID)


@pytest.mark.parametrize("bad", ["\x1b[31m", "\x07", "\x00", "\x7f", "\x9b", "a\tb", "a\rb"])
def test_control_characters_are_refused(bad: str) -> None:
    """No C0/DEL/C1 control character is ever sent (escape sequences, tabs, CR ...)."""
    with pytest.raises(CommandError, match="control character"):
        parse_line("hi " + bad, ID)
    with pytest.raises(CommandError, match="control character"):
        parse_line("/me " + bad, ID)


def test_help_lists_every_command() -> None:
    """The /help text mentions every command."""
    text = "\n".join(help_lines())
    for name in ("/nick", "/who", "/me", "/msg", "/join", "/part", "/rooms", "/help", "/quit"):
        assert name in text


@given(st.text(max_size=500))
def test_parse_never_crashes_and_results_encode(line: str) -> None:
    """Any input either is refused with CommandError or yields something sendable."""
    try:
        action = parse_line(line, ID)
    except CommandError as exc:
        assert str(exc)
        return
    if isinstance(action, messages.Hello | messages.Say | messages.Me | messages.PrivateMsg):
        assert len(messages.encode(action)) <= messages.MAX_PAYLOAD_BYTES
    elif action is not None and not isinstance(action, LocalHelp | LocalQuit):
        messages.encode(action)
