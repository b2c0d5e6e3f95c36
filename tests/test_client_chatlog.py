"""The chat log (udpchat/client/chatlog.py): what the user was shown, one line per
event after its ISO time, in a private file; a path that cannot be used is a setup
error, a write that fails later is said once."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from udpchat.chat import messages
from udpchat.client.chatlog import ChatLogError, LoggedFrontEnd, open_chat_log
from udpchat.client.display import Item, Notice, OwnLine, Problem

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
ID = "0123456789abcdef"


class Screen:
    """A front end that keeps what it was given."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.done = False

    def update(self, items: list[Item]) -> None:
        self.items += items

    def chat_done(self) -> None:
        self.done = True


def test_each_event_is_one_line_after_its_iso_time(tmp_path: Path) -> None:
    """Live lines carry the time they were shown, history lines the time they were
    said; own lines are logged as shown; the screen gets the same items."""
    log = open_chat_log(tmp_path / "chat.log")
    screen = Screen()
    front = LoggedFrontEnd(screen, log, lambda: NOW)
    items: list[Item] = [
        messages.Welcome("alice", "lobby"),
        messages.SayOut("lobby", "bob", "earlier", ID, ts=NOW - 60),
        messages.PrivateMsgIn("bob", "psst", ID),
        OwnLine("alice", "hello"),
    ]
    front.update(items)
    front.update([Notice("reconnected")])
    front.chat_done()
    assert screen.items == [*items, Notice("reconnected")] and screen.done
    assert (tmp_path / "chat.log").read_text().splitlines() == [
        "2023-11-14T22:13:20Z -!- you are alice in lobby",
        "2023-11-14T22:12:20Z <bob> earlier",
        "2023-11-14T22:13:20Z *bob* psst",
        "2023-11-14T22:13:20Z <alice> hello",
        "2023-11-14T22:13:20Z -!- reconnected",
    ]


def test_new_file_0600_existing_file_appended(tmp_path: Path) -> None:
    """A new log is 0600 whatever the umask; an existing one is appended to."""
    old = os.umask(0)
    try:
        log = open_chat_log(tmp_path / "chat.log")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "chat.log").stat().st_mode) == 0o600
    log.record([Notice("one")], NOW)
    log.close()
    log = open_chat_log(tmp_path / "chat.log")
    log.record([Notice("two")], NOW)
    log.close()
    assert (tmp_path / "chat.log").read_text().count("\n") == 2


def test_no_history_leaves_history_out_of_the_log_too(tmp_path: Path) -> None:
    """--no-history: the log holds what was shown, so no history lines."""
    log = open_chat_log(tmp_path / "chat.log", history=False)
    log.record([messages.SayOut("lobby", "bob", "old", ID, ts=NOW - 60)], NOW)
    log.record([messages.SayOut("lobby", "bob", "new", ID)], NOW)
    log.close()
    assert (tmp_path / "chat.log").read_text() == "2023-11-14T22:13:20Z <bob> new\n"


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("no/such/folder/chat.log", "folder {tmp}/no/such/folder does not exist; fix: create it"),
        (".", "is a folder; fix: give the path of a file in it"),
        ("fifo", "is a named pipe; fix: give the path of a regular file"),
    ],
)
def test_an_unusable_path_is_one_line_with_the_fix(
    tmp_path: Path, where: str, message: str
) -> None:
    """Missing folder, a folder, a named pipe: ChatLogError naming the path and fix."""
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ChatLogError) as caught:
        open_chat_log(tmp_path / where)
    assert str(tmp_path / where) in str(caught.value)
    assert message.format(tmp=tmp_path) in str(caught.value)


def test_a_failed_write_is_said_once_and_logging_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk: the screen gets one Problem naming the log; the chat goes on."""
    log = open_chat_log(tmp_path / "chat.log")
    screen = Screen()
    front = LoggedFrontEnd(screen, log, lambda: NOW)

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    front.update([Notice("one")])
    front.update([Notice("two")])
    problems = [item for item in screen.items if isinstance(item, Problem)]
    assert problems == [
        Problem(f"cannot write log file {tmp_path / 'chat.log'}: No space left on device;"
                " logging stopped")
    ]  # fmt: skip
    assert Notice("two") in screen.items
