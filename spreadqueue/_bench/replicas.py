"""The phases of replicated managers: ``failover-manager`` and ``detached``.

Each run starts its own queue and its own managers (separate processes on the cluster's
daemon), so that killing them, or filling their queues and journals, touches nothing
the other phases use.

- ``failover-manager``: several managers of one queue (one active, the others hot
  standbys), workers and a sender keeping more tasks unfinished than the workers hold,
  so that some always wait at the manager. The active manager is killed with SIGKILL
  again and again; after each kill a new manager starts and is a synced standby before
  the next kill. Measured: from the SIGKILL (the parent's CLOCK_MONOTONIC) to the
  first ASSIGN from another manager arriving at any worker (the workers note the
  arrival on the same clock), and what the load lost or ran twice.
- ``detached``: senders enqueueing detached tasks with their window of
  acknowledgements in flight, no worker: acknowledged tasks per second and the
  acknowledgement's latency, without a journal, with ``--journal-sync full`` and
  ``normal``, with one manager and with a standby.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from .cluster import Cluster
from .measure import (
    ARGS_BYTES,
    case,
    cpu_over,
    load_totals,
    per,
    phase,
    seconds_left,
    window,
)
from .procs import Child, ChildError
from .stats import latency_summary

if TYPE_CHECKING:
    from .phases import Settings

__all__ = ["phase_detached", "phase_failover_manager"]

#: The load kinds of failover-manager: rpc calls, and detached tasks (each answering a
#: group its sender joins, so that the sender keeps a steady number unfinished).
LOAD_MODES: Final = ("rpc", "detached")
#: The case without load: for a like-for-like comparison with the failover phase.
IDLE: Final = "no load"
#: How long the load runs undisturbed after a new standby is synced, before a kill.
SETTLE_S: Final = 0.3
#: How long a kill may take to show at the workers before it counts as not failed over.
FAILOVER_DEADLINE_S: Final = 10.0
#: How often the parent asks the workers whether the next ASSIGN has come.
POLL_S: Final = 0.005
#: The journal modes of the detached phase (None: no journal).
JOURNAL_MODES: Final = (None, "full", "normal")
#: Managers of the detached phase's cases: alone, and with a standby that follows.
DETACHED_MANAGERS: Final = (1, 2)

#: Why failover-manager does not run co-located.
COLOCATE_SKIP: Final = (
    "not run with --colocate: a co-located manager holds the daemon in its process, so "
    "killing it kills the daemon and every session with it; what follows is another "
    "sqm starting the daemon and every process reconnecting (tests/test_e2e_sqm.py), "
    "not a standby taking over"
)


def _queue(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def _pids(
    cluster: Cluster, managers: Sequence[Child], **others: Sequence[Child]
) -> dict[str, list[int]]:
    """The processes of a phase by role: the cluster's daemon (none co-located: then
    the first manager holds it), the active manager, the standbys, ``others``."""
    pids = {
        "daemon": [cluster.daemon.pid] if cluster.daemon is not None else [],
        "manager": [managers[0].pid],
        **{role: [c.pid for c in children] for role, children in others.items()},
    }
    if len(managers) > 1:  # (without standbys the column stays empty)
        pids["standbys"] = [m.pid for m in managers[1:]]
    return pids


def _start(children: Sequence[Child]) -> None:
    for child in children:
        child.wait_ready()


def _wait_workers(manager: Child, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while manager.request("stats")["workers"] != count:
        if time.monotonic() > deadline:
            raise ChildError(f"the manager does not know the {count} workers in time")
        time.sleep(0.02)


# --------------------------------------------------------------------------- failover


def _first_assign(workers: Sequence[Child], after_ns: int, victim: str) -> int | None:
    """The monotonic time of the first ASSIGN that reached a worker at or after
    ``after_ns`` from a manager other than ``victim`` (None: none within the deadline).

    Once one worker has one, every worker is asked again: an earlier arrival at a
    worker asked before it came is then seen too.
    """
    deadline = time.monotonic() + FAILOVER_DEADLINE_S
    while time.monotonic() < deadline:
        if any(w.request("assigns_after", t_ns=after_ns, exclude=victim) for w in workers):
            seen = [w.request("assigns_after", t_ns=after_ns, exclude=victim) for w in workers]
            return min(int(a["t_ns"]) for a in seen if a)
        time.sleep(POLL_S)
    return None


def _merge_tallies(tallies: Sequence[dict[str, Any]]) -> Counter[str]:
    """Runs per task id over every worker."""
    runs: Counter[str] = Counter()
    for tally in tallies:
        runs.update(tally["ids"])
        for tid, n in tally["repeated"].items():
            runs[tid] += n - 1
    return runs


class _Fleet:
    """The processes of one failover-manager run: a queue's managers (oldest first:
    the first is the active one), its workers (noting ASSIGN arrivals) and a sender."""

    def __init__(self, cluster: Cluster, s: Settings) -> None:
        self.cluster = cluster
        self.queue = _queue("bfm")
        self.mine: list[Child] = []  # every process started, to stop at the end
        self.managers: list[Child] = []
        try:
            for _ in range(s.managers):  # one after the other: their age decides the heir
                self.managers.append(self.new_manager())
            if not self.managers[0].ready["active"]:
                raise ChildError("the first manager did not become active")
            self.workers = [
                self.spawn("worker", "--watch-assigns") for _ in range(s.failover_workers)
            ]
            self.sender = self.spawn("sender")
            _start([*self.workers, self.sender])
            _wait_workers(self.managers[0], len(self.workers))
        except BaseException:
            self.stop()
            raise

    def spawn(self, role: str, *args: str) -> Child:
        child = self.cluster.spawn(role, *args, queue=self.queue)
        self.mine.append(child)
        return child

    def new_manager(self) -> Child:
        """A new manager, once it is active or a synced standby."""
        manager = self.spawn("manager")
        manager.wait_ready()
        return manager

    def stop(self) -> None:
        self.cluster.retire([c for c in self.mine if c.alive()])


@dataclass
class _Kills:
    """What the kills of one run showed, in nanoseconds from each kill."""

    failovers: list[int] = field(default_factory=list)  # to the next ASSIGN at a worker
    detections: list[int] = field(default_factory=list)  # to the leave notice at the heir
    activations: list[int] = field(default_factory=list)  # to the heir's activation
    queued: list[int] = field(default_factory=list)  # tasks waiting just before


def _kill_active(fleet: _Fleet, s: Settings, *, assigned: bool) -> _Kills:
    """Kill the active manager ``s.manager_kills`` times, each time once a new manager
    is a synced standby; with ``assigned``, wait for the next assignment each time."""
    managers, kills = fleet.managers, _Kills()
    for _ in range(s.manager_kills):
        time.sleep(SETTLE_S)
        kills.queued.append(managers[0].request("stats")["queued"])
        victim, heir = managers.pop(0), managers[0]
        killed_at = time.monotonic_ns()
        fleet.cluster.kill([victim])  # SIGKILL; reaping it delays nothing measured
        activated = heir.wait_event("activated", FAILOVER_DEADLINE_S)
        kills.activations.append(int(activated["t_ns"]) - killed_at)
        kills.detections.append(int(activated["notice_ns"]) - killed_at)
        if assigned:
            first = _first_assign(fleet.workers, killed_at, victim.ready["private_group"])
            if first is not None:
                kills.failovers.append(first - killed_at)
        managers.append(fleet.new_manager())  # a synced standby again before the next kill
    return kills


def _idle_run(fleet: _Fleet, s: Settings) -> dict[str, Any]:
    """No load: the kills as the failover phase's, of idle processes."""
    kills = _kill_active(fleet, s, assigned=False)
    return {
        "detected_us": latency_summary(kills.detections),
        "activated_us": latency_summary(kills.activations),
        "kills": s.manager_kills,
    }


def _failover_manager_run(fleet: _Fleet, s: Settings, mode: str) -> dict[str, Any]:
    """Under a ``mode`` load, kill the active manager ``s.manager_kills`` times."""
    managers, workers, sender = fleet.managers, fleet.workers, fleet.sender
    # The load runs until the last kill; [t0, t1) is its steady window, with every
    # manager running, for the rate and the CPU.
    t0, t1 = window(s.warmup, s.duration)
    load = sender.send(
        "load",
        func="work",
        payload=ARGS_BYTES,
        inflight=s.failover_inflight,
        t0_ns=t0,
        t1_ns=t1,
        end_ns=t1 + int(3600e9),
        mode=mode,
    )
    pids = _pids(fleet.cluster, managers, workers=workers, senders=[sender])
    cpu, cpu_system = cpu_over(pids, t0, t1)

    kills = _kill_active(fleet, s, assigned=True)
    sender.send("load_stop")
    result = sender.reply(load, timeout=90.0)
    runs = _merge_tallies([w.request("tally") for w in workers])
    failovers = kills.failovers
    if not failovers:
        raise ChildError("no task was assigned after any kill")
    measured = len(result["latencies_ns"])
    if not measured:
        raise ChildError("no task completed in the measured window")
    tasks: dict[str, Any] = {
        "submitted": result["submitted"],
        "completed": result["completed"],
        "errors": sum(result["errors"].values()),
        "unanswered": result["lost"],
        "measured": measured,
        "run": len(runs),
        "ran_twice": sum(n - 1 for n in runs.values() if n > 1),
    }
    if mode == "detached":
        acked = set(result["acked_ids"])
        tasks["acked"] = len(acked)
        tasks["lost"] = len(acked - set(runs))  # held, and never run
        tasks["answered_twice"] = result["answered_again"]
    else:
        tasks["lost"] = result["lost"]  # no outcome at all
    return {
        "tasks_per_s": measured / ((t1 - t0) / 1e9),
        "failover_us": latency_summary(failovers),
        "detected_us": latency_summary(kills.detections),
        "activated_us": latency_summary(kills.activations),
        "call_latency_us": latency_summary(result["latencies_ns"]),
        "kills": s.manager_kills,
        "failed_over": len(failovers),
        "queued_at_kill": {"min": min(kills.queued), "max": max(kills.queued)},
        "tasks": tasks,
        "errors": result["errors"],
        "cpu_s": cpu,
        "cpu_system_s": cpu_system,
        "cpu_us_per_task": per(cpu, measured),
    }


def phase_failover_manager(cluster: Cluster, s: Settings) -> dict[str, Any]:
    """SIGKILL of the active manager, again and again: time to the next assignment."""
    description = (
        f"{s.managers} managers of a queue (one active, the others hot standbys), "
        f"{s.failover_workers} workers (1 ms tasks on the reactor, prefetching), one "
        f"sender keeping {s.failover_inflight} tasks unfinished (rpc calls, or detached "
        "tasks answering a group it joined), so that tasks wait at the manager; the "
        f"active manager is killed with SIGKILL {s.manager_kills} times, each time after "
        "a new manager has become a synced standby; failover_us = from the kill (the "
        "parent's monotonic clock) to the first ASSIGN from another manager at any "
        "worker; detected_us = to the leave notice at the heir, activated_us = to its "
        "activation; the rate and CPU are of the steady window before the first kill, "
        f"with every manager running; '{IDLE}': the same kills first, with no load (no "
        "task to assign: timed to the heir's activation), like the failover phase's "
        "kills of idle workers"
    )
    if cluster.colocate:
        return {"description": description, "skipped": COLOCATE_SKIP}
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in (IDLE, *LOAD_MODES)}
    for _ in range(s.repeat):
        fleet = _Fleet(cluster, s)
        try:  # one after the other, on the same processes
            runs[IDLE].append(_idle_run(fleet, s))
            for mode in LOAD_MODES:
                runs[mode].append(_failover_manager_run(fleet, s, mode))
        finally:
            fleet.stop()
    cases = {}
    for mode in (IDLE, *LOAD_MODES):
        params = {
            "load": mode,
            "managers": s.managers,
            "workers": s.failover_workers,
            "inflight": 0 if mode == IDLE else s.failover_inflight,
            "kills": s.manager_kills,
        }
        cases[mode] = case(params, runs[mode])
    return phase(description, cases)


# --------------------------------------------------------------------------- detached


@dataclass
class _Setup:
    """One case of the detached phase: its queue, managers (oldest first), senders."""

    journal: str | None
    manager_count: int
    queue: str
    #: the daemon of its processes (None: the cluster's; co-located: its first manager's)
    spread: str | None = None
    managers: list[Child] = field(default_factory=list)
    senders: list[Child] = field(default_factory=list)

    @property
    def label(self) -> str:
        journal = "no journal" if self.journal is None else f"journal {self.journal}"
        standbys = self.manager_count - 1
        return f"{journal}, " + (f"+{standbys} standby" if standbys else "1 manager")


def _detached_run(cluster: Cluster, s: Settings, setup: _Setup, inflight: int) -> dict[str, Any]:
    """Every sender of ``setup`` keeps ``inflight`` enqueues unacknowledged."""
    active = setup.managers[0]
    before = active.request("stats")["journal"] or {}
    t0, t1 = window(s.warmup, s.duration)
    loads = [
        (
            snd,
            snd.send(
                "load",
                func="noop",
                payload=ARGS_BYTES,
                inflight=inflight,
                t0_ns=t0,
                t1_ns=t1,
                mode="enqueue",
            ),
        )
        for snd in setup.senders
    ]
    pids = _pids(cluster, setup.managers, senders=setup.senders)
    cpu, cpu_system = cpu_over(pids, t0, t1)
    results = [snd.reply(ident, timeout=seconds_left(t1) + 60.0) for snd, ident in loads]
    stats = active.request("stats")
    after = stats["journal"] or {}
    totals = load_totals(results)
    measured = totals["tasks"]["measured"]
    run: dict[str, Any] = {
        "acks_per_s": measured / ((t1 - t0) / 1e9),
        **totals,
        # no worker: every task this case enqueued so far waits at the manager
        "queued_after": stats["queued"],
        "cpu_s": cpu,
        "cpu_system_s": cpu_system,
        "cpu_us_per_task": per(cpu, measured),
    }
    if after:
        # over the whole run (warm-up and drain too): what a commit holds
        batches = after["batches"] - before.get("batches", 0)
        commits = after.get("commits", batches) - before.get("commits", 0)
        changes = after["changes"] - before.get("changes", 0)
        run["journal"] = {
            "commits": int(commits),
            "batches": int(batches),
            "changes": int(changes),
            "changes_per_commit": changes / commits if commits else 0.0,
            "slowest_commit_ms": after["slowest_commit"] * 1000,
        }
    return run


def _start_setups(cluster: Cluster, s: Settings, setups: Sequence[_Setup]) -> None:
    """Start every case's managers and senders. A case's managers start one after the
    other (the first is the active one); the cases side by side."""
    for n in range(max(setup.manager_count for setup in setups)):
        started = []
        for setup in setups:
            if n >= setup.manager_count:
                continue
            args: list[str] = []
            if setup.journal is not None:
                path = cluster.workdir / f"{setup.queue}-{n + 1}.journal"
                args = ["--journal", str(path), "--journal-sync", setup.journal]
            if n == 0 and cluster.colocate:
                # as sqm: the manager in the process of a daemon of its own
                manager = cluster.spawn("sqm", *args, queue=setup.queue)
            else:
                manager = cluster.spawn("manager", *args, queue=setup.queue, spread=setup.spread)
            setup.managers.append(manager)
            started.append((setup, manager))
        for setup, manager in started:
            manager.wait_ready()
            if "port" in manager.ready:
                setup.spread = f"tcp:host=127.0.0.1:port={manager.ready['port']}"
    for setup in setups:
        setup.senders = [
            cluster.spawn(
                "sender",
                "--window",
                str(max(s.detached_windows)),
                queue=setup.queue,
                spread=setup.spread,
            )
            for _ in range(s.detached_senders)
        ]
    _start([snd for setup in setups for snd in setup.senders])


def phase_detached(cluster: Cluster, s: Settings) -> dict[str, Any]:
    """Detached enqueues: acknowledged tasks per second and the acknowledgement's
    latency, per journal mode, with one manager and with a standby, per window."""
    setups = [
        _Setup(journal, count, _queue("bdt"))
        for count in DETACHED_MANAGERS
        for journal in JOURNAL_MODES
    ]
    labels = {
        (id(setup), w): f"{setup.label}, W={w}" for setup in setups for w in s.detached_windows
    }
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels.values()}
    try:
        _start_setups(cluster, s, setups)
        for _ in range(s.repeat):
            # taking turns: ratios within a run compare like with like
            for w in s.detached_windows:
                for setup in setups:
                    runs[labels[id(setup), w]].append(_detached_run(cluster, s, setup, w))
    finally:
        for setup in setups:
            cluster.retire([*setup.senders, *reversed(setup.managers)])
    cases = {}
    for w in s.detached_windows:
        for setup in setups:
            params = {
                "journal": setup.journal,
                "managers": setup.manager_count,
                "senders": s.detached_senders,
                "window": w,
                "payload_bytes": ARGS_BYTES,
            }
            label = labels[id(setup), w]
            cases[label] = case(params, runs[label])
    where = (
        "each case's first manager in the process of its own embedded daemon, as sqm"
        if cluster.colocate
        else "the managers are processes of their own"
    )
    return phase(
        f"{s.detached_senders} sender(s) enqueueing detached no-op tasks (100-byte args), "
        "each keeping W unacknowledged (256: a bulk enqueuer filling the sender's window; "
        "1: one enqueue after the other, as a web request's); no worker: the tasks wait, "
        "so this measures what enqueueing costs (a SAFE SUBMIT, then the ACK; with a "
        "journal, once its commit is done), not running them; rate = acknowledgements "
        "per second, latency = from enqueue to its acknowledgement; '+1 standby': a "
        "second manager follows the queue (replication on); journal: each manager's own "
        f"SQLite file in the bench's work directory; {where}",
        cases,
    )
