"""``Worker``: runs the tasks a queue manager assigns, answers the senders directly."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from inspect import iscoroutine
from typing import Any, Final, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..interfaces import ISerializer, ISpreadSession
from ..spread.wire import RegularMessage
from .errors import MalformedMessage, PayloadTooLarge
from .messages import (
    MAX_PAYLOAD,
    MAX_TEXT,
    MESS_TYPE_BASE,
    Done,
    Kind,
    Register,
    Result,
    Retire,
    Status,
    decode,
)
from .names import queue_groups
from .outbox import Outbox, Turn, send
from .serializer import default_serializer
from .sharing import acquire, release

__all__ = ["Handler", "Task", "Worker"]

Handler = Callable[..., Any]
F = TypeVar("F", bound=Handler)

_worker_numbers = itertools.count(1)
_NOTHING: Final = object()
_ASSIGN: Final = MESS_TYPE_BASE + Kind.ASSIGN
_CANCEL: Final = MESS_TYPE_BASE + Kind.CANCEL
_HELLO: Final = MESS_TYPE_BASE + Kind.HELLO
#: Results whose payloads add up to at most this many bytes travel in one message to
#: [sender, Q-mgr], which doubles as the DONE notice.
DEFAULT_COMBINE_LIMIT: Final = 16 * 1024
_MAX_TRACEBACK: Final = 16 * 1024


def _type_name(t: type) -> str:
    module = t.__module__
    return t.__qualname__ if module == "builtins" else f"{module}.{t.__qualname__}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 20] + "\n...[truncated]"


class Task:
    """One task as a handler sees it (the seed's *originator*).

    Pass it to :meth:`Worker.respond` to answer the sender before (or instead of)
    returning a value.
    """

    __slots__ = (
        "_abandoned",
        "_buffer",
        "_cancelled",
        "_deferred",
        "_finished",
        "_timer",
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
        self._timer: IDelayedCall | None = None
        self._finished = False
        self._cancelled = False
        self._abandoned = False

    def __repr__(self) -> str:
        return f"<Task {self.task_id} {self.func} attempt {self.attempt}>"


class Worker(Service):
    """A worker of queue ``queue`` on ``session``, with handlers by function name.

    ``concurrency`` is how many tasks it runs at once: the manager gives it that many
    credits and never waits for a per-task "ready". A handler is called with the
    decoded arguments (and, if registered ``with_task=True``, the :class:`Task`
    first) and may return a value, a Deferred or a coroutine; what it returns is the
    task's result. Exceptions go back to the sender as
    :class:`~spreadqueue.queue.errors.RemoteError`.

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
    ) -> None:
        if not 1 <= concurrency <= 10_000:
            raise ValueError("concurrency must be between 1 and 10000")
        self.groups = queue_groups(queue)
        self.session = session
        #: unique within the session (the manager knows workers by session + id)
        self.worker_id = worker_id or f"w{next(_worker_numbers)}"
        self.name = f"spreadqueue-worker-{queue}-{self.worker_id}"  # type: ignore[assignment]
        self.concurrency = concurrency
        self.stop_timeout = stop_timeout
        self._reactor = reactor
        self._serializer: ISerializer = serializer or default_serializer()
        self._combine_limit = combine_limit
        self._handlers: dict[str, tuple[Handler, bool]] = {}
        for fname, fn in (handlers or {}).items():
            self.add_handler(fname, fn)
        self._running: dict[str, Task] = {}
        self._state = "new"  # new -> starting -> ready -> draining -> stopped
        self._results: dict[str, list[Result]] = {}
        self._result_bytes: dict[str, int] = {}
        self._control = Outbox()  # REGISTER / DONE / RETIRE to Q-mgr
        self._turn = Turn(reactor, self._flush)
        self._drained: list[Deferred[None]] = []
        self._start_d: Deferred[None] | None = None
        self._stop_d: Deferred[None] | None = None
        self.stats: dict[str, int] = {
            "assigned": 0,
            "completed": 0,
            "errors": 0,
            "cancelled": 0,
            "duplicates": 0,
            "malformed": 0,
            "messages_sent": 0,
        }

    # ------------------------------------------------------------------ handlers

    def add_handler(self, name: str, fn: Handler, *, with_task: bool = False) -> None:
        """Handle tasks for function ``name`` with ``fn(args)`` (``fn(task, args)``)."""
        if not isinstance(name, str) or not name:
            raise ValueError("a handler name must be a non-empty str")
        self._handlers[name] = (fn, with_task)

    def handler(self, name: str, *, with_task: bool = False) -> Callable[[F], F]:
        """Decorator form of :meth:`add_handler`."""

        def register(fn: F) -> F:
            self.add_handler(name, fn, with_task=with_task)
            return fn

        return register

    @property
    def busy(self) -> int:
        """Tasks being run now."""
        return len(self._running)

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
        session, groups = self.session, self.groups
        session.add_listener(self._on_private, session.private_group)
        session.add_listener(self._on_worker_group, groups.workers)
        session.whenDisconnected().addCallback(lambda _: self._session_lost())
        d = acquire(session, groups.workers)

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
            self._flush()
        if self._running:
            drained: Deferred[None] = Deferred()
            self._drained.append(drained)
            timer = self._reactor.callLater(timeout, self._give_up_draining, drained)
            await drained
            if timer.active():
                timer.cancel()
        for task in list(self._running.values()):
            task._abandoned = True
            self._cancel_task(task)
        self._running.clear()
        self._state = "stopped"
        if self.session.connected:
            self._control.add((self.groups.manager,), Kind.RETIRE, Retire(self.worker_id))
            self._flush()
        self._turn.cancel()
        session = self.session
        session.remove_listener(self._on_private, session.private_group)
        session.remove_listener(self._on_worker_group, self.groups.workers)
        await release(session, self.groups.workers)

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
        for task in list(self._running.values()):
            task._abandoned = True
            self._cancel_task(task)
        self._running.clear()
        self._turn.cancel()
        drained, self._drained = self._drained, []
        for d in drained:
            d.callback(None)

    # ------------------------------------------------------------------ frames

    def _on_worker_group(self, frame: object) -> None:
        if type(frame) is RegularMessage and frame.mess_type == _HELLO:
            # A manager became active (or saw us come back): tell it what we are.
            if self._state in ("ready", "draining"):
                self._register()
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
            self.stats["malformed"] += 1
            self.log.warn(
                "queue worker {worker}: dropped a malformed message from {sender}: {error}",
                worker=self.worker_id,
                sender=frame.sender,
                error=str(e),
            )
            return
        if msg.kind is Kind.ASSIGN:
            for entry in msg.entries:
                if entry.worker_id == self.worker_id:
                    self._assigned(entry)
        else:
            for entry in msg.entries:
                task = self._running.get(entry.task_id)
                if task is not None:
                    task._cancelled = True
                    self._cancel_task(task)

    # ------------------------------------------------------------------ running

    def _assigned(self, entry: Any) -> None:
        if self._state not in ("ready", "draining"):
            return  # stopped: the manager requeues what we held when we retired
        if entry.task_id in self._running:
            self.stats["duplicates"] += 1
            return
        self.stats["assigned"] += 1
        task = Task(self, entry.task_id, entry.func, entry.reply_to, entry.attempt)
        self._running[task.task_id] = task
        registered = self._handlers.get(entry.func)
        if registered is None:
            self._complete(
                task,
                Status.UNKNOWN_FUNCTION,
                f"worker {self.worker_id} has no handler for {entry.func!r}",
            )
            return
        fn, with_task = registered
        try:
            args = self._serializer.loads(entry.args)
        except ValueError as e:
            self._complete(task, Status.ERROR, ("spreadqueue.BadArguments", str(e), ""))
            return
        try:
            r = fn(task, args) if with_task else fn(args)
        except Exception:
            self._failed(Failure(), task)
            return
        if iscoroutine(r):
            r = Deferred.fromCoroutine(r)
        if not isinstance(r, Deferred):
            self._succeeded(r, task)
            return
        task._deferred = r
        if entry.timeout_ms is not None:
            # The sender stops waiting then; stop working too (if the handler can).
            task._timer = self._reactor.callLater(entry.timeout_ms / 1000.0, self._expire, task)
        r.addCallbacks(self._succeeded, self._failed, callbackArgs=(task,), errbackArgs=(task,))

    def _expire(self, task: Task) -> None:
        task._timer = None
        task._cancelled = True
        self._cancel_task(task)

    def _cancel_task(self, task: Task) -> None:
        d = task._deferred
        if d is not None and not d.called:
            d.cancel()

    def respond(self, task: Task, result: Any) -> None:
        """Send ``result`` to the task's sender (the seed's ``respond``).

        May be called several times for one task: each call is one answer. The last
        one is held back until the handler returns, so it can travel as the task's
        final answer (together with the manager's done notice); a handler that
        returns a value other than None after responding sends that as the final
        answer. Raises TypeError (unserializable) or PayloadTooLarge at once.
        """
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
            self._complete(task, Status.OK, payload)
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
        self._complete(task, Status.OK, payload)

    def _failed(self, failure: Failure, task: Task) -> None:
        if task._finished:
            return
        if task._cancelled and failure.check(CancelledError):
            self._complete(task, Status.CANCELLED, None)
            return
        exc_type = failure.type if isinstance(failure.type, type) else type(failure.value)
        self._complete(
            task,
            Status.ERROR,
            (
                _clip(_type_name(exc_type), 200),
                _clip(str(failure.value), MAX_TEXT),
                _clip(failure.getTraceback(), _MAX_TRACEBACK),
            ),
        )

    def _complete(self, task: Task, status: Status, payload: Any) -> None:
        task._finished = True
        if task._timer is not None and task._timer.active():
            task._timer.cancel()
        if self._running.get(task.task_id) is task:
            del self._running[task.task_id]
        if task._abandoned:
            return
        if status is Status.OK:
            self.stats["completed"] += 1
        elif status is Status.CANCELLED:
            self.stats["cancelled"] += 1
        else:
            self.stats["errors"] += 1
        if task._buffer is not _NOTHING:
            # responded, then failed: the responses still count
            self._queue_result(task, False, Status.OK, task._buffer)
            task._buffer = _NOTHING
        self._queue_result(task, True, status, payload)
        if not self._running and self._drained:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def _queue_result(self, task: Task, final: bool, status: Status, payload: Any) -> None:
        reply_to = task.reply_to
        batch = self._results.get(reply_to)
        if batch is None:
            batch = self._results[reply_to] = []
            self._result_bytes[reply_to] = 0
        batch.append(Result(task.task_id, self.worker_id, final, status, payload))
        if isinstance(payload, (bytes, str)):
            self._result_bytes[reply_to] += len(payload)
        elif isinstance(payload, tuple):
            self._result_bytes[reply_to] += sum(len(p) for p in payload)
        self._turn.schedule()

    # ------------------------------------------------------------------ sending

    def _register(self) -> None:
        capacity = self.concurrency if self._state == "ready" else 0
        self._control.add(
            (self.groups.manager,),
            Kind.REGISTER,
            Register(self.worker_id, capacity, tuple(self._running)),
        )

    def _flush(self) -> None:
        session = self.session
        results, self._results = self._results, {}
        sizes, self._result_bytes = self._result_bytes, {}
        if not session.connected:
            return
        manager = self.groups.manager
        sent = 0
        dones: list[Done] = []
        for reply_to, batch in results.items():
            if sizes[reply_to] <= self._combine_limit:
                # One message to the sender and the manager: the manager reads the
                # final entries as done notices (no second message).
                sent += send(session, (reply_to, manager), Kind.RESULT, batch)
            else:
                sent += send(session, (reply_to,), Kind.RESULT, batch)
                dones.extend(Done(r.worker_id, r.task_id) for r in batch if r.final)
        if dones:
            sent += send(session, (manager,), Kind.DONE, dones)
        sent += self._control.send_all(session)
        self.stats["messages_sent"] += sent
