"""Input history kept across runs (udpchat/client/inputhistory.py): private files,
bounded, safe with several clients at once, and never a reason for the client to
fail."""

from __future__ import annotations

import multiprocessing
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from udpchat.client import inputhistory
from udpchat.client.identity import claim_client_id
from udpchat.client.inputhistory import SAVED_LINES, SavedHistory, history_folder
from udpchat.client.statedir import state_folder


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """umask 0: modes must come from the code, not from a kind umask."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_lines_come_back_in_order(tmp_path: Path) -> None:
    """What one run adds, the next run loads, oldest first (UTF-8 kept)."""
    saved = SavedHistory(str(tmp_path / "udpchat"))
    assert saved.load() == []
    for line in ("first", "/msg bob psst", "zweite Zeile é"):
        saved.add(line.encode())
    again = SavedHistory(str(tmp_path / "udpchat"))
    assert again.load() == [b"first", b"/msg bob psst", "zweite Zeile é".encode()]


def test_folders_0700_and_file_0600_whatever_the_umask(tmp_path: Path, loose_umask: None) -> None:
    """Missing folders (the state folder too) are made 0700, the file 0600."""
    folder = history_folder({"XDG_STATE_HOME": str(tmp_path / "state")})
    assert folder == str(tmp_path / "state" / "udpchat")
    SavedHistory(folder).add(b"secret")
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(Path(folder) / "history").st_mode) == 0o600


def test_an_open_file_is_made_private(tmp_path: Path) -> None:
    """A history file someone made readable by others is 0600 after the next line."""
    (tmp_path / "history").write_bytes(b"old\n")
    os.chmod(tmp_path / "history", 0o644)
    SavedHistory(str(tmp_path)).add(b"new")
    assert stat.S_IMODE(os.stat(tmp_path / "history").st_mode) == 0o600
    assert SavedHistory(str(tmp_path)).load() == [b"old", b"new"]


def test_a_symlink_or_hard_link_is_never_written_through(tmp_path: Path) -> None:
    """A link planted at the history's name (to make the client append to another of
    the user's files) is not followed, neither symbolic nor hard."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "history").symlink_to(victim)
    SavedHistory(str(tmp_path / "a")).add(b"typed")
    (tmp_path / "b").mkdir()
    os.link(victim, tmp_path / "b" / "history")
    SavedHistory(str(tmp_path / "b")).add(b"typed")
    assert SavedHistory(str(tmp_path / "b")).load() == []
    assert victim.read_bytes() == b"precious\n"


def test_bounded_and_trimmed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the last SAVED_LINES lines are loaded; the file is rewritten with its last
    lines once it passes TRIM_AT_BYTES, so it never grows without bound."""
    monkeypatch.setattr(inputhistory, "TRIM_AT_BYTES", 4096)
    saved = SavedHistory(str(tmp_path))
    for i in range(3000):
        saved.add(f"line {i}".encode())
    assert (tmp_path / "history").stat().st_size <= 4096 + 16
    loaded = saved.load()
    assert loaded[-1] == b"line 2999"
    assert loaded == [f"line {i}".encode() for i in range(3000 - len(loaded), 3000)]
    monkeypatch.undo()
    (tmp_path / "history").write_bytes(b"".join(b"x%d\n" % i for i in range(2 * SAVED_LINES)))
    assert saved.load() == [b"x%d" % i for i in range(SAVED_LINES, 2 * SAVED_LINES)]
    assert [p.name for p in tmp_path.iterdir()] == ["history"]  # no temporary file left


def test_what_cannot_be_offered_again_is_skipped(tmp_path: Path) -> None:
    """Lines with control characters (an escape sequence written there by someone or
    something else), bad UTF-8 and empty lines are not loaded; lines that cannot be
    one line are not saved."""
    (tmp_path / "history").write_bytes(b"ok\n\x1b[2Jevil\n\xff\xfe\n\nfine\n")
    os.chmod(tmp_path / "history", 0o600)
    saved = SavedHistory(str(tmp_path))
    saved.add(b"two\nlines")
    saved.add(b"")
    assert saved.load() == [b"ok", b"fine"]


def test_an_unusable_place_costs_only_the_history(tmp_path: Path) -> None:
    """A state folder that is a file: nothing is saved, nothing raises."""
    (tmp_path / "state").write_text("not a folder")
    saved = SavedHistory(str(tmp_path / "state" / "udpchat"))
    saved.add(b"line")
    assert saved.load() == []


def _add_many(folder: str, who: str, count: int) -> None:
    saved = SavedHistory(folder)
    for i in range(count):
        saved.add(f"{who} {i} ".encode() + b"x" * 40)


def _run_two_writers(folder: Path) -> list[bytes]:
    context = multiprocessing.get_context("fork")  # forked: sees monkeypatched limits
    writers = [context.Process(target=_add_many, args=(str(folder), who, 400)) for who in "ab"]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(30)
        assert writer.exitcode == 0
    raw = (folder / "history").read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.splitlines()
    assert all(len(line.split()) == 3 and line.endswith(b"x" * 40) for line in lines)
    return lines


def _numbers(lines: list[bytes], who: bytes) -> list[int]:
    return [int(line.split()[1]) for line in lines if line.startswith(who + b" ")]


def test_two_clients_at_once_lose_and_break_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes appending at once: every line is whole and there, each writer's
    in its own order; also while the file is being trimmed (then the file's last line
    is the last line one of them added)."""
    lines = _run_two_writers(tmp_path)
    for who in (b"a", b"b"):
        assert _numbers(lines, who) == list(range(400))

    monkeypatch.setattr(inputhistory, "TRIM_AT_BYTES", 8192)  # 800 lines: many trims
    (tmp_path / "history").unlink()
    lines = _run_two_writers(tmp_path)
    for who in (b"a", b"b"):
        assert _numbers(lines, who) == sorted(set(_numbers(lines, who)))  # no repeats
    assert int(lines[-1].split()[1]) == 399
    assert [p.name for p in tmp_path.iterdir()] == ["history"]


def test_the_state_folder_is_made_private_for_ids_and_history(
    tmp_path: Path, loose_umask: None
) -> None:
    """The kept client ids and the history share $XDG_STATE_HOME/udpchat: whichever
    comes first makes it 0700, and one an earlier version left 0755 becomes 0700."""
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    _, lock = claim_client_id("chat.example", 12345, "alice", env)
    assert lock is not None
    os.close(lock)
    folder = Path(state_folder(env))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "ids").stat().st_mode) == 0o700
    os.chmod(folder, 0o755)  # as os.makedirs left it before
    SavedHistory(str(folder)).add(b"hi")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
