"""A worker for asyncio applications (Perl's Spread::Queue::Worker synopsis), in Python.

Its handler is an ``async def`` coroutine run on the asyncio loop: it may await
anything asyncio offers (here asyncio.sleep; an aiohttp call, a database driver...).
Run it next to ``sqm myqueue``::

    python examples/asyncio_worker.py            # plain asyncio
    python examples/asyncio_worker.py --uvloop   # the same on uvloop (pip install uvloop)

The queue is $SPREAD_QUEUE_NAME (default ``myqueue``); the Spread daemon is
$SPREAD_DAEMON (default ``4803@localhost``). Ctrl-C (or SIGTERM) stops it gracefully:
it takes no new work, finishes what it holds and leaves the queue. Its session
reconnects: it rides out a restart of the Spread daemon (its tasks keep running, their
answers go out once it is back).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

from spreadqueue import aio, default_queue, default_spread

# $SPREAD_QUEUE_NAME and $SPREAD_DAEMON, as every spreadqueue command reads them.
QUEUE = default_queue("myqueue")
SPREAD = default_spread()


async def myfunc(args: Any) -> dict[str, str]:
    await asyncio.sleep(0.001)  # any asyncio code may run here
    return {"response": "I heard you!"}


async def main() -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        session = await aio.connect(SPREAD, reconnect=True)  # survives a daemon restart
    except OSError:
        print(f"cannot reach the Spread daemon at {SPREAD} (is 'sqm {QUEUE}' running?)")
        return 1
    async with session:  # at the end: the worker stops gracefully, the session closes
        worker = session.worker(QUEUE, {"myfunc": myfunc})
        await worker.start()
        print(f"worker ready on queue {QUEUE!r} (Spread {SPREAD}); Ctrl-C to stop", flush=True)
        # runs until Ctrl-C or SIGTERM, or until the daemon refuses the session for good
        stopped = asyncio.ensure_future(stop.wait())
        lost = asyncio.ensure_future(session.wait_closed())
        await asyncio.wait([stopped, lost], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        lost.cancel()
    return 0


if __name__ == "__main__":
    if "--uvloop" in sys.argv[1:]:
        import uvloop

        sys.exit(uvloop.run(main()))
    sys.exit(asyncio.run(main()))
