"""``spreadqueue status`` and ``spreadqueue control``: see and steer a running queue.

Both ask over Spread (:class:`~spreadqueue._queue.inspect.QueueInspector`), so they
work against any daemon the queue uses, local or remote.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import IO, Any, Final

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text
from twisted.internet.defer import Deferred

from .._defaults import default_queue, default_spread
from .._queue.errors import NoManager
from .._queue.inspect import ACTIONS, QueueInspector
from .._queue.names import validate_queue_name
from .._queue.stats import OUTCOMES
from .._spread.client import connect
from .._spread.endpoints import parse_spread_endpoint
from .rpc import add_spread_option

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNANSWERED = 3


# --------------------------------------------------------------------------- rendering


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.0f} us"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / 2**20:.0f} MB"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def render(status: dict[str, Any]) -> Group:
    """The tables of one queue's status: summary, managers, workers, the functions
    tasks wait for, functions."""
    active = status["active"]
    parts: list[Any] = [
        _headline(status),
        _managers_table(status["managers"]),
        _workers_table(status["workers"]),
    ]
    waiting = (active or {}).get("waiting") or []
    if waiting:
        parts.append(_waiting_table(waiting))
    functions = (active or {}).get("functions") or {}
    if functions:
        parts.append(_functions_table(functions))
    dead = ((active or {}).get("dead_letters") or {}).get("recent") or []
    if dead:
        parts.append(_dead_letters_table(dead))
    return Group(*parts)


def _dead_letters_table(dead: list[dict[str, Any]]) -> Table:
    table = Table(
        "task",
        "function",
        "reason",
        "attempts",
        "ago",
        "error",
        title="dead letters (newest first; spreadqueue control QUEUE dead-requeue ID|all)",
        title_justify="left",
    )
    for d in dead:
        table.add_row(
            d["task_id"],
            d["func"],
            d["reason"],
            str(d["attempts"]),
            _seconds(d["ago"]),
            Text(d["error"][:120], style="red"),
        )
    return table


def _headline(status: dict[str, Any]) -> Text:
    """Depth, in flight, workers and how tasks ended, in two lines."""
    active = status["active"]
    title = Text(f"queue {status['queue']}: ", style="bold")
    if active is None:
        title.append("no active manager answered", style="bold red")
        return title
    paused = " [PAUSED]" if active.get("paused") else ""
    title.append(
        f"{active['depth']} queued (oldest {_seconds(active.get('oldest_queued_for'))}), "
        f"{active['in_flight']} in flight, {len(status['workers'])} workers, "
        f"{active['senders']} senders{paused}",
        style="bold red" if paused else "bold",
    )
    counts = active["counts"]
    ended = ", ".join(
        f"{outcome.replace('_', ' ')} {counts[outcome]}"
        for outcome in OUTCOMES
        if counts.get(outcome) or outcome in ("done", "failed")
    )
    title.append(
        f"\n  {ended}; redelivered {counts['redelivered']}; "
        f"{active['workers_ever']} workers since start, {active['workers_lost']} lost"
    )
    dead = active.get("dead_letters") or {}
    if "detached" in active or dead:
        title.append(
            f"\n  {active.get('detached', 0)} detached task(s) held, "
            f"{dead.get('count', 0)} dead letter(s)"
        )
    for w in (active.get("waiting") or [])[:5]:
        if not w["workers"]:
            title.append(
                f"\n  waiting for function {w['func']}: no worker serves it "
                f"({w['queued']} task(s), the oldest for {_seconds(w['oldest_for'])})",
                style="bold red",
            )
    quorum = active.get("quorum") or {}
    if quorum and not quorum.get("dispatching_detached", True):
        title.append(
            f"\n  NO QUORUM: {quorum['managers']} manager(s) here, {quorum['needed']} needed: "
            "detached tasks are held, not dispatched",
            style="bold red",
        )
    return title


def _managers_table(managers: list[dict[str, Any]]) -> Table:
    table = Table(
        "manager", "role", "host", "pid", "up", "RSS", title="managers", title_justify="left"
    )
    for m in managers:
        proc = m.get("process", {})
        if m.get("active"):
            role = Text("active", style="green")
        elif m.get("synced", True):
            held = (m.get("holds") or {}).get("tasks")
            role = Text("standby" if held is None else f"standby, in sync ({held} tasks)")
        else:
            role = Text("standby, syncing", style="yellow")
        table.add_row(
            m["manager"],
            role,
            str(proc.get("host", "?")),
            str(proc.get("pid", "?")),
            _seconds(m["now"] - m["started"]) if "now" in m else "-",
            _bytes(proc.get("rss_bytes")),
        )
    return table


def _workers_table(workers: list[dict[str, Any]]) -> Table:
    table = Table(
        "worker",
        "state",
        "util 1m",
        "util",
        "running",
        "oldest",
        "done",
        "failed",
        "idle",
        "pool",
        "host:pid",
        "RSS",
        "serves",
        title="workers",
        title_justify="left",
    )
    for w in workers:
        report = w.get("report") or {}
        proc = report.get("process", {})
        state = "drained" if w.get("drained") else report.get("state", "no answer")
        if not w.get("registered"):
            state = f"{state} (not registered)"
        current = report.get("current", [])
        counts = report.get("counts", {})
        table.add_row(
            w["worker"],
            Text(state, style="yellow" if w.get("drained") or not report else ""),
            _percent(report.get("utilisation_1m")),
            _percent(report.get("utilisation")),
            f"{report.get('running', w.get('held', 0))}/{report.get('concurrency', '?')}",
            _seconds(max((t["age"] for t in current), default=None)),
            str(counts.get("completed", "-")),
            str(counts.get("errors", "-")),
            _seconds(w.get("idle_for")),
            _pools(report),
            f"{proc.get('host', '?')}:{proc.get('pid', '?')}",
            _bytes(proc.get("rss_bytes")),
            _serves(w),
        )
    return table


def _serves(worker: dict[str, Any]) -> str:
    """The functions a worker serves, as the manager routes to it (its own report when
    the manager's says nothing: an older manager, or a worker it does not know)."""
    if "functions" in worker:
        functions = worker["functions"]
    else:
        functions = (worker.get("report") or {}).get("functions")
        if functions is None:
            return "?"
    if functions is None:
        return "all"
    shown = ", ".join(functions[:4])
    return f"{shown} +{len(functions) - 4}" if len(functions) > 4 else shown or "none"


def _waiting_table(waiting: list[dict[str, Any]]) -> Table:
    table = Table(
        "function",
        "queued",
        "oldest",
        "workers serving it",
        title="waiting (queued tasks by function)",
        title_justify="left",
    )
    for w in waiting:
        served = (
            Text(str(w["workers"]))
            if w["workers"]
            else Text("none: no worker serves it", style="bold red")
        )
        table.add_row(w["func"], str(w["queued"]), _seconds(w["oldest_for"]), served)
    return table


def _pools(report: dict[str, Any]) -> str:
    """Busy/size of each handler pool in use, else the worker's default pool."""
    pools = report.get("pools") or {}
    used = ", ".join(f"{kind} {p['busy']}/{p['size']}" for kind, p in sorted(pools.items()))
    return used or str(report.get("pool", "-"))


def _functions_table(functions: dict[str, Any]) -> Table:
    table = Table(
        "function",
        "done",
        "failed",
        "other",
        "wait p50",
        "wait p99",
        "run p50",
        "run p99",
        title="functions",
        title_justify="left",
    )
    for name, f in sorted(functions.items()):
        outcomes = dict(f["outcomes"])
        done, failed = outcomes.pop("done", 0), outcomes.pop("failed", 0)
        other = ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) or "-"
        table.add_row(
            name,
            str(done),
            str(failed),
            other,
            _seconds(f["queue_wait"]["p50"]),
            _seconds(f["queue_wait"]["p99"]),
            _seconds(f["run_time"]["p50"]),
            _seconds(f["run_time"]["p99"]),
        )
    return table


# --------------------------------------------------------------------------- commands


#: Seconds ``status`` and ``control`` wait for answers unless told (--timeout).
STATUS_TIMEOUT: Final = 1.0
CONTROL_TIMEOUT: Final = 5.0


def _common(p: argparse.ArgumentParser, timeout: float) -> None:
    add_spread_option(p)
    p.add_argument(
        "--timeout",
        "-t",
        type=float,
        default=None,
        help=f"seconds to wait for answers [default: {timeout:g}]",
    )


#: Columns of the tables when the output is not a terminal (a pipe, a file, a
#: script's capture), where rich would assume 80 and squeeze the worker table's
#: thirteen columns into unreadable stumps: wide enough for every table's own width.
PIPED_WIDTH = 250


def status_console(file: IO[str] | None = None) -> Console:
    """Where ``spreadqueue status`` prints its tables: as wide as the terminal (or
    ``$COLUMNS``), and :data:`PIPED_WIDTH` when the output is not a terminal."""
    console = Console(file=file)
    if console.is_terminal or "COLUMNS" in os.environ:
        return console
    return Console(file=file, width=PIPED_WIDTH)


def _status_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spreadqueue status",
        description="Show the managers, workers, depth and numbers of queues, as their "
        "managers and workers report them over Spread. Exit status: 0, or 3 when a queue "
        "has no active manager.",
    )
    p.add_argument(
        "queues", metavar="QUEUE", nargs="*", help="queues [default: $SPREAD_QUEUE_NAME]"
    )
    p.add_argument("--watch", "-w", action="store_true", help="refresh every second (Ctrl-C ends)")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the reports as JSON, one object per queue per line (README, Operations)",
    )
    _common(p, STATUS_TIMEOUT)
    return p


def _control_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spreadqueue control",
        description="Ask a queue's active manager to pause or resume dispatch, purge the "
        "queued tasks, drain (or undrain) a worker, cancel a task, list the tasks it holds, "
        "or list, requeue or "
        "purge the dead letters (detached tasks that failed for good). Only sessions on the "
        "manager's own daemon may, unless its --control-allow says otherwise. Exit "
        "status: 0 done, 1 refused or not possible, 2 usage, 3 no active manager answered.",
    )
    p.add_argument("queue", metavar="QUEUE")
    p.add_argument("action", metavar="ACTION", choices=ACTIONS, help=", ".join(ACTIONS))
    p.add_argument(
        "target",
        metavar="TARGET",
        nargs="?",
        default="",
        help="drain/undrain: the worker (id@#name#daemon as status shows it, or its id, "
        "session or private name); cancel: the task id; tasks: a function or a task id "
        "(default or 'all': every task, the oldest 200); dead-letters: a task id (default: "
        "the newest 200); dead-requeue/dead-purge: a task id or 'all'",
    )
    _common(p, CONTROL_TIMEOUT)
    return p


def _spread_or_exit(prog: str, value: str | None) -> str:
    from twisted.internet.testing import MemoryReactor

    spread = value or default_spread()
    try:
        parse_spread_endpoint(MemoryReactor(), spread)
    except Exception as e:
        print(f"{prog}: --spread {spread!r} is not a Spread daemon address: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    return spread


def _timeout_or_exit(prog: str, value: float | None, default: float) -> float:
    timeout = default if value is None else value
    if not (math.isfinite(timeout) and 0 < timeout <= 3600):
        print(f"{prog}: --timeout must be a number of seconds above 0", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return timeout


def status_main(argv: Sequence[str] | None = None) -> int:
    """Run ``spreadqueue status``; the exit status."""
    from twisted.internet import task

    options = _status_parser().parse_args(argv)
    prog = "spreadqueue status"
    queues = options.queues or ([default_queue()] if default_queue() else [])
    if not queues:
        print(f"{prog}: no queue: give QUEUE or set $SPREAD_QUEUE_NAME", file=sys.stderr)
        return EXIT_USAGE
    try:
        queues = [validate_queue_name(q) for q in queues]
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_USAGE
    spread = _spread_or_exit(prog, options.spread)
    timeout = _timeout_or_exit(prog, options.timeout, STATUS_TIMEOUT)
    outcome: list[int] = []
    console = status_console()

    async def run(reactor: Any) -> None:
        session = await connect(reactor, spread, timeout=min(timeout + 5, 10))
        inspectors = [QueueInspector(reactor, session, q) for q in queues]
        try:
            while True:
                reports = [await i.status(timeout) for i in inspectors]
                show(reports)
                if not options.watch:
                    break
                await task.deferLater(reactor, 1.0, lambda: None)
        finally:
            await session.disconnect()
        outcome.append(EXIT_OK if all(r["active"] for r in reports) else EXIT_UNANSWERED)

    live: list[Any] = []

    def show(reports: list[dict[str, Any]]) -> None:
        if options.json:
            for r in reports:
                print(json.dumps(r, sort_keys=True), flush=True)
            return
        view = Group(*(render(r) for r in reports))
        if not options.watch:
            console.print(view)
            return
        if not live:
            from rich.live import Live

            live.append(Live(view, console=console, auto_refresh=False))
            live[0].start()
        live[0].update(view, refresh=True)

    return _react(prog, spread, lambda reactor: Deferred.fromCoroutine(run(reactor)), outcome, live)


def control_main(argv: Sequence[str] | None = None) -> int:
    """Run ``spreadqueue control``; the exit status."""
    options = _control_parser().parse_args(argv)
    prog = "spreadqueue control"
    try:
        queue = validate_queue_name(options.queue)
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_USAGE
    needs = {"drain": "worker", "undrain": "worker", "cancel": "task id"}
    needs.update({"dead-requeue": "task id or 'all'", "dead-purge": "task id or 'all'"})
    if options.action in needs and not options.target:
        print(f"{prog}: {options.action} needs a {needs[options.action]}", file=sys.stderr)
        return EXIT_USAGE
    spread = _spread_or_exit(prog, options.spread)
    timeout = _timeout_or_exit(prog, options.timeout, CONTROL_TIMEOUT)
    outcome: list[int] = []

    async def run(reactor: Any) -> None:
        session = await connect(reactor, spread, timeout=min(timeout + 5, 10))
        try:
            ok, text = await QueueInspector(reactor, session, queue).control(
                options.action, options.target, timeout
            )
        finally:
            await session.disconnect()
        print(
            f"{queue}: {text}" if ok else f"{prog}: {queue}: {text}",
            file=sys.stdout if ok else sys.stderr,
        )
        outcome.append(EXIT_OK if ok else EXIT_REFUSED)

    return _react(prog, spread, lambda reactor: Deferred.fromCoroutine(run(reactor)), outcome, [])


def _react(prog: str, spread: str, main: Any, outcome: list[int], live: list[Any]) -> int:
    """Run ``main(reactor)`` with task.react; errors as one line and an exit status."""
    from twisted.internet import task

    interrupted: list[bool] = []

    def run(reactor: Any) -> Deferred[None]:
        reactor.addSystemEventTrigger("before", "shutdown", lambda: interrupted.append(True))
        return main(reactor).addErrback(failed)

    def failed(failure: Any) -> None:
        if interrupted:
            return
        if failure.check(NoManager):
            print(f"{prog}: {failure.getErrorMessage()}", file=sys.stderr)
        else:
            print(
                f"{prog}: cannot ask the queue through {spread}: {failure.getErrorMessage()}",
                file=sys.stderr,
            )
        outcome.append(EXIT_UNANSWERED)

    try:
        task.react(run)
    except SystemExit:
        pass
    finally:
        if live:
            live[0].stop()
    if interrupted and not outcome:
        return 0 if live else 130  # --watch ends with Ctrl-C: that is its normal end
    return outcome[0] if outcome else EXIT_UNANSWERED
