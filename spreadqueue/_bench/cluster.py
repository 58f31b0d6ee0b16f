"""The processes of one benchmark: a Spread daemon, a manager, pools of workers and senders.

Pools grow and shrink on demand (:meth:`Cluster.workers_of`, :meth:`Cluster.senders_of`)
so that phases reuse processes rather than starting 64 workers over and over. Every
process started through the cluster is stopped (or killed) by :meth:`Cluster.close`,
whatever happened.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from .._service.reactors import DEFAULT as DEFAULT_REACTOR
from .._service.reactors import TWIST_REACTOR_ARGS
from .procs import Child, ChildError, python_module, stop_all

__all__ = ["Cluster"]


class Cluster:
    """Benchmark processes on one Spread daemon: embedded (``spread`` None: started
    here, on a free loopback port) or external (``spread``, a client endpoint).

    ``concurrency`` is each pool worker's concurrency (credits). With ``colocate`` the
    manager runs inside the daemon's process on an in-process session, as ``sqm`` runs
    it when it starts the embedded daemon itself.
    """

    def __init__(
        self,
        workdir: Path,
        spread: str | None,
        *,
        concurrency: int = 1,
        colocate: bool = False,
        reactor: str = DEFAULT_REACTOR,
    ) -> None:
        self.workdir = workdir
        #: the reactor every agent runs on (``--reactor``)
        self.reactor = reactor
        self.external = spread is not None
        self.colocate = colocate and spread is None
        self.endpoint = spread or ""
        self.concurrency = concurrency
        #: a fresh queue name, so a shared external daemon may run several benches
        self.queue = f"bench-{secrets.token_hex(4)}"
        self.daemon: Child | None = None
        self.manager: Child | None = None
        self.workers: list[Child] = []
        self.senders: list[Child] = []
        #: workers started to be killed (failover), outside the pool
        self.victims: list[Child] = []
        self._all: list[Child] = []
        self._labels: Counter[str] = Counter()

    # ------------------------------------------------------------------ starting

    def start(self) -> None:
        """Start the embedded daemon (unless external) and wait until it listens."""
        if self.colocate:
            sqm = self._agent("sqm", "sqm", ["--queue", self.queue])
            sqm.wait_ready()
            self.manager = sqm
            self.endpoint = _loopback(sqm.ready["port"])
        elif not self.external:
            self.daemon = _start_daemon(self.workdir, self.reactor)
            self.endpoint = _loopback(int(self.daemon.wait_ready()["text"]))

    def _agent(self, label: str, role: str, argv: Sequence[str]) -> Child:
        """Start agent ``role`` (without waiting for it), to be stopped by :meth:`close`."""
        argv = [*argv, "--reactor", self.reactor]
        agent = Child(label, python_module("spreadqueue._bench.agent", role, *argv), self.workdir)
        self._all.append(agent)
        return agent

    def spawn(
        self, role: str, *args: str, queue: str | None = None, spread: str | None = None
    ) -> Child:
        """Start one agent (without waiting for it to be ready), on the cluster's daemon
        or on ``spread``."""
        self._labels[role] += 1
        label = f"{role}{self._labels[role]}"
        argv = ["--spread", spread or self.endpoint, *args]
        if role != "raw":
            argv += ["--queue", queue or self.queue]
        return self._agent(label, role, argv)

    def start_agents(
        self, role: str, count: int, *args: str, queue: str | None = None
    ) -> list[Child]:
        """Start ``count`` agents at once and wait until every one is ready."""
        agents = [self.spawn(role, *args, queue=queue) for _ in range(count)]
        for agent in agents:
            agent.wait_ready()
        return agents

    def start_manager(self) -> Child:
        """The queue's manager (started once, then reused)."""
        if self.manager is None:
            (self.manager,) = self.start_agents("manager", 1)
        return self.manager

    def workers_of(self, count: int) -> list[Child]:
        """Exactly ``count`` pool workers, registered with the manager; start or stop
        some as needed (the newest are stopped first)."""
        self.start_manager()
        if count > len(self.workers):
            self.workers += self.start_agents(
                "worker", count - len(self.workers), "--concurrency", str(self.concurrency)
            )
        elif count < len(self.workers):
            extra = self.workers[count:]
            del self.workers[count:]
            self.retire(extra)
        self.wait_registered()
        return list(self.workers)

    def senders_of(self, count: int) -> list[Child]:
        """Exactly ``count`` pool senders (newest stopped first)."""
        self.start_manager()
        if count > len(self.senders):
            self.senders += self.start_agents("sender", count - len(self.senders))
        elif count < len(self.senders):
            extra = self.senders[count:]
            del self.senders[count:]
            self.retire(extra)
        return list(self.senders)

    def start_victims(self, count: int) -> list[Child]:
        """Start ``count`` workers that hold their first ``hold`` task for ever (until
        :meth:`kill_victim`); they are not in the pool."""
        self.start_manager()
        victims = self.start_agents("worker", count, "--victim")
        self.victims += victims
        return victims

    def kill_victim(self, victim: Child) -> None:
        """SIGKILL a victim (if it still runs), reap it and forget it."""
        victim.kill()
        if victim in self.victims:
            self.victims.remove(victim)
        self.forget([victim])

    def kill(self, agents: Sequence[Child]) -> None:
        """SIGKILL ``agents``, reap them and forget them."""
        for agent in agents:
            agent.kill()
        self.forget(agents)

    def wait_registered(self, timeout: float = 30.0) -> None:
        """Wait until the manager knows exactly the pool's workers and the victims."""
        count = len(self.workers) + len(self.victims)
        manager = self.start_manager()
        deadline = time.monotonic() + timeout
        while True:
            known = manager.request("stats")["workers"]
            if known == count:
                return
            if time.monotonic() > deadline:
                raise ChildError(f"the manager knows {known} workers, expected {count}")
            time.sleep(0.02)

    # ------------------------------------------------------------------ looking

    def pids(self) -> dict[str, list[int]]:
        """The process ids of each role in use: daemon (embedded only), manager,
        workers, senders. Co-located, the one daemon+manager process counts as the
        manager (so its CPU is not counted twice)."""
        return {
            "daemon": [self.daemon.pid] if self.daemon is not None else [],
            "manager": [self.manager.pid] if self.manager is not None else [],
            "workers": [w.pid for w in self.workers],
            "senders": [s.pid for s in self.senders],
        }

    # ------------------------------------------------------------------ ending

    def retire(self, agents: Iterable[Child]) -> None:
        """Stop ``agents`` (gracefully, then by force) and forget them."""
        agents = list(agents)
        stop_all(agents)
        self.forget(agents)

    def forget(self, agents: Sequence[Child]) -> None:
        """Forget agents that are dead already (killed on purpose)."""
        gone = {id(a) for a in agents}
        self._all = [a for a in self._all if id(a) not in gone]

    def close(self) -> None:
        """Stop every process this cluster started, the daemon last."""
        try:
            stop_all(self._all, timeout=10.0)  # dead ones just have their logs closed
        finally:
            self._all = []
            self.workers, self.senders, self.victims, self.manager = [], [], [], None
            if self.daemon is not None:
                # SIGTERM at once: twistd stops cleanly on it, and it reads no stdin.
                self.daemon.stop(timeout=0)
                self.daemon = None


def _start_daemon(workdir: Path, reactor: str) -> Child:
    """The embedded Spread daemon, as users run it, on a free loopback port (which it
    writes to its ready file), on ``reactor`` (a ``--reactor`` name)."""
    ready = workdir / "daemon.ready"
    argv = python_module(
        "twisted",
        *TWIST_REACTOR_ARGS[reactor],
        "--log-format",
        "text",
        "spread-daemon",
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--ready-file",
        str(ready),
    )
    return Child("daemon", argv, workdir, channel=False, ready_file=ready)


def _loopback(port: int) -> str:
    """The client endpoint of a daemon listening on ``port`` of 127.0.0.1."""
    return f"tcp:host=127.0.0.1:port={port}"
