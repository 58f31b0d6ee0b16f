"""What the kernel accounts for a process: CPU seconds and resident memory (Linux /proc)."""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["cpu_seconds", "cpu_times", "cpu_times_many", "machine_busy_seconds", "rss_bytes"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds used so far by process ``pid`` (all its threads).

    From ``/proc/<pid>/stat`` fields 14 and 15 (utime, stime), in clock ticks
    (usually 10 ms each). Raises OSError if the process is gone.
    """
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = raw[raw.rindex(b")") + 2 :].split()
    # fields[0] is field 3 (state), so utime (field 14) is fields[11], stime fields[12].
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by process ``pid``."""
    return sum(cpu_times(pid))


def cpu_times_many(pids: Iterable[int]) -> dict[int, tuple[float, float]]:
    """:func:`cpu_times` of each of ``pids``; processes that are gone are left out."""
    out: dict[int, tuple[float, float]] = {}
    for pid in pids:
        try:
            out[pid] = cpu_times(pid)
        except (OSError, ValueError):
            pass
    return out


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle, summed over all cores.

    From the ``cpu`` line of ``/proc/stat``: user, nice, system, irq, softirq and steal
    (guest time is already inside user). Raises OSError where there is no /proc.
    """
    with open("/proc/stat") as f:
        fields = f.readline().split()
    if fields[0] != "cpu":
        raise ValueError("unexpected /proc/stat")
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes (``VmRSS`` of ``/proc/<pid>/status``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                value, unit = line.split()[1:3]
                if unit != "kB":
                    raise ValueError(f"unexpected VmRSS unit {unit!r}")
                return int(value) * 1024
    raise ValueError(f"no VmRSS for process {pid}")
