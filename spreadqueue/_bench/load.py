"""The load a sender agent puts on the queue: ``inflight`` calls kept in flight.

A call is an rpc (:meth:`Sender.rpc`) by default, or whatever ``call`` starts (an
enqueue that ends at its acknowledgement, or at the detached task's answer). Each call
is timed at the sender, from just before it starts to the moment its Deferred fires,
with the system-wide monotonic clock (``time.monotonic_ns``). The parent gives
absolute monotonic times ``t0`` and ``t1``: calls completing before ``t0`` are warm-up,
calls completing in ``[t0, t1)`` are measured, and no call is started at or after
``t1`` (or the later ``end_ns``, or once :meth:`RpcLoad.stop` is called); then the agent
waits for the calls in flight and reports.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from .._queue.errors import MalformedMessage
from .._queue.messages import Kind, Status, decode, mess_type
from .._queue.sender import Sender
from .._spread.interfaces import ISpreadSession
from .._spread.wire import RegularMessage

__all__ = ["AnsweredEnqueues", "RpcLoad"]

_RESULT: Final = mess_type(Kind.RESULT)


class RpcLoad:
    """Keeps ``inflight`` calls of ``func(args)`` going on ``sender`` until ``t1_ns``
    (or ``end_ns``, or :meth:`stop`).

    ``call`` (default: an rpc with ``timeout``) starts one call and returns the
    Deferred that fires when it is done.

    :meth:`run` fires with a dict: ``submitted``, ``completed``, ``errors`` (by type),
    ``lost`` (calls that neither answered nor failed within ``drain_timeout`` after
    ``t1``), ``latencies_ns`` (of the calls completing in the window) and
    ``started_ns`` / ``finished_ns``.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        sender: Sender,
        func: str,
        args: Any,
        inflight: int,
        t0_ns: int,
        t1_ns: int,
        *,
        timeout: float = 30.0,
        drain_timeout: float = 35.0,
        end_ns: int | None = None,
        call: Callable[[], Deferred[Any]] | None = None,
    ) -> None:
        if inflight < 1:
            raise ValueError("inflight must be at least 1")
        self._reactor = reactor
        self._sender = sender
        self._func = func
        self._args = args
        self._inflight = inflight
        self._t0 = t0_ns
        self._t1 = t1_ns
        self._end = t1_ns if end_ns is None else max(t1_ns, end_ns)
        self._call = call if call is not None else self._rpc
        self._timeout = timeout
        self._drain_timeout = drain_timeout
        self._running = 0
        self._submitted = 0
        self._completed = 0
        self._errors: Counter[str] = Counter()
        self._latencies: list[int] = []
        self._done: Deferred[dict[str, Any]] = Deferred()
        self._stop_call: IDelayedCall | None = None
        self._started = 0

    def run(self) -> Deferred[dict[str, Any]]:
        """Start the calls; the Deferred fires once the window has passed and drained."""
        self._started = time.monotonic_ns()
        self._stop_call = self._reactor.callLater(self._drain_delay(), self._finish)
        for _ in range(self._inflight):
            if time.monotonic_ns() >= self._end:
                break
            self._fire()
        if self._running == 0:
            self._finish()
        return self._done

    def _drain_delay(self) -> float:
        return max(0.0, (self._end - time.monotonic_ns()) / 1e9) + self._drain_timeout

    def stop(self) -> None:
        """Start no more calls (the window ends now if it has not); the Deferred of
        :meth:`run` fires once the calls in flight are done (or the drain timeout)."""
        now = time.monotonic_ns()
        if self._done.called or now >= self._end:
            return
        self._end = now
        self._t1 = min(self._t1, now)
        if self._stop_call is not None and self._stop_call.active():
            self._stop_call.reset(self._drain_delay())
        if self._running == 0:
            self._finish()

    def _rpc(self) -> Deferred[Any]:
        return self._sender.rpc(self._func, self._args, timeout=self._timeout)

    def _fire(self) -> None:
        self._running += 1
        self._submitted += 1
        start = time.monotonic_ns()
        d = self._call()
        d.addCallbacks(self._answered, self._failed, callbackArgs=(start,))

    def _answered(self, _value: object, start: int) -> None:
        now = time.monotonic_ns()
        self._completed += 1
        if self._t0 <= now < self._t1:
            self._latencies.append(now - start)
        self._next(now)

    def _failed(self, failure: Failure) -> None:
        self._errors[failure.type.__name__ if failure.type else "?"] += 1
        self._next(time.monotonic_ns())

    def _next(self, now: int) -> None:
        self._running -= 1
        if self._done.called:
            return
        if now < self._end:
            self._fire()
        elif self._running == 0:
            self._finish()

    def _finish(self) -> None:
        if self._done.called:
            return
        if self._stop_call is not None and self._stop_call.active():
            self._stop_call.cancel()
        self._done.callback(
            {
                "submitted": self._submitted,
                "completed": self._completed,
                "errors": dict(self._errors),
                "lost": self._running,
                "latencies_ns": self._latencies,
                "started_ns": self._started,
                "finished_ns": time.monotonic_ns(),
            }
        )


class AnsweredEnqueues:
    """Detached tasks that answer ``group``, a group of ``session`` (the sender's): a
    :class:`RpcLoad` ``call`` that ends at the task's answer, so that a load keeps a
    steady number of detached tasks unfinished.

    ``acked`` lists the ids of the tasks acknowledged (held); ``answered_again`` counts
    final answers to a task already answered (a task run twice).
    """

    def __init__(self, sender: Sender, session: ISpreadSession, group: str) -> None:
        self._sender = sender
        self._session = session
        self._group = group
        self._joined: Deferred[Any] | None = None
        self._awaiting: dict[str, Deferred[None]] = {}
        self._early: dict[str, int] = {}  # answers that came before their ACK: status
        self._answered: set[str] = set()
        self.acked: list[str] = []
        self.answered_again = 0

    def start(self) -> Deferred[Any]:
        """Join the group (once); fires when joined."""
        if self._joined is None:
            self._session.add_listener(self._on_reply, self._group)
            self._joined = self._session.acquire(self._group)
        return self._joined

    def call(self, func: str, args: Any) -> Deferred[None]:
        """Enqueue ``func(args)`` answering the group; fires with its answer (fails if
        it is not held, or ends in an error)."""
        done: Deferred[None] = Deferred()

        def held(task_id: str) -> None:
            self.acked.append(task_id)
            status = self._early.pop(task_id, None)
            if status is None:
                self._awaiting[task_id] = done
            else:
                self._answer(task_id, done, status)

        self._sender.enqueue(func, args, reply_to=self._group).addCallbacks(held, done.errback)
        return done

    def _on_reply(self, frame: object) -> None:
        if type(frame) is not RegularMessage or frame.mess_type != _RESULT:
            return
        try:
            entries = decode(frame.mess_type, frame.data).entries
        except MalformedMessage:
            return
        for e in entries:
            if not e.final:
                continue
            if e.task_id in self._answered:
                self.answered_again += 1
                continue
            done = self._awaiting.pop(e.task_id, None)
            if done is None:
                self._early[e.task_id] = e.status  # its ACK is still on its way
            else:
                self._answer(e.task_id, done, e.status)

    def _answer(self, task_id: str, done: Deferred[None], status: int) -> None:
        self._answered.add(task_id)
        if status == Status.OK:
            done.callback(None)
        else:
            done.errback(RuntimeError(f"detached task {task_id} ended with status {status}"))
