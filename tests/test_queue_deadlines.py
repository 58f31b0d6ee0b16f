"""Deadlines: one timer for the deadlines of many items, stale entries dropped."""

from __future__ import annotations

from twisted.internet.task import Clock

from spreadqueue._queue.deadlines import Deadlines


class Item:
    def __init__(self, name: str) -> None:
        self.name = name
        self.finished = False


def make() -> tuple[Clock, list[str], Deadlines[Item]]:
    clock, due = Clock(), []
    deadlines: Deadlines[Item] = Deadlines(
        clock, lambda item: due.append(item.name), lambda item: not item.finished
    )
    return clock, due, deadlines


def test_items_come_due_in_deadline_order_with_one_timer() -> None:
    clock, due, deadlines = make()
    for name, when in (("c", 3.0), ("a", 1.0), ("b", 2.0), ("a2", 1.0)):
        deadlines.add(when, Item(name))
    assert len(clock.getDelayedCalls()) == 1 and deadlines.armed
    clock.advance(1.0)
    assert due == ["a", "a2"]  # equal deadlines in the order added
    clock.advance(5.0)
    assert due == ["a", "a2", "b", "c"] and not deadlines.armed


def test_finished_items_never_come_due() -> None:
    clock, due, deadlines = make()
    early, late = Item("early"), Item("late")
    deadlines.add(1.0, early)
    deadlines.add(2.0, late)
    early.finished = True
    deadlines.done()
    clock.advance(3.0)
    assert due == ["late"]


def test_an_earlier_deadline_rearms_the_timer() -> None:
    clock, due, deadlines = make()
    deadlines.add(10.0, Item("late"))
    deadlines.add(1.0, Item("soon"))
    assert [c.getTime() for c in clock.getDelayedCalls()] == [1.0]
    clock.advance(1.0)
    assert due == ["soon"] and [c.getTime() for c in clock.getDelayedCalls()] == [10.0]


def test_the_heap_is_rebuilt_when_stale_entries_pile_up() -> None:
    clock, due, deadlines = make()
    items = [Item(str(i)) for i in range(5000)]
    for item in items:
        deadlines.add(100.0, item)
    for item in items[:-1]:
        item.finished = True
        deadlines.done()
    assert len(deadlines) == 1 and len(deadlines._heap) <= 2 * 1 + 1024
    clock.advance(100.0)
    assert due == ["4999"]


def test_clear_forgets_everything_and_stops_the_timer() -> None:
    clock, due, deadlines = make()
    deadlines.add(1.0, Item("x"))
    deadlines.clear()
    assert clock.getDelayedCalls() == [] and len(deadlines) == 0
    clock.advance(2.0)
    assert due == []


def test_items_finished_in_deadline_order_leave_the_heap_at_once() -> None:
    """The usual case (one timeout for every call): a finished item at the top is
    dropped when it is done, so the heap holds no finished item for long (nor what
    it references)."""
    clock, due, deadlines = make()
    items = [Item(str(i)) for i in range(10)]
    for i, item in enumerate(items):
        deadlines.add(100.0 + i, item)
    for item in items[:6]:
        item.finished = True
        deadlines.done()
    assert [entry[2] for entry in sorted(deadlines._heap)] == items[6:]
    # one finished out of order stays until the items before it are done
    items[8].finished = True
    deadlines.done()
    assert len(deadlines._heap) == 4 and len(deadlines) == 3
    items[6].finished = True
    items[7].finished = True
    deadlines.done()
    deadlines.done()
    assert [entry[2] for entry in deadlines._heap] == [items[9]]
    clock.advance(200.0)
    assert due == ["9"]
