"""The client id a restarted client takes back.

The server lets a hello whose client id equals a member's take that member's place
at once (PROTOCOL.md 7.6, "reconnect"), even on a full server. A client that was
killed and started again had a new random id, so it waited for its old session to
time out, and on a full server anyone could take the place meanwhile (issue 10).

So the id is kept per server and nick, in $XDG_STATE_HOME/udpchat/ids/ (default
~/.local/state), one 0600 file each, and locked (flock) while a client uses it: a
second client started with the same nick at the same time finds it locked and gets a
fresh id, so the two never take each other's place back and forth. The lock dies
with the process, kill -9 included. If anything about the file fails, the client just
uses a fresh id, as before.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import secrets
from collections.abc import Mapping

from udpchat.chat.messages import fold_nick
from udpchat.client.statedir import open_folder, state_folder

_ID = re.compile(rb"[0-9a-f]{16}")


def ids_folder(env: Mapping[str, str]) -> str:
    return os.path.join(state_folder(env), "ids")


def claim_client_id(
    host: str, port: int, nick: str, env: Mapping[str, str]
) -> tuple[str, int | None]:
    """The client id for `nick` at `host:port`, and the descriptor that holds its lock
    (keep it open while the client runs); (fresh id, None) if it is in use or cannot
    be kept."""
    try:
        os.close(open_folder(state_folder(env)))  # private (0700), as its other files
        folder = ids_folder(env)
        os.close(open_folder(folder))
        key = f"{host.lower()}\0{port}\0{fold_nick(nick)}".encode()
        path = os.path.join(folder, hashlib.sha256(key).hexdigest()[:32])
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
    except OSError:
        return secrets.token_hex(8), None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        stored = os.pread(fd, 64, 0).strip()
        if _ID.fullmatch(stored):
            return stored.decode(), fd
        client_id = secrets.token_hex(8)
        os.ftruncate(fd, 0)
        os.pwrite(fd, client_id.encode() + b"\n", 0)
        os.fsync(fd)
        return client_id, fd
    except OSError:  # locked by a running client with this nick, or unwritable
        os.close(fd)
        return secrets.token_hex(8), None
