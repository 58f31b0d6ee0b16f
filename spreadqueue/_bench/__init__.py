"""Benchmarks of spreadqueue (measurements, not tests: nothing here asserts a speed).

- ``spreadqueue bench`` (:mod:`.run`): the queue end to end, every role in its own
  process over loopback TCP. The parent (:mod:`.run`, :mod:`.phases` and
  :mod:`.replicas` with what they share in :mod:`.measure`, :mod:`.cluster`; every
  child through :mod:`.procs`) starts and drives agents
  (``python -m spreadqueue._bench.agent ROLE``: :mod:`.agent`, :mod:`.channel`,
  :mod:`.load`, :mod:`.rawload`) that build the product's own Sender, Worker and
  ManagerService objects, and the floor's bare Twisted processes (:mod:`.floor`);
  :mod:`.pingloop` counts both ping-pongs; :mod:`.procstat` reads CPU and memory
  from /proc, :mod:`.stats` and :mod:`.report` turn runs into figures,
  :mod:`.combine` merges separate runs, :mod:`.profiling` drives py-spy.
- ``python -m spreadqueue._bench.codec``: the sans-IO Spread codec alone.
"""
