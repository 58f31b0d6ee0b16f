"""Keeping a Spread session open: a new one, with back-off, whenever it is lost.

:class:`SessionKeeper` is Twisted's :class:`~twisted.application.internet.ClientService`
(its state machine, its retries, its orderly stop) over any way of opening a session:
a TCP connection to a daemon, an in-process session of the embedded daemon, or a
function that decides between them. ClientService keeps one connection of an
endpoint; :class:`_SessionEndpoint` makes "open a session" such an endpoint, and a
session's end the connection's loss.

Some failures do not go away by trying again: a private name the daemon calls
illegal, a version or authentication it refuses. Those end the keeper (the caller
decides what that means for the process) instead of being retried forever.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .errors import AuthRejected, IllegalGroupName, IllegalName, NameNotUnique, VersionRejected
from .interfaces import ISpreadSession

__all__ = ["SessionKeeper", "is_permanent"]

_log = Logger()

#: Rejects that trying again cannot change.
_PERMANENT = (IllegalName, IllegalGroupName, VersionRejected, AuthRejected)
#: A duplicate name may belong to a process that is still going away: tried this often.
_NAME_IN_USE_ATTEMPTS = 5


def is_permanent(failure: Failure, attempt: int) -> bool:
    """True when opening a session failed for good (the ``attempt``-th failure in a row):
    a configuration error rather than a daemon that is away."""
    if failure.check(*_PERMANENT):
        return True
    return bool(failure.check(NameNotUnique)) and attempt >= _NAME_IN_USE_ATTEMPTS


class _Transport:
    """What ClientService sees of a session: a transport it can close."""

    def __init__(self, session: ISpreadSession) -> None:
        self.session = session

    def loseConnection(self) -> None:
        if self.session.connected:
            self.session.disconnect()


class _SessionProtocol(Protocol):
    """Carries the session (ClientService hands the protocol to whenConnected)."""

    session: ISpreadSession | None = None

    def makeConnection(self, transport: Any) -> None:
        self.session = transport.session
        super().makeConnection(transport)


@implementer(IStreamClientEndpoint)
class _SessionEndpoint:
    """An endpoint whose connections are sessions from ``open_session``."""

    def __init__(self, keeper: SessionKeeper) -> None:
        self._keeper = keeper

    def __repr__(self) -> str:
        return f"<Spread session of {self._keeper.who}>"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        keeper = self._keeper
        d = maybeDeferred(keeper.open_session)

        def opened(session: ISpreadSession) -> Any:
            proto = protocolFactory.buildProtocol(None)  # type: ignore[arg-type]
            assert proto is not None
            proto.makeConnection(_Transport(session))  # type: ignore[arg-type]

            def ended(_: object) -> None:
                reason = getattr(session, "disconnect_reason", None)
                proto.connectionLost(reason or Failure(ConnectionLost("session ended")))

            session.whenDisconnected().addCallback(ended)
            return proto

        return d.addCallbacks(opened, keeper._failed)


class SessionKeeper(Service):
    """Keeps a session from ``open_session()`` open as long as the service runs.

    ``on_session(session)`` is called with every session opened, the first and each
    one after a loss. A failed attempt is tried again after ``initial_delay`` seconds,
    doubling up to ``max_delay``, each delay stretched by a random part of up to
    ``jitter`` of it (so that many clients of a restarted daemon do not come back in
    step). A failure :func:`is_permanent` calls ``on_permanent(failure)`` and stops the
    keeper. ``who`` names the keeper's owner in logs.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        open_session: Callable[[], Deferred[Any]],
        on_session: Callable[[ISpreadSession], object],
        *,
        who: str = "Spread client",
        initial_delay: float = 1.0,
        max_delay: float = 30.0,
        jitter: float = 0.1,
        randomness: Callable[[], float] = random.random,
        on_permanent: Callable[[Failure], object] | None = None,
    ) -> None:
        if initial_delay <= 0 or max_delay < initial_delay or jitter < 0:
            raise ValueError("delays must be positive, max_delay >= initial_delay, jitter >= 0")
        self.open_session = open_session
        self.who = who
        self._reactor = reactor
        self._on_session = on_session
        self._on_permanent = on_permanent
        self._initial_delay = initial_delay
        self._max_delay = max_delay
        self._jitter = jitter
        self._random = randomness
        self._failures = 0
        self._next_delay: float | None = None  # worked out (and logged) at a failure
        self._client = ClientService(
            _SessionEndpoint(self),
            Factory.forProtocol(_SessionProtocol),
            retryPolicy=self._delay,
            clock=reactor,
            prepareConnection=self._prepared,
        )

    def _delay(self, attempt: int) -> float:
        """ClientService's retry policy: the delay before attempt ``attempt + 1``."""
        delay, self._next_delay = self._next_delay, None
        if delay is None:
            delay = self._delay_for(attempt)
        return delay

    def _delay_for(self, attempt: int) -> float:
        delay = min(self._initial_delay * 2 ** max(0, attempt - 1), self._max_delay)
        return delay * (1 + self._jitter * self._random())

    def _prepared(self, proto: Any) -> None:
        self._failures = 0
        self._on_session(proto.session)

    def _failed(self, failure: Failure) -> Failure:
        self._failures += 1
        if self.running and is_permanent(failure, self._failures):
            _log.error(
                "{who}: cannot open a Spread session ({error}); not retrying",
                who=self.who,
                error=failure.getErrorMessage(),
            )
            # After ClientService has taken this failure (it then waits to retry).
            self._reactor.callLater(0, self._give_up, failure)
        elif self.running:
            delay = self._next_delay = self._delay_for(self._failures)
            _log.warn(
                "{who}: cannot open a Spread session ({error}); retrying in {delay:.1f}s",
                who=self.who,
                error=failure.getErrorMessage(),
                delay=delay,
            )
        return failure

    def _give_up(self, failure: Failure) -> None:
        if not self.running:
            return
        self.stopService()
        if self._on_permanent is not None:
            self._on_permanent(failure)

    def startService(self) -> None:
        super().startService()
        self._client.startService()

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """Stop retrying and close the current session; fires once it is closed."""
        super().stopService()
        return self._client.stopService()
