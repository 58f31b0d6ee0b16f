"""``twistd spreadqueue-manager`` (and ``sqm``): a queue manager as a service."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from .._defaults import default_queue, default_spread
from .._queue.names import validate_queue_name
from .common import ReadyFileService, fail_startup, write_ready_file
from .processes import EMBEDDED_MODES, ManagerProcessService


class Options(usage.Options):
    """Options of ``twistd spreadqueue-manager`` and ``sqm``."""

    synopsis = "[options] [QUEUE]"
    longdesc = (
        "Runs the manager of one queue: it assigns each submitted task to exactly one "
        "available worker and reassigns the tasks of workers that die. QUEUE (or --queue) "
        "defaults to $SPREAD_QUEUE_NAME (or $SPREAD_QUEUE). With --embedded-daemon=auto "
        "(sqm's default) it starts an embedded Spread daemon in this process when nothing "
        "answers at the Spread endpoint."
    )
    optParameters = [
        ["queue", "q", None, "Queue name."],
        ["spread", "s", None, "Spread daemon endpoint [default: $SPREAD_DAEMON or 4803@localhost]"],
        ["name", None, None, "Private Spread name (at most 10 characters) [default: invented]"],
        ["max-attempts", None, 3, "Runs of a task before its sender gets WorkerLost.", int],
        ["embedded-daemon", None, "never", "never, auto or always (sqm: auto)."],
        [
            "ack-delay",
            None,
            0.05,
            "Hold an ACK this long, dropped if the result comes first.",
            float,
        ],
        ["ready-file", None, None, "Write this file once the manager is active."],
    ]
    optFlags = [["no-embedded-daemon", None, "Never start an embedded daemon (for sqm)."]]

    def parseArgs(self, queue: str | None = None) -> None:
        if queue is not None:
            if self["queue"] is not None and self["queue"] != queue:
                raise usage.UsageError("give the queue either as QUEUE or as --queue, not both")
            self["queue"] = queue

    def postOptions(self) -> None:
        queue = self["queue"] or default_queue()
        if not queue:
            raise usage.UsageError("no queue: give QUEUE, --queue or set $SPREAD_QUEUE_NAME")
        try:
            self["queue"] = validate_queue_name(queue)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        self["spread"] = self["spread"] or default_spread()
        if self["no-embedded-daemon"]:
            self["embedded-daemon"] = "never"
        if self["embedded-daemon"] not in EMBEDDED_MODES:
            raise usage.UsageError(f"--embedded-daemon must be one of {', '.join(EMBEDDED_MODES)}")
        if self["max-attempts"] < 1:
            raise usage.UsageError("--max-attempts must be at least 1")
        if not 0 <= self["ack-delay"] <= 1:
            raise usage.UsageError("--ack-delay must be between 0 and 1 second")


def makeService(options: dict[str, Any]) -> IService:
    """The manager (with its embedded daemon when asked for) and its readiness file."""
    from twisted.internet import reactor

    ready_file = options["ready-file"]

    def ready() -> None:
        if ready_file:
            write_ready_file(ready_file, "active\n")

    service = ManagerProcessService(
        reactor,
        options["queue"],
        options["spread"],
        embedded=options["embedded-daemon"],
        name=options["name"],
        max_attempts=options["max-attempts"],
        ack_delay=options["ack-delay"],
        on_ready=ready,
        on_failure=lambda f: fail_startup(f, reactor),
    )
    ReadyFileService(ready_file or "").setServiceParent(service)
    return service
