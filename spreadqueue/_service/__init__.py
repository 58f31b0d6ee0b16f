"""The service layer (private): command-line options -> services, process assembly, the
command lines.

- ``*_tap`` modules hold ``Options`` and ``makeService`` as
  ``twisted.application.service.ServiceMaker`` expects; ``twisted/plugins/`` names them.
- :mod:`.processes` assembles whole manager and worker processes (sessions that come
  back after a daemon restart, an embedded daemon when none answers).
- :mod:`.cli`, :mod:`.demo`, :mod:`.rpc`: the ``spreadqueue`` and ``sqm`` commands.
"""
