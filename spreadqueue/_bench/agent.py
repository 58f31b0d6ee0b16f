"""A benchmark agent: one process playing one role, driven over its stdin/stdout.

Run by ``spreadqueue bench`` (never by hand, though it works)::

    python -m spreadqueue._bench.agent manager --spread ENDPOINT --queue Q [--journal F]
    python -m spreadqueue._bench.agent worker  --spread ENDPOINT --queue Q [--victim]
    python -m spreadqueue._bench.agent sender  --spread ENDPOINT --queue Q
    python -m spreadqueue._bench.agent raw     --spread ENDPOINT
    python -m spreadqueue._bench.agent aio-sender --spread ENDPOINT --queue Q --loop uvloop

Each role builds the product's own objects on its own Spread session over TCP
(:class:`~spreadqueue._queue.ManagerService`, :class:`~spreadqueue._queue.Worker`,
:class:`~spreadqueue._queue.Sender`, or a bare
:class:`~spreadqueue._spread.session.SpreadSession` for ``raw``; ``aio-sender`` is
:mod:`spreadqueue.aio`'s Sender on an asyncio loop, :mod:`.aio_agent`), reports
``{"event": "ready", "pid": ..., "private_group": ...}`` and then answers the
commands of :mod:`spreadqueue._bench.channel` (see each role's ``command``).

Workers handle ``noop`` (returns None; counts tasks completed in the window the parent
set) and ``hold``: the first attempt of a ``hold`` task never returns on a worker
started with ``--victim`` (it reports ``{"event": "held", "task_id": ...}``, and the
parent kills it with SIGKILL); any later attempt, on any worker, reports
``{"event": "reassigned", "task_id": ..., "attempt": ..., "t_ns": ...}`` with the
monotonic time it arrived, and returns. ``work`` (the failover-manager phase) counts
the runs of each task id and waits 1 ms on the reactor; a worker started with
``--watch-assigns`` notes the monotonic time and the manager of every ASSIGN message
that reaches its session.

A manager is ready once it is the active manager or a standby that holds the queue's
state, and reports ``{"event": "activated", "t_ns": ..., "notice_ns": ...}`` when it
becomes active (``notice_ns``: when the manager group's latest membership notice came).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.stdio import StandardIO
from twisted.internet.task import deferLater
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    globalLogPublisher,
    textFileLogObserver,
)
from zope.interface import provider

from .._queue.manager import ManagerService
from .._queue.messages import Kind, mess_type
from .._queue.names import queue_groups
from .._queue.sender import Sender
from .._queue.worker import Task, Worker
from .._service.reactors import DEFAULT as DEFAULT_REACTOR
from .._service.reactors import REACTORS, install_reactor
from .._service.runner import freeze_startup_objects
from .._spread.client import connect
from .._spread.daemon import SpreadDaemonService
from .._spread.local import local_session
from .._spread.session import SpreadSession
from .._spread.wire import MembershipMessage, RegularMessage
from . import handlers
from .channel import ControlChannel
from .load import AnsweredEnqueues, RpcLoad
from .rawload import Echo, PingPong, RelayReceiver, RelaySender

__all__ = ["main"]

ROLES = ("manager", "sqm", "worker", "sender", "raw", "aio-sender")

_ASSIGN: Final = mess_type(Kind.ASSIGN)
#: ASSIGN arrivals a watching worker remembers (the newest).
_ASSIGNS_KEPT: Final = 100_000


class _Role:
    """What every role shares: a session, a channel, a stop when the channel closes."""

    def __init__(self, reactor: Any, session: SpreadSession, channel: ControlChannel) -> None:
        self.reactor = reactor
        self.session = session
        self.channel = channel

    async def start(self) -> dict[str, Any]:
        """Start the role's product objects; return what the ready event adds."""
        return {}

    async def stop(self) -> None:
        """Stop the role's product objects (the session is closed afterwards)."""

    def command(self, cmd: str, args: dict[str, Any]) -> Any:
        """Run one command from the parent."""
        raise ValueError(f"{type(self).__name__} has no command {cmd!r}")


class ManagerRole(_Role):
    """A :class:`ManagerService` of the queue (with ``journal``, its journal file).

    Ready once it is the active manager, or a standby that took the queue's state; it
    reports ``{"event": "activated", "t_ns": ..., "notice_ns": ...}`` (monotonic) when it
    becomes active: then, and when the latest membership notice of the manager group
    reached its session.
    Command ``stats``: its counters and ``queued``, ``running``, ``workers``,
    ``active``, ``synced`` and ``journal`` (the journal's figures, or None).
    """

    def __init__(
        self,
        reactor: Any,
        session: SpreadSession,
        channel: ControlChannel,
        queue: str,
        journal: str | None = None,
        journal_sync: str = "full",
    ):
        super().__init__(reactor, session, channel)
        self.queue = queue
        self.manager = ManagerService(
            reactor, session, queue, journal=journal, journal_sync=journal_sync
        )
        self._synced: Deferred[None] = Deferred()
        # When the latest notice of the manager group came (before the manager's own
        # listener sees it): the leave of the manager this one takes over from.
        self._notice_ns = 0
        session.add_listener(self._on_manager_group, queue_groups(queue).manager)

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            # The manager's log says when it took the queue's state (nothing else does).
            if (
                event.get("manager_event") == "synced"
                and event.get("queue") == queue
                and not self._synced.called
            ):
                self._synced.callback(None)

        self._observer = observe

    def _on_manager_group(self, frame: object) -> None:
        if type(frame) is MembershipMessage:
            self._notice_ns = time.monotonic_ns()

    def _activated(self, _: object) -> None:
        self.channel.emit("activated", t_ns=time.monotonic_ns(), notice_ns=self._notice_ns)

    async def start(self) -> dict[str, Any]:
        globalLogPublisher.addObserver(self._observer)
        self.manager.startService()
        ready: Deferred[None] = Deferred()

        def fire(_: object) -> None:
            if not ready.called:
                ready.callback(None)

        self.manager.whenActive().addCallback(self._activated).addCallback(fire)
        self._synced.addCallback(fire)
        await ready
        return {"active": self.manager.active}

    async def stop(self) -> None:
        globalLogPublisher.removeObserver(self._observer)
        await self.manager.stopService()

    def command(self, cmd: str, args: dict[str, Any]) -> Any:
        if cmd == "stats":
            state = self.manager.state
            return {
                **self.manager.stats,
                "queued": state.queued if state else 0,
                "running": state.running if state else 0,
                "workers": state.worker_count if state else 0,
                "active": self.manager.active,
                "synced": bool(state and state.synced),
                "journal": self.manager.status().get("journal"),
            }
        return super().command(cmd, args)


class WorkerRole(_Role):
    """A :class:`Worker` with the ``noop``, ``hold`` and ``work`` handlers (and those
    of the pool phases).

    Commands: ``window {t0_ns, t1_ns}`` (count noop tasks completed in that window from
    now on), ``stats`` (``in_window``, ``total`` and the worker's counters); ``tally``
    (the runs of ``work`` tasks since the last tally: ``runs``, ``ids`` run,
    ``repeated`` ids with their runs when more than one); with ``watch_assigns``,
    ``assigns_after {t_ns, exclude}`` (the first ASSIGN that arrived at or after
    ``t_ns`` from a manager other than ``exclude``: ``{"t_ns", "manager"}``, or None).
    """

    def __init__(
        self,
        reactor: Any,
        session: SpreadSession,
        channel: ControlChannel,
        queue: str,
        concurrency: int,
        victim: bool,
        pool: str = "threads",
        watch_assigns: bool = False,
    ):
        super().__init__(reactor, session, channel)
        self.victim = victim
        self.total = 0
        self.in_window = 0
        self._t0 = self._t1 = 0
        self._runs: Counter[str] = Counter()
        self._assigns: deque[tuple[int, str]] = deque(maxlen=_ASSIGNS_KEPT)
        if watch_assigns:
            # Before the worker's own listener: the time is the message's arrival.
            session.add_listener(self._on_private, session.private_group)
        self.worker = Worker(reactor, session, queue, concurrency=concurrency, pool=pool)
        # on the reactor: the bench measures the queue, not a thread pool's hop
        self.worker.add_handler("noop", self._noop, pool="reactor")
        self.worker.add_handler("hold", self._hold, with_task=True, pool="reactor")
        self.worker.add_handler("work", self._work, with_task=True, pool="reactor")
        # the blocking and cpu phases: in the worker's pool (--pool), and the async
        # equivalent of the blocking one on the reactor
        self.worker.add_handler("block", handlers.block)
        self.worker.add_handler("spin", handlers.spin)
        self.worker.add_handler("block_async", self._block_async)

    def _noop(self, _args: object) -> None:
        self.total += 1
        if self._t0 <= time.monotonic_ns() < self._t1:
            self.in_window += 1

    async def _block_async(self, _args: object) -> None:
        await deferLater(self.reactor, handlers.SLEEP_S, lambda: None)

    async def _work(self, task: Task, _args: object) -> None:
        self._runs[task.task_id] += 1
        await deferLater(self.reactor, handlers.SLEEP_S, lambda: None)

    def _on_private(self, frame: object) -> None:
        if type(frame) is RegularMessage and frame.mess_type == _ASSIGN:
            self._assigns.append((time.monotonic_ns(), frame.sender))

    def _assigns_after(self, t_ns: int, exclude: str) -> dict[str, Any] | None:
        for arrived, manager in self._assigns:
            if arrived >= t_ns and manager != exclude:
                return {"t_ns": arrived, "manager": manager}
        return None

    def _hold(self, task: Task, _args: object) -> Any:
        if task.attempt > 1:
            now = time.monotonic_ns()  # first: this is the measurement
            self.channel.emit("reassigned", task_id=task.task_id, attempt=task.attempt, t_ns=now)
            return None
        if self.victim:
            self.channel.emit("held", task_id=task.task_id)
            return Deferred()  # held until this process is killed
        return None

    async def start(self) -> dict[str, Any]:
        await self.worker.start()
        return {"worker_id": self.worker.worker_id}

    async def stop(self) -> None:
        await self.worker.stop(timeout=1.0)

    def command(self, cmd: str, args: dict[str, Any]) -> Any:
        if cmd == "window":
            self._t0, self._t1 = int(args["t0_ns"]), int(args["t1_ns"])
            self.in_window = 0
            return None
        if cmd == "stats":
            pools = self.worker.status()["pools"]
            children = pools.get("processes", {}).get("pids", [])
            return {
                "in_window": self.in_window,
                "total": self.total,
                "children": children,
                **self.worker.stats,
            }
        if cmd == "tally":
            runs, self._runs = self._runs, Counter()
            return {
                "runs": sum(runs.values()),
                "ids": list(runs),
                "repeated": {tid: n for tid, n in runs.items() if n > 1},
            }
        if cmd == "assigns_after":
            return self._assigns_after(int(args["t_ns"]), str(args.get("exclude", "")))
        return super().command(cmd, args)


class SenderRole(_Role):
    """A :class:`Sender`.

    Commands: ``load {func, payload, inflight, t0_ns, t1_ns, end_ns?, mode?}`` (see
    :class:`~spreadqueue._bench.load.RpcLoad`; ``payload`` is the serialized size of the
    arguments in bytes; ``mode`` ``rpc`` (the default), ``enqueue`` (detached tasks,
    each call done at its acknowledgement) or ``detached`` (detached tasks answering
    a group this sender joins, each call done at its answer; the result adds
    ``acked_ids``)) and ``load_stop`` (no more calls: the load's answer follows once
    the calls in flight are done); ``hold {count}`` (start ``count`` rpc calls of
    ``hold``) and ``hold_wait {wait_s}`` (wait for them: ``{"ok": n, "errors": {...}}``);
    ``flood {count, payload}`` (submit that many ``noop`` tasks at once, no timeout,
    leaving the sender's window to pace them); ``stats``.
    """

    def __init__(
        self,
        reactor: Any,
        session: SpreadSession,
        channel: ControlChannel,
        queue: str,
        window: int = 256,
    ):
        super().__init__(reactor, session, channel)
        self.sender = Sender(reactor, session, queue, window=window)
        self._holds: list[Deferred[Any]] = []
        self._load: RpcLoad | None = None
        # detached mode: tasks answering a group of this sender's own
        group = f"{queue}-{session.private_group.split('#')[1]}"
        self._answered = AnsweredEnqueues(self.sender, session, group)

    async def start(self) -> dict[str, Any]:
        await self.sender.start()
        return {}

    async def stop(self) -> None:
        await self.sender.stop()

    def command(self, cmd: str, args: dict[str, Any]) -> Any:
        if cmd == "load":
            return Deferred.fromCoroutine(self._run_load(args))
        if cmd == "load_stop":
            if self._load is not None:
                self._load.stop()
            return None
        if cmd == "hold":
            for _ in range(int(args["count"])):
                self._holds.append(self.sender.rpc("hold", None, timeout=120.0))
            return None
        if cmd == "hold_wait":
            return self._hold_wait(float(args["wait_s"]))
        if cmd == "flood":
            data = payload_of(int(args["payload"]))
            for _ in range(int(args["count"])):
                self.sender.submit("noop", data)
            return None
        if cmd == "stats":
            return {**self.sender.stats, "pending": self.sender.pending}
        return super().command(cmd, args)

    async def _run_load(self, args: dict[str, Any]) -> dict[str, Any]:
        func, data, inflight, t0, t1 = load_arguments(args)
        mode = args.get("mode", "rpc")
        end = args.get("end_ns")
        call: Callable[[], Deferred[Any]] | None = None  # None: rpc
        if mode == "enqueue":
            call = partial(self.sender.enqueue, func, data)
        elif mode == "detached":
            answered = self._answered
            await answered.start()
            answered.acked = []
            call = partial(answered.call, func, data)
        elif mode != "rpc":
            raise ValueError(f"unknown load mode {mode!r}")
        self._load = RpcLoad(
            self.reactor,
            self.sender,
            func,
            data,
            inflight,
            t0,
            t1,
            end_ns=None if end is None else int(end),
            call=call,
        )
        try:
            result = await self._load.run()
        finally:
            self._load = None
        if mode == "detached":
            result["acked_ids"] = self._answered.acked
            result["answered_again"] = self._answered.answered_again
        return result

    async def _hold_wait(self, timeout: float) -> dict[str, Any]:
        holds, self._holds = self._holds, []
        waiting = DeferredList(holds, consumeErrors=True)
        waiting.addTimeout(timeout, self.reactor)
        try:
            outcomes = await waiting
        except Exception:
            outcomes = [(d.called, None) for d in holds]
        errors: dict[str, int] = {}
        ok = 0
        for success, value in outcomes:
            if success:
                ok += 1
            else:
                name = type(getattr(value, "value", value)).__name__
                errors[name] = errors.get(name, 0) + 1
        return {"ok": ok, "errors": errors, "count": len(holds)}


class RawRole(_Role):
    """A bare Spread session. Commands: ``echo``; ``ping {peer, size, t0_ns, t1_ns}``;
    ``relay_receive {ack_every, t0_ns, t1_ns}`` and ``relay_stats``;
    ``relay_send {peer, size, window, t1_ns}``."""

    def __init__(self, reactor: Any, session: SpreadSession, channel: ControlChannel):
        super().__init__(reactor, session, channel)
        self._echo: Echo | None = None
        self._receiver: RelayReceiver | None = None

    def command(self, cmd: str, args: dict[str, Any]) -> Any:
        if cmd == "echo":
            if self._echo is None:
                self._echo = Echo(self.session)
            return None
        if cmd == "ping":
            pingpong = PingPong(self.reactor, self.session, args["peer"], int(args["size"]))
            return pingpong.run(int(args["t0_ns"]), int(args["t1_ns"]))
        if cmd == "relay_receive":
            if self._receiver is not None:
                self._receiver.stop()
            self._receiver = RelayReceiver(
                self.session, int(args["ack_every"]), int(args["t0_ns"]), int(args["t1_ns"])
            )
            return None
        if cmd == "relay_stats":
            if self._receiver is None:
                raise ValueError("relay_receive first")
            return self._receiver.stats()
        if cmd == "relay_send":
            return RelaySender(
                self.reactor,
                self.session,
                args["peer"],
                int(args["size"]),
                int(args["window"]),
                int(args["t1_ns"]),
            ).run()
        return super().command(cmd, args)


def load_arguments(args: dict[str, Any]) -> tuple[str, bytes, int, int, int]:
    """What a ``load`` command asks of a sender: the function, its arguments
    (``payload`` bytes once serialized), the calls in flight, the window t0..t1."""
    return (
        args["func"],
        payload_of(int(args["payload"])),
        int(args["inflight"]),
        int(args["t0_ns"]),
        int(args["t1_ns"]),
    )


def payload_of(size: int) -> bytes:
    """Arguments whose msgpack serialization (the default serializer) is ``size`` bytes."""
    # A msgpack bin has a 2-byte header up to 255 bytes of data, 3 up to 65535, 5 beyond.
    if 2 <= size <= 2 + 255:
        return bytes(size - 2)
    if 3 + 256 <= size <= 3 + 65535:
        return bytes(size - 3)
    if size >= 5 + 65536:
        return bytes(size - 5)
    raise ValueError(f"no msgpack bytes value serializes to exactly {size} bytes")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m spreadqueue._bench.agent", description=__doc__)
    p.add_argument("role", choices=ROLES)
    p.add_argument("--spread", default="", help="Spread daemon endpoint (not for sqm)")
    p.add_argument("--queue", default="bench", help="queue name (not for raw)")
    p.add_argument("--concurrency", type=int, default=1, help="worker's concurrency")
    p.add_argument("--victim", action="store_true", help="worker: hold 'hold' tasks")
    p.add_argument("--watch-assigns", action="store_true", help="worker: note when ASSIGNs arrive")
    p.add_argument("--window", type=int, default=256, help="sender: unacknowledged at most")
    p.add_argument("--journal", default=None, help="manager: its journal file")
    p.add_argument("--journal-sync", default="full", help="manager: full or normal")
    p.add_argument("--pool", default="threads", help="worker: where block and spin run")
    p.add_argument("--loop", default="asyncio", help="aio-sender: asyncio or uvloop")
    p.add_argument(
        "--reactor", default=DEFAULT_REACTOR, choices=list(REACTORS), help="the Twisted reactor"
    )
    return p


async def _serve(reactor: Any, options: argparse.Namespace) -> None:
    finished: Deferred[None] = Deferred()
    role: _Role | None = None

    def eof() -> None:
        if not finished.called:
            finished.callback(None)

    def handle(cmd: str, args: dict[str, Any]) -> Any:
        if role is None:
            raise ValueError("not ready yet")
        return role.command(cmd, args)

    channel = ControlChannel(handle, eof)
    StandardIO(channel, reactor=reactor)
    colocated: dict[str, Any] = {}
    if options.role == "sqm":
        # What sqm does with no daemon around: the embedded daemon in this process and
        # the manager on an in-process session of it (no socket, no encoding).
        daemon = SpreadDaemonService("tcp:0:interface=127.0.0.1", reactor=reactor)
        daemon.startService()
        port = await daemon.whenListening()
        colocated["port"] = cast(IPv4Address, port.getHost()).port
        session = local_session(daemon.factory)
    else:
        session = await connect(reactor, options.spread)
    if options.role in ("manager", "sqm"):
        role = ManagerRole(
            reactor, session, channel, options.queue, options.journal, options.journal_sync
        )
    elif options.role == "worker":
        role = WorkerRole(
            reactor,
            session,
            channel,
            options.queue,
            options.concurrency,
            options.victim,
            options.pool,
            options.watch_assigns,
        )
    elif options.role == "sender":
        role = SenderRole(reactor, session, channel, options.queue, options.window)
    else:
        role = RawRole(reactor, session, channel)
    extra = await role.start()
    freeze_startup_objects()  # as the commands do (spreadqueue._service.runner)
    channel.emit(
        "ready", pid=os.getpid(), private_group=session.private_group, **extra, **colocated
    )
    await finished
    try:
        await role.stop()
    finally:
        if session.connected:
            await session.disconnect()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one agent until the parent closes our stdin."""
    from twisted.internet import task

    options = _parser().parse_args(argv)
    if options.role == "aio-sender":
        from .aio_agent import run  # no Twisted reactor in this one

        return run(options)
    install_reactor(options.reactor)
    # Logs to stderr (the parent keeps them in a file); stdout is the control channel.
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)],
            )
        ],
        redirectStandardIO=False,
    )
    try:
        task.react(lambda reactor: Deferred.fromCoroutine(_serve(reactor, options)))
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
