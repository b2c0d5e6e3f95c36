"""Specification of how key files are opened (issue 10, "Key files opened safely").

No symlink at the key path, nothing but a regular file (a FIFO is refused at once, not
waited on), owned by the running user or root, no group/other bits, in folders nobody
else can change, up to /; created with mkdir/open modes and fchmod, never through a
symlink. The daemon refuses with exit status 78, the client with 2, one line each.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from udpchat import keys
from udpchat.keys import (
    KeyFileError,
    KeyFileExists,
    KeyFileNotFound,
    create_key,
    ensure_key,
    folder_problem,
    load_key,
    trusted_owner,
)

NOBODY = 65534
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="only root can chown files to another user")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def write_key(path: Path) -> bytes:
    """A valid 0600 key file written by hand (create_key would check the folder)."""
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchmod(fd, 0o600)
    os.write(fd, key + b"\n")
    os.close(fd)
    return key


def folder(path: Path, mode: int) -> Path:
    path.mkdir()
    path.chmod(mode)  # chmod, not mkdir's mode: the umask would trim the test's mode
    return path


def run_python(
    code: str, env: dict[str, str], *, as_nobody: bool = False, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter (optionally as uid/gid 65534 via setpriv), with
    a timeout so that a key open that blocks fails the test instead of hanging it."""
    prefix: list[str] = []
    if as_nobody:
        if not IS_ROOT or shutil.which("setpriv") is None:
            pytest.skip("needs root and setpriv to run a child as another user")
        prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return subprocess.run(
        [*prefix, sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def nobody_tmp() -> Iterator[Path]:
    """A folder directly in /tmp owned by uid 65534 (tmp_path is under root's private
    pytest folder, which the unprivileged child cannot enter)."""
    if not IS_ROOT:
        pytest.skip("needs root to make a folder owned by another user")
    path = Path(tempfile.mkdtemp(prefix="udpchat-keys-"))
    os.chown(path, NOBODY, NOBODY)
    yield path
    shutil.rmtree(path)


# --- the key file itself ------------------------------------------------------------------


def test_a_symlink_at_the_key_path_is_refused_naming_the_real_file(tmp_path: Path) -> None:
    """A symlink is never followed (O_NOFOLLOW): whoever could plant one would choose
    the key. The one line names the link and the real file to use instead."""
    real = tmp_path / "real.key"
    write_key(real)
    link = tmp_path / "chat.key"
    link.symlink_to(real)
    with pytest.raises(KeyFileError) as info:
        load_key(link)
    assert str(info.value) == (
        f"refusing to use {link}: it is a symbolic link; fix: use the real file's path ({real})"
    )


def test_ensure_key_does_not_create_a_key_through_a_dangling_symlink(tmp_path: Path) -> None:
    """A dangling symlink at the key path is refused on the daemon's first start; no key
    is written where it points."""
    target = tmp_path / "planted.key"
    link = tmp_path / "chat.key"
    link.symlink_to(target)
    with pytest.raises(KeyFileError, match="is a symbolic link"):
        ensure_key(link)
    assert not target.exists() and link.is_symlink()


def test_a_fifo_at_the_key_path_is_refused_at_once(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """A named pipe is opened without blocking (O_NONBLOCK) and refused by fstat; the
    load runs in a child with a timeout, so a blocking open fails instead of hanging."""
    fifo = tmp_path / "chat.key"
    os.mkfifo(fifo, 0o600)
    result = run_python(
        "import sys; from udpchat.keys import KeyFileError, load_key\n"
        f"try: load_key({str(fifo)!r})\n"
        "except KeyFileError as exc: print(exc)\n",
        subprocess_env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"key file {fifo} is not a regular file (it is a named pipe); "
        f"fix: point it at a key file made by udpchat-keygen"
    )


def test_a_device_is_refused_as_not_a_regular_file() -> None:
    """/dev/null is not a key file: the line says what it is."""
    with pytest.raises(KeyFileError, match=r"/dev/null is not a regular file \(it is a char"):
        load_key("/dev/null")


@needs_root
def test_a_0600_key_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """Root can read a 0600 key that uid 65534 owns, but that user could rewrite it at
    will: refused, naming the owner and the fix."""
    path = tmp_path / "chat.key"
    write_key(path)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(KeyFileError) as info:
        load_key(path)
    message = str(info.value)
    assert message.startswith(f"refusing to use {path}: it is owned by ")
    assert f"fix: chown root {path} (as root), or use a copy of your own" in message


def test_root_may_own_a_key_whoever_runs() -> None:
    """The owner rule: a key (or folder) is trusted when the running user or root owns
    it; root can replace any file anyway, so refusing root's would protect nothing."""
    assert trusted_owner(0, 0) and trusted_owner(0, 1000) and trusted_owner(1000, 1000)
    assert not trusted_owner(NOBODY, 0) and not trusted_owner(NOBODY, 1000)


def test_a_key_owned_by_root_is_loaded_by_root(tmp_path: Path) -> None:
    """The usual case keeps working: the key is the running user's own (root here)."""
    path = tmp_path / "chat.key"
    key = write_key(path)
    assert load_key(path) == key


def test_an_unprivileged_user_loads_and_creates_its_own_keys(
    nobody_tmp: Path, subprocess_env: dict[str, str]
) -> None:
    """As uid 65534, in its own folder directly under /tmp (1777, root's): the walk up to
    / accepts /tmp, a new key is 0600 in a 0700 folder, and loads back."""
    path = nobody_tmp / "sub" / "chat.key"
    result = run_python(
        "from udpchat.keys import create_key, load_key\n"
        f"key = create_key({str(path)!r}); assert load_key({str(path)!r}) == key\n",
        subprocess_env,
        as_nobody=True,
    )
    assert result.returncode == 0, result.stderr
    assert path.stat().st_uid == NOBODY
    assert mode_of(path.parent) == 0o700 and mode_of(path) == 0o600


# --- the folders above it -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "who", "fix"),
    [
        (0o777, "group and others", "go-w"),
        (0o703, "others", "o-w"),
        (0o733, "group and others", "go-w"),
    ],
)
def test_a_key_in_a_folder_others_can_write_is_refused(
    tmp_path: Path, mode: int, who: str, fix: str
) -> None:
    """Whoever can write the folder can plant a key they know before the first start, or
    swap it later: refused, naming the folder and the chmod that fixes it."""
    shared = folder(tmp_path / "shared", mode)
    path = shared / "chat.key"
    write_key(path)
    with pytest.raises(KeyFileError) as info:
        load_key(path)
    assert str(info.value) == (
        f"refusing to use {path}: folder {shared} is writable by {who} (mode {mode:04o}), "
        f"who could swap the key; fix: chmod {fix} {shared}"
    )


def test_a_folder_writable_by_others_anywhere_above_the_key_is_refused(tmp_path: Path) -> None:
    """A private folder inside an open one is no better: the open one can rename it away
    and put its own in its place. Every folder up to / is checked."""
    shared = folder(tmp_path / "shared", 0o777)
    private = folder(shared / "private", 0o700)
    path = private / "chat.key"
    write_key(path)
    with pytest.raises(KeyFileError, match=f"folder {shared} is writable by group and others"):
        load_key(path)


def test_the_real_folders_are_checked_not_the_path_through_a_symlink(tmp_path: Path) -> None:
    """A symlinked folder on the way is followed (as systemd's /var/lib/NAME ->
    private/NAME), but the checks are on the folders the key really is in."""
    safe = folder(tmp_path / "private", 0o700)
    key = write_key(safe / "chat.key")
    (tmp_path / "state").symlink_to(safe)
    assert load_key(tmp_path / "state" / "chat.key") == key

    shared = folder(tmp_path / "shared", 0o777)
    inner = folder(shared / "inner", 0o700)
    write_key(inner / "chat.key")
    (tmp_path / "looks-safe").symlink_to(inner)
    with pytest.raises(KeyFileError, match=f"folder {shared} is writable"):
        load_key(tmp_path / "looks-safe" / "chat.key")


@needs_root
def test_a_group_writable_folder_is_refused(tmp_path: Path) -> None:
    """Group-writable, with a group other users are in (nogroup, nobody's), is refused."""
    shared = folder(tmp_path / "team", 0o770)
    os.chown(shared, 0, NOBODY)
    path = shared / "chat.key"
    write_key(path)
    with pytest.raises(KeyFileError) as info:
        load_key(path)
    assert f"folder {shared} is writable by group (mode 0770)" in str(info.value)
    assert f"fix: chmod g-w {shared}" in str(info.value)


def test_a_group_writable_folder_of_a_private_group_is_fine(tmp_path: Path) -> None:
    """With user private groups (umask 002, as on Ubuntu) folders are 0775 but the group
    is the owner alone, so it is as safe as 0755; Debian's ssh makes the same exception."""
    gid = os.getegid()
    if not keys._private_group(gid, os.geteuid()):
        pytest.skip("the running user's group is not a private group here")
    own = folder(tmp_path / "clone", 0o775)
    os.chown(own, os.geteuid(), gid)
    key = write_key(own / "chat.key")
    assert load_key(own / "chat.key") == key


@needs_root
def test_a_folder_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """A folder's owner can rename anything in it, whatever its mode."""
    theirs = folder(tmp_path / "theirs", 0o755)
    os.chown(theirs, NOBODY, NOBODY)
    path = theirs / "chat.key"
    write_key(path)
    with pytest.raises(KeyFileError) as info:
        load_key(path)
    assert str(info.value).startswith(f"refusing to use {path}: folder {theirs} is owned by ")
    assert str(info.value).endswith("fix: keep the key in a folder owned by root")


def test_a_sticky_folder_like_tmp_is_fine(tmp_path: Path) -> None:
    """In a sticky folder (1777, like /tmp) only an entry's owner may rename or delete
    it, and the key itself must be ours: a key there is loaded and created."""
    sticky = folder(tmp_path / "tmp", 0o1777)
    key = write_key(sticky / "chat.key")
    assert load_key(sticky / "chat.key") == key
    new = create_key(sticky / "new.key")
    assert load_key(sticky / "new.key") == new


@needs_root
def test_in_a_sticky_folder_a_key_planted_by_another_user_is_refused(tmp_path: Path) -> None:
    """Anyone may create files in /tmp: a key someone else made there first is not
    used on the daemon's first start, nor replaced."""
    sticky = folder(tmp_path / "tmp", 0o1777)
    planted = sticky / "chat.key"
    write_key(planted)
    os.chown(planted, NOBODY, NOBODY)
    before = planted.read_bytes()
    with pytest.raises(KeyFileError, match="is owned by"):
        ensure_key(planted)
    assert planted.read_bytes() == before


# --- creation ---------------------------------------------------------------------------


def test_create_key_refuses_an_open_folder_and_writes_nothing_there(tmp_path: Path) -> None:
    """The first start does not write a key into a folder others can write."""
    shared = folder(tmp_path / "shared", 0o777)
    with pytest.raises(KeyFileError, match=f"folder {shared} is writable"):
        ensure_key(shared / "keys" / "chat.key")
    assert list(shared.iterdir()) == []


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_new_folders_are_0700_and_the_key_0600_whatever_the_umask(
    tmp_path: Path, subprocess_env: dict[str, str], umask: int
) -> None:
    """In a child with the given umask, missing folders come out 0700 (mkdir mode, then
    fchmod on the new folder's descriptor) and the key 0600."""
    path = tmp_path / "a" / "b" / "chat.key"
    result = run_python(
        f"import os; os.umask({umask:#o}); from udpchat.keys import create_key\n"
        f"create_key({str(path)!r})\n",
        subprocess_env,
    )
    assert result.returncode == 0, result.stderr
    assert mode_of(tmp_path / "a") == 0o700 and mode_of(tmp_path / "a" / "b") == 0o700
    assert mode_of(path) == 0o600


def test_create_key_never_chmods_by_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Modes are set with mkdir/open and fchmod on descriptors: a chmod by path could be
    redirected by a symlink swapped in between."""

    def no_chmod(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"chmod by path: {args}")

    monkeypatch.setattr(os, "chmod", no_chmod)
    path = tmp_path / "a" / "b" / "chat.key"
    create_key(path)
    assert mode_of(tmp_path / "a") == 0o700 and mode_of(path) == 0o600


def test_create_key_never_writes_through_a_symlink_at_the_key_path(tmp_path: Path) -> None:
    """A symlink planted at the key path: without --force it is an existing file (kept);
    with --force the link itself is replaced. Its target is never written."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "chat.key"
    link.symlink_to(victim)
    with pytest.raises(KeyFileExists, match="already exists"):
        create_key(link)
    assert link.is_symlink()
    key = create_key(link, overwrite=True)
    assert not link.is_symlink() and load_key(link) == key
    assert victim.read_bytes() == b"precious"


def test_create_key_never_writes_through_a_symlink_at_the_temporary_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A symlink planted at the temporary name (O_CREAT|O_EXCL|O_NOFOLLOW) is skipped for
    another name; its target is untouched and the key still lands in place."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / ".chat.key.planted.tmp").symlink_to(victim)
    names = iter([".chat.key.planted.tmp", ".chat.key.fresh.tmp"])
    monkeypatch.setattr(keys, "_temp_name", lambda base: next(names))
    key = create_key(tmp_path / "chat.key")
    assert load_key(tmp_path / "chat.key") == key
    assert victim.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".chat.key.planted.tmp",
        "chat.key",
        "victim",
    ]


def test_folder_problem_is_none_for_the_usual_folders() -> None:
    """/ and /tmp as they normally are (0755 and 1777, root's) pass for any user."""
    for path in ("/", "/tmp"):
        st = os.stat(path)
        if st.st_uid == 0 and stat.S_IMODE(st.st_mode) in (0o755, 0o1777):
            assert folder_problem(st, 1000, path) is None


# --- what the daemon and the client print ------------------------------------------------


def make_refused_key(case: str, where: Path) -> tuple[Path, str]:
    """Set up one unsafe key; return its path and words its one-line refusal holds."""
    path = where / "chat.key"
    if case == "symlink":
        write_key(where / "real.key")
        path.symlink_to(where / "real.key")
        return path, "is a symbolic link"
    if case == "fifo":
        os.mkfifo(path, 0o600)
        return path, "is not a regular file (it is a named pipe)"
    if case == "open-folder":
        shared = folder(where / "shared", 0o777)
        write_key(shared / "chat.key")
        return shared / "chat.key", f"folder {shared} is writable by group and others"
    assert case == "other-owner"
    if not IS_ROOT:
        pytest.skip("only root can chown files to another user")
    write_key(path)
    os.chown(path, NOBODY, NOBODY)
    return path, "is owned by"


CASES = ["symlink", "fifo", "open-folder", "other-owner"]


@pytest.mark.parametrize("case", CASES)
def test_twistd_refuses_an_unsafe_key_with_exit_78_and_one_line(
    tmp_path: Path, twistd_argv: list[str], subprocess_env: dict[str, str], case: str
) -> None:
    """`twistd -n udpchat` exits 78 (EX_CONFIG) with one line naming the key file and
    the problem, at once (a FIFO does not block the start), and creates no key."""
    path, words = make_refused_key(case, tmp_path)
    config = tmp_path / "chat.ini"
    config.write_text(f"[server]\ninterface = 127.0.0.1\nkey_file = {path}\n")
    result = subprocess.run(
        [*twistd_argv, "-n", "--pidfile=", "udpchat", "--config", str(config)],
        cwd=tmp_path,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 78, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("udpchat: "), result.stderr
    assert str(path) in lines[0] and words in lines[0] and "fix: " in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize("case", CASES)
def test_the_client_refuses_an_unsafe_key_with_exit_2_and_one_line(
    tmp_path: Path, subprocess_env: dict[str, str], case: str
) -> None:
    """`udpchat-client HOST --key FILE` exits 2 with one line naming the file, at once."""
    path, words = make_refused_key(case, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "udpchat.client.cli", "127.0.0.1", "--key", str(path)],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("udpchat-client: "), result.stderr
    assert str(path) in lines[0] and words in lines[0] and "fix: " in lines[0]


def test_a_missing_key_is_still_not_found_not_refused(tmp_path: Path) -> None:
    """The folder checks do not turn a missing key (or folder) into another error: the
    daemon still creates it on first start."""
    with pytest.raises(KeyFileNotFound):
        load_key(tmp_path / "no" / "such" / "chat.key")
