"""Regenerate the compact wire vectors of ``tests/vectors`` from the shared traces.

Run from the repository root::

    PYTHONPATH=. python tests/vectors/make.py [TRACES_DIR]

Each vector is a JSON excerpt of one trace (``spread_traces.to_vector``): the records of
the connections listed in :data:`CASES`, with their decode lines and their owners' API
calls, so that ``tests/test_wire_golden.py`` runs its golden checks without
``../shared``. The big i1..i4 traces are left out (their messages are 100..144 KB).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import spread_traces as st  # noqa: E402

#: short case id -> the connections to keep (None: all of them).
CASES: dict[str, list[str] | None] = {
    "a1": None,
    "a2": None,
    "a3": None,
    "c1": None,
    "c2": None,
    "c3": None,
    "c4": None,
    "c5": None,
    "c6": None,
    "c7": None,
    "c8": None,
    "c9": None,
    "d1": None,
    "d2": None,
    "f7": None,
    "f8": None,
    "g1": ["C1", "C3", "C4"],
    "h1": None,
    "j1": None,
    "m1": None,
    "m2": None,
    "m3": None,
    "m6": None,
    "m7": None,
    "m9": None,
    "m10": None,
    "o1": None,
    "p4": ["C1", "C2"],
    "p6": ["C1"],
}

MAX_BYTES = 25_000


def main(argv: list[str] | None = None) -> int:
    """Write one ``<case>.json`` per entry of :data:`CASES`; return 0."""
    args = sys.argv[1:] if argv is None else argv
    if args:
        st.TRACES_DIR = Path(args[0])
    by_short = {p.name.split("_", 1)[0]: p for p in st.trace_paths()}
    if not by_short:
        print(f"no traces found at {st.traces_dir()}", file=sys.stderr)
        return 1
    for old in HERE.glob("*.json"):
        old.unlink()
    total = 0
    for short, conns in CASES.items():
        trace = st.load(by_short[short])
        text = json.dumps(st.to_vector(trace, conns), separators=(",", ":"), indent=None)
        if len(text) > MAX_BYTES:
            raise SystemExit(f"{short}: vector of {len(text)} bytes; keep fewer connections")
        out = HERE / f"{trace.case}.json"
        out.write_text(text + "\n", encoding="utf-8")
        total += len(text)
        print(f"{out.name}: {len(text)} bytes")
    print(f"{len(CASES)} vectors, {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
