"""Queue managers and workers as whole processes run them (``sqm``, the twistd plugins).

- :class:`ManagerProcessService` connects a :class:`ManagerService` to the Spread
  daemon; in ``embedded='auto'`` mode (what ``sqm`` does) it starts an embedded daemon
  in the same process when nothing answers at a local address, and then the manager
  is an in-process session of that daemon: same API, no socket, no encoding.
- :class:`WorkerProcessService` keeps a :class:`Worker` on a session, opening a new
  session (with back-off) whenever the daemon goes away.
Both write a readiness file when ready, for scripts and tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from .._queue.manager import ManagerService
from .._queue.worker import Handler, Worker
from .._spread.client import connect
from .._spread.daemon import SpreadDaemonService
from .._spread.endpoints import parse_spread_endpoint, spread_address
from .._spread.interfaces import ISpreadSession
from .._spread.keeper import SessionKeeper
from .._spread.local import local_session

__all__ = ["ManagerProcessService", "WorkerProcessService", "daemon_answers"]

log = Logger()

EMBEDDED_MODES = ("never", "auto", "always")


async def daemon_answers(reactor: Any, spread: str, timeout: float = 2.0) -> bool:
    """True if something accepts TCP connections at the Spread endpoint ``spread``."""
    from twisted.internet.error import ConnectError

    endpoint = parse_spread_endpoint(reactor, spread)
    d = endpoint.connect(Factory.forProtocol(Protocol))
    d.addTimeout(timeout, reactor)
    try:
        proto = cast(Protocol, await d)
    except ConnectError:
        return False
    except Exception:
        # A timeout or a name that does not resolve: not something we can replace.
        return True
    if proto.transport is not None:
        proto.transport.loseConnection()
    return True


class ManagerProcessService(MultiService):
    """A queue manager process: a ManagerService, and an embedded daemon if needed.

    ``embedded`` is ``'never'`` (connect to ``spread``, retrying while it is down),
    ``'auto'`` (start an embedded daemon when nothing answers at ``spread`` and it is
    a local address) or ``'always'``. ``on_ready`` is called once the manager is the
    active manager of the queue.
    """

    def __init__(
        self,
        reactor: Any,
        queue: str,
        spread: str,
        *,
        embedded: str = "never",
        name: str | None = None,
        on_ready: Callable[[], object] | None = None,
        on_failure: Callable[[Any], object] | None = None,
        **manager_options: Any,
    ) -> None:
        super().__init__()
        if embedded not in EMBEDDED_MODES:
            raise ValueError(f"embedded must be one of {EMBEDDED_MODES}")
        self.reactor = reactor
        self.queue = queue
        self.spread = spread
        self.embedded = embedded
        self.private_name = name
        self.daemon: SpreadDaemonService | None = None
        self.manager: ManagerService | None = None
        self._on_ready = on_ready
        self._on_failure = on_failure
        self._manager_options = manager_options

    def startService(self) -> None:
        super().startService()
        d = Deferred.fromCoroutine(self._start())
        if self._on_failure is not None:
            d.addErrback(self._on_failure)
        else:
            d.addErrback(lambda f: log.failure("queue manager failed to start", f))

    async def _start(self) -> None:
        embed = self.embedded == "always"
        if self.embedded == "auto":
            address = spread_address(self.spread)
            if address.is_local and address.port is not None:
                embed = not await daemon_answers(self.reactor, self.spread)
        if embed:
            factory = await self._start_embedded_daemon()
        else:

            def factory() -> Deferred[ISpreadSession]:
                return connect(self.reactor, self.spread, self.private_name)  # type: ignore[return-value]

        manager = ManagerService(self.reactor, factory, self.queue, **self._manager_options)
        self.manager = manager
        manager.setServiceParent(self)
        await manager.whenActive()
        log.info(
            "queue manager for {queue} is active (Spread {spread}{how})",
            queue=self.queue,
            spread=self.spread,
            how=", in-process session of the embedded daemon" if embed else "",
        )
        if self._on_ready is not None:
            self._on_ready()

    async def _start_embedded_daemon(self) -> Callable[[], Deferred[ISpreadSession]]:
        address = spread_address(self.spread)
        daemon = SpreadDaemonService(address.listen_endpoint(), reactor=self.reactor)
        self.daemon = daemon
        daemon.setServiceParent(self)
        await daemon.whenListening()
        log.info(
            "no Spread daemon answered at {spread}: started an embedded Spread daemon on "
            "127.0.0.1:{port} in this process (use --no-embedded-daemon to forbid this)",
            spread=self.spread,
            port=address.port,
        )

        def factory() -> Deferred[ISpreadSession]:
            return succeed(local_session(daemon.factory, self.private_name or ""))

        return factory


class WorkerProcessService(MultiService):
    """A worker process: one Worker kept on a Spread session across daemon restarts."""

    def __init__(
        self,
        reactor: Any,
        queue: str,
        spread: str,
        handlers: Mapping[str, Handler],
        *,
        concurrency: int = 1,
        name: str | None = None,
        on_ready: Callable[[], object] | None = None,
        reconnect_delay: float = 1.0,
        max_reconnect_delay: float = 30.0,
        **worker_options: Any,
    ) -> None:
        super().__init__()
        self.reactor = reactor
        self.queue = queue
        self.spread = spread
        self.handlers = dict(handlers)
        self.concurrency = concurrency
        self.private_name = name
        self.worker: Worker | None = None
        self._on_ready = on_ready
        self._worker_options = worker_options
        self._keeper = SessionKeeper(
            reactor,
            lambda: connect(reactor, spread, name),
            self._attach,
            who=f"worker of queue {queue}",
            initial_delay=reconnect_delay,
            max_delay=max_reconnect_delay,
        )

    @property
    def session(self) -> ISpreadSession | None:
        """The worker's session (None while reconnecting or stopped)."""
        return self.worker.session if self.worker is not None else None

    def startService(self) -> None:
        super().startService()
        self._keeper.startService()

    def _attach(self, session: ISpreadSession) -> None:
        worker = Worker(
            self.reactor,
            session,
            self.queue,
            self.handlers,
            concurrency=self.concurrency,
            **self._worker_options,
        )
        self.worker = worker
        session.whenDisconnected().addCallback(lambda _: self._lost(worker))
        worker.start().addCallback(lambda _: self._registered(worker))

    def _registered(self, worker: Worker) -> None:
        log.info(
            "worker {worker} of queue {queue} ready on {group} ({n} handlers, concurrency {c})",
            worker=worker.worker_id,
            queue=self.queue,
            group=worker.session.private_group,
            n=len(self.handlers),
            c=self.concurrency,
        )
        if self._on_ready is not None:
            ready, self._on_ready = self._on_ready, None
            ready()

    def _lost(self, worker: Worker) -> None:
        if self.worker is worker:
            self.worker = None
            if self.running:
                log.warn("worker of queue {queue}: Spread session lost", queue=self.queue)

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """Stop taking work, finish what is in flight (bounded), then disconnect."""
        super().stopService()
        worker, self.worker = self.worker, None

        async def drain() -> None:
            try:
                if worker is not None:
                    await worker.stop()
            finally:
                await self._keeper.stopService()

        return Deferred.fromCoroutine(drain())
