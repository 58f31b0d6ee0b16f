"""The queue layer (private): messages, the manager's state machine, manager, worker
and sender services over any Spread session.

It builds on :mod:`spreadqueue._spread` and never imports the service layer
(:mod:`spreadqueue._service`, :mod:`spreadqueue._bench`). Its public names are
re-exported by :mod:`spreadqueue`. The wire format is docs/protocol.md.
"""
