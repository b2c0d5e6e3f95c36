"""ChatClient: the client's chat logic on top of one ClientEndpoint, sans-IO.

It says hello when a session starts, keeps what the user typed while offline, resends
it after a reconnect, tracks which lines the server acknowledged and turns server
messages into display items. Time is always an argument; the Twisted glue
(udpchat.client.link) moves the datagrams and calls ``handle_timer``.

Delivery: a line is sent on one session at a time. If that session ends before the
server acknowledged the line, the line is sent again on the next session, in its place
and with the same line id. The server may have relayed it already (only the
acknowledgement was lost, or the server crashed before sending it): the line id lets
the server (if it still remembers) and each receiver (if the server crashed) recognise
the repeat, so every line is shown once and in the order typed, or its sender is told
it was not delivered.
"""

from __future__ import annotations

import enum
import random
import secrets
from collections.abc import Sequence

from cryptography.fernet import InvalidToken

from udpchat.chat import lineids, messages
from udpchat.chat.roomkeys import open_sealed
from udpchat.client import commands
from udpchat.client.display import Info, Item, Notice, OwnLine, Problem
from udpchat.client.echoes import PrivateEchoes
from udpchat.client.incoming import Incoming
from udpchat.client.outbox import OUTBOX_MAX_LINES, Line, Outbox
from udpchat.client.reachability import Diagnosis, Finding, LinkCheck, Reachability
from udpchat.client.roster import Roster
from udpchat.core import events, wire
from udpchat.core.endpoint import ClientEndpoint, MessageTooLarge, NotConnected, QueueFull
from udpchat.core.fernet import BinaryFernet

#: Reconnect delays: first, doubled per failure up to the max, times a random 0.5..1
#: so that clients of a restarted server do not all come back in the same instant.
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 30.0
#: After /quit, how long to wait for the server to acknowledge "bye".
QUIT_TIMEOUT_S = 3.0
#: At end of input (pipe mode), give up when nothing was acknowledged for this long.
DRAIN_IDLE_TIMEOUT_S = 60.0
#: Room keys kept (the newest): a rotation's key arrives before the first message
#: under it, and older messages were all delivered before it (one ordered stream).
ROOM_KEYS_KEPT = 4
#: A refused nick is retried with "_" appended this many times.
NICK_RETRIES_MAX = 8
#: With several server addresses, one the network refused is left this soon (instead
#: of after fallback_after_s): "localhost" reaches an IPv4-only daemon at once.
REFUSED_FALLBACK_S = 0.3
#: A hello not acknowledged this long after the handshake completed starts a new
#: session (a new handshake): a few retransmission timeouts (1 s, then 2 s), enough
#: for a live server, instead of the whole session expiry (30 s). The server may have
#: forgotten the half-open session, or never got the datagram that confirmed it.
HELLO_ACK_TIMEOUT_S = 3.0


#: The messages most of a client's time goes to: lines said in its room.
_ROOM_LINES = (messages.SayOut, messages.MeOut)


class State(enum.Enum):
    """Where the client is in its life."""

    IDLE = "idle"  # start() not called yet
    CONNECTING = "connecting"  # handshake in progress
    JOINING = "joining"  # hello sent, waiting for welcome
    READY = "ready"  # welcomed: lines flow
    WAITING = "waiting"  # session lost, reconnect timer running
    QUITTING = "quitting"  # bye queued, waiting for it to be acknowledged
    DONE = "done"


def clock_skew_text(seconds: float) -> str:
    """What the user is told when the server's clock differs from ours (ClockSkew)."""
    size = abs(seconds)
    if size >= 5400:
        about = f"{size / 3600:.1f} h"
    elif size >= 90:
        about = f"{round(size / 60)} min"
    else:
        about = f"{round(size)} s"
    way = "behind" if seconds > 0 else "ahead of"
    return (
        f"your clock differs from the server's by about {about} (yours is {way} it); "
        "udpchat makes up for it, but please set your clock right (e.g. enable NTP)"
    )


def _next_nick(nick: str, rng: random.Random) -> str:
    """A variant of a refused nick: "alice" -> "alice_", long ones get digits."""
    if len(nick) < messages.NICK_MAX_CHARS:
        return nick + "_"
    return nick[: messages.NICK_MAX_CHARS - 3] + f"{rng.randrange(1000):03d}"


class ChatClient:
    """The chat session as the user sees it (see module docstring)."""

    def __init__(
        self,
        endpoint: ClientEndpoint,
        nick: str,
        room: str = messages.DEFAULT_ROOM,
        *,
        client_id: str | None = None,
        pipe: bool = False,
        fallback_after_s: float | None = None,
        rng: random.Random | None = None,
        room_keys: bool = True,
        reachability: Reachability | None = None,
        give_up_after_s: float | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.nick = nick
        self.room = room
        self.client_id = client_id or secrets.token_hex(8)
        # Pipe mode: the user's own lines are not shown (a script knows what it wrote)
        # and /quit means "end of input": deliver everything first, like EOF.
        self.pipe = pipe
        # Ask for the member list on every join and show it (pipe mode: not asked, so a
        # script's output holds no more than before).
        self.who_on_join = not pipe
        self.roster = Roster()  # the room's nicks, for Tab completion
        self._echoes = PrivateEchoes()  # own /msg lines, shown once the server took them
        # With several server addresses, a handshake not answered within this time is
        # given up and the next address is tried (see address_index).
        self.fallback_after_s = fallback_after_s
        # Tells the user why the server does not answer; with give_up_after_s
        # (--timeout), the client stops when it waited that long (timed_out).
        self.reachability = reachability or Reachability("the server")
        self.give_up_after_s = give_up_after_s
        self.timed_out = False
        self._link_check = LinkCheck()
        self.state = State.IDLE
        self.failures = 0  # lines refused locally or not delivered: pipe exit status
        self.fatal = False  # the server refused us for good (e.g. no free nick)
        self._addresses = 1  # how many addresses the server has (set by start)
        self._address_names: list[str] = []  # what to call them in notices (start)
        self._address_index = 0
        self._rng = rng or random.Random()
        self._outbox = Outbox()
        self._output: list[Item] = []
        self._session_id: bytes | None = None
        self._welcomed_once = False
        self._lost_sessions = 0  # consecutive, for the backoff
        self._nick_retries = 0
        self._reconnect_at: float | None = None
        self._attempt_deadline: float | None = None
        self._hello_id: int | None = None  # the hello in flight, until acknowledged
        self._hello_deadline: float | None = None
        self._quit_deadline: float | None = None
        self._draining = False
        self._last_progress = 0.0
        self._bad_messages = 0
        self._incoming = Incoming()
        # Extension "room-keys" (PROTOCOL.md section 11): asked for after each welcome.
        self._want_room_keys = room_keys
        self._caps_pending = False
        # The optional caps members still offered, newest first: a bad-message answer
        # means "not the newest", which is dropped before asking again (11.1).
        self._caps_offer: list[str] = []
        self.room_keys_active = False  # the server said yes on this session
        self.path_checks_active = False
        self.notices_active = False  # the server may send notices (11.8)
        self.lazy_acks_active = False
        self._room_keys: dict[int, BinaryFernet] = {}  # key id -> key, the newest few

    # --- what the UI asks --------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.state is State.DONE

    @property
    def connected(self) -> bool:
        return self.state in (State.READY, State.QUITTING)

    @property
    def exit_code(self) -> int:
        """0 if every line was delivered, 1 if some were refused or not delivered."""
        return 1 if self.failures or self.fatal else 0

    @property
    def unsent(self) -> int:
        """Lines typed but not yet acknowledged by the server."""
        return sum(1 for _ in self._outbox.typed())

    def stalled(self, now: float, after_s: float) -> int:
        """Typed lines still not acknowledged ``after_s`` after they were typed."""
        return sum(1 for line in self._outbox.typed() if line.queued_at + after_s <= now)

    def room_for_input(self) -> bool:
        """Whether a pipe should feed more lines now (backpressure, far below the cap)."""
        return self._outbox.has_room_for_input() and not self._draining

    @property
    def address_index(self) -> int:
        """Which of the server's addresses (0-based, in the order given to ``start``)
        the current connection attempt goes to: the next one after each attempt that
        never started (handshake unanswered within fallback_after_s, or its session
        lost while still connecting), and after each session that started and was then
        lost (the server went silent or its port refused, it closed the session or
        refused the hello): several addresses may be several daemons of a cluster
        (docs/CLUSTER.md), and the next one is likelier to answer than the one just
        lost, which comes round again after the others."""
        return self._address_index

    def take_output(self) -> list[Item]:
        """What to show since the last call, in order."""
        out, self._output = self._output, []
        return out

    # --- inputs ----------------------------------------------------------------------

    def reject_input(self, text: str) -> None:
        """The front end could not use an input line (e.g. not UTF-8): report it."""
        self.failures += 1
        self._output.append(Problem(text))

    def start(self, now: float, addresses: int = 1, names: Sequence[str] = ()) -> None:
        """Connect for the first time; the server has ``addresses`` addresses to try
        in turn (see address_index). ``names``: what to call each (e.g.
        "192.0.2.2:12345") when telling the user which one was lost and which is next."""
        if addresses < 1:
            raise ValueError("the server needs at least one address")
        if names and len(names) != addresses:
            raise ValueError("one name per address")
        self._addresses = addresses
        self._address_names = list(names)
        self._last_progress = now
        self._connect(now)

    def submit(self, line: str, now: float) -> None:
        """Handle one line the user typed: a command, a chat line, or a local error."""
        try:
            actions = commands.parse_line(line, lineids.new_line_id)
        except commands.CommandError as exc:
            self.failures += 1
            self._output.append(Problem(str(exc)))
            return
        if not actions:
            return
        if isinstance(actions[0], commands.LocalHelp):
            self._output.extend(Info(text) for text in commands.help_lines())
            return
        if isinstance(actions[0], commands.LocalQuit):
            if self.pipe:
                self.finish(now)
            else:
                self.quit(now)
            return
        if self._draining or self.state in (State.QUITTING, State.DONE):
            return
        if not self._outbox.has_room_for(len(actions)):
            self.failures += 1
            self._output.append(
                Problem(f"not sent, {OUTBOX_MAX_LINES} lines already wait for the server: {line}")
            )
            return
        for action in actions:
            assert not isinstance(action, commands.LocalHelp | commands.LocalQuit)
            # A line split in pieces: each piece is a line of its own (and is reported
            # as such if it cannot be delivered).
            typed = line if len(actions) == 1 else commands.typed_form(action)
            if isinstance(action, (messages.Say, messages.Me)):
                # In both modes: the room history replayed after a reconnect or a /join
                # must not show our own lines (not even in pipe mode, which never shows
                # them). A /msg to ourselves is shown when it arrives, as before.
                self._incoming.own_line(action.line_id)
            queued = self._outbox.add(action, typed, now)
            if not self.pipe:
                self._show_own(action, queued.seq)
        self._pump(now)

    def quit(self, now: float) -> None:
        """Leave now: say bye after what is queued (if connected) and close."""
        self._begin_quit(now)
        self._pump(now)

    def finish(self, now: float) -> None:
        """End of input: deliver everything, then quit (pipe mode)."""
        if not self._draining:
            self._draining = True
            self._last_progress = now
            self._pump(now)

    def abort(self, now: float) -> None:
        """Stop at once (interrupted): close the session, report what was not sent."""
        if self.state is not State.DONE:
            self._give_up(now, "not sent")
            self._pump(now)

    def set_wall_clock(self, wall: float, now: float) -> None:
        """What the system clock says (Unix time) at monotonic `now`: for the Unix
        time handshakes carry (ClientEndpoint.set_wall_clock)."""
        self.endpoint.set_wall_clock(wall, now)

    def network_error(self, address: int, finding: Finding, now: float) -> None:
        """The network said ``finding`` (an ICMP error) about a datagram to the server's
        ``address`` (an index, as address_index). Unauthenticated: a hint only (see
        udpchat.client.reachability)."""
        if self.state in (State.CONNECTING, State.WAITING):
            self._output += self.reachability.network_error(address, finding, now, self._addresses)
            if (
                self.state is State.CONNECTING
                and address == self._address_index
                and self._attempt_deadline is not None
            ):
                self._attempt_deadline = min(self._attempt_deadline, now + REFUSED_FALLBACK_S)
        elif self.state in (State.JOINING, State.READY, State.QUITTING):
            if address == self._address_index and self._link_check.network_error(
                now, self.endpoint.last_received
            ):
                self._network_lost(finding, now)
        self._pump(now)

    def receive_datagram(self, data: bytes, now: float) -> None:
        self.endpoint.receive_datagram(data, now)
        self._pump(now)

    def handle_timer(self, now: float) -> None:
        self.endpoint.handle_timer(now)
        if self._link_check.probe_due(now):
            self.endpoint.ping()
        if self.state is not State.DONE:
            self._output += self.reachability.on_timer(now, self._addresses)
            if self._give_up_at() <= now:
                self._timed_out(now)
        if self._reconnect_at is not None and self._reconnect_at <= now:
            self._reconnect_at = None
            self._connect(now)
        if self._attempt_deadline is not None and self._attempt_deadline <= now:
            self._next_address()
            self._connect(now)
        if self._hello_deadline is not None and self._hello_deadline <= now:
            self._hello_deadline = None
            if self._lost_sessions == 0:
                self._lost_sessions = 1
                self._connect(now)  # hello unacknowledged: a new session, at once
            else:  # again: with backoff, so that clients do not return in lockstep
                self._session_lost("hello-timeout", now)
        if self._quit_deadline is not None and self._quit_deadline <= now:
            self._give_up(now, "not delivered")
        if self._draining and self.state not in (State.QUITTING, State.DONE):
            if self._drain_deadline() <= now:
                self._give_up(now, "not delivered")
        self._pump(now)

    def datagrams_to_send(self, now: float) -> list[bytes]:
        out = self.endpoint.datagrams_to_send(now)
        if out and out[0][0] == wire.HANDSHAKE_INIT and self.state is State.CONNECTING:
            self.reachability.sent(self._address_index, now)
        return out

    def get_timer(self) -> float | None:
        # Asked after every datagram: the deadlines in a set, None dropped, min() of
        # the rest, all in C (a list and a generator, or a loop in Python, cost a
        # tenth of what the client does per line beyond the core).
        live = self.state is not State.DONE
        deadlines = {
            self.endpoint.get_timer(),
            self._reconnect_at,
            self._attempt_deadline,
            self._quit_deadline,
            self._hello_deadline,
            self._echoes.next_deadline() if self._echoes.waiting else None,
            self._link_check.probe_at,
            self.reachability.deadline() if live else None,
            self._give_up_at() if live and self.give_up_after_s is not None else None,
            self._drain_deadline()
            if live and self._draining and self.state is not State.QUITTING
            else None,
        }
        deadlines.discard(None)
        return min(deadlines, default=None)  # type: ignore[type-var]  # no None left

    # --- connection life ---------------------------------------------------------

    def _connect(self, now: float) -> None:
        self.endpoint.connect(now)  # a fresh session; the old one (if any) ends
        self._session_id = self.endpoint.session_id
        self.state = State.CONNECTING
        self.reachability.begin(now)
        self._link_check.reset()
        self._hello_id = self._hello_deadline = None
        if self.fallback_after_s is not None:
            self._attempt_deadline = now + self.fallback_after_s

    def _next_address(self) -> None:
        """The next connection attempt goes to the next address (see address_index)."""
        self._address_index = (self._address_index + 1) % self._addresses

    def _address_name(self, index: int) -> str:
        """The server's address ``index`` as the user is told it."""
        if self._addresses > 1 and self._address_names:
            return self._address_names[index]
        return self.reachability.server

    def _begin_quit(self, now: float) -> None:
        """Queue bye (if connected) or stop at once; the caller pumps."""
        if self.state is State.READY:
            self._outbox.add(messages.Bye(), None, now)
            self.state = State.QUITTING
            self._quit_deadline = now + QUIT_TIMEOUT_S
        elif self.state is not State.QUITTING:
            self._give_up(now, "not sent")

    def _drain_deadline(self) -> float:
        return self._last_progress + DRAIN_IDLE_TIMEOUT_S

    def _give_up_at(self) -> float:
        """When --timeout ends the wait for the server's answer (inf: never)."""
        since = self.reachability.since
        if self.give_up_after_s is None or since is None:
            return float("inf")
        return since + self.give_up_after_s

    def _timed_out(self, now: float) -> None:
        """--timeout: the server did not answer in time. Say why it may be, then stop."""
        self._output += self.reachability.tell_now(now, self._addresses)
        self._output.append(
            Diagnosis(
                f"no answer from {self.reachability.server} within"
                f" {self.give_up_after_s:g} s (--timeout); giving up"
            )
        )
        self.timed_out = True
        self._give_up(now, "not delivered")

    def _network_lost(self, finding: Finding, now: float) -> None:
        """The network refused the session's datagrams twice: the server is gone."""
        server = self._address_name(self._address_index)
        if finding is Finding.REFUSED:
            detail = f"nothing is listening on {server} any more"
        else:
            detail = f"{server} is unreachable"
        if self.state is State.QUITTING:
            self._give_up(now, "not delivered")
            return
        self._session_lost("refused", now, detail=detail)
        self.endpoint.close(now)  # its SessionEnded is ignored: _session_id is None

    def _session_lost(
        self, reason: str, now: float, text: str | None = None, detail: str | None = None
    ) -> None:
        """The current session ended on its own: reconnect with backoff. `text`: what
        the server said about it, if it said anything; `detail`: what else is known
        (said after the usual notice, which scripts may match)."""
        delay = min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2**self._lost_sessions)
        delay *= self._rng.uniform(0.5, 1.0)
        if self.state is State.CONNECTING:
            self._next_address()
            server = self.reachability.server
            self._output.append(
                Diagnosis(f"still no answer from {server}; retrying in {max(1, round(delay))} s")
            )
        elif self.state in (State.READY, State.JOINING):
            self.reachability.begin(now)  # the wait for an answer starts with the loss
            why = text or {
                "closed": "server closed the connection",
                "server-full": "server is full",
            }.get(reason, "connection to server lost")
            notes = [detail] if detail else []
            if self._addresses > 1:
                self._next_address()
                notes.append(f"next: {self._address_name(self._address_index)}")
            after = f" ({'; '.join(notes)})" if notes else ""
            self._output.append(Notice(f"{why}; reconnecting in {max(1, round(delay))} s{after}"))
        self._session_id = None
        self._attempt_deadline = self._hello_deadline = None
        self.state = State.WAITING
        self._lost_sessions = min(self._lost_sessions + 1, 16)
        self._reconnect_at = now + delay

    def _give_up(self, now: float, what: str) -> None:
        """Stop for good: report every line the server has not acknowledged, close."""
        for line in self._outbox.take_all():
            self._report(line, what)
        self._session_id = None  # so the SessionEnded of close() is not "lost"
        self.endpoint.close(now)
        self.state = State.DONE
        self._reconnect_at = self._attempt_deadline = self._quit_deadline = None
        self._hello_deadline = None
        self._draining = False
        self._echoes.clear()

    def _report(self, line: Line, what: str) -> None:
        self._echoes.forget(line.seq)
        if line.typed is not None:
            self.failures += 1
            self._output.append(Problem(f"{what}: {line.typed}"))

    # --- the pump: events in, lines out -------------------------------------------

    def _pump(self, now: float) -> None:
        """Handle every pending event, then hand queued lines to the core."""
        next_event = self.endpoint.next_event  # after every datagram: once per event
        done = State.DONE
        while self.state is not done:
            event = next_event()
            if event is None:
                if not self._flush(now):
                    break
                continue
            self._on_event(event, now)
        if self.state is done:
            while self.endpoint.next_event() is not None:
                pass  # the close() aftermath; nothing is waiting for it any more
        if self._echoes.waiting:
            self._output.extend(self._echoes.due(now))

    def _flush(self, now: float) -> bool:
        """Send queued lines if the session is ready; True if something changed."""
        if not self._draining and not self._outbox.waiting:
            return False  # after every received datagram: nothing to do
        idle = self._outbox.empty
        if self._draining and idle and self.state is State.READY:
            self._begin_quit(now)  # the pump loop that called us sends the bye
            return True
        if self._draining and idle and self.state in (State.CONNECTING, State.WAITING):
            if self.give_up_after_s is None:  # with --timeout: wait to tell if it answers
                self._give_up(now, "not delivered")  # nothing to deliver, nobody to tell
                return True
        if self.state not in (State.READY, State.QUITTING):
            return False
        sent = False
        while (line := self._outbox.next_to_send()) is not None:
            message_id = self._send(line, now)
            if message_id is None:
                break  # stays queued: retried after the next ack or session
            if message_id >= 0:
                self._outbox.sent(line, message_id)
            else:
                self._outbox.dropped(line)
            sent = True
        return sent

    def _send(self, line: Line, now: float) -> int | None:
        """Hand ``line`` to the core: its message id, None to retry later, -1 if it
        can never be sent."""
        try:
            return self.endpoint.send(messages.encode(line.msg), now)
        except (QueueFull, NotConnected):
            return None
        except (MessageTooLarge, messages.MessageError):
            self._report(line, "not sent (too long)")
            return -1

    def _on_event(self, event: events.Event, now: float) -> None:
        if isinstance(event, events.MessageReceived):
            payload = event.payload
            if event.sealed:
                try:
                    payload = open_sealed(self._room_keys, payload)
                except InvalidToken:
                    self._malformed()
                    return
            self._on_payload(payload, now)
        elif isinstance(event, events.MessageDelivered):
            if event.message_id == self._hello_id:
                self._hello_id = self._hello_deadline = None
            settled = self._outbox.settled(event.message_id)
            if settled is not None and isinstance(settled.msg, messages.PrivateMsg):
                self._echoes.acknowledged(settled.seq, now)
            self._last_progress = now
            if self.state is State.QUITTING and self._outbox.empty:
                # Bye and everything before it acknowledged (acks can be selective, so
                # bye alone is not enough): nothing is left to wait for.
                self._give_up(now, "not delivered")
        elif isinstance(event, events.MessageNotDelivered):
            line = self._outbox.settled(event.message_id)
            if line is None or line.typed is None:
                return  # hello/bye belong to their session only
            if event.reason == "session-ended" and self.state is not State.QUITTING:
                self._outbox.requeue(line)  # before what was typed later
            else:
                self._report(line, "not delivered")
        elif isinstance(event, events.SessionStarted):
            if event.session_id == self._session_id:
                self._output += self.reachability.answered()
                self._attempt_deadline = None
                self._nick_retries = 0
                self._hello(now)
        elif isinstance(event, events.ClockSkew):
            self._output.append(Notice(clock_skew_text(event.seconds)))
        elif isinstance(event, events.SessionEnded):
            if event.session_id != self._session_id:
                return  # a session we replaced or closed on purpose
            if self.state is State.QUITTING:
                self._give_up(now, "not delivered")
            else:
                self._session_lost(event.reason, now)

    def _hello(self, now: float) -> None:
        self.state = State.JOINING
        self._room_keys.clear()  # a new session: keys come again if the server seals
        self._caps_pending = False
        self._caps_offer = []
        self.room_keys_active = self.path_checks_active = False
        self.notices_active = self.lazy_acks_active = False
        self._hello_id = self._send_control(
            messages.Hello(self.nick, self.room, self.client_id), now
        )
        self._hello_deadline = now + HELLO_ACK_TIMEOUT_S

    def _send_control(self, msg: messages.ClientMessage, now: float) -> int | None:
        """Hello, caps: not a typed line; they belong to this session alone. Returns
        the message id (None if it could not be queued)."""
        line = Line(-1, msg, None)  # not queued: hello must be the session's first message
        message_id = self._send(line, now)
        if message_id is not None and message_id >= 0:
            self._outbox.in_flight[message_id] = line
            return message_id
        return None

    # --- server messages --------------------------------------------------------

    def _malformed(self) -> None:
        self._bad_messages += 1
        if self._bad_messages == 1:  # once: a broken server must not flood the screen
            self._output.append(Problem("ignored a malformed message from the server"))

    def _on_payload(self, payload: bytes, now: float) -> None:
        try:
            msg = messages.decode_server(payload)
        except messages.MessageError:
            self._malformed()
            return
        if isinstance(msg, _ROOM_LINES):  # most messages: first
            shown = self._incoming.filter(msg)
            self.roster.update(msg)
            if shown is not None:
                self._output.append(shown)
            return
        if isinstance(msg, messages.Caps):
            self._caps_pending = False
            self.path_checks_active = bool(msg.path_check)
            self.notices_active = bool(msg.notices)
            self.room_keys_active = msg.room_keys
            if msg.room_keys:
                self.endpoint.use_envelopes()
            if msg.lazy_acks:
                self.lazy_acks_active = True
                self.endpoint.use_lazy_acks()
            return
        if isinstance(msg, messages.RoomKey):
            self._room_keys[msg.key_id] = BinaryFernet.from_key(msg.key)
            while len(self._room_keys) > ROOM_KEYS_KEPT:
                del self._room_keys[next(iter(self._room_keys))]
            return
        if isinstance(msg, messages.Error) and msg.code == "bad-message" and self._caps_pending:
            # A server that does not know "caps" (version 1), or not the newest
            # member we offered (a server of before it): that is its answer, not a
            # problem. The second kind is asked again without that member, and still
            # gets to say whether it seals (PROTOCOL.md 11.1).
            self._caps_pending = False
            if self._caps_offer:
                del self._caps_offer[0]
                if self._caps_offer or self._want_room_keys:
                    self._send_caps(now)
            return
        shown = self._incoming.filter(msg)
        if isinstance(msg, messages.Welcome):
            self._welcome(msg, now)
        elif isinstance(msg, messages.Error):
            self._error(msg, now)
        else:
            if isinstance(msg, messages.NickNotice) and self._is_me(msg.old):
                self.nick = msg.new
            elif isinstance(msg, messages.JoinNotice) and self._is_me(msg.nick):
                if msg.room != self.room:  # /join, /part (a hello's room had its welcome)
                    self.room = msg.room
                    self._entered_room(now)
            self.roster.update(msg if shown is None else shown)
            if shown is not None:
                self._output.append(shown)

    def _is_me(self, nick: str) -> bool:
        return messages.fold_nick(nick) == messages.fold_nick(self.nick)

    def _welcome(self, msg: messages.Welcome, now: float) -> None:
        if self.state is not State.JOINING:
            return
        self.nick, self.room = msg.nick, msg.room
        self.state = State.READY
        self._hello_id = self._hello_deadline = None
        self._lost_sessions = 0
        self._last_progress = now
        if self._welcomed_once:
            self._output.append(Notice("reconnected"))
        self._welcomed_once = True
        self._output.append(msg)
        # Every client asks for "path-check": the server may then check a new address
        # at once when this client's NAT moves it, instead of holding back (5.3); and
        # for "notices", the server's word about a cluster split (11.8). "lazy-acks"
        # only matters for the sealed messages of "room-keys" (11.9).
        self._caps_offer = ["notices", "path-check"]
        if self._want_room_keys:
            self._caps_offer.insert(0, "lazy-acks")
        self.endpoint.use_path_checks()
        self._send_caps(now)
        self._entered_room(now)

    def _send_caps(self, now: float) -> None:
        offer = self._caps_offer
        self._caps_pending = True
        self._send_control(
            messages.Caps(
                self._want_room_keys,
                path_check=True if "path-check" in offer else None,
                notices=True if "notices" in offer else None,
                lazy_acks=True if "lazy-acks" in offer else None,
            ),
            now,
        )

    def _entered_room(self, now: float) -> None:
        """Welcomed into a room, or moved to another: a fresh member list, asked for."""
        self.roster.enter(self.room, self.nick)
        if self.who_on_join:
            self._send_control(messages.Who(), now)

    def _error(self, msg: messages.Error, now: float) -> None:
        if msg.code == "no-such-nick":
            self._echoes.refused(msg.text)
        self._output.append(msg)
        if self.state is not State.JOINING:
            self.failures += 1  # a refused line (unknown nick, too long, ...): exit non-zero
            return
        if msg.code == "nick-taken" and self._nick_retries < NICK_RETRIES_MAX:
            self._nick_retries += 1
            self.nick = _next_nick(self.nick, self._rng)
            self._output.append(Notice(f"trying nick {self.nick}"))
            self._hello(now)
        elif msg.code == "server-full":
            self._session_lost("server-full", now, msg.text)
            self.endpoint.close(now)  # its SessionEnded is ignored: _session_id is None
        else:
            self.fatal = True
            self._output.append(Problem("the server refused to let us in; giving up"))
            self._give_up(now, "not sent")

    def _show_own(self, action: commands.Action, seq: int) -> None:
        """Show what the user said: at once, or a /msg once the server took it (its
        target may not exist: then only the server's error shows, see echoes)."""
        if isinstance(action, (messages.Say, messages.Me)):
            self._output.append(OwnLine(self.nick, action.text, isinstance(action, messages.Me)))
        elif isinstance(action, messages.PrivateMsg):
            self._echoes.add(seq, OwnLine(self.nick, action.text, to=action.to))
