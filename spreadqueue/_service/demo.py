"""``spreadqueue demo``: the queue working end to end on one machine, nothing to set up.

It starts an embedded Spread daemon on a free loopback port, then a queue manager,
a few workers and a sender, each on its own Spread session over TCP (the same client
protocol a real Spread 4/5 daemon speaks), runs Perl's Spread::Queue synopsis and a burst of
tasks, prints what happened and exits 0.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults

from .._queue.manager import ManagerService
from .._queue.sender import Sender
from .._queue.worker import Worker
from .._spread.client import connect
from .._spread.daemon import SpreadDaemonService
from .._spread.endpoints import parse_spread_endpoint

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
        "--spread",
        type=_spread,
        default=None,
        help="use this Spread daemon (e.g. 4803@localhost) instead of an embedded one",
    )
    return p


def _say(text: str) -> None:
    print(text, flush=True)


async def _run(reactor: Any, options: argparse.Namespace) -> int:
    if options.spread:
        endpoint = options.spread
        daemon = None
        _say(f"using the Spread daemon at {endpoint}")
    else:
        daemon = SpreadDaemonService("tcp:0:interface=127.0.0.1", reactor=reactor)
        daemon.startService()
        listening = await daemon.whenListening()
        port = cast(IPv4Address, listening.getHost()).port
        endpoint = f"tcp:host=127.0.0.1:port={port}"
        _say(f"embedded Spread daemon listening on 127.0.0.1:{port}")

    sessions = []

    async def session(name: str) -> Any:
        s = await connect(reactor, endpoint, name)
        sessions.append(s)
        return s

    manager = ManagerService(reactor, await session("sqm"), QUEUE)
    manager.startService()
    _say(f"queue manager running for queue {QUEUE!r}")

    workers = []
    for i in range(options.workers):
        name = f"worker{i + 1}"

        def myfunc(args: Any, _name: str = name) -> dict[str, Any]:
            # Perl's Spread::Queue synopsis: answer "I heard you!", here saying who answered.
            return {"response": "I heard you!", "worker": _name, "echo": args}

        def square(n: int, _name: str = name) -> list[Any]:
            return [n * n, _name]

        worker = Worker(reactor, await session(name), QUEUE, {"myfunc": myfunc, "square": square})
        await worker.start()
        workers.append(worker)
    _say(f"{len(workers)} workers registered")

    sender = Sender(reactor, await session("sender"), QUEUE)
    task_id = sender.submit("myfunc", {"name": "value"})
    reply = await sender.receive()
    _say(f"submit + receive: task {task_id} -> {reply.value}")
    result = await sender.rpc("myfunc", {"name": "value"})
    _say(f"rpc: {result}")

    started = time.monotonic()
    calls = [sender.rpc("square", n) for n in range(options.tasks)]
    results = await gatherResults(calls, consumeErrors=True)
    elapsed = time.monotonic() - started
    wrong = [n for n, (sq, _) in enumerate(results) if sq != n * n]
    per_worker = Counter(w for _, w in results)
    for name, count in sorted(per_worker.items()):
        _say(f"  {name} answered {count} tasks")
    _say(
        f"demo: {len(results)} tasks answered by {len(per_worker)} workers in "
        f"{elapsed:.2f} s ({len(results) / max(elapsed, 1e-9):,.0f} tasks/s), "
        f"{len(wrong)} wrong, {options.tasks - len(results)} lost"
    )

    await sender.stop()
    for worker in workers:
        await worker.stop()
    await manager.stopService()
    for s in sessions:
        await s.disconnect()
    if daemon is not None:
        await daemon.stopService()
    return 0 if not wrong and len(results) == options.tasks else 1


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
