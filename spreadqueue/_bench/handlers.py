"""The handlers of the ``blocking`` and ``cpu`` phases: module-level functions, so that
a worker's process pool can import them in its children."""

from __future__ import annotations

import time
from typing import Final

#: What the blocking handler waits (seconds): a short database query, say.
SLEEP_S: Final = 0.001
#: Loop turns of the CPU-bound handler: about 1 ms of pure Python on this class of
#: machine (0.7 ms per 10,000 measured on the bench's 2-core VM).
SPIN_LOOPS: Final = 14_000


def block(_args: object) -> None:
    """Block the calling thread for SLEEP_S (time.sleep: no reactor involved)."""
    time.sleep(SLEEP_S)


def spin(_args: object) -> int:
    """About 1 ms of pure-Python work, holding the GIL all along."""
    x = 0
    for i in range(SPIN_LOOPS):
        x += i * i
    return x & 0xFF
