"""A process that queues detached tasks and exits: the web request of a work queue.

``python e2e_enqueue.py QUEUE SPREAD N LOGDIR [FUNC]``: enqueues ``FUNC({"i": i, "log":
LOGDIR})`` for i in 0..N-1 through a BlockingSender, printing ``held I`` after every
hundredth acknowledgement and ``done N`` at the end, then exits at once: whatever runs
the tasks, it is not this process.
"""

from __future__ import annotations

import sys

from spreadqueue import BlockingSender


def main(queue: str, spread: str, n: int, log: str, func: str = "work") -> None:
    with BlockingSender(queue, spread, ack_timeout=10) as sender:
        for i in range(n):
            sender.enqueue(func, {"i": i, "log": log})
            if i % 100 == 99:
                print(f"held {i + 1}", flush=True)
    print(f"done {n}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], *sys.argv[5:6])
