"""Writing to a Twisted transport without an extra reactor turn per write.

Twisted's TCP transports buffer every ``write``: the bytes go out on the next reactor
iteration, after ``startWriting`` (an ``epoll_ctl``), a writable event, ``doWrite`` and
``stopWriting`` (another ``epoll_ctl``). For a latency-bound protocol of small messages
that is most of the cost of a send. :class:`Output` sends straight to the socket when
the transport has nothing buffered (so order is kept), and hands whatever the socket
does not take to ``transport.write`` (so Twisted's buffering, producer pausing and
error handling apply unchanged from there on).

Writes made while the connection's :class:`~spreadqueue._spread.batch.DeliveryBatch`
is open (the replies made while handling one read) are joined and sent once, at the
batch's end, or as soon as ``flush_at`` bytes are pending (so that a producer writing
in a loop still meets the transport's back-pressure).

Only Twisted's own TCP (and Unix) transports get the direct path; any other transport
(``StringTransport``, TLS, a wrapper) gets plain ``write`` / ``writeSequence``.
"""

from __future__ import annotations

from typing import Any, Final

from twisted.internet import tcp

from .batch import DeliveryBatch

__all__ = ["FLUSH_AT", "Output"]

#: Bytes a batch may hold before it is written out (Twisted's own buffer bound).
FLUSH_AT: Final = 65536
#: Batches at least this big, in at most _GATHER_PARTS pieces, are sent with one
#: sendmsg (no join); smaller ones are joined (one copy is cheaper than an iovec).
_GATHER_FROM: Final = 16384
_GATHER_PARTS: Final = 64


def _direct_socket(transport: Any) -> Any:
    """The socket of a plain Twisted TCP/Unix transport, or None."""
    if not isinstance(transport, tcp.Connection):
        return None
    return getattr(transport, "socket", None)


class Output:
    """The write side of one connection: direct sends, batches (see the module doc).

    ``batch`` (optional) is the connection's delivery batch: while it is open, writes
    wait for its end, and the flush runs in its stage ``stage``. With ``later``, writes
    made outside the batch wait too, until the next reactor turn (the batch's
    :meth:`~spreadqueue._spread.batch.DeliveryBatch.soon`); without it they go out at
    once.
    """

    __slots__ = (
        "_batch",
        "_later",
        "_pending",
        "_send",
        "_sendmsg",
        "_size",
        "_stage",
        "flush_at",
        "transport",
    )

    def __init__(
        self,
        transport: Any,
        batch: DeliveryBatch | None = None,
        *,
        stage: int = 0,
        later: bool = False,
        flush_at: int = FLUSH_AT,
    ) -> None:
        self.transport = transport
        sock = _direct_socket(transport)
        self._send = None if sock is None else sock.send
        self._sendmsg = None if sock is None else sock.sendmsg
        self._batch = batch
        self._stage = stage
        self._later = later
        self._pending: list[bytes] = []
        self._size = 0
        self.flush_at = flush_at

    @property
    def pending(self) -> int:
        """Bytes waiting for the end of the batch."""
        return self._size

    def _hold(self) -> bool:
        """True when a write now must wait (and makes sure a flush is due)."""
        batch = self._batch
        if batch is None or not (batch.depth or self._later):
            return False
        if not self._pending:
            batch.soon(self.flush, self._stage)
        return True

    def write(self, data: bytes) -> None:
        """Write ``data`` now, or at the end of the open batch."""
        # _hold(), inlined: this runs once per message sent or delivered.
        batch = self._batch
        if batch is not None and (batch.depth or self._later):
            pending = self._pending
            if not pending:
                batch.soon(self.flush, self._stage)
            pending.append(data)
            self._size += len(data)
            if self._size >= self.flush_at:
                self.flush()
            return
        self._write(data)

    def write_many(self, parts: list[bytes]) -> None:
        """Write ``parts`` (in order) as one write, without joining big ones."""
        if self._hold():
            self._pending.extend(parts)
            for part in parts:
                self._size += len(part)
            if self._size >= self.flush_at:
                self.flush()
            return
        self._write_parts(parts)

    def flush(self) -> None:
        """Write what is waiting now."""
        pending = self._pending
        if not pending:
            return
        size = self._size
        self._pending = []
        self._size = 0
        if len(pending) == 1:
            self._write(pending[0])
        elif size < _GATHER_FROM or len(pending) > _GATHER_PARTS:
            self._write(b"".join(pending))
        else:
            self._write_parts(pending)

    def discard(self) -> None:
        """Drop what is waiting (the connection is being aborted or closed)."""
        self._pending = []
        self._size = 0

    def _direct(self) -> bool:
        """True when the socket may be written to now (nothing buffered before us)."""
        t = self.transport
        return not (
            t.dataBuffer
            or t._tempDataLen
            or not t.connected
            or t.disconnecting
            or t._writeDisconnecting
            or t._writeDisconnected
            or t.TLS
        )

    def _write(self, data: bytes) -> None:
        send = self._send
        t = self.transport
        # _direct(), inlined: this runs once per message written.
        if (
            send is None
            or t.dataBuffer
            or t._tempDataLen
            or not t.connected
            or t.disconnecting
            or t._writeDisconnecting
            or t._writeDisconnected
            or t.TLS
        ):
            t.write(data)
            return
        try:
            sent = send(data)
        except OSError:
            # EAGAIN (full), or a broken connection: Twisted's doWrite finds out which.
            t.write(data)
            return
        if sent < len(data):
            t.write(data[sent:])

    def _write_parts(self, parts: list[bytes]) -> None:
        sendmsg = self._sendmsg
        if sendmsg is None or len(parts) > _GATHER_PARTS or not self._direct():
            self.transport.writeSequence(parts)
            return
        try:
            sent = sendmsg(parts)
        except OSError:
            self.transport.writeSequence(parts)
            return
        for i, part in enumerate(parts):
            if sent < len(part):
                rest = parts[i:]
                if sent:
                    rest[0] = part[sent:]
                self.transport.writeSequence(rest)
                return
            sent -= len(part)
