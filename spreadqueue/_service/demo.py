"""``spreadqueue demo``: the queue working end to end on one machine, nothing to set up.

It starts an embedded Spread daemon on a free loopback port, then a queue manager,
a few workers and a sender, each on its own Spread session over TCP (the same client
protocol a real Spread 4/5 daemon speaks), runs Perl's Spread::Queue synopsis and a burst of
tasks, prints what happened and exits 0. It serves the live dashboard of its queue
(the URL is printed); ``--linger`` keeps tasks flowing until Ctrl-C, to look at it.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import LoopingCall, deferLater

from .._queue.inspect import QueueInspector
from .._queue.manager import ManagerService
from .._queue.sender import Sender
from .._queue.worker import Worker
from .._spread.client import connect
from .._spread.daemon import SpreadDaemonService
from .._spread.endpoints import parse_spread_endpoint
from .common import check_listen_option
from .dashboard import QueueMonitor, dashboard_resource
from .http import HTTPService

QUEUE = "demo"


def _count(low: int, high: int) -> Any:
    """An argparse type: an int in ``low..high`` (argparse exits 2 with the reason)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value

    return parse


def _spread(text: str) -> str:
    from twisted.internet.testing import MemoryReactor

    try:
        parse_spread_endpoint(MemoryReactor(), text)
    except Exception as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a Spread daemon address: {e}") from None
    return text


def _listen(text: str) -> str:
    from twisted.python import usage

    try:
        check_listen_option("web", text)
    except usage.UsageError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spreadqueue demo",
        description="Run spreadqueue's queue demo on an embedded Spread daemon.",
    )
    p.add_argument(
        "--workers", type=_count(1, 100), default=3, help="workers to start, 1..100 (default 3)"
    )
    p.add_argument(
        "--tasks",
        type=_count(0, 1_000_000),
        default=300,
        help="tasks in the burst, 0..1000000 (default 300)",
    )
    p.add_argument(
        "--web",
        type=_listen,
        default="0",
        metavar="PORT",
        help="serve the live dashboard on this port of 127.0.0.1, or a server endpoint "
        "(default 0: a free port; the URL is printed)",
    )
    p.add_argument(
        "--linger",
        action="store_true",
        help="after the burst, keep tasks flowing (and the dashboard up) until Ctrl-C",
    )
    p.add_argument(
        "--spread",
        type=_spread,
        default=None,
        help="use this Spread daemon (e.g. 4803@localhost) instead of an embedded one",
    )
    return p


def _say(text: str) -> None:
    print(text, flush=True)


async def _daemon(reactor: Any, options: argparse.Namespace) -> tuple[str, Any]:
    """The Spread endpoint to use, and the embedded daemon started for it (or None)."""
    if options.spread:
        _say(f"using the Spread daemon at {options.spread}")
        return options.spread, None
    daemon = SpreadDaemonService("tcp:0:interface=127.0.0.1", reactor=reactor)
    daemon.startService()
    listening = await daemon.whenListening()
    port = cast(IPv4Address, listening.getHost()).port
    _say(f"embedded Spread daemon listening on 127.0.0.1:{port}")
    return f"tcp:host=127.0.0.1:port={port}", daemon


def _handlers(reactor: Any, name: str) -> dict[str, Any]:
    """What each demo worker runs."""

    def myfunc(args: Any) -> dict[str, Any]:
        # Perl's Spread::Queue synopsis: answer "I heard you!", here saying who answered.
        return {"response": "I heard you!", "worker": name, "echo": args}

    def square(n: int) -> list[Any]:
        return [n * n, name]

    def work(n: int) -> Deferred[int]:
        # --linger's steady traffic: 5 to 200 ms of "work", and one task in 50 fails.
        if n % 50 == 49:
            raise ValueError(f"task {n} is one of the 2% that fail")
        return deferLater(reactor, random.uniform(0.005, 0.2), lambda: n)

    return {"myfunc": myfunc, "square": square, "work": work}


async def _dashboard(reactor: Any, session: Any, web: str) -> tuple[QueueMonitor, HTTPService]:
    """The live dashboard of the demo's queue on ``web``, and its URL printed."""
    inspector = QueueInspector(reactor, session, QUEUE)
    monitor = QueueMonitor(reactor, lambda: inspector)
    http = HTTPService(reactor, web, dashboard_resource(monitor), "dashboard")
    http.startService()
    await http.whenListening()
    monitor.start()
    _say(f"dashboard: {http.url}")
    return monitor, http


async def _burst(sender: Sender, tasks: int) -> bool:
    """Perl's synopsis, then ``tasks`` rpcs at once; True when all came back right."""
    task_id = sender.submit("myfunc", {"name": "value"})
    reply = await sender.receive()
    _say(f"submit + receive: task {task_id} -> {reply.value}")
    result = await sender.rpc("myfunc", {"name": "value"})
    _say(f"rpc: {result}")

    started = time.monotonic()
    calls = [sender.rpc("square", n) for n in range(tasks)]
    results = await gatherResults(calls, consumeErrors=True)
    elapsed = time.monotonic() - started
    wrong = [n for n, (sq, _) in enumerate(results) if sq != n * n]
    per_worker = Counter(w for _, w in results)
    for name, count in sorted(per_worker.items()):
        _say(f"  {name} answered {count} tasks")
    _say(
        f"demo: {len(results)} tasks answered by {len(per_worker)} workers in "
        f"{elapsed:.2f} s ({len(results) / max(elapsed, 1e-9):,.0f} tasks/s), "
        f"{len(wrong)} wrong, {tasks - len(results)} lost"
    )
    return not wrong and len(results) == tasks


def _linger(reactor: Any, sender: Sender) -> None:
    """Keep the queue busy (about 20 tasks a second) until Ctrl-C ends the demo."""
    counts = Counter[str]()

    def one() -> None:
        n = counts["sent"]
        counts["sent"] += 1
        d = sender.rpc("work", n)
        d.addCallbacks(lambda _: counts.update(["done"]), lambda _: counts.update(["failed"]))

    loop = LoopingCall(one)
    loop.clock = reactor
    loop.start(0.05)

    def summary() -> None:
        _say(f"demo: stopped; lingered for {counts['done']} more tasks, {counts['failed']} failed")

    reactor.addSystemEventTrigger("before", "shutdown", summary)
    _say("lingering: about 20 tasks a second, one in 50 failing; Ctrl-C ends the demo")


async def _run(reactor: Any, options: argparse.Namespace) -> int:
    endpoint, daemon = await _daemon(reactor, options)
    sessions = []

    async def session(name: str) -> Any:
        s = await connect(reactor, endpoint, name)
        sessions.append(s)
        return s

    manager = ManagerService(reactor, await session("sqm"), QUEUE)
    manager.startService()
    _say(f"queue manager running for queue {QUEUE!r}")
    monitor, http = await _dashboard(reactor, await session("dashboard"), options.web)
    workers = []
    for i in range(options.workers):
        name = f"worker{i + 1}"
        worker = Worker(reactor, await session(name), QUEUE, _handlers(reactor, name))
        await worker.start()
        workers.append(worker)
    _say(f"{len(workers)} workers registered")

    sender = Sender(reactor, await session("sender"), QUEUE)
    right = await _burst(sender, options.tasks)
    if options.linger:
        _linger(reactor, sender)
        await Deferred()  # until Ctrl-C stops the reactor
    _say("(spreadqueue demo --linger keeps the demo running, to look at the dashboard)")
    monitor.stop()
    await http.stopService()
    await sender.stop()
    for worker in workers:
        await worker.stop()
    await manager.stopService()
    for s in sessions:
        await s.disconnect()
    if daemon is not None:
        await daemon.stopService()
    return 0 if right else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; exit status 0 when every task was answered correctly."""
    from twisted.internet import task

    options = _parser().parse_args(argv)
    status: list[int] = []

    def run(reactor: Any) -> Deferred[None]:
        d = Deferred.fromCoroutine(_run(reactor, options))
        return d.addCallback(status.append)

    try:
        task.react(run)
    except SystemExit as e:
        if e.code:
            return int(e.code) if isinstance(e.code, int) else 1
    return status[0] if status else 1
