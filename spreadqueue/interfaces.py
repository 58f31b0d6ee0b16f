"""The zope.interface contracts of spreadqueue, for applications and their tests.

Depend on these rather than on concrete classes, so that the in-memory fake of
:mod:`spreadqueue.testing` can stand in for a real daemon. Every implementation in
spreadqueue is checked with :func:`zope.interface.verify.verifyObject` in its tests.
"""

from __future__ import annotations

from ._queue.interfaces import IAssignmentPolicy, ISerializer
from ._spread.interfaces import ISessionLink, ISessionSink, ISpreadSession

__all__ = ["IAssignmentPolicy", "ISerializer", "ISessionLink", "ISessionSink", "ISpreadSession"]
