"""The benchmark's phases: what each one starts, drives, measures and reports.

Every phase returns ``{"description": ..., "cases": {label: case}}`` where a case is
``{"params": {...}, "median": run, "runs": [run, ...]}`` and each run holds only
numbers that run measured: rates per second over the measured window, latencies in
microseconds, CPU seconds of each role over the window (``cpu_s``; ``cpu_system_s`` is the part
spent in the kernel, where loopback TCP is charged to the sending process; ``None``
where the process is not ours to see, e.g. an external daemon; ``other`` is the CPU
the rest of the machine used meanwhile: how quiet it was), task counts.

Timing: each run gets an absolute monotonic window ``[t0, t1)`` that all processes
agree on (:mod:`.measure`). The phases of replicated managers (``failover-manager``,
``detached``) are in :mod:`.replicas`.
"""

from __future__ import annotations

import importlib.util
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from .cluster import Cluster
from .floor import FloorProcesses
from .measure import ARGS_BYTES, RoleCpu, load_totals, repeat, samples_over, window
from .measure import CpuSample as _CpuSample
from .measure import case as _case
from .measure import cpu_over as _cpu_over
from .measure import per as _per
from .measure import phase as _phase
from .measure import seconds_left as _seconds_left
from .procs import Child, ChildError
from .procstat import rss_bytes
from .profiling import PySpy
from .replicas import phase_detached, phase_failover_manager
from .stats import latency_summary, spread_summary

__all__ = ["PHASES", "Settings"]

#: Relay pacing: the receiver acknowledges every ACK_EVERY messages; the sender stays
#: at most WINDOW messages ahead of the last acknowledgement (daemon limit: 1000).
RELAY_ACK_EVERY = 100
RELAY_WINDOW = 500
#: Pause before each kill of the failover phase.
KILL_SPACING_S = 0.02
#: The floor's message: about what a 100-byte ping is on the wire with Spread's header.
FLOOR_BYTES = 150


@dataclass(frozen=True)
class Settings:
    """What to run and for how long (``quick()`` for a short smoke run)."""

    warmup: float = 0.5
    duration: float = 2.0
    repeat: int = 1
    concurrency: int = 1
    pipelined: tuple[int, ...] = (1, 10, 100)
    payloads: tuple[int, ...] = (100, 10_000, 100_000)
    payload_inflight: int = 10
    senders: tuple[int, ...] = (1, 4, 16)
    fanin_workers: int = 4
    worker_counts: tuple[int, ...] = (1, 2, 4, 8, 16, 64)
    workers_inflight: int = 100
    pool_concurrency: tuple[int, ...] = (1, 2, 4, 8)
    asyncio_inflight: tuple[int, ...] = (1, 100)
    kills: int = 20
    memory_tasks: int = 100_000
    #: failover-manager: active managers killed per run, managers kept running, workers,
    #: tasks kept unfinished (more than the workers hold, so that some wait queued)
    manager_kills: int = 10
    managers: int = 3
    failover_workers: int = 2
    failover_inflight: int = 100
    #: detached: each sender keeps W enqueues unacknowledged, for each W here
    detached_senders: int = 1
    detached_windows: tuple[int, ...] = (256, 1)
    profile: PySpy | None = None

    def quick(self) -> Settings:
        """The same, shortened for a smoke test (seconds, not a minute)."""
        return replace(
            self,
            warmup=0.2,
            duration=0.5,
            senders=(1, 4),
            worker_counts=(1, 2, 4),
            pool_concurrency=(1, 2),
            kills=3,
            memory_tasks=10_000,
            manager_kills=3,
        )


# --------------------------------------------------------------------------- helpers


def _window(s: Settings) -> tuple[int, int]:
    return window(s.warmup, s.duration)


def _daemon(cluster: Cluster) -> list[int]:
    return cluster.pids()["daemon"]


def _size_label(size: int) -> str:
    if size >= 1000 and size % 1000 == 0:
        return f"{size // 1000} KB"
    return f"{size} B"


# --------------------------------------------------------------------------- queue runs


def _queue_run(
    cluster: Cluster,
    s: Settings,
    senders: Sequence[Child],
    workers: Sequence[Child],
    *,
    inflight: int,
    payload: int = ARGS_BYTES,
    profile: PySpy | None = None,
    func: str = "noop",
) -> dict[str, Any]:
    """One measured run: every sender keeps ``inflight`` calls of ``func`` (the no-op
    by default) going. The CPU of the workers' handler processes counts as theirs."""
    t0, t1 = _window(s)
    window_ids = [(w, w.send("window", t0_ns=t0, t1_ns=t1)) for w in workers]
    for w, ident in window_ids:
        w.reply(ident)
    load_ids = [
        (
            snd,
            snd.send("load", func=func, payload=payload, inflight=inflight, t0_ns=t0, t1_ns=t1),
        )
        for snd in senders
    ]
    if profile is not None:
        targets = {
            "daemon": _daemon(cluster),  # none when the daemon is external
            "manager": cluster.pids()["manager"],
            "worker": [workers[0].pid],
            "sender": [senders[0].pid],
        }
        profile.start({k: v[0] for k, v in targets.items() if v}, _seconds_left(t1))
    pids = cluster.pids()
    children = [c for w in workers for c in w.request("stats")["children"]]
    pids["workers"] += children
    before, after = samples_over(pids, t0, t1)
    cpu, cpu_system = before.until(after)
    loads = [snd.reply(ident, timeout=_seconds_left(t1) + 60.0) for snd, ident in load_ids]
    if profile is not None:
        profile.finish()
    wstats = [w.request("stats") for w in workers]

    totals = load_totals(loads)
    measured = totals["tasks"]["measured"]
    run: dict[str, Any] = {
        "tasks_per_s": measured / ((t1 - t0) / 1e9),
        **totals,
        "late_senders": sum(1 for r in loads if r["started_ns"] > t0),
        "cpu_s": cpu,
        "cpu_system_s": cpu_system,
        "cpu_us_per_task": _per(cpu, measured),
        "per_worker": spread_summary([w["in_window"] for w in wstats]),
    }
    if children:
        # each handler process's own share: how evenly a process pool used its children
        run["cpu_s_pool_children"] = [before.of(after, c) for c in children]
    if len(senders) > 1:
        run["worst_sender_p99_us"] = max(
            latency_summary(r["latencies_ns"])["p99"] for r in loads if r["latencies_ns"]
        )
    return run


def _repeat(
    s: Settings, once: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any
) -> list[dict[str, Any]]:
    """``once(*args, **kwargs)`` run ``s.repeat`` times."""
    return repeat(s.repeat, once, *args, **kwargs)


def phase_seq(cluster: Cluster, s: Settings) -> dict[str, Any]:
    """One sender, one worker, sequential rpc of a no-op handler."""
    workers, senders = cluster.workers_of(1), cluster.senders_of(1)
    runs = _repeat(s, _queue_run, cluster, s, senders, workers, inflight=1)
    params = {"inflight": 1, "workers": 1, "senders": 1, "payload_bytes": ARGS_BYTES}
    case = _case(params, runs)
    _add_profiled_run(cluster, s, "seq", case, senders, workers, inflight=1)
    return _phase(
        "sequential rpc of a no-op handler, 100-byte args, 1 sender, 1 worker", {"C=1": case}
    )


def _add_profiled_run(
    cluster: Cluster,
    s: Settings,
    phase: str,
    case: dict[str, Any],
    senders: Sequence[Child],
    workers: Sequence[Child],
    *,
    inflight: int,
) -> None:
    """With --profile, one extra run of ``case`` under py-spy, its files in DIR/<phase>/.

    Its numbers are shown apart (``profiled_run``), never in the median.
    """
    if s.profile is None:
        return
    profile = s.profile.within(phase)
    case["profiled_run"] = _queue_run(
        cluster, s, senders, workers, inflight=inflight, profile=profile
    )
    case["profile_dir"] = str(profile.outdir)


def phase_pipelined(cluster: Cluster, s: Settings) -> dict[str, Any]:
    """One sender with C calls in flight, one worker."""
    workers, senders = cluster.workers_of(1), cluster.senders_of(1)
    cases: dict[str, Any] = {}
    for c in s.pipelined:
        runs = _repeat(s, _queue_run, cluster, s, senders, workers, inflight=c)
        params = {"inflight": c, "workers": 1, "senders": 1, "payload_bytes": ARGS_BYTES}
        case = _case(params, runs)
        if c == max(s.pipelined):
            _add_profiled_run(cluster, s, "pipelined", case, senders, workers, inflight=c)
        cases[f"C={c}"] = case
    return _phase("one sender keeping C no-op calls in flight, 1 worker", cases)


def phase_payload(cluster: Cluster, s: Settings) -> dict[str, Any]:
    """Bigger arguments: tasks/s and MB/s of arguments carried."""
    workers, senders = cluster.workers_of(1), cluster.senders_of(1)
    cases: dict[str, Any] = {}
    for size in s.payloads:
        runs = _repeat(
            s, _queue_run, cluster, s, senders, workers, inflight=s.payload_inflight, payload=size
        )
        for run in runs:
            run["mb_per_s"] = run["tasks_per_s"] * size / 1e6
        params = {"inflight": s.payload_inflight, "workers": 1, "senders": 1, "payload_bytes": size}
        cases[_size_label(size)] = _case(params, runs)
    return _phase(
        f"no-op calls with bigger args ({s.payload_inflight} in flight, 1 worker); MB/s counts "
        "the serialized arguments",
        cases,
    )


def phase_fanin(cluster: Cluster, s: Settings) -> dict[str, Any]:
    """S sender processes at once, each making sequential calls."""
    workers = cluster.workers_of(s.fanin_workers)
    cases: dict[str, Any] = {}
    for count in s.senders:
        senders = cluster.senders_of(count)
        runs = _repeat(s, _queue_run, cluster, s, senders, workers, inflight=1)
        params = {
            "inflight": 1,
            "workers": s.fanin_workers,
            "senders": count,
            "payload_bytes": ARGS_BYTES,
        }
        case = _case(params, runs)
        if count == max(s.senders):
            _add_profiled_run(cluster, s, "fanin", case, senders, workers, inflight=1)
        cases[f"S={count}"] = case
    cluster.senders_of(1)
    return _phase(
        f"S sender processes at once, each making sequential rpc calls; {s.fanin_workers} workers",
        cases,
    )


def phase_workers(cluster: Cluster, s: Settings) -> dict[str, Any]:
    """W workers sharing one sender's calls: throughput and fairness."""
    senders = cluster.senders_of(1)
    cases: dict[str, Any] = {}
    for count in s.worker_counts:
        workers = cluster.workers_of(count)
        runs = _repeat(s, _queue_run, cluster, s, senders, workers, inflight=s.workers_inflight)
        params = {
            "inflight": s.workers_inflight,
            "workers": count,
            "senders": 1,
            "payload_bytes": ARGS_BYTES,
        }
        cases[f"W={count}"] = _case(params, runs)
    extra: dict[str, Any] = {}
    most = max(s.worker_counts)
    if "W=4" in cases and most != 4:
        extra[f"rate_w{most}_over_w4"] = (
            cases[f"W={most}"]["median"]["tasks_per_s"] / cases["W=4"]["median"]["tasks_per_s"]
        )
    return _phase(
        f"one sender keeping {s.workers_inflight} no-op calls in flight over W workers; "
        "per_worker counts the tasks each worker completed in the window",
        cases,
        **extra,
    )


# --------------------------------------------------------------------------- pools

#: The blocking phase's cases: label -> (the worker's --pool, the function called).
BLOCKING_CASES: dict[str, tuple[str, str]] = {
    "async no-op": ("reactor", "noop"),
    "async sleep": ("reactor", "block_async"),
    "threads": ("threads", "block"),
    "processes": ("processes", "block"),
}
#: The cpu phase's cases (on the reactor, the work runs inline: one core at most).
CPU_CASES: dict[str, tuple[str, str]] = {
    "async no-op": ("reactor", "noop"),
    "reactor": ("reactor", "spin"),
    "threads": ("threads", "spin"),
    "processes": ("processes", "spin"),
}


def _pool_phase(
    cluster: Cluster, s: Settings, cases_of: Mapping[str, tuple[str, str]], description: str
) -> dict[str, Any]:
    """For each concurrency C and each case: one worker with that pool and C, one sender
    keeping 2 C calls in flight (every slot busy, the next call already there)."""
    senders = cluster.senders_of(1)
    cluster.workers_of(0)  # the pool's workers have the default pool and concurrency
    cases: dict[str, Any] = {}
    try:
        for c in s.pool_concurrency:
            for label, (pool, func) in cases_of.items():
                (worker,) = cluster.start_agents(
                    "worker", 1, "--concurrency", str(c), "--pool", pool
                )
                cluster.workers = [worker]
                cluster.wait_registered()
                try:
                    runs = _repeat(
                        s, _queue_run, cluster, s, senders, [worker], inflight=2 * c, func=func
                    )
                finally:
                    cluster.workers = []
                    cluster.retire([worker])
                params = {"pool": pool, "func": func, "concurrency": c, "inflight": 2 * c}
                cases[f"{label} C={c}"] = _case(params, runs)
    finally:
        cluster.workers = []
        cluster.wait_registered()
    return _phase(description, cases)


def phase_blocking(cluster: Cluster, s: Settings) -> dict[str, Any]:
    """A handler that blocks 1 ms (time.sleep), per pool and concurrency."""
    return _pool_phase(
        cluster,
        s,
        BLOCKING_CASES,
        "a handler blocking 1 ms (time.sleep; 'async sleep' waits 1 ms on the reactor), "
        "one worker with C slots in each pool, one sender keeping 2 C calls in flight",
    )


def phase_cpu(cluster: Cluster, s: Settings) -> dict[str, Any]:
    """A handler of about 1 ms of pure-Python work, per pool and concurrency."""
    return _pool_phase(
        cluster,
        s,
        CPU_CASES,
        "a handler of about 1 ms of pure-Python CPU work, one worker with C slots in each "
        "pool, one sender keeping 2 C calls in flight; the workers' CPU includes their "
        "handler processes",
    )


# --------------------------------------------------------------------------- asyncio

#: The senders of the asyncio phase, in the order each round runs them.
SENDER_KINDS: Final = ("twisted", "asyncio", "uvloop")


def _has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def phase_asyncio(cluster: Cluster, s: Settings) -> dict[str, Any]:
    """The asyncio sender (:mod:`spreadqueue.aio`, on asyncio and on uvloop) beside the
    Twisted one: the same worker and manager, the sender processes taking turns."""
    workers = cluster.workers_of(1)
    kinds = [k for k in SENDER_KINDS if k != "uvloop" or _has_uvloop()]
    senders = {"twisted": cluster.senders_of(1)[0]}
    pool = cluster.senders
    extra = [k for k in kinds if k != "twisted"]
    for kind in extra:
        senders[kind] = cluster.spawn("aio-sender", "--loop", kind)
    for kind in extra:
        senders[kind].wait_ready()
    cases: dict[str, Any] = {}
    try:
        for c in s.asyncio_inflight:
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
            for _ in range(s.repeat):
                for kind in kinds:  # alternating: each round runs every sender once
                    cluster.senders = [senders[kind]]  # its CPU is the senders'
                    runs[kind].append(_queue_run(cluster, s, [senders[kind]], workers, inflight=c))
            for kind in kinds:
                params = {"sender": kind, "inflight": c, "workers": 1, "payload_bytes": ARGS_BYTES}
                cases[f"{kind} C={c}"] = _case(params, runs[kind])
    finally:
        cluster.senders = pool
        cluster.retire([senders[k] for k in extra])
    return _phase(
        "the asyncio sender (spreadqueue.aio; each call a coroutine awaiting rpc) on asyncio "
        "and on uvloop beside the Twisted sender, C calls in flight, 1 worker; the senders "
        "take turns, so ratios within one run compare like with like"
        + ("" if "uvloop" in kinds else " (uvloop is not installed: pip install uvloop)"),
        cases,
        ratios=_asyncio_ratios(cases, s.asyncio_inflight, kinds),
    )


def _asyncio_ratios(
    cases: Mapping[str, Any], inflight: Sequence[int], kinds: Sequence[str]
) -> dict[str, dict[str, float | None]]:
    """Per C and asyncio sender: its rate and its CPU per task over the Twisted sender's."""
    ratios: dict[str, dict[str, float | None]] = {}
    for c in inflight:
        base = cases[f"twisted C={c}"]["median"]
        for kind in kinds:
            if kind == "twisted":
                continue
            run = cases[f"{kind} C={c}"]["median"]
            cpu, base_cpu = run["cpu_us_per_task"]["senders"], base["cpu_us_per_task"]["senders"]
            ratios[f"{kind} C={c}"] = {
                "rate": run["tasks_per_s"] / base["tasks_per_s"],
                "sender_cpu_per_task": cpu / base_cpu if cpu and base_cpu else None,
            }
    return ratios


# --------------------------------------------------------------------------- failover


def _about(task_id: str) -> Callable[[dict[str, Any]], bool]:
    """Matches the events about task ``task_id``."""
    return lambda event: event.get("task_id") == task_id


def _failover_run(cluster: Cluster, s: Settings) -> dict[str, Any]:
    """Victims each hold a task; kill them one by one, timing the reassignment."""
    cluster.workers_of(0)
    sender = cluster.senders_of(1)[0]
    victims = cluster.start_victims(s.kills)
    delays: list[int] = []
    try:
        cluster.wait_registered()
        sender.request("hold", count=s.kills)
        held = {id(v): v.wait_event("held", timeout=30.0)["task_id"] for v in victims}
        # The survivor starts only now: while every victim holds a task (capacity 1),
        # the survivor is the only worker with credit, so each task goes there.
        survivor = cluster.workers_of(1)[0]
        pids = {
            "daemon": _daemon(cluster),
            "manager": cluster.pids()["manager"],
            "workers": [survivor.pid],
            "senders": [sender.pid],
        }
        before = _CpuSample(pids)
        for victim in victims:
            # Kills come KILL_SPACING_S apart, so each one meets a system that has just
            # handled the previous one (as a crash under light traffic would).
            time.sleep(KILL_SPACING_S)
            task_id = held[id(victim)]
            killed_at = time.monotonic_ns()
            cluster.kill_victim(victim)  # SIGKILL; reaping it delays nothing measured
            try:
                event = survivor.wait_event("reassigned", 10.0, _about(task_id))
                delays.append(int(event["t_ns"]) - killed_at)
            except ChildError:
                pass  # counted below as not reassigned
        after = _CpuSample(pids)
        outcome = sender.request("hold_wait", timeout=90.0, wait_s=60.0)
    finally:
        for victim in victims:
            cluster.kill_victim(victim)
    if not delays:
        raise ChildError("no task was reassigned")
    cpu, cpu_system = before.until(after)
    return {
        "reassign_us": latency_summary(delays),
        "kills": s.kills,
        "reassigned": len(delays),
        "tasks": {
            "submitted": outcome["count"],
            "completed": outcome["ok"],
            "errors": sum(outcome["errors"].values()),
            "lost": outcome["count"] - outcome["ok"],
        },
        "errors": outcome["errors"],
        "lost": outcome["count"] - outcome["ok"],
        "cpu_s": cpu,
        "cpu_system_s": cpu_system,
    }


def phase_failover(cluster: Cluster, s: Settings) -> dict[str, Any]:
    """SIGKILL of workers holding tasks: time to reassignment, tasks lost."""
    runs = _repeat(s, _failover_run, cluster, s)
    return _phase(
        f"workers holding a task each are killed with SIGKILL, one every {KILL_SPACING_S * 1000:g}"
        " ms; reassign_us = from the kill (parent's monotonic clock) to the task's arrival, "
        "attempt 2, at the surviving worker; lost = tasks whose sender got no result",
        {f"{s.kills} kills": _case({"kills": s.kills}, runs)},
    )


# --------------------------------------------------------------------------- memory


def _memory_run(cluster: Cluster, s: Settings) -> dict[str, Any]:
    """A fresh manager of its own queue, no worker: its RSS before and after N tasks."""
    queue = f"bmem-{secrets.token_hex(4)}"
    manager = cluster.spawn("manager", queue=queue)
    sender = cluster.spawn("sender", queue=queue)
    try:
        manager.wait_ready()
        sender.wait_ready()
        time.sleep(0.2)  # let start-up work finish
        pids = {"daemon": _daemon(cluster), "manager": [manager.pid], "senders": [sender.pid]}
        rss_before = rss_bytes(manager.pid)
        before = _CpuSample(pids)
        started = time.monotonic()
        sender.request("flood", count=s.memory_tasks, payload=ARGS_BYTES, timeout=120.0)
        while True:
            stats = manager.request("stats")
            if stats["queued"] >= s.memory_tasks:
                break
            if time.monotonic() - started > 300:
                raise ChildError(f"only {stats['queued']} of {s.memory_tasks} tasks queued")
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        rss_after = rss_bytes(manager.pid)
        cpu, cpu_system = before.until(_CpuSample(pids))
    finally:
        # The sender's end makes the manager drop its queued tasks; no need to cancel.
        cluster.kill([sender, manager])
    return {
        "tasks_queued": stats["queued"],
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "bytes_per_task": (rss_after - rss_before) / s.memory_tasks,
        "submits_per_s": s.memory_tasks / elapsed,
        "queue_full": stats["queue_full"],
        "cpu_s": cpu,
        "cpu_system_s": cpu_system,
    }


def phase_memory(cluster: Cluster, s: Settings) -> dict[str, Any]:
    """Manager memory per queued task."""
    runs = _repeat(s, _memory_run, cluster, s)
    return _phase(
        f"a fresh manager with no worker; one sender submits {s.memory_tasks:,} tasks of "
        "100-byte args (paced by its window of unacknowledged submits); bytes_per_task = "
        "growth of the manager's VmRSS / tasks; submits_per_s = tasks / time until all "
        "were queued",
        {f"{s.memory_tasks:,} tasks": _case({"tasks": s.memory_tasks}, runs)},
    )


# --------------------------------------------------------------------------- raw Spread


def _ping_run(
    pinger: Child, pids: Mapping[str, Sequence[int]], s: Settings, **args: Any
) -> dict[str, Any]:
    """One ping-pong window of ``pinger`` (a raw agent or the floor's pinger, both
    counting by :class:`~spreadqueue._bench.pingloop.PingLoop`); ``args`` go with
    its ``ping`` command."""
    t0, t1 = _window(s)
    ident = pinger.send("ping", t0_ns=t0, t1_ns=t1, **args)
    cpu, cpu_system = _cpu_over(pids, t0, t1)
    result = pinger.reply(ident, timeout=_seconds_left(t1) + 30.0)
    return _round_trips(result, cpu, cpu_system, t0, t1)


def _round_trips(
    result: Mapping[str, Any], cpu: RoleCpu, cpu_system: RoleCpu, t0: int, t1: int
) -> dict[str, Any]:
    """A ping-pong run from the pinger's ``{"latencies_ns", "lost"}`` and the CPU."""
    latencies = result["latencies_ns"]
    if not latencies:
        raise ChildError("no round trip completed in the measured window")
    return {
        "round_trips_per_s": len(latencies) / ((t1 - t0) / 1e9),
        "latency_us": latency_summary(latencies),
        "lost": result["lost"],
        "cpu_s": cpu,
        "cpu_system_s": cpu_system,
        "cpu_us_per_round_trip": _per(cpu, len(latencies)),
    }


def _relay_run(
    pids: Mapping[str, Sequence[int]], s: Settings, a: Child, b: Child
) -> dict[str, Any]:
    """One relay window: ``a`` streams to ``b``, counted at ``b``."""
    t0, t1 = _window(s)
    b.request("relay_receive", ack_every=RELAY_ACK_EVERY, t0_ns=t0, t1_ns=t1)
    peer = b.ready["private_group"]
    ident = a.send("relay_send", peer=peer, size=ARGS_BYTES, window=RELAY_WINDOW, t1_ns=t1)
    cpu, cpu_system = _cpu_over(pids, t0, t1)
    sent = a.reply(ident, timeout=_seconds_left(t1) + 30.0)["sent"]
    deadline = time.monotonic() + 10.0
    while True:  # the last messages arrive just after t1
        stats = b.request("relay_stats")
        if stats["received"] >= sent or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return {
        "messages_per_s": stats["in_window"] / ((t1 - t0) / 1e9),
        "sent": sent,
        "received": stats["received"],
        "lost": sent - stats["received"],
        "cpu_s": cpu,
        "cpu_system_s": cpu_system,
        "cpu_us_per_message": _per(cpu, stats["in_window"]),
    }


def phase_raw(cluster: Cluster, s: Settings) -> dict[str, Any]:
    """Plain Spread between two sessions: ping-pong latency and the relay rate; and
    the floor under it: the same round trip through bare Twisted processes."""
    a, b = cluster.start_agents("raw", 2)
    try:
        b.request("echo")
        pids = {"daemon": _daemon(cluster), "clients": [a.pid, b.pid]}
        peer = b.ready["private_group"]
        pings = _repeat(s, _ping_run, a, pids, s, peer=peer, size=ARGS_BYTES)
        relays = _repeat(s, _relay_run, pids, s, a, b)
    finally:
        cluster.retire([a, b])
    floor = FloorProcesses(cluster.workdir)
    try:
        floors = _repeat(s, _ping_run, floor.pinger, floor.pids, s, size=FLOOR_BYTES)
    finally:
        floor.stop()
    return _phase(
        "two plain Spread sessions through the same daemon, no queue, 100-byte AGREED "
        f"messages; relay: one sender to one receiver, paced by the receiver's "
        f"acknowledgement every {RELAY_ACK_EVERY} messages (at most {RELAY_WINDOW} beyond "
        "it), rate counted at the receiver; floor: the ping-pong's wake-ups with no Spread, "
        f"{FLOOR_BYTES} bytes through a bare Twisted relay to a bare Twisted echoer",
        {
            "ping-pong": _case({"size": ARGS_BYTES}, pings),
            "relay": _case(
                {"size": ARGS_BYTES, "ack_every": RELAY_ACK_EVERY, "window": RELAY_WINDOW},
                relays,
            ),
            "floor": _case({"size": FLOOR_BYTES}, floors),
        },
    )


#: Every phase in the order they run (whatever order they are asked for in).
PHASES: dict[str, Callable[[Cluster, Settings], dict[str, Any]]] = {
    "raw": phase_raw,
    "seq": phase_seq,
    "pipelined": phase_pipelined,
    "payload": phase_payload,
    "fanin": phase_fanin,
    "workers": phase_workers,
    "asyncio": phase_asyncio,
    "blocking": phase_blocking,
    "cpu": phase_cpu,
    "failover": phase_failover,
    "failover-manager": phase_failover_manager,
    "detached": phase_detached,
    "memory": phase_memory,
}
