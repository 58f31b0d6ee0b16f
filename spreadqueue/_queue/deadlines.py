"""Deadlines of many items with one reactor timer: a heap, entries dropped lazily.

Senders time out tasks and workers stop handlers at their deadlines. Both have
thousands of items in flight and most finish well before their deadline, so a
DelayedCall per item would be mostly scheduling and cancelling. :class:`Deadlines`
keeps one heap and one timer; an item that finished is skipped when it comes up, and
the heap is rebuilt when such stale entries outnumber the live ones.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Final, Generic, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Deadlines"]

T = TypeVar("T")

#: Stale entries tolerated beyond twice the live ones before the heap is rebuilt.
_SLACK: Final = 1024


class Deadlines(Generic[T]):
    """Calls ``on_due(item)`` at each item's deadline, unless ``is_live(item)`` is False
    by then.

    The owner calls :meth:`add` for each item with a deadline, and :meth:`done` once when
    such an item finishes, for whatever reason (its deadline included): the count of
    live items decides when the heap is rebuilt.
    """

    __slots__ = ("_heap", "_is_live", "_live", "_on_due", "_reactor", "_seq", "_timer")

    def __init__(
        self,
        reactor: IReactorTime,
        on_due: Callable[[T], object],
        is_live: Callable[[T], bool],
    ) -> None:
        self._reactor = reactor
        self._on_due = on_due
        self._is_live = is_live
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()  # equal deadlines come up in the order added
        self._live = 0
        self._timer: IDelayedCall | None = None

    def __len__(self) -> int:
        """Items added and not yet done or due."""
        return self._live

    @property
    def armed(self) -> bool:
        """True while the timer is set (some item may come due)."""
        return self._timer is not None

    def add(self, when: float, item: T) -> None:
        """Call ``on_due(item)`` at ``when`` (reactor seconds)."""
        heapq.heappush(self._heap, (when, next(self._seq), item))
        self._live += 1
        timer = self._timer
        if timer is None or timer.getTime() > when:  # (most deadlines come later)
            self._arm()

    def done(self) -> None:
        """An item added earlier has finished (``is_live`` says so already)."""
        self._live -= 1
        heap = self._heap
        is_live = self._is_live
        # Items mostly finish in the order of their deadlines (one timeout for all
        # calls): drop the finished ones at the top now. Kept until the next rebuild,
        # they would hold their tasks (and Deferreds) alive long enough for the
        # garbage collector to promote and walk them again and again.
        while heap and not is_live(heap[0][2]):
            heapq.heappop(heap)
        if len(heap) > 2 * self._live + _SLACK:
            self._heap = [entry for entry in heap if is_live(entry[2])]
            heapq.heapify(self._heap)

    def clear(self) -> None:
        """Forget every item and stop the timer."""
        self._heap = []
        self._live = 0
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _arm(self) -> None:
        heap = self._heap
        if not heap:
            return
        first = heap[0][0]
        timer = self._timer
        if timer is not None:
            if timer.getTime() <= first:
                return
            timer.cancel()
        delay = max(0.0, first - self._reactor.seconds())
        self._timer = self._reactor.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self._reactor.seconds()
        # (re-read self._heap: on_due may finish items, and done() may rebuild it)
        while self._heap and self._heap[0][0] <= now:
            item = heapq.heappop(self._heap)[2]
            if self._is_live(item):
                self._on_due(item)
        self._arm()
