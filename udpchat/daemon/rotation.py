"""The daemon's side of key rotation (PROTOCOL.md 4.12): the previous key file.

`udpchat-keygen --rotate KEY_FILE` keeps the running key as KEY_FILE.previous and
writes a new one (udpchat.keys.rotate_key). On its next start or reload the daemon
accepts both, until `key_overlap` seconds after the rotation, which is the previous
file's modification time: restarts do not stretch the overlap. After that the daemon
ignores the file and says it may be deleted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime

from udpchat.daemon.config import ServerConfig
from udpchat.keys import load_key, previous_key_path

__all__ = ["PreviousKey", "load_previous_key", "when"]


@dataclass(frozen=True)
class PreviousKey:
    """A rotated-out key still accepted: its file, its key, and until when (Unix time)."""

    path: str
    psk: bytes
    until: float


def when(ts: float) -> str:
    """A Unix time as the log shows it: 2026-12-02 21:27 UTC."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def load_previous_key(config: ServerConfig, wall: float) -> tuple[PreviousKey | None, str | None]:
    """The previous key if there is one within its overlap at Unix time `wall`, and a
    line for the log when there is one past it (else None). A previous key file that
    is unsafe or unreadable raises KeyFileError, like the key file itself."""
    path = previous_key_path(config.key_file)
    try:
        rotated = os.stat(path, follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return None, None
    psk = load_key(path)
    until = rotated + config.key_overlap
    if until <= wall:
        return None, (
            f"The previous key {path} (rotated {when(rotated)}) is past its overlap "
            f"(key_overlap = {config.key_overlap:g} s) and no longer accepted; delete it"
        )
    return PreviousKey(path, psk, until), None
