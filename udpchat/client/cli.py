"""``udpchat-client``: the command line entry point (argument parsing, the config file,
key lookup, invite lines, name resolution, and the choice between terminal and pipe
mode)."""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NoReturn, cast

from udpchat import __version__
from udpchat.address import (
    DEFAULT_PORT,
    AddressError,
    join_host_port,
    parse_port,
    split_server_list,
)
from udpchat.chat import messages
from udpchat.client.chatlog import ChatLog, ChatLogError, open_chat_log
from udpchat.client.config import (
    ClientConfig,
    ConfigError,
    add_config_arguments,
    config_path,
    load_client_config,
    merge,
)
from udpchat.client.display import ViewOptions
from udpchat.core.limits import (
    IDLE_TIMEOUT_MAX_S,
    IDLE_TIMEOUT_MIN_S,
    ProtocolConfig,
    idle_timeout_floor_s,
    keepalive_s,
)
from udpchat.fingerprint import fingerprint
from udpchat.invite import InviteError, is_invite, parse_invite, save_key
from udpchat.keys import CLIENT, KeyFileError, KeyFileNotFound, load_key
from udpchat.reactorclock import use_monotonic_clock

PROG = "udpchat-client"
#: Exit status for a usage or setup problem (bad arguments, key, unknown host).
EXIT_SETUP = 2
#: Exit status when the run was interrupted or lines were not delivered.
EXIT_FAILED = 1
#: Exit status when the server did not answer within --timeout.
EXIT_NO_ANSWER = 3
#: With several addresses for the server (a name with several, or a list of daemons),
#: a handshake unanswered this long moves on to the next one (e.g. "localhost" = ::1
#: and 127.0.0.1, server on IPv4 only).
ADDRESS_FALLBACK_S = 3.0
#: On SIGINT/SIGTERM, how long the front end may take to write its last lines.
SHUTDOWN_FLUSH_S = 1.0
#: Terminal mode prints errors (a bug's traceback) only once the terminal is restored:
#: the last this many are kept until then, the earlier ones only counted.
ERRORS_KEPT = 5
#: --idle-timeout: how long the server may stay silent before the session counts as
#: lost; bounded like the daemon's idle_timeout (udpchat.core.limits).
IDLE_TIMEOUT_DEFAULT_S = 30.0

DESCRIPTION = """\
Encrypted group chat over UDP: connect to the udpchat server on HOST.

HOST may be a comma-separated list, HOST:PORT,HOST:PORT,... (the daemons of a
cluster): they are tried in turn, and when the connection to one is lost the
client moves on to the next, with the same nick and client id, and sends again
what that one had not acknowledged.

Terminal mode (stdin and stdout are a terminal): a line editor with history, Tab
completion and Ctrl-R search; type /help for the commands. /quit leaves, and so do
Ctrl-D and Ctrl-C on an empty line. A line that mentions your nick, or a private
one, rings the terminal bell (--no-bell: not) and is highlighted.

Pipe mode (otherwise), for scripts: every input line is sent in order (commands work
too, '//text' sends '/text'), and every event is printed as one plain line, such as
"<alice> hello", "* alice waves", "*bob* hi", "-!- bob has joined lobby" or
"!!! error"; a line replayed from the room's history starts with "[HH:MM] ".
--timestamps puts the time before every line: "2026-12-01T21:27:37Z <alice> hello"
(iso, UTC, the default) or "[21:27] <alice> hello" (hhmm, local time). What the
client says about reaching the server goes to stderr.
Your own lines are not printed. At end of input the client waits until the server
acknowledged every line, says bye and exits. If nothing reads its output, it stops
reading from the network (64 KiB of output wait) until output drains."""

EPILOG = """\
key file (the group's pre-shared key, mode 0600), first found of:
  --key PATH, $UDPCHAT_KEY_FILE, key in the config file,
  $XDG_CONFIG_HOME/udpchat/chat.key (XDG_CONFIG_HOME defaults to ~/.config)

config file: $XDG_CONFIG_HOME/udpchat/client.ini (or --config PATH), section
  [client], keys host, port, nick, room, key, colours, timestamps, bell, input_history, log,
  timeout; a flag given here wins over the file (README lists the keys)

input history (terminal mode): $XDG_STATE_HOME/udpchat/history, the last 1,000
  lines (XDG_STATE_HOME defaults to ~/.local/state)

invite line: HOST may be a line from `udpchat-keygen --invite` (quote it):
  udpchat-client 'udpchat://HOST:PORT/#KEY' [--save-key [--key PATH] [--force]]
  connects with the line's key; --save-key keeps it (mode 0600) at --key PATH or where
  the client looks by default, so that next time `udpchat-client HOST:PORT` is enough

exit status:
  0  done (pipe mode: every line was delivered)
  1  pipe mode: a line was refused or not delivered; or interrupted
  2  bad arguments or invite line, unusable key, config or log file, unknown host
  3  the server did not answer within --timeout"""


def fail(text: str) -> NoReturn:
    """One line on stderr, exit status 2: setup problems are not worth a traceback."""
    print(f"{PROG}: {text}", file=sys.stderr)
    raise SystemExit(EXIT_SETUP)


def default_key_path(env: Mapping[str, str]) -> Path:
    """Where the key is when --key is not given (see EPILOG)."""
    if env.get("UDPCHAT_KEY_FILE"):
        return Path(env["UDPCHAT_KEY_FILE"])
    config = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "udpchat" / "chat.key"


def nick_from_login(login: str) -> str:
    """A valid nick made from a login name: other characters become '_'."""
    nick = "".join(c if messages.valid_nick("a" + c) else "_" for c in login)
    if nick and not messages.valid_nick(nick[0]):
        nick = "_" + nick  # no leading digit or '-'
    nick = nick[: messages.NICK_MAX_CHARS]
    return nick if messages.valid_nick(nick) else "user"


def default_nick() -> str:
    try:
        return nick_from_login(getpass.getuser())
    except (KeyError, OSError):  # no login name (a container without a passwd entry)
        return "user"


def _port(text: str) -> int:
    try:
        return parse_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return seconds


def _idle_timeout(minimum_s: float) -> Any:
    """An argparse type: seconds, minimum_s..IDLE_TIMEOUT_MAX_S."""

    def parse(text: str) -> float:
        try:
            seconds = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not minimum_s <= seconds <= IDLE_TIMEOUT_MAX_S:
            raise argparse.ArgumentTypeError(
                f"must be {minimum_s:g}..{IDLE_TIMEOUT_MAX_S:g} seconds, not {text}"
            )
        return seconds

    return parse


def client_protocol_config(idle_timeout_s: float) -> ProtocolConfig:
    """The core's timers for a client whose server may be silent ``idle_timeout_s``."""
    return ProtocolConfig(
        session_expiry_s=idle_timeout_s,
        keepalive_s=keepalive_s(idle_timeout_s),
        # As the server does: a silent server must end the session before any line
        # gives up on it (that would report it undelivered instead of resending it).
        give_up_s=max(60.0, 2 * idle_timeout_s),
        # A client mostly receives room lines in bursts: one ack per 100 ms instead
        # of per 25 ms halves its wake-ups (PROTOCOL.md 5.4 allows up to 100 ms).
        ack_delay_s=0.1,
        # Twice what a room may relay (100/s, PROTOCOL.md 7.6), so that a room at
        # full speed plus a few private messages never meets this limit.
        message_rate_per_s=200.0,
        message_burst=400,
    )


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    idle_min_s = idle_timeout_floor_s(env)
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "host",
        metavar="HOST",
        nargs="?",
        help="server name or IPv4/IPv6 address, with :PORT if you like (as the daemon"
        " logs it: 192.0.2.2:12345, [2001:db8::2]:12345); or a comma-separated list of"
        " them (several daemons of a cluster, tried in turn: chat-a:12345,chat-b:12345);"
        " or an invite line (udpchat://HOST:PORT/#KEY, see below); default: host in the"
        " config file",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=None,
        help=f"server UDP port, for every HOST without one (default {DEFAULT_PORT})",
    )
    parser.add_argument("--key", metavar="PATH", type=Path, help="pre-shared key file")
    parser.add_argument(
        "--save-key",
        action="store_true",
        help="with an invite line: save its key (mode 0600) at --key PATH or the default place",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --save-key: replace a different key already there",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_seconds,
        help="give up (exit status 3) when the server has not answered for this long, at"
        " the start or after losing it; with no input, still wait to see it answer",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--nick", metavar="NAME", help="your nick (default: your login name)")
    parser.add_argument(
        "--room", metavar="ROOM", help=f"room to start in (default {messages.DEFAULT_ROOM})"
    )
    parser.add_argument(
        "--no-input-history",
        dest="input_history",
        action="store_false",
        default=None,  # not given: the config file's "input_history", else yes
        help="terminal mode: do not keep what you type across runs (nor read what was kept)",
    )
    parser.add_argument(
        "--no-bell",
        dest="bell",
        action="store_false",
        default=None,  # not given: the config file's "bell", else yes
        help="terminal mode: no bell when your nick is mentioned or a private line arrives",
    )
    parser.add_argument(
        "--idle-timeout",
        metavar="SECONDS",
        type=_idle_timeout(idle_min_s),
        default=IDLE_TIMEOUT_DEFAULT_S,
        help=(
            "after this long without a word from the server the connection counts as"
            f" lost and the client reconnects (default {IDLE_TIMEOUT_DEFAULT_S:g},"
            f" {IDLE_TIMEOUT_MIN_S:g}..{IDLE_TIMEOUT_MAX_S:g})"
        ),
    )
    add_config_arguments(parser)
    return parser


def split_servers(
    text: str, port: int | None, default_port: int | None = None
) -> list[tuple[str, int]]:
    """[(host, port), ...] of HOST as the daemon logs it ("NAME", "NAME:PORT",
    "1.2.3.4:PORT", "[::1]", "[::1]:PORT"; a bare IPv6 address "::1" is a host), or of a
    comma-separated list of them (udpchat.address). `port` is --port (None if not
    given); a port in HOST and a different --port are a usage error. Without either,
    `default_port` (the config file's), else DEFAULT_PORT."""
    try:
        entries = split_server_list(text)
    except AddressError as exc:
        fail(str(exc))
    return [(host, _one_port(text, in_host, port, default_port)) for host, in_host in entries]


def _one_port(
    text: str, in_host: int | None, port: int | None, default_port: int | None = None
) -> int:
    if in_host is None:
        if port is not None:
            return port
        return DEFAULT_PORT if default_port is None else default_port
    if port is not None and in_host != port:
        fail(f"HOST {text!r} says port {in_host} but --port says {port}: give one")
    return in_host


def read_config(args: argparse.Namespace, env: Mapping[str, str]) -> ClientConfig:
    """The config file's settings (see udpchat.client.config); a mistake in it is a
    setup error naming the file, the key and the fix."""
    if args.no_config:
        return ClientConfig()
    try:
        if args.config is not None:
            return load_client_config(args.config, must_exist=True)
        return load_client_config(config_path(env))
    except ConfigError as exc:
        fail(str(exc))


def choose_key_path(args: argparse.Namespace, config: ClientConfig, env: Mapping[str, str]) -> Path:
    """--key, else $UDPCHAT_KEY_FILE, else the config file's key, else the default."""
    if args.key is not None:
        return Path(args.key)
    if config.key is not None and not env.get("UDPCHAT_KEY_FILE"):
        return config.key
    return default_key_path(env)


def servers_and_key(
    args: argparse.Namespace, config: ClientConfig, env: Mapping[str, str]
) -> tuple[list[tuple[str, int]], bytes]:
    """([(host, port), ...], key) from HOST (or the config file's host) and the key
    options: an invite line carries one server and its key (and --save-key keeps the
    key); otherwise HOST may be a list of servers, and the key comes from its file. A
    port in HOST on the command line wins over the file's port; --port wins over any."""
    text = args.host
    if text is None:
        if config.host is None:
            where = config.path or config_path(env)
            fail(
                f"no HOST given; fix: udpchat-client HOST, or set host = HOST in [client] "
                f"of {where}"
            )
        text = config.host
    elif not text.strip():
        fail("HOST must not be empty")
    if not is_invite(text):
        if args.save_key or args.force:
            fail("--save-key and --force go with an invite line (udpchat://HOST:PORT/#KEY)")
        if args.host is not None:
            servers = split_servers(text, args.port, config.port)
        else:
            servers = split_servers(text, None, config.port)
            if args.port is not None:
                servers = [(host, args.port) for host, _ in servers]
        return servers, _load_client_key(args, config, env)
    try:
        invite = parse_invite(text)
    except InviteError as exc:
        fail(str(exc))  # never quotes the line: it holds the key
    port = _one_port(join_host_port(invite.host, invite.port), invite.port, args.port)
    where = choose_key_path(args, config, env)
    if args.force and not args.save_key:
        fail("--force goes with --save-key")
    if args.save_key:
        try:
            saved = save_key(where, invite.key, force=args.force)
        except KeyFileError as exc:
            fail(str(exc))
        done = "saved" if saved else "already had"
        print(f"{PROG}: {done} the invite's key in {where} (mode 0600)", file=sys.stderr)
    elif args.key is not None:
        fail("an invite line carries its key: leave out --key (or add --save-key to save it there)")
    else:
        print(
            f"{PROG}: using the invite's key; add --save-key to keep it in {where}, then"
            f" `{PROG} {join_host_port(invite.host, port)}` is enough",
            file=sys.stderr,
        )
    return [(invite.host, port)], invite.key


def _load_client_key(
    args: argparse.Namespace, config: ClientConfig, env: Mapping[str, str]
) -> bytes:
    """The key from --key, $UDPCHAT_KEY_FILE, the config file or the default place,
    with a client's advice on failure."""
    key_path = choose_key_path(args, config, env)
    try:
        return load_key(key_path, CLIENT)
    except KeyFileNotFound as exc:
        hint = " (or pass --key PATH, or set UDPCHAT_KEY_FILE)"
        if args.key is not None:
            hint = ""
        elif key_path == config.key:
            hint = f" (named by key in {config.path})"
        fail(f"{exc}{hint}, or connect with an invite line and --save-key")
    except KeyFileError as exc:
        fail(str(exc))


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console script entry point."""
    args = build_parser().parse_args(argv)
    config = read_config(args, os.environ)
    settings = merge(args, config)  # a flag given wins over the config file
    nick = settings.nick if settings.nick is not None else default_nick()
    if reason := messages.nick_error(nick):
        fail(f"bad --nick {nick!r}: {reason}")
    room = messages.normalize_room(
        settings.room if settings.room is not None else messages.DEFAULT_ROOM
    )
    if reason := messages.room_error(room):
        fail(f"bad --room {settings.room!r}: {reason}")
    servers, psk = servers_and_key(args, config, os.environ)
    view = ViewOptions(
        colours=settings.colours is not False,
        timestamps=settings.timestamps,
        history=args.history is not False,
        bell=settings.bell is not False,
    )
    chat_log = None
    if settings.log is not None:
        try:
            chat_log = open_chat_log(settings.log, history=view.history)
        except ChatLogError as exc:
            fail(str(exc))
    keep = settings.input_history is not False  # --no-input-history
    timeout = settings.timeout
    sys.exit(run(servers, psk, nick, room, args.idle_timeout, view, chat_log, timeout, keep))


def run(
    servers: Sequence[tuple[str, int]],
    psk: bytes,
    nick: str,
    room: str,
    idle_timeout_s: float = IDLE_TIMEOUT_DEFAULT_S,
    view: ViewOptions | None = None,
    chat_log: ChatLog | None = None,
    timeout_s: float | None = None,
    input_history: bool = True,
) -> int:
    """Resolve, connect and chat until done; return the exit status. ``servers``: the
    server's (host, port), or several daemons' in the order to try them; ``timeout_s``:
    --timeout (None: wait for the server for ever)."""
    import select

    if hasattr(select, "epoll"):  # Linux: the leaner reactor (udpchat.client.reactor)
        from udpchat.client.reactor import install

        install()
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor
    use_monotonic_clock(reactor)  # before anything is scheduled
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    with ExitStack() as cleanup:
        if chat_log is not None:
            cleanup.callback(chat_log.close)
        runner = Runner(
            reactor,
            cleanup,
            servers,
            psk,
            nick,
            room,
            interactive,
            idle_timeout_s,
            view=view,
            chat_log=chat_log,
            timeout_s=timeout_s,
            input_history=input_history,
        )
        reactor.callWhenRunning(runner.start)
        reactor.run()
    # The terminal is restored here (ExitStack); only now may errors be printed.
    for line in runner.error_lines():
        print(line, file=sys.stderr)
    return runner.exit_code


def describe_resolve_error(host: str, exc: BaseException) -> str:
    """One line for a failed lookup of ``host``."""
    if isinstance(exc, socket.gaierror) and exc.strerror:
        return f"cannot resolve host {host!r}: {exc.strerror}"
    return f"cannot resolve host {host!r}: {exc}"


class Runner:
    """What happens inside the reactor: resolve HOST, start the front end, stop.

    Errors end up in ``errors`` (printed once the terminal is restored) and the exit
    status in ``exit_code``.
    """

    def __init__(
        self,
        reactor: Any,
        cleanup: ExitStack,
        servers: Sequence[tuple[str, int]],
        psk: bytes,
        nick: str,
        room: str,
        interactive: bool,
        idle_timeout_s: float = IDLE_TIMEOUT_DEFAULT_S,
        *,
        view: ViewOptions | None = None,
        chat_log: ChatLog | None = None,
        timeout_s: float | None = None,
        input_history: bool = True,
    ) -> None:
        self.reactor = reactor
        self.cleanup = cleanup
        if not servers:
            raise ValueError("no server")
        self.servers, self.psk = list(servers), psk
        self.nick, self.room = nick, room
        self.interactive = interactive
        self.idle_timeout_s = idle_timeout_s
        self.timeout_s = timeout_s  # --timeout
        self.input_history = input_history  # False: --no-input-history
        self.exit_code = 0
        self.errors: deque[str] = deque(maxlen=ERRORS_KEPT)  # see ERRORS_KEPT
        self.errors_dropped = 0
        self.view = view or ViewOptions()  # colours, timestamps, history
        self.chat_log = chat_log  # --log
        self.chat: Any = None
        self.link: Any = None
        self._exited: Any = None  # Deferred: the front end is gone (during shutdown)

    def start(self) -> None:
        from udpchat.client.link import resolve

        self._start_logging()
        d = resolve(self.servers)
        d.addCallbacks(self._resolved, self._resolve_failed)
        d.addErrback(self._crashed)

    def _start_logging(self) -> None:
        """Twisted buffers log events until told where to put them: keep the errors
        (a bug's traceback), drop the chatter."""
        from twisted.logger import globalLogBeginner

        globalLogBeginner.beginLoggingTo([cast(Any, self.log_event)], redirectStandardIO=False)

    def log_event(self, event: dict[str, Any]) -> None:
        """A Twisted log event: an error is printed on stderr (pipe mode) or kept to
        print once the terminal is restored (terminal mode); the rest is dropped."""
        from twisted.logger import LogLevel, formatEventAsClassicLogText

        if event.get("log_level", LogLevel.info) >= LogLevel.error or event.get("isError"):
            text = (formatEventAsClassicLogText(event) or "").rstrip("\n")
            if self.interactive:
                self.add_error(text)  # the screen is in raw mode: print later
            else:
                print(text, file=sys.stderr, flush=True)

    def add_error(self, text: str) -> None:
        """Keep ``text`` to print at the end; only the last ERRORS_KEPT are kept, so
        a flood of errors (say, one per datagram) cannot grow the client."""
        if len(self.errors) == self.errors.maxlen:
            self.errors_dropped += 1
        self.errors.append(text)

    def error_lines(self) -> list[str]:
        """What to print on stderr at the end: the errors kept, and how many were not."""
        lines = list(self.errors)
        if self.errors_dropped:
            lines.insert(0, f"{PROG}: {self.errors_dropped} earlier errors not shown")
        return lines

    def _resolve_failed(self, failure: Any) -> None:
        from udpchat.client.link import LookupFailed

        failure.trap(LookupFailed)
        self._setup_error(describe_resolve_error(failure.value.host, failure.value.error))

    def _setup_error(self, text: str) -> None:
        self.add_error(f"{PROG}: {text}")
        self.exit_code = EXIT_SETUP
        self._stop()

    def _crashed(self, failure: Any) -> None:
        self.add_error(f"{PROG}: internal error: {failure.getTraceback()}")
        self.exit_code = EXIT_FAILED
        self._stop()

    def _resolved(self, servers: list[tuple[int, tuple[str, int]]]) -> None:
        from twisted.internet import error

        from udpchat.client.chatclient import ChatClient
        from udpchat.client.chatlog import LoggedFrontEnd
        from udpchat.client.identity import claim_client_id
        from udpchat.client.inputhistory import SavedHistory, history_folder
        from udpchat.client.link import ChatLink
        from udpchat.client.pipe import PipeFrontEnd
        from udpchat.client.reachability import Reachability
        from udpchat.client.standardio import StandardIO
        from udpchat.client.udpport import listen_udp
        from udpchat.core.endpoint import ClientEndpoint

        if not servers:
            hosts = " or ".join(repr(host) for host, _ in self.servers)
            self._setup_error(f"host {hosts} has no IPv4 or IPv6 address")
            return
        fallback = ADDRESS_FALLBACK_S if len(servers) > 1 else None
        # Kept across restarts (and locked while in use): a client started again after
        # a crash takes its own place back at once, even on a full server. A list of
        # daemons is one server here: one client id, whichever of them it is on.
        named = ", ".join(join_host_port(*server) for server in self.servers)
        ports = {port for _, port in self.servers}
        host, port = self.servers[0] if len(self.servers) == 1 else (named, 0)
        client_id, self._id_lock = claim_client_id(host, port, self.nick, os.environ)
        self.chat = ChatClient(
            ClientEndpoint(self.psk, client_protocol_config(self.idle_timeout_s)),
            self.nick,
            self.room,
            client_id=client_id,
            pipe=not self.interactive,
            fallback_after_s=fallback,
            reachability=Reachability(
                named,
                ports.pop() if len(ports) == 1 else None,
                fingerprint(self.psk),
                ipv6=all(":" in host for host, _ in self.servers),
            ),
            give_up_after_s=self.timeout_s,
        )
        front: Any
        style = self.view.style(self.interactive, os.environ)
        if self.interactive:
            from udpchat.client import terminal

            saved = None
            if self.input_history:  # Up reaches earlier runs
                saved = SavedHistory(history_folder(os.environ))
            self.cleanup.enter_context(terminal.raw_terminal(sys.stdin.fileno()))
            proto = terminal.make_terminal_protocol(
                self._front_exited, self.reactor.seconds, style, saved
            )
            StandardIO(proto)  # its writes go out at once: one wake-up per line
            front = proto.terminalProtocol
            self.cleanup.enter_context(terminal.follow_window_size(front, self.reactor))
        else:
            front = PipeFrontEnd(self._front_exited, time.time, style)  # the date, for the reader
            StandardIO(front)
        shown = front
        if self.chat_log is not None:  # --log: what is shown is also written there
            shown = LoggedFrontEnd(front, self.chat_log, time.time)  # the date, for the reader
        self.link = ChatLink(
            self.chat, servers, self.reactor, shown, listen=listen_udp(self.reactor)
        )
        front.link = self.link
        try:
            self.link.start()
        except error.CannotListenError as exc:
            self._setup_error(f"cannot open a UDP socket: {exc.socketError}")
            return
        front.attach(self.link)
        self.reactor.addSystemEventTrigger("before", "shutdown", self._shutting_down)

    def _front_exited(self) -> None:
        chat = self.chat
        if chat is not None and self.exit_code == 0:
            failed = chat.fatal or (chat.exit_code and not self.interactive)
            self.exit_code = EXIT_FAILED if failed else 0
            if chat.timed_out:
                self.exit_code = EXIT_NO_ANSWER
                if self.interactive:  # the screen said why; the shell gets one line
                    server = chat.reachability.server
                    self.add_error(f"{PROG}: no answer from {server} within --timeout")
        if self._exited is not None and not self._exited.called:
            self._exited.callback(None)
        self._stop()

    def _shutting_down(self) -> Any:
        """SIGINT/SIGTERM: tell the server we are gone and let the front end write its
        last lines (a Deferred holds the shutdown until then, at most a second)."""
        from twisted.internet.defer import Deferred

        if self.chat is None or self.chat.done:
            return None
        self.exit_code = EXIT_FAILED
        self._exited = Deferred()
        self._exited.addTimeout(SHUTDOWN_FLUSH_S, self.reactor, onTimeoutCancel=lambda *_: None)
        self.link.abort()
        return self._exited

    def _stop(self) -> None:
        from twisted.internet.error import ReactorNotRunning

        try:
            self.reactor.stop()
        except ReactorNotRunning:
            pass


if __name__ == "__main__":
    main()
