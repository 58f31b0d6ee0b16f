"""``--metrics ENDPOINT``: a Prometheus exposition of a manager's or a worker's numbers.

The numbers are the same status reports that ``spreadqueue status`` shows, turned into
metric families by prometheus-client's collector API and rendered by its own text
format. The page is served by twisted.web, rendered in the reactor thread (the reports
are read where they are kept, so no lock is needed; prometheus-client's own Twisted
resource would collect in a thread pool).

Metric names (README, "Operations"): ``spreadqueue_tasks_total{queue,function,outcome}``,
``spreadqueue_queue_depth``, ``spreadqueue_tasks_in_flight``,
``spreadqueue_oldest_queued_seconds``, ``spreadqueue_workers``,
``spreadqueue_workers_registered_total``, ``spreadqueue_senders``,
``spreadqueue_manager_active``, ``spreadqueue_paused``,
``spreadqueue_task_queue_wait_seconds`` and ``spreadqueue_task_duration_seconds``
(histograms by function), ``spreadqueue_tasks_redelivered_total``; for a worker
``spreadqueue_worker_tasks_total{queue,worker,outcome}``,
``spreadqueue_worker_busy_seconds_total``, ``spreadqueue_worker_utilisation{window}``,
``spreadqueue_worker_running``, ``spreadqueue_worker_prefetched``,
``spreadqueue_worker_pool_size{pool}``, ``spreadqueue_worker_pool_busy{pool}``,
``spreadqueue_worker_pool_late_results_total``,
``spreadqueue_worker_pool_processes_died_total``; and the process's own
``process_*`` metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request

from .._queue.stats import LATENCY_BOUNDS

__all__ = ["collector_of", "metrics_resource", "registry_of"]

#: A function that returns status reports (a manager's, or a worker's).
Reports = Callable[[], list[dict[str, Any]]]


def _buckets(summary: dict[str, Any]) -> list[tuple[str, float]]:
    bounds = [repr(b) for b in LATENCY_BOUNDS] + ["+Inf"]
    return list(zip(bounds, summary["buckets"], strict=True))


def _gauge(name: str, text: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"spreadqueue_{name}", text, labels=list(labels))


def _counter(name: str, text: str, *labels: str) -> CounterMetricFamily:
    return CounterMetricFamily(f"spreadqueue_{name}", text, labels=list(labels))


def _histogram(name: str, text: str, *labels: str) -> HistogramMetricFamily:
    return HistogramMetricFamily(f"spreadqueue_{name}", text, labels=list(labels))


def _manager_families(reports: list[dict[str, Any]]) -> Iterator[Metric]:
    q = "queue"
    active = _gauge("manager_active", "1 while this manager is the queue's active one", q)
    depth = _gauge("queue_depth", "Tasks waiting for a worker", q)
    in_flight = _gauge("tasks_in_flight", "Tasks assigned and not done", q)
    oldest = _gauge("oldest_queued_seconds", "Age of the oldest queued task", q)
    workers = _gauge("workers", "Registered workers", q)
    ever = _counter("workers_registered", "Workers registered since the manager started", q)
    senders = _gauge("senders", "Sender sessions of the queue", q)
    paused = _gauge("paused", "1 while dispatch is paused", q)
    redelivered = _counter("tasks_redelivered", "Tasks put back in the queue (worker lost)", q)
    lost = _counter("workers_lost", "Workers lost (their session went) while registered", q)
    started = _gauge("manager_start_time_seconds", "When the manager started (epoch)", q)
    by_priority = _gauge("queue_depth_by_priority", "Tasks waiting, by priority", q, "priority")
    by_function = _gauge(
        "queue_depth_by_function", "Tasks waiting, by function (the most queued)", q, "function"
    )
    serving = _gauge(
        "function_workers", "Workers serving a function tasks wait for (0: none)", q, "function"
    )
    detached = _gauge("detached_tasks", "Detached tasks held (queued or running)", q)
    dispatching = _gauge(
        "detached_dispatching", "1 while this side has the quorum to run detached tasks", q
    )
    dead = _gauge("dead_letters", "Dead letters kept", q)
    dead_dropped = _counter("dead_letters_dropped", "Dead letters dropped over the limit", q)
    tasks = _counter("tasks", "Tasks by function and outcome", q, "function", "outcome")
    wait = _histogram("task_queue_wait_seconds", "Time from queued to assigned", q, "function")
    run = _histogram(
        "task_duration_seconds", "Time from assigned to done, as the manager sees it", q, "function"
    )
    for r in reports:
        labels = [r["queue"]]
        active.add_metric(labels, 1.0 if r.get("active") else 0.0)
        started.add_metric(labels, r["started"])
        if not r.get("active"):
            continue
        depth.add_metric(labels, r["depth"])
        in_flight.add_metric(labels, r["in_flight"])
        oldest.add_metric(labels, r["oldest_queued_for"] or 0.0)
        workers.add_metric(labels, len(r["workers"]))
        ever.add_metric(labels, r["workers_ever"])
        senders.add_metric(labels, r["senders"])
        paused.add_metric(labels, 1.0 if r["paused"] else 0.0)
        redelivered.add_metric(labels, r["counts"]["redelivered"])
        lost.add_metric(labels, r["workers_lost"])
        for level, n in enumerate(r["queued_by_priority"]):
            by_priority.add_metric([r["queue"], str(level)], n)
        for w in r["waiting"]:
            by_function.add_metric([r["queue"], w["func"]], w["queued"])
            serving.add_metric([r["queue"], w["func"]], w["workers"])
        detached.add_metric(labels, r["detached"])
        dispatching.add_metric(labels, 1.0 if r["quorum"]["dispatching_detached"] else 0.0)
        dead.add_metric(labels, r["dead_letters"]["count"])
        dead_dropped.add_metric(labels, r["dead_letters"]["dropped"])
        for func, f in r["functions"].items():
            for outcome, n in f["outcomes"].items():
                tasks.add_metric([r["queue"], func, outcome], n)
            wait.add_metric([r["queue"], func], _buckets(f["queue_wait"]), f["queue_wait"]["sum"])
            run.add_metric([r["queue"], func], _buckets(f["run_time"]), f["run_time"]["sum"])
    yield from (active, started, depth, in_flight, oldest, workers, ever, senders, paused)
    yield from (redelivered, lost, by_priority, by_function, serving)
    yield from (detached, dispatching, dead, dead_dropped)
    yield from (tasks, wait, run)


#: A worker's outcome label -> its stats counter.
_WORKER_OUTCOMES = (("done", "completed"), ("failed", "errors"), ("cancelled", "cancelled"))


def _worker_families(reports: list[dict[str, Any]]) -> Iterator[Metric]:
    w = ("queue", "worker")
    tasks = _counter("worker_tasks", "Tasks this worker ran, by outcome", *w, "outcome")
    busy = _counter("worker_busy_seconds", "Seconds of task run time", *w)
    util = _gauge("worker_utilisation", "Busy share of the worker's slots", *w, "window")
    running = _gauge("worker_running", "Tasks running now", *w)
    prefetched = _gauge("worker_prefetched", "Tasks taken ahead, not started", *w)
    pool_size = _gauge("worker_pool_size", "Threads or processes a handler pool has", *w, "pool")
    pool_busy = _gauge("worker_pool_busy", "Threads or processes running a handler", *w, "pool")
    late = _counter(
        "worker_pool_late_results", "Results of answered tasks that came late, dropped", *w
    )
    died = _counter("worker_pool_processes_died", "Handler processes that died in a task", *w)
    for r in reports:
        key = [r["queue"], r["worker"]]
        for outcome, stat in _WORKER_OUTCOMES:
            tasks.add_metric([*key, outcome], r["counts"].get(stat, 0))
        busy.add_metric(key, r["busy_seconds"])
        util.add_metric([*key, "1m"], r["utilisation_1m"])
        util.add_metric([*key, "total"], r["utilisation"])
        running.add_metric(key, r["running"])
        prefetched.add_metric(key, r["prefetched"])
        pools = r.get("pools", {})
        for kind, stats in sorted(pools.items()):
            pool_size.add_metric([*key, kind], stats.get("threads", stats.get("processes", 0)))
            pool_busy.add_metric([*key, kind], stats["busy"])
        late.add_metric(key, pools.get("threads", {}).get("late_results", 0))
        died.add_metric(key, pools.get("processes", {}).get("died", 0))
    yield from (tasks, busy, util, running, prefetched, pool_size, pool_busy, late, died)


Families = Callable[[list[dict[str, Any]]], Iterator[Metric]]


class _Collector:
    def __init__(self, reports: Reports, families: Families) -> None:
        self._reports = reports
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._reports())


def collector_of(role: str, reports: Reports) -> _Collector:
    """A prometheus-client collector of the reports of ``role`` ('manager', 'worker')."""
    return _Collector(reports, _manager_families if role == "manager" else _worker_families)


def registry_of(role: str, reports: Reports) -> CollectorRegistry:
    """A registry with our collector and the process's own metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector_of(role, reports))  # type: ignore[arg-type]
    ProcessCollector(registry=registry)
    return registry


class _Exposition(Resource):
    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self._registry)


def metrics_resource(registry: CollectorRegistry) -> Resource:
    """The exposition of ``registry`` at ``/metrics`` (and ``/``)."""
    root = Resource()
    page = _Exposition(registry)
    root.putChild(b"metrics", page)
    root.putChild(b"", page)
    return root
