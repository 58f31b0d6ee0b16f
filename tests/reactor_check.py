"""One run of the reactor scenario of tests/test_reactors.py, in a process of its own
(a reactor is installed once per process): ``python reactor_check.py NAME`` installs
reactor NAME the way the commands do, then prints one JSON object of what it saw.

Over real loopback TCP, all on the one reactor: two clients send to an echo server at
once (two readable connections in one wake-up), a client half of whose data arrives
later, a server protocol whose dataReceived raises (Twisted logs it and drops that
connection), and a client that closes (the server sees its connection end). Every
step waits on the event it needs; the whole run has a deadline.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def main(name: str) -> int:
    from spreadqueue._service.reactors import install_reactor

    install_reactor(name)
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
    from twisted.internet.protocol import Factory, Protocol
    from twisted.logger import globalLogPublisher

    seen: dict[str, Any] = {"reactor": type(reactor).__name__, "errors": [], "lost": []}
    brackets = {"begin": 0, "end": 0}
    add = getattr(reactor, "add_poll_bracket", None)
    if add is not None:
        add(
            lambda: brackets.__setitem__("begin", brackets["begin"] + 1),
            lambda: brackets.__setitem__("end", brackets["end"] + 1),
        )

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_failure") is not None or event.get("isError"):
            failure = event.get("log_failure") or event.get("failure")
            seen["errors"].append(str(getattr(failure, "value", event.get("message"))))

    globalLogPublisher.addObserver(observe)

    class Server(Protocol):
        def dataReceived(self, data: bytes) -> None:
            if data.startswith(b"boom"):
                raise ValueError("boom in dataReceived")
            self.transport.write(data)  # type: ignore[union-attr]

        def connectionLost(self, reason: Any) -> None:
            seen["lost"].append(type(reason.value).__name__)

    class Client(Protocol):
        def __init__(self, want: int) -> None:
            self.want = want
            self.got = b""
            self.done: Deferred[bytes] = Deferred()
            self.closed: Deferred[str] = Deferred()

        def dataReceived(self, data: bytes) -> None:
            self.got += data
            if len(self.got) >= self.want and not self.done.called:
                self.done.callback(self.got)

        def connectionLost(self, reason: Any) -> None:
            if not self.closed.called:
                self.closed.callback(type(reason.value).__name__)

    async def scenario() -> None:
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Server)
        )
        where = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        a = await connectProtocol(where, Client(5))
        b = await connectProtocol(where, Client(5))
        a.transport.write(b"hello")  # type: ignore[union-attr]
        b.transport.write(b"world")  # type: ignore[union-attr]
        seen["echo"] = [(await a.done).decode(), (await b.done).decode()]
        c = await connectProtocol(where, Client(6))
        c.transport.write(b"par")  # type: ignore[union-attr]
        reactor.callLater(0.01, c.transport.write, b"ted")  # type: ignore[attr-defined]
        seen["split"] = (await c.done).decode()
        bad = await connectProtocol(where, Client(1))
        bad.transport.write(b"boom")  # type: ignore[union-attr]
        seen["bad_client_lost"] = await bad.closed
        a.transport.loseConnection()  # type: ignore[union-attr]
        seen["closed_client_lost"] = await a.closed
        for proto in (b, c):
            proto.transport.loseConnection()  # type: ignore[union-attr]
            await proto.closed
        await port.stopListening()
        seen["brackets_balanced"] = brackets["begin"] == brackets["end"]
        seen["bracketed"] = brackets["begin"] > 0

    def run() -> None:
        d = Deferred.fromCoroutine(scenario())
        d.addTimeout(20, reactor)

        def report(result: Any) -> None:
            if result is not None and hasattr(result, "getTraceback"):
                seen["failure"] = result.getTraceback()
            reactor.stop()  # type: ignore[attr-defined]

        d.addBoth(report)

    reactor.callWhenRunning(run)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    seen["lost"].sort()
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
