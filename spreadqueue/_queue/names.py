"""Queue names and the Spread groups derived from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .errors import QueueNameError

__all__ = ["MAX_QUEUE_NAME", "QueueGroups", "queue_groups", "validate_queue_name"]

#: Spread group names have at most 31 bytes; the longest suffix is 4 ('-mgr').
MAX_QUEUE_NAME: Final = 31 - 4

MANAGER_SUFFIX: Final = "-mgr"
WORKER_SUFFIX: Final = "-wrk"
SENDER_SUFFIX: Final = "-snd"


@dataclass(frozen=True, slots=True)
class QueueGroups:
    """The three Spread groups of one queue (see docs/protocol.md, "Groups")."""

    #: the queue's name
    queue: str
    #: ``queue-mgr``: managers join it; submits, registrations and done notices go there
    manager: str
    #: ``queue-wrk``: worker sessions and managers join it (worker failure detection)
    workers: str
    #: ``queue-snd``: sender sessions and managers join it (manager/sender failure
    #: detection)
    senders: str


def validate_queue_name(name: str) -> str:
    """Return ``name`` if it can name a queue, else raise :class:`QueueNameError`.

    A queue name is 1..27 bytes in '$'..'~' (0x24..0x7E: no spaces, no '#', ASCII
    only) so that ``name + '-mgr'`` is a legal public Spread group of at most 31 bytes.
    """
    if not isinstance(name, str):
        raise QueueNameError(f"a queue name must be a str, not {type(name).__name__}")
    if not name:
        raise QueueNameError("a queue name cannot be empty")
    bad = sorted({c for c in name if not 0x24 <= ord(c) <= 0x7E})
    if bad:
        raise QueueNameError(
            f"queue name {name!r} has characters Spread group names cannot carry: {bad!r} "
            "(allowed: ASCII '$'..'~', no spaces, no '#')"
        )
    if len(name) > MAX_QUEUE_NAME:
        raise QueueNameError(
            f"queue name {name!r} is {len(name)} characters; at most {MAX_QUEUE_NAME} so that "
            f"{name + MANAGER_SUFFIX!r} fits Spread's 31-byte group names"
        )
    return name


def queue_groups(name: str) -> QueueGroups:
    """The groups of queue ``name`` (validated)."""
    validate_queue_name(name)
    return QueueGroups(
        queue=name,
        manager=name + MANAGER_SUFFIX,
        workers=name + WORKER_SUFFIX,
        senders=name + SENDER_SUFFIX,
    )
