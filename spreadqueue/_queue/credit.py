"""The active manager's workers with credit, by the functions they serve.

Workers that declared the same functions in their REGISTER (or none: they serve
every function) form one :class:`Crew`. A crew files its workers that have a free
slot and those that have prefetch credit only, each least recently used first. Every
filing stamps the worker (``Worker.used``, increasing), so that across crews the least
recently used worker is the one with the lowest stamp: a worker that serves everything
and one that serves only ``f`` compete for ``f``'s tasks by least recent use.

A task of function ``f`` may go to :meth:`Credit.crews_for` ``f``: the crew that
serves everything and the crews that declared ``f``. The common case is one crew
(every worker declares the same functions, or none), which the dispatcher reads as
two plain dicts.

Like :mod:`.ready`, this is the active manager's own index, never replicated: it is
built from the replicated worker records (``Worker.functions``) when a manager becomes
active, and iterated only in insertion order (never in hash order).
"""

from __future__ import annotations

from typing import Final

from .records import Worker, WorkerKey

__all__ = ["Credit", "Crew"]

#: Functions whose crews are remembered at once; past this the memory starts over.
_CREWS_CACHE_MAX: Final = 4096


class Crew:
    """The workers that declared ``functions`` (None: every function)."""

    __slots__ = ("extra", "free", "functions", "size")

    def __init__(self, functions: frozenset[str] | None) -> None:
        self.functions = functions
        #: workers with a free slot, least recently used first
        self.free: dict[WorkerKey, Worker] = {}
        #: workers with prefetch credit only, least recently used first
        self.extra: dict[WorkerKey, Worker] = {}
        #: registered workers in this crew (filed or not)
        self.size = 0

    def serves(self, func: str) -> bool:
        return self.functions is None or func in self.functions


class Credit:
    """Every crew, and how many workers have credit (are filed) in all."""

    __slots__ = ("_for", "crews", "gen", "open", "stamp")

    def __init__(self) -> None:
        self.crews: dict[frozenset[str] | None, Crew] = {}
        #: changes whenever a crew comes or goes (the dispatcher's notes expire)
        self.gen = 0
        #: workers filed (with a free slot or prefetch credit)
        self.open = 0
        #: the last stamp given (``Worker.used``)
        self.stamp = 0
        self._for: dict[str, tuple[Crew, ...]] = {}

    def clear(self, workers: dict[WorkerKey, Worker]) -> None:
        """Forget everything (the manager is no longer active)."""
        self.crews.clear()
        self._for.clear()
        self.gen += 1
        self.open = 0
        for w in workers.values():
            w.crew = None

    def join(self, w: Worker) -> Crew:
        """Put ``w`` in the crew of its functions (unfiled)."""
        crew = self.crews.get(w.functions)
        if crew is None:
            crew = self.crews[w.functions] = Crew(w.functions)
            self.gen += 1
            self._for.clear()
        crew.size += 1
        w.crew = crew
        return crew

    def leave(self, w: Worker) -> None:
        """Take ``w`` out of its crew (the crew goes when it is empty)."""
        crew = w.crew
        if crew is None:
            return
        w.crew = None
        key = w.key
        if crew.free.pop(key, None) is not None or crew.extra.pop(key, None) is not None:
            self.open -= 1
        crew.size -= 1
        if not crew.size:
            del self.crews[crew.functions]
            self.gen += 1
            self._for.clear()

    def crews_for(self, func: str) -> tuple[Crew, ...]:
        """The crews that serve ``func``, in the order they came."""
        crews = self._for.get(func)
        if crews is None:
            crews = tuple(c for c in self.crews.values() if c.serves(func))
            if len(self._for) >= _CREWS_CACHE_MAX:
                self._for.clear()
            self._for[func] = crews
        return crews

    def candidates(self, crews: tuple[Crew, ...]) -> list[Worker]:
        """The workers of ``crews`` a task may go to now, least recently used first:
        those with a free slot, or, when none has one, those with prefetch credit."""
        out = [w for c in crews for w in c.free.values()]
        if not out:
            out = [w for c in crews for w in c.extra.values()]
        out.sort(key=_used)
        return out

    def least_recent(self, crews: tuple[Crew, ...]) -> dict[WorkerKey, Worker] | None:
        """The pool (a crew's free or prefetch dict) whose first worker is the least
        recently used one a task may go to now; None when no worker of ``crews`` has
        credit."""
        return _least_recent([c.free for c in crews]) or _least_recent([c.extra for c in crews])


def _least_recent(pools: list[dict[WorkerKey, Worker]]) -> dict[WorkerKey, Worker] | None:
    """Of ``pools`` (each least recently used first), the one whose first worker is the
    least recently used; None when they are all empty."""
    best: dict[WorkerKey, Worker] | None = None
    used = 0
    for pool in pools:
        if pool:
            first = next(iter(pool.values())).used
            if best is None or first < used:
                best, used = pool, first
    return best


def _used(w: Worker) -> int:
    return w.used
