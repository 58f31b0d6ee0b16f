"""The numbers a queue keeps about itself: latency histograms, per-function counts,
worker utilisation, process facts.

Status replies, the Prometheus endpoint and the dashboard all read these: one source of
numbers, three views. Everything here is cheap enough to update once per task (a bisect
and a few additions) and bounded in memory whatever the load.
"""

from __future__ import annotations

import bisect
import os
import platform
import socket
import sys
from typing import Any, Final

from .._version import __version__

__all__ = [
    "LATENCY_BOUNDS",
    "FunctionStats",
    "Histogram",
    "Utilisation",
    "process_info",
]

#: Upper bounds (seconds) of the latency buckets; the last bucket is +Inf. They are the
#: Prometheus histogram's ``le`` values.
LATENCY_BOUNDS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)


class Histogram:
    """Counts of values per latency bucket, their sum, and percentiles from them."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        #: one count per bucket of LATENCY_BOUNDS, then the +Inf bucket
        self.counts = [0] * (len(LATENCY_BOUNDS) + 1)
        #: the sum of every value added (seconds)
        self.total = 0.0

    def add(self, value: float) -> None:
        """Count one value (seconds)."""
        self.counts[bisect.bisect_left(LATENCY_BOUNDS, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        """Values added."""
        return sum(self.counts)

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1), interpolated within its bucket; None when empty.

        Accurate to the bucket: good enough to tell 1 ms from 1 s at 3 am.
        """
        n = self.count
        if not n:
            return None
        rank = q * n
        seen = 0
        low = 0.0
        for i, c in enumerate(self.counts):
            if c and seen + c >= rank:
                high = LATENCY_BOUNDS[i] if i < len(LATENCY_BOUNDS) else low * 2 or 1.0
                return low + (high - low) * max(0.0, rank - seen) / c
            seen += c
            low = LATENCY_BOUNDS[i] if i < len(LATENCY_BOUNDS) else low
        return low

    @classmethod
    def merged(cls, summaries: list[dict[str, Any]]) -> Histogram:
        """One histogram of several :meth:`summary` results (e.g. every function's)."""
        h = cls()
        for summary in summaries:
            previous = 0
            for i, cumulative in enumerate(summary["buckets"][: len(h.counts)]):
                h.counts[i] += cumulative - previous
                previous = cumulative
            h.total += summary["sum"]
        return h

    def since(self, earlier: Histogram) -> Histogram:
        """What was counted after ``earlier`` (a past state of the same histogram)."""
        h = Histogram()
        h.counts = [max(0, a - b) for a, b in zip(self.counts, earlier.counts, strict=True)]
        h.total = max(0.0, self.total - earlier.total)
        return h

    def summary(self) -> dict[str, Any]:
        """count, sum, p50, p90, p99 (seconds) and the cumulative buckets."""
        cumulative, running = [], 0
        for c in self.counts:
            running += c
            cumulative.append(running)
        return {
            "count": running,
            "sum": self.total,
            "p50": self.percentile(0.5),
            "p90": self.percentile(0.9),
            "p99": self.percentile(0.99),
            "buckets": cumulative,
        }


#: How a task ends, as the manager counts it: done (the handler returned), failed (it
#: raised, or the function is unknown), timed_out (cancelled when the sender's timeout
#: ran out while it ran), expired (its timeout ran out while it was queued: never ran),
#: cancelled (by its sender or an operator), worker_lost (its workers were lost
#: max_attempts times), refused (the queue was full), dropped (its sender went away
#: before it ran).
OUTCOMES: Final = (
    "done",
    "failed",
    "timed_out",
    "expired",
    "cancelled",
    "worker_lost",
    "refused",
    "dropped",
)


class FunctionStats:
    """What a manager knows about the tasks of one function."""

    __slots__ = ("outcomes", "run_time", "wait")

    def __init__(self) -> None:
        #: outcome (one of OUTCOMES) -> tasks
        self.outcomes: dict[str, int] = {}
        #: from queued to assigned
        self.wait = Histogram()
        #: from assigned to the manager seeing it done (the worker's run, plus a hop)
        self.run_time = Histogram()

    def count(self, outcome: str, n: int = 1) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + n

    def summary(self) -> dict[str, Any]:
        return {
            "outcomes": dict(self.outcomes),
            "queue_wait": self.wait.summary(),
            "run_time": self.run_time.summary(),
        }


class Utilisation:
    """How much of a worker's capacity was busy: since it started, and over the last
    minute (per-second buckets of completed run time, plus the tasks running now)."""

    __slots__ = ("_buckets", "_second", "busy", "started")

    WINDOW: Final = 60

    def __init__(self, now: float) -> None:
        self.started = now
        #: run time (seconds) of every task completed so far
        self.busy = 0.0
        self._buckets = [0.0] * self.WINDOW
        self._second = int(now)

    def completed(self, now: float, run_time: float) -> None:
        """A task that ran ``run_time`` seconds ended at ``now``."""
        self.busy += run_time
        second = int(now)
        if second != self._second:
            self._advance(second)
        self._buckets[second % self.WINDOW] += run_time

    def _advance(self, second: int) -> None:
        # Clear the buckets of the seconds that passed with nothing completed.
        for s in range(max(self._second + 1, second - self.WINDOW + 1), second + 1):
            self._buckets[s % self.WINDOW] = 0.0
        self._second = second

    def summary(self, now: float, slots: int, running_for: float) -> dict[str, Any]:
        """Busy and idle seconds and utilisation (0..1) with ``slots`` task slots, given
        ``running_for``: the seconds the tasks running now have run so far."""
        self._advance(max(int(now), self._second))
        uptime = max(now - self.started, 1e-9)
        busy = self.busy + running_for
        window = min(float(self.WINDOW), uptime)
        recent = sum(self._buckets) + running_for
        return {
            "busy_seconds": busy,
            "idle_seconds": max(0.0, slots * uptime - busy),
            "utilisation": min(1.0, busy / (slots * uptime)),
            "utilisation_1m": min(1.0, recent / (slots * window)),
        }


def process_info() -> dict[str, Any]:
    """Facts about this process: host, pid, resident memory, priority, versions."""
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        rss = None
    try:
        nice = os.getpriority(os.PRIO_PROCESS, 0)
    except (AttributeError, OSError):
        nice = None
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "rss_bytes": rss,
        "nice": nice,
        "python": platform.python_version(),
        "spreadqueue": __version__,
        "argv0": os.path.basename(sys.argv[0]) if sys.argv else "",
    }
