"""A worker, as in the synopsis of Perl's Spread::Queue::Worker, in Python.

Run it next to ``sqm myqueue``::

    python examples/worker.py

The queue is $SPREAD_QUEUE_NAME (default ``myqueue``); the Spread daemon is
$SPREAD_DAEMON (default ``4803@localhost``). Ctrl-C stops it gracefully: it takes no
new work, finishes what it holds and leaves the queue.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task

from spreadqueue import Task, Worker, connect, default_queue, default_spread

# $SPREAD_QUEUE_NAME and $SPREAD_DAEMON, as every spreadqueue command reads them.
QUEUE = default_queue("myqueue")
SPREAD = default_spread()


async def main(reactor: Any) -> None:
    session = await connect(reactor, SPREAD, reconnect=True)  # survives a daemon restart
    worker = Worker(reactor, session, QUEUE)

    @worker.handler("myfunc", with_task=True)
    def myfunc(originator: Task, args: Any) -> None:
        # Perl's Spread::Queue style: respond to the originator (returning the value works too).
        worker.respond(originator, {"response": "I heard you!"})

    await worker.start()
    print(f"worker ready on queue {QUEUE!r} (Spread {SPREAD}); Ctrl-C to stop", flush=True)

    async def shutdown() -> None:
        await worker.stop()
        await session.disconnect()

    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: defer.Deferred.fromCoroutine(shutdown())
    )
    await session.whenDisconnected()  # runs until Ctrl-C (or the daemon refuses it for good)


def run() -> None:
    from twisted.internet.error import ConnectError

    def start(reactor: Any) -> defer.Deferred[None]:
        d = defer.Deferred.fromCoroutine(main(reactor))

        def unreachable(failure: Any) -> None:
            failure.trap(ConnectError)
            print(f"cannot reach the Spread daemon at {SPREAD} (is 'sqm {QUEUE}' running?)")
            raise SystemExit(1)

        return d.addErrback(unreachable)

    task.react(start)


if __name__ == "__main__":
    run()
