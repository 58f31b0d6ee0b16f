"""``--web ENDPOINT``: a live dashboard of a queue, served by twisted.web from the package.

:class:`QueueMonitor` asks the queue for its status every second (the very reports
``spreadqueue status`` shows: :class:`~spreadqueue._queue.inspect.QueueInspector`),
turns them into a snapshot with rates and latencies, and keeps the last ten minutes of
them. :func:`dashboard_resource` serves the page (``index.html``, ``dashboard.js``,
``dashboard.css``: no CDN, no build step), the latest snapshot at ``/status.json``
and a stream of snapshots as server-sent events at ``/events``.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from importlib import resources
from typing import Any

from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..._queue.inspect import QueueInspector
from ..._queue.stats import Histogram

__all__ = ["QueueMonitor", "dashboard_resource", "snapshot_of"]

log = Logger()

#: Snapshots kept for the plots: ten minutes at one a second.
HISTORY = 600
#: The latencies shown are those of the tasks that ended in the last this many polls.
LATENCY_WINDOW = 10


def snapshot_of(
    status: dict[str, Any],
    previous: dict[str, Any] | None,
    now: float,
    baseline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What the page shows for one status (the ``spreadqueue status --json`` object):
    the status itself, rates since ``previous``, and latencies over all functions of
    the tasks that ended since ``baseline`` (an older snapshot; None: since the start)."""
    active = status["active"]
    done = active["counts"]["done"] if active else 0
    failed = active["counts"]["failed"] if active else 0
    rates = {"done_per_s": 0.0, "failed_per_s": 0.0}
    if previous is not None and active and previous["status"]["active"]:
        dt = max(now - previous["t"], 1e-6)
        rates["done_per_s"] = max(0.0, (done - previous["done"]) / dt)
        rates["failed_per_s"] = max(0.0, (failed - previous["failed"]) / dt)
    functions = list((active or {}).get("functions", {}).values())
    run = Histogram.merged([f["run_time"] for f in functions])
    wait = Histogram.merged([f["queue_wait"] for f in functions])
    histograms = {"run": run, "wait": wait}
    window = None
    if baseline is not None and baseline["status"]["active"]:
        window = now - baseline["t"]
        run = run.since(_histogram(baseline["histograms"]["run"]))
        wait = wait.since(_histogram(baseline["histograms"]["wait"]))
    return {
        "t": now,
        "status": status,
        "done": done,
        "failed": failed,
        "rates": rates,
        "latency": {
            "window": window,
            "run_p50": run.percentile(0.5),
            "run_p99": run.percentile(0.99),
            "wait_p50": wait.percentile(0.5),
            "wait_p99": wait.percentile(0.99),
        },
        "histograms": {k: {"counts": h.counts, "sum": h.total} for k, h in histograms.items()},
    }


def _histogram(data: dict[str, Any]) -> Histogram:
    h = Histogram()
    h.counts = list(data["counts"])
    h.total = data["sum"]
    return h


class QueueMonitor:
    """Asks ``inspector()`` every ``interval`` seconds; keeps and broadcasts snapshots."""

    def __init__(
        self,
        reactor: Any,
        inspector: Callable[[], QueueInspector | None],
        interval: float = 1.0,
    ) -> None:
        #: the inspector to ask now (None while there is no session to ask through)
        self.inspector = inspector
        self.interval = interval
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._listeners: list[Request] = []
        self._loop = LoopingCall(self._poll)
        self._loop.clock = reactor
        self._polling = False

    @property
    def latest(self) -> dict[str, Any] | None:
        return self.history[-1] if self.history else None

    def start(self) -> None:
        self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        for request in list(self._listeners):
            request.finish()
        self._listeners.clear()

    def _poll(self) -> None:
        inspector = self.inspector()
        if self._polling or inspector is None:
            return  # still gathering (a slow network), or no session now: skip a beat
        self._polling = True
        d = inspector.status(timeout=max(0.2, self.interval * 0.8))
        d.addCallbacks(self._got, self._lost)

    def _got(self, status: dict[str, Any]) -> None:
        self._polling = False
        history = self.history
        baseline = history[-LATENCY_WINDOW] if len(history) >= LATENCY_WINDOW else None
        if baseline is None and history:
            baseline = history[0]
        snapshot = snapshot_of(status, self.latest, time.time(), baseline)
        self.history.append(snapshot)
        line = b"data: " + json.dumps(snapshot).encode() + b"\n\n"
        for request in list(self._listeners):
            request.write(line)

    def _lost(self, failure: Failure) -> None:
        self._polling = False
        log.failure("dashboard: asking the queue for its status failed", failure)

    def listen(self, request: Request) -> None:
        """Stream snapshots to ``request`` (server-sent events), starting with history."""
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        history = [
            {k: s[k] for k in ("t", "rates", "latency", "done", "failed")}
            | {
                "depth": (s["status"]["active"] or {}).get("depth"),
                "in_flight": (s["status"]["active"] or {}).get("in_flight"),
            }
            for s in self.history
        ]
        request.write(b"event: history\ndata: " + json.dumps(history).encode() + b"\n\n")
        if self.latest is not None:
            request.write(b"data: " + json.dumps(self.latest).encode() + b"\n\n")
        self._listeners.append(request)
        request.notifyFinish().addBoth(lambda _: self._forget(request))

    def _forget(self, request: Request) -> None:
        if request in self._listeners:
            self._listeners.remove(request)


class _Events(Resource):
    isLeaf = True

    def __init__(self, monitor: QueueMonitor) -> None:
        super().__init__()
        self.monitor = monitor

    def render_GET(self, request: Request) -> Any:
        self.monitor.listen(request)
        return NOT_DONE_YET


class _Latest(Resource):
    isLeaf = True

    def __init__(self, monitor: QueueMonitor) -> None:
        super().__init__()
        self.monitor = monitor

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.monitor.latest).encode()


class _File(Resource):
    """One file of the page, from the package (twisted.web.static is not needed, and
    importing it warns)."""

    isLeaf = True

    def __init__(self, data: bytes, kind: bytes) -> None:
        super().__init__()
        self._data = data
        self._kind = kind

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", self._kind)
        return self._data


_FILES = {
    b"": ("index.html", b"text/html; charset=utf-8"),
    b"dashboard.js": ("dashboard.js", b"text/javascript; charset=utf-8"),
    b"dashboard.css": ("dashboard.css", b"text/css; charset=utf-8"),
}


def dashboard_resource(monitor: QueueMonitor) -> Resource:
    """The page, its script and style, ``/status.json`` and ``/events``."""
    root = Resource()
    here = resources.files(__package__)
    for path, (name, kind) in _FILES.items():
        root.putChild(path, _File(here.joinpath(name).read_bytes(), kind))
    root.putChild(b"status.json", _Latest(monitor))
    root.putChild(b"events", _Events(monitor))
    return root
