"""twistd glue for udpchat: command-line options and makeService.

`twistd -n udpchat --config PATH` loads the INI config, makes sure the pre-shared key
exists (creating it, mode 0600, on first start), and builds the chat service. A bad
config or key ends twistd with one line on stderr and exit status 78, no traceback.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from twisted.application.service import MultiService, Service
from twisted.logger import Logger
from twisted.python import usage

from udpchat.daemon import sdnotify
from udpchat.daemon.config import ConfigError, ServerConfig, load_config
from udpchat.keys import KeyFileError, ensure_key

# sysexits.h EX_CONFIG: the unit's RestartPreventExitStatus=78 stops systemd from
# restarting a daemon that cannot start until someone edits a file.
EXIT_CONFIG = 78

# Where the systemd unit (etc/udpchat.service) and packagers put it.
DEFAULT_CONFIG_PATH = "/etc/udpchat/chat.ini"

log = Logger()


class Options(usage.Options):
    """Options of `twistd udpchat`."""

    synopsis = "[--config PATH]"
    longdesc = (
        "Run the udpchat server. Every setting lives in the INI config file "
        "(see etc/chat.ini); a missing key file is created on first start."
    )
    optParameters = [
        ["config", "c", DEFAULT_CONFIG_PATH, "INI config file of the server."],
    ]


class ReadinessNotifier(Service):
    """Tells systemd (Type=notify) when the chat is up and when it starts stopping.

    It is the last child of the top MultiService: children start in order, so READY=1
    goes out after the chat service has bound its port; they stop in reverse order, so
    STOPPING=1 goes out before members are told goodbye.
    """

    def startService(self) -> None:
        super().startService()
        # Only once the reactor runs are twistd's SIGTERM handlers installed: a stop
        # request systemd sends right after READY=1 must find them in place.
        from twisted.internet import reactor

        reactor.callWhenRunning(sdnotify.notify, "READY=1")

    def stopService(self) -> None:
        sdnotify.notify("STOPPING=1")
        super().stopService()


def _fail(message: str) -> NoReturn:
    # twistd calls makeService before it starts logging or daemonizes, so this line
    # reaches the terminal (or the journal) as is; any exception other than
    # SystemExit would become a traceback.
    print(f"udpchat: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_CONFIG)


def load_settings(config_path: str) -> tuple[ServerConfig, bytes]:
    """Load config and key, exiting with one clear line if either is unusable."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        _fail(str(exc))
    try:
        psk, created = ensure_key(config.key_file)
    except KeyFileError as exc:
        _fail(str(exc))
    if created:
        log.info(
            "Created a new pre-shared key file {path} (mode 0600); "
            "clients need a copy of this file",
            path=str(config.key_file),
        )
    return config, psk


def makeService(options: Options) -> MultiService:
    """Build the daemon's service tree: the chat service, then the readiness notifier."""
    config, psk = load_settings(options["config"])
    # Imported here, after config and key checks, so those errors never depend on the
    # service module (and `twistd --help` stays light).
    from udpchat.daemon.history import HistoryFileError
    from udpchat.daemon.service import ChatService

    top = MultiService()
    try:
        chat = ChatService(config, psk)  # reads the history file: before the fork
    except HistoryFileError as exc:
        _fail(str(exc))
    chat.setServiceParent(top)
    if config.metrics is not None:
        from udpchat.daemon.metrics import MetricsService

        # Before the notifier: READY=1 once the metrics port is bound too.
        MetricsService(config.metrics, chat).setServiceParent(top)
    ReadinessNotifier().setServiceParent(top)
    return top
