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
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from .._queue.sender import Sender

__all__ = ["RpcLoad"]


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
