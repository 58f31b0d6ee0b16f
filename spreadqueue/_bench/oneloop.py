"""A fixed workload for instruction counts: sequential rpc through the whole product in
one process, over real loopback TCP.

One reactor runs what ``spreadqueue bench --colocate`` spreads over processes: the
embedded daemon with the manager on an in-process session (as ``sqm`` runs it), a
worker and a sender, each on its own TCP session of the daemon, and the sender makes
``N`` sequential rpc calls of a no-op with 100-byte arguments. Each call goes through
every layer (queue messages, sessions, the codec both ways, the daemon's routing, the
reactor's wake-ups), so the instructions it takes count what a change saves::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m spreadqueue._bench.oneloop 1000
    # again with 3000: (count(3000) - count(1000)) / 2000 = instructions per rpc

Unlike timings on a shared machine, the counts repeat to within a fraction of a
percent. ``SPREADQUEUE_PURE=1`` counts the pure-Python codec. ``--raw`` makes the
same round trips as bare Spread messages between two sessions, no queue.

``--senders S --workers W`` makes it fan-in, as ``spreadqueue bench --phase fanin``
runs it: ``S`` senders, each on its own session keeping one call in flight (so most
messages carry one task), and ``W`` workers; ``N`` is then the calls of all senders
together (each makes ``N // S``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults

from .._queue.manager import ManagerService
from .._queue.sender import Sender
from .._queue.worker import Worker
from .._service.reactors import REACTORS, install_reactor
from .._spread.client import connect
from .._spread.daemon import SpreadDaemonService
from .._spread.local import local_session
from .._spread.session import Frame
from .agent import payload_of

__all__ = ["main"]

QUEUE = "oneloop"


def _noop(_args: object) -> None:
    return None


async def _calls(sender: Sender, n: int) -> None:
    args = payload_of(100)
    for _ in range(n):
        await sender.rpc("noop", args)


async def _rpc_loop(
    reactor: Any, endpoint: str, daemon: SpreadDaemonService, n: int, senders: int, workers: int
) -> None:
    manager = ManagerService(reactor, local_session(daemon.factory), QUEUE)
    manager.startService()
    await manager.whenActive()
    crew = []
    for _ in range(workers):
        worker = Worker(reactor, await connect(reactor, endpoint), QUEUE)
        worker.add_handler("noop", _noop, pool="reactor")
        await worker.start()
        crew.append(worker)
    callers = []
    for _ in range(senders):
        sender = Sender(reactor, await connect(reactor, endpoint), QUEUE)
        await sender.start()
        callers.append(sender)
    await gatherResults(
        [Deferred.fromCoroutine(_calls(sender, n // senders)) for sender in callers],
        consumeErrors=True,
    )
    for sender in callers:
        await sender.stop()
    for worker in crew:
        await worker.stop(timeout=1.0)
    await manager.stopService()


async def _raw_loop(reactor: Any, endpoint: str, n: int) -> None:
    a = await connect(reactor, endpoint)
    b = await connect(reactor, endpoint)
    b.add_listener(lambda frame: b.multicast(a.private_group, frame.data), b.private_group)  # type: ignore[union-attr]
    waiting: list[Deferred[None]] = []

    def answered(_frame: Frame) -> None:
        waiting.pop().callback(None)

    a.add_listener(answered, a.private_group)
    data = bytes(100)
    for _ in range(n):
        d: Deferred[None] = Deferred()
        waiting.append(d)
        a.multicast(b.private_group, data)
        await d
    await a.disconnect()
    await b.disconnect()


async def _run(reactor: Any, n: int, raw: bool, senders: int = 1, workers: int = 1) -> None:
    daemon = SpreadDaemonService("tcp:0:interface=127.0.0.1", reactor=reactor)
    daemon.startService()
    port = await daemon.whenListening()
    endpoint = f"tcp:host=127.0.0.1:port={cast(IPv4Address, port.getHost()).port}"
    try:
        if raw:
            await _raw_loop(reactor, endpoint, n)
        else:
            await _rpc_loop(reactor, endpoint, daemon, n, senders, workers)
    finally:
        await daemon.stopService()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``N`` round trips and exit 0."""

    p = argparse.ArgumentParser(prog="python -m spreadqueue._bench.oneloop", description=__doc__)
    p.add_argument("n", type=int, help="round trips")
    p.add_argument("--raw", action="store_true", help="bare Spread ping-pong, no queue")
    p.add_argument("--senders", type=int, default=1, metavar="S", help="senders, one call each")
    p.add_argument("--workers", type=int, default=1, metavar="W", help="workers")
    p.add_argument(
        "--reactor", choices=list(REACTORS), default="default", help="(default: Twisted's)"
    )
    o = p.parse_args(argv)
    if o.senders < 1 or o.workers < 1:
        p.error("--senders and --workers must be at least 1")
    install_reactor(o.reactor)
    from twisted.internet import task

    task.react(
        lambda reactor: Deferred.fromCoroutine(_run(reactor, o.n, o.raw, o.senders, o.workers))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
