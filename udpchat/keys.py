"""Pre-shared key files: strict loading, atomic 0600 creation, and the udpchat-keygen CLI.

A key file holds one Fernet key (32 random bytes as 44 characters of URL-safe base64,
exactly what `Fernet.generate_key()` returns) plus an optional trailing newline. The
protocol core takes the key in that base64 form. No message or log line produced here
ever contains key material.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet

from udpchat.core.wire import PSK_B64_CHARS, psk_raw

# A valid file is 45 bytes; reading a little more is enough to tell "too long" apart
# without slurping a huge file someone pointed us at by mistake.
MAX_KEY_FILE_BYTES = 4096
KEY_FILE_MODE = 0o600
KEY_DIR_MODE = 0o700

KEYGEN_HINT = "udpchat-keygen"


class KeyFileError(Exception):
    """A key file cannot be used; the message names the file and the fix (one line)."""


class KeyFileNotFound(KeyFileError):
    """The key file does not exist (the daemon may then create one)."""


def _mode_problem(mode: int) -> str | None:
    """Describe why a file mode is too open for a secret, or None if it is fine."""
    loose = mode & 0o077
    if not loose:
        return None
    # Like ssh: any group/other bit is refused, but the wording says what is exposed.
    what = "readable" if loose & 0o044 else "writable" if loose & 0o022 else "accessible"
    return f"it is {what} by group/others (mode {stat.S_IMODE(mode):04o})"


def load_key(path: str | os.PathLike[str]) -> bytes:
    """Load a key file and return the key in base64 form (as `Fernet.generate_key()`).

    Raises KeyFileNotFound if the file is missing, KeyFileError if it is unreadable,
    open to group/others, or does not hold exactly one key.
    """
    name = os.fspath(path)
    try:
        # Open first, then fstat the open file, so the mode checked is the mode of the
        # bytes read even if the path is swapped in between.
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyFileNotFound(
            f"key file {name} does not exist; create one with: {KEYGEN_HINT} {name}"
        ) from None
    except IsADirectoryError:  # pragma: no cover - O_RDONLY on a directory succeeds on Linux
        raise KeyFileError(f"key file {name} is a directory; point key_file at a file") from None
    except PermissionError:
        raise KeyFileError(
            f"cannot read key file {name}: permission denied; "
            f"fix: run as the user that owns it, or chown it to that user"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot open key file {name}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {name} is not a regular file; point key_file at a file")
        problem = _mode_problem(st.st_mode)
        if problem:
            raise KeyFileError(f"refusing to use {name}: {problem}; fix: chmod 600 {name}")
        try:
            data = os.read(fd, MAX_KEY_FILE_BYTES)
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {name}: {exc.strerror}") from None
    finally:
        os.close(fd)
    key = data.strip(b" \t\r\n")
    try:
        psk_raw(key)
    except ValueError:
        # Deliberately no detail from the content: a near-miss would leak key bytes.
        raise KeyFileError(
            f"key file {name} is corrupt (it must hold one key: {PSK_B64_CHARS} characters of "
            f"URL-safe base64); make a new one with: {KEYGEN_HINT} --force {name} "
            f"(and give clients a copy)"
        ) from None
    return key


def _fsync_dir(directory: str) -> None:
    """Make a rename in `directory` durable; best effort on filesystems that refuse."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _make_private_dirs(directory: str) -> None:
    """Create `directory` and missing parents, each new one mode 0700.

    os.makedirs applies its mode only to the last folder, and the umask trims it; a key
    folder must be private to its owner at every level we create.
    """
    if os.path.isdir(directory):
        return
    parent = os.path.dirname(directory)
    if parent != directory:
        _make_private_dirs(parent)
    try:
        os.mkdir(directory, KEY_DIR_MODE)
    except FileExistsError:
        if not os.path.isdir(directory):
            raise
        return  # created concurrently by someone else: not ours to chmod
    os.chmod(directory, KEY_DIR_MODE)


def create_key(path: str | os.PathLike[str], overwrite: bool = False) -> bytes:
    """Write a new random key to `path` (mode 0600, atomically) and return it (base64).

    Missing parent directories are created with mode 0700. The key is written to a
    temporary file in the same directory and moved into place, so a crash never leaves
    a half-written key. Without `overwrite`, an existing file is never replaced.
    """
    name = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(name))
    key = Fernet.generate_key()
    tmp = os.path.join(directory, f".{os.path.basename(name)}.{os.urandom(8).hex()}.tmp")
    try:
        _make_private_dirs(directory)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, KEY_FILE_MODE)
    except OSError as exc:
        raise KeyFileError(
            f"cannot create key file {name}: {exc.strerror}; "
            f"fix: make {directory} writable or choose another key_file"
        ) from None
    try:
        try:
            # The umask can only remove bits; fchmod makes the mode exactly 0600.
            os.fchmod(fd, KEY_FILE_MODE)
            os.write(fd, key + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, name)
        else:
            _link_no_clobber(tmp, name)
    except FileExistsError:
        raise KeyFileError(
            f"{name} already exists; refusing to overwrite it "
            f"(use --force to replace it; clients then need the new key)"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot write key file {name}: {exc.strerror}") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    _fsync_dir(directory)
    return key


def _link_no_clobber(tmp: str, name: str) -> None:
    """Move `tmp` to `name` unless `name` exists (FileExistsError), without a race.

    link(2) fails atomically if the target exists; filesystems without hard links get
    a check-then-rename, which is only racy against another concurrent keygen.
    """
    try:
        os.link(tmp, name)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(name):
            raise FileExistsError(errno.EEXIST, "File exists", name) from None
        os.replace(tmp, name)


def ensure_key(path: str | os.PathLike[str]) -> tuple[bytes, bool]:
    """Load the key at `path`, creating it if missing; return (key, created).

    Any other problem with an existing file (too open, corrupt) raises KeyFileError:
    the daemon must never silently replace a key that clients already hold.
    """
    try:
        return load_key(path), False
    except KeyFileNotFound:
        pass
    try:
        return create_key(path), True
    except KeyFileError:
        # Another process may have created it between our load and create.
        if os.path.lexists(os.fspath(path)):
            return load_key(path), False
        raise


def keygen_main(argv: Sequence[str] | None = None) -> int:
    """`udpchat-keygen PATH [--force]`: write a new key file; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="udpchat-keygen",
        description="Write a new random udpchat pre-shared key to PATH (mode 0600).",
    )
    parser.add_argument("path", metavar="PATH", type=Path, help="key file to write")
    parser.add_argument(
        "--force", action="store_true", help="replace PATH if it exists (old key stops working)"
    )
    args = parser.parse_args(argv)
    try:
        create_key(args.path, overwrite=args.force)
    except KeyFileError as exc:
        print(f"udpchat-keygen: {exc}", file=sys.stderr)
        return 1
    print(f"udpchat-keygen: wrote a new key to {args.path} (mode 0600)")
    print(
        "udpchat-keygen: the server and every client need a copy of this file; "
        "copy it over a secure channel and keep it mode 0600"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(keygen_main())
