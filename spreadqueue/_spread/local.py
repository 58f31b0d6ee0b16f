"""In-process sessions of the embedded daemon: a SpreadSession with no socket.

:func:`local_session` gives a :class:`~spreadqueue._spread.session.SpreadSession` like
any other, whose link (:class:`LocalLink`) calls the daemon's
:class:`~spreadqueue._spread.core.DaemonCore` directly and whose sink
(:class:`LocalInbox`) hands it the daemon's decoded frames: no encoding, no socket, no
wake-up between them. ``sqm`` runs its manager this way when it starts the daemon
itself, and :mod:`spreadqueue.testing` builds its fake network on it.

Like a socket, the inbox never calls the session back from inside the send that caused
a delivery (a SpreadSession registers what it waits for after sending). Frames
delivered while the daemon handles a read are handed over at the end of that read's
batch, after the daemon has written to its sockets (a remote reader never waits for
local work); frames delivered outside a read, on the next reactor turn. Either way
all the frames waiting then go over as one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from twisted.logger import Logger
from zope.interface import implementer

from .batch import DeliveryBatch
from .core import DaemonCore, Envelope, Session
from .errors import SessionClosed
from .interfaces import ISessionLink, ISessionSink
from .session import SpreadSession
from .wire import CONTROL_MESS, REGULAR_MESS, ToClient

if TYPE_CHECKING:
    from .daemon import SpreadDaemonFactory

__all__ = ["LOCAL_STAGE", "CallbackSink", "LocalInbox", "LocalLink", "local_session"]

#: The stage of the daemon's delivery batch in which in-process sessions get their
#: frames: after stage 0, the writes to sockets.
LOCAL_STAGE: Final = 1
_LINK_NAME_CACHE: Final = 4096
_CLOSED_MARK: Final = object()

log = Logger(namespace="spreadqueue._spread.daemon")


@implementer(ISessionLink)
class LocalLink:
    """An :class:`~spreadqueue.interfaces.ISessionLink` straight into a
    :class:`~spreadqueue._spread.core.DaemonCore`: an in-process session, no socket, no
    encoding.

    Pair it with a sink given to :meth:`DaemonCore.connect`. ``on_closed`` is called
    once, when :meth:`send_kill` has closed the session.
    """

    def __init__(
        self,
        core: DaemonCore,
        session: Session,
        on_closed: Callable[[], object] | None = None,
    ) -> None:
        self.core = core
        self.session = session
        self._on_closed = on_closed
        self._killed = False
        # destination lists as the core wants them (str names), by what we were given
        self._names: dict[Any, tuple[str, ...]] = {}

    def _check_open(self) -> None:
        if self._killed or not self.session.is_open:
            raise SessionClosed("the session is closed")

    def send_multicast(
        self, service_type: int, groups: Sequence[bytes | str], mess_type: int, data: bytes
    ) -> None:
        """Multicast ``data`` to ``groups`` (bytes or str names)."""
        self._check_open()
        kinds = service_type & (REGULAR_MESS | CONTROL_MESS)
        if kinds == 0 or kinds & (kinds - 1) or kinds & CONTROL_MESS:
            raise ValueError(f"service type 0x{service_type:x} needs exactly one service level")
        key = groups[0] if len(groups) == 1 else tuple(groups)
        names = self._names.get(key)
        if names is None:
            names = tuple(g if isinstance(g, str) else g.decode("latin-1") for g in groups)
            if len(self._names) < _LINK_NAME_CACHE:
                self._names[key] = names
        self.core.multicast(self.session, service_type, names, bytes(data), mess_type)

    def send_join(self, group: bytes | str) -> None:
        """Join ``group``."""
        self._check_open()
        self.core.join(self.session, group if isinstance(group, str) else group.decode("latin-1"))

    def send_leave(self, group: bytes | str) -> None:
        """Leave ``group``."""
        self._check_open()
        self.core.leave(self.session, group if isinstance(group, str) else group.decode("latin-1"))

    def send_kill(self) -> None:
        """Disconnect the session (idempotent)."""
        if self._killed:
            return
        self._killed = True
        self.core.disconnect(self.session)
        if self._on_closed is not None:
            self._on_closed()


@implementer(ISessionSink)
class LocalInbox:
    """Hands an in-process session its frames, in order, as one batch per drain, in
    stage :data:`LOCAL_STAGE` of the daemon's ``batch`` (see the module doc)."""

    __slots__ = ("_batch", "_end", "_queue", "_scheduled", "high_water", "link", "session")

    def __init__(self, batch: DeliveryBatch) -> None:
        self._batch = batch
        self._queue: list[Any] = []
        self._scheduled = False  # a drain is due (at the batch's end or next turn)
        # where in _queue the session ends (None: not closed); an index, not a search
        # for the mark, which would compare every frame with it (__eq__ of each)
        self._end: int | None = None
        self.session: SpreadSession | None = None
        #: the link it belongs to (a reconnecting session has one after the other)
        self.link: LocalLink | None = None
        #: the most frames that ever waited to be handed over at once
        self.high_water = 0

    def deliver(self, envelope: Envelope) -> None:
        """Queue ``envelope``'s frame for the session."""
        self._push(envelope.frame)

    def closed(self) -> None:
        """The session was disconnected: end it after the frames already queued."""
        if self._end is None:
            self._end = len(self._queue)
        self._push(_CLOSED_MARK)

    def _push(self, item: object) -> None:
        self._queue.append(item)
        if not self._scheduled:
            self._scheduled = True
            self._batch.soon(self._drain, LOCAL_STAGE)

    def _drain(self) -> None:
        self._scheduled = False
        session = self.session
        if session is None:
            return
        queue, self._queue = self._queue, []
        if len(queue) > self.high_water:
            self.high_water = len(queue)
        end, self._end = self._end, None
        if end is None:
            session.deliver(queue)
            return
        session.deliver(queue[:end])
        session.connection_lost(SessionClosed("disconnected"), link=self.link)


@implementer(ISessionSink)
class CallbackSink:
    """Hands the decoded frame of every delivery to ``receive``, at once (for tests and
    tools that drive a :class:`~spreadqueue._spread.core.DaemonCore` directly).

    ``on_error`` gets any exception ``receive`` raises, so one faulty receiver cannot
    break delivery to the other sessions.
    """

    __slots__ = ("_on_error", "_receive")

    def __init__(
        self,
        receive: Callable[[ToClient], object],
        on_error: Callable[[BaseException], object] | None = None,
    ) -> None:
        self._receive = receive
        self._on_error = on_error

    def deliver(self, envelope: Envelope) -> None:
        """Call ``receive(envelope.frame)``."""
        try:
            self._receive(envelope.frame)
        except Exception as exc:
            if self._on_error is None:
                raise
            self._on_error(exc)


def local_session(
    daemon: SpreadDaemonFactory,
    name: str = "",
    *,
    membership: bool = True,
    resume: SpreadSession | None = None,
    **session_options: Any,
) -> SpreadSession:
    """An in-process session of the embedded ``daemon`` (see the module doc).

    ``name`` is the private name ('' lets the daemon invent one). Raises
    QuotaExceeded, IllegalName or NameNotUnique. ``session_options`` go to
    SpreadSession (e.g. ``receive_queue_size``). ``resume`` is a reconnecting session
    that is away: it goes on over this new link (:meth:`SpreadSession.relink`) and is
    returned; SessionClosed if it has ended meanwhile.
    """
    inbox = LocalInbox(daemon.batch)
    core_session = daemon.core.connect(inbox, name, membership=membership)

    def closed() -> None:
        daemon.local_links.discard(link)
        inbox.closed()

    link = inbox.link = LocalLink(daemon.core, core_session, on_closed=closed)
    if resume is None:
        session = SpreadSession(
            link, core_session.private_group, membership=membership, **session_options
        )
    else:
        session = resume
        try:
            session.relink(link, core_session.private_group)
        except SessionClosed:
            link.send_kill()
            raise
    inbox.session = session
    daemon.local_links.add(link)
    log.info(
        "Spread session {private_group} connected in process",
        spread_event="connect",
        private_group=core_session.private_group,
        peer="in-process",
        membership=membership,
    )
    return session
