"""``spreadqueue bench``: a smoke run of the real thing, and its pure parts.

The smoke tests run ``spreadqueue bench --quick --phase ... --json F`` in a subprocess
(against SPREADQUEUE_TEST_SPREAD when set) and check the results are complete and
consistent. They assert no speed: the machine is shared and noisy.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from twisted.internet.task import Clock

from spreadqueue._bench.agent import payload_of
from spreadqueue._bench.pingloop import PingLoop
from spreadqueue._bench.procs import Child, ChildError
from spreadqueue._bench.procstat import cpu_seconds, rss_bytes
from spreadqueue._bench.profiling import load_stacks, summarise
from spreadqueue._bench.report import format_report
from spreadqueue._bench.run import main as bench_main
from spreadqueue._bench.stats import latency_summary, median_of_runs, percentile, spread_summary

ROOT = Path(__file__).resolve().parent.parent
SPREAD_ENV = "SPREADQUEUE_TEST_SPREAD"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    )
    return env


def _check_latency(lat: dict[str, Any]) -> None:
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]
    assert lat["count"] > 0


def _quick_bench(tmp_path: Path, *args: str) -> tuple[str, dict[str, Any]]:
    """``spreadqueue bench --quick ARGS`` in a subprocess (on SPREADQUEUE_TEST_SPREAD when
    set): its output and its --json results."""
    out = tmp_path / "bench.json"
    argv = [sys.executable, "-m", "spreadqueue._service.cli", "bench", "--quick", *args]
    argv += ["--json", str(out)]
    external = os.environ.get(SPREAD_ENV)
    if external:
        argv += ["--spread", external]
    done = subprocess.run(
        argv, env=_env(), cwd=str(tmp_path), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, json.loads(out.read_text())


def test_smoke_seq_raw_and_asyncio(tmp_path: Path) -> None:
    stdout, results = _quick_bench(
        tmp_path, "--phase", "seq", "--phase", "raw", "--phase", "asyncio"
    )
    assert "ping-pong" in stdout and "rpc/s" in stdout
    external = os.environ.get(SPREAD_ENV)
    assert set(results) == {"meta", "raw", "seq", "asyncio"}
    assert results["meta"]["phases"] == ["raw", "seq", "asyncio"]
    assert results["meta"]["daemon"] == (external or "embedded")

    seq = results["seq"]["cases"]["C=1"]
    assert len(seq["runs"]) == 1
    for run in (seq["median"], *seq["runs"]):
        assert run["tasks_per_s"] > 0
        _check_latency(run["latency_us"])
        tasks = run["tasks"]
        assert tasks["submitted"] == tasks["completed"] > 0
        assert tasks["errors"] == tasks["lost"] == 0
        assert 0 < tasks["measured"] <= tasks["completed"]
        assert run["latency_us"]["count"] == tasks["measured"]
        assert run["per_worker"]["counts"][0] > 0
        cpu = run["cpu_s"]
        assert set(cpu) == {"daemon", "manager", "workers", "senders", "other"}
        assert (cpu["daemon"] is None) == bool(external)
        assert all(v >= 0 for k, v in cpu.items() if v is not None)

    raw = results["raw"]["cases"]
    ping = raw["ping-pong"]["median"]
    assert ping["round_trips_per_s"] > 0 and ping["lost"] == 0
    _check_latency(ping["latency_us"])
    relay = raw["relay"]["median"]
    assert relay["messages_per_s"] > 0
    assert relay["sent"] == relay["received"] > 0 and relay["lost"] == 0
    floor = raw["floor"]["median"]
    assert floor["round_trips_per_s"] > 0 and floor["lost"] == 0
    _check_latency(floor["latency_us"])
    assert floor["cpu_s"]["daemon"] > 0 and floor["cpu_s"]["clients"] > 0
    assert "over the floor (bare Twisted" in stdout

    # The asyncio sender (on asyncio and uvloop) beside the Twisted one, same run.
    aio = results["asyncio"]
    kinds = (
        ("twisted", "asyncio", "uvloop")
        if importlib.util.find_spec("uvloop")
        else ("twisted", "asyncio")
    )
    assert set(aio["cases"]) == {f"{k} C={c}" for k in kinds for c in (1, 100)}
    for label, case in aio["cases"].items():
        run = case["median"]
        assert case["params"]["sender"] == label.split()[0]
        assert run["tasks_per_s"] > 0 and run["cpu_s"]["senders"] is not None
        assert run["tasks"]["errors"] == run["tasks"]["lost"] == 0
        assert run["tasks"]["submitted"] == run["tasks"]["completed"] > 0
        _check_latency(run["latency_us"])
    assert set(aio["ratios"]) == {f"{k} C={c}" for k in kinds[1:] for c in (1, 100)}
    assert all(r["rate"] > 0 for r in aio["ratios"].values())
    assert "asyncio sender vs the Twisted sender" in stdout


#: The detached phase's cases: each journal mode, with one manager and with a standby,
#: each with a full window and with one enqueue at a time: (journaled, standby, window).
DETACHED_CASES = {
    f"{journal}, {managers}, W={window}": (
        journal != "no journal",
        managers != "1 manager",
        window,
    )
    for window in (256, 1)
    for managers in ("1 manager", "+1 standby")
    for journal in ("no journal", "journal full", "journal normal")
}


def test_smoke_failover_manager_and_detached(tmp_path: Path) -> None:
    """The active manager killed twice under each load: every kill followed by an
    assignment from the heir, nothing lost or run twice, the queue never empty at a
    kill; and detached enqueues in every journal mode, each task in the journal."""
    stdout, results = _quick_bench(
        tmp_path, "--phase", "failover-manager", "--phase", "detached", "--manager-kills", "2"
    )
    assert results["meta"]["phases"] == ["failover-manager", "detached"]
    cases = results["failover-manager"]["cases"]
    assert set(cases) == {"no load", "rpc", "detached"}
    idle = cases.pop("no load")["median"]
    assert idle["kills"] == 2 and "tasks" not in idle
    _check_latency(idle["activated_us"])
    _check_latency(idle["detected_us"])
    assert idle["detected_us"]["p50"] <= idle["activated_us"]["p50"]
    assert "2 kills with no load, timed to the heir's activation" in stdout
    for label, case in cases.items():
        run = case["median"]
        assert case["params"]["load"] == label and case["params"]["managers"] == 3
        assert run["kills"] == run["failed_over"] == 2
        for key in ("failover_us", "detected_us", "activated_us", "call_latency_us"):
            _check_latency(run[key])
        # each heir saw the leave notice before it became active
        assert run["detected_us"]["p50"] <= run["activated_us"]["p50"]
        assert run["queued_at_kill"]["min"] > 0  # tasks waited at every kill
        tasks = run["tasks"]
        assert tasks["lost"] == tasks["ran_twice"] == tasks["errors"] == 0, tasks
        assert tasks["unanswered"] == 0
        assert tasks["submitted"] == tasks["completed"] == tasks["run"] > tasks["measured"] > 0
        if label == "detached":
            assert tasks["acked"] == tasks["run"] and tasks["answered_twice"] == 0
        assert run["tasks_per_s"] > 0
        cpu = run["cpu_s"]
        assert set(cpu) == {"daemon", "manager", "standbys", "workers", "senders", "other"}
        assert cpu["manager"] is not None and cpu["standbys"] is not None
    assert "assigned again after 2/2 kills" in stdout

    detached = results["detached"]["cases"]
    assert set(detached) == set(DETACHED_CASES)
    for label, (journaled, standby, window) in DETACHED_CASES.items():
        run = detached[label]["median"]
        assert detached[label]["params"]["managers"] == (2 if standby else 1)
        assert detached[label]["params"]["window"] == window
        tasks = run["tasks"]
        assert tasks["errors"] == tasks["lost"] == 0, (label, run["errors"])
        assert tasks["submitted"] == tasks["completed"] >= tasks["measured"] > 0
        assert run["acks_per_s"] > 0
        _check_latency(run["latency_us"])
        # W=256 ran first: this case's manager holds the tasks of both (no worker)
        earlier = detached[label.replace("W=1", "W=256")]["median"] if window == 1 else None
        assert run["queued_after"] == tasks["completed"] + (
            earlier["tasks"]["completed"] if earlier else 0
        )
        assert ("standbys" in run["cpu_s"]) == standby
        if journaled:
            # every task of the run (its only one) went into the active manager's journal
            journal = run["journal"]
            assert journal["changes"] == tasks["completed"]
            assert 0 < journal["commits"] <= journal["batches"] <= journal["changes"]
            assert journal["slowest_commit_ms"] > 0
        else:
            assert "journal" not in run
    assert "acks/s" in stdout and "journal:" in stdout


def test_smoke_blocking_and_cpu_and_the_process_pool_shares_the_work(tmp_path: Path) -> None:
    """The pool phases run every case; with the process pool the CPU-bound handler runs
    in two processes that share the work about evenly, each with a GIL of its own, so
    that both cores can work. (How many cores they got depends on what else the machine
    runs: that is printed, not asserted.)"""
    _, results = _quick_bench(tmp_path, "--duration", "1", "--phase", "blocking", "--phase", "cpu")
    for phase, labels in (
        ("blocking", ("async no-op", "async sleep", "threads", "processes")),
        ("cpu", ("async no-op", "reactor", "threads", "processes")),
    ):
        cases = results[phase]["cases"]
        assert set(cases) == {f"{label} C={c}" for label in labels for c in (1, 2)}
        for case in cases.values():
            run = case["median"]
            assert run["tasks"]["errors"] == run["tasks"]["lost"] == 0
            assert run["tasks_per_s"] > 0
    processes = results["cpu"]["cases"]["processes C=2"]["median"]
    window = results["meta"]["duration_s"]
    worker_cpu = processes["cpu_s"]["workers"]
    children = processes["cpu_s_pool_children"]
    print(f"cpu phase, processes C=2: {worker_cpu / window:.2f} cores, children {children}")
    assert len(children) == 2 and None not in children, children
    # the handler's work is done in the children, not in the worker's own process ...
    assert sum(children) > 0.5 * worker_cpu, (children, worker_cpu)
    # ... and by both of them
    assert min(children) > 0.3 * sum(children), children
    assert "cpu_s_pool_children" not in results["cpu"]["cases"]["threads C=2"]["median"]


# A child of ours in miniature: ready event, one command, exit when stdin closes.
_ECHO_CHILD = """
import json, sys
print(json.dumps({"event": "ready"}), flush=True)
for line in sys.stdin:
    msg = json.loads(line)
    print(json.dumps({"id": msg["id"], "ok": True, "result": msg["x"] * 2}), flush=True)
print("bye", file=sys.stderr)
"""


def test_child_is_ready_talks_and_stops_on_eof(tmp_path: Path) -> None:
    child = Child("echo", [sys.executable, "-c", _ECHO_CHILD], tmp_path)
    assert child.wait_ready(timeout=30) == {"event": "ready"}
    assert child.request("double", x=21) == 42
    child.stop(timeout=30)
    assert child.returncode == 0  # it left on EOF: a signal would show as negative
    assert "bye" in (tmp_path / "echo.log").read_text()


# Ignores SIGTERM and stdin; says so (atomically, like the daemon) in the file argv[1].
_STUBBORN_CHILD = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write("%d\\n" % os.getpid())
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(60)
"""


def test_child_with_a_ready_file_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    ready = tmp_path / "stubborn.ready"
    ready.write_text("stale\n")  # a killed run's file must not count
    argv = [sys.executable, "-c", _STUBBORN_CHILD, str(ready)]
    child = Child("stubborn", argv, tmp_path, channel=False, ready_file=ready)
    assert child.wait_ready(timeout=30) == {"text": str(child.pid)}
    child.finish(time.monotonic(), grace=0.2)
    assert child.returncode == -signal.SIGKILL


def test_child_that_exits_before_it_is_ready(tmp_path: Path) -> None:
    quitter = Child("quitter", [sys.executable, "-c", "raise SystemExit('no luck')"], tmp_path)
    with pytest.raises(ChildError, match=r"exited with status 1(.|\n)*no luck"):
        quitter.wait_ready(timeout=30)
    quitter.stop(timeout=10)


def test_help_explains_the_output(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in (
        "how to read the output",
        "failover",
        "failover-manager",
        "--manager-kills",
        "detached",
        "--detached-window",
        "--repeat",
        "--json",
        "microseconds",
    ):
        assert word in text


# ----------------------------------------------------------------------------- pure parts


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 1) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(values, 0)


def test_latency_summary_in_microseconds() -> None:
    summary = latency_summary([3000, 1000, 2000])
    assert summary["p50"] == 2.0 and summary["max"] == 3.0 and summary["min"] == 1.0
    assert summary["mean"] == 2.0 and summary["count"] == 3
    with pytest.raises(ValueError):
        latency_summary([])


def test_spread_summary() -> None:
    even = spread_summary([10, 10, 10])
    assert even["within_2x"] and even["min_over_mean"] == even["max_over_mean"] == 1.0
    skewed = spread_summary([1, 10, 19])
    assert not skewed["within_2x"] and skewed["min"] == 1 and skewed["max"] == 19
    assert not spread_summary([0, 0])["within_2x"]


def test_median_of_runs_merges_nested_numbers() -> None:
    runs = [
        {"rate": 1.0, "n": 1, "lat": {"p50": 5.0}, "ok": True, "cpu": None, "name": "a"},
        {"rate": 3.0, "n": 4, "lat": {"p50": 1.0}, "ok": False, "cpu": 1.0, "name": "b"},
        {"rate": 2.0, "n": 2, "lat": {"p50": 3.0}, "ok": True, "cpu": 2.0, "name": "c"},
    ]
    med = median_of_runs(runs)
    assert med == {"rate": 2.0, "n": 2, "lat": {"p50": 3.0}, "ok": False, "cpu": None, "name": "a"}
    assert median_of_runs(runs[:2])["n"] == 1  # the lower median: a count some run saw
    assert median_of_runs(runs[:2])["rate"] == 2.0


@pytest.mark.parametrize("size", [2, 100, 257, 259, 10_000, 65_538, 100_000, 140_000])
def test_payload_of_serializes_to_the_size(size: int) -> None:
    assert len(msgpack.packb(payload_of(size), use_bin_type=True)) == size


class _Echoes:
    """A PingLoop on a fake clock, whose echoes come when the test says."""

    def __init__(self, t0_ns: int, t1_ns: int, timeout: float = 10.0) -> None:
        self.clock = Clock()
        self.sent = 0
        self.result: list[dict[str, Any]] = []
        self.loop = PingLoop(
            self.clock, self._send, t0_ns, t1_ns, timeout=timeout, clock=self.now_ns
        )
        self.loop.run().addCallback(self.result.append)

    def now_ns(self) -> int:
        return round(self.clock.seconds() * 1e9)

    def _send(self) -> None:
        self.sent += 1

    def echo_after(self, ns: int) -> None:
        self.clock.advance(ns / 1e9)
        self.loop.answered()


def test_ping_loop_counts_a_round_trip_by_the_arrival_of_its_echo() -> None:
    # Window [1000, 2000) ns. The floor used to count by send time and the Spread
    # ping-pong by arrival; both now count by arrival, the rule of every other rate.
    pings = _Echoes(t0_ns=1000, t1_ns=2000)
    pings.echo_after(600)  # sent at 0, back at 600: warm-up
    pings.echo_after(600)  # sent at 600 (before t0), back at 1200: counts, 600 ns
    pings.echo_after(300)  # sent at 1200, back at 1500: counts, 300 ns
    assert pings.result == []
    pings.echo_after(700)  # sent at 1500 (inside), back at 2200 (after t1): does not count
    assert pings.result == [{"latencies_ns": [600, 300], "lost": 0}]
    assert pings.sent == 4  # no ping after the one answered past t1


def test_ping_loop_reports_an_echo_that_never_came() -> None:
    pings = _Echoes(t0_ns=0, t1_ns=1000, timeout=5.0)
    pings.echo_after(400)
    pings.clock.advance(5.001)  # past t1 + timeout, and the echo is still missing
    assert pings.result == [{"latencies_ns": [400], "lost": 1}]
    pings.loop.answered()  # too late: changes nothing
    assert pings.result == [{"latencies_ns": [400], "lost": 1}]

    cut = _Echoes(t0_ns=0, t1_ns=1000)
    cut.loop.lost()  # the transport is gone
    assert cut.result == [{"latencies_ns": [], "lost": 1}]
    assert not cut.clock.getDelayedCalls()  # and the deadline is cancelled


def test_procstat_reads_this_process() -> None:
    assert cpu_seconds(os.getpid()) > 0
    assert rss_bytes(os.getpid()) > 1_000_000


def test_profile_summary(tmp_path: Path) -> None:
    path = tmp_path / "manager.txt"
    path.write_text(
        "<module> (a.py:1);run (b.py:5);decode (wire.py:9) 30\n<module> (a.py:1);run (b.py:5) 10\n"
    )
    assert load_stacks(path) == [
        (["<module> (a.py:1)", "run (b.py:5)", "decode (wire.py:9)"], 30),
        (["<module> (a.py:1)", "run (b.py:5)"], 10),
    ]
    text = summarise(path)
    assert "40 samples" in text
    assert "75.0%  decode (wire.py:9)" in text
    assert "100.0%  run (b.py:5)" in text


def test_report_formats_every_kind_of_phase() -> None:
    lat = {"p50": 100.0, "p90": 150.0, "p99": 300.0, "max": 900.0}
    tasks = {"submitted": 10, "completed": 10, "errors": 0, "lost": 0, "measured": 8}
    cpu = {"daemon": 0.5, "manager": 0.4, "workers": 0.3, "senders": 0.2}

    def case(run: dict[str, Any]) -> dict[str, Any]:
        return {"params": {}, "median": run, "runs": [run]}

    results = {
        "raw": {
            "cases": {
                "ping-pong": case(
                    {"round_trips_per_s": 5000.0, "latency_us": lat, "lost": 0, "cpu_s": cpu}
                ),
                "relay": case({"messages_per_s": 9e4, "sent": 5, "received": 5, "lost": 0}),
                "floor": case(
                    {"round_trips_per_s": 8000.0, "latency_us": {**lat, "p50": 60.0}, "lost": 0}
                ),
            }
        },
        "seq": {"cases": {"C=1": case({"tasks_per_s": 2500.0, "latency_us": lat, "tasks": tasks})}},
        "failover": {"error": "boom\nmore"},
        "memory": {
            "cases": {
                "10 tasks": case(
                    {
                        "submits_per_s": 1e4,
                        "bytes_per_task": 400.0,
                        "rss_before_bytes": 1e6,
                        "rss_after_bytes": 2e6,
                        "tasks_queued": 10,
                    }
                )
            }
        },
    }
    results["asyncio"] = {
        "cases": {
            "twisted C=1": case({"tasks_per_s": 2000.0, "latency_us": lat, "tasks": tasks}),
            "uvloop C=1": case({"tasks_per_s": 2100.0, "latency_us": lat, "tasks": tasks}),
        },
        "ratios": {"uvloop C=1": {"rate": 1.05, "sender_cpu_per_task": 0.9}},
    }
    results["failover-manager"] = {
        "cases": {
            "rpc": case(
                {
                    "tasks_per_s": 1000.0,
                    "failover_us": {**lat, "p50": 7000.0},
                    "detected_us": {**lat, "p50": 5000.0},
                    "activated_us": {**lat, "p50": 6000.0},
                    "kills": 10,
                    "failed_over": 10,
                    "queued_at_kill": {"min": 60, "max": 70},
                    "tasks": {**tasks, "ran_twice": 1},
                    "cpu_s": {**cpu, "standbys": 0.6},
                }
            )
        }
    }
    results["failover-manager"]["cases"]["no load"] = case(
        {"kills": 10, "detected_us": {**lat, "p50": 4000.0}, "activated_us": {**lat, "p50": 4500.0}}
    )
    results["detached"] = {
        "cases": {
            "journal full, +1 standby": case(
                {
                    "acks_per_s": 12000.0,
                    "latency_us": lat,
                    "tasks": tasks,
                    "queued_after": 30000,
                    "journal": {
                        "commits": 40,
                        "batches": 50,
                        "changes": 10240,
                        "changes_per_commit": 256.0,
                        "slowest_commit_ms": 21.5,
                    },
                }
            )
        }
    }
    text = format_report(results, {"repeat": 1})
    assert "7,000" in text and "RAN TWICE 1" in text and "assigned again after 10/10 kills" in text
    assert "5,000 us to the leave notice at the heir, 6,000 us to its activation" in text
    assert "60-70 queued at the kills" in text and "standbys" in text
    assert "4,500" in text and "10 kills with no load" in text
    assert "12,000 acks/s" in text and "30,000 queued after" in text
    assert "journal: 40 commits (of 50 turns' batches) of 256.0 changes, slowest 21.5 ms" in text
    skipped = format_report({"failover-manager": {"skipped": "not here\nwhy"}}, {"repeat": 1})
    assert "skipped" in skipped and "not here" in skipped and "why" not in skipped
    assert "uvloop C=1: rate 1.05x, sender CPU per task 0.90x" in text
    assert "2,500 rpc/s" in text and "5,000 rt/s" in text and "90,000 msg/s" in text
    assert "ERROR" in text and "boom" in text and "400 B/task" in text
    assert "seq p50 is 1.0x the ping-pong's" in text
    assert "8,000 rt/s" in text
    assert "Spread adds 40 us, the queue 0 us more" in text
