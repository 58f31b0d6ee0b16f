"""Warnings that can repeat by the thousand, rate-limited to one line per source.

A peer that sends garbage sends a lot of it: 361 malformed messages used to make 122
warning lines. :class:`WarningThrottle` logs the first warning of a source at once,
counts the rest, and at the end of every ``interval`` seconds in which more came logs
one line saying how many, with the last one's text: a flood makes one line per
interval, a quiet source is forgotten after one.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["WarningThrottle"]


class _Source:
    __slots__ = ("fields", "held", "timer")

    def __init__(self) -> None:
        self.held = 0
        self.fields: dict[str, Any] = {}
        self.timer: IDelayedCall | None = None


class WarningThrottle:
    """At most one warning line per source every ``interval`` seconds, with a count."""

    def __init__(
        self, reactor: IReactorTime, log: Logger, interval: float = 10.0, limit: int = 1000
    ) -> None:
        self._reactor = reactor
        self._log = log
        self.interval = interval
        self._limit = limit  # sources remembered at once (a flood of senders is bounded)
        self._sources: dict[str, _Source] = {}

    def warn(self, source: str, format: str, **fields: Any) -> None:
        """Log ``format`` (a twisted.logger format) for ``source`` now, or count it."""
        entry = self._sources.get(source)
        if entry is not None:
            entry.held += 1
            entry.fields = fields
            return
        if len(self._sources) >= self._limit:
            return  # counted nowhere, but never unbounded
        entry = self._sources[source] = _Source()
        self._log.warn(format, source=source, repeated=0, **fields)
        entry.timer = self._reactor.callLater(self.interval, self._window_ends, source, format)

    def dropped(
        self, source: str, error: Exception, counters: dict[str, int], who: str, **fields: Any
    ) -> None:
        """A malformed queue message from ``source`` was dropped: count it in
        ``counters["malformed"]`` and warn "``who``: dropped a malformed message from
        {source}: {error}" (``who`` a format naming the receiver, with ``fields``)."""
        counters["malformed"] += 1
        self.warn(
            source,
            who + ": dropped a malformed message from {source}: {error}",
            error=str(error),
            **fields,
        )

    def _window_ends(self, source: str, format: str) -> None:
        entry = self._sources[source]
        if not entry.held:
            del self._sources[source]  # quiet for a whole window: the next one logs at once
            return
        self._log.warn(
            format + " ({repeated} more like it from {source} in the last {interval:g}s)",
            source=source,
            repeated=entry.held,
            interval=self.interval,
            **entry.fields,
        )
        entry.held = 0
        entry.timer = self._reactor.callLater(self.interval, self._window_ends, source, format)

    def stop(self) -> None:
        """Forget every source and its timer (the owner stops)."""
        for entry in self._sources.values():
            if entry.timer is not None and entry.timer.active():
                entry.timer.cancel()
        self._sources.clear()
