"""Specification of the history file (udpchat.daemon.history): what it keeps, what it
shows to someone without the key, and what it does with a file it cannot use."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.fernet import Fernet
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from udpchat.chat.messages import MeOut, SayOut, decode_server, encode
from udpchat.chat.rules import (
    HISTORY_BYTES_PER_ROOM,
    HISTORY_LINE_OVERHEAD_BYTES,
    Forget,
    KeptLine,
    Remember,
)
from udpchat.core.wire import LABEL_COOKIE_REPLY, LABEL_HANDSHAKE
from udpchat.daemon.config import ServerConfig
from udpchat.daemon.history import (
    LABEL_HISTORY,
    TRIM_SLACK_LINES,
    HistoryFile,
    HistoryFileError,
    HistoryKeys,
)
from udpchat.daemon.service import ChatService

PSK = Fernet.generate_key()


def said(room: str, nick: str, text: str, n: int, me: bool = False) -> SayOut | MeOut:
    kind = MeOut if me else SayOut
    return kind(room, nick, text, f"{n:016x}", ts=1_800_000_000.25 + n)


def remember(line: SayOut | MeOut) -> Remember:
    return Remember(line.room, encode(line))


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Log lines written while the test runs."""
    lines: list[str] = []

    def observer(event: LogEvent) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(cast(ILogObserver, observer))
    yield lines
    globalLogPublisher.removeObserver(cast(ILogObserver, observer))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "chat.history"


def fresh(path: Path, max_lines: int = 50, psk: bytes = PSK) -> HistoryFile:
    """A history file recovered (as at start) and open for writing."""
    history = HistoryFile(path, psk, max_lines)
    history.recover()
    history.open()
    return history


def read_back(
    path: Path, max_lines: int = 50, psk: bytes = PSK, **options: Any
) -> list[tuple[str, list[SayOut | MeOut]]]:
    """recover() at a start, its lines decoded (each with the line id it came with)."""
    rooms = []
    for name, kept in HistoryFile(path, psk, max_lines, **options).recover():
        lines = []
        for line in kept:
            message = decode_server(line.line)
            assert isinstance(message, SayOut | MeOut) and message.line_id == line.line_id
            lines.append(message)
        rooms.append((name, lines))
    return rooms


def on_disk(path: Path) -> bytes:
    """Every byte of the file and of the files SQLite keeps beside it."""
    return b"".join(p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name))


# --- what it keeps --------------------------------------------------------------------


def test_lines_written_are_read_back_per_room_in_order(path: Path) -> None:
    """What was written comes back at the next start: each room's lines oldest first,
    rooms in the order they were last active, byte for byte as they are replayed."""
    history = fresh(path)
    lines = [
        said("lobby", "alice", "one", 1),
        said("dev", "bob", "two", 2),
        said("lobby", "bob", "waves", 3, me=True),
        said("dev", "alice", "four", 4),
    ]
    history.write([remember(line) for line in lines[:2]])
    history.write([remember(line) for line in lines[2:]])
    assert history.lines_written == 4 and history.write_errors == 0
    history.close()

    assert read_back(path, 50) == [
        ("lobby", [lines[0], lines[2]]),
        ("dev", [lines[1], lines[3]]),
    ]
    [_, (_, dev)] = HistoryFile(path, PSK, 50).recover()
    assert dev == [KeptLine(encode(line), line.line_id) for line in (lines[1], lines[3])]


def test_a_start_reads_back_only_what_the_rooms_keep_in_memory(path: Path) -> None:
    """However much the file holds, a start opens only what the rules would keep:
    the max_rooms most recently active rooms, and of each the newest lines within
    history_lines and HISTORY_BYTES_PER_ROOM; the rest leaves the file."""
    history = fresh(path, max_lines=500)
    big = [said("big", "alice", "y" * 390, n) for n in range(300)]
    history.write([remember(line) for line in big])
    for n, room in enumerate(("old", "mid", "new")):
        history.write([remember(said(room, "bob", f"in {room}", 1000 + n))])
    history.close()
    rooms = read_back(path, 500, max_rooms=4)
    assert [name for name, _ in rooms] == ["big", "old", "mid", "new"]
    fit = HISTORY_BYTES_PER_ROOM // (len(encode(big[0])) + HISTORY_LINE_OVERHEAD_BYTES)
    assert rooms[0][1] == big[-fit:] and 100 < fit < 300
    assert count_lines(path) == fit + 3, "the lines beyond the bytes left the file"
    assert [name for name, _ in read_back(path, 500, max_rooms=3)] == ["old", "mid", "new"]
    assert count_lines(path) == 3, "the least recently active room left the file"


def test_lines_survive_without_close_as_after_a_kill(path: Path) -> None:
    """A committed line is in the file (its WAL) without close() or a checkpoint: a
    daemon killed right after a write loses nothing."""
    history = fresh(path)
    line = said("lobby", "alice", "still here", 1)
    history.write([remember(line)])
    # No close(): the connections are dropped as a killed process's would be.
    assert Path(f"{path}-wal").stat().st_size > 0
    assert read_back(path, 50) == [("lobby", [line])]


def count_lines(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM lines").fetchone()[0])


def test_each_room_keeps_at_most_max_lines_oldest_forgotten_first(path: Path) -> None:
    """The file is bounded like the rooms' history in memory: max_lines per room, read
    back; in the file, at most TRIM_SLACK_LINES more (deleted a batch at a time)."""
    history = fresh(path, max_lines=3)
    lines = [said("lobby", "alice", f"line {n}", n) for n in range(100)]
    for line in lines:
        history.write([remember(line)])
        assert count_lines(path) <= 3 + TRIM_SLACK_LINES
    history.write([remember(said("dev", "bob", "other room", 999))])
    history.close()
    rooms = dict(read_back(path, 3))
    assert rooms["lobby"] == lines[-3:]
    assert count_lines(path) == 4


def test_a_smaller_max_lines_trims_the_file_at_the_next_start(path: Path) -> None:
    """history_lines lowered between runs: the file keeps only the newest lines."""
    history = fresh(path, max_lines=10)
    lines = [said("lobby", "alice", f"line {n}", n) for n in range(6)]
    history.write([remember(line) for line in lines])
    history.close()
    assert read_back(path, 2) == [("lobby", lines[4:])]
    assert count_lines(path) == 2


def test_a_forgotten_room_leaves_the_file(path: Path) -> None:
    """Forget (the rules dropped an empty room) deletes the room's lines; a room of the
    same name later starts afresh."""
    history = fresh(path)
    history.write([remember(said("old", "alice", "gone soon", 1))])
    history.write([remember(said("lobby", "bob", "stays", 2)), Forget("old")])
    later = said("old", "carol", "new start", 3)
    history.write([remember(later)])
    history.close()
    assert read_back(path, 50) == [
        ("lobby", [said("lobby", "bob", "stays", 2)]),
        ("old", [later]),
    ]


def test_checkpoint_from_another_thread_and_close_leave_no_wal(path: Path) -> None:
    """checkpoint() runs in a worker thread while the writer writes; close() leaves the
    whole history in the file itself."""
    history = fresh(path)
    history.write([remember(said("lobby", "alice", "before", 1))])
    assert history.unsynced
    worker = threading.Thread(target=history.checkpoint)
    worker.start()
    history.write([remember(said("lobby", "alice", "during", 2))])
    worker.join(10)
    history.close()
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    assert [line.text for line in read_back(path, 50)[0][1]] == [
        "before",
        "during",
    ]


# --- what it shows without the key ------------------------------------------------------


def test_the_file_holds_no_text_nick_or_room_name_in_clear(path: Path) -> None:
    """Someone with the disk but not the key reads no line, nick or room name: not in
    the file, not in its WAL; the records' Fernet timestamps are 0 (no time said)."""
    history = fresh(path)
    history.write(
        [remember(said("secretroom", "nickalice", f"the cake is a lie {n}", n)) for n in range(5)]
    )
    raw = on_disk(path)
    for clear in (b"cake is a lie", b"nickalice", b"secretroom", b'"say"'):
        assert clear not in raw
    history.close()
    raw = on_disk(path)
    for clear in (b"cake is a lie", b"nickalice", b"secretroom"):
        assert clear not in raw
    with sqlite3.connect(path) as db:
        records = [bytes(r) for (r,) in db.execute("SELECT record FROM lines")]
    keys = HistoryKeys.derive(PSK)
    assert records and all(keys.records.extract_timestamp(r) == 0 for r in records)


def test_the_file_and_its_wal_are_private(path: Path) -> None:
    """Mode 0600 for the file and what SQLite puts beside it, whatever the umask."""
    old = os.umask(0o022)
    try:
        history = fresh(path)
        history.write([remember(said("lobby", "alice", "hi", 1))])
    finally:
        os.umask(old)
    for p in (path, Path(f"{path}-wal")):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    history.close()


def test_the_history_key_is_its_own() -> None:
    """The history key comes from the PSK under its own HKDF label: other PSKs give
    other keys, and room names are keyed hashes."""
    assert LABEL_HISTORY not in (LABEL_HANDSHAKE, LABEL_COOKIE_REPLY)
    ours, other = HistoryKeys.derive(PSK), HistoryKeys.derive(Fernet.generate_key())
    assert ours.room_id("lobby") == HistoryKeys.derive(PSK).room_id("lobby")
    assert ours.room_id("lobby") != other.room_id("lobby")
    assert ours.room_id("lobby") != ours.room_id("dev")
    assert ours.check != other.check


# --- files it cannot use ---------------------------------------------------------------


def aside(path: Path, kind: str) -> list[Path]:
    """Files set aside as `kind` (the main files: their -wal and -shm go with them)."""
    return sorted(
        p
        for p in path.parent.iterdir()
        if p.name.startswith(f"{path.name}.{kind}-") and not p.name.endswith(("-wal", "-shm"))
    )


def test_a_file_that_is_not_a_database_is_set_aside_and_reported(
    path: Path, logged: list[str]
) -> None:
    """A damaged file is renamed FILE.corrupt-TIMESTAMP with a log line that names it
    and says what to do; the history starts empty in a new file that works."""
    path.write_bytes(b"this is not SQLite at all " * 200)
    history = HistoryFile(path, PSK, 50)
    assert history.recover() == []
    [moved] = aside(path, "corrupt")
    assert moved.read_bytes().startswith(b"this is not SQLite")
    [line] = [entry for entry in logged if "damaged" in entry]
    assert str(path) in line and str(moved) in line and "empty history" in line
    history.open()
    history.write([remember(said("lobby", "alice", "fresh start", 1))])
    history.close()
    assert read_back(path, 50)[0][1][0].text == "fresh start"


def test_a_record_that_does_not_open_sets_the_file_aside(path: Path, logged: list[str]) -> None:
    """A changed record (a flipped byte, a forgery) fails its HMAC: the whole file
    is set aside, with its WAL, never partly believed."""
    history = fresh(path)
    history.write([remember(said("lobby", "alice", f"line {n}", n)) for n in range(3)])
    with sqlite3.connect(path) as db:
        record = bytearray(db.execute("SELECT record FROM lines WHERE seq = 2").fetchone()[0])
        record[40] ^= 1
        db.execute("UPDATE lines SET record = ? WHERE seq = 2", (bytes(record),))
    history.close()
    assert read_back(path, 50) == []
    [moved] = aside(path, "corrupt")
    assert any("line 2 does not open with the key" in entry for entry in logged)
    with sqlite3.connect(moved) as db:
        assert db.execute("SELECT count(*) FROM lines").fetchone()[0] == 3


def test_a_line_moved_to_another_room_sets_the_file_aside(path: Path, logged: list[str]) -> None:
    """Records are sealed whole, room included: one filed under another room's id
    (someone moved it without the key) is noticed, and the file set aside."""
    history = fresh(path)
    history.write([remember(said("lobby", "alice", "here", 1))])
    history.write([remember(said("dev", "bob", "there", 2))])
    history.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE lines SET room = (SELECT room FROM lines WHERE seq = 1) WHERE seq = 2")
    assert read_back(path) == []
    assert any("line 2 is filed under another room" in entry for entry in logged)
    assert len(aside(path, "corrupt")) == 1


def test_a_file_under_another_key_is_set_aside_not_misread(path: Path, logged: list[str]) -> None:
    """After the pre-shared key changed, the old history cannot be read: it is set
    aside as FILE.otherkey-TIMESTAMP (that key still opens it), with a log line."""
    old_psk = Fernet.generate_key()
    history = fresh(path, psk=old_psk)
    history.write([remember(said("lobby", "alice", "old key", 1))])
    history.close()
    assert read_back(path, 50) == []
    [moved] = aside(path, "otherkey")
    assert any("another pre-shared key" in entry and str(moved) in entry for entry in logged)
    assert read_back(moved, 50, old_psk)[0][1][0].text == "old key"


def test_a_key_rotation_keeps_the_history(path: Path) -> None:
    """Key rotation (PROTOCOL.md 4.12): a reload with the new key seals the file again
    under it (rekey), so that it opens with the new key alone; and a file still under
    the previous key (a rotation done while the daemon was stopped) is sealed again
    when recovered with that key as `previous`. Nothing is set aside or lost."""
    old_psk, new_psk = Fernet.generate_key(), Fernet.generate_key()
    history = fresh(path, psk=old_psk)
    lines = [said("lobby", "alice", "before", 1), said("dev", "bob", "also before", 2)]
    history.write([remember(line) for line in lines])
    assert history.rekey(new_psk)
    after = said("lobby", "bob", "after", 3)
    history.write([remember(after)])
    history.close()
    assert read_back(path, 50, new_psk) == [("dev", [lines[1]]), ("lobby", [lines[0], after])]
    assert not aside(path, "otherkey")

    third = Fernet.generate_key()
    assert read_back(path, 50, third, previous=new_psk)[1] == ("lobby", [lines[0], after])
    assert read_back(path, 50, third)[1] == ("lobby", [lines[0], after])  # under it now
    assert b"before" not in on_disk(path)


def test_another_programs_database_is_refused_not_moved(path: Path) -> None:
    """history_file pointing at someone else's SQLite database: one line, and the
    file is left where it is."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE accounts (id INTEGER)")
    with pytest.raises(HistoryFileError) as info:
        read_back(path, 50)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    assert "not a udpchat history" in message and "fix:" in message
    assert path.exists() and aside(path, "corrupt") == []


def test_a_file_of_another_format_is_refused_not_moved(path: Path) -> None:
    fresh(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 2")
    with pytest.raises(HistoryFileError, match="another version of udpchat"):
        read_back(path, 50)
    assert path.exists()


def test_a_missing_folder_is_one_line_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "no-such-folder" / "chat.history"
    with pytest.raises(HistoryFileError) as info:
        HistoryFile(path, PSK, 50, setting="[server] history_file in /x/chat.ini").recover()
    message = str(info.value)
    assert "\n" not in message
    assert "does not exist" in message
    assert "[server] history_file in /x/chat.ini" in message
    assert "fix: create that folder" in message
    assert "(or empty, to keep history in memory only)" in message


# --- when writing fails ----------------------------------------------------------------


def test_a_failed_write_is_counted_and_logged_once_and_the_next_ones_work(
    path: Path, logged: list[str]
) -> None:
    """A full disk (here: a page limit) fails the write: the chat goes on, the error
    is counted, logged once a minute at most with the file and the fix; once there is
    room again, writes succeed and the room's bound still holds."""
    history = fresh(path, max_lines=2)
    history.write([remember(said("lobby", "alice", "fits", 1))])
    writer = history._writer
    assert writer is not None
    pages = writer.execute("PRAGMA page_count").fetchone()[0]
    writer.execute(f"PRAGMA max_page_count = {pages}")
    big = [remember(said(f"room{n}", "alice", "x" * 380, n)) for n in range(2, 40)]
    history.write(big)
    history.write(big)
    assert history.write_errors == 2
    [line] = [entry for entry in logged if "Could not write chat history" in entry]
    assert str(path) in line and "fix: free space" in line
    writer.execute("PRAGMA max_page_count = 1000000")
    history.write([remember(said("lobby", "alice", f"again {n}", 100 + n)) for n in range(3)])
    history.close()
    assert [line.text for line in read_back(path, 2)[0][1]] == [
        "again 1",
        "again 2",
    ]


# --- the service's checkpoints (a worker thread in the daemon) --------------------------


class InlinePool:
    """A thread pool that runs the call at once (the worker thread, made synchronous)."""

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any, **kw: Any) -> None:
        try:
            result = f(*args, **kw)
        except Exception:
            on_result(False, Failure())
        else:
            on_result(True, result)


class InlineReactor(Clock):
    def getThreadPool(self) -> InlinePool:
        return InlinePool()

    def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:
        f(*args, **kw)


def test_service_checkpoints_only_after_writes_and_logs_a_failure_once_a_minute(
    path: Path, logged: list[str]
) -> None:
    """ChatService.checkpoint_history syncs in a worker thread when something was
    written, and does nothing otherwise; a failing checkpoint is logged (at most once a
    minute) and tried again after the next interval."""
    reactor = InlineReactor()
    config = ServerConfig(path=path.parent / "chat.ini", history_file=path)
    service = ChatService(config, PSK, reactor=reactor)
    history = service.history
    assert history is not None
    history.open()
    assert service.checkpoint_history() is None, "nothing written, nothing to sync"
    history.write([remember(said("lobby", "alice", "hi", 1))])
    assert service.checkpoint_history() is not None and not history.unsynced

    def broken() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    history.checkpoint = broken  # type: ignore[method-assign]
    history.write([remember(said("lobby", "alice", "again", 2))])
    for _ in range(3):
        service.checkpoint_history()
        assert history.unsynced, "tried again next time"
        reactor.advance(1.0)
    [line] = [entry for entry in logged if "Could not sync the history file" in entry]
    assert str(path) in line and "disk I/O error" in line
    history.close()
