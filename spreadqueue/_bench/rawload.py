"""Plain Spread traffic between two sessions, no queue: the floor the queue stands on.

- Ping-pong: :class:`Echo` sends every message it gets back to its sender;
  :class:`PingPong` sends one message, waits for the echo, sends the next, and counts
  and times the round trips as the floor's pinger does
  (:class:`~spreadqueue._bench.pingloop.PingLoop`).
- Relay: :class:`RelaySender` streams messages to a :class:`RelayReceiver` as fast as
  the daemon relays them. The daemon drops a session that falls 1000 messages behind,
  so the stream is paced by acknowledgements: the receiver sends back its count every
  ``ack_every`` messages, and the sender never has more than ``window`` messages
  beyond the last count it heard (window 500, ack every 100 by default: at most 600
  messages are ever queued for the receiver).

Every message is AGREED, as the queue's are, with a 16-bit type of ours.
"""

from __future__ import annotations

import struct
import time
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from .._spread import wire
from .._spread.session import SpreadSession
from .pingloop import PingLoop

__all__ = ["Echo", "PingPong", "RelayReceiver", "RelaySender"]

PING: int = 0x0B01
DATA: int = 0x0B02
ACK: int = 0x0B03
SERVICE: int = wire.AGREED_MESS
_COUNT = struct.Struct("<Q")


class Echo:
    """Answers every ping on ``session`` with the same bytes, to the ping's sender."""

    def __init__(self, session: SpreadSession) -> None:
        self._session = session
        session.add_listener(self._on_frame, session.private_group)

    def _on_frame(self, frame: object) -> None:
        if type(frame) is wire.RegularMessage and frame.mess_type == PING:
            self._session.multicast(frame.sender, frame.data, service=SERVICE, mess_type=PING)

    def stop(self) -> None:
        """Stop answering."""
        self._session.remove_listener(self._on_frame, self._session.private_group)


class PingPong:
    """Sequential round trips of ``size``-byte messages to ``peer`` (an :class:`Echo`)
    until ``t1_ns``, counted by :class:`~spreadqueue._bench.pingloop.PingLoop`.

    :meth:`run` fires with ``{"latencies_ns": [...], "lost": 0 | 1}``.
    """

    def __init__(self, reactor: IReactorTime, session: SpreadSession, peer: str, size: int):
        self._reactor = reactor
        self._session = session
        self._peer = peer
        self._data = bytes(size)

    def run(self, t0_ns: int, t1_ns: int) -> Deferred[dict[str, Any]]:
        """Ping until ``t1_ns``, counting round trips completed in ``[t0_ns, t1_ns)``."""
        session = self._session
        loop = PingLoop(self._reactor, self._ping, t0_ns, t1_ns)

        def on_frame(frame: object) -> None:
            if type(frame) is wire.RegularMessage and frame.mess_type == PING:
                loop.answered()

        def unlisten(result: dict[str, Any]) -> dict[str, Any]:
            session.remove_listener(on_frame, session.private_group)
            return result

        session.add_listener(on_frame, session.private_group)
        return loop.run().addCallback(unlisten)

    def _ping(self) -> None:
        self._session.multicast(self._peer, self._data, service=SERVICE, mess_type=PING)


class RelayReceiver:
    """Counts the relay's messages, acknowledging every ``ack_every`` of them.

    :meth:`stats` tells how many arrived in all and in ``[t0_ns, t1_ns)``.
    """

    def __init__(self, session: SpreadSession, ack_every: int, t0_ns: int, t1_ns: int) -> None:
        self._session = session
        self._ack_every = ack_every
        self._t0, self._t1 = t0_ns, t1_ns
        self.received = 0
        self.in_window = 0
        session.add_listener(self._on_frame, session.private_group)

    def _on_frame(self, frame: object) -> None:
        if type(frame) is not wire.RegularMessage or frame.mess_type != DATA:
            return
        self.received += 1
        now = time.monotonic_ns()
        if self._t0 <= now < self._t1:
            self.in_window += 1
        if self.received % self._ack_every == 0:
            self._session.multicast(
                frame.sender, _COUNT.pack(self.received), service=SERVICE, mess_type=ACK
            )

    def stats(self) -> dict[str, int]:
        """Messages received in all and in the window."""
        return {"received": self.received, "in_window": self.in_window}

    def stop(self) -> None:
        """Stop counting."""
        self._session.remove_listener(self._on_frame, self._session.private_group)


class RelaySender:
    """Streams ``size``-byte messages to ``peer`` until ``t1_ns``, at most ``window``
    beyond the receiver's last acknowledged count (and only while the session is
    writable). :meth:`run` fires with ``{"sent": n}`` at ``t1_ns``."""

    def __init__(
        self,
        reactor: IReactorTime,
        session: SpreadSession,
        peer: str,
        size: int,
        window: int,
        t1_ns: int,
    ) -> None:
        self._reactor = reactor
        self._session = session
        self._peer = peer
        self._data = bytes(size)
        self._window = window
        self._t1 = t1_ns
        self.sent = 0
        self._acked = 0
        self._waiting = False
        self._done: Deferred[dict[str, Any]] = Deferred()

    def run(self) -> Deferred[dict[str, Any]]:
        """Start streaming; fires at ``t1_ns``."""
        self._session.add_listener(self._on_frame, self._session.private_group)
        delay = max(0.0, (self._t1 - time.monotonic_ns()) / 1e9)
        self._reactor.callLater(delay, self._finish)
        self._pump()
        return self._done

    def _on_frame(self, frame: object) -> None:
        if type(frame) is wire.RegularMessage and frame.mess_type == ACK:
            (count,) = _COUNT.unpack(frame.data)
            self._acked = max(self._acked, count)
            self._pump()

    def _pump(self) -> None:
        if self._done.called or self._waiting:
            return
        session = self._session
        limit = self._acked + self._window
        multicast, peer, data = session.multicast, self._peer, self._data
        while self.sent < limit:
            if not session.writable:
                # the socket buffer is full: go on once it drained
                self._waiting = True
                session.whenWritable().addCallback(self._writable)
                return
            multicast(peer, data, service=SERVICE, mess_type=DATA)
            self.sent += 1

    def _writable(self, _: object) -> None:
        self._waiting = False
        self._pump()

    def _finish(self) -> None:
        if not self._done.called:
            self._session.remove_listener(self._on_frame, self._session.private_group)
            self._done.callback({"sent": self.sent})
