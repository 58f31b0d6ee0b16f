"""``Worker``: runs the tasks a queue manager assigns, answers the senders directly."""

from __future__ import annotations

import pickle
import secrets
import time
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from types import CoroutineType
from typing import Any, Final, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, FirstError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger
from twisted.python import threadable
from twisted.python.failure import Failure

from .._spread.interfaces import ISpreadSession
from .._spread.session import SessionBack, SessionLost
from .._spread.wire import RegularMessage
from .deadlines import Deadlines
from .errors import MalformedMessage, PayloadTooLarge
from .interfaces import ISerializer
from .manager import ManagerService
from .messages import (
    MAX_CAPACITY,
    MAX_FUNC,
    MAX_FUNCTIONS,
    MAX_PAYLOAD,
    MAX_TEXT,
    MESS_TYPE_BASE,
    Assign,
    Done,
    Kind,
    Register,
    Release,
    Result,
    Retire,
    Status,
    StatusReport,
    decode,
    new_entry,
    pack_report,
)
from .names import queue_groups
from .outbox import Outbox, Turn, send
from .pools import (
    POOLS,
    HandlerError,
    HandlerProcessDied,
    ProcessPool,
    ThreadPool,
    can_run,
    pool_for,
)
from .serializer import default_serializer
from .stats import Utilisation, process_info
from .throttle import WarningThrottle

__all__ = ["Handler", "Task", "Worker"]

Handler = Callable[..., Any]
F = TypeVar("F", bound=Handler)

_NOTHING: Final = object()
_ASSIGN: Final = MESS_TYPE_BASE + Kind.ASSIGN
_CANCEL: Final = MESS_TYPE_BASE + Kind.CANCEL
_HELLO: Final = MESS_TYPE_BASE + Kind.HELLO
_OK: Final = int(Status.OK)
# (plain names: an enum member read off its class, Kind.RESULT, costs a descriptor
# call in Python 3.11, about 1,500 instructions, on every task)
_RESULT_KIND: Final = Kind.RESULT
_STATUS_OK: Final = Status.OK
_STATUS_REQUEST: Final = MESS_TYPE_BASE + Kind.STATUS_REQUEST
#: Results whose payloads add up to at most this many bytes travel in one message to
#: [sender, Q-mgr], which doubles as the DONE notice.
DEFAULT_COMBINE_LIMIT: Final = 16 * 1024
#: Tasks a worker takes beyond its concurrency by default (see ``Worker``'s prefetch).
DEFAULT_PREFETCH: Final = 16
#: A worker prefetches while its tasks typically take less than this long (seconds),
#: and stops when they take 4 times as long.
DEFAULT_PREFETCH_BELOW: Final = 0.005
#: Completed tasks a worker sees before it may start prefetching.
_PREFETCH_SAMPLES: Final = 4
#: A task's typical run time is the (lower) median of this many recent ones.
_RECENT: Final = 8
#: How much of a long task's run time is still remembered after each later task.
_LONG_DECAY: Final = 0.8
# Prefetch levels: none; prefetch beyond the slots; tiny tasks, taken in bursts.
_NO_PREFETCH: Final = 0
_PREFETCH: Final = 1
_BURST: Final = 2
_MAX_TRACEBACK: Final = 16 * 1024
#: A worker lists the functions it serves in its REGISTER while their names take at
#: most this many characters in all (and are at most MAX_FUNCTIONS); past that it
#: declares nothing, which serves every function.
_MAX_DECLARED: Final = 32 * 1024
#: Seconds a worker lets a task run past its sender's timeout before it stops it: the
#: sender gives up first and says so (TaskTimeout), instead of racing our CANCELLED.
EXPIRY_GRACE: Final = 0.25


def _describe(tasks: Any, most: int = 5) -> str:
    """'id (func), ...' of the first few of ``tasks``."""
    tasks = list(tasks)
    text = ", ".join(f"{t.task_id} ({t.func})" for t in tasks[:most])
    return text + (f" and {len(tasks) - most} more" if len(tasks) > most else "")


def _unfinished(task: Task) -> bool:
    return not task._finished


def _type_name(t: type) -> str:
    module = t.__module__
    return t.__qualname__ if module == "builtins" else f"{module}.{t.__qualname__}"


def _check_process_handler(name: str, fn: Handler, with_task: bool) -> None:
    """A handler for the process pool must travel by reference to a fresh interpreter."""
    if with_task:
        raise ValueError(
            f"handler {name!r}: with_task handlers cannot run in a process pool "
            "(the Task lives in the worker); use the thread pool"
        )
    if getattr(fn, "__module__", None) == "__main__":
        raise ValueError(
            f"handler {name!r}: a function of __main__ cannot be imported by a handler "
            "process; define it in a module"
        )
    try:
        pickle.dumps(fn)
    except Exception as e:
        raise ValueError(
            f"handler {name!r} cannot run in a process pool: it must be a module-level "
            f"function ({e})"
        ) from None


def _for_manager(result: Result) -> Result:
    """A result for the manager alone: an OK value is left out (it only needs to know
    the task is done; the value may be large)."""
    if result.status == _OK and result.payload:
        return new_entry(Result, (result.task_id, result.worker_id, result.final, _OK, b""))
    return result


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 20] + "\n...[truncated]"


class Task:
    """One task as a handler sees it (Perl's Spread::Queue *originator*).

    Pass it to :meth:`Worker.respond` to answer the sender before (or instead of)
    returning a value.
    """

    __slots__ = (
        "_abandoned",
        "_buffer",
        "_cancelled",
        "_deferred",
        "_finished",
        "_started",
        "_timed",
        "attempt",
        "func",
        "reply_to",
        "task_id",
        "worker",
    )

    def __init__(self, worker: Worker, task_id: str, func: str, reply_to: str, attempt: int):
        #: the task's unique id (as the sender's ``submit`` returned it)
        self.task_id = task_id
        #: the function name it was submitted with
        self.func = func
        #: the sender's private group (where the answers go)
        self.reply_to = reply_to
        #: 1 for the first run; more if earlier workers were lost while running it
        self.attempt = attempt
        #: the worker running it
        self.worker = worker
        self._buffer: Any = _NOTHING  # the last respond()ed payload, not yet sent
        self._deferred: Deferred[Any] | None = None
        self._finished = False
        self._cancelled = False
        self._abandoned = False
        self._started = 0.0
        self._timed = False  # it has a deadline in the worker's Deadlines

    def __repr__(self) -> str:
        return f"<Task {self.task_id} {self.func} attempt {self.attempt}>"


class Worker(Service):
    """A worker of queue ``queue`` on ``session``, with handlers by function name.

    ``concurrency`` is how many tasks it runs at once: the manager gives it that many
    credits and never waits for a per-task "ready". ``prefetch`` is how many more it
    may take ahead of time (default 16), kept in a local FIFO and started as slots
    free up, so that many short tasks travel in one message each way. It prefetches
    only while its tasks are short (typically under ``prefetch_below`` seconds, after
    a few tasks): for long tasks, taking work early gains nothing and would let later
    tasks start elsewhere before earlier ones (FIFO order) or wait behind a long one.
    When its tasks turn long it stops prefetching and hands back what it has not
    started (RELEASE); so does a stopping worker; the tasks of a worker that dies go
    to others like any it held. The manager prefers workers with an idle slot, so
    prefetched tasks wait only when every worker is busy. When the tasks are tiny (a
    whole ``concurrency + prefetch`` of them takes under ``prefetch_below``), the
    worker asks for bursts: the manager then gives it batches in turn with the other
    workers, instead of one task to each of many (fewer messages and wake-ups).
    ``prefetch=0`` never takes more than it can start at once. A handler is called with the
    decoded arguments (and, if registered ``with_task=True``, the :class:`Task`
    first) and may return a value, a Deferred or a coroutine; what it returns is the
    task's result. Exceptions go back to the sender as
    :class:`~spreadqueue._queue.errors.RemoteError`.

    Coroutine functions (and ones that return a Deferred: ``inlineCallbacks``, or
    annotated ``-> Deferred[...]``) run on the reactor. Other functions may block:
    they run in ``pool``: 'threads' (the
    default, ``concurrency`` threads), 'processes' (``concurrency`` child processes,
    each replaced after ``max_tasks_per_child`` tasks, 0: never) or 'reactor'
    (inline, as on a reactor that has no threads, such as ``task.Clock``).
    ``spreadqueue.run_in(pool)`` chooses per handler.

    With ``auto_manager`` the worker also runs a :class:`ManagerService` of the queue on
    its session (``self.manager``): active when the queue has no other manager, standing
    by otherwise, so that a queue of such workers needs no separate ``sqm``.

    On a session that reconnects (``connect(..., reconnect=True)``), losing the daemon
    stops nothing: running and prefetched tasks go on, their answers (and RELEASE,
    RETIRE, done notices) wait, and once the session is back (in ``Q-wrk`` again) the
    worker registers again listing every task it holds, so that the manager adopts
    them instead of running them twice, and sends what waited. On a session that does
    not, the worker stops when it is lost (the manager requeues its tasks).

    It tells the manager the names of its handlers when it registers (again whenever a
    handler is added): the manager gives it tasks of those functions only
    (docs/protocol.md, "Dispatching").

    Any number of workers (and senders, managers) may share one session.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        session: ISpreadSession,
        queue: str,
        handlers: Mapping[str, Handler] | None = None,
        *,
        concurrency: int = 1,
        serializer: ISerializer | None = None,
        worker_id: str | None = None,
        stop_timeout: float = 30.0,
        combine_limit: int = DEFAULT_COMBINE_LIMIT,
        prefetch: int = DEFAULT_PREFETCH,
        prefetch_below: float = DEFAULT_PREFETCH_BELOW,
        pool: str = "threads",
        max_tasks_per_child: int = 0,
        auto_manager: bool = False,
    ) -> None:
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
        if max_tasks_per_child < 0:
            raise ValueError("max_tasks_per_child must be 0 (no limit) or more")
        if not 1 <= concurrency <= MAX_CAPACITY:
            raise ValueError(f"concurrency must be between 1 and {MAX_CAPACITY}")
        if not 0 <= prefetch <= MAX_CAPACITY - concurrency:
            raise ValueError(f"prefetch must be between 0 and {MAX_CAPACITY} - concurrency")
        self.groups = queue_groups(queue)
        self.session = session
        #: unique within the session (the manager knows workers by session + id); a
        #: random one by default, since any number of workers may share a session
        self.worker_id = worker_id or f"w{secrets.token_hex(3)}"
        self.name = f"spreadqueue-worker-{queue}-{self.worker_id}"  # type: ignore[assignment]
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.prefetch_below = prefetch_below
        self._level = _NO_PREFETCH
        # recent run times (seconds), and the fading memory of the last long task
        self._recent: deque[float] = deque(maxlen=_RECENT)
        self._long = 0.0
        self._samples = 0
        self.stop_timeout = stop_timeout
        self._reactor = reactor
        self._serializer: ISerializer = serializer or default_serializer()
        self._combine_limit = combine_limit
        self.pool = pool
        self.max_tasks_per_child = max_tasks_per_child
        #: a manager of the queue run on this worker's session (``auto_manager``)
        self.manager: ManagerService | None = None
        self._auto_manager = auto_manager
        self._pools: dict[str, ThreadPool | ProcessPool] = {}
        self._handlers: dict[str, tuple[Handler, bool, str]] = {}
        self._declared: Any = _NOTHING  # what REGISTER says we serve (see _functions)
        self._running: dict[str, Task] = {}
        # prefetched tasks, not started yet: ids -> ASSIGN entry, and their FIFO
        # (entries whose id is no longer in _waiting are skipped)
        self._waiting: dict[str, Assign] = {}
        self._fifo: deque[tuple[Assign, float | None]] = deque()
        self._starting = False
        # handler timeouts: one heap and one timer (entries of finished tasks skipped)
        self._expiries: Deadlines[Task] = Deadlines(reactor, self._expire, _unfinished)
        self._state = "new"  # new -> starting -> ready -> draining -> stopped
        self._results: dict[str, list[Result]] = {}
        self._result_bytes: dict[str, int] = {}
        self._control = Outbox()  # RELEASE / RETIRE to Q-mgr (REGISTER: _register_due)
        self._register_due = False  # a REGISTER goes out with the next flush
        self._hello: str | None = None  # the id of the last HELLO we read
        self._away = False  # the session is reconnecting: what we send waits
        self._turn = Turn(reactor, self._flush, session)
        self._malformed = WarningThrottle(reactor, self.log)
        self._busy = Utilisation(reactor.seconds())
        self._started_wall = time.time()
        # (requester, request id) seen in this batch of frames: answered in its flush
        self._status_requests: list[tuple[str, str]] = []
        self._drained: list[Deferred[None]] = []
        self._start_d: Deferred[None] | None = None
        self._stop_d: Deferred[None] | None = None
        self.stats: dict[str, int] = {
            "assigned": 0,
            "completed": 0,
            "errors": 0,
            "cancelled": 0,
            "duplicates": 0,
            "released": 0,
            "malformed": 0,
            "messages_sent": 0,
            "runs_lost": 0,
        }
        for fname, fn in (handlers or {}).items():
            self.add_handler(fname, fn)

    # ------------------------------------------------------------------ handlers

    def add_handler(
        self, name: str, fn: Handler, *, with_task: bool = False, pool: str | None = None
    ) -> None:
        """Handle tasks for function ``name`` with ``fn(args)`` (``fn(task, args)``),
        in ``pool`` (default: where :func:`~spreadqueue.run_in` or the worker's
        ``pool`` says, see the class)."""
        if not isinstance(name, str) or not name:
            raise ValueError("a handler name must be a non-empty str")
        where = pool_for(fn, self.pool) if pool is None else pool
        if where not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, not {where!r}")
        if where == "processes":
            _check_process_handler(name, fn, with_task)
        if not can_run(self._reactor, where):
            where = "reactor"  # e.g. task.Clock in tests: run inline, deterministically
        new = name not in self._handlers
        self._handlers[name] = (fn, with_task, where)
        if where == "processes" and self._state in ("ready", "starting"):
            self._pool_of(where).start()
        if new:
            self._declared = _NOTHING  # listed anew at the next REGISTER
            if self._state == "ready":
                self._register()  # the manager learns that we serve it
                self._turn.schedule()

    def handler(
        self, name: str, *, with_task: bool = False, pool: str | None = None
    ) -> Callable[[F], F]:
        """Decorator form of :meth:`add_handler`."""

        def register(fn: F) -> F:
            self.add_handler(name, fn, with_task=with_task, pool=pool)
            return fn

        return register

    def _pool_of(self, where: str) -> ThreadPool | ProcessPool:
        pool = self._pools.get(where)
        if pool is None:
            if where == "threads":
                name = f"spreadqueue-{self.groups.queue}-{self.worker_id}"
                pool = ThreadPool(self._reactor, self.concurrency, name)  # type: ignore[arg-type]
            else:
                modules = {
                    fn.__module__
                    for fn, _, where in self._handlers.values()
                    if where == "processes" and isinstance(getattr(fn, "__module__", None), str)
                }
                pool = ProcessPool(
                    self._reactor,
                    self.concurrency,
                    self.max_tasks_per_child,
                    preload=tuple(sorted(modules)),
                )
            self._pools[where] = pool
        return pool

    def _stop_pools(self) -> Deferred[Any]:
        pools, self._pools = self._pools, {}
        waits = [p.stop() for p in pools.values()]
        return gatherResults([d for d in waits if d is not None])

    @property
    def busy(self) -> int:
        """Tasks being run now."""
        return len(self._running)

    @property
    def prefetched(self) -> int:
        """Tasks taken ahead of time, waiting for a free slot."""
        return len(self._waiting)

    @property
    def prefetching(self) -> bool:
        """True while the worker takes tasks ahead of time (its tasks are short)."""
        return self._level != _NO_PREFETCH

    # ------------------------------------------------------------------ lifecycle

    def startService(self) -> None:
        """Start taking tasks (see :meth:`start`)."""
        super().startService()
        self.start()

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """Stop gracefully (see :meth:`stop`)."""
        super().stopService()
        return self.stop()

    def start(self) -> Deferred[None]:
        """Join the queue's worker group and register; fires once registered."""
        if self._start_d is not None:
            return self._start_d
        self._state = "starting"
        waits: list[Deferred[Any]] = []
        if any(where == "processes" for _, _, where in self._handlers.values()):
            pool = self._pool_of("processes")
            assert isinstance(pool, ProcessPool)
            pool.start()
            # no capacity is offered before the children can take tasks
            waits.append(pool.whenReady())
        session, groups = self.session, self.groups
        if self._auto_manager:
            # Active if the queue has no manager, else standing by to take over.
            self.manager = ManagerService(self._reactor, session, groups.queue)
            self.manager.startService()
        session.add_listener(self._on_private, session.private_group)
        session.add_listener(self._on_worker_group, groups.workers)
        session.add_reconnect_listener(self._reconnect_event)
        session.whenDisconnected().addCallback(lambda _: self._session_lost())
        waits.append(session.acquire(groups.workers))
        d: Deferred[Any] = waits[0]
        if len(waits) > 1:
            d = gatherResults(waits, consumeErrors=True)
            d.addErrback(lambda f: f.value.subFailure if f.check(FirstError) else f)

        def joined(_: object) -> None:
            if self._state != "starting":
                return
            self._state = "ready"
            self._register()
            self._flush()

        d.addCallback(joined)
        self._start_d = d
        return d

    def stop(self, timeout: float | None = None) -> Deferred[None]:
        """Stop taking tasks, finish the running ones, leave the queue.

        Tasks still running after ``timeout`` seconds (default ``stop_timeout``) are
        cancelled without answering; the manager gives them to another worker.
        """
        if self._stop_d is None:
            wait = self.stop_timeout if timeout is None else timeout
            self._stop_d = Deferred.fromCoroutine(self._stop(wait))
        # every caller gets its own Deferred for the one stop in progress
        d: Deferred[None] = Deferred()

        def relay(result: object) -> object:
            if isinstance(result, Failure):
                d.errback(result)
                return None
            d.callback(None)
            return result

        self._stop_d.addBoth(relay)
        return d

    async def _stop(self, timeout: float) -> None:
        if self._state in ("new", "stopped"):
            self._state = "stopped"
            return
        if self._state == "ready":
            self._state = "draining"
            self._register()  # capacity 0: no new tasks
            self._release_waiting()  # what has not started goes back to the manager
            self._flush()
        if self._running:
            self.log.info(
                "queue worker {worker} stopping: waiting for {n} running task(s) "
                "({tasks}) for at most {timeout:g}s",
                worker=self.worker_id,
                n=len(self._running),
                tasks=_describe(self._running.values()),
                timeout=timeout,
            )
            drained: Deferred[None] = Deferred()
            self._drained.append(drained)
            timer = self._reactor.callLater(timeout, self._give_up_draining, drained)
            await drained
            if timer.active():
                timer.cancel()
            if self._running:
                self.log.warn(
                    "queue worker {worker} stopped waiting after {timeout:g}s: {n} task(s) "
                    "({tasks}) cancelled; the manager gives them to another worker",
                    worker=self.worker_id,
                    n=len(self._running),
                    tasks=_describe(self._running.values()),
                    timeout=timeout,
                )
            else:
                self.log.info("queue worker {worker}: its tasks are done", worker=self.worker_id)
        for task in list(self._running.values()):
            task._abandoned = True
            self._cancel_task(task)
        self._running.clear()
        self._forget_waiting()
        self._state = "stopped"
        self._malformed.stop()
        self._expiries.clear()
        if self.session.connected:
            self._control.add((self.groups.manager,), Kind.RETIRE, Retire(self.worker_id))
            self._flush()
        self._turn.cancel()
        session = self.session
        session.remove_listener(self._on_private, session.private_group)
        session.remove_listener(self._on_worker_group, self.groups.workers)
        session.remove_reconnect_listener(self._reconnect_event)
        await self._stop_pools()
        await session.release(self.groups.workers)
        if self.manager is not None and self.manager.running:
            await self.manager.stopService()

    def _give_up_draining(self, drained: Deferred[None]) -> None:
        if drained in self._drained:
            self._drained.remove(drained)
            drained.callback(None)

    def _session_lost(self) -> None:
        """The session is gone: nothing we run can be answered; the manager (which saw
        the session leave) gives our tasks to other workers."""
        if self._state == "stopped":
            return
        self._state = "stopped"
        self._malformed.stop()
        for task in list(self._running.values()):
            task._abandoned = True
            self._cancel_task(task)
        self._running.clear()
        self._forget_waiting()
        self._expiries.clear()
        self._turn.cancel()
        self._stop_pools()
        drained, self._drained = self._drained, []
        for d in drained:
            d.callback(None)

    def _reconnect_event(self, event: SessionLost | SessionBack) -> None:
        """The session is away (hold what we send), or back (register again, send)."""
        if self._state in ("new", "stopped"):
            return
        if isinstance(event, SessionLost):
            self._away = True
            self._status_requests.clear()  # their requesters are away too
            return
        self._away = False
        answers = sum(1 for batch in self._results.values() for r in batch if r.final)
        self.log.info(
            "queue worker {worker}: Spread session {session} back after {away:.1f}s; "
            "registering again with {held} task(s) held, {answers} answer(s) to send",
            worker=self.worker_id,
            session=event.private_group,
            away=event.away,
            held=len(self._running) + len(self._waiting),
            answers=answers,
        )
        if self._state in ("ready", "draining"):
            self._register()
        self._turn.schedule()

    # ------------------------------------------------------------------ frames

    def _on_worker_group(self, frame: object) -> None:
        if type(frame) is not RegularMessage:
            return
        if frame.mess_type == _HELLO:
            # A manager became active (or saw us come back): tell it what we are, and
            # which HELLO we answer (our held list is then exact for that manager).
            try:
                entries = decode(frame.mess_type, frame.data).entries
            except MalformedMessage:
                entries = []
            if entries:
                self._hello = entries[0].hello_id
            if self._state in ("ready", "draining"):
                self._register()
                self._turn.schedule()
        elif frame.mess_type == _STATUS_REQUEST and frame.sender.startswith("#"):
            try:
                msg = decode(frame.mess_type, frame.data)
            except MalformedMessage:
                return
            for e in msg.entries[:4]:
                self._status_requests.append((frame.sender, e.request_id))
            self._turn.schedule()

    def _on_private(self, frame: object) -> None:
        if type(frame) is not RegularMessage:
            return
        mt = frame.mess_type
        if mt != _ASSIGN and mt != _CANCEL:
            return  # someone else's traffic on our shared private group
        try:
            msg = decode(mt, frame.data)
        except MalformedMessage as e:
            self._malformed.dropped(
                frame.sender, e, self.stats, "queue worker {worker}", worker=self.worker_id
            )
            return
        if mt == _ASSIGN:
            self._assigned(msg.entries)
        else:
            self._cancelled(msg.entries)

    def _cancelled(self, entries: list[Any]) -> None:
        waiting, running = self._waiting, self._running
        for entry in entries:
            tid = entry.task_id
            if tid in waiting:
                # Not started: answer at once (the manager counts it done).
                a = waiting.pop(tid)
                self.stats["cancelled"] += 1
                self._add_result(a.reply_to, a.task_id, True, Status.CANCELLED, None, 0)
        # Slots freed by cancelled handlers are filled only once every cancel of the
        # message is applied (or a prefetched task cancelled here would start first).
        starting, self._starting = self._starting, True
        try:
            for entry in entries:
                task = running.get(entry.task_id)
                if task is not None:
                    task._cancelled = True
                    self._cancel_task(task)
        finally:
            self._starting = starting
        if waiting and not starting:
            self._start_waiting()

    # ------------------------------------------------------------------ running

    def _assigned(self, entries: list[Any]) -> None:
        state = self._state
        if state != "ready" and state != "draining":
            return  # stopped: the manager requeues what we held when we retired
        me, running, waiting, fifo = self.worker_id, self._running, self._waiting, self._fifo
        now: float | None = None
        for entry in entries:
            if entry.worker_id != me:
                continue  # another worker of this session
            tid = entry.task_id
            if tid in running or tid in waiting:
                self.stats["duplicates"] += 1
                continue
            if state == "draining":
                # It crossed our capacity-0 REGISTER: give it back unstarted.
                self._release(tid)
                continue
            self.stats["assigned"] += 1
            deadline = None
            if entry.timeout_ms is not None:
                if now is None:
                    now = self._reactor.seconds()
                deadline = now + entry.timeout_ms / 1000.0 + EXPIRY_GRACE
            waiting[tid] = entry
            fifo.append((entry, deadline))
        if waiting:
            self._start_waiting()

    def _start_waiting(self) -> None:
        """Start prefetched tasks, oldest first, while slots are free."""
        if self._starting:
            return  # a handler finished synchronously inside the loop below
        self._starting = True
        try:
            running, waiting, fifo = self._running, self._waiting, self._fifo
            limit = self.concurrency
            now: float | None = None
            while fifo and len(running) < limit:
                entry, deadline = fifo.popleft()
                tid = entry.task_id
                if waiting.get(tid) is not entry:
                    continue  # cancelled while waiting
                del waiting[tid]
                if deadline is not None:
                    if now is None:
                        now = self._reactor.seconds()
                    if deadline <= now:
                        # Its sender stopped waiting while it waited here: do not run it.
                        self.stats["cancelled"] += 1
                        self._add_result(entry.reply_to, tid, True, Status.CANCELLED, None, 0)
                        continue
                self._run(entry, deadline)
        finally:
            self._starting = False

    def _timed(self, run_time: float) -> None:
        """Track how long tasks take; start or stop prefetching when they cross the line.

        Run times are wall-clock, so a short task that was preempted, or one of a cold
        process's first, looks slow now and then. The typical run time is therefore
        the median of the recent ones: single slow samples do not move it, and
        workers with the same tasks settle on the same level (a worker left in
        single-task prefetch by noise would get a fraction of its peers' share). Once
        past the first few (a fresh process runs its first tasks cold), a task longer
        than the stop line is never noise: it counts at once, and its memory fades
        over the next tasks.
        """
        n = self._samples = self._samples + 1
        recent = self._recent
        recent.append(run_time)
        below = self.prefetch_below
        if run_time > 4 * below and n > _PREFETCH_SAMPLES:
            self._long = run_time
        else:
            self._long *= _LONG_DECAY
        ordered = sorted(recent)
        typical = max(ordered[(len(ordered) - 1) // 2], self._long)
        level = self._level
        if typical > 4 * below or (
            level == _NO_PREFETCH and (typical >= below or n < _PREFETCH_SAMPLES)
        ):
            new = _NO_PREFETCH
        else:
            # Tiny tasks: a whole batch takes less than one round trip's worth of time.
            batch = typical * (self.concurrency + self.prefetch)
            new = _BURST if batch < (4 * below if level == _BURST else below) else _PREFETCH
        if new == level:
            return
        self._level = new
        if self._state == "ready":
            self._register()
            if new == _NO_PREFETCH:
                # Long tasks: prefetched ones would wait behind them while other
                # workers may be idle. Hand them back and take one at a time again.
                self._release_waiting()
            self._turn.schedule()

    def _release(self, tid: str) -> None:
        self.stats["released"] += 1
        self._control.add(
            (self.groups.manager,), Kind.RELEASE, new_entry(Release, (self.worker_id, tid))
        )
        self._turn.schedule()

    def _release_waiting(self) -> None:
        """Hand every prefetched task back to the manager (we are stopping)."""
        waiting = self._waiting
        for entry, _ in self._fifo:
            if waiting.get(entry.task_id) is entry:
                self._release(entry.task_id)
        self._forget_waiting()

    def _forget_waiting(self) -> None:
        self._waiting.clear()
        self._fifo.clear()

    def _run(self, entry: Any, deadline: float | None) -> None:
        task = Task(self, entry.task_id, entry.func, entry.reply_to, entry.attempt)
        task._started = self._reactor.seconds()
        self._running[task.task_id] = task
        registered = self._handlers.get(entry.func)
        if registered is None:
            self._complete(
                task,
                Status.UNKNOWN_FUNCTION,
                f"worker {self.worker_id} has no handler for {entry.func!r}",
            )
            return
        fn, with_task, where = registered
        try:
            args = self._serializer.loads(entry.args)
        except ValueError as e:
            self._complete(task, Status.ERROR, ("spreadqueue.BadArguments", str(e), ""))
            return
        if where != "reactor":
            r = self._pool_of(where).run(fn, (task, args) if with_task else (args,))
        else:
            try:
                r = fn(task, args) if with_task else fn(args)
            except Exception:
                self._failed(Failure(), task)
                return
        if type(r) is CoroutineType:
            r = self._start_coroutine(r)
        if not isinstance(r, Deferred):
            self._succeeded(r, task)
            return
        task._deferred = r
        if deadline is not None:
            # The sender stops waiting then; stop working too (if the handler can).
            task._timed = True
            self._expiries.add(deadline, task)
        r.addCallbacks(self._succeeded, self._failed, callbackArgs=(task,), errbackArgs=(task,))

    def _start_coroutine(self, coro: Coroutine[Any, Any, Any]) -> Deferred[Any]:
        """Run a handler's coroutine; Twisted drives it here (the asyncio worker,
        :mod:`spreadqueue.aio`, runs it as an asyncio task instead)."""
        return Deferred.fromCoroutine(coro)

    def _in_other_thread(self) -> bool:
        """True when called from a thread other than the reactor's (a pool thread)."""
        return threadable.ioThread is not None and not threadable.isInIOThread()

    def _expire(self, task: Task) -> None:
        task._cancelled = True
        self._cancel_task(task)

    def _cancel_task(self, task: Task) -> None:
        d = task._deferred
        if d is not None and not d.called:
            d.cancel()

    def respond(self, task: Task, result: Any) -> None:
        """Send ``result`` to the task's sender (Spread::Queue's ``respond``).

        May be called several times for one task: each call is one answer. The last
        one is held back until the handler returns, so it can travel as the task's
        final answer (together with the manager's done notice); a handler that
        returns a value other than None after responding sends that as the final
        answer. Raises TypeError (unserializable) or PayloadTooLarge at once.
        """
        if self._in_other_thread():
            # a handler in the thread pool: the answer goes out from the reactor
            blockingCallFromThread(self._reactor, self.respond, task, result)  # type: ignore[arg-type]
            return
        if not isinstance(task, Task) or task.worker is not self:
            raise ValueError(f"{task!r} is not a task of this worker")
        if task._finished:
            raise ValueError(f"{task!r} is already finished")
        payload = self._serializer.dumps(result)
        if len(payload) > MAX_PAYLOAD:
            raise PayloadTooLarge(f"a response of {len(payload)} bytes; at most {MAX_PAYLOAD}")
        if task._buffer is not _NOTHING:
            self._queue_result(task, False, Status.OK, task._buffer)
        task._buffer = payload

    def _succeeded(self, value: Any, task: Task) -> None:
        if task._finished:
            return
        if value is None and task._buffer is not _NOTHING:
            payload, task._buffer = task._buffer, _NOTHING
            self._complete(task, _STATUS_OK, payload)
            return
        try:
            payload = self._serializer.dumps(value)
        except Exception as e:
            self._complete(
                task, Status.ERROR, (_type_name(type(e)), f"result not serializable: {e}", "")
            )
            return
        if len(payload) > MAX_PAYLOAD:
            message = f"result of {len(payload)} bytes; at most {MAX_PAYLOAD} fit"
            self._complete(task, Status.ERROR, ("spreadqueue.PayloadTooLarge", message, ""))
            return
        self._complete(task, _STATUS_OK, payload)

    def _failed(self, failure: Failure, task: Task) -> None:
        if task._finished:
            return
        if task._cancelled and failure.check(CancelledError):
            self._complete(task, Status.CANCELLED, None)
            return
        value = failure.value
        if isinstance(value, HandlerProcessDied):
            self._run_lost(task, str(value))
            return
        if isinstance(value, HandlerError):  # raised in a child process
            type_name, message, traceback = value.type_name, value.message, value.traceback
        else:
            exc_type = failure.type if isinstance(failure.type, type) else type(value)
            type_name, message = _type_name(exc_type), str(value)
            traceback = failure.getTraceback()
        self._complete(
            task,
            Status.ERROR,
            (_clip(type_name, 200), _clip(message, MAX_TEXT), _clip(traceback, _MAX_TRACEBACK)),
        )

    def _run_lost(self, task: Task, why: str) -> None:
        """The process running ``task`` died: the manager retries it (or fails it once
        ``max_attempts`` runs were lost), as for a lost worker; the sender hears from
        the manager, not from us."""
        self.stats["runs_lost"] += 1
        self.log.warn(
            "queue worker {worker}: task {task_id} ({func}) lost: {why}; the manager "
            "retries it within max_attempts",
            worker=self.worker_id,
            task_id=task.task_id,
            func=task.func,
            why=why,
        )
        task._buffer = _NOTHING
        self._end(task)
        self._control.add(
            (self.groups.manager,),
            Kind.RELEASE,
            new_entry(Release, (self.worker_id, task.task_id, True)),
        )
        self._turn.schedule()
        self._after_end(None)

    def _end(self, task: Task) -> float | None:
        """Bookkeeping of a task that ended: its run time (None if abandoned)."""
        task._finished = True
        if task._timed:
            self._expiries.done()
        if self._running.get(task.task_id) is task:
            del self._running[task.task_id]
        if task._abandoned:
            return None
        now = self._reactor.seconds()
        run_time = now - task._started
        self._busy.completed(now, run_time)
        return run_time

    def _after_end(self, run_time: float | None) -> None:
        """A slot is free: start what waits, adapt prefetch, tell a draining stop."""
        if self._waiting and not self._starting:
            self._start_waiting()
        if self.prefetch and run_time is not None:
            self._timed(run_time)
        if not self._running and self._drained:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def _complete(self, task: Task, status: Status, payload: Any) -> None:
        run_time = self._end(task)
        if run_time is None:
            return
        if status is _STATUS_OK:
            self.stats["completed"] += 1
        elif status is Status.CANCELLED:
            self.stats["cancelled"] += 1
        else:
            self.stats["errors"] += 1
            self._log_failure(task, status, payload)
        if task._buffer is not _NOTHING:
            # responded, then failed: the responses still count
            self._queue_result(task, False, Status.OK, task._buffer)
            task._buffer = _NOTHING
        self._queue_result(task, True, status, payload)
        self._after_end(run_time)

    def _log_failure(self, task: Task, status: Status, payload: Any) -> None:
        if status is Status.UNKNOWN_FUNCTION:
            error = f"no handler for {task.func!r}"
        else:
            error = f"{payload[0]}: {payload[1]}"
        self.log.warn(
            "queue worker {worker}: task {task_id} ({func}) failed: {error}",
            worker=self.worker_id,
            task_id=task.task_id,
            func=task.func,
            error=error,
            sender=task.reply_to,
        )

    def _queue_result(self, task: Task, final: bool, status: Status, payload: Any) -> None:
        if type(payload) is bytes or type(payload) is str:
            size = len(payload)
        elif isinstance(payload, tuple):
            size = sum(len(p) for p in payload)
        else:
            size = 0
        self._add_result(task.reply_to, task.task_id, final, status, payload, size)

    def _add_result(
        self, reply_to: str, tid: str, final: bool, status: Status, payload: Any, size: int
    ) -> None:
        entry = new_entry(Result, (tid, self.worker_id, final, status, payload))
        batch = self._results.get(reply_to)
        if batch is None:
            self._results[reply_to] = [entry]
            self._result_bytes[reply_to] = size
            self._turn.schedule()
        else:
            batch.append(entry)
            self._result_bytes[reply_to] += size

    # ------------------------------------------------------------------ sending

    def status(self) -> dict[str, Any]:
        """What this worker reports (docs/protocol.md, "Status")."""
        now = self._reactor.seconds()
        running = list(self._running.values())
        report: dict[str, Any] = {
            "role": "worker",
            "queue": self.groups.queue,
            "worker": f"{self.worker_id}@{self.session.private_group}",
            "state": self._state,
            "started": self._started_wall,
            "now": time.time(),
            "concurrency": self.concurrency,
            "prefetch": self.prefetch,
            "prefetching": self.prefetching,
            "running": len(running),
            "prefetched": len(self._waiting),
            "current": [
                {"task_id": t.task_id, "func": t.func, "age": now - t._started}
                for t in running[:50]
            ],
            "functions": sorted(self._handlers),
            "pool": self.pool,
            "pools": {kind: p.stats() for kind, p in self._pools.items()},
            "counts": dict(self.stats),
            "process": process_info(),
        }
        report.update(
            self._busy.summary(now, self.concurrency, sum(now - t._started for t in running))
        )
        return report

    def _send_status(self, session: ISpreadSession) -> int:
        report = pack_report(self.status())
        requests, self._status_requests = self._status_requests, []
        return sum(
            send(session, (requester,), Kind.STATUS, [StatusReport(i, "worker", report)])
            for requester, i in requests
        )

    def _register(self) -> None:
        """Tell the manager what we are at the next flush. The entry is built then, not
        now: a task that ends in between is answered (RESULT) in that same flush, and
        a REGISTER still listing it would make the manager count a credit for ever."""
        self._register_due = True

    def _functions(self) -> tuple[str, ...] | None:
        """The functions REGISTER says we serve: our handlers' names (those a task can
        have), or None (every function) when they are too many to list."""
        declared = self._declared
        if declared is _NOTHING:
            names = sorted(n for n in self._handlers if len(n) <= MAX_FUNC)
            if len(names) > MAX_FUNCTIONS or sum(map(len, names)) > _MAX_DECLARED:
                declared = None
            else:
                declared = tuple(names)
            self._declared = declared
        return declared  # type: ignore[no-any-return]

    def _registration(self) -> Register:
        held = (*self._running, *self._waiting)
        level, concurrency, hello = self._level, self.concurrency, self._hello
        functions = self._functions()
        wid = self.worker_id
        if self._state != "ready":
            entry = Register(wid, 0, held, 0, None, hello, functions)
        elif level == _NO_PREFETCH:
            entry = Register(wid, concurrency, held, concurrency, None, hello, functions)
        elif level == _PREFETCH:
            capacity = concurrency + self.prefetch
            entry = Register(wid, capacity, held, concurrency, None, hello, functions)
        else:
            # Tasks so short that running a whole batch in a row delays none of them
            # noticeably: take bursts (fewer, fuller messages; fewer wake-ups).
            capacity = concurrency + self.prefetch
            entry = Register(wid, capacity, held, capacity, capacity, hello, functions)
        return entry

    def _flush(self) -> None:
        session = self.session
        if self._away:
            return  # kept until the session is back
        results, self._results = self._results, {}
        sizes, self._result_bytes = self._result_bytes, {}
        if not session.connected:
            return
        manager = self.groups.manager
        sent = 0
        dones: list[Done] = []
        failures: list[Result] = []
        for reply_to, batch in results.items():
            if reply_to == manager:
                # Nobody waits for these answers (detached tasks): the manager reads them
                # as done notices, and keeps the errors of the failed ones.
                sent += send(session, (manager,), Kind.RESULT, [_for_manager(r) for r in batch])
            elif sizes[reply_to] <= self._combine_limit:
                # One message to the sender and the manager: the manager reads the
                # final entries as done notices (no second message).
                sent += send(session, (reply_to, manager), _RESULT_KIND, batch)
            else:
                sent += send(session, (reply_to,), Kind.RESULT, batch)
                for r in batch:
                    if r.final and r.status != _OK:
                        # The manager keeps failures (a detached task's dead letter).
                        failures.append(r)
                    elif r.final:
                        dones.append(Done(r.worker_id, r.task_id))
        if failures:
            sent += send(session, (manager,), Kind.RESULT, failures)
        if dones:
            sent += send(session, (manager,), Kind.DONE, dones)
        if self._register_due:
            self._register_due = False
            # Before RELEASE and RETIRE: the manager must know our new capacity before
            # tasks we hand back are queued again (or they come straight back to us),
            # and a REGISTER after RETIRE would bring us back.
            if self._state != "stopped":
                sent += send(session, (manager,), Kind.REGISTER, [self._registration()])
        sent += self._control.send_all(session)
        if self._status_requests:
            sent += self._send_status(session)
        self.stats["messages_sent"] += sent
