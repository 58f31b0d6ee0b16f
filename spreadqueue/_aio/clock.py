"""An asyncio loop as the queue's reactor: time, timers and calls from threads.

The queue's objects take a reactor for three things only: ``seconds()``,
``callLater()`` (timers they cancel, check and re-arm) and, for the worker's thread
pool, ``callFromThread()``. :class:`LoopClock` provides them over an asyncio loop
(plain asyncio or uvloop), so the same objects run there without a Twisted reactor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from zope.interface import implementer

__all__ = ["LoopClock"]


@implementer(IDelayedCall)
class _Timer:
    """A ``callLater`` call: an asyncio TimerHandle with Twisted's IDelayedCall face."""

    __slots__ = ("_active", "_args", "_cancelled", "_fn", "_handle", "_kwargs", "_time")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        when: float,
        soon: bool,
        fn: Callable[..., object],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self._time = when
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._active = True
        self._cancelled = False
        # callLater(0) (the queue's "at the next turn") needs no timer: the next
        # iteration of the loop runs it all the same, without a heap push and pop.
        self._handle: asyncio.Handle = (
            loop.call_soon(self._run) if soon else loop.call_at(when, self._run)
        )

    def _run(self) -> None:
        self._active = False
        self._fn(*self._args, **self._kwargs)

    def getTime(self) -> float:
        """When it runs (loop time, seconds)."""
        return self._time

    def cancel(self) -> None:
        """Do not run it (raises, as Twisted does, if it ran or was cancelled)."""
        if not self._active:
            raise AlreadyCancelled() if self._cancelled else AlreadyCalled()
        self._active = False
        self._cancelled = True
        self._handle.cancel()

    def delay(self, secondsLater: float) -> None:
        raise NotImplementedError("spreadqueue never delays a call")

    def reset(self, secondsFromNow: float) -> None:
        raise NotImplementedError("spreadqueue never resets a call")

    def active(self) -> bool:
        """True until it runs or is cancelled."""
        return self._active


@implementer(IReactorTime, IReactorFromThreads)
class LoopClock:
    """``loop`` (a running asyncio loop) as an IReactorTime and IReactorFromThreads.

    ``seconds()`` is the loop's clock (monotonic), ``callLater`` a loop timer,
    ``callFromThread`` ``call_soon_threadsafe``. ``thread`` is the loop's thread (the
    one that made the clock): work from other threads must come through
    ``callFromThread``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, thread: int) -> None:
        self.loop = loop
        self.thread = thread
        self._time = loop.time

    def seconds(self) -> float:
        """The loop's time (monotonic seconds)."""
        return self._time()

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: Any, **kw: Any
    ) -> _Timer:
        """Run ``callable(*args, **kw)`` ``delay`` seconds from now, on the loop."""
        soon = delay <= 0
        return _Timer(self.loop, self._time() + max(0.0, delay), soon, callable, args, kw)

    def getDelayedCalls(self) -> list[IDelayedCall]:
        """Not tracked: the loop holds the timers."""
        return []

    def callFromThread(self, callable: Callable[..., object], *args: Any, **kw: Any) -> None:
        """Run ``callable(*args, **kw)`` on the loop, from any thread."""
        if kw:
            self.loop.call_soon_threadsafe(lambda: callable(*args, **kw))
        else:
            self.loop.call_soon_threadsafe(callable, *args)
