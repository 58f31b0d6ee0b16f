"""Turn: one flush per batch of delivered frames, or per reactor turn outside one."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.task import Clock

from spreadqueue._queue.outbox import Turn


class BatchingSession:
    """Just the after_delivery part of a SpreadSession."""

    def __init__(self) -> None:
        self.delivering = False
        self.deferred: list[Callable[[], object]] = []

    def after_delivery(self, fn: Callable[[], object]) -> bool:
        if self.delivering:
            self.deferred.append(fn)
        return self.delivering

    def end_delivery(self) -> None:
        self.delivering = False
        for fn in self.deferred:
            fn()
        self.deferred = []


def test_during_a_delivery_it_runs_at_its_end_once_and_takes_no_turn() -> None:
    clock, session, runs = Clock(), BatchingSession(), []
    turn = Turn(clock, lambda: runs.append(1), session)
    session.delivering = True
    turn.schedule()
    turn.schedule()
    assert len(session.deferred) == 1 and clock.getDelayedCalls() == []
    session.end_delivery()
    assert runs == [1]
    turn.schedule()  # no delivery now: the next turn
    assert runs == [1] and len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert runs == [1, 1]


def test_cancel_holds_in_both_modes() -> None:
    clock, session, runs = Clock(), BatchingSession(), []
    turn = Turn(clock, lambda: runs.append(1), session)
    session.delivering = True
    turn.schedule()
    turn.cancel()
    session.end_delivery()
    turn.schedule()
    turn.cancel()
    clock.advance(0)
    assert runs == [] and clock.getDelayedCalls() == []
    turn.schedule()  # usable again after a cancel
    clock.advance(0)
    assert runs == [1]


def test_without_a_session_it_goes_per_turn() -> None:
    clock, runs = Clock(), []
    turn = Turn(clock, lambda: runs.append(1))
    turn.schedule()
    assert runs == [] and len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert runs == [1]
    session = BatchingSession()
    turn.session = session  # type: ignore[assignment]
    session.delivering = True
    turn.schedule()
    assert clock.getDelayedCalls() == []
    session.end_delivery()
    assert runs == [1, 1]
