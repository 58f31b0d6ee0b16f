"""A worker embedded in an existing Twisted web application: one reactor, one process.

The web app serves http://127.0.0.1:8080/ (a page with the worker's counters) and
/double?n=21, which itself calls the queue with rpc (answered by this very worker or
any other worker of the queue). Run it next to ``sqm myqueue``::

    python examples/web_app.py

The queue is $SPREAD_QUEUE_NAME (default ``myqueue``); the Spread daemon is
$SPREAD_DAEMON (default ``4803@localhost``); the port is $PORT (default 8080).
"""

from __future__ import annotations

import html
import json
import os
from typing import Any

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from spreadqueue import Sender, TaskError, Worker, connect, default_queue, default_spread

# $SPREAD_QUEUE_NAME and $SPREAD_DAEMON, as every spreadqueue command reads them.
QUEUE = default_queue("myqueue")
SPREAD = default_spread()
PORT = int(os.environ.get("PORT", "8080"))


class Status(Resource):
    """GET /: the embedded worker's counters."""

    isLeaf = True

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker

    def render_GET(self, request: Request) -> bytes:
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in self.worker.stats.items()
        )
        return f"<h1>worker of {html.escape(QUEUE)}</h1><table>{rows}</table>".encode()


class Double(Resource):
    """GET /double?n=21: an rpc through the queue, answered as JSON."""

    isLeaf = True

    def __init__(self, sender: Sender) -> None:
        super().__init__()
        self.sender = sender

    def render_GET(self, request: Request) -> Any:
        try:
            n = int(request.args.get(b"n", [b"0"])[0])
        except ValueError:
            request.setResponseCode(400)
            return b'{"error": "n must be an integer"}'
        d = self.sender.rpc("double", n, timeout=10)
        # Cancel the call if the browser goes away: the manager drops the task.
        request.notifyFinish().addErrback(lambda _: d.cancel())

        def answer(result: Any) -> None:
            request.setHeader(b"content-type", b"application/json")
            request.write(json.dumps({"n": n, "double": result}).encode())
            request.finish()

        def failed(failure: Any) -> None:
            if failure.check(defer.CancelledError):
                return
            request.setResponseCode(503 if failure.check(TaskError) else 500)
            request.write(json.dumps({"error": failure.getErrorMessage()}).encode())
            request.finish()

        d.addCallbacks(answer, failed)
        return NOT_DONE_YET


async def main(reactor: Any) -> None:
    # one session for the worker and the sender, surviving a daemon restart
    session = await connect(reactor, SPREAD, reconnect=True)
    # Every worker of a queue should serve the same functions (the manager hands any
    # task to any worker), so this one answers Spread::Queue's myfunc too.
    handlers = {"double": lambda n: 2 * n, "myfunc": lambda args: {"response": "I heard you!"}}
    worker = Worker(reactor, session, QUEUE, handlers, concurrency=4)
    await worker.start()
    sender = Sender(reactor, session, QUEUE)

    root = Resource()
    root.putChild(b"", Status(worker))
    root.putChild(b"double", Double(sender))
    await TCP4ServerEndpoint(reactor, PORT, interface="127.0.0.1").listen(Site(root))
    print(f"web app on http://127.0.0.1:{PORT}/ with a worker of {QUEUE!r}", flush=True)
    await session.whenDisconnected()


if __name__ == "__main__":
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
