"""Pre-shared key files: strict loading and atomic 0600 creation (the udpchat-keygen
command is udpchat.daemon.keygen).

A key file holds one Fernet key (32 random bytes as 44 characters of URL-safe base64,
exactly what `Fernet.generate_key()` returns) plus an optional trailing newline. The
protocol core takes the key in that base64 form. No message or log line produced here
ever contains key material.

Files are opened like ssh treats its private keys, but on descriptors: no symlink at the
key path, only a regular file of ours (or root's) with no group/other bits, in folders
nobody else can change (folder_problem), created with mkdir/open modes and fchmod,
never chmod by path.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from dataclasses import dataclass

from cryptography.fernet import Fernet

from udpchat.core.wire import PSK_B64_CHARS, psk_raw

# A valid file is 45 bytes; reading a little more is enough to tell "too long" apart
# without slurping a huge file someone pointed us at by mistake.
MAX_KEY_FILE_BYTES = 4096
KEY_FILE_MODE = 0o600
KEY_DIR_MODE = 0o700

KEYGEN_HINT = "udpchat-keygen"


@dataclass(frozen=True)
class Advice:
    """The fixes a key-file message suggests, by who reads it. The daemon's operator
    makes keys; a client's user can only get a copy of the server's key, because a key
    made anywhere else never matches it. ``{name}`` is the key file, ``{folder}`` its
    folder. Problems that both fix the same way (modes, owners, folders) say so alike.
    """

    missing: str
    corrupt: str
    not_a_file: str
    cannot_create: str


#: For the daemon and udpchat-keygen: the operator makes (and hands out) the key.
SERVER = Advice(
    missing=f"create one with: {KEYGEN_HINT} {{name}}",
    corrupt=f"make a new one with: {KEYGEN_HINT} --force {{name}} (and give clients a copy)",
    not_a_file=f"fix: point it at a key file made by {KEYGEN_HINT}",
    cannot_create="fix: make {folder} writable or choose another key_file",
)
#: For udpchat-client: the key must be a copy of the server's.
CLIENT = Advice(
    missing="get a copy of the server's key file from its operator and put it at {name}",
    corrupt="fix: get a fresh copy of the server's key file from its operator",
    not_a_file="fix: give the path of the key file itself (a copy of the server's)",
    cannot_create="fix: make {folder} writable, or save the key elsewhere with --key PATH",
)


class KeyFileError(Exception):
    """A key file cannot be used; the message names the file and the fix (one line)."""


class KeyFileNotFound(KeyFileError):
    """The key file does not exist (the daemon may then create one)."""


class KeyFileExists(KeyFileError):
    """create_key found a file at the key path and was not asked to replace it."""


# Folders are opened for lookup only: O_PATH needs search permission, not read
# permission, and such a descriptor still serves fstat, openat and mkdirat.
_O_PATH = getattr(os, "O_PATH", os.O_RDONLY)
_FOLDER_FLAGS = _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
# O_NOFOLLOW: a symlink at the last component fails (ELOOP) instead of being followed.
# O_NONBLOCK: opening a FIFO someone put there returns at once, and fstat refuses it.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_FILE_TRIES = 8

_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a named pipe",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _owners(euid: int) -> str:
    return "root" if euid == 0 else f"{_user(euid)} or root"


def _mode_problem(mode: int) -> str | None:
    """Describe why a file mode is too open for a secret, or None if it is fine."""
    loose = mode & 0o077
    if not loose:
        return None
    # Like ssh: any group/other bit is refused, but the wording says what is exposed.
    what = "readable" if loose & 0o044 else "writable" if loose & 0o022 else "accessible"
    return f"it is {what} by group/others (mode {stat.S_IMODE(mode):04o})"


def trusted_owner(uid: int, euid: int) -> bool:
    """Whether a key file or folder owned by `uid` may be trusted by a process running
    as `euid`: its own, or root's (root can replace any file anyway)."""
    return uid in (euid, 0)


def _private_group(gid: int, owner: int) -> bool:
    """Whether group `gid` holds `owner` and nobody else (a user private group, as on
    Debian and Ubuntu with umask 002): then group-writable means owner-writable.

    The same exception Debian's ssh makes to StrictModes; it asks the user database,
    so it only runs for a folder that is group-writable.
    """
    try:
        group = grp.getgrgid(gid)
        name = pwd.getpwuid(owner).pw_name
    except KeyError:
        return False
    primary = {user.pw_uid for user in pwd.getpwall() if user.pw_gid == gid}
    supplementary = set(group.gr_mem)
    return primary <= {owner} and supplementary <= {name} and bool(primary or supplementary)


def folder_problem(st: os.stat_result, euid: int, folder: str) -> str | None:
    """Why a key could not be trusted in (or below) the folder `st` describes, with
    the fix; None if the folder is safe.

    Whoever can add, rename or delete entries in a folder on the way to a key can swap
    in a key they know. So every such folder must be owned by us or root and must not
    be writable by group or others, except a sticky folder (like /tmp: only an entry's
    owner may rename or delete it, and the key must be ours) or a group-writable one
    whose group is the owner's alone.
    """
    if not trusted_owner(st.st_uid, euid):
        return (
            f"folder {folder} is owned by {_user(st.st_uid)}, who could swap the key; "
            f"fix: keep the key in a folder owned by {_owners(euid)}"
        )
    loose = st.st_mode & 0o022
    if not loose or st.st_mode & stat.S_ISVTX:
        return None
    if loose == 0o020 and _private_group(st.st_gid, st.st_uid):
        return None
    who, bits = ("others", "o-w") if loose == 0o002 else ("group", "g-w")
    if loose == 0o022:
        who, bits = "group and others", "go-w"
    return (
        f"folder {folder} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o}), "
        f"who could swap the key; fix: chmod {bits} {folder}"
    )


def _check_folders(folder_fd: int, folder: str, name: str) -> None:
    """Refuse the key `name` unless the folder open at `folder_fd` and every folder
    above it, up to /, pass folder_problem.

    The walk follows ".." from the open folder, so it checks the folders the key really
    sits in, whatever symlinks the path went through (as ssh checks the real path).
    """
    euid = os.geteuid()
    folder = os.path.realpath(folder)  # only to name folders in messages
    current = os.dup(folder_fd)
    try:
        st = os.fstat(current)
        while True:
            problem = folder_problem(st, euid, folder)
            if problem:
                raise KeyFileError(f"refusing to use {name}: {problem}")
            parent = os.open("..", _FOLDER_FLAGS, dir_fd=current)
            os.close(current)
            current = parent
            above = os.fstat(current)
            if (above.st_dev, above.st_ino) == (st.st_dev, st.st_ino):
                return  # "/" is its own parent
            st, folder = above, os.path.dirname(folder)
    finally:
        os.close(current)


def _open_folder(folder: str, name: str, create: bool) -> int:
    """Open `folder` for lookups and check it (_check_folders); with `create`, make it
    first if missing, and its missing parents, each mode 0700.

    The caller closes the returned descriptor. FileNotFoundError if it is missing and
    not `create`; OSError for what the system refuses.
    """
    try:
        fd = os.open(folder, _FOLDER_FLAGS)
    except FileNotFoundError:
        parent, base = os.path.split(folder)
        if not create or not base or parent == folder:
            raise
        parent_fd = _open_folder(parent, name, create)
        try:
            _make_folder(parent_fd, base)
            fd = os.open(base, _FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
        finally:
            os.close(parent_fd)
    try:
        _check_folders(fd, folder, name)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _make_folder(parent_fd: int, base: str) -> None:
    """mkdir `base` in the folder open at `parent_fd`, mode exactly 0700.

    The umask can only take bits away; fchmod on the new folder's descriptor (never a
    chmod by path) puts them back. A folder someone else made first is left as it is:
    the caller checks it.
    """
    try:
        os.mkdir(base, KEY_DIR_MODE, dir_fd=parent_fd)
    except FileExistsError:
        return
    fd = os.open(
        base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd
    )
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != KEY_DIR_MODE:
            os.fchmod(fd, KEY_DIR_MODE)
    finally:
        os.close(fd)


def _missing(name: str, advice: Advice) -> KeyFileNotFound:
    return KeyFileNotFound(f"key file {name} does not exist; {advice.missing.format(name=name)}")


def _open_key(folder_fd: int, base: str, name: str, advice: Advice) -> int:
    """Open the key file `base` in the folder open at `folder_fd`, never following a
    symlink and never blocking; return the descriptor."""
    try:
        return os.open(base, _READ_FLAGS, dir_fd=folder_fd)
    except FileNotFoundError:
        raise _missing(name, advice) from None
    except OSError as exc:
        # Linux says ELOOP for a symlink under O_NOFOLLOW, FreeBSD EMLINK.
        if exc.errno not in (errno.ELOOP, errno.EMLINK):
            raise
        raise KeyFileError(
            f"refusing to use {name}: it is a symbolic link; "
            f"fix: use the real file's path ({os.path.realpath(name)})"
        ) from None


def _check_key_file(st: os.stat_result, name: str, advice: Advice) -> None:
    """Refuse anything but a regular file of ours (or root's) with no group/other bits."""
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "something else")
        raise KeyFileError(
            f"key file {name} is not a regular file (it is {kind}); {advice.not_a_file}"
        )
    euid = os.geteuid()
    if not trusted_owner(st.st_uid, euid):
        me = _user(euid)
        raise KeyFileError(
            f"refusing to use {name}: it is owned by {_user(st.st_uid)}, not {me}; "
            f"fix: chown {me} {name} (as root), or use a copy of your own"
        )
    problem = _mode_problem(st.st_mode)
    if problem:
        raise KeyFileError(f"refusing to use {name}: {problem}; fix: chmod 600 {name}")


def _read_bounded(fd: int) -> bytes:
    """Read at most MAX_KEY_FILE_BYTES + 1 bytes: enough to tell "too long" apart."""
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_KEY_FILE_BYTES:
        chunk = os.read(fd, MAX_KEY_FILE_BYTES + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def load_key(path: str | os.PathLike[str], advice: Advice = SERVER) -> bytes:
    """Load a key file and return the key in base64 form (as `Fernet.generate_key()`).

    Raises KeyFileNotFound if the file is missing, KeyFileError if it is unreadable,
    not a regular file, a symlink, owned by someone else, open to group/others, in a
    folder others could change (folder_problem), or does not hold exactly one key.
    The messages suggest the fixes of `advice` (SERVER or CLIENT).
    """
    name = os.fspath(path)
    folder, base = os.path.split(name)
    try:
        if not base:
            raise KeyFileError(f"key file {name} names a folder; fix: name the key file in it")
        folder_fd = _open_folder(folder or ".", name, create=False)
        try:
            fd = _open_key(folder_fd, base, name, advice)
        finally:
            os.close(folder_fd)
        try:
            # fstat the open file: the checks are about the very bytes read, even if
            # the path is swapped meanwhile.
            _check_key_file(os.fstat(fd), name, advice)
            data = _read_bounded(fd)
        finally:
            os.close(fd)
    except FileNotFoundError:  # a missing folder
        raise _missing(name, advice) from None
    except PermissionError:
        raise KeyFileError(
            f"cannot read key file {name}: permission denied; "
            f"fix: run as the user that owns it, or chown it to that user"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {name}: {exc.strerror}") from None
    key = data.strip(b" \t\r\n")
    try:
        psk_raw(key)
    except ValueError:
        # Deliberately no detail from the content: a near-miss would leak key bytes.
        raise KeyFileError(
            f"key file {name} is corrupt (it must hold one key: {PSK_B64_CHARS} characters of "
            f"URL-safe base64); {advice.corrupt.format(name=name)}"
        ) from None
    return key


def _temp_name(base: str) -> str:
    return f".{base}.{os.urandom(8).hex()}.tmp"


def _create_temp(folder_fd: int, base: str) -> tuple[str, int]:
    """Create a new temporary file (mode 0600) beside the key; return its name and fd.

    O_EXCL|O_NOFOLLOW: a file or symlink someone planted at the name is never opened,
    only skipped for another random name.
    """
    for _ in range(_TEMP_FILE_TRIES - 1):
        tmp = _temp_name(base)
        try:
            return tmp, os.open(tmp, _NEW_FILE_FLAGS, KEY_FILE_MODE, dir_fd=folder_fd)
        except FileExistsError:
            continue
    tmp = _temp_name(base)
    return tmp, os.open(tmp, _NEW_FILE_FLAGS, KEY_FILE_MODE, dir_fd=folder_fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_folder(folder_fd: int) -> None:
    """Make a rename in the folder durable; best effort on filesystems that refuse."""
    try:
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=folder_fd)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def create_key(path: str | os.PathLike[str], overwrite: bool = False) -> bytes:
    """Write a new random key to `path` (as write_key) and return it (base64)."""
    key = Fernet.generate_key()
    write_key(path, key, overwrite)
    return key


def write_key(
    path: str | os.PathLike[str], key: bytes, overwrite: bool = False, advice: Advice = SERVER
) -> None:
    """Write `key` (base64, checked by psk_raw) to `path`, mode 0600, atomically.

    Missing folders are created with mode 0700; existing ones must pass folder_problem.
    The key is written to a temporary file in the same folder and moved into place, so a
    crash never leaves a half-written key. Every step works on descriptors of the folder
    and the file, never following a symlink at the key or temporary path (with
    `overwrite`, a symlink at the key path is replaced, not written through). Without
    `overwrite`, an existing file is never replaced (KeyFileExists).
    """
    psk_raw(key)  # ValueError: never write something that is not a key
    name = os.fspath(path)
    folder, base = os.path.split(os.path.abspath(name))
    try:
        folder_fd = _open_folder(folder, name, create=True)
    except OSError as exc:
        raise KeyFileError(
            f"cannot create key file {name}: {exc.strerror}; "
            f"{advice.cannot_create.format(folder=folder)}"
        ) from None
    try:
        _write_key(folder_fd, base, name, key, overwrite, advice)
        _fsync_folder(folder_fd)
    finally:
        os.close(folder_fd)


def _write_key(
    folder_fd: int, base: str, name: str, key: bytes, overwrite: bool, advice: Advice
) -> None:
    try:
        tmp, fd = _create_temp(folder_fd, base)
    except OSError as exc:
        folder = os.path.dirname(os.path.abspath(name))
        raise KeyFileError(
            f"cannot create key file {name}: {exc.strerror}; "
            f"{advice.cannot_create.format(folder=folder)}"
        ) from None
    try:
        try:
            # The umask can only remove bits; fchmod makes the mode exactly 0600.
            os.fchmod(fd, KEY_FILE_MODE)
            _write_all(fd, key + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            # rename(2) replaces whatever is at `base`, a symlink included, never its target.
            os.replace(tmp, base, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        else:
            _link_no_clobber(folder_fd, tmp, base)
    except FileExistsError:
        raise KeyFileExists(
            f"{name} already exists; refusing to overwrite it "
            f"(use --force to replace it; clients then need the new key)"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot write key file {name}: {exc.strerror}") from None
    finally:
        try:
            os.unlink(tmp, dir_fd=folder_fd)
        except FileNotFoundError:
            pass


def _link_no_clobber(folder_fd: int, tmp: str, base: str) -> None:
    """Move `tmp` to `base` unless `base` exists (FileExistsError), without a race.

    link(2) fails atomically if the target exists, even a dangling symlink; filesystems
    without hard links get a check-then-rename, which is only racy against another
    concurrent keygen.
    """
    try:
        os.link(tmp, base, src_dir_fd=folder_fd, dst_dir_fd=folder_fd, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        try:
            os.stat(base, dir_fd=folder_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.replace(tmp, base, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        else:
            raise FileExistsError(errno.EEXIST, "File exists", base) from None


def ensure_key(path: str | os.PathLike[str]) -> tuple[bytes, bool]:
    """Load the key at `path`, creating it if missing; return (key, created).

    Any other problem with an existing file (too open, corrupt, a symlink) raises
    KeyFileError: the daemon must never silently replace a key that clients hold.
    """
    try:
        return load_key(path), False
    except KeyFileNotFound:
        pass
    try:
        return create_key(path), True
    except KeyFileExists:
        # Another process created it between our load and create.
        return load_key(path), False


#: Where `rotate_key` keeps the key it replaces, next to the key file.
PREVIOUS_SUFFIX = ".previous"


def previous_key_path(path: str | os.PathLike[str]) -> str:
    """The previous key of a rotation: the key file's name plus PREVIOUS_SUFFIX."""
    return os.fspath(path) + PREVIOUS_SUFFIX


def rotate_key(path: str | os.PathLike[str]) -> bytes:
    """Key rotation (PROTOCOL.md 4.12): keep the key at `path` as its previous key
    (previous_key_path, written anew, so its modification time is when the overlap
    began) and put a new key at `path`; return the new key. Refused (KeyFileExists)
    while a previous key is still there: one rotation at a time."""
    old = load_key(path)
    previous = previous_key_path(path)
    try:
        write_key(previous, old)
    except KeyFileExists:
        raise KeyFileExists(
            f"{previous} exists: a rotation is still in its overlap; once the daemon "
            f"has logged that the overlap ended, delete {previous} and rotate again"
        ) from None
    return create_key(path, overwrite=True)
