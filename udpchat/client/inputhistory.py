"""Input history kept across runs (terminal mode): Up reaches lines typed before.

The lines live in $XDG_STATE_HOME/udpchat/history (default ~/.local/state), one per
line, UTF-8. The folder is made private by statedir (0700), the file 0600 through its
descriptor, as udpchat.keys does (open mode, then fchmod, never a chmod by path); a
symbolic link, a file of someone else's or a hard link at the file's name is not
used.

Several clients may run at once. Each one appends a line in one write under an
exclusive flock. The append that makes the file larger than TRIM_AT_BYTES rewrites it,
still under the lock, with its last SAVED_LINES lines: to a temporary file renamed
over it, so a crash cannot leave it half-written. A writer that was waiting for the
lock of the file just replaced notices (its descriptor is no longer the file at the
name) and starts again on the new one. Reading takes a shared lock.

History is a comfort: if anything about the file fails, lines are simply not saved
(or not loaded), and the client runs as before.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import stat
from collections.abc import Mapping

from udpchat.client.display import clean
from udpchat.client.statedir import open_folder, state_folder

#: Lines loaded at start (the most recent), and kept when the file is trimmed.
SAVED_LINES = 1000
#: An append that makes the file larger than this trims it to SAVED_LINES lines and
#: at most half this size.
TRIM_AT_BYTES = 256 * 1024
#: A typed line longer than this is not saved (nor loaded).
LINE_MAX_BYTES = 16 * 1024
#: At start, at most the last this many bytes of the file are read.
READ_MAX_BYTES = TRIM_AT_BYTES + LINE_MAX_BYTES
FILE_MODE = 0o600
FILE_NAME = "history"
#: Appends that find the file replaced under them try again this many times.
_APPEND_TRIES = 4

_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NO_FOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO is refused


def history_folder(env: Mapping[str, str]) -> str:
    """$XDG_STATE_HOME/udpchat (default ~/.local/state/udpchat)."""
    return state_folder(env)


def _usable(fd: int) -> os.stat_result:
    """The file's stat if it is ours to use (a regular file of ours with one link),
    made mode 0600 if it is not; OSError otherwise."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
        raise OSError(f"{FILE_NAME} is not a private regular file")
    if stat.S_IMODE(st.st_mode) != FILE_MODE:
        os.fchmod(fd, FILE_MODE)
    return st


def _tail(fd: int) -> bytes:
    """The last READ_MAX_BYTES of the file at most, from the start of a line."""
    start = max(0, os.fstat(fd).st_size - READ_MAX_BYTES)
    data = os.pread(fd, READ_MAX_BYTES, start)
    return data.partition(b"\n")[2] if start else data  # the first line read is a tail


def _parse(data: bytes) -> list[bytes]:
    """The lines worth offering again: UTF-8, not empty, no control characters."""
    lines = []
    for raw in data.split(b"\n"):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if text and len(raw) <= LINE_MAX_BYTES and clean(text) == text:
            lines.append(raw)
    return lines


def _keep(lines: list[bytes]) -> list[bytes]:
    """The last SAVED_LINES of ``lines`` that fit in half of TRIM_AT_BYTES."""
    kept: list[bytes] = []
    size = 0
    for line in reversed(lines[-SAVED_LINES:]):
        size += len(line) + 1
        if size > TRIM_AT_BYTES // 2:
            break
        kept.append(line)
    kept.reverse()
    return kept


class SavedHistory:
    """The input history file in ``folder`` (see module docstring)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def load(self) -> list[bytes]:
        """The saved lines, oldest first (at most SAVED_LINES); [] if there are none
        or they cannot be read."""
        try:
            folder_fd = os.open(self.folder, _FOLDER_FLAGS)
        except OSError:
            return []
        try:
            fd = os.open(FILE_NAME, os.O_RDONLY | _NO_FOLLOW, dir_fd=folder_fd)
        except OSError:
            return []
        finally:
            os.close(folder_fd)
        try:
            _usable(fd)
            fcntl.flock(fd, fcntl.LOCK_SH)
            data = _tail(fd)
        except OSError:
            return []
        finally:
            os.close(fd)
        return _parse(data)[-SAVED_LINES:]

    def add(self, line: bytes) -> None:
        """Append ``line`` (one typed line, UTF-8); nothing happens if it cannot be."""
        if not line or len(line) > LINE_MAX_BYTES or b"\n" in line or b"\r" in line:
            return
        try:
            folder_fd = open_folder(self.folder)
        except OSError:
            return
        try:
            for _ in range(_APPEND_TRIES):
                if self._append(folder_fd, line):
                    return
        except OSError:
            return
        finally:
            os.close(folder_fd)

    def _append(self, folder_fd: int, line: bytes) -> bool:
        """One try; False if the file was replaced while we waited for its lock."""
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | _NO_FOLLOW
        fd = os.open(FILE_NAME, flags, FILE_MODE, dir_fd=folder_fd)
        try:
            st = _usable(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
            now_there = os.stat(FILE_NAME, dir_fd=folder_fd, follow_symlinks=False)
            if (now_there.st_dev, now_there.st_ino) != (st.st_dev, st.st_ino):
                return False  # trimmed (replaced) by another client meanwhile
            os.write(fd, line + b"\n")
            if os.fstat(fd).st_size > TRIM_AT_BYTES:
                self._trim(folder_fd, fd)
            return True
        finally:
            os.close(fd)  # releases the lock

    def _trim(self, folder_fd: int, fd: int) -> None:
        """Replace the file (whose lock we hold) by one with its last lines."""
        kept = b"".join(line + b"\n" for line in _keep(_parse(_tail(fd))))
        temp = f".{FILE_NAME}.{secrets.token_hex(8)}"
        new = os.open(
            temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW, FILE_MODE, dir_fd=folder_fd
        )
        try:
            try:
                os.fchmod(new, FILE_MODE)
                os.write(new, kept)
                os.fsync(new)
            finally:
                os.close(new)
            os.rename(temp, FILE_NAME, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        except OSError:
            try:
                os.unlink(temp, dir_fd=folder_fd)
            except OSError:
                pass
            raise
