"""twistd / twist plugins of spreadqueue: service makers only, no logic.

Run them as ``twistd -n spread-daemon``, ``twistd -n spreadqueue-manager --queue Q`` or
``twistd -n spreadqueue-worker --queue Q --handlers module:object`` (or with ``twist``).
"""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

spreadDaemon = ServiceMaker(
    "spreadqueue embedded Spread daemon",
    "spreadqueue._service.daemon_tap",
    "A Spread 4/5 compatible daemon (client protocol) for one machine.",
    "spread-daemon",
)
spreadqueueManager = ServiceMaker(
    "spreadqueue queue manager",
    "spreadqueue._service.manager_tap",
    "A spreadqueue queue manager (sqm): assigns each task to one worker.",
    "spreadqueue-manager",
)
spreadqueueWorker = ServiceMaker(
    "spreadqueue worker",
    "spreadqueue._service.worker_tap",
    "A spreadqueue worker running the handlers of module:object.",
    "spreadqueue-worker",
)
spreadqueueLean = Reactor(
    "spreadqueue-lean",
    "spreadqueue._service.reactors",
    "epoll with a shorter path for readable descriptors (spreadqueue's default)",
)
spreadqueueUvloop = Reactor(
    "spreadqueue-uvloop",
    "spreadqueue._service.reactors.uvloop_installer",
    "asyncio reactor on uvloop",
)
