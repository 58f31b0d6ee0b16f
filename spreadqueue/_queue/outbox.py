"""Per-turn batching of outgoing queue messages.

Components add entries while they handle frames; one flush per batch of frames (at
the session's :meth:`~spreadqueue.interfaces.ISpreadSession.after_delivery`, or on a
``callLater(0)`` when no delivery is under way) sends each (destination, kind) batch
as one Spread message, or as few as fit. This is what lets one process wake-up carry
many tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from .._spread.errors import SpreadError
from .._spread.interfaces import ISpreadSession
from .._spread.wire import AGREED_MESS
from .messages import Kind, encode, max_data, mess_type

__all__ = ["SERVICE", "Outbox", "Turn", "send"]

#: Every queue message goes AGREED: one total order, consistent with membership
#: notices (see docs/protocol.md, "Service type").
SERVICE = AGREED_MESS

_log = Logger()
_MESS_TYPE = {kind: mess_type(kind) for kind in Kind}


def send(
    session: ISpreadSession,
    groups: Sequence[str],
    kind: Kind,
    entries: Sequence[Any],
    *,
    service: int = SERVICE,
) -> int:
    """Send ``entries`` of ``kind`` to ``groups`` now; return the number of messages.

    ``service`` is AGREED unless told (SAFE: detached tasks, which must reach every
    daemon before anyone acts on them). A closed session is not an error here (its
    owner learns that through ``whenDisconnected``); the entries are dropped and 0 is
    returned.
    """
    # a tuple: sessions remember the destination tuples they have checked
    dest = groups if type(groups) is tuple else tuple(groups)
    n = 0
    for data in encode(kind, entries, max_bytes=max_data(len(dest))):
        try:
            session.multicast(dest, data, service=service, mess_type=_MESS_TYPE[kind])
        except SpreadError as e:
            _log.warn(
                "queue: could not send {kind} to {groups}: {error}",
                kind=kind.name,
                groups=list(dest),
                error=e,
            )
            return n
        n += 1
    return n


class Turn:
    """Runs ``fn`` once at the end of the current batch of work, however often asked.

    While ``session`` is delivering frames (a read's worth), that is when the last of
    them has been handled, in the same reactor turn and before the read's one write;
    otherwise on the next reactor turn (``callLater(0)``).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        fn: Callable[[], object],
        session: ISpreadSession | None = None,
    ) -> None:
        self._reactor = reactor
        self._fn = fn
        #: the session whose deliveries we batch over (None: every run is per turn)
        self.session = session
        self._pending = False
        self._call: IDelayedCall | None = None

    def schedule(self) -> None:
        """Make sure ``fn`` runs soon (once)."""
        if self._pending:
            return
        self._pending = True
        session = self.session
        if session is None or not session.after_delivery(self._run):
            self._call = self._reactor.callLater(0, self._run)

    def cancel(self) -> None:
        """Forget a pending run."""
        self._pending = False
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _run(self) -> None:
        if not self._pending:
            return  # cancelled (an after_delivery call cannot be taken back)
        self.cancel()
        self._fn()


class Outbox:
    """Entries waiting to be sent, grouped by (destination groups, kind) in order."""

    def __init__(self) -> None:
        self._batches: dict[tuple[tuple[str, ...], Kind], list[Any]] = {}

    def __bool__(self) -> bool:
        return bool(self._batches)

    def add(self, groups: tuple[str, ...], kind: Kind, entry: Any) -> None:
        """Queue one entry."""
        batch = self._batches.get((groups, kind))
        if batch is None:
            batch = self._batches[(groups, kind)] = []
        batch.append(entry)

    def send_all(self, session: ISpreadSession) -> int:
        """Send every batch (in the order first added); return the message count."""
        batches, self._batches = self._batches, {}
        return sum(
            send(session, groups, kind, entries) for (groups, kind), entries in batches.items()
        )
