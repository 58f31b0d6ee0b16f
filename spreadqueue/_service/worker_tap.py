"""``twistd spreadqueue-worker``: a worker running the handlers of ``module:object``."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.python import usage

from .._defaults import default_queue, default_spread
from .._queue.names import validate_queue_name
from .._queue.pools import POOLS
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
from .processes import ManagerProcessService, WorkerProcessService


def load_handlers(spec: str) -> dict[str, Any]:
    """Import ``module:object`` where the object maps function names to callables.

    The current directory is importable, as with ``celery -A`` and gunicorn: a
    handler module next to where the worker is started is found.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise usage.UsageError(f"--handlers wants module:object, not {spec!r}")
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise usage.UsageError(f"--handlers: cannot import {module_name!r}: {e}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise usage.UsageError(f"--handlers: {module_name!r} has no {attr!r}") from None
    if not isinstance(obj, Mapping) or not obj:
        raise usage.UsageError(
            f"--handlers: {spec} must be a non-empty dict of function name -> callable"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not callable(v)]
    if bad:
        raise usage.UsageError(f"--handlers: {spec}: not a name -> callable entry: {bad!r}")
    return dict(obj)


class Options(ServiceOptions):
    """Options of ``twistd spreadqueue-worker`` and ``spreadqueue worker``."""

    synopsis = "--handlers module:object [options]"
    longdesc = (
        "Runs a worker of one queue. module:object is a dict mapping function names to "
        "callables taking the task's arguments; a callable may return a value, a Deferred "
        "or a coroutine. The module is imported as 'import module' would from the current "
        "directory (it is on the import path, as with celery -A and gunicorn) or from the "
        "installed packages. The worker tells the queue's manager these function names, "
        "and gets tasks of these functions only. The queue defaults to $SPREAD_QUEUE_NAME "
        "(or $SPREAD_QUEUE); "
        "there is no default queue. SIGINT or SIGTERM stops the worker gracefully: it "
        "takes no new task and finishes the ones it runs, for at most --stop-timeout "
        "seconds; a second signal exits at once."
    )
    optParameters = [
        ["queue", "q", None, "Queue name."],
        [
            "spread",
            "s",
            None,
            "Spread daemon: 4803@host or a Twisted client endpoint "
            "[default: $SPREAD_DAEMON or 4803@localhost]",
        ],
        ["handlers", "H", None, "module:object, a dict of function name -> callable."],
        ["concurrency", "c", 1, "Tasks this worker runs at once.", int],
        ["prefetch", None, 16, "Extra tasks it may hold while tasks are tiny (0: none).", int],
        [
            "pool",
            None,
            "threads",
            "Where plain (non-async) handlers run: 'threads' (--concurrency threads; for "
            "blocking I/O), 'processes' (--concurrency child processes; for CPU-bound code) "
            "or 'reactor' (inline; only for handlers that never block). Coroutine and "
            "Deferred-returning handlers always run on the reactor; spreadqueue.run_in(pool) "
            "chooses per handler.",
        ],
        [
            "max-tasks-per-child",
            None,
            0,
            "With processes: replace a child after this many tasks, for handlers that "
            "leak (0: never).",
            int,
        ],
        [
            "stop-timeout",
            None,
            30.0,
            "Seconds a stopping worker waits for its running tasks before it gives them "
            "back to the manager.",
            float,
        ],
        ["name", None, None, "Private Spread name (at most 10 characters) [default: invented]"],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics on this port or server endpoint (a port: 127.0.0.1).",
        ],
        ["ready-file", None, None, "Write this file once the worker is registered."],
    ]
    optFlags = [
        [
            "auto-manager",
            None,
            "Also run a manager of the queue in this process: it stands by while another "
            "is active and takes over when that one goes; when nothing answers at a "
            "local --spread it starts the embedded daemon there, as sqm does.",
        ],
    ]

    def postOptions(self) -> None:
        queue = self["queue"] or default_queue()
        if not queue:
            raise usage.UsageError("no queue: give --queue or set $SPREAD_QUEUE_NAME")
        try:
            self["queue"] = validate_queue_name(queue)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        if not self["handlers"]:
            raise usage.UsageError("--handlers module:object is required")
        self["handler-map"] = load_handlers(self["handlers"])
        if not 1 <= self["concurrency"] <= 10_000:
            raise usage.UsageError("--concurrency must be between 1 and 10000")
        if not 0 <= self["prefetch"] <= 10_000:
            raise usage.UsageError("--prefetch must be between 0 and 10000")
        if self["pool"] not in POOLS:
            raise usage.UsageError(f"--pool must be one of {', '.join(POOLS)}")
        if self["max-tasks-per-child"] < 0:
            raise usage.UsageError("--max-tasks-per-child must be 0 (never) or more")
        if not 0 <= self["stop-timeout"] < float("inf"):
            raise usage.UsageError("--stop-timeout must be a number of seconds, 0 or more")
        check_name_option(self["name"])
        check_listen_option("metrics", self["metrics"])
        self["spread"] = check_spread_option(self["spread"] or default_spread())


def makeService(options: dict[str, Any]) -> IService:
    """The worker service and its readiness file."""
    from twisted.internet import reactor

    ready_file = options["ready-file"]

    def ready() -> None:
        if ready_file:
            write_ready_file(ready_file, "registered\n")

    service = WorkerProcessService(
        reactor,
        options["queue"],
        options["spread"],
        options["handler-map"],
        concurrency=options["concurrency"],
        prefetch=options["prefetch"],
        pool=options["pool"],
        max_tasks_per_child=options["max-tasks-per-child"],
        stop_timeout=options["stop-timeout"],
        metrics=options["metrics"],
        name=options["name"],
        on_ready=ready,
        on_failure=lambda f: fail_startup(f, reactor),
    )
    ReadyFileService(ready_file or "").setServiceParent(service)
    ExitOnSecondSignal(reactor).setServiceParent(service)
    if not options["auto-manager"]:
        return service
    # The manager first: with no daemon around it starts the embedded one, which the
    # worker's session (retrying quickly, the address being local) then reaches.
    both = MultiService()
    ManagerProcessService(
        reactor,
        options["queue"],
        options["spread"],
        embedded="auto",
        on_failure=lambda f: fail_startup(f, reactor),
    ).setServiceParent(both)
    service.setServiceParent(both)
    return both
