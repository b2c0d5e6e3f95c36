"""udpchat-client's command line: setup errors are one line and exit status 2; the
key file is found where --help says; pipe mode works against the real daemon."""

from __future__ import annotations

import os
import queue
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from daemon import Daemon

from udpchat.chat.server import ServerSettings
from udpchat.client.cli import (
    build_parser,
    client_protocol_config,
    default_key_path,
    nick_from_login,
)
from udpchat.client.display import ViewOptions
from udpchat.core.limits import TESTING_SHORT_IDLE_ENV

CLIENT = [sys.executable, "-m", "udpchat.client.cli"]


def run_client(
    args: list[str], env: dict[str, str], stdin: str = "", timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        CLIENT + args,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def assert_setup_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit status 2, nothing on stdout, exactly one line on stderr, no traceback."""
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("udpchat-client: ")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture
def env(subprocess_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """No key in the default places: HOME and XDG_CONFIG_HOME point into tmp_path."""
    subprocess_env.pop("UDPCHAT_KEY_FILE", None)
    subprocess_env["HOME"] = str(tmp_path / "home")
    subprocess_env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    return subprocess_env


def test_unknown_host(env: dict[str, str], psk_file: Path) -> None:
    """A host name that does not resolve, alone or in a list of daemons, is a setup
    error naming that host as "cannot resolve host '...'"."""
    hosts = "127.0.0.1:4000,no-such-host.invalid:4001"
    result = run_client([hosts, "--key", str(psk_file)], env)
    assert_setup_error(result, "cannot resolve host 'no-such-host.invalid'")


def test_missing_key_file(env: dict[str, str], tmp_path: Path) -> None:
    """A --key file that does not exist is a setup error naming the path and saying it
    does not exist."""
    missing = tmp_path / "nope.key"
    result = run_client(["127.0.0.1", "--key", str(missing)], env)
    assert_setup_error(result, str(missing), "does not exist")


def test_missing_corrupt_or_misplaced_keys_get_a_clients_advice(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A client's key must be a copy of the server's: a missing, corrupt or misplaced
    key file gets that advice, never "make one with udpchat-keygen" (a new key never
    matches the server's) nor the daemon's key_file setting."""
    missing = tmp_path / "nope.key"
    result = run_client(["127.0.0.1", "--key", str(missing)], env)
    assert_setup_error(result, str(missing), "get a copy of the server's key file", "invite")
    corrupt = tmp_path / "corrupt.key"
    corrupt.write_text("not a key\n")
    corrupt.chmod(0o600)
    result = run_client(["127.0.0.1", "--key", str(corrupt)], env)
    assert_setup_error(result, "corrupt", "get a fresh copy of the server's key file")
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    result = run_client(["127.0.0.1", "--key", str(folder)], env)
    assert_setup_error(result, "is a folder", "fix: give the path of the key file itself")
    for text in (result.stderr, run_client(["127.0.0.1", "--key", str(corrupt)], env).stderr):
        assert "udpchat-keygen" not in text and "key_file" not in text


def test_missing_default_key_names_the_path_and_the_options(env: dict[str, str]) -> None:
    """With no key given and none at the default place, the setup error names the
    default path under XDG_CONFIG_HOME and both ways to give a key: --key and
    UDPCHAT_KEY_FILE."""
    result = run_client(["127.0.0.1"], env)
    expected = Path(env["XDG_CONFIG_HOME"]) / "udpchat" / "chat.key"
    assert_setup_error(result, str(expected), "--key", "UDPCHAT_KEY_FILE")


def test_group_readable_key_is_refused(env: dict[str, str], psk_file: Path) -> None:
    """A key file readable by its group (mode 0640) is refused with a setup error naming
    the file and the chmod 600 fix."""
    psk_file.chmod(0o640)
    result = run_client(["127.0.0.1", "--key", str(psk_file)], env)
    assert_setup_error(result, str(psk_file), "chmod 600")


def test_other_readable_key_is_refused(env: dict[str, str], psk_file: Path) -> None:
    """A key file readable by others (mode 0604) is refused with a one-line setup error."""
    psk_file.chmod(0o604)
    result = run_client(["127.0.0.1", "--key", str(psk_file)], env)
    assert_setup_error(result, "refusing")


def test_corrupt_key_is_refused(env: dict[str, str], psk_file: Path) -> None:
    """A key file that holds no valid key is refused with a setup error naming the file
    and calling it corrupt, without echoing its contents."""
    psk_file.write_text("this is not a key\n")
    result = run_client(["127.0.0.1", "--key", str(psk_file)], env)
    assert_setup_error(result, str(psk_file), "corrupt")
    assert "this is not a key" not in result.stderr  # key material never echoed


def test_key_from_environment_variable(env: dict[str, str], tmp_path: Path) -> None:
    """Without --key, the client uses the key file UDPCHAT_KEY_FILE names: when that
    file is missing, the setup error names it."""
    env["UDPCHAT_KEY_FILE"] = str(tmp_path / "from-env.key")
    result = run_client(["127.0.0.1"], env)
    assert_setup_error(result, "from-env.key")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--nick", "9lives"], "bad --nick"),
        (["--nick", ""], "bad --nick"),
        (["--room", "no spaces"], "bad --room"),
    ],
)
def test_bad_nick_or_room(
    env: dict[str, str], psk_file: Path, args: list[str], needle: str
) -> None:
    """An invalid --nick (leading digit or empty) or --room (containing a space) is a
    setup error naming the bad option."""
    result = run_client(["127.0.0.1", "--key", str(psk_file), *args], env)
    assert_setup_error(result, needle)


def test_bad_port_is_a_usage_error(env: dict[str, str], psk_file: Path) -> None:
    """A --port outside 1..65535 is a usage error: exit status 2, and stderr says
    "port must be 1..65535"."""
    result = run_client(["127.0.0.1", "--port", "70000"], env)
    assert result.returncode == 2
    assert "port must be 1..65535" in result.stderr


def test_help_documents_key_lookup_and_pipe_mode(env: dict[str, str]) -> None:
    """--help exits 0 and documents --key PATH, UDPCHAT_KEY_FILE, XDG_CONFIG_HOME,
    ~/.config and --port, and that the user's own lines are not printed."""
    result = run_client(["--help"], env)
    assert result.returncode == 0
    for needle in ("--key PATH", "UDPCHAT_KEY_FILE", "XDG_CONFIG_HOME", "~/.config", "--port"):
        assert needle in result.stdout
    assert "Your own lines are not printed" in result.stdout


def test_default_key_path() -> None:
    """The key file is UDPCHAT_KEY_FILE if set and non-empty, else udpchat/chat.key
    under XDG_CONFIG_HOME, else ~/.config/udpchat/chat.key."""
    assert default_key_path({"UDPCHAT_KEY_FILE": "/k"}) == Path("/k")
    assert default_key_path({"XDG_CONFIG_HOME": "/x"}) == Path("/x/udpchat/chat.key")
    home = Path(os.path.expanduser("~"))
    assert default_key_path({}) == home / ".config" / "udpchat" / "chat.key"
    assert default_key_path({"UDPCHAT_KEY_FILE": ""}) == home / ".config/udpchat/chat.key"


@pytest.mark.parametrize(
    ("login", "nick"),
    [
        ("alice", "alice"),
        ("john.doe", "john_doe"),
        ("1234", "_1234"),
        ("-x", "_-x"),
        ("ünïcode", "_n_code"),
        ("a" * 40, "a" * 24),
        ("", "user"),
    ],
)
def test_nick_from_login(login: str, nick: str) -> None:
    """A login name becomes a valid nick: characters that may not appear become '_', a
    leading non-letter gets a '_' prefix, it is cut to 24 characters, and an empty
    login gives "user"."""
    assert nick_from_login(login) == nick


# --- pipe mode against the real daemon ---------------------------------------------------


class LineReader:
    """Collects a subprocess's stdout lines in a thread (select() and buffered text
    files do not mix)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                self.lines.put(line.rstrip("\n"))
            self.lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def wait_for(self, needle: str, timeout: float = 20) -> list[str]:
        """Lines up to and including the first one containing ``needle``."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"{needle!r} not seen; got {seen}")
            seen.append(line)
            if needle in line:
                return seen


def test_pipe_mode_end_to_end(daemon: Daemon, env: dict[str, str]) -> None:
    """A script's lines reach another client in order, as "<nick> text"; the script
    does not see its own lines, waits for delivery at EOF and exits 0."""
    key = str(daemon.key_file)
    port = str(daemon.port)
    bob = subprocess.Popen(
        [*CLIENT, "127.0.0.1", "--port", port, "--key", key, "--nick", "bob"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        bob_out = LineReader(bob)
        bob_out.wait_for("-!- bob has joined lobby")
        lines = [f"line {i} ünïcode" for i in range(50)]
        script = "\n".join([*lines, "/me waves", "/msg bob psst", "/who"]) + "\n"
        alice = run_client(
            ["localhost", "--port", port, "--key", key, "--nick", "alice"], env, stdin=script
        )
        assert alice.returncode == 0, alice.stderr
        assert alice.stderr == ""
        assert "-!- Users in lobby: alice bob" in alice.stdout
        assert "<alice>" not in alice.stdout  # own lines are not printed in pipe mode
        seen = bob_out.wait_for("-!- alice has left lobby (quit)")
        said = [line for line in seen if line.startswith("<alice>")]
        assert said == [f"<alice> {text}" for text in lines]
        assert "* alice waves" in seen and "*alice* psst" in seen
        assert bob.stdin is not None
        bob.stdin.close()  # EOF: bob says bye and exits 0
        assert bob.wait(20) == 0
    finally:
        if bob.poll() is None:
            bob.kill()
            bob.wait()


def test_pipe_mode_exit_status_1_when_a_line_is_refused(
    daemon: Daemon, env: dict[str, str]
) -> None:
    """In pipe mode a line refused locally (an unknown command) is reported on stdout as
    "!!! unknown command ..." and makes the client exit with status 1."""
    result = run_client(
        ["127.0.0.1", "--port", str(daemon.port), "--key", str(daemon.key_file)],
        env,
        stdin="fine\n/nosuchcommand\n",
    )
    assert result.returncode == 1
    assert "!!! unknown command /nosuchcommand" in result.stdout


def test_idle_timeout_sets_the_session_expiry_and_keeps_give_up_longer() -> None:
    """--idle-timeout (default 30 s) becomes the core's session expiry; lines give up
    no sooner than 60 s and always after the session would have expired, as on the
    server, so a silent server ends the session (and lines are resent) first."""
    assert build_parser({}).parse_args(["h"]).idle_timeout == 30
    assert build_parser({}).parse_args(["h", "--idle-timeout", "90"]).idle_timeout == 90
    default = client_protocol_config(30)
    assert (default.session_expiry_s, default.give_up_s) == (30, 60)
    long = client_protocol_config(90)
    assert (long.session_expiry_s, long.give_up_s) == (90, 180)


def test_idle_timeout_below_15_s_only_for_the_test_suite(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Below 15 s one lost server keepalive (every 10 s) would end an idle session, so
    --idle-timeout refuses it; only the test suite's variable lowers the floor (to
    1 s)."""
    with pytest.raises(SystemExit):
        build_parser({}).parse_args(["h", "--idle-timeout", "14.9"])
    assert "must be 15..3600 seconds" in capsys.readouterr().err
    testing = build_parser({TESTING_SHORT_IDLE_ENV: "1"})
    assert testing.parse_args(["h", "--idle-timeout", "3"]).idle_timeout == 3
    with pytest.raises(SystemExit):
        testing.parse_args(["h", "--idle-timeout", "0.5"])
    assert client_protocol_config(3).give_up_s == 60


def test_a_peer_sends_keepalives_at_most_a_third_of_its_idle_timeout_apart() -> None:
    """10 s apart at the default 30 s and above; closer below it, so that a daemon and
    its clients set alike (say 15 s, or a test's 3 s) keep an idle session through two
    lost keepalives instead of one. The daemon follows the same rule."""
    assert client_protocol_config(30).keepalive_s == 10
    assert client_protocol_config(600).keepalive_s == 10
    assert client_protocol_config(15).keepalive_s == 5
    assert client_protocol_config(3).keepalive_s == 1
    assert ServerSettings(idle_timeout_s=6).protocol_config().keepalive_s == 2
    assert ServerSettings().protocol_config().keepalive_s == 10


def test_the_client_id_is_kept_per_server_and_nick_and_never_shared_while_in_use(
    tmp_path: Path,
) -> None:
    """A client started again with the same nick and server gets the id it had (so it
    takes its place back); while one holds it, another gets a fresh one (so two
    clients with one nick never take each other's place back and forth)."""
    from udpchat.client.identity import claim_client_id

    env = {"XDG_STATE_HOME": str(tmp_path)}
    first, lock = claim_client_id("chat.example", 12345, "Alice", env)
    assert lock is not None and len(first) == 16
    busy, no_lock = claim_client_id("chat.example", 12345, "alice", env)  # same nick
    assert no_lock is None and busy != first
    other, other_lock = claim_client_id("chat.example", 12345, "bob", env)
    assert other_lock is not None and other != first
    os.close(lock)  # the first client ends (or is killed)
    again, again_lock = claim_client_id("chat.example", 12345, "alice", env)
    assert again == first and again_lock is not None
    folder = tmp_path / "udpchat" / "ids"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())


@pytest.mark.parametrize(
    ("text", "port", "expected"),
    [
        ("chat.example", None, ("chat.example", 12345)),
        ("chat.example:4000", None, ("chat.example", 4000)),
        ("192.0.2.2:12345", None, ("192.0.2.2", 12345)),
        ("[::1]", None, ("::1", 12345)),
        ("[::1]:4000", None, ("::1", 4000)),
        ("[2001:db8::2]:4000", 4000, ("2001:db8::2", 4000)),
        ("::1", 4000, ("::1", 4000)),
        ("chat.example", 4000, ("chat.example", 4000)),
    ],
)
def test_host_may_carry_its_port_as_the_daemon_logs_it(
    text: str, port: int | None, expected: tuple[str, int]
) -> None:
    """Issue 11: "Clients can connect to 192.0.2.2:12345" can be pasted as HOST."""
    from udpchat.client.cli import split_servers

    assert split_servers(text, port) == [expected]


@pytest.mark.parametrize(
    ("text", "port"), [("chat.example:4000", 5000), ("[::1", None), ("[::1]x", None),
                       ("[::1]:", None), (":4000", None), ("host:99999", None)],
)  # fmt: skip
def test_a_bad_host_port_is_one_line_and_status_2(text: str, port: int | None) -> None:
    from udpchat.client.cli import split_servers

    with pytest.raises(SystemExit) as exit_:
        split_servers(text, port)
    assert exit_.value.code == 2


@pytest.mark.parametrize(
    ("text", "port", "expected"),
    [
        ("a:4000,b:4001", None, [("a", 4000), ("b", 4001)]),
        ("a:4000, [::1]:4001 ,b", None, [("a", 4000), ("::1", 4001), ("b", 12345)]),
        ("a,b", 4000, [("a", 4000), ("b", 4000)]),
        ("a:4000,b", 4000, [("a", 4000), ("b", 4000)]),
        ("a", None, [("a", 12345)]),
    ],
)
def test_host_may_be_a_list_of_daemons(
    text: str, port: int | None, expected: list[tuple[str, int]]
) -> None:
    """A cluster's daemons, comma-separated, each as the daemon logs its address;
    --port (or the default) is the port of those without one."""
    from udpchat.client.cli import split_servers

    assert split_servers(text, port) == expected


@pytest.mark.parametrize(
    ("text", "port", "words"),
    [
        ("a:4000,,b:4001", None, "an empty entry in the list"),
        ("a:4000,", None, "an empty entry in the list"),
        ("a:4000,b:4001", 4000, "says port 4001 but --port says 4000"),
        ("a:4000,[::1", None, "write [IPv6 address]"),
    ],
)
def test_a_bad_list_of_daemons_is_one_line_and_status_2(
    text: str, port: int | None, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from udpchat.client.cli import split_servers

    with pytest.raises(SystemExit) as exit_:
        split_servers(text, port)
    assert exit_.value.code == 2
    assert words in capsys.readouterr().err


def test_the_config_files_host_may_be_a_list_of_daemons(tmp_path: Path, psk_file: Path) -> None:
    """host = in client.ini takes the same list as HOST; --port applies to all."""
    from udpchat.client.cli import servers_and_key
    from udpchat.client.config import ClientConfig

    config = ClientConfig(host="chat-a:4000, chat-b:4001", key=psk_file)
    servers, _ = servers_and_key(build_parser({}).parse_args([]), config, {})
    assert servers == [("chat-a", 4000), ("chat-b", 4001)]
    servers, _ = servers_and_key(build_parser({}).parse_args(["--port", "5"]), config, {})
    assert servers == [("chat-a", 5), ("chat-b", 5)]


def test_version_prints_the_program_and_its_version(capsys: pytest.CaptureFixture[str]) -> None:
    from udpchat import __version__
    from udpchat.client.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"udpchat-client {__version__}"


def test_no_bell_turns_the_bell_off_and_only_that() -> None:
    """--no-bell: terminal mode rings no bell for mentions and private lines; the bell
    rings by default, unless the config file says `bell = no` (the flag is None when
    not given, so that the file's value counts)."""
    assert build_parser({}).parse_args(["h"]).bell is None
    assert build_parser({}).parse_args(["h", "--no-bell"]).bell is False
    assert ViewOptions().bell and not ViewOptions(bell=False).style(True, {}).bell
