"""A sender that keeps calling a queue, and comes back after a daemon restart.

``python e2e_rpc_loop.py QUEUE SPREAD``: calls ``echo`` in a loop with a 1 s timeout
and prints ``ok <monotonic seconds>`` after each answer and ``error <why>`` after each
failure; after a failure it opens a new BlockingSender (a new session), as an
application that must survive its daemon's restart would.
"""

from __future__ import annotations

import sys
import threading
import time

from spreadqueue import BlockingSender


def main(queue: str, spread: str) -> None:
    sender: BlockingSender | None = None
    pause = threading.Event()
    while True:
        try:
            if sender is None:
                sender = BlockingSender(queue, spread, connect_timeout=1, ack_timeout=0.5)
            sender.rpc("echo", 1, timeout=1)
            print(f"ok {time.monotonic():.3f}", flush=True)
        except Exception as e:
            print(f"error {type(e).__name__}: {e}", flush=True)
            if sender is not None:
                try:
                    sender.close()
                except Exception:
                    pass
            sender = None
            pause.wait(0.05)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
