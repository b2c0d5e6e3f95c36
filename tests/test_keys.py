"""Specification of PSK key files: strict loading, atomic 0600 creation, udpchat-keygen."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import capturedLogs, formatEvent

from udpchat.core.wire import psk_raw
from udpchat.daemon.keygen import main as keygen_main
from udpchat.keys import (
    KeyFileError,
    KeyFileNotFound,
    create_key,
    ensure_key,
    load_key,
)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_file(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


# --- psk_raw: the one decoder of a key, shared by key files and the protocol core ------


def test_psk_raw_returns_the_32_raw_bytes_of_a_fernet_key() -> None:
    """psk_raw turns Fernet.generate_key()'s 44-char form into its 32 raw bytes."""
    key = Fernet.generate_key()
    assert psk_raw(key) == base64.urlsafe_b64decode(key)
    assert len(psk_raw(key)) == 32


@given(st.binary(min_size=32, max_size=32))
def test_psk_raw_round_trips_any_32_bytes(raw: bytes) -> None:
    """Every 32-byte key, URL-safe base64 encoded, decodes back to itself."""
    assert psk_raw(base64.urlsafe_b64encode(raw)) == raw


@given(st.binary(max_size=64).filter(lambda b: len(b) != 32))
def test_psk_raw_rejects_other_lengths(raw: bytes) -> None:
    """A key that does not encode exactly 32 bytes is rejected."""
    with pytest.raises(ValueError):
        psk_raw(base64.urlsafe_b64encode(raw))


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(b"\xfb" * 32),  # standard alphabet ('+', '/'), not URL-safe
        base64.urlsafe_b64encode(b"\0" * 32)[:-2] + b"B=",  # non-canonical trailing bits
        b"!" * 44,
    ],
)
def test_psk_raw_rejects_non_canonical_or_foreign_alphabets(text: bytes) -> None:
    """Only the canonical URL-safe spelling is a key, so a mangled copy fails loudly."""
    with pytest.raises(ValueError):
        psk_raw(text)


# --- load_key ---------------------------------------------------------------------------


@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n"])
def test_load_key_returns_base64_key_with_or_without_trailing_newline(
    tmp_path: Path, ending: bytes
) -> None:
    """The file holds the base64 key plus an optional newline; load_key returns the key."""
    key = Fernet.generate_key()
    path = write_file(tmp_path / "chat.key", key + ending)
    assert load_key(path) == key


def test_load_key_missing_file_names_it_and_says_how_to_make_one(tmp_path: Path) -> None:
    """A missing key file raises KeyFileNotFound naming the file and udpchat-keygen."""
    path = tmp_path / "nope.key"
    with pytest.raises(KeyFileNotFound) as info:
        load_key(path)
    assert str(path) in str(info.value)
    assert f"udpchat-keygen {path}" in str(info.value)


@pytest.mark.parametrize(
    ("mode", "word"),
    [(0o644, "readable"), (0o640, "readable"), (0o604, "readable"), (0o620, "writable")],
)
def test_load_key_refuses_a_file_open_to_group_or_others(
    tmp_path: Path, mode: int, word: str
) -> None:
    """Like ssh, a key file with any group/other permission bit is refused with the fix."""
    path = write_file(tmp_path / "chat.key", Fernet.generate_key(), mode)
    with pytest.raises(KeyFileError) as info:
        load_key(path)
    assert str(info.value) == (
        f"refusing to use {path}: it is {word} by group/others (mode {mode:04o}); "
        f"fix: chmod 600 {path}"
    )


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\n",
        Fernet.generate_key()[:43],
        Fernet.generate_key() + b"A",
        Fernet.generate_key() + b"\n" + Fernet.generate_key(),
        b"not a key at all, just some words that are long...",
        b"\xff\xfe" * 22,
    ],
    # Named, not shown: random keys would give every pytest-xdist worker other ids.
    ids=["empty", "newline", "short", "one-too-long", "two-keys", "words", "not-utf8"],
)
def test_load_key_corrupt_file_names_it_suggests_keygen_and_hides_content(
    tmp_path: Path, content: bytes
) -> None:
    """A file that is not exactly one key is refused; the message never echoes content."""
    path = write_file(tmp_path / "chat.key", content)
    with pytest.raises(KeyFileError) as info:
        load_key(path)
    message = str(info.value)
    assert str(path) in message and "corrupt" in message
    assert f"udpchat-keygen --force {path}" in message
    for chunk in content.split():
        if len(chunk) >= 8:
            assert chunk.decode("latin-1")[:8] not in message


def test_load_key_refuses_a_directory(tmp_path: Path) -> None:
    """Pointing key_file at a directory gives a one-line error naming it."""
    with pytest.raises(KeyFileError, match="not a regular file"):
        load_key(tmp_path)


def load_key_error_as_unprivileged_user(path: Path) -> str:
    """load_key(path)'s error message, run as 'nobody' when the tests run as root
    (root reads any file, so only a forked child that drops privileges sees EACCES)."""
    if os.geteuid() != 0:
        with pytest.raises(KeyFileError) as info:
            load_key(path)
        return str(info.value)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                load_key(path)
                message = "no error"
            except KeyFileError as exc:
                message = str(exc)
            os.write(write_end, message.encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        message = reader.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return message


def test_load_key_unreadable_file_says_permission_denied(tmp_path: Path) -> None:
    """A key file the daemon may not read is reported as such, naming the file."""
    path = write_file(tmp_path / "chat.key", Fernet.generate_key(), 0o000)
    message = load_key_error_as_unprivileged_user(path)
    assert "permission denied" in message and str(path) in message


# --- create_key / ensure_key ------------------------------------------------------------


def test_create_key_writes_a_valid_key_with_mode_0600(tmp_path: Path) -> None:
    """create_key writes key + newline, mode 0600, and returns what load_key reads."""
    path = tmp_path / "chat.key"
    key = create_key(path)
    assert mode_of(path) == 0o600
    assert path.read_bytes() == key + b"\n"
    assert load_key(path) == key
    Fernet(key)  # usable as a Fernet key


def test_create_key_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    """The mode is exactly 0600 even under a permissive or odd umask."""
    for umask in (0o000, 0o277):
        old = os.umask(umask)
        try:
            path = tmp_path / f"k{umask:o}.key"
            create_key(path)
        finally:
            os.umask(old)
        assert mode_of(path) == 0o600


def test_create_key_creates_missing_parent_folders_0700(tmp_path: Path) -> None:
    """Missing parent folders are created, private to the owner."""
    path = tmp_path / "a" / "b" / "chat.key"
    create_key(path)
    assert mode_of(tmp_path / "a") == 0o700
    assert mode_of(tmp_path / "a" / "b") == 0o700
    assert mode_of(path) == 0o600


def test_create_key_leaves_no_temporary_files(tmp_path: Path) -> None:
    """The atomic write (temp file + rename) leaves only the key in the folder."""
    create_key(tmp_path / "chat.key")
    create_key(tmp_path / "chat.key", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.key"]


def test_create_key_never_overwrites_unless_asked(tmp_path: Path) -> None:
    """An existing key is kept (and an error raised) unless overwrite=True."""
    path = tmp_path / "chat.key"
    first = create_key(path)
    with pytest.raises(KeyFileError, match="already exists"):
        create_key(path)
    assert load_key(path) == first
    second = create_key(path, overwrite=True)
    assert second != first and load_key(path) == second
    assert [p.name for p in tmp_path.iterdir()] == ["chat.key"]


def test_create_key_in_unwritable_place_names_file_and_fix(tmp_path: Path) -> None:
    """A key that cannot be created gives one line naming it (here: parent is a file)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(KeyFileError) as info:
        create_key(blocker / "chat.key")
    assert str(blocker / "chat.key") in str(info.value)
    assert "\n" not in str(info.value)


def test_ensure_key_creates_a_missing_key_then_reuses_it(tmp_path: Path) -> None:
    """The daemon's first start creates the key; later starts load the same key."""
    path = tmp_path / "state" / "chat.key"
    key, created = ensure_key(path)
    assert created and mode_of(path) == 0o600
    assert ensure_key(path) == (key, False)


def test_ensure_key_never_replaces_a_bad_existing_key(tmp_path: Path) -> None:
    """A corrupt or too-open key is reported, not silently replaced (clients hold it)."""
    path = write_file(tmp_path / "chat.key", b"garbage")
    with pytest.raises(KeyFileError, match="corrupt"):
        ensure_key(path)
    assert path.read_bytes() == b"garbage"


def test_daemon_startup_logs_where_it_created_the_key(tmp_path: Path) -> None:
    """On first start the daemon logs the new key's path and that clients need a copy,
    never the key itself."""
    from udpchat.daemon.tap import load_settings

    config = tmp_path / "chat.ini"
    config.write_text("[server]\ninterface = 127.0.0.1\nkey_file = keys/chat.key\n")
    with capturedLogs() as events:
        _, psk, _ = load_settings(str(config))
    text = "\n".join(formatEvent(e) for e in events)
    assert str(tmp_path / "keys" / "chat.key") in text
    assert "clients need a copy" in text
    assert psk.decode() not in text


# --- udpchat-keygen ---------------------------------------------------------------------


def test_keygen_writes_a_0600_key_and_never_prints_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`udpchat-keygen PATH` writes a key, says where and that clients need a copy."""
    path = tmp_path / "chat.key"
    assert keygen_main([str(path)]) == 0
    out, err = capsys.readouterr()
    key = load_key(path).decode()
    assert mode_of(path) == 0o600
    assert str(path) in out and "client" in out
    assert key not in out + err


def test_keygen_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing key file is kept and the exit status is 1, with a line naming --force."""
    path = tmp_path / "chat.key"
    key = create_key(path)
    assert keygen_main([str(path)]) == 1
    out, err = capsys.readouterr()
    assert load_key(path) == key
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert str(path) in err and "--force" in err
    assert key.decode() not in err


def test_keygen_force_replaces_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With --force, udpchat-keygen replaces an existing key with a new one."""
    path = tmp_path / "chat.key"
    old = create_key(path)
    assert keygen_main([str(path), "--force"]) == 0
    new = load_key(path)
    assert new != old
    out, err = capsys.readouterr()
    assert new.decode() not in out + err


def test_keygen_runs_as_a_program(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    """`python -m udpchat.daemon.keygen PATH` behaves like the udpchat-keygen console
    script."""
    path = tmp_path / "chat.key"
    result = subprocess.run(
        [sys.executable, "-m", "udpchat.daemon.keygen", str(path)],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert load_key(path).decode() not in result.stdout + result.stderr


# --- what twistd prints for a bad key ---------------------------------------------------


@pytest.mark.parametrize(
    ("content", "mode", "expected"),
    [
        (None, 0o644, "it is readable by group/others (mode 0644); fix: chmod 600"),
        (b"corrupt\n", 0o600, "is corrupt"),
    ],
)
def test_twistd_with_a_bad_key_exits_with_one_line_and_no_traceback(
    tmp_path: Path,
    twistd_argv: list[str],
    subprocess_env: dict[str, str],
    content: bytes | None,
    mode: int,
    expected: str,
) -> None:
    """`twistd -n udpchat` refuses a too-open or corrupt key: exit 78 (EX_CONFIG), one line
    on stderr naming the key file, no traceback, and the key file is left untouched."""
    key = write_file(tmp_path / "chat.key", content or Fernet.generate_key(), mode)
    before = key.read_bytes()
    config = tmp_path / "chat.ini"
    config.write_text("[server]\ninterface = 127.0.0.1\nkey_file = chat.key\n")
    result = subprocess.run(
        [*twistd_argv, "-n", "--pidfile=", "udpchat", "--config", str(config)],
        cwd=tmp_path,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 78
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("udpchat: ")
    assert expected in lines[0] and str(key) in lines[0]
    assert key.read_bytes() == before
