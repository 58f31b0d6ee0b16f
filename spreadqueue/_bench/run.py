"""``spreadqueue bench``: latency and throughput of the queue on this machine."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._service.reactors import DEFAULT as DEFAULT_REACTOR
from .._service.reactors import REACTORS
from .._spread import wire
from .cluster import Cluster
from .combine import combine
from .phases import PHASES, Settings
from .procs import ChildError
from .profiling import PySpy, find_pyspy, summarise
from .report import format_report

__all__ = ["main"]

DESCRIPTION = """\
Measure spreadqueue on this machine. It starts, on free loopback ports, a Spread
daemon (the embedded one, unless --spread names another), one queue manager, workers
and senders, each a separate process talking to the daemon over TCP, and runs the
phases (all of them unless --phase is given):

  raw        two plain Spread sessions, no queue: ping-pong round trips, and the
             daemon's relay rate (one sender to one receiver, paced by the
             receiver's acknowledgement every 100 messages, at most 500 ahead);
             and the floor: the same round trip's wake-ups with no Spread at all,
             through a bare Twisted relay to a bare Twisted echoer
  seq        one sender, one worker: sequential rpc of a no-op, 100-byte args
  pipelined  one sender keeping C = 1, 10, 100 calls in flight, one worker
  payload    100 B, 10 KB, 100 KB args (10 in flight, one worker): tasks/s, MB/s
  fanin      S = 1, 4, 16 sender processes at once, each making sequential calls;
             4 workers
  workers    W = 1, 2, 4, 8, 16, 64 workers, one sender with 100 in flight:
             tasks/s and how evenly the tasks spread over the workers
  asyncio    the asyncio sender (spreadqueue.aio, each call a coroutine awaiting rpc)
             on asyncio and on uvloop beside the Twisted sender, C = 1 and 100
             calls in flight, one worker; the senders take turns, and their rates and
             CPU per task are given as ratios to the Twisted sender's
  blocking   a handler that blocks 1 ms (time.sleep), one worker with C = 1, 2, 4, 8
             slots in its thread pool, its process pool, and (as 'async sleep')
             waiting on the reactor; the async no-op beside them
  cpu        a handler of about 1 ms of pure-Python work, the same C, on the
             reactor, in threads (one core: the GIL) and in processes (every core)
  failover   workers holding a task are killed (SIGKILL) one by one: time from
             the kill to the task's arrival at another worker; tasks lost
  failover-manager
             3 managers of a queue (one active, two hot standbys), 2 workers, a
             sender keeping 100 tasks unfinished (more than the workers hold, so
             that tasks wait at the manager): the active manager is killed
             (SIGKILL) 10 times (--manager-kills), each time once a new manager
             is a synced standby; time from the kill to the first assignment by
             another manager at any worker; tasks lost (must be 0) and run twice;
             with rpc calls, and with detached tasks; first the same kills with
             no load, timed to the heir's activation, like failover's (not with
             --colocate: there the kill takes the daemon with it)
  detached   one sender (--detached-senders) enqueueing detached tasks, keeping
             W = 256 (its window: a bulk enqueuer) and W = 1 (one after the other,
             as a web request) unacknowledged (--detached-window), no worker:
             acknowledged tasks/s and the acknowledgement's latency without a
             journal (SAFE delivery, then the ACK), with --journal (--journal-sync
             full, then normal), with one manager and with a standby following
             the queue; the journal's commits (how many tasks each held, the
             slowest); the journals are in the --workdir (default: a temp dir)
  memory     a fresh manager with no worker: resident memory per queued task
             (100,000 tasks of 100-byte args)
"""

EPILOG = """\
how to read the output:
  Each run warms up, then measures for --duration seconds in a window all processes
  agree on (CLOCK_MONOTONIC). "rate" counts what completed in the window, per second.
  Latencies (p50/p90/p99/max, microseconds) are taken at the sender, from the call
  to its result, for calls completing in the window; for failover they are the
  reassignment times; for failover-manager the times from each kill to the next
  assignment; for detached from enqueue to the acknowledgement; for raw ping-pong
  the round trips. "lost" counts calls that never got an answer (for detached
  tasks in failover-manager: tasks acknowledged that never ran): it must be 0, and
  so must "ran twice". "per worker a..b" is the fewest and most tasks one worker
  completed in the window, and their ratio to the mean.
  The second table gives the CPU seconds each role's processes used in the window
  (/proc/<pid>/stat: exact totals in 10 ms units), the CPU microseconds per task, the share
  spent in the kernel (on loopback the sender's system time includes the TCP work of
  delivering to the receiver): this is where the time goes; "standbys" are the
  managers standing by (failover-manager: the steady window before the first
  kill, 2 standbys; detached: the '+1 standby' cases). "-" means not measured
  (e.g. an external daemon's CPU). "other" is the CPU the rest of the machine used
  in the same window (other programs, an external daemon here): well above 0, and
  the run was disturbed.
  The last lines compare seq with the raw ping-pong and both with the floor: what
  Spread adds to the bare round trip, and what the queue adds on top.
  With --repeat N every figure is the median of N runs, and the rates of all runs
  are shown; --json FILE writes every run's numbers: one object per phase, keyed
  by the phase name (plus "meta"), rates per second, latencies in microseconds.
  The machine is shared and noisy: compare medians of several runs.

examples:
  spreadqueue bench                              # everything, about 5 minutes
  spreadqueue bench --phase seq --phase raw --repeat 3 --json out.json
  spreadqueue bench --phase seq --profile prof/  # py-spy profiles (pip install py-spy)
  spreadqueue bench --combine a.json b.json c.json      # medians of 3 separate runs
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spreadqueue bench",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--phase",
        action="append",
        choices=list(PHASES),
        metavar="NAME",
        help=f"run this phase (repeatable): {', '.join(PHASES)}; default: all",
    )
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    p.add_argument(
        "--spread",
        metavar="ENDPOINT",
        help="use this Spread daemon (e.g. tcp:host=127.0.0.1:port=4803) instead of "
        "starting the embedded one; its CPU is then not measured",
    )
    p.add_argument("--quick", action="store_true", help="a short run (for smoke tests)")
    p.add_argument("--repeat", type=int, default=1, metavar="N", help="runs per figure")
    p.add_argument("--duration", type=float, metavar="S", help="measured seconds per run (2)")
    p.add_argument("--warmup", type=float, metavar="S", help="warm-up seconds per run (0.5)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=1,
        metavar="N",
        help="each worker's concurrency (credits); default 1, the worker's own default",
    )
    p.add_argument(
        "--colocate",
        action="store_true",
        help="run the manager inside the embedded daemon's process on an in-process "
        "session, as sqm does when it starts the daemon itself (its CPU shows as the "
        "manager's)",
    )
    p.add_argument(
        "--reactor",
        choices=list(REACTORS),
        default=DEFAULT_REACTOR,
        help=f"the Twisted reactor of every process: {', '.join(REACTORS)} "
        f"(default: {DEFAULT_REACTOR}; see README, Benchmark)",
    )
    p.add_argument("--kills", type=int, metavar="N", help="failover: workers killed (20)")
    p.add_argument(
        "--manager-kills",
        type=int,
        metavar="N",
        help="failover-manager: active managers killed per run and load kind (10)",
    )
    p.add_argument(
        "--detached-senders", type=int, metavar="N", help="detached: sender processes (1)"
    )
    p.add_argument(
        "--detached-window",
        type=int,
        action="append",
        metavar="N",
        help="detached: enqueues each sender keeps unacknowledged (repeatable; 256 and 1)",
    )
    p.add_argument("--memory-tasks", type=int, metavar="N", help="memory: tasks queued (100000)")
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="profile the daemon, manager, a worker and a sender with py-spy during an "
        "extra run of seq, of pipelined C=100 and of fanin at its most senders; collapsed "
        "stacks and summary.txt go to DIR/seq, DIR/pipelined and DIR/fanin",
    )
    p.add_argument(
        "--workdir", metavar="DIR", help="keep the processes' logs in DIR (default: a temp dir)"
    )
    p.add_argument(
        "--combine",
        nargs="+",
        metavar="FILE",
        help="run nothing: print the medians over earlier --json files (one run each)",
    )
    return p


def _settings(options: argparse.Namespace, parser: argparse.ArgumentParser) -> Settings:
    s = Settings(concurrency=options.concurrency, repeat=options.repeat)
    if options.quick:
        s = s.quick()
    changes: dict[str, Any] = {}
    if options.duration is not None:
        changes["duration"] = options.duration
    if options.warmup is not None:
        changes["warmup"] = options.warmup
    if options.kills is not None:
        changes["kills"] = options.kills
    if options.memory_tasks is not None:
        changes["memory_tasks"] = options.memory_tasks
    for name in ("manager_kills", "detached_senders"):
        value = getattr(options, name)
        if value is not None:
            if value < 1:
                parser.error(f"--{name.replace('_', '-')} must be at least 1")
            changes[name] = value
    if options.detached_window:
        if min(options.detached_window) < 1:
            parser.error("--detached-window must be at least 1")
        changes["detached_windows"] = tuple(options.detached_window)
    if options.profile:
        exe = find_pyspy()
        if exe is None:
            parser.error("--profile needs py-spy (python -m pip install py-spy)")
        changes["profile"] = PySpy(exe, Path(options.profile))
    if s.repeat < 1 or s.concurrency < 1:
        parser.error("--repeat and --concurrency must be at least 1")
    if changes.get("duration", 1) <= 0 or changes.get("warmup", 0) < 0:
        parser.error("--duration must be positive and --warmup not negative")
    if changes.get("kills", 1) < 1 or changes.get("memory_tasks", 1) < 1:
        parser.error("--kills and --memory-tasks must be at least 1")
    from dataclasses import replace

    return replace(s, **changes)


def _meta(options: argparse.Namespace, s: Settings, phases: list[str]) -> dict[str, Any]:
    from importlib import metadata

    try:
        version = metadata.version("spreadqueue")
    except metadata.PackageNotFoundError:
        version = "source tree"
    return {
        "spreadqueue": version,
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        # the agents inherit the environment: SPREADQUEUE_PURE=1 makes them all pure
        "codec": "compiled" if wire.ACCELERATED else "pure-Python",
        "daemon": options.spread or "embedded",
        "reactor": options.reactor,
        "manager": "in the daemon's process"
        if options.colocate and not options.spread
        else "a process of its own",
        "phases": phases,
        "warmup_s": s.warmup,
        "duration_s": s.duration,
        "repeat": s.repeat,
        "quick": bool(options.quick),
        "worker_concurrency": s.concurrency,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(options: argparse.Namespace, s: Settings, workdir: Path) -> tuple[dict[str, Any], bool]:
    """Run the chosen phases; return ``(results by phase, all phases succeeded)``."""
    chosen = [name for name in PHASES if not options.phase or name in options.phase]
    results: dict[str, Any] = {}
    ok = True
    cluster = Cluster(
        workdir,
        options.spread,
        concurrency=s.concurrency,
        colocate=options.colocate,
        reactor=options.reactor,
    )
    try:
        cluster.start()
        for name in chosen:
            _say(f"bench: {name} ...")
            started = time.monotonic()
            try:
                results[name] = PHASES[name](cluster, s)
            except (ChildError, ValueError, OSError) as e:
                ok = False
                results[name] = {"error": str(e)}
                _say(f"bench: {name} failed: {e}")
            _say(f"bench: {name} took {time.monotonic() - started:.1f} s")
    finally:
        cluster.close()
    return results, ok


#: profile file label -> role in the CPU accounting
_PROFILED_ROLES = {
    "daemon": "daemon",
    "manager": "manager",
    "worker": "workers",
    "sender": "senders",
}


def _write_profile_summaries(results: dict[str, Any]) -> list[Path]:
    """A summary.txt beside each profiled run's files; returns their paths."""
    written = []
    for phase in results.values():
        for case in (phase.get("cases") or {}).values():
            if "profiled_run" in case:
                outdir = Path(case["profile_dir"])
                _write_profile_summary(outdir, case["profiled_run"])
                written.append(outdir / "summary.txt")
    return written


def _write_profile_summary(outdir: Path, run: dict[str, Any]) -> None:
    """summary.txt: each profile's ranking, in microseconds of user CPU per task too."""
    measured = (run.get("tasks") or {}).get("measured") or 0
    parts = []
    for label, role in _PROFILED_ROLES.items():
        path = outdir / f"{label}.txt"
        if not path.exists():
            continue
        total = (run.get("cpu_s") or {}).get(role)
        system = (run.get("cpu_system_s") or {}).get(role)
        per_task = None
        if total is not None and system is not None and measured:
            # The role's user CPU per task, all its processes together: the profile is
            # of one of them (the workers and the senders of a role do the same work, so
            # its shares stand for the role's).
            per_task = (total - system) * 1e6 / measured
        parts.append(summarise(path, user_us_per_task=per_task))
    (outdir / "summary.txt").write_text("\n\n".join(parts) + "\n")


def _write_json(path: str, meta: dict[str, Any], results: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump({"meta": meta, **results}, f, indent=1)
        f.write("\n")


def _combine(options: argparse.Namespace) -> int:
    results, meta = combine([Path(p) for p in options.combine])
    print(format_report(results, meta))
    if options.json:
        _write_json(options.json, meta, results)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``spreadqueue bench``; exit status 0 when every phase ran."""
    parser = _parser()
    options = parser.parse_args(argv)
    if options.combine:
        return _combine(options)
    s = _settings(options, parser)
    chosen = [name for name in PHASES if not options.phase or name in options.phase]
    meta = _meta(options, s, chosen)
    if options.workdir:
        workdir = Path(options.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="spreadqueue-bench-"))
    started = time.monotonic()
    ok = False
    try:
        results, ok = run(options, s, workdir)
    except KeyboardInterrupt:
        _say("bench: interrupted; every process it started has been stopped")
        return 130
    finally:
        if options.workdir:
            pass
        elif ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            _say(f"bench: the processes' logs are in {workdir}")
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    print(format_report(results, meta))
    if s.profile is not None:
        for summary in _write_profile_summaries(results):
            print(f"\nprofile: {summary} ranks the functions")
    if options.json:
        _write_json(options.json, meta, results)
    return 0 if ok else 1
