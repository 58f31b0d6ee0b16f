"""One-of-many queued task delivery over Spread (the queue layer).

- :class:`Sender` submits calls and collects answers (``submit`` / ``receive``, ``rpc``);
  :class:`~spreadqueue.queue.blocking.BlockingSender` does the same for plain scripts.
- :class:`Worker` runs calls by function name.
- :class:`ManagerService` hands each call to exactly one available worker; its brain
  is the pure :class:`QueueManager`.

The wire format is described in docs/protocol.md.
"""

from __future__ import annotations

from .blocking import BlockingSender
from .errors import (
    MalformedMessage,
    NoManager,
    PayloadTooLarge,
    QueueError,
    QueueFull,
    QueueNameError,
    RemoteError,
    SenderStopped,
    TaskError,
    TaskTimeout,
    UnknownFunction,
    WorkerLost,
)
from .manager import ManagerService
from .messages import Kind, Reason, Status
from .names import QueueGroups, queue_groups, validate_queue_name
from .policy import LeastRecentlyUsed
from .sender import Reply, Sender
from .serializer import JsonSerializer, MsgpackSerializer
from .state import Effect, QueueManager
from .worker import Task, Worker

__all__ = [
    "BlockingSender",
    "Effect",
    "JsonSerializer",
    "Kind",
    "LeastRecentlyUsed",
    "MalformedMessage",
    "ManagerService",
    "MsgpackSerializer",
    "NoManager",
    "PayloadTooLarge",
    "QueueError",
    "QueueFull",
    "QueueGroups",
    "QueueManager",
    "QueueNameError",
    "Reason",
    "RemoteError",
    "Reply",
    "Sender",
    "SenderStopped",
    "Status",
    "Task",
    "TaskError",
    "TaskTimeout",
    "UnknownFunction",
    "Worker",
    "WorkerLost",
    "queue_groups",
    "validate_queue_name",
]
