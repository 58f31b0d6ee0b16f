"""WarningThrottle: one warning line per source and interval, with a count."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger, capturedLogs, formatEvent

from spreadqueue._queue.throttle import WarningThrottle


def test_a_flood_makes_one_line_at_once_and_one_per_interval_with_the_count() -> None:
    clock = Clock()
    throttle = WarningThrottle(clock, Logger(), interval=10.0)
    with capturedLogs() as events:
        for i in range(361):
            throttle.warn("#bad#d", "dropped garbage from {source}: {error}", error=f"e{i}")
            clock.advance(0.01)  # 3.6 s of garbage
        clock.advance(10)
        clock.advance(10)  # a quiet window: the source is forgotten
        throttle.warn("#bad#d", "dropped garbage from {source}: {error}", error="again")
    lines = [formatEvent(e) for e in events]
    assert lines == [
        "dropped garbage from #bad#d: e0",
        "dropped garbage from #bad#d: e360 (360 more like it from #bad#d in the last 10s)",
        "dropped garbage from #bad#d: again",
    ]
    assert [e["repeated"] for e in events] == [0, 360, 0]  # structured, for log tools


def test_sources_are_counted_apart_and_stop_cancels_the_timers() -> None:
    clock = Clock()
    throttle = WarningThrottle(clock, Logger(), interval=5.0)
    with capturedLogs() as events:
        for source in ("#a#d", "#b#d", "#a#d"):
            throttle.warn(source, "bad from {source}")
        throttle.stop()
        clock.advance(10)
    assert [formatEvent(e) for e in events] == ["bad from #a#d", "bad from #b#d"]
    assert clock.getDelayedCalls() == []
