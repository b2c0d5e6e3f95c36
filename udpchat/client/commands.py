"""Turn one line typed by the user into a chat action, or a local error.

Pure functions, no I/O: the terminal and pipe front ends both call ``parse_line`` and
send nothing when it raises ``CommandError``. Validation reuses udpchat.chat.messages so the
client refuses exactly what the server would refuse, before anything goes on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass

from udpchat.chat import messages

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
    "quit": ("/quit", "leave the chat (also Ctrl-D, Ctrl-C)"),
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


def _text(text: str) -> str:
    """``text`` if it may be sent as a line, else CommandError saying why."""
    reason = messages.text_error(text)
    if reason is not None:
        raise CommandError(reason)
    return text


def _usage(name: str) -> CommandError:
    return CommandError(f"usage: {COMMANDS[name][0]}")


def parse_line(line: str, line_id: str) -> Action | None:
    """The action for one typed line (no line terminator), or None to do nothing.

    A chat line (say, /me, /msg) is named ``line_id`` (from udpchat.chat.lineids, fresh for
    each typed line); other commands ignore it.

    Blank lines do nothing (chat clients do not send them). Raises CommandError for an
    unknown command, bad arguments, or text the server would refuse (too long, control
    characters), so nothing invalid is ever queued.
    """
    if not line.strip():
        return None
    if line.startswith("//"):
        # The escape for lines that start with a slash: "//etc" says "/etc".
        return messages.Say(_text(line[1:]), line_id)
    if not line.startswith("/"):
        return messages.Say(_text(line), line_id)
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
        return messages.Me(_text(rest), line_id)
    if name == "msg":
        to, _, text = rest.partition(" ")
        text = text.lstrip(" ")
        if not to or not text:
            raise _usage(name)
        _check(messages.nick_error(to))
        return messages.PrivateMsg(to, _text(text), line_id)
    if name == "nick":
        if len(args) != 1:
            raise _usage(name)
        _check(messages.nick_error(args[0]))
        return messages.Nick(args[0])
    if name == "join":
        if len(args) != 1:
            raise _usage(name)
        room = messages.normalize_room(args[0])
        _check(messages.room_error(room))
        return messages.Join(room)
    if args:
        raise _usage(name)
    simple: dict[str, Action] = {
        "part": messages.Part(),
        "who": messages.Who(),
        "rooms": messages.Rooms(),
        "help": LocalHelp(),
        "quit": LocalQuit(),
    }
    return simple[name]


def _check(reason: str | None) -> None:
    if reason is not None:
        raise CommandError(reason)
