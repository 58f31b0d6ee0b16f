"""The three views of the same numbers: Prometheus exposition and dashboard snapshots,
built from the status reports of a queue on the in-memory network."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from queue_net import Net, echo, fired
from rich.console import Console
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from spreadqueue._queue.errors import RemoteError
from spreadqueue._queue.inspect import QueueInspector
from spreadqueue._queue.pools import ProcessPool, ThreadPool
from spreadqueue._queue.stats import LATENCY_BOUNDS, Histogram, Utilisation
from spreadqueue._service.dashboard import snapshot_of
from spreadqueue._service.metrics import registry_of
from spreadqueue._service.status_cmd import render, status_console


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def busy_queue(net: Net) -> tuple[Any, Any, list[Deferred[Any]]]:
    manager = net.manager()
    handlers = {"echo": echo, "boom": lambda _: 1 / 0, "hold": lambda _: Deferred()}
    worker = net.worker(handlers, concurrency=2)
    sender = net.sender()
    calls = [sender.rpc("echo", i) for i in range(7)] + [sender.rpc("boom", 1)]
    calls += [sender.rpc("hold", 1, timeout=None)]
    net.advance(0.5)
    calls[-2].addErrback(lambda f: f.trap(RemoteError))  # the failure is expected: consume it
    return manager, worker, calls


def test_the_manager_s_metrics_count_what_ran() -> None:
    net = Net()
    manager, _, _ = busy_queue(net)
    got = samples(generate_latest(registry_of("manager", lambda: [manager.status()])).decode())
    q = (("queue", "q"),)
    assert got[("spreadqueue_manager_active", q)] == 1
    assert got[("spreadqueue_tasks_in_flight", q)] == 1 and got[("spreadqueue_queue_depth", q)] == 0
    assert got[("spreadqueue_workers", q)] == 1
    echo_done = (("function", "echo"), ("outcome", "done"), ("queue", "q"))
    boom_failed = (("function", "boom"), ("outcome", "failed"), ("queue", "q"))
    assert got[("spreadqueue_tasks_total", echo_done)] == 7
    assert got[("spreadqueue_tasks_total", boom_failed)] == 1
    waits = (("function", "echo"), ("queue", "q"))
    assert got[("spreadqueue_task_duration_seconds_count", waits)] == 7
    assert got[("spreadqueue_task_queue_wait_seconds_count", waits)] == 7
    inf = (("function", "echo"), ("le", "+Inf"), ("queue", "q"))
    assert got[("spreadqueue_task_duration_seconds_bucket", inf)] == 7
    assert any(name == "process_resident_memory_bytes" for name, _ in got)


def test_the_manager_s_metrics_say_what_waits_for_whom_and_what_died() -> None:
    net = Net()
    manager = net.manager()
    net.worker({"hold": lambda _: Deferred()})
    net.worker({"bad": lambda _: 1 / 0})
    sender = net.sender()
    sender.rpc("hold", 1, timeout=None)
    sender.rpc("hold", 2, timeout=None, priority=7)  # ahead of the first: one slot
    sender.rpc("nobody", 3, timeout=None, priority=2)
    sender.enqueue("bad", 4)
    sender.enqueue("nobody", 5)
    net.advance(0.5)
    got = samples(generate_latest(registry_of("manager", lambda: [manager.status()])).decode())
    q = ("queue", "q")

    def by(label: str, value: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted([q, (label, value)]))

    assert got[("spreadqueue_queue_depth", (q,))] == 3
    assert got[("spreadqueue_queue_depth_by_function", by("function", "nobody"))] == 2
    assert got[("spreadqueue_queue_depth_by_function", by("function", "hold"))] == 1
    assert got[("spreadqueue_function_workers", by("function", "nobody"))] == 0
    assert got[("spreadqueue_function_workers", by("function", "hold"))] == 1
    levels = {
        p: got[("spreadqueue_queue_depth_by_priority", by("priority", str(p)))] for p in range(10)
    }
    assert levels == {0: 2, 1: 0, 2: 1, 3: 0, 4: 0, 5: 0, 6: 0, 7: 0, 8: 0, 9: 0}
    assert got[("spreadqueue_detached_tasks", (q,))] == 1  # "nobody"'s; "bad" is a dead letter
    assert got[("spreadqueue_detached_dispatching", (q,))] == 1
    assert got[("spreadqueue_dead_letters", (q,))] == 1
    assert got[("spreadqueue_dead_letters_dropped_total", (q,))] == 0


def test_a_worker_s_metrics_say_how_busy_it_is() -> None:
    net = Net()
    _, worker, _ = busy_queue(net)
    got = samples(generate_latest(registry_of("worker", lambda: [worker.status()])).decode())
    me = ("worker", f"{worker.worker_id}@{worker.session.private_group}")
    key = (("queue", "q"), me)
    assert got[("spreadqueue_worker_tasks_total", (("outcome", "done"), ("queue", "q"), me))] == 7
    assert got[("spreadqueue_worker_running", key)] == 1
    one_minute = (("queue", "q"), ("window", "1m"), me)
    assert 0 < got[("spreadqueue_worker_utilisation", one_minute)] <= 1


def test_the_dashboard_snapshot_adds_rates_and_latencies_to_the_status() -> None:
    net = Net()
    busy_queue(net)
    inspector = QueueInspector(net.clock, net.session("dash"), "q")
    d = inspector.status()
    net.pump()
    first = snapshot_of(fired(d), None, 100.0)
    assert first["rates"] == {"done_per_s": 0.0, "failed_per_s": 0.0}
    assert first["done"] == 7 and first["failed"] == 1  # done: the handler returned
    assert first["latency"]["run_p50"] is not None
    sender = net.sender()
    more = [sender.rpc("echo", i) for i in range(10)]
    net.pump()
    assert all(x.called for x in more)
    d = inspector.status()
    net.pump()
    second = snapshot_of(fired(d), first, 102.0)
    assert second["rates"]["done_per_s"] == 5.0  # 10 more in 2 s
    json.dumps(second)  # what goes down the event stream


def test_the_status_table_shows_the_same_numbers() -> None:
    net = Net()
    _, worker, _ = busy_queue(net)
    d = QueueInspector(net.clock, net.session("ops"), "q").status()
    net.pump()
    console = Console(record=True, width=160)
    console.print(render(fired(d)))
    text = console.export_text()
    assert "queue q: 0 queued (oldest -), 1 in flight, 1 workers, 1 senders" in text
    assert "done 7, failed 1; redelivered 0; 1 workers since start, 0 lost" in text
    assert "active" in text and "PAUSED" not in text
    rows = [[cell.strip() for cell in line.split("\u2502")[1:-1]] for line in text.splitlines()]
    mine = next(row for row in rows if row and row[0].startswith(worker.worker_id))
    assert mine[1:5] == ["ready", "45%", "45%", "1/2"]  # one of its two slots running
    assert mine[6:8] == ["7", "1"]
    assert mine[9] == "threads"  # its default pool (on a Clock, nothing ran in it)
    echo = next(row for row in rows if row and row[0] == "echo")
    assert echo[1:4] == ["7", "0", "-"]


def test_the_status_tables_keep_their_width_when_piped(monkeypatch: pytest.MonkeyPatch) -> None:
    """`spreadqueue status > file` (or through a pipe) is as readable as on a wide terminal:
    rich's 80 columns would cut every worker column to a letter and an ellipsis."""
    net = Net()
    _, worker, _ = busy_queue(net)
    d = QueueInspector(net.clock, net.session("ops"), "q").status()
    net.pump()
    monkeypatch.delenv("COLUMNS", raising=False)
    out = io.StringIO()
    status_console(out).print(render(fired(d)))
    text = out.getvalue()
    assert "\u2026" not in text, text  # no cell cut short
    header = next(line for line in text.splitlines() if "worker" in line and "serves" in line)
    assert "util 1m" in header and "host:pid" in header
    assert any(line.startswith(f"\u2502 {worker.worker_id}@") for line in text.splitlines())
    monkeypatch.setenv("COLUMNS", "100")  # an explicit width still wins
    assert status_console(io.StringIO()).width == 100


def test_the_status_table_shows_what_waits_for_a_function_nobody_serves() -> None:
    net = Net()
    net.manager()
    net.worker({"echo": echo, "hold": lambda _: Deferred()})
    sender = net.sender()
    sender.rpc("hold", 1, timeout=None)
    sender.rpc("nobody", 1, timeout=None)
    sender.rpc("echo", 2, timeout=None)  # behind "hold": its only worker is busy
    net.advance(2)
    d = QueueInspector(net.clock, net.session("ops"), "q").status()
    net.pump()
    status = fired(d)
    console = Console(record=True, width=200)
    console.print(render(status))
    text = console.export_text()
    assert "waiting for function nobody: no worker serves it (1 task(s), the oldest for" in text
    rows = [[cell.strip() for cell in line.split("\u2502")[1:-1]] for line in text.splitlines()]
    waiting = {row[0]: row[1:] for row in rows if row and row[0] in ("nobody", "echo")}
    assert waiting["nobody"][0] == "1" and waiting["nobody"][2] == "none: no worker serves it"
    assert waiting["echo"][0] == "1" and waiting["echo"][2] == "1"
    worker_row = next(row for row in rows if row and row[0].startswith("w"))
    assert worker_row[-1] == "echo, hold"
    assert [w["func"] for w in snapshot_of(status, None, 1.0)["status"]["active"]["waiting"]] == [
        "echo",
        "nobody",
    ]


def test_the_dashboard_s_latencies_are_those_of_the_tasks_since_its_baseline() -> None:
    net = Net()
    net.manager()
    nap = lambda _: deferLater(net.clock, 2.0, lambda: None)  # noqa: E731
    net.worker({"echo": echo, "nap": nap}, concurrency=8)
    sender = net.sender()
    inspector = QueueInspector(net.clock, net.session("dash"), "q")

    def snapshot(*args: Any) -> dict[str, Any]:
        d = inspector.status()
        net.pump()
        return snapshot_of(fired(d), *args)

    quick = [sender.rpc("echo", i) for i in range(50)]
    net.pump()
    assert all(d.called for d in quick)
    baseline = snapshot(None, 100.0)
    assert baseline["latency"]["window"] is None  # no baseline: since the start
    assert baseline["latency"]["run_p99"] < 0.001  # type: ignore[operator]
    slow = [sender.rpc("nap", i) for i in range(5)]
    net.advance(2.1)
    assert all(d.called for d in slow)
    later = snapshot(baseline, 110.0, baseline)
    assert later["latency"]["window"] == 10.0
    assert 1.0 <= later["latency"]["run_p50"] <= 2.5  # only the naps, not the 50 echoes
    since_start = snapshot(baseline, 110.0)
    assert since_start["latency"]["run_p50"] < 0.001  # 50 quick ones, 5 slow ones


def test_histograms_merge_and_estimate_percentiles_within_their_bucket() -> None:
    h = Histogram()
    for v in [0.001] * 90 + [0.2] * 10:
        h.add(v)
    assert 0.0005 <= h.percentile(0.5) <= 0.001  # type: ignore[operator]
    assert 0.1 <= h.percentile(0.99) <= 0.25  # type: ignore[operator]
    both = Histogram.merged([h.summary(), h.summary()])
    assert both.count == 200 and both.total == 2 * h.total
    assert len(h.summary()["buckets"]) == len(LATENCY_BOUNDS) + 1


def test_utilisation_over_the_last_minute_forgets_what_is_older() -> None:
    u = Utilisation(0.0)
    u.completed(10.0, 10.0)  # one slot busy for the first 10 s
    early = u.summary(20.0, slots=1, running_for=0.0)
    assert early["utilisation"] == 0.5 and early["utilisation_1m"] == 0.5
    late = u.summary(100.0, slots=1, running_for=0.0)
    assert late["utilisation"] == 0.1 and late["utilisation_1m"] == 0.0
    assert late["busy_seconds"] == 10.0 and late["idle_seconds"] == 90.0


def test_the_readme_lists_every_metric_with_its_type_and_labels() -> None:
    """The README's metrics table is the exposition's own list, no more, no less."""
    net = Net()
    manager, worker, _ = busy_queue(net)
    net.sender().rpc("nobody", 1, timeout=None)  # the per-function gauges list waiting ones
    net.advance(0.1)

    def worker_status() -> dict[str, Any]:
        # On a Clock handlers run inline; a worker with both pools reports these too.
        report = worker.status()
        report["pools"] = {
            "threads": ThreadPool(net.clock, 2).stats(),  # type: ignore[arg-type]
            "processes": ProcessPool(net.clock, 2).stats(),
        }
        return report

    exported = {}
    for role, status in (("manager", manager.status), ("worker", worker_status)):
        text = generate_latest(registry_of(role, lambda s=status: [s()])).decode()
        for family in text_string_to_metric_families(text):
            if family.name.startswith("spreadqueue_"):
                name = family.name + ("_total" if family.type == "counter" else "")
                labels = {k for s in family.samples for k in s.labels if k != "le"}
                exported[name] = (family.type, labels)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    documented = {}
    for row in re.findall(r"^\| `(spreadqueue_\w+)` \| (\w+) \| ([\w, ]+) \|", readme, re.M):
        documented[row[0]] = (row[1], set(row[2].split(", ")))
    assert documented == exported
