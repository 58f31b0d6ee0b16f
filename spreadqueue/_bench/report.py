"""The benchmark's results as text tables (what ``spreadqueue bench`` prints)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["format_report"]

_ROLES = ("daemon", "manager", "standbys", "workers", "senders", "clients", "other")


def _num(v: Any, fmt: str = ",.0f") -> str:
    return "-" if v is None else format(v, fmt)


def _rate(phase: str, case: str, run: Mapping[str, Any]) -> tuple[float | None, str]:
    """The headline rate of a run and its unit."""
    if phase == "raw":
        if case == "relay":
            return run.get("messages_per_s"), "msg/s"
        return run.get("round_trips_per_s"), "rt/s"
    if phase == "seq":
        return run.get("tasks_per_s"), "rpc/s"
    if phase == "memory":
        return run.get("submits_per_s"), "submit/s"
    if phase == "detached":
        return run.get("acks_per_s"), "acks/s"
    return run.get("tasks_per_s"), "tasks/s"


#: The latencies a phase's table shows (the first a run has), when not the calls'.
_LATENCIES = {
    "failover": ("reassign_us",),
    "failover-manager": ("failover_us", "activated_us"),  # (the latter: with no load)
}


def _latency(phase: str, run: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in _LATENCIES.get(phase, ("latency_us",)):
        if run.get(key):
            return run[key]
    return {}


def _notes(phase: str, case: str, run: Mapping[str, Any]) -> str:
    notes: list[str] = []
    tasks = run.get("tasks")
    if isinstance(tasks, Mapping):
        lost = tasks.get("lost", 0)
        notes.append(f"lost {lost}" if not lost else f"LOST {lost}")
        if tasks.get("errors"):
            notes.append(f"{tasks['errors']} errors {run.get('errors')}")
        if "ran_twice" in tasks:
            twice = tasks["ran_twice"]
            notes.append(f"ran twice {twice}" if not twice else f"RAN TWICE {twice}")
        if phase == "detached":
            notes.append(f"{tasks.get('completed', 0):,}/{tasks.get('submitted', 0):,} acked")
        elif "acked" in tasks:
            notes.append(f"{tasks['run']:,} run of {tasks['acked']:,} held")
        elif phase != "failover":
            notes.append(f"{tasks.get('completed', 0):,}/{tasks.get('submitted', 0):,} done")
    if phase == "raw":
        if "lost" in run:
            notes.append(f"lost {run['lost']}")
        if case == "relay":
            notes.append(f"sent {run.get('sent', 0):,}")
    if "mb_per_s" in run:
        notes.append(f"{run['mb_per_s']:.1f} MB/s")
    if "worst_sender_p99_us" in run:
        notes.append(f"worst sender p99 {run['worst_sender_p99_us']:,.0f} us")
    spread = run.get("per_worker")
    if isinstance(spread, Mapping) and len(spread.get("counts") or ()) > 1:
        notes.append(
            f"per worker {spread['min']:,}..{spread['max']:,} "
            f"({spread['min_over_mean']:.2f}x..{spread['max_over_mean']:.2f}x mean"
            f"{'' if spread['within_2x'] else ', NOT within 2x'})"
        )
    if phase == "failover":
        notes.append(f"reassigned {run.get('reassigned')}/{run.get('kills')}")
    if phase == "failover-manager":
        detected = _num((run.get("detected_us") or {}).get("p50"))
        activated = _num((run.get("activated_us") or {}).get("p50"))
        queued = run.get("queued_at_kill") or {}
        if "failover_us" in run:
            notes.append(
                f"assigned again after {run.get('failed_over')}/{run.get('kills')} kills; p50 "
                f"{detected} us to the leave notice at the heir, {activated} us to its "
                f"activation; {queued.get('min')}-{queued.get('max')} queued at the kills"
            )
        else:
            notes.append(
                f"{run.get('kills')} kills with no load, timed to the heir's activation; "
                f"p50 {detected} us to the leave notice at the heir"
            )
    if "queued_after" in run:
        notes.append(f"{run['queued_after']:,} queued after")
    journal = run.get("journal")
    if isinstance(journal, Mapping):
        notes.append(
            f"journal: {journal['commits']:,} commits (of {journal['batches']:,} turns' "
            f"batches) of {journal['changes_per_commit']:,.1f} changes, slowest "
            f"{journal['slowest_commit_ms']:,.1f} ms"
        )
    if phase == "memory":
        notes.append(
            f"{run['bytes_per_task']:,.0f} B/task (RSS {run['rss_before_bytes'] / 1e6:.1f} -> "
            f"{run['rss_after_bytes'] / 1e6:.1f} MB, {run['tasks_queued']:,} queued)"
        )
    if run.get("late_senders"):
        notes.append(f"{run['late_senders']} sender(s) started late")
    return ", ".join(notes)


def _cpu_cell(run: Mapping[str, Any], role: str) -> str:
    """``seconds / us per unit / kernel share`` of one role, or "" if it had no process."""
    cpu = run.get("cpu_s") or {}
    if role not in cpu:
        return ""
    total = cpu[role]
    if total is None:
        return "-"
    per = (
        run.get("cpu_us_per_task")
        or run.get("cpu_us_per_message")
        or run.get("cpu_us_per_round_trip")
        or {}
    ).get(role)
    if role == "other":
        return f"{total:.2f}"
    system = (run.get("cpu_system_s") or {}).get(role)
    share = f"{100 * system / total:.0f}%" if system is not None and total else "-"
    return f"{total:.2f} / {_num(per)} / {share}"


def _row(cells: list[str], widths: list[int]) -> str:
    out = []
    for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
        out.append(cell.ljust(width) if i < 2 or i == len(cells) - 1 else cell.rjust(width))
    return "  ".join(out).rstrip()


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [_row(header, widths), *(_row(r, widths) for r in rows)]


def format_report(results: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """Two tables (results; CPU per role) and the queue-vs-raw ratio, as text."""
    repeat = int(meta.get("repeat", 1))
    lines = [
        f"spreadqueue bench: {meta.get('daemon')} daemon, {meta.get('cores')} cores, "
        f"Python {meta.get('python')}"
        + (f" ({meta['codec']} codec)" if meta.get("codec") else "")
        + (f", {meta['reactor']} reactor" if meta.get("reactor") else "")
        + f"; {meta.get('duration_s')} s measured per run after "
        f"{meta.get('warmup_s')} s warm-up; "
        + (f"median of {repeat} runs" if repeat > 1 else "1 run per figure"),
        "",
    ]
    head = ["phase", "case", "rate", "p50 us", "p90 us", "p99 us", "max us"]
    if repeat > 1:
        head.append("rate of each run")
    head.append("notes")
    rows: list[list[str]] = []
    cpu_rows: list[list[str]] = []
    for phase, result in results.items():
        if "error" in result or "skipped" in result:
            rows.append(
                [
                    phase,
                    "ERROR" if "error" in result else "skipped",
                    "",
                    "",
                    "",
                    "",
                    "",
                    *([""] if repeat > 1 else []),
                    str(result.get("error") or result["skipped"]).splitlines()[0],
                ]
            )
            continue
        for case, data in result["cases"].items():
            med = data["median"]
            value, unit = _rate(phase, case, med)
            lat = _latency(phase, med)
            row = [
                phase,
                case,
                "-" if value is None else f"{value:,.0f} {unit}",
                *(_num(lat.get(k)) for k in ("p50", "p90", "p99", "max")),
            ]
            if repeat > 1:
                row.append(" ".join(_num(_rate(phase, case, r)[0]) for r in data["runs"]))
            row.append(_notes(phase, case, med))
            rows.append(row)
            if "profiled_run" in data:
                prof = data["profiled_run"]
                pvalue, _ = _rate(phase, case, prof)
                plat = _latency(phase, prof)
                rows.append(
                    [
                        "",
                        "(profiled)",
                        f"{_num(pvalue)} {unit}",
                        *(_num(plat.get(k)) for k in ("p50", "p90", "p99", "max")),
                        *([""] if repeat > 1 else []),
                        f"extra run under py-spy, not in the median; {data.get('profile_dir')}",
                    ]
                )
            cpu_rows.append([phase, case, *(_cpu_cell(med, r) for r in _ROLES)])
    lines += _table(head, rows)
    lines += [
        "",
        "CPU by role in the measured window: seconds / microseconds per task (message, "
        "round trip) / share spent in the kernel:",
    ]
    lines += _table(["phase", "case", *_ROLES], cpu_rows)
    for text in (_raw_ratio(results), _asyncio_ratio(results)):
        if text:
            lines += ["", text]
    return "\n".join(lines)


def _asyncio_ratio(results: Mapping[str, Any]) -> str:
    """The asyncio senders' rate and CPU per task over the Twisted sender's, same run."""
    ratios = (results.get("asyncio") or {}).get("ratios")
    if not ratios:
        return ""
    parts = []
    for case, r in ratios.items():
        cpu = r.get("sender_cpu_per_task")
        parts.append(
            f"{case}: rate {r['rate']:.2f}x, sender CPU per task "
            + ("-" if cpu is None else f"{cpu:.2f}x")
        )
    return "asyncio sender vs the Twisted sender (same run, taking turns): " + "; ".join(parts)


def _raw_ratio(results: Mapping[str, Any]) -> str:
    """How the queue's sequential rpc compares with a plain Spread ping-pong, and both
    with the floor (the same wake-ups through bare Twisted processes)."""
    try:
        cases = results["raw"]["cases"]
        ping = cases["ping-pong"]["median"]
        seq = results["seq"]["cases"]["C=1"]["median"]
    except (KeyError, TypeError):
        return ""
    p_seq, p_raw = seq["latency_us"]["p50"], ping["latency_us"]["p50"]
    r_seq, r_raw = seq["tasks_per_s"], ping["round_trips_per_s"]
    text = (
        f"queue vs raw Spread: seq p50 is {p_seq / p_raw:.1f}x the ping-pong's "
        f"({p_seq:,.0f} vs {p_raw:,.0f} us); seq rate is {r_seq / r_raw:.2f}x its round trips/s "
        f"({r_seq:,.0f} vs {r_raw:,.0f})"
    )
    floor = (cases.get("floor") or {}).get("median")
    if floor:
        p_floor = floor["latency_us"]["p50"]
        text += (
            f"\nover the floor (bare Twisted, same wake-ups, {p_floor:,.0f} us p50, "
            f"{floor['round_trips_per_s']:,.0f} rt/s): Spread adds {p_raw - p_floor:,.0f} us, "
            f"the queue {p_seq - p_raw:,.0f} us more"
        )
    return text
