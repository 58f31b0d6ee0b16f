"""Serializers for task arguments and results (:class:`~spreadqueue.interfaces.ISerializer`).

The queue's own envelopes are always msgpack (docs/protocol.md); these only turn the
application's arguments and results into the opaque ``args`` / ``payload`` bytes. The
sender and the workers of one queue must use the same serializer.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Final

import msgpack
from zope.interface import implementer

from .interfaces import ISerializer

__all__ = ["JsonSerializer", "MsgpackSerializer", "default_serializer"]

#: Upper bound on any single string / bytes / container in a payload we decode; a
#: payload never exceeds one Spread message anyway (143200 bytes).
_LIMIT: Final = 143200

# A Packer is reusable (and much cheaper than msgpack.packb's new one per call) but
# not shareable between threads: one per thread.
_local = threading.local()


@implementer(ISerializer)
class MsgpackSerializer:
    """msgpack with bin/str kept apart (``use_bin_type=True``, ``raw=False``)."""

    name = "msgpack"

    def dumps(self, obj: Any) -> bytes:
        """Bytes for ``obj``; TypeError for what msgpack cannot carry."""
        try:
            packer = _local.packer
        except AttributeError:
            packer = _local.packer = msgpack.Packer(use_bin_type=True)
        return packer.pack(obj)  # type: ignore[no-any-return]

    def loads(self, data: bytes) -> Any:
        """The object in ``data``; ValueError for anything malformed."""
        try:
            return msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=False,
                max_str_len=_LIMIT,
                max_bin_len=_LIMIT,
                max_array_len=_LIMIT,
                max_map_len=_LIMIT,
                max_ext_len=_LIMIT,
            )
        except Exception as e:  # msgpack raises several types for bad input
            raise ValueError(f"malformed msgpack payload: {e}") from None


@implementer(ISerializer)
class JsonSerializer:
    """Compact UTF-8 JSON (what a non-Python peer can produce most easily)."""

    name = "json"

    def dumps(self, obj: Any) -> bytes:
        """Bytes for ``obj``; TypeError for what JSON cannot carry."""
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def loads(self, data: bytes) -> Any:
        """The object in ``data``; ValueError for anything malformed."""
        try:
            return json.loads(data.decode("utf-8"))
        except (ValueError, RecursionError) as e:
            raise ValueError(f"malformed JSON payload: {e}") from None


_DEFAULT = MsgpackSerializer()


def default_serializer() -> MsgpackSerializer:
    """The serializer used when none is given (msgpack)."""
    return _DEFAULT
