"""A twisted.web site on a server endpoint, as a service that says when it listens.

The metrics endpoint and the dashboard use it. A bare port listens on 127.0.0.1 only:
nothing is served beyond this machine unless an interface is named.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

__all__ = ["HTTPService", "server_endpoint"]

log = Logger()


def server_endpoint(description: str) -> str:
    """A server endpoint string; a bare port means that port on 127.0.0.1."""
    text = description.strip()
    if text.isdigit():
        return f"tcp:{text}:interface=127.0.0.1"
    return text


class HTTPService(Service):
    """Serves ``resource`` on ``endpoint``; ``what`` names it in the log line that says
    where (``path`` is the page to point people at)."""

    def __init__(
        self, reactor: Any, endpoint: str, resource: Resource, what: str, path: str = "/"
    ) -> None:
        self._reactor = reactor
        self.endpoint = server_endpoint(endpoint)
        self.what = what
        self.path = path
        self.site = Site(resource)
        self.site.noisy = False
        self.port: IListeningPort | None = None
        #: "http://host:port/path" once listening
        self.url: str | None = None
        self._outcome: IListeningPort | Failure | None = None
        self._waiters: list[Deferred[IListeningPort]] = []

    def startService(self) -> None:
        super().startService()
        d = maybeDeferred(lambda: serverFromString(self._reactor, self.endpoint).listen(self.site))
        d.addCallbacks(self._listened, self._failed)

    def _listened(self, port: IListeningPort) -> None:
        self.port = port
        host = port.getHost()
        self.url = f"http://{getattr(host, 'host', '?')}:{getattr(host, 'port', '?')}{self.path}"
        log.info("{what} on {url}", what=self.what, url=self.url)
        self._settle(port)

    def _failed(self, failure: Failure) -> None:
        log.error(
            "{what} cannot listen on {endpoint}: {why}",
            what=self.what,
            endpoint=self.endpoint,
            why=failure.getErrorMessage(),
        )
        self._settle(failure)

    def _settle(self, outcome: IListeningPort | Failure) -> None:
        self._outcome = outcome
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._fire(d)

    def _fire(self, d: Deferred[IListeningPort]) -> None:
        if isinstance(self._outcome, Failure):
            d.errback(self._outcome)
        elif self._outcome is not None:
            d.callback(self._outcome)

    def whenListening(self) -> Deferred[IListeningPort]:
        """Fires with the listening port, or fails with why it could not listen."""
        d: Deferred[IListeningPort] = Deferred()
        if self._outcome is None:
            self._waiters.append(d)
        else:
            self._fire(d)
        return d

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        super().stopService()
        port, self.port = self.port, None
        self._outcome = None
        if port is None:
            return succeed(None)
        stopped = port.stopListening()
        return stopped if stopped is not None else succeed(None)
