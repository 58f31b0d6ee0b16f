"""The asyncio face's private parts: what :mod:`spreadqueue.aio` is built of.

The queue's objects (:class:`~spreadqueue._queue.sender.Sender`,
:class:`~spreadqueue._queue.worker.Worker`, the session and the Spread client protocol)
run unchanged on an asyncio loop: :mod:`.clock` gives them the loop as their reactor
(time, timers, calls from threads), :mod:`.link` carries the Spread client protocol
over an asyncio transport, :mod:`.bridge` turns Deferreds into awaitables and
coroutines into Deferreds, and :mod:`.logs` hands their log events to :mod:`logging`.
No Twisted reactor is involved.
"""
