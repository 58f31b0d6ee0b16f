"""How the benchmark counts a ping-pong: one rule for the Spread ping-pong and the floor.

A ping-pong is sequential: one ping out, wait for its echo, then the next ping. A round
trip counts when its echo arrives inside the measured window ``[t0_ns, t1_ns)``
(CLOCK_MONOTONIC, the same in every process), whenever its ping was sent; its latency
is the echo's arrival minus the ping's send time. No ping is sent once an echo arrives
at or after ``t1``. This is the rule of every other rate of the bench (rpc calls, relay
messages, worker tasks: what completes in the window), so that a round trip per second
compares with a call per second.

:class:`PingLoop` leaves the transport to its caller: it is given a function that sends
one ping, and is told when the echo is complete (:meth:`PingLoop.answered`) or can no
longer come (:meth:`PingLoop.lost`). It imports nothing of Spread, so the floor's bare
Twisted pinger (:mod:`spreadqueue._bench.floor`) counts with it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["PingLoop"]


class PingLoop:
    """Sequential round trips, ``send()`` starting each, until the window ends.

    :meth:`run` fires with ``{"latencies_ns": [...], "lost": 0 | 1}``: the latencies of
    the round trips completed in the window, and 1 in ``lost`` if the last echo never
    came (:meth:`lost` was called, or ``timeout`` seconds after ``t1_ns`` it had not).
    ``clock`` gives monotonic nanoseconds (tests give a fake one).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        send: Callable[[], object],
        t0_ns: int,
        t1_ns: int,
        *,
        timeout: float = 10.0,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._reactor = reactor
        self._send = send
        self._t0, self._t1 = t0_ns, t1_ns
        self._timeout = timeout
        self._clock = clock
        self._sent_at = 0
        self._latencies: list[int] = []
        self._done: Deferred[dict[str, Any]] = Deferred()
        self._deadline: IDelayedCall | None = None

    def run(self) -> Deferred[dict[str, Any]]:
        """Send the first ping; the Deferred fires once an echo arrived after the window."""
        # One timer for the whole run rather than one per ping: re-arming a timer on
        # every round trip would add its cost to the latency being measured. No ping
        # goes out after t1, so an echo still missing at t1 + timeout was lost.
        wait_s = max(0.0, (self._t1 - self._clock()) / 1e9) + self._timeout
        self._deadline = self._reactor.callLater(wait_s, self.lost)
        self._ping()
        return self._done

    def _ping(self) -> None:
        self._sent_at = self._clock()
        self._send()

    def answered(self) -> None:
        """The echo of the ping in flight is complete: count it, then ping again or finish."""
        if self._done.called:
            return  # an echo after the loop gave up on it
        now = self._clock()
        if self._t0 <= now < self._t1:
            self._latencies.append(now - self._sent_at)
        if now < self._t1:
            self._ping()
        else:
            self._finish(lost=0)

    def lost(self) -> None:
        """The echo in flight will never come (or did not in time): finish with lost 1."""
        self._finish(lost=1)

    def _finish(self, lost: int) -> None:
        if self._done.called:
            return
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._done.callback({"latencies_ns": self._latencies, "lost": lost})
