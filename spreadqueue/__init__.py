"""spreadqueue: one-of-many queued task delivery over Spread, native to Twisted.

Everything an application uses is importable from here; :mod:`spreadqueue.testing`
(an in-memory Spread network for tests) and :mod:`spreadqueue.interfaces` (the
zope.interface contracts) are public too. Every other module is private and may
change without notice.

- Spread sessions: :func:`connect` opens a :class:`SpreadSession` (join, leave,
  multicast, listeners). Listeners get :class:`RegularMessage`,
  :class:`MembershipMessage` and :class:`RejectMessage` frames. With
  ``reconnect=True`` the session survives its daemon's restart; reconnect listeners
  get :class:`SessionLost` and :class:`SessionBack`, and sends while it is away raise
  :class:`SessionReconnecting`.
- The queue: :class:`Sender` (``submit`` / ``receive``, ``rpc``), :class:`Worker`
  (handlers by function name), :class:`ManagerService` (hands each task to exactly one
  worker), :class:`BlockingSender` (a Sender for plain scripts); :func:`run_in`
  says where a handler runs (the reactor, a thread pool, child processes);
  :class:`ReplyReader` reads the answers detached tasks send to a group. Answers are
  :class:`Reply` objects; failures are :class:`TaskError` subclasses.
- Serializers for task arguments and results: :class:`MsgpackSerializer` (the
  default) and :class:`JsonSerializer`.
"""

from __future__ import annotations

from ._defaults import default_queue, default_spread
from ._queue.blocking import BlockingSender
from ._queue.errors import (
    DeadLettered,
    NoManager,
    PayloadTooLarge,
    QueueError,
    QueueFull,
    QueueNameError,
    ReaderStopped,
    RemoteError,
    SenderStopped,
    TaskCancelled,
    TaskError,
    TaskTimeout,
    UnknownFunction,
    WorkerLost,
)
from ._queue.manager import ManagerService
from ._queue.pools import run_in
from ._queue.replies import ReplyReader
from ._queue.sender import Reply, Sender
from ._queue.serializer import JsonSerializer, MsgpackSerializer
from ._queue.worker import Task, Worker
from ._spread.client import ConnectTimeout, connect
from ._spread.errors import (
    AuthRejected,
    ConnectionRejected,
    IllegalGroupName,
    IllegalName,
    IllegalService,
    MessageTooLong,
    NameNotUnique,
    QuotaExceeded,
    SessionClosed,
    SpreadError,
    VersionRejected,
)
from ._spread.session import (
    ReceiveOverflow,
    SessionBack,
    SessionLost,
    SessionReconnecting,
    SpreadSession,
)
from ._spread.wire import (
    AGREED_MESS,
    CAUSAL_MESS,
    CAUSED_BY_DISCONNECT,
    CAUSED_BY_JOIN,
    CAUSED_BY_LEAVE,
    CAUSED_BY_NETWORK,
    FIFO_MESS,
    RELIABLE_MESS,
    SAFE_MESS,
    UNRELIABLE_MESS,
    MembershipMessage,
    RegularMessage,
    RejectMessage,
)
from ._version import __version__

__all__ = [
    "AGREED_MESS",
    "CAUSAL_MESS",
    "CAUSED_BY_DISCONNECT",
    "CAUSED_BY_JOIN",
    "CAUSED_BY_LEAVE",
    "CAUSED_BY_NETWORK",
    "FIFO_MESS",
    "RELIABLE_MESS",
    "SAFE_MESS",
    "UNRELIABLE_MESS",
    "AuthRejected",
    "BlockingSender",
    "ConnectTimeout",
    "ConnectionRejected",
    "DeadLettered",
    "IllegalGroupName",
    "IllegalName",
    "IllegalService",
    "JsonSerializer",
    "ManagerService",
    "MembershipMessage",
    "MessageTooLong",
    "MsgpackSerializer",
    "NameNotUnique",
    "NoManager",
    "PayloadTooLarge",
    "QueueError",
    "QueueFull",
    "QueueNameError",
    "QuotaExceeded",
    "ReaderStopped",
    "ReceiveOverflow",
    "RegularMessage",
    "RejectMessage",
    "RemoteError",
    "Reply",
    "ReplyReader",
    "Sender",
    "SenderStopped",
    "SessionBack",
    "SessionClosed",
    "SessionLost",
    "SessionReconnecting",
    "SpreadError",
    "SpreadSession",
    "Task",
    "TaskCancelled",
    "TaskError",
    "TaskTimeout",
    "UnknownFunction",
    "VersionRejected",
    "Worker",
    "WorkerLost",
    "__version__",
    "connect",
    "default_queue",
    "default_spread",
    "run_in",
]
