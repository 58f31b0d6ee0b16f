"""spreadqueue for asyncio applications: no Twisted in sight.

Sessions, senders and workers for code that runs under :func:`asyncio.run` (plain
asyncio or uvloop)::

    import asyncio
    from spreadqueue import aio

    async def main():
        async with aio.connect() as session:          # $SPREAD_DAEMON or 4803@localhost
            sender = session.sender("myqueue")
            print(await sender.rpc("myfunc", {"name": "value"}, timeout=10))

    asyncio.run(main())

- :func:`connect` opens a :class:`Session` (``await aio.connect()`` or
  ``async with aio.connect() as session``); one session carries any number of
  senders and workers, and the application's own Spread traffic. With
  ``reconnect=True`` it survives a restart of its daemon, senders and workers with it.
- :class:`Sender`: ``await rpc(func, args)``; ``submit`` then ``await receive()``;
  cancelling the task that awaits an rpc cancels the call (the manager drops it).
- :class:`Worker`: handlers by function name; ``async def`` handlers run as asyncio
  tasks on the loop (they may await anything asyncio), plain functions in a thread
  pool (or on the loop with ``pool="loop"``).
- :class:`ReplyReader` (``session.replies(group)``): the answers detached tasks
  send to ``group`` (``enqueue(..., reply_to=group)``): ``await receive()``, or
  ``async for answer in reader``.

They are the very Sender, Worker and ReplyReader of :mod:`spreadqueue` (same acknowledgements,
resubmission, timeouts, prefetch and credits), run on the asyncio loop instead of a
Twisted reactor, and fail with the same exceptions: :class:`~spreadqueue.RemoteError`,
:class:`~spreadqueue.TaskTimeout`, :class:`~spreadqueue.NoManager`, ... Log events go
to :mod:`logging` (logger ``"spreadqueue"`` and its children).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ._aio.bridge import as_deferred, wait
from ._aio.clock import LoopClock
from ._aio.link import LinkOpener, open_session
from ._aio.logs import forward_to_logging
from ._defaults import default_queue, default_spread
from ._queue.errors import ReaderStopped, TaskError
from ._queue.interfaces import ISerializer
from ._queue.replies import Reply
from ._queue.replies import ReplyReader as _TwistedReplyReader
from ._queue.sender import Sender as _TwistedSender
from ._queue.worker import DEFAULT_PREFETCH, Handler, Task
from ._queue.worker import Worker as _TwistedWorker
from ._spread.keeper import keep_session, reconnect_delays
from ._spread.session import Frame, Listener, ReconnectListener, SpreadSession

__all__ = ["ReplyReader", "Sender", "Session", "Worker", "connect"]

F = TypeVar("F", bound=Handler)
M = TypeVar("M", bound="_Member")


def _queue_name(queue: str | None) -> str:
    name = queue if queue is not None else default_queue()
    if not name:
        raise ValueError("no queue name given and $SPREAD_QUEUE_NAME is not set")
    return name


class Session:
    """One Spread session on the running asyncio loop (made by :func:`connect`).

    ``async with`` closes it, as :meth:`close` does: senders, workers and readers made
    with :meth:`sender`, :meth:`worker` and :meth:`replies` are stopped first.
    ``spread`` is the underlying :class:`~spreadqueue.SpreadSession`, for listeners and
    ``multicast``.

    A session opened with ``connect(..., reconnect=True)`` survives its daemon going
    away: it is *away* (``connected`` False, ``spread.multicast`` raises
    :class:`~spreadqueue.SessionReconnecting`) until it has reconnected under the same
    name and joined its groups again; reconnect listeners hear
    :class:`~spreadqueue.SessionLost` and :class:`~spreadqueue.SessionBack`. (``opener``
    is such a session's way of connecting, given by :func:`connect`: closing waits until
    its attempt under way, if any, has ended.)
    """

    def __init__(
        self, spread: SpreadSession, clock: LoopClock, opener: LinkOpener | None = None
    ) -> None:
        #: the Spread session itself (listeners, multicast, groups)
        self.spread = spread
        self._clock = clock
        self._opener = opener  # a reconnecting session's: its attempts end with it
        # what close() stops: members made here and not stopped yet (a stopped one
        # leaves, or readers made per consumer would pile up on a long-lived session)
        self._members: dict[_Member, None] = {}

    def __repr__(self) -> str:
        return f"<aio.Session {self.spread.private_group}>"

    @property
    def private_group(self) -> str:
        """Our private group (``#name#daemon``): Spread messages sent there reach us."""
        return self.spread.private_group

    @property
    def connected(self) -> bool:
        """True until the session is closed or lost; a reconnecting session's is False
        while it is away (until it is back in its groups)."""
        return self.spread.connected

    @property
    def reconnects(self) -> bool:
        """True for a session that survives its daemon going away (``reconnect=True``)."""
        return self.spread.reconnects

    def add_reconnect_listener(self, listener: ReconnectListener) -> None:
        """Call ``listener(event)`` (on the loop) with a :class:`~spreadqueue.SessionLost`
        when a reconnecting session loses its daemon, and a
        :class:`~spreadqueue.SessionBack` once it is back in all its groups (see
        :meth:`spreadqueue.SpreadSession.add_reconnect_listener`)."""
        self.spread.add_reconnect_listener(listener)

    def remove_reconnect_listener(self, listener: ReconnectListener) -> None:
        """Stop calling ``listener`` (no error if it was not added)."""
        self.spread.remove_reconnect_listener(listener)

    # ------------------------------------------------------------------ queue

    def sender(self, queue: str | None = None, **options: Any) -> Sender:
        """A :class:`Sender` of ``queue`` on this session, stopped when it closes."""
        sender = Sender(self, queue, **options)
        self._members[sender] = None
        return sender

    def worker(
        self,
        queue: str | None = None,
        handlers: Mapping[str, Handler] | None = None,
        **options: Any,
    ) -> Worker:
        """A :class:`Worker` of ``queue`` on this session, stopped when it closes."""
        worker = Worker(self, queue, handlers, **options)
        self._members[worker] = None
        return worker

    def replies(self, group: str, **options: Any) -> ReplyReader:
        """A :class:`ReplyReader` of the answers sent to ``group`` on this session,
        stopped when it closes."""
        reader = ReplyReader(self, group, **options)
        self._members[reader] = None
        return reader

    # ------------------------------------------------------------------ Spread

    async def join(self, group: str) -> None:
        """Join a Spread group (returns once we are a member)."""
        await wait(self.spread.join(group), self._clock.loop)

    async def leave(self, group: str) -> None:
        """Leave a Spread group."""
        await wait(self.spread.leave(group), self._clock.loop)

    def add_listener(self, listener: Listener, group: str | None = None) -> None:
        """Call ``listener(frame)`` (on the loop) for each frame of ``group`` (None: all)."""
        self.spread.add_listener(listener, group)

    def remove_listener(self, listener: Listener, group: str | None = None) -> None:
        """Stop calling ``listener`` for ``group``."""
        self.spread.remove_listener(listener, group)

    async def receive(self) -> Frame:
        """The next frame this session receives (see :meth:`spreadqueue.SpreadSession.receive`)."""
        return await wait(self.spread.receive(), self._clock.loop)

    # ------------------------------------------------------------------ ending

    async def wait_closed(self) -> None:
        """Return once the session has ended: closed, or the daemon went away (for a
        reconnecting session: reconnecting failed for good, which
        ``spread.disconnect_reason`` says)."""
        await wait(self.spread.whenDisconnected(), self._clock.loop)

    async def close(self) -> None:
        """Stop this session's senders, workers and readers, then disconnect (idempotent); a
        reconnecting session stops reconnecting (an attempt under way is abandoned)."""
        members, self._members = self._members, {}
        for member in reversed(members):
            await member.stop()
        await wait(self.spread.disconnect(), self._clock.loop)
        if self._opener is not None:
            await self._opener.settled()

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _Connecting:
    """What :func:`connect` returns: await it, or use it with ``async with``."""

    def __init__(
        self, endpoint: str | None, name: str | None, reconnect: bool, options: dict[str, Any]
    ) -> None:
        self._endpoint = endpoint
        self._name = name
        self._reconnect = reconnect
        self._options = options
        self._session: Session | None = None

    async def _open(self) -> Session:
        forward_to_logging()
        loop = asyncio.get_running_loop()
        clock = LoopClock(loop, threading.get_ident())
        if not self._reconnect:
            spread = await open_session(clock, self._endpoint, self._name, **self._options)
            return Session(spread, clock)
        # The Twisted API's reconnection (keep_session), on the loop: each connection
        # is opened by the asyncio transport.
        endpoint = default_spread() if self._endpoint is None else self._endpoint
        opener = LinkOpener(clock, endpoint, **self._options)
        kept = keep_session(
            clock,
            opener,
            self._name,
            who=f"Spread client of {endpoint}",
            backoff=reconnect_delays(endpoint),
            retry_first=False,
        )
        try:
            spread = await wait(kept, loop)
        except BaseException:
            await opener.settled()  # (a cancelled first attempt: its task ends first)
            raise
        return Session(spread, clock, opener)

    def __await__(self) -> Generator[Any, None, Session]:
        return self._open().__await__()

    async def __aenter__(self) -> Session:
        self._session = await self._open()
        return self._session

    async def __aexit__(self, *exc: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def connect(
    endpoint: str | None = None,
    name: str | None = None,
    *,
    membership: bool = True,
    priority: int = 0,
    timeout: float | None = 10.0,
    reconnect: bool = False,
) -> _Connecting:
    """Open a Spread session on the running loop: ``await connect()`` gives a
    :class:`Session`; ``async with connect() as session`` closes it at the end.

    ``endpoint`` is ``4803@host``, ``4803`` (this machine) or
    ``tcp:host=HOST:port=PORT``; None means ``$SPREAD_DAEMON``, else
    ``4803@localhost``. ``name`` is the private name (at most 10 characters; None:
    the daemon picks one). Raises OSError when nothing answers there,
    :class:`~spreadqueue.ConnectTimeout` after ``timeout`` seconds without a session,
    and the daemon's typed refusals (:class:`~spreadqueue.NameNotUnique`, ...).

    ``reconnect=True`` connects the same way (a first failure is raised), and then
    the session survives its daemon going away, as :func:`spreadqueue.connect`'s does:
    it reconnects by itself with a jittered back-off (0.2 s doubling to 1 s for a
    daemon on this machine, 1 s to 30 s for another; each attempt bounded by
    ``timeout``), under the same private name, and joins its groups again; its
    senders keep their pending calls and submit them again once it is back, its
    workers keep running their tasks and register again. It ends on
    :meth:`Session.close`, or when the daemon refuses it for good (then
    :meth:`Session.wait_closed` returns).
    """
    options = {"membership": membership, "priority": priority, "timeout": timeout}
    return _Connecting(endpoint, name, reconnect, options)


class _Member:
    """What :class:`Sender`, :class:`Worker` and :class:`ReplyReader` share: an object
    of the Twisted API on the session's loop, whose Deferreds they await; ``async
    with`` starts and stops it."""

    _inner: _TwistedSender | _TwistedWorker | _TwistedReplyReader

    def __init__(self, session: Session) -> None:
        self._loop = session._clock.loop
        self._session = session

    def _stopped(self) -> None:
        """Stopped: the session need not stop it when it closes."""
        self._session._members.pop(self, None)

    def _wait(self, d: Deferred[Any]) -> Awaitable[Any]:
        """Await a Deferred of the Twisted object (most methods are one line over it)."""
        return wait(d, self._loop)

    @property
    def stats(self) -> dict[str, int]:
        """Counters (see the Twisted class's ``stats``)."""
        return self._inner.stats

    async def start(self) -> None:
        """Join the queue (a worker also registers with the queue's manager; a reader
        joins its group)."""
        await self._wait(self._inner.start())

    async def stop(self) -> None:
        """Leave the queue (see the subclass)."""
        raise NotImplementedError

    async def __aenter__(self: M) -> M:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class _QueueMember(_Member):
    """A member of one queue: a :class:`Sender` or a :class:`Worker`."""

    _inner: _TwistedSender | _TwistedWorker

    @property
    def queue(self) -> str:
        """The queue's name."""
        return self._inner.groups.queue


class Sender(_QueueMember):
    """Submits calls to ``queue`` (default ``$SPREAD_QUEUE_NAME``) over ``session``.

    The Sender of :mod:`spreadqueue` on the asyncio loop (see :class:`spreadqueue.Sender`
    for the acknowledgement ``window`` and ``ack_timeout``): :meth:`rpc` awaits one
    call's answer; :meth:`submit` queues a call and :meth:`receive` awaits the answers
    of submitted calls in completion order. Failures raise
    :class:`~spreadqueue.RemoteError`, :class:`~spreadqueue.TaskTimeout`,
    :class:`~spreadqueue.NoManager`, :class:`~spreadqueue.WorkerLost`, ...
    Use ``async with`` or :meth:`stop` to leave the queue.
    """

    def __init__(
        self,
        session: Session,
        queue: str | None = None,
        *,
        serializer: ISerializer | None = None,
        ack_timeout: float = 5.0,
        window: int = 256,
    ) -> None:
        super().__init__(session)
        self._inner = self._sender = _TwistedSender(
            session._clock,
            session.spread,
            _queue_name(queue),
            serializer=serializer,
            ack_timeout=ack_timeout,
            window=window,
        )

    @property
    def pending(self) -> int:
        """Calls submitted and not finished."""
        return self._sender.pending

    async def stop(self) -> None:
        """Cancel every pending call (telling the manager) and leave the queue."""
        await self._wait(self._sender.stop())
        self._stopped()

    async def rpc(
        self, func: str, args: Any = None, *, timeout: float | None = 30.0, priority: int = 0
    ) -> Any:
        """Call ``func(args)`` on a worker; return its answer or raise its failure.
        ``priority``: 0 (the default) to 9, higher first.

        Cancelling the awaiting task (``task.cancel()``, ``asyncio.wait_for``, ...)
        cancels the call: the manager is told to drop it.
        """
        return await self._wait(self._sender.rpc(func, args, timeout=timeout, priority=priority))

    def submit(
        self, func: str, args: Any = None, *, timeout: float | None = None, priority: int = 0
    ) -> str:
        """Queue ``func(args)``; return its task id at once (answers: :meth:`receive`).
        ``priority``: 0 (the default) to 9, higher first."""
        return self._sender.submit(func, args, timeout=timeout, priority=priority)

    async def enqueue(
        self,
        func: str,
        args: Any = None,
        *,
        reply_to: str | None = None,
        ttl: float | None = None,
        delay: float | None = None,
        run_at: float | None = None,
        timeout: float | None = None,
        priority: int = 0,
    ) -> str:
        """Queue ``func(args)`` as a detached task; return its id once the queue's
        managers hold it: it runs even after this program has ended (see
        :meth:`spreadqueue.Sender.enqueue` for the options and what "held" means)."""
        task_id: str = await self._wait(
            self._sender.enqueue(
                func,
                args,
                reply_to=reply_to,
                ttl=ttl,
                delay=delay,
                run_at=run_at,
                timeout=timeout,
                priority=priority,
            )
        )
        return task_id

    async def receive(self) -> Reply:
        """The next answer to a :meth:`submit` ted call: a :class:`~spreadqueue.Reply`,
        or the call's failure raised (its ``task_id`` says which call)."""
        reply: Reply = await self._wait(self._sender.receive())
        return reply

    def cancel(self, task_id: str) -> bool:
        """Give up on a submitted call (False if it was not pending)."""
        return self._sender.cancel(task_id)


class _LoopWorker(_TwistedWorker):
    """The worker, with coroutines run as asyncio tasks and the loop's thread as its own."""

    _reactor: LoopClock

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Its events are the public Worker's: logger ``spreadqueue.aio.Worker``. (A
        # class attribute would not do: a Logger there names itself after the class.)
        # Set first: the worker hands its logger on as it is built (its warning
        # throttle for malformed messages).
        self.log = Logger(namespace="spreadqueue.aio.Worker", source=self)
        super().__init__(*args, **kwargs)

    def _start_coroutine(self, coro: Any) -> Deferred[Any]:
        return as_deferred(coro, self._reactor.loop)

    def _in_other_thread(self) -> bool:
        return threading.get_ident() != self._reactor.thread


def _pool(pool: str) -> str:
    """The Twisted worker's name of an asyncio worker's pool ("loop" is its "reactor",
    which is accepted too, as ``spreadqueue.run_in`` marks say it)."""
    if pool in ("loop", "reactor"):
        return "reactor"
    if pool == "threads":
        return pool
    raise ValueError(
        f"pool must be 'threads' or 'loop' in an asyncio worker, not {pool!r} (for "
        "CPU-bound work, await loop.run_in_executor with a ProcessPoolExecutor in an "
        "async handler, or run the Twisted worker: spreadqueue worker --pool processes)"
    )


class Worker(_QueueMember):
    """A worker of ``queue`` (default ``$SPREAD_QUEUE_NAME``) on ``session``.

    ``handlers`` maps function names to callables (or use :meth:`handler` /
    :meth:`add_handler`). An ``async def`` handler runs as an asyncio task on the loop
    and may await anything asyncio does; a plain function runs in a pool of
    ``concurrency`` threads (``pool="threads"``, the default) or inline on the loop
    (``pool="loop"``, for tiny functions that never block). A handler's return value
    is the answer; what it raises reaches the sender as
    :class:`~spreadqueue.RemoteError`. ``concurrency``, ``prefetch`` and
    ``stop_timeout`` are those of :class:`spreadqueue.Worker`; ``auto_manager`` runs a
    standby manager of the queue in this worker too.

    ``await start()`` registers with the queue's manager; ``await stop()`` takes no new
    task, lets running ones finish (at most ``stop_timeout`` seconds, then cancels
    them) and leaves. ``async with`` does both.
    """

    def __init__(
        self,
        session: Session,
        queue: str | None = None,
        handlers: Mapping[str, Handler] | None = None,
        *,
        concurrency: int = 1,
        prefetch: int = DEFAULT_PREFETCH,
        pool: str = "threads",
        stop_timeout: float = 30.0,
        serializer: ISerializer | None = None,
        worker_id: str | None = None,
        auto_manager: bool = False,
    ) -> None:
        super().__init__(session)
        self._inner = self._worker = _LoopWorker(
            session._clock,
            session.spread,
            _queue_name(queue),
            concurrency=concurrency,
            prefetch=prefetch,
            pool=_pool(pool),
            stop_timeout=stop_timeout,
            serializer=serializer,
            worker_id=worker_id,
            auto_manager=auto_manager,
        )
        for name, fn in (handlers or {}).items():
            self.add_handler(name, fn)

    @property
    def worker_id(self) -> str:
        """This worker's id (unique within its session)."""
        return self._worker.worker_id

    def status(self) -> dict[str, Any]:
        """What ``spreadqueue status`` shows of this worker."""
        return self._worker.status()

    def add_handler(
        self, name: str, fn: Handler, *, with_task: bool = False, pool: str | None = None
    ) -> None:
        """Handle calls of ``name`` with ``fn(args)`` (``fn(task, args)`` with
        ``with_task``, for :meth:`respond`); ``pool`` overrides the worker's for it."""
        self._worker.add_handler(
            name, fn, with_task=with_task, pool=None if pool is None else _pool(pool)
        )

    def handler(
        self, name: str, *, with_task: bool = False, pool: str | None = None
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`add_handler`."""
        return self._worker.handler(
            name, with_task=with_task, pool=None if pool is None else _pool(pool)
        )

    def respond(self, task: Task, result: Any) -> None:
        """Answer ``task`` now (Perl's Spread::Queue ``respond``; see
        :meth:`spreadqueue.Worker.respond`), from the loop or a handler's thread."""
        self._worker.respond(task, result)

    async def stop(self, timeout: float | None = None) -> None:
        """Take no new task, finish the running ones (at most ``timeout`` seconds,
        default ``stop_timeout``), leave the queue."""
        await self._wait(self._worker.stop(timeout))
        self._stopped()


class ReplyReader(_Member):
    """The answers detached tasks send to Spread group ``group`` (their ``reply_to``),
    read on ``session``: the :class:`spreadqueue.ReplyReader` on the asyncio loop (every
    reader of a group gets every answer; ``serializer`` must be the senders';
    ``max_buffered`` answers wait at most).

    ``await receive()`` returns the next :class:`~spreadqueue.Reply` or raises the
    task's failure (:class:`~spreadqueue.RemoteError`,
    :class:`~spreadqueue.UnknownFunction`, :class:`~spreadqueue.DeadLettered`; its
    ``task_id`` says which task). ``async for answer in reader`` gives each answer as
    a value instead, a Reply or a :class:`~spreadqueue.TaskError`, so one failed task
    does not end the loop; the loop ends once :meth:`stop` is called (by
    :meth:`Session.close` too) and the answers kept are given, and raises
    :class:`~spreadqueue.ReaderStopped` if the session is lost.
    ``async with`` or :meth:`stop` leaves the group.
    """

    def __init__(
        self,
        session: Session,
        group: str,
        *,
        serializer: ISerializer | None = None,
        max_buffered: int = 10_000,
    ) -> None:
        super().__init__(session)
        self._inner = self._reader = _TwistedReplyReader(
            session._clock,
            session.spread,
            group,
            serializer=serializer,
            max_buffered=max_buffered,
        )
        self._stopping = False

    @property
    def group(self) -> str:
        """The group read."""
        return self._reader.group

    @property
    def buffered(self) -> int:
        """Answers that came and wait for :meth:`receive`."""
        return self._reader.buffered

    async def stop(self) -> None:
        """Leave the group; answers kept are still given, then iteration ends."""
        self._stopping = True
        await self._wait(self._reader.stop())
        self._stopped()

    async def receive(self) -> Reply:
        """The next answer, or the task's failure raised; once stopped and empty,
        raises :class:`~spreadqueue.ReaderStopped`."""
        reply: Reply = await self._wait(self._reader.receive())
        return reply

    def __aiter__(self) -> ReplyReader:
        return self

    async def __anext__(self) -> Reply | TaskError:
        try:
            return await self.receive()
        except TaskError as error:
            return error
        except ReaderStopped:
            if self._stopping:
                raise StopAsyncIteration from None
            raise
