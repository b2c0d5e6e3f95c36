"""Why the server does not answer: what the client tells its user while it waits for
the server's answer to a handshake, instead of staying silent. Sans-IO; each
ChatClient owns one Reachability.

The server answers nothing it cannot authenticate (PROTOCOL.md 9.2), so a wrong key
and a dead daemon look alike from here. What can tell them apart is the network: a
port nobody listens on makes the server's machine answer with an ICMP "port
unreachable", which the client's socket reports (udpchat.client.udpport). So:

* errors from the network ("refused": nothing listens on that port; "unreachable":
  no route to the host) say what is wrong, at once when two of them agree;
* silence says it after DIAGNOSE_AFTER_S, with the likely causes in order: the
  daemon is down or a firewall drops the datagrams, the key differs (with this key's
  fingerprint, to compare with the one the daemon logs), the address is not allowed,
  the clocks differ by more than clock probes cover (PROTOCOL.md 4.11).

A finding is told once per wait, and again only when it changes (a daemon that comes
up with another key turns "refused" into silence). The client keeps trying meanwhile.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from udpchat.client.display import Notice

#: No answer this long after the wait began (the first attempt, or the connection
#: lost): say what may be wrong. A lost message 1 is retried after 1 s and 3 s
#: (PROTOCOL.md 4.6), so by then plain loss is unlikely.
DIAGNOSE_AFTER_S = 5.0
#: Refusals before then that tell "nothing is listening" at once: two, so that one
#: stray or stale error is not enough (say, for a datagram sent while the daemon
#: restarted).
REFUSALS_TO_TELL = 2
#: An attempt that met no error for this long since it was sent counts as silence
#: again: the network's error comes within a round trip.
ERROR_GRACE_S = 1.0
#: While the server stays silent, the findings are looked at again this often.
RECHECK_S = 2.0


class Finding(enum.Enum):
    """What is known about one address of the server."""

    SILENT = "silent"  # nothing: no answer and no error
    REFUSED = "refused"  # ICMP port unreachable: nothing listens on that port
    UNREACHABLE = "unreachable"  # ICMP host or network unreachable


@dataclass(frozen=True)
class Diagnosis(Notice):
    """A line about reaching the server. Terminal mode shows it as a notice; pipe mode
    writes it on stderr, so that a script's stdout holds only the chat."""


@dataclass
class _Address:
    sent_at: float | None = None  # the latest handshake message sent there
    error: Finding | None = None
    error_at: float = 0.0
    errors: int = 0  # in this wait


class Reachability:
    """Watches one wait for the server's answer (see module docstring).

    ``server`` names the server as the user gave it ("chat.example:12345"); ``port``
    goes into the firewall hint, ``key_fingerprint`` into the key hint. ``ipv6``: the
    server was given as an IPv6 address (a refusal then may mean an IPv4-only daemon).
    """

    def __init__(
        self,
        server: str,
        port: int | None = None,
        key_fingerprint: str | None = None,
        ipv6: bool = False,
    ) -> None:
        self.server = server
        self.port = port
        self.key_fingerprint = key_fingerprint
        self.ipv6 = ipv6
        self.since: float | None = None  # when the current wait began; None: not waiting
        self._addresses: dict[int, _Address] = {}
        self._told: Finding | None = None
        self._next_check: float | None = None

    # --- inputs ---------------------------------------------------------------------

    def begin(self, now: float) -> None:
        """The client waits for the server's answer from now on, unless it already did
        (then the wait goes on: a new attempt is part of it)."""
        if self.since is None:
            self.since = now
            self._addresses.clear()
            self._told = None
            self._next_check = now + DIAGNOSE_AFTER_S

    def sent(self, address: int, now: float) -> None:
        """A handshake message went to the server's ``address`` (an index)."""
        if self.since is not None:
            self._address(address).sent_at = now

    def network_error(
        self, address: int, finding: Finding, now: float, addresses: int
    ) -> list[Diagnosis]:
        """The network said ``finding`` about a datagram to ``address`` (an index; the
        server has ``addresses``); returns what to tell now (two errors tell at once,
        see REFUSALS_TO_TELL)."""
        if self.since is None or finding is Finding.SILENT:
            return []
        entry = self._address(address)
        entry.error, entry.error_at = finding, now
        entry.errors += 1
        if self._told is None and entry.errors >= REFUSALS_TO_TELL:
            return self._check(now, addresses, early=True)
        return []

    def answered(self) -> list[Diagnosis]:
        """The server answered: the wait is over. If a finding was told, say that it
        no longer holds."""
        told, self.since, self._next_check = self._told, None, None
        if told is None:
            return []
        return [Diagnosis(f"{self.server} answers now")]

    # --- timers ---------------------------------------------------------------------

    def deadline(self) -> float | None:
        return self._next_check

    def on_timer(self, now: float, addresses: int) -> list[Diagnosis]:
        """What to tell at ``now``, for a server with ``addresses`` addresses."""
        if self._next_check is None or now < self._next_check:
            return []
        self._next_check = now + RECHECK_S
        return self._check(now, addresses)

    def waited_s(self, now: float) -> float | None:
        """How long the current wait has lasted (None: not waiting)."""
        return None if self.since is None else now - self.since

    def tell_now(self, now: float, addresses: int) -> list[Diagnosis]:
        """The finding now, unless it was told already (the client gives up, maybe
        before DIAGNOSE_AFTER_S)."""
        if self.since is None:
            return []
        return self._check(now, addresses)

    # --- findings -------------------------------------------------------------------

    def _address(self, index: int) -> _Address:
        return self._addresses.setdefault(index, _Address())

    def _finding(self, entry: _Address, now: float) -> Finding:
        if entry.error is None:
            return Finding.SILENT
        sent = entry.sent_at
        if sent is not None and sent > entry.error_at and now - sent >= ERROR_GRACE_S:
            return Finding.SILENT  # a later attempt met no error: something changed
        return entry.error

    def _check(self, now: float, addresses: int, early: bool = False) -> list[Diagnosis]:
        findings = [self._finding(self._address(i), now) for i in range(max(1, addresses))]
        if all(f is Finding.REFUSED for f in findings):
            finding = Finding.REFUSED
        elif all(f is not Finding.SILENT for f in findings):
            finding = Finding.UNREACHABLE
        elif early:
            return []  # not every address refused yet: wait for the deadline
        else:
            finding = Finding.SILENT
        if finding is self._told:
            return []
        self._told = finding
        assert self.since is not None
        waited = max(1, round(now - self.since))
        if finding is Finding.REFUSED:
            return self._refused()
        if finding is Finding.UNREACHABLE:
            return [
                Diagnosis(f"{self.server} is unreachable (the network says); still trying"),
                Diagnosis("check: the address, and that the server's machine is up and online"),
            ]
        refused = sum(f is Finding.REFUSED for f in findings)
        return self._silent(waited, refused)

    def _refused(self) -> list[Diagnosis]:
        lines = [
            Diagnosis(f"nothing is listening on {self.server} (the network refused); still trying"),
            Diagnosis(
                "check: is the daemon running, and on this port? When it starts it logs the"
                ' addresses to use: "Clients can connect to ADDRESS:PORT"'
            ),
        ]
        if self.ipv6:
            lines.append(
                Diagnosis(
                    "this is an IPv6 address: a daemon with the default interface (all IPv4"
                    " addresses) listens on IPv4 only; use its IPv4 address, or set"
                    " interface = :: there"
                )
            )
        return lines

    def _silent(self, waited: int, refused: int) -> list[Diagnosis]:
        port = "its port" if self.port is None else f"port {self.port}"
        down = f"the daemon is not running there, or a firewall drops UDP to {port}"
        if refused:
            down += f" ({refused} of its addresses refused: nothing listens there)"
        if self.key_fingerprint:
            compare = f"yours has fingerprint {self.key_fingerprint}, the daemon logs its own"
        else:
            compare = "udpchat-keygen --fingerprint PATH shows a key's, the daemon logs its own"
        return [
            Diagnosis(f"no answer from {self.server} after {waited} s; still trying. Likely:"),
            Diagnosis(f"1. {down}"),
            Diagnosis(
                f"2. your key differs from the server's: {compare} when it starts"
                ' ("pre-shared key: PATH, fingerprint ...")'
            ),
            Diagnosis("3. the server does not allow your address (allow/deny in its config)"),
            Diagnosis(
                "4. your clock is far off the server's: the client finds and makes up for"
                " a difference of up to an hour (or whole quarter hours up to 14 h) by"
                " itself; check the date and time on both machines"
            ),
        ]


#: A refusal while connected is a strong hint that the daemon is gone, but the ICMP
#: error behind it is not authenticated: anyone who guesses the client's port can
#: forge one, and one may be stale. So one refusal only makes the client probe (a PING)
#: this soon after it; a second refusal, at least this long after the first and with
#: no authentic datagram from the server in between, ends the connection.
PROBE_AFTER_REFUSAL_S = 0.5


class LinkCheck:
    """While connected: does the network say the server is gone? (See
    PROBE_AFTER_REFUSAL_S.) Without errors from the network, only the session's
    expiry (--idle-timeout) notices a silent server."""

    def __init__(self) -> None:
        self.probe_at: float | None = None
        self._first_at: float | None = None
        self._heard_at: float | None = None  # the server's last authentic datagram then

    def reset(self) -> None:
        """A new session: nothing is known about it."""
        self.probe_at = self._first_at = self._heard_at = None

    def network_error(self, now: float, heard_at: float | None) -> bool:
        """The network refused a datagram of the session; the session last heard from
        the server at ``heard_at``. True: the server is gone (a second refusal)."""
        if self._first_at is None or heard_at != self._heard_at:
            self._first_at, self._heard_at = now, heard_at
            self.probe_at = now + PROBE_AFTER_REFUSAL_S
            return False
        if now - self._first_at < PROBE_AFTER_REFUSAL_S:
            return False  # errors for datagrams sent together: still one piece of evidence
        self.reset()
        return True

    def probe_due(self, now: float) -> bool:
        """Whether to send the probe now (once)."""
        if self.probe_at is not None and self.probe_at <= now:
            self.probe_at = None
            return True
        return False
