"""A sender, as in the synopsis of Perl's Spread::Queue::Sender, in Python.

A plain script (no Twisted code of its own): submit then receive, and rpc.
Run it next to ``sqm myqueue`` and ``python examples/worker.py``::

    python examples/sender.py

The queue is $SPREAD_QUEUE_NAME (default ``myqueue``); the Spread daemon is
$SPREAD_DAEMON (default ``4803@localhost``).
"""

from __future__ import annotations

import sys

from twisted.internet.error import ConnectError

from spreadqueue import BlockingSender, TaskError, default_queue, default_spread

# $SPREAD_QUEUE_NAME and $SPREAD_DAEMON, as every spreadqueue command reads them.
QUEUE = default_queue("myqueue")
SPREAD = default_spread()


def main() -> int:
    try:
        sender = BlockingSender(QUEUE, SPREAD)
    except ConnectError:
        print(f"cannot reach the Spread daemon at {SPREAD} (is 'sqm {QUEUE}' running?)")
        return 1
    with sender:
        try:
            sender.submit("myfunc", {"name": "value"}, timeout=10)
            response = sender.receive(timeout=15)
            print(f"submit + receive: {response.value}")

            response = sender.rpc("myfunc", {"name": "value"}, timeout=10)
            print(f"rpc: {response}")
        except TaskError as e:
            print(f"sender: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
