"""DeliveryBatch: work put off to the end of a batch of deliveries, in stages."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from spreadqueue._spread.batch import DeliveryBatch


def test_work_runs_at_the_end_of_the_outermost_bracket() -> None:
    batch, log = DeliveryBatch(), []
    assert not batch.defer(lambda: log.append("never"))  # outside a batch: refused
    with batch:
        with batch:
            assert batch.defer(lambda: log.append("ran"))
        assert log == []
    assert log == ["ran"] and batch.depth == 0


def test_lower_stages_run_first_and_again_after_later_stages_add_work() -> None:
    batch, log = DeliveryBatch(stages=2), []

    def late() -> None:
        log.append("late")
        batch.defer(lambda: log.append("early again"), 0)

    with batch:
        batch.defer(late, 1)
        batch.defer(lambda: log.append("early"), 0)
    assert log == ["early", "late", "early again"]


def test_work_put_off_by_work_runs_in_the_same_end() -> None:
    batch, log = DeliveryBatch(), []

    def first() -> None:
        log.append("first")
        assert batch.defer(lambda: log.append("second"))

    with batch:
        batch.defer(first)
    assert log == ["first", "second"]


def test_failing_work_is_logged_and_the_rest_still_runs() -> None:
    batch, log = DeliveryBatch(), []

    def broken() -> None:
        raise RuntimeError("boom")

    with capturedLogs() as events:
        with batch:
            batch.defer(broken)
            batch.defer(lambda: log.append("ran"))
    assert log == ["ran"] and batch.depth == 0
    assert [e["log_failure"].value.args for e in events if "log_failure" in e] == [("boom",)]


def test_soon_runs_in_the_current_batch_or_on_the_next_turn() -> None:
    clock = Clock()
    batch, log = DeliveryBatch(reactor=clock), []
    with batch:
        batch.soon(lambda: log.append("in the batch"))
    assert log == ["in the batch"] and clock.getDelayedCalls() == []
    batch.soon(lambda: log.append("a"))
    batch.soon(lambda: log.append("b"))  # one turn for both
    assert log == ["in the batch"] and len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert log == ["in the batch", "a", "b"]


def test_a_batch_before_the_next_turn_takes_the_work_and_the_call_is_dropped() -> None:
    clock = Clock()
    batch, log = DeliveryBatch(reactor=clock), []
    batch.soon(lambda: log.append("waiting"))
    with batch:
        pass
    assert log == ["waiting"] and clock.getDelayedCalls() == []


def test_soon_outside_a_batch_needs_a_reactor() -> None:
    with pytest.raises(RuntimeError):
        DeliveryBatch().soon(lambda: None)
