"""What every phase's measurement shares: the window, CPU samples, the shape of results.

Timing: each run gets an absolute monotonic window ``[t0, t1)`` (:func:`window`).
Agents start their load at once (the warm-up) and count only what completes inside the
window; the parent samples every process's CPU time at ``t0`` and ``t1``
(:func:`cpu_over`, :class:`CpuSample`). CLOCK_MONOTONIC is system-wide on Linux, so
all processes agree on the window.

A phase returns ``{"description": ..., "cases": {label: case}}`` (:func:`phase`), a case
is ``{"params": {...}, "median": run, "runs": [run, ...]}`` (:func:`case`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .procs import ChildError
from .procstat import cpu_times_many, machine_busy_seconds
from .stats import latency_summary, median_of_runs

__all__ = [
    "ARGS_BYTES",
    "LEAD_S",
    "CpuSample",
    "RoleCpu",
    "case",
    "cpu_over",
    "load_totals",
    "per",
    "phase",
    "repeat",
    "seconds_left",
    "sleep_until",
    "window",
]

#: Time for a command to reach every agent before the warm-up begins.
LEAD_S = 0.1
#: Arguments of the queue phases (except ``payload``): 100 bytes once serialized.
ARGS_BYTES = 100


def window(warmup: float, duration: float) -> tuple[int, int]:
    """The measured window ``(t0, t1)`` in monotonic nanoseconds: after a warm-up of
    ``warmup`` seconds from now (plus :data:`LEAD_S`), ``duration`` seconds long."""
    t0 = time.monotonic_ns() + int((LEAD_S + warmup) * 1e9)
    return t0, t0 + int(duration * 1e9)


def sleep_until(t_ns: int) -> None:
    """Sleep until the monotonic time ``t_ns`` (nanoseconds)."""
    delay = (t_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


def seconds_left(t_ns: int) -> float:
    """Seconds from now until the monotonic time ``t_ns`` (0 once past)."""
    return max(0.0, (t_ns - time.monotonic_ns()) / 1e9)


#: CPU seconds by role (None: a process we cannot see), total and system (kernel) part.
RoleCpu = dict[str, float | None]


class CpuSample:
    """The CPU times of some processes, and of the whole machine, at one moment."""

    def __init__(self, pids: Mapping[str, Sequence[int]]) -> None:
        self.pids = pids
        self.machine = machine_busy_seconds()
        self.times = cpu_times_many(p for ps in pids.values() for p in ps)

    def until(self, later: CpuSample) -> tuple[RoleCpu, RoleCpu]:
        """CPU seconds by role from this sample to ``later``: (total, system part).

        A role with no process of ours is None. ``other`` is what the rest of the
        machine used meanwhile (other programs, the bench's parent, interrupts): a
        measure of how quiet the machine was.
        """
        before, after = self.times, later.times
        total: RoleCpu = {}
        system: RoleCpu = {}
        ours = 0.0
        for role, ps in self.pids.items():
            seen = [p for p in ps if p in before and p in after]
            if not seen:
                total[role] = system[role] = None
                continue
            user = sum(after[p][0] - before[p][0] for p in seen)
            kernel = sum(after[p][1] - before[p][1] for p in seen)
            total[role] = round(user + kernel, 3)
            system[role] = round(kernel, 3)
            ours += user + kernel
        total["other"] = round(max(0.0, later.machine - self.machine - ours), 3)
        return total, system

    def of(self, later: CpuSample, pid: int) -> float | None:
        """CPU seconds process ``pid`` used from this sample to ``later`` (None: not
        seen in both)."""
        if pid not in self.times or pid not in later.times:
            return None
        (u0, k0), (u1, k1) = self.times[pid], later.times[pid]
        return round(u1 - u0 + k1 - k0, 3)


def samples_over(
    pids: Mapping[str, Sequence[int]], t0: int, t1: int
) -> tuple[CpuSample, CpuSample]:
    """The CPU samples of ``pids`` at ``t0`` and at ``t1`` (sleeps until then)."""
    sleep_until(t0)
    before = CpuSample(pids)
    sleep_until(t1)
    return before, CpuSample(pids)


def cpu_over(pids: Mapping[str, Sequence[int]], t0: int, t1: int) -> tuple[RoleCpu, RoleCpu]:
    """CPU seconds each role's processes used between ``t0`` and ``t1`` (sleeps until
    then): see :meth:`CpuSample.until`."""
    before, after = samples_over(pids, t0, t1)
    return before.until(after)


def per(cpu: Mapping[str, float | None], count: int) -> dict[str, float | None]:
    """CPU microseconds per unit of work (task, message, round trip)."""
    return {
        k: (v * 1e6 / count if v is not None and count else None)
        for k, v in cpu.items()
        if k != "other"
    }


def load_totals(loads: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the senders' loads (:class:`~spreadqueue._bench.load.RpcLoad` results) add up
    to: ``latency_us`` of the calls completed in the window, ``tasks`` (submitted,
    completed, errors, lost, measured: completed in the window) and ``errors`` by type.
    ChildError if no call completed in the window."""
    latencies = [v for r in loads for v in r["latencies_ns"]]
    if not latencies:
        raise ChildError("no call completed in the measured window")
    errors: dict[str, int] = {}
    for r in loads:
        for name, n in r["errors"].items():
            errors[name] = errors.get(name, 0) + n
    return {
        "latency_us": latency_summary(latencies),
        "tasks": {
            "submitted": sum(r["submitted"] for r in loads),
            "completed": sum(r["completed"] for r in loads),
            "errors": sum(errors.values()),
            "lost": sum(r["lost"] for r in loads),
            "measured": len(latencies),
        },
        "errors": errors,
    }


def case(params: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A case: its parameters, its runs and their median."""
    return {"params": params, "median": median_of_runs(runs), "runs": runs}


def phase(description: str, cases: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A phase's result: what it measured, its cases, and anything else it adds."""
    return {"description": description, "cases": cases, **extra}


def repeat(
    times: int, once: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any
) -> list[dict[str, Any]]:
    """``once(*args, **kwargs)`` run ``times`` times."""
    return [once(*args, **kwargs) for _ in range(times)]
