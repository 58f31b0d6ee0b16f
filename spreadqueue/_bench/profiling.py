"""Sampling profiles of benchmark processes with py-spy, and a plain-text summary of them.

py-spy is not a dependency of spreadqueue: ``pip install py-spy`` to use
``spreadqueue bench --profile DIR``. Each profiled process gets a collapsed-stack file
``DIR/<label>.txt`` (py-spy's ``raw`` format, one ``frame;frame;... count`` line per
distinct stack, frames aggregated per function) and ``DIR/summary.txt`` ranks the
functions by the samples spent in them (self) and under them (inclusive).

Only samples taken while the process holds the GIL count (``py-spy --gil``), so the
percentages split the process's *Python* CPU time. Why: py-spy calls a thread active
when it is running *or runnable*, and on a 2-core machine with four busy processes a
woken process often waits for a core while still inside ``epoll_wait``; without
``--gil`` that waiting shows up as most of the "CPU" (measured here: three busy
processes pinned to one core each used 32% of it, and py-spy counted 100% of its
samples active). Time in system calls (send, recv, epoll) releases the GIL and is not
in these profiles: it is the kernel share of each role in the benchmark's CPU table.

    python -m spreadqueue._bench.profiling DIR/manager.txt [--top N]

prints the summary of one file.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from .procs import Child

__all__ = ["LAYERS", "PySpy", "find_pyspy", "layer_of", "load_stacks", "summarise"]

#: Where a sample's own time goes, by the file of its innermost Python frame (first
#: match wins): the split the CPU discussion of issue 13 asks for.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Deferreds", ("twisted/internet/defer.py",)),
    (
        "logging context",
        ("twisted/python/log.py", "twisted/python/context.py", "twisted/logger/"),
    ),
    ("Twisted reactor, wake-up", ("twisted/internet/", "twisted/python/")),
    ("Spread codec", ("spreadqueue/_spread/wire/",)),
    (
        "Spread session, client, writes",
        (
            "spreadqueue/_spread/session.py",
            "spreadqueue/_spread/client.py",
            "spreadqueue/_spread/batch.py",
            "spreadqueue/_spread/output.py",
        ),
    ),
    ("daemon routing", ("spreadqueue/_spread/",)),
    ("queue messages", ("spreadqueue/_queue/messages.py", "msgpack/")),
    ("manager state machine", ("spreadqueue/_queue/state.py", "spreadqueue/_queue/stats.py")),
    ("queue services", ("spreadqueue/_queue/",)),
    ("bench agent", ("spreadqueue/_bench/",)),
)


def layer_of(frame: str) -> str:
    """The layer (see :data:`LAYERS`) of a py-spy frame ``func (path:line)``."""
    where = frame.partition(" (")[2]
    for layer, markers in LAYERS:
        if any(m in where for m in markers):
            return layer
    return "other"


def find_pyspy() -> str | None:
    """The py-spy executable: on PATH, or next to this Python (a virtualenv's bin)."""
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else None


class PySpy:
    """py-spy recorders attached to running processes for a while."""

    def __init__(self, executable: str, outdir: Path, rate: int = 200) -> None:
        self.executable = executable
        self.outdir = outdir
        self.rate = rate
        self._procs: dict[str, Child] = {}
        outdir.mkdir(parents=True, exist_ok=True)

    def within(self, name: str) -> PySpy:
        """Recorders like these whose files go to the subdirectory ``name``."""
        return PySpy(self.executable, self.outdir / name, self.rate)

    def start(self, targets: Mapping[str, int], seconds: float) -> None:
        """Record each ``label -> pid`` of ``targets`` for ``seconds`` (rounded up)."""
        for label, pid in targets.items():
            argv = [
                self.executable,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, math.ceil(seconds))),
                "--rate",
                str(self.rate),
                "--format",
                "raw",
                "--function",
                "--gil",  # Python CPU only: see the module docstring
                "--nonblocking",  # do not stop the process for each sample
                "--output",
                str(self.outdir / f"{label}.txt"),
            ]
            # py-spy is ready at once and ends by itself after --duration.
            self._procs[label] = Child(f"{label}.pyspy", argv, self.outdir, channel=False)

    def finish(self, timeout: float = 30.0) -> dict[str, Path]:
        """Wait for the recorders; return ``label -> profile file`` of those that worked."""
        deadline = time.monotonic() + timeout
        out: dict[str, Path] = {}
        for label, proc in self._procs.items():
            proc.finish(deadline)
            path = self.outdir / f"{label}.txt"
            if proc.returncode == 0 and path.exists():
                out[label] = path
        self._procs = {}
        return out


def load_stacks(path: Path) -> list[tuple[list[str], int]]:
    """The stacks of a collapsed-stack file: ``(frames outermost first, samples)``."""
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        head, _, count = line.rpartition(" ")
        if head and count.isdigit():
            stacks.append((head.split(";"), int(count)))
    return stacks


def _short(frame: str) -> str:
    """``func (path/to/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py:12)``."""
    name, _, where = frame.partition(" (")
    for marker in ("site-packages/", "/main/", "/lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where}" if where else name


def summarise(path: Path, top: int = 20, user_us_per_task: float | None = None) -> str:
    """A ranking of the functions in one profile by self and inclusive samples, and of
    the source files by self samples.

    With ``user_us_per_task`` (the process's user CPU microseconds per task in the
    profiled window) each share is also shown as microseconds per task.
    """
    stacks = load_stacks(path)
    total = sum(n for _, n in stacks)
    if not total:
        return f"{path.name}: no samples (the process was idle)"
    own: Counter[str] = Counter()
    under: Counter[str] = Counter()
    files: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    for frames, n in stacks:
        layers[layer_of(frames[-1])] += n
        leaf = _short(frames[-1])
        own[leaf] += n
        files[leaf.partition(" (")[2].rsplit(":", 1)[0] or "?"] += n
        for frame in {_short(f) for f in frames}:
            under[frame] += n
    lines = [f"{path.stem}: {total} samples (holding the GIL: Python CPU time)"]
    if user_us_per_task is not None:
        lines.append(f"  user CPU {user_us_per_task:,.1f} us per task in the profiled window")
    for title, counts in (
        ("self, by layer", layers),
        ("self", own),
        ("inclusive", under),
        ("self, by file", files),
    ):
        lines.append(f"  top {title}:")
        for name, n in counts.most_common(top):
            share = n / total
            cost = "" if user_us_per_task is None else f"{share * user_us_per_task:7.1f} us  "
            lines.append(f"    {100.0 * share:5.1f}%  {cost}{name}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the summary of profile files."""
    p = argparse.ArgumentParser(prog="python -m spreadqueue._bench.profiling")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--top", type=int, default=20)
    options = p.parse_args(argv)
    for path in options.files:
        print(summarise(path, options.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
