"""The rooms' history in a file, so that it survives restarts and crashes: SQLite in
WAL mode, each line sealed with a key derived from the pre-shared key.

The chat rules say which lines enter a room's history (Remember) and which rooms
are forgotten (Forget); ChatServer.take_history hands them over, and HistoryFile
keeps them::

    history = HistoryFile(path, psk, max_lines)
    rooms = history.recover()  # at start, before twistd forks: check, set aside, read
    history.open()             # in the process that serves (after the fork)
    history.write(changes)     # reactor thread, before the pass's datagrams leave
    history.checkpoint()       # a worker thread, about once a second: the fsyncs
    history.close()

What is guaranteed: a line is in the file (committed to the WAL, in the operating
system's hands) before its acknowledgement can leave, so it survives the daemon
being stopped or killed (SIGKILL, a crash, MemoryMax=). With synchronous=NORMAL a
commit does not wait for the disk; the worker thread's checkpoint, about once a
second after a write, does (fsync of the WAL, then of the database). So a power
loss or a kernel crash can lose the lines of the last second or so, never the
file's consistency. Waiting for the disk at every commit would cost 0.5-1 ms per
line here (benchmarks/history_store.py, docs/PERFORMANCE.md), in the reactor
thread, or holding every acknowledgement back until a batch is on the disk.

What a start reads back is what the rooms keep in memory (the IDLE_ROOMS_KEPT most
recently active rooms, each within history_lines and HISTORY_BYTES_PER_ROOM); the
rest is deleted then. Between starts, each room holds at most max_lines +
TRIM_SLACK_LINES lines; a Forget deletes a room.

What the file shows without the key: how many lines each room has (rooms appear as
keyed hashes) and their sizes and order; not the text, the nicks, the room names or
when lines were said. Every record is a Fernet token (AES-128-CBC + HMAC-SHA256)
under HKDF-SHA256(PSK, info=LABEL_HISTORY), with its timestamp set to 0. A record
read back that does not open, or a file SQLite finds corrupt, makes the whole file set aside
(renamed FILE.corrupt-TIMESTAMP, with its -wal) with a log line; so does a file
written under another pre-shared key (FILE.otherkey-TIMESTAMP). The daemon then
starts with an empty history. Someone who can write the file but lacks the key can
still delete lines, reorder a room's lines or put back an older copy; they cannot
read, add or change one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from twisted.logger import Logger

from udpchat.chat.rules import (
    HISTORY_BYTES_PER_ROOM,
    HISTORY_LINE_OVERHEAD_BYTES,
    IDLE_ROOMS_KEPT,
    Forget,
    KeptLine,
    Remember,
)
from udpchat.core.wire import fernet_key, psk_raw

log = Logger(namespace="udpchat")

#: HKDF info of the history key: its own label, so that the key protects nothing else
#: and nothing else's key opens the history.
LABEL_HISTORY = b"udpchat history v1"
#: PRAGMA application_id of a history file ("ucht"): `file` and the daemon can tell
#: a udpchat history from another SQLite database.
APPLICATION_ID = 0x75636874
#: PRAGMA user_version: the layout below. Another value is a file of another
#: version of udpchat, refused (never set aside: it is not broken).
FORMAT_VERSION = 1
#: A failed write is logged at most once per this many seconds (and counted).
WRITE_ERROR_LOG_INTERVAL_S = 60.0
#: The WAL is cut back to this size after a checkpoint (it grows with a burst).
WAL_SIZE_LIMIT_BYTES = 1024 * 1024
#: A room may hold this many lines beyond max_lines in the file before the oldest are
#: deleted, all at once: a DELETE with every line was a quarter of a write's cost. The
#: rooms read back are trimmed to max_lines (and the file with them).
TRIM_SLACK_LINES = 16
#: How long the writer waits for a lock someone else holds (another process reading
#: the file, say): the reactor thread must not hang on it.
WRITER_BUSY_TIMEOUT_MS = 50

_SCHEMA = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
    # seq orders lines across rooms: the rooms' order of last activity comes from it.
    "CREATE TABLE lines (seq INTEGER PRIMARY KEY, room BLOB NOT NULL, record BLOB NOT NULL)",
    "CREATE INDEX lines_by_room ON lines (room, seq)",
)
# SQLite's primary result codes that mean the file itself is damaged.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


class HistoryFileError(Exception):
    """The history file cannot be used (not ours, unreadable, unwritable): the daemon
    cannot start as configured. The message is one line with the file and the fix."""


class _Unusable(Exception):
    """The file is damaged or sealed under another key: it is set aside."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind  # "corrupt" or "otherkey": the suffix of the name set aside
        self.reason = reason


@dataclass(frozen=True)
class HistoryKeys:
    """The keys of one history file, all from the pre-shared key."""

    records: Fernet  # seals each line
    rooms: bytes  # HMAC-SHA256 key: a room's name as stored
    check: bytes  # stored in the file: tells whether it was written under this key

    @classmethod
    def derive(cls, psk: bytes) -> HistoryKeys:
        """From the pre-shared key as the key file holds it (44 characters)."""
        okm = HKDF(hashes.SHA256(), 96, salt=None, info=LABEL_HISTORY).derive(psk_raw(psk))
        # The check value is a hash of key material used for nothing else: it shows
        # whether a file is ours without helping anyone open or forge a record.
        return cls(fernet_key(okm[:32]), okm[32:64], hashlib.sha256(okm[64:]).digest())

    def room_id(self, room: str) -> bytes:
        """A room's name as the file holds it: keyed, so it cannot be guessed back."""
        return hmac.digest(self.rooms, room.encode(), "sha256")[:16]


#: Rooms as recover() returns them: in the order they were last active, each with
#: its lines oldest first.
Rooms = list[tuple[str, list[KeptLine]]]


@dataclass(eq=False)
class _Reading:
    """One room while the file is read, newest line first."""

    name: str = ""
    lines: list[KeptLine] = field(default_factory=list)
    bytes: int = 0
    oldest: int = 0  # seq of the oldest line kept
    full: bool = False  # older lines are beyond the room's bounds


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _companions(path: Path) -> list[Path]:
    """The file and those SQLite keeps beside it (WAL and shared-memory index)."""
    return [path, Path(f"{path}-wal"), Path(f"{path}-shm")]


class HistoryFile:
    """One daemon's history file (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        psk: bytes,
        max_lines: int,
        setting: str = "[server] history_file",
        max_rooms: int = IDLE_ROOMS_KEPT,
        previous: bytes | None = None,
    ) -> None:
        """`setting` names, in error messages, where the path is configured (e.g.
        "[server] history_file in /etc/udpchat/chat.ini"); `max_rooms` is how many
        rooms recover() reads back (the rules keep that many empty rooms).
        `previous`: a key rotation's previous key (PROTOCOL.md 4.12): a file written
        under it is sealed again under `psk` when recovered."""
        if max_lines < 1:
            raise ValueError("max_lines must be >= 1 (no history: no history file)")
        self.path = path
        self.max_lines = max_lines
        self.max_rooms = max_rooms  # read back: after a start every room is empty
        self._keys = HistoryKeys.derive(psk)
        self._previous_keys = None if previous is None else HistoryKeys.derive(previous)
        self._setting = setting
        self._writer: sqlite3.Connection | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._counts: Counter[bytes] = Counter()  # lines per room id, as in the file
        self._counts_stale = False  # after a failed write: count again before trimming
        self._error_logged_at: float | None = None
        self.unsynced = False  # written since the last checkpoint
        # For the daemon's metrics.
        self.lines_written = 0
        self.write_errors = 0
        self.write_seconds = 0.0

    # -- start -----------------------------------------------------------------

    def recover(self) -> Rooms:
        """Check the file and read the history it holds (creating an empty file if
        there is none). A damaged file, or one sealed under another key, is set
        aside with a log line and replaced by an empty one; a file the daemon cannot
        use at all raises HistoryFileError. Leaves no connection open: call it before
        twistd forks, and open() after."""
        try:
            return self._read()
        except _Unusable as problem:
            aside = self._set_aside(problem.kind)
            if problem.kind == "otherkey":
                log.warn(
                    "History file {path} was written under another pre-shared key; set it "
                    "aside as {aside} and starting with an empty history (only that key "
                    "opens it: keep it with that key, or delete it)",
                    path=str(self.path),
                    aside=str(aside),
                )
            else:
                log.error(
                    "History file {path} is damaged ({reason}); set it aside as {aside} "
                    "and starting with an empty history (fix: nothing to do; keep {aside} "
                    "to look into, or delete it)",
                    path=str(self.path),
                    reason=problem.reason,
                    aside=str(aside),
                )
        try:
            return self._read()
        except _Unusable as problem:  # a new, empty file cannot be either
            raise self._error(f"is still unusable after setting it aside ({problem})") from None

    def _read(self) -> Rooms:
        self._create()
        try:
            conn = self._connect(check_same_thread=True)
        except sqlite3.Error as exc:
            raise self._classify(exc) from None
        try:
            return self._check_and_read(conn)
        except sqlite3.Error as exc:
            raise self._classify(exc) from None
        finally:
            conn.close()

    def _create(self) -> None:
        """An empty file of mode 0600 if there is none: SQLite gives its WAL and index
        the file's mode, and would create the file with the umask's."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return
        except FileNotFoundError:
            raise self._error(
                f"cannot be created: folder {self.path.parent} does not exist",
                fix=f"create that folder, or set {self._setting} to a file in an existing one",
            ) from None
        except OSError as exc:
            raise self._error(f"cannot be created ({exc.strerror})", folder=True) from None
        os.close(fd)

    def _connect(self, check_same_thread: bool) -> sqlite3.Connection:
        # isolation_level=None: transactions are written out (BEGIN ... COMMIT).
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=check_same_thread)
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise self._error(f"cannot use a write-ahead log (journal mode {mode})")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_and_read(self, conn: sqlite3.Connection) -> Rooms:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise _Unusable("corrupt", "; ".join(str(p) for p in problems))
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if not tables and app_id == 0:
            self._initialise(conn)
            return []
        if app_id != APPLICATION_ID:
            raise self._error(
                "is an SQLite database of something else, not a udpchat history",
                fix=f"set {self._setting} to a file of its own",
            )
        if version != FORMAT_VERSION:
            raise self._error(
                f"has format {version}, written by another version of udpchat "
                f"(this one reads format {FORMAT_VERSION})",
                fix=f"run that version, or set {self._setting} to another file",
            )
        if not {"meta", "lines"} <= tables:
            raise _Unusable("corrupt", "tables are missing")
        check = conn.execute("SELECT value FROM meta WHERE name = 'key-check'").fetchone()
        if check is None:
            raise _Unusable("corrupt", "its key check is missing")
        if not hmac.compare_digest(bytes(check[0]), self._keys.check):
            previous = self._previous_keys
            if previous is None or not hmac.compare_digest(bytes(check[0]), previous.check):
                raise _Unusable("otherkey", "written under another key")
            self._reseal(conn, previous)
        return self._read_lines(conn)

    def rekey(self, psk: bytes) -> bool:
        """The pre-shared key changed (a reload after a key rotation): seal every line
        again under keys from `psk`, in one transaction, so that the file opens with
        the new key alone once the previous one is retired. False (logged) if that
        failed: the file then stays under the old keys."""
        new = HistoryKeys.derive(psk)
        writer, old = self._writer, self._keys
        if new.check == old.check:
            return True
        self._keys = new
        if writer is None:
            return True  # not opened yet: recover() will find it under `previous`
        try:
            self._reseal(writer, old)
        except (sqlite3.Error, _Unusable) as exc:
            if writer.in_transaction:
                writer.execute("ROLLBACK")
            self._keys = old
            log.error(
                "Could not seal the history file {path} again under the new key ({why}); "
                "it stays under the previous key, and is set aside at the first start "
                "without that key",
                path=str(self.path),
                why=str(exc),
            )
            return False
        return True

    def _reseal(self, conn: sqlite3.Connection, old: HistoryKeys) -> None:
        """Every line, sealed under `old`, sealed again under self._keys (with its room
        id), and the key check replaced; one transaction. The file is bounded (a few
        tens of MB at most), so this is once per rotation, not per line."""
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute("SELECT seq, record FROM lines").fetchall()
        for seq, record in rows:
            try:
                line = old.records.decrypt(bytes(record))
                room = json.loads(line)["room"]
            except (InvalidToken, ValueError, KeyError, TypeError):
                conn.execute("ROLLBACK")
                raise _Unusable("corrupt", f"line {seq} does not open with the key") from None
            conn.execute(
                "UPDATE lines SET room = ?, record = ? WHERE seq = ?",
                (self._keys.room_id(room), self._keys.records.encrypt_at_time(line, 0), seq),
            )
        conn.execute("UPDATE meta SET value = ? WHERE name = 'key-check'", (self._keys.check,))
        conn.execute("COMMIT")
        self._counts_stale = True

    def _initialise(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            conn.execute(statement)
        conn.execute("INSERT INTO meta VALUES ('key-check', ?)", (self._keys.check,))
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
        conn.execute("COMMIT")

    def _read_lines(self, conn: sqlite3.Connection) -> Rooms:
        """The lines the chat rules would keep, opened and checked; the rest deleted.

        Newest first: the max_rooms most recently active rooms, and of each the newest
        lines within max_lines and HISTORY_BYTES_PER_ROOM, exactly what a room keeps
        in memory. Only those are opened, so that a start costs at most what the
        rules can hold (max_rooms x 64 KiB), however much the file held."""
        rooms: dict[bytes, _Reading] = {}  # by room id, most recently active first
        forgotten: set[bytes] = set()
        for seq, room_id, record in conn.execute(
            "SELECT seq, room, record FROM lines ORDER BY seq DESC"
        ):
            room_id = bytes(room_id)
            reading = rooms.get(room_id)
            if reading is None:
                if room_id in forgotten or len(rooms) >= self.max_rooms:
                    forgotten.add(room_id)
                    continue
                reading = rooms[room_id] = _Reading()
            if reading.full:
                continue
            line, name, line_id = self._open(seq, bytes(record))
            if name != reading.name:  # the first line of the room, or one misfiled
                if reading.name or not hmac.compare_digest(room_id, self._keys.room_id(name)):
                    raise _Unusable("corrupt", f"line {seq} is filed under another room")
                reading.name = name
            cost = len(line) + HISTORY_LINE_OVERHEAD_BYTES
            if len(reading.lines) >= self.max_lines or reading.bytes + cost > (
                HISTORY_BYTES_PER_ROOM
            ):
                reading.full = True
                continue
            reading.lines.append(KeptLine(line, line_id))
            reading.bytes += cost
            reading.oldest = seq
        for room_id in [room_id for room_id, r in rooms.items() if not r.lines]:
            del rooms[room_id]  # (no line fits its bounds: never written so)
            forgotten.add(room_id)
        conn.execute("BEGIN IMMEDIATE")
        for room_id in forgotten:
            conn.execute("DELETE FROM lines WHERE room = ?", (room_id,))
        for room_id, reading in rooms.items():
            conn.execute("DELETE FROM lines WHERE room = ? AND seq < ?", (room_id, reading.oldest))
        conn.execute("COMMIT")
        self._counts = Counter({room_id: len(r.lines) for room_id, r in rooms.items()})
        return [(r.name, r.lines[::-1]) for r in reversed(rooms.values())]

    def _open(self, seq: int, record: bytes) -> tuple[bytes, str, str]:
        """A record's line, room and line id; _Unusable if it is not one we wrote."""
        try:
            line = self._keys.records.decrypt(record)
            # The token's HMAC proved it ours: json.loads and a few checks suffice
            # (decode_server's full validation took as long as the decryption).
            fields = json.loads(line)
            name, line_id = fields["room"], fields["id"]
            ok = fields["t"] in ("say", "me") and fields["history"] is True
        except (InvalidToken, ValueError, KeyError, TypeError):
            raise _Unusable("corrupt", f"line {seq} does not open with the key") from None
        if not (ok and isinstance(name, str) and name and isinstance(line_id, str)):
            raise _Unusable("corrupt", f"line {seq} is not a history line")
        return line, name, line_id

    def _set_aside(self, kind: str) -> Path:
        """Rename the file (and its WAL and index, which hold part of it) out of the
        way: FILE.KIND-TIMESTAMP, FILE.KIND-TIMESTAMP-wal, ..."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.{kind}-{stamp}")
        n = 1
        while any(p.exists() for p in _companions(aside)):
            aside = self.path.with_name(f"{self.path.name}.{kind}-{stamp}-{n}")
            n += 1
        try:
            for source, target in zip(_companions(self.path), _companions(aside), strict=True):
                if source.exists():
                    source.rename(target)
        except OSError as exc:
            raise self._error(
                f"is unusable and cannot be set aside ({exc.strerror})",
                fix=f"move it away by hand (with its -wal file), or set {self._setting} "
                "to another file",
            ) from None
        return aside

    # -- serving ---------------------------------------------------------------

    def open(self) -> None:
        """Open the file for writing (after recover(), in the serving process).

        Two connections: the writer, used in the reactor thread, never checkpoints
        (wal_autocheckpoint = 0), so it never waits for the disk; the checkpointer,
        used by one worker thread at a time, does (checkpoint())."""
        try:
            self._writer = self._connect(check_same_thread=True)
            self._writer.execute("PRAGMA wal_autocheckpoint = 0")
            self._writer.execute(f"PRAGMA busy_timeout = {WRITER_BUSY_TIMEOUT_MS}")
            self._checkpointer = self._connect(check_same_thread=False)
        except sqlite3.Error as exc:
            self.close()
            raise self._error(f"cannot be opened ({exc})", folder=True) from None

    def write(self, changes: Sequence[Remember | Forget]) -> None:
        """Keep these lines and forget these rooms, in one transaction. A failure
        (disk full, file gone) is logged at most once a minute and counted: the
        chat goes on, with those lines in memory only."""
        writer = self._writer
        if not changes or writer is None:
            return
        started = time.perf_counter()
        lines = 0
        try:
            if self._counts_stale:
                self._recount(writer)
            writer.execute("BEGIN")
            for change in changes:
                room_id = self._keys.room_id(change.room)
                if isinstance(change, Remember):
                    # Time 0: the token's clear timestamp would tell when lines were said.
                    record = self._keys.records.encrypt_at_time(change.line, 0)
                    writer.execute(
                        "INSERT INTO lines (room, record) VALUES (?, ?)", (room_id, record)
                    )
                    lines += 1
                    self._counts[room_id] += 1
                    extra = self._counts[room_id] - self.max_lines
                    if extra > TRIM_SLACK_LINES:
                        self._delete_oldest(writer, room_id, extra)
                        self._counts[room_id] -= extra
                else:
                    writer.execute("DELETE FROM lines WHERE room = ?", (room_id,))
                    self._counts.pop(room_id, None)
            writer.execute("COMMIT")
        except sqlite3.Error as exc:
            self._failed(writer, exc)
        else:
            self.lines_written += lines
            self.unsynced = True
        finally:
            self.write_seconds += time.perf_counter() - started

    def checkpoint(self) -> None:
        """Copy the WAL into the file and sync both to the disk (PASSIVE: never waits
        for the writer). For a worker thread; one call at a time."""
        if self._checkpointer is not None:
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        """Checkpoint, cut the WAL back and close (at stop, after the last write)."""
        checkpointer, self._checkpointer = self._checkpointer, None
        writer, self._writer = self._writer, None
        if checkpointer is not None:
            checkpointer.close()
        if writer is not None:
            try:
                writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # the WAL stays; the next start reads it
            writer.close()

    # -- helpers ---------------------------------------------------------------

    @staticmethod
    def _delete_oldest(conn: sqlite3.Connection, room_id: bytes, count: int) -> None:
        conn.execute(
            "DELETE FROM lines WHERE seq IN "
            "(SELECT seq FROM lines WHERE room = ? ORDER BY seq LIMIT ?)",
            (room_id, count),
        )

    def _recount(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute("SELECT room, count(*) FROM lines GROUP BY room")
        self._counts = Counter({bytes(room_id): n for room_id, n in rows})
        self._counts_stale = False

    def _failed(self, writer: sqlite3.Connection, exc: sqlite3.Error) -> None:
        self.write_errors += 1
        self._counts_stale = True
        if writer.in_transaction:
            try:
                writer.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        now = time.monotonic()
        last = self._error_logged_at
        if last is not None and now < last + WRITE_ERROR_LOG_INTERVAL_S:
            return
        self._error_logged_at = now
        fix = (
            "the file is damaged: restart the daemon, which sets it aside"
            if _is_corruption(exc)
            else f"free space on its disk, or check that {self.path} is still writable"
        )
        log.error(
            "Could not write chat history to {path} ({error}): {errors} writes failed so "
            "far, their lines are kept in memory only; fix: {fix} (logged at most once a "
            "minute)",
            path=str(self.path),
            error=str(exc),
            errors=self.write_errors,
            fix=fix,
        )

    def _classify(self, exc: sqlite3.Error) -> Exception:
        """Damage is set aside; anything else (permissions, a full disk, a lock held
        by another process) is for the operator to fix."""
        if _is_corruption(exc):
            return _Unusable("corrupt", str(exc))
        return self._error(f"cannot be used ({exc})", folder=True)

    def _error(
        self, problem: str, fix: str | None = None, folder: bool = False
    ) -> HistoryFileError:
        if fix is None:
            fix = (
                f"let the daemon's user write {self.path.parent if folder else self.path}, "
                f"or set {self._setting} to a file in a writable folder (under systemd: "
                "/var/lib/udpchat/chat.history)"
            )
        return HistoryFileError(
            f"{self.path}: history file {problem}; fix: {fix} (or empty, to keep history "
            "in memory only)"
        )
