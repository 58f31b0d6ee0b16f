"""The active manager's dispatch order: which queued task goes next.

Only the active manager keeps this index; standbys keep the records alone
(:mod:`.records`) and build it when they take over. It never decides *whether* a task
exists, only in which order the queued ones are tried, so it may hold stale entries
(tasks cancelled, expired or adopted since they were added): the dispatcher skips them.

Calls someone waits for and detached tasks are kept apart, so that a manager without a
quorum can skip every detached task at once (docs/protocol.md, section 10.6); within
each, tasks are tried in the order of their keys. Tasks with a start time still ahead
wait in a heap until it comes.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable

from .records import Task

__all__ = ["Ready"]


def _key(t: Task) -> int:
    return t.key


class Ready:
    """Queued tasks in dispatch order (possibly with stale entries)."""

    __slots__ = ("_delayed", "_late", "calls", "detached")

    def __init__(self) -> None:
        #: calls someone waits for, in key order
        self.calls: deque[Task] = deque()
        #: detached tasks, in key order
        self.detached: deque[Task] = deque()
        # tasks that became due or came back out of key order: a heap by key
        self._late: list[tuple[int, int, Task]] = []
        # tasks whose start time is still ahead: a heap by that time
        self._delayed: list[tuple[float, int, Task]] = []

    def __len__(self) -> int:
        return len(self.calls) + len(self.detached) + len(self._late)

    def clear(self) -> None:
        self.calls.clear()
        self.detached.clear()
        self._late.clear()
        self._delayed.clear()

    def rebuild(self, tasks: Iterable[Task]) -> None:
        """Start again from ``tasks`` (the queued ones, any order)."""
        self.clear()
        for t in sorted(tasks, key=_key):
            self.add(t)

    def add(self, t: Task) -> None:
        """A task at the tail (its key is the highest so far)."""
        (self.detached if t.detached else self.calls).append(t)

    def add_head(self, t: Task) -> None:
        """A task at the head (its key is the lowest so far)."""
        (self.detached if t.detached else self.calls).appendleft(t)

    def put_back(self, t: Task) -> None:
        """A task that was taken and must be tried again, in its key's place."""
        heapq.heappush(self._late, (t.key, id(t), t))

    def delay(self, t: Task, until: float) -> None:
        """Keep ``t`` out of the order until ``until`` (its start time)."""
        heapq.heappush(self._delayed, (until, id(t), t))

    def next_delayed(self) -> float | None:
        """When the next delayed task is due (None: none waits)."""
        return self._delayed[0][0] if self._delayed else None

    def release_due(self, now: float) -> int:
        """Put the delayed tasks whose time has come back in order; how many."""
        delayed, n = self._delayed, 0
        while delayed and delayed[0][0] <= now:
            _, _, t = heapq.heappop(delayed)
            self.put_back(t)
            n += 1
        return n

    def pop(self, detached: bool) -> Task | None:
        """The next task to try (lowest key first), or None; detached ones only if
        ``detached``."""
        calls, late = self.calls, self._late
        best: deque[Task] | None = calls if calls else None
        if detached and self.detached:
            d = self.detached
            if best is None or d[0].key < best[0].key:
                best = d
        if late:
            head = late[0][2]
            if (detached or not head.detached) and (best is None or head.key < best[0].key):
                return heapq.heappop(late)[2]
            if best is None and not detached:
                # Only held-back detached tasks wait in the heap's head: look past them.
                for i, (_, _, t) in enumerate(late):
                    if not t.detached:
                        late[i] = late[-1]
                        late.pop()
                        heapq.heapify(late)
                        return t
        return None if best is None else best.popleft()

    def waiting(self) -> int:
        """Tasks whose start time is still ahead (stale entries included)."""
        return len(self._delayed)
