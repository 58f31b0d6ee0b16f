"""``twistd spreadqueue-manager`` (and ``sqm``): a queue manager as a service."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from .._defaults import default_queue, default_spread
from .._queue.journal import SYNC_MODES
from .._queue.names import validate_queue_name
from .._queue.ready import DEFAULT_AGING
from .common import (
    ExitOnSecondSignal,
    ReadyFileService,
    ServiceOptions,
    check_listen_option,
    check_name_option,
    check_spread_option,
    fail_startup,
    write_ready_file,
)
from .processes import EMBEDDED_MODES, ManagerProcessService

#: Tasks a manager queues before it refuses more (QueueFull): about 40 MB of 100-byte
#: tasks, enough for a burst, and a bound that a runaway sender meets before memory does.
DEFAULT_MAX_QUEUED = 100_000


def _parameters(embedded_default: str) -> list[list[Any]]:
    return [
        ["queue", "q", None, "Queue name."],
        [
            "spread",
            "s",
            None,
            "Spread daemon: 4803@host or a Twisted client endpoint "
            "[default: $SPREAD_DAEMON or 4803@localhost]",
        ],
        ["name", None, None, "Private Spread name (at most 10 characters) [default: invented]"],
        ["max-attempts", None, 3, "Runs of a task before its sender gets WorkerLost.", int],
        [
            "max-queued",
            None,
            DEFAULT_MAX_QUEUED,
            "Tasks queued at most; more are refused with QueueFull (0: no limit).",
            int,
        ],
        [
            "embedded-daemon",
            None,
            embedded_default,
            "never, auto (when nothing answers at a local address) or always.",
        ],
        [
            "ack-delay",
            None,
            0.05,
            "Hold an ACK this long, dropped if the result comes first.",
            float,
        ],
        [
            "summary-interval",
            None,
            60.0,
            "Seconds between the one-line summaries of the queue in the log (0: none).",
            float,
        ],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics on this port or server endpoint (a port: 127.0.0.1).",
        ],
        [
            "web",
            None,
            None,
            "Serve the live dashboard on this port or server endpoint (a port: 127.0.0.1).",
        ],
        [
            "managers",
            None,
            1,
            "How many managers you run for this queue (across all daemons): detached tasks "
            "are dispatched only where a majority of them are together (see --quorum).",
            int,
        ],
        [
            "quorum",
            None,
            None,
            "Managers that must be together for detached tasks to be dispatched "
            "[default: a majority of --managers].",
            int,
        ],
        [
            "journal",
            None,
            None,
            "Keep detached tasks and dead letters in this SQLite file, so that they "
            "survive the loss of every manager at once; read again at start.",
        ],
        [
            "journal-sync",
            None,
            "full",
            "full: every journal commit is on disk before its tasks are acknowledged "
            "(survives a power cut); normal: survives a crash of the process only.",
        ],
        [
            "max-dead-letters",
            None,
            10_000,
            "Dead letters (detached tasks that failed for good) kept; the oldest go first.",
            int,
        ],
        [
            "priority-aging",
            None,
            DEFAULT_AGING,
            "Seconds of waiting one priority level is worth: a task of priority p counts "
            "as queued p times this earlier, so low levels are never starved.",
            float,
        ],
        ["ready-file", None, None, "Write this file once the manager is active."],
    ]


class _ManagerOptions(ServiceOptions):
    """What the options of the manager's commands share (all but one default)."""

    synopsis = "[options] [QUEUE]"
    longdesc = (
        "Runs the manager of one queue: it assigns each submitted task to exactly one "
        "available worker and reassigns the tasks of workers that die. Start several for "
        "one queue: one is active, the others stand by with the same tasks and take over "
        "at once when it goes (give them all --managers N when they run on several "
        "daemons). QUEUE "
        "(or --queue) defaults to $SPREAD_QUEUE_NAME (or $SPREAD_QUEUE); there is no "
        "default queue. With --embedded-daemon=auto it starts an embedded Spread daemon "
        "in this process when nothing answers at a local Spread address, also later, "
        "when the daemon it used goes away."
    )
    optFlags = [["no-embedded-daemon", None, "Never start an embedded daemon."]]

    def __init__(self) -> None:
        super().__init__()
        self["control-allow"] = []

    def opt_control_allow(self, pattern: str) -> None:
        """Also accept control from private groups matching PATTERN (fnmatch, e.g. '#ops*#bastion'; repeatable); by default only sessions on this manager's daemon may."""  # noqa: E501
        self["control-allow"].append(pattern)

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
        self["spread"] = check_spread_option(self["spread"] or default_spread())
        check_name_option(self["name"])
        if self["no-embedded-daemon"]:
            self["embedded-daemon"] = "never"
        if self["embedded-daemon"] not in EMBEDDED_MODES:
            raise usage.UsageError(f"--embedded-daemon must be one of {', '.join(EMBEDDED_MODES)}")
        if self["max-attempts"] < 1:
            raise usage.UsageError("--max-attempts must be at least 1")
        if self["max-queued"] < 0:
            raise usage.UsageError("--max-queued must be 0 (no limit) or more")
        if not 0 <= self["ack-delay"] <= 1:
            raise usage.UsageError("--ack-delay must be between 0 and 1 second")
        for option in ("metrics", "web"):
            check_listen_option(option, self[option])
        if not 0 <= self["summary-interval"] < float("inf"):
            raise usage.UsageError("--summary-interval must be 0 (none) or a number of seconds")
        if self["managers"] < 1:
            raise usage.UsageError("--managers must be at least 1")
        if self["quorum"] is None:
            self["quorum"] = self["managers"] // 2 + 1
        elif self["quorum"] < 1:
            raise usage.UsageError("--quorum must be at least 1")
        elif self["managers"] > 1 and self["quorum"] > self["managers"]:
            raise usage.UsageError("--quorum cannot be more than --managers")
        if self["journal-sync"] not in SYNC_MODES:
            raise usage.UsageError(f"--journal-sync must be one of {', '.join(SYNC_MODES)}")
        if self["max-dead-letters"] < 1:
            raise usage.UsageError("--max-dead-letters must be at least 1")
        if not 0 < self["priority-aging"] < float("inf"):
            raise usage.UsageError("--priority-aging must be a number of seconds above 0")


class Options(_ManagerOptions):
    """Options of ``twistd spreadqueue-manager`` and ``spreadqueue manager``."""

    optParameters = _parameters("never")


class SqmOptions(_ManagerOptions):
    """Options of ``sqm``: an embedded daemon when none answers at a local address."""

    optParameters = _parameters("auto")


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
        max_queued=options["max-queued"] or None,
        ack_delay=options["ack-delay"],
        summary_interval=options["summary-interval"],
        control_allow=options["control-allow"],
        quorum=options["quorum"],
        journal=options["journal"],
        journal_sync=options["journal-sync"],
        max_dead_letters=options["max-dead-letters"],
        priority_aging=options["priority-aging"],
        metrics=options["metrics"],
        web=options["web"],
        on_ready=ready,
        on_failure=lambda f: fail_startup(f, reactor),
    )
    ReadyFileService(ready_file or "").setServiceParent(service)
    ExitOnSecondSignal(reactor).setServiceParent(service)
    return service
