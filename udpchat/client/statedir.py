"""The client's per-user state folder: $XDG_STATE_HOME/udpchat (default
~/.local/state/udpchat), holding the kept client ids (identity) and the input history
(inputhistory). Both are private, so the folder is too.

Folders are made as udpchat.keys makes them: mkdir with mode 0700 and, as the umask
can only take bits away, fchmod on the new folder's descriptor, never a chmod by
path. The udpchat folder itself is made 0700 even if it exists (an earlier version
made it with the umask's mode), when it is ours.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

FOLDER_MODE = 0o700
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def state_folder(env: Mapping[str, str]) -> str:
    """$XDG_STATE_HOME/udpchat, XDG_STATE_HOME defaulting to ~/.local/state."""
    state = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "udpchat")


def _private(fd: int) -> None:
    st = os.fstat(fd)
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != FOLDER_MODE:
        os.fchmod(fd, FOLDER_MODE)


def open_folder(folder: str, private: bool = True) -> int:
    """A descriptor of ``folder`` (the caller closes it), made first if missing, with
    missing parents, each mode 0700; ``private``: ``folder`` itself is made 0700 if
    it is ours and is not. OSError if it cannot be."""
    try:
        fd = os.open(folder, _FOLDER_FLAGS)
    except FileNotFoundError:
        parent, base = os.path.split(folder)
        if not base or parent == folder:
            raise
        parent_fd = open_folder(parent, private=False)
        try:
            try:
                os.mkdir(base, FOLDER_MODE, dir_fd=parent_fd)
                made = True
            except FileExistsError:
                made = False  # someone else was faster
            fd = os.open(base, _FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
        finally:
            os.close(parent_fd)
        private = private or made
    try:
        if private:
            _private(fd)
    except OSError:
        os.close(fd)
        raise
    return fd
