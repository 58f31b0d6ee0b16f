"""The active manager's dispatch order: which queued task goes next.

Only the active manager keeps this index; standbys keep the records alone
(:mod:`.records`) and build it when they take over. It never decides *whether* a task
exists, only in which order the queued ones are tried, so it may hold stale entries
(tasks cancelled, expired or adopted since they were added): the dispatcher skips them.

The order (docs/protocol.md, "Dispatching"):

- **Rank.** A task of priority ``p`` that became ready at time ``s`` (when the manager
  queued it, or its start time if later) ranks as ``s - p * aging``: lower goes first,
  ties by queue key (arrival; tasks put back at the head have the lowest keys). So
  tasks of one level run FIFO, higher levels first, and each level is worth ``aging``
  seconds of waiting: a task is overtaken only by tasks ``k`` levels higher that came
  less than ``k * aging`` seconds after it, which keeps level 0 from starving under a
  flood of level 9. The rank does not change while the task waits: nothing needs
  re-sorting as time passes.
- **One line per function.** Each function's ready tasks wait in a :class:`Line`: a
  FIFO per priority level (the common case, one level, is a plain deque) and a heap for
  tasks that come back out of key order. The dispatcher takes the line whose first task
  ranks best. A line whose function no worker with credit serves is *parked*: it waits
  aside, costing nothing, so that it never blocks the tasks of other functions behind
  it (no head-of-line blocking), and comes back when such a worker has credit again
  (:meth:`Ready.unpark`).
- Detached tasks met while the manager has no quorum are set aside until it has one
  again (docs/protocol.md, section 10.6); tasks with a start time still ahead wait in
  a heap until it comes.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

from .messages import MAX_PRIORITY
from .records import Task

__all__ = ["DEFAULT_AGING", "Line", "Ready", "rank"]

#: Seconds of waiting one priority level is worth (docs/protocol.md, "Priorities").
DEFAULT_AGING: Final = 10.0
_LEVELS: Final = MAX_PRIORITY + 1
#: A parked line is cleaned of stale entries once it has this many and they are half
#: of it (tasks of a function nobody serves that timed out or were cancelled).
_STALE_MIN: Final = 64


def _key(t: Task) -> int:
    return t.key


def rank(t: Task, aging: float) -> float:
    """When ``t`` counts as queued, for the order: its priority makes it that much older."""
    since, start = t.queued_at, t.not_before
    if start is not None and start > since:
        since = start  # a delayed task waits from its start time on
    return since - t.priority * aging


class Line:
    """The ready tasks of one function, best first (possibly with stale entries)."""

    __slots__ = ("crews", "func", "gen", "late", "levels", "mask", "parked", "stale", "tops")

    def __init__(self, func: str) -> None:
        self.func = func
        #: one FIFO per priority level, in key order (None: never used)
        self.levels: list[deque[Task] | None] = [None] * _LEVELS
        #: bit ``p`` set: ``levels[p]`` holds tasks
        self.mask = 0
        #: (rank, key, task) of a level's first task as last seen (valid while that
        #: task is still first): levels are compared without ranking each head again
        self.tops: list[tuple[float, int, Task] | None] = [None] * _LEVELS
        #: tasks that came back out of key order: a heap by (rank, key)
        self.late: list[tuple[float, int, Task]] = []
        self.parked = False
        #: entries known to be stale (counted while parked only)
        self.stale = 0
        #: the dispatcher's note of the crews that serve this function, and of the
        #: generation of crews it was made for (see :class:`.credit.Credit`)
        self.crews: tuple[Any, ...] = ()
        self.gen = -1

    def __len__(self) -> int:
        return sum(len(d) for d in self.levels if d) + len(self.late)

    def empty(self) -> bool:
        return not (self.mask or self.late)

    def level(self, p: int) -> deque[Task]:
        """The FIFO of priority level ``p``, counted as holding tasks (``t`` goes in)."""
        d = self.levels[p]
        if d is None:
            d = self.levels[p] = deque()
        self.mask |= 1 << p
        return d

    def put_back(self, t: Task, aging: float) -> None:
        """``t`` in its rank's place, wherever that is."""
        heapq.heappush(self.late, (rank(t, aging), t.key, t))

    def _best_level(self, aging: float) -> tuple[tuple[float, int, Task] | None, int]:
        """(rank, key, task) of the best first task of the levels, and its level (-1:
        none)."""
        best: tuple[float, int, Task] | None = None
        level = -1
        mask, p, levels, tops = self.mask, 0, self.levels, self.tops
        while mask:
            if mask & 1:
                t = levels[p][0]  # type: ignore[index]
                top = tops[p]
                if top is None or top[2] is not t:
                    top = tops[p] = (rank(t, aging), t.key, t)
                if best is None or top[0] < best[0] or (top[0] == best[0] and top[1] < best[1]):
                    best, level = top, p
            mask >>= 1
            p += 1
        return best, level

    def head(self, aging: float) -> tuple[float, int, Task] | None:
        """(rank, key, task) of the task :meth:`pop` would give, None when empty."""
        late = self.late
        if self.mask == 1 and not late:
            t = self.levels[0][0]  # type: ignore[index]
            top = self.tops[0]
            if top is None or top[2] is not t:
                top = self.tops[0] = (rank(t, aging), t.key, t)
            return top
        best, _ = self._best_level(aging)
        if late and (best is None or (late[0][0], late[0][1]) < (best[0], best[1])):
            return late[0]
        return best

    def pop(self, aging: float) -> Task | None:
        """The best task (lowest rank, then key), taken out; None when empty."""
        if self.mask == 1 and not self.late:
            # The common case: every task of this line has priority 0, in key order.
            d: deque[Task] = self.levels[0]  # type: ignore[assignment]
            t = d.popleft()
            if not d:
                self.mask = 0
                self.tops[0] = None
            return t
        best, level = self._best_level(aging)
        late = self.late
        if late and (best is None or (late[0][0], late[0][1]) < (best[0], best[1])):
            return heapq.heappop(late)[2]
        if level < 0:
            return None
        d = self.levels[level]  # type: ignore[assignment]
        t = d.popleft()
        if not d:
            self.mask &= ~(1 << level)
            self.tops[level] = None  # (holds no task that left)
        return t

    def compact(self, alive: Callable[[Task], bool]) -> None:
        """Drop the entries of tasks that are no longer queued."""
        for p, d in enumerate(self.levels):
            if d:
                kept = deque(t for t in d if alive(t))
                self.levels[p] = kept
                if not kept:
                    self.mask &= ~(1 << p)
        self.late = [item for item in self.late if alive(item[2])]
        heapq.heapify(self.late)
        self.tops = [None] * _LEVELS
        self.stale = 0


class Ready:
    """Queued tasks in dispatch order, by function (possibly with stale entries).

    ``order`` holds the lines the dispatcher tries (not parked); ``parked`` the others,
    by function.
    """

    __slots__ = ("aging", "delayed", "held", "lines", "order", "parked")

    def __init__(self, aging: float = DEFAULT_AGING) -> None:
        if not aging > 0:
            raise ValueError("priority aging must be a positive number of seconds")
        self.aging = aging
        #: every line that holds tasks (and the last one, empty), by function
        self.lines: dict[str, Line] = {}
        #: the lines to try, in no particular order (the best head wins)
        self.order: list[Line] = []
        #: lines no worker with credit serves now, by function
        self.parked: dict[str, Line] = {}
        #: detached tasks met while the manager had no quorum, in the order met
        self.held: list[Task] = []
        # tasks whose start time is still ahead: a heap by that time
        self.delayed: list[tuple[float, int, Task]] = []

    def __len__(self) -> int:
        """Entries (stale ones included) that :meth:`pop` may give, held ones too."""
        return sum(len(line) for line in self.lines.values()) + len(self.held)

    def clear(self) -> None:
        self.lines.clear()
        self.order.clear()
        self.parked.clear()
        self.held.clear()
        self.delayed.clear()

    def rebuild(self, tasks: Iterable[Task]) -> None:
        """Start again from ``tasks`` (the queued ones, any order)."""
        self.clear()
        for t in sorted(tasks, key=_key):
            self.add(t)

    def _line(self, func: str) -> Line:
        line = self.lines.get(func)
        if line is None:
            line = self.lines[func] = Line(func)
            self.order.append(line)
        return line

    def add(self, t: Task) -> None:
        """A task at the tail of its line and level (its key is the highest so far)."""
        line = self.lines.get(t.func)
        if line is None:
            line = self._line(t.func)
        p = t.priority
        if line.mask >> p & 1:
            line.levels[p].append(t)  # type: ignore[union-attr]  # (it holds tasks)
        else:
            line.level(p).append(t)

    def add_head(self, t: Task) -> None:
        """A task at the head (its key is the lowest so far)."""
        self._line(t.func).level(t.priority).appendleft(t)

    def put_back(self, t: Task) -> None:
        """A task that was taken and must be tried again, in its rank's place."""
        self._line(t.func).put_back(t, self.aging)

    def hold(self, t: Task) -> None:
        """Set a detached task aside until the manager has a quorum again."""
        self.held.append(t)

    def unhold(self) -> None:
        """The manager has a quorum again: the detached tasks set aside come back."""
        held, self.held = self.held, []
        for t in held:
            self.put_back(t)

    def delay(self, t: Task, until: float) -> None:
        """Keep ``t`` out of the order until ``until`` (its start time)."""
        heapq.heappush(self.delayed, (until, id(t), t))

    def release_due(self, now: float) -> int:
        """Put the delayed tasks whose time has come back in order; how many."""
        delayed, n = self.delayed, 0
        while delayed and delayed[0][0] <= now:
            _, _, t = heapq.heappop(delayed)
            self.put_back(t)
            n += 1
        return n

    def waiting(self) -> int:
        """Tasks whose start time is still ahead (stale entries included)."""
        return len(self.delayed)

    # ------------------------------------------------------------------ lines

    def best(self) -> Line | None:
        """Of the lines to try, the one whose first task ranks best (None: they are
        all empty). Empty lines are dropped on the way, as long as another is left."""
        aging = self.aging
        top: Line | None = None
        r, k = 0.0, 0  # the best head's rank and key
        empty = False
        for line in self.order:
            h = line.head(aging)
            if h is None:
                empty = True
            elif top is None or h[0] < r or (h[0] == r and h[1] < k):
                top, r, k = line, h[0], h[1]
        if empty and len(self.order) > 1:
            lines = self.lines
            kept = []
            for line in self.order:
                if line.empty():
                    del lines[line.func]
                else:
                    kept.append(line)
            self.order[:] = kept
        return top

    def park(self, line: Line) -> None:
        """No worker with credit serves ``line``'s function now: set it aside."""
        self.order.remove(line)
        line.parked = True
        line.stale = 0
        self.parked[line.func] = line

    def unpark(self, functions: frozenset[str] | None) -> None:
        """A worker serving ``functions`` (None: every function) has credit: their
        parked lines are tried again."""
        parked = self.parked
        if functions is None:
            back = list(parked.values())
            parked.clear()
        else:
            back = [parked.pop(f) for f in sorted(parked.keys() & functions)]
        for line in back:
            line.parked = False
            self.order.append(line)

    def dropped(self, t: Task, alive: Callable[[Task], bool]) -> None:
        """Queued task ``t`` ended without being dispatched. A parked line is never
        read, so its stale entries are cleaned here, now and then (``alive`` tells the
        tasks still queued)."""
        line = self.parked.get(t.func)
        if line is not None:
            line.stale += 1
            if line.stale >= _STALE_MIN and 2 * line.stale >= len(line):
                line.compact(alive)
