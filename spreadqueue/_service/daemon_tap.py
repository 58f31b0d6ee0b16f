"""``twistd spread-daemon``: the embedded Spread daemon as a service."""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.testing import MemoryReactor
from twisted.python import usage

from .._defaults import DEFAULT_LISTEN
from .._spread.daemon import DEFAULT_MAX_SESSIONS, SpreadDaemonService
from .common import (
    EXIT_FAILED,
    ExitOnSecondSignal,
    ReadyFileService,
    ServiceOptions,
    fail_startup,
    write_ready_file,
)


class Options(ServiceOptions):
    """Options of ``twistd spread-daemon``."""

    synopsis = "[options]"
    longdesc = (
        "Runs spreadqueue's embedded Spread daemon: it speaks the Spread 4/5 client "
        "protocol, so libspread, the Spread Java client and spreadqueue all connect to it. "
        "It listens on 127.0.0.1 only unless another interface is named explicitly."
    )
    optParameters = [
        ["listen", "l", DEFAULT_LISTEN, "Server endpoint to listen on (Twisted syntax)."],
        ["name", "n", "localhost", "Daemon name: private groups are '#user#<name>'."],
        ["max-sessions", None, DEFAULT_MAX_SESSIONS, "Most client sessions at once.", int],
        ["ready-file", None, None, "Write the listening port to this file once listening."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["allow"] = []

    def opt_allow(self, network: str) -> None:
        """Also serve clients from NETWORK, e.g. 10.0.0.0/8 (repeatable; loopback always)."""
        try:
            self["allow"].append(ipaddress.ip_network(network, strict=False))
        except ValueError as e:
            raise usage.UsageError(f"--allow: {e}") from None

    def postOptions(self) -> None:
        try:
            # Syntax only, on a memory reactor (twistd installs the real one later).
            serverFromString(MemoryReactor(), self["listen"])
        except Exception as e:
            raise usage.UsageError(
                f"--listen {self['listen']!r} is not a server endpoint "
                f"(e.g. tcp:4803:interface=127.0.0.1): {e}"
            ) from None
        if len(self["name"]) > 19 or not self["name"]:
            raise usage.UsageError("--name must be 1 to 19 characters (Spread's limit)")
        if self["max-sessions"] < 1:
            raise usage.UsageError("--max-sessions must be at least 1")


def makeService(options: dict[str, Any]) -> IService:
    """The daemon service (and its readiness file, if one was asked for)."""
    top = MultiService()
    daemon = SpreadDaemonService(
        options["listen"],
        name=options["name"],
        max_sessions=options["max-sessions"],
        allowed_networks=options["allow"],
    )
    daemon.setServiceParent(top)
    ready_file = options["ready-file"]

    def listening(port: IListeningPort) -> None:
        if ready_file:
            write_ready_file(ready_file, f"{getattr(port.getHost(), 'port', '')}\n")

    class _Watch(ReadyFileService):
        def startService(self) -> None:
            super().startService()
            daemon.whenListening().addCallbacks(
                listening, fail_startup, errbackArgs=(daemon.reactor, EXIT_FAILED)
            )

    _Watch(ready_file or "").setServiceParent(top)
    ExitOnSecondSignal(daemon.reactor).setServiceParent(top)
    return top
