"""A sender for asyncio applications (Perl's Spread::Queue::Sender synopsis), in Python.

No Twisted code of its own: spreadqueue.aio under asyncio.run (or uvloop). Run it next
to ``sqm myqueue`` and ``python examples/asyncio_worker.py`` (or examples/worker.py)::

    python examples/asyncio_sender.py            # plain asyncio
    python examples/asyncio_sender.py --uvloop   # the same on uvloop (pip install uvloop)

The queue is $SPREAD_QUEUE_NAME (default ``myqueue``); the Spread daemon is
$SPREAD_DAEMON (default ``4803@localhost``).
"""

from __future__ import annotations

import asyncio
import sys

from spreadqueue import TaskError, aio, default_queue, default_spread

# $SPREAD_QUEUE_NAME and $SPREAD_DAEMON, as every spreadqueue command reads them.
QUEUE = default_queue("myqueue")
SPREAD = default_spread()


async def main() -> int:
    try:
        session = await aio.connect(SPREAD)
    except OSError:
        print(f"cannot reach the Spread daemon at {SPREAD} (is 'sqm {QUEUE}' running?)")
        return 1
    async with session:
        sender = session.sender(QUEUE)
        try:
            sender.submit("myfunc", {"name": "value"}, timeout=10)
            response = await sender.receive()
            print(f"submit + receive: {response.value}")

            response = await sender.rpc("myfunc", {"name": "value"}, timeout=10)
            print(f"rpc: {response}")
        except TaskError as e:
            print(f"sender: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    if "--uvloop" in sys.argv[1:]:
        import uvloop

        sys.exit(uvloop.run(main()))
    sys.exit(asyncio.run(main()))
