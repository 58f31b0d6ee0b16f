"""The Spread layer (private): the wire codec, client sessions and the embedded daemon.

It knows nothing of queues: nothing here imports :mod:`spreadqueue._queue` or the
service layer. See docs/architecture.md.
"""
