"""The queue's components on spreadqueue.testing.FakeSpreadNetwork (the embedded
daemon's own core, in-process sessions, a task.Clock), for the queue's unit tests:
:class:`Net` starts managers, workers and senders on one network; the ``net`` fixture
(in conftest.py) checks that nothing was logged as a failure meanwhile."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from spreadqueue._queue.manager import ManagerService
from spreadqueue._queue.names import queue_groups
from spreadqueue._queue.sender import Sender
from spreadqueue._queue.worker import Worker
from spreadqueue._spread.session import SpreadSession
from spreadqueue.testing import FakeSpreadNetwork

Q = "q"
G = queue_groups(Q)


def fired(d: Deferred[Any]) -> Any:
    """The result of a Deferred that must have fired (raising its failure)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def failure_of(d: Deferred[Any], kind: type[BaseException]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    assert isinstance(out[0], Failure), f"expected {kind.__name__}, got {out[0]!r}"
    assert out[0].check(kind), out[0]
    return out[0].value


def pending(d: Deferred[Any]) -> bool:
    """True if ``d`` has not fired (its result, if any, is left in place)."""
    out: list[Any] = []

    def look(result: Any) -> Any:
        out.append(result)
        return result

    d.addBoth(look)
    return not out


class Net:
    """One fake Spread network and helpers to start queue components on it."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.network = FakeSpreadNetwork(self.clock)
        self.components: list[Any] = []

    def session(self, name: str | None = None) -> SpreadSession:
        return self.network.session(name or "")

    def pump(self) -> None:
        self.network.flush()

    def crash(self, session: SpreadSession) -> None:
        """End ``session`` as a killed process would (no goodbye)."""
        self.network.crash(session)

    def advance(self, seconds: float, step: float = 0.05) -> None:
        """Let ``seconds`` pass in small steps, delivering everything as we go."""
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end - 1e-9:
            self.clock.advance(min(step, end - self.clock.seconds()))
            self.pump()

    def messages_sent(self) -> int:
        """Spread messages every component started here has sent."""
        return sum(c.stats["messages_sent"] for c in self.components)

    def manager(self, session: SpreadSession | None = None, **options: Any) -> ManagerService:
        m = ManagerService(self.clock, session or self.session(), Q, **options)
        self.components.append(m)
        m.startService()
        self.pump()
        return m

    def worker(
        self,
        handlers: dict[str, Callable[..., Any]] | None = None,
        session: SpreadSession | None = None,
        *,
        declares: bool = True,
        **options: Any,
    ) -> Worker:
        """A started worker; ``declares=False``: one that registers without saying which
        functions it serves (as workers before routing did): it gets every function."""
        w = Worker(self.clock, session or self.session(), Q, handlers, **options)
        if not declares:
            w._declared = None
        self.components.append(w)
        w.start()
        self.pump()
        return w

    def sender(self, session: SpreadSession | None = None, **options: Any) -> Sender:
        s = Sender(self.clock, session or self.session(), Q, **options)
        self.components.append(s)
        s.start()
        self.pump()
        return s


def checked_net() -> Iterator[Net]:
    """A fresh fake network; at the end, no listener raised (the session logs that as a
    failure) and no Deferred failure was left unhandled (Twisted logs those when they
    are garbage collected)."""
    failures: list[Any] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            failures.append(event)

    globalLogPublisher.addObserver(observe)
    n = Net()
    try:
        yield n
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert failures == [], [formatEvent(e) for e in failures]


def echo(args: Any) -> Any:
    """A handler that answers its arguments."""
    return args


class Runs:
    """A handler that records every run of every task (by its argument), and raises
    ValueError for the arguments in ``fail``."""

    def __init__(self, fail: set[Any] | None = None) -> None:
        self.count: Counter[Any] = Counter()
        self.fail = fail or set()

    def __call__(self, args: Any) -> Any:
        self.count[args] += 1
        if args in self.fail:
            raise ValueError(f"no {args}")
        return args
