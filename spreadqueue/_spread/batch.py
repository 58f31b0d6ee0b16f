"""Work put off to the end of a batch of deliveries: the one mechanism behind per-read
batching.

Everything one socket read decodes is handled as one batch: the frames are dispatched,
and what their handlers put off with :meth:`DeliveryBatch.defer` runs when the last of
them is done, in the same reactor turn. That is how one process wake-up sends one
message per destination however many tasks it carries, and writes one buffer per
connection however many messages that is.

The deferred work runs in *stages*, lowest first, and again from the lowest stage
whenever a stage put off more: an owner orders what must happen first. The client
runs its listeners' work (stage 0) before it writes (stage 1), so what they send
goes out in the read's one write; the embedded daemon writes to its sockets (stage 0)
before it hands frames to in-process sessions (stage 1), so a remote reader never
waits for local work.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["DeliveryBatch"]

_log = Logger()


class DeliveryBatch:
    """Brackets of deliveries (``with batch:``, or :meth:`begin` / :meth:`end`; they
    nest) and the work put off to the end of the outermost one.

    ``stages`` is how many stages the work is sorted into. ``reactor`` (needed only for
    :meth:`soon`) runs work put off outside any bracket on the next reactor turn.
    """

    __slots__ = ("_call", "_reactor", "_stages", "_waiting", "depth")

    def __init__(self, stages: int = 1, reactor: IReactorTime | None = None) -> None:
        if stages < 1:
            raise ValueError("a batch needs at least one stage")
        #: brackets open now; 0 outside any delivery
        self.depth = 0
        self._stages: list[list[Callable[[], object]]] = [[] for _ in range(stages)]
        self._waiting = False  # some work is put off
        self._reactor = reactor
        self._call: IDelayedCall | None = None

    def begin(self) -> None:
        """A delivery starts (brackets nest)."""
        self.depth += 1

    def end(self) -> None:
        """A delivery ends; the outermost end runs the work put off meanwhile.

        Call it once per :meth:`begin`, also when the delivery failed.
        """
        if self.depth == 1 and self._waiting:
            self._run()
        self.depth -= 1

    def __enter__(self) -> DeliveryBatch:
        self.begin()
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()

    def defer(self, fn: Callable[[], object], stage: int = 0) -> bool:
        """Run ``fn()`` at the end of the current batch, in ``stage``.

        Returns False, and schedules nothing, outside any bracket: the caller then
        picks its own moment (or uses :meth:`soon`).
        """
        if not self.depth:
            return False
        self._stages[stage].append(fn)
        self._waiting = True
        return True

    def soon(self, fn: Callable[[], object], stage: int = 0) -> None:
        """Run ``fn()`` at the end of the current batch, or, outside any, in a batch of
        its own on the next reactor turn (with everything else put off until then)."""
        self._stages[stage].append(fn)
        self._waiting = True
        if not self.depth and self._call is None:
            if self._reactor is None:
                raise RuntimeError("DeliveryBatch.soon outside a batch needs a reactor")
            self._call = self._reactor.callLater(0, self._next_turn)

    def _next_turn(self) -> None:
        self._call = None
        self.depth += 1
        try:
            self._run()
        finally:
            self.depth -= 1

    def _run(self) -> None:
        """Run every stage's work, lowest stage first, until none is left."""
        stages = self._stages
        i, n = 0, len(stages)
        while i < n:
            work = stages[i]
            if not work:
                i += 1
                continue
            stages[i] = []
            for fn in work:
                try:
                    fn()
                except Exception:
                    _log.failure("work put off to the end of a delivery failed")
            i = 0  # start again from the lowest stage
        self._waiting = False
        call = self._call
        if call is not None:
            self._call = None
            if call.active():
                call.cancel()  # what it was for has just run
