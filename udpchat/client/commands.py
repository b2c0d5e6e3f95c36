"""Turn one line typed by the user into chat actions, or a local error.

Pure functions, no I/O: the terminal and pipe front ends both call ``parse_line`` and
send nothing when it raises ``CommandError``. Validation reuses udpchat.chat.messages so the
client refuses exactly what the server would refuse, before anything goes on the wire.

Two things a user would not call errors are fixed up instead of refused: a tab becomes
spaces (to the next multiple of TAB_COLUMNS), and a text over the 400-byte limit is
split into several lines of the same kind (say, /me, /msg to the same nick), at spaces
where it can be, each a line of its own with its own line id.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from udpchat.chat import messages

#: A tab in a typed or piped line becomes spaces up to the next multiple of this.
TAB_COLUMNS = 8
#: Zero-width joiner: never the last character of a piece (it glues emoji together).
_ZWJ = "\u200d"
#: How far back a cut between characters may move to keep a character with its
#: combining marks (longer runs of marks are cut where the limit falls).
GRAPHEME_BACKOFF_MAX_CHARS = 16

#: Every /command, with its usage and a one-line description (also the /help text).
COMMANDS: dict[str, tuple[str, str]] = {
    "nick": ("/nick NAME", "change your nick"),
    "me": ("/me ACTION", "say an action: * you ACTION"),
    "msg": ("/msg NICK TEXT", "send a private line to NICK"),
    "join": ("/join ROOM", "move to ROOM (a leading # is optional)"),
    "part": ("/part", "leave your room, back to lobby"),
    "who": ("/who", "list the users in your room"),
    "rooms": ("/rooms", "list the rooms that have users"),
    "help": ("/help", "show this help"),
    "quit": ("/quit", "leave the chat (also Ctrl-D, or Ctrl-C on an empty line)"),
}


class CommandError(ValueError):
    """The line cannot be sent; the message says why, in words for the user."""


@dataclass(frozen=True)
class LocalHelp:
    """Show the command summary; nothing is sent."""


@dataclass(frozen=True)
class LocalQuit:
    """Leave the chat (say bye to the server first)."""


#: What a line can turn into: a message for the server, or something done locally.
Action = messages.ClientMessage | LocalHelp | LocalQuit


def help_lines() -> list[str]:
    """The /help text, one command per line."""
    width = max(len(usage) for usage, _ in COMMANDS.values())
    lines = ["Commands (anything else is said to your room; '//text' says '/text'):"]
    lines += [f"  {usage:<{width}}  {what}" for usage, what in COMMANDS.values()]
    return lines


def split_text(text: str, limit_bytes: int = messages.TEXT_MAX_BYTES) -> list[str]:
    """``text`` cut into pieces of at most ``limit_bytes`` of UTF-8 each, in order.

    A text within the limit is returned as is. Otherwise each piece ends at the last
    space that keeps it within the limit (the spaces at a cut are dropped: the cut is
    the line break); a piece with no space to cut at is cut between characters, never
    inside one, and not before a combining mark or after a zero-width joiner when that
    can be helped (they belong to the character before them).
    """
    pieces: list[str] = []
    rest = text
    while len(rest.encode("utf-8", "surrogatepass")) > limit_bytes:
        fit = _chars_within(rest, limit_bytes)
        space = rest.rfind(" ", 0, fit + 1)  # rest[fit] may be the space itself
        if space > 0 and rest[:space].strip(" "):
            pieces.append(rest[:space].rstrip(" "))
            rest = rest[space:].lstrip(" ")
        else:
            cut = _character_cut(rest, fit)
            pieces.append(rest[:cut])
            rest = rest[cut:]
    if rest or not pieces:
        pieces.append(rest)
    return pieces


def _chars_within(text: str, limit_bytes: int) -> int:
    """How many characters from the start of ``text`` fit in ``limit_bytes``."""
    size = 0
    for index, ch in enumerate(text):
        size += len(ch.encode("utf-8", "surrogatepass"))
        if size > limit_bytes:
            return index
    return len(text)


def _character_cut(text: str, fit: int) -> int:
    """Where to cut ``text`` (longer than ``fit`` characters) at or before ``fit``: not
    in front of a combining mark and not behind a joiner, unless the character they
    belong to is more than GRAPHEME_BACKOFF_MAX_CHARS back (then at ``fit``)."""
    cut = fit
    floor = max(1, fit - GRAPHEME_BACKOFF_MAX_CHARS)
    while _inside_character(text, cut):
        if cut == floor:
            return fit
        cut -= 1
    return cut


def _inside_character(text: str, cut: int) -> bool:
    """Whether a cut before ``text[cut]`` would part what shows as one character: a
    combining mark, a joiner or an emoji skin tone from what precedes it."""
    ch = text[cut]
    if unicodedata.category(ch) in ("Mn", "Me") or ch == _ZWJ or "\U0001f3fb" <= ch <= "\U0001f3ff":
        return True
    return text[cut - 1] == _ZWJ


def _texts(text: str) -> list[str]:
    """``text`` as one or more sendable texts (split when too long), else CommandError
    saying why not (an empty text, a control character)."""
    pieces = split_text(text)
    for piece in pieces:
        reason = messages.text_error(piece)
        if reason is not None:
            raise CommandError(reason)
    return pieces


def typed_form(action: Action) -> str:
    """How ``action`` would be typed: for reports about a piece of a split line."""
    if isinstance(action, messages.Say):
        return "/" + action.text if action.text.startswith("/") else action.text
    if isinstance(action, messages.Me):
        return f"/me {action.text}"
    if isinstance(action, messages.PrivateMsg):
        return f"/msg {action.to} {action.text}"
    raise TypeError(f"not a chat line: {action!r}")


def _usage(name: str) -> CommandError:
    return CommandError(f"usage: {COMMANDS[name][0]}")


def parse_line(line: str, new_line_id: Callable[[], str]) -> list[Action]:
    """The actions for one typed line (no line terminator), in order; none to do nothing.

    A chat line (say, /me, /msg) becomes one action, or several when its text is over
    the limit (see ``split_text``), each named by a fresh ``new_line_id()`` (from
    udpchat.chat.lineids); other commands never call it. Tabs are expanded first.

    Blank lines do nothing (chat clients do not send them). Raises CommandError for an
    unknown command, bad arguments, or text the server would refuse (control
    characters), so nothing invalid is ever queued.
    """
    line = line.expandtabs(TAB_COLUMNS)
    if not line.strip():
        return []
    if line.startswith("//"):
        # The escape for lines that start with a slash: "//etc" says "/etc".
        return [messages.Say(text, new_line_id()) for text in _texts(line[1:])]
    if not line.startswith("/"):
        return [messages.Say(text, new_line_id()) for text in _texts(line)]
    name, _, rest = line[1:].partition(" ")
    name = name.lower()
    rest = rest.strip(" ")
    args = rest.split()
    if name not in COMMANDS:
        shown = "/" + name if name else "/"
        raise CommandError(
            f"unknown command {shown}; try /help (use // to say a line starting with /)"
        )
    if name == "me":
        if not rest:
            raise _usage(name)
        return [messages.Me(text, new_line_id()) for text in _texts(rest)]
    if name == "msg":
        to, _, text = rest.partition(" ")
        text = text.lstrip(" ")
        if not to or not text:
            raise _usage(name)
        _check(messages.nick_error(to))
        return [messages.PrivateMsg(to, piece, new_line_id()) for piece in _texts(text)]
    if name == "nick":
        if len(args) != 1:
            raise _usage(name)
        _check(messages.nick_error(args[0]))
        return [messages.Nick(args[0])]
    if name == "join":
        if len(args) != 1:
            raise _usage(name)
        room = messages.normalize_room(args[0])
        _check(messages.room_error(room))
        return [messages.Join(room)]
    if args:
        raise _usage(name)
    simple: dict[str, Action] = {
        "part": messages.Part(),
        "who": messages.Who(),
        "rooms": messages.Rooms(),
        "help": LocalHelp(),
        "quit": LocalQuit(),
    }
    return [simple[name]]


def _check(reason: str | None) -> None:
    if reason is not None:
        raise CommandError(reason)
