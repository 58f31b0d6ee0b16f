"""Assignment policies (:class:`~spreadqueue.interfaces.IAssignmentPolicy`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from zope.interface import implementer

from .interfaces import IAssignmentPolicy

__all__ = ["LeastRecentlyUsed"]

T = TypeVar("T")


@implementer(IAssignmentPolicy)
class LeastRecentlyUsed:
    """Give the next task to the worker that has waited longest since its last task.

    The manager keeps its candidates oldest-first, so this is simply the first one;
    the manager recognises this policy and skips building the candidate list.
    """

    def choose(self, candidates: Sequence[T]) -> T:
        """The first (least recently used) candidate."""
        return candidates[0]
