"""The contracts of the queue layer: serializers and assignment policies.

:mod:`spreadqueue.interfaces` re-exports them for applications.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class ISerializer(Interface):
    """Turns queue payloads (arguments, results) into bytes and back."""

    name = Attribute("A short name for the format, e.g. 'msgpack'.")

    def dumps(obj):  # type: ignore[no-untyped-def]
        """Bytes for ``obj``; raise TypeError for what the format cannot carry."""

    def loads(data):  # type: ignore[no-untyped-def]
        """The object encoded in ``data``; raise ValueError for malformed input."""


class IAssignmentPolicy(Interface):
    """Chooses which idle worker gets the next task (deterministically)."""

    def choose(candidates):  # type: ignore[no-untyped-def]
        """Return one of ``candidates`` (a non-empty sequence of worker ids, oldest idle
        first) to receive the next task."""
