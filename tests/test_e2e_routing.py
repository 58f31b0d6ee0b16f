"""Routing by function and priorities, end to end: real manager and worker processes,
``spreadqueue rpc --priority`` and ``spreadqueue status`` as an operator runs them."""

from __future__ import annotations

import json

from e2e_case import OpsCase, within
from procs import TESTS, all_ready, child_env, twist


class RoutingByFunction(OpsCase):
    def specialised_worker(self, label: str, handlers: str) -> None:
        args = ["--queue", self.queue, "--spread", self.endpoint, "--handlers", handlers]
        self.spawn(twist("spreadqueue-worker", *args), label, env=child_env([TESTS]))

    async def test_two_workers_serving_different_functions(self) -> None:
        """Each worker gets only the function it has; ``rpc --priority`` is answered;
        a task of a function nobody serves waits, status says so, and its timeout
        names the function."""
        self.manager()
        self.specialised_worker("pids", "e2e_handlers:PID_ONLY")
        self.specialised_worker("echoes", "e2e_handlers:ECHO_ONLY")
        await all_ready(*self.procs)
        inspector = await self.inspector()
        status = await self.status_until(
            inspector,
            lambda s: len(s["workers"]) == 2 and all(w["report"] for w in s["workers"]),
            "two workers registered",
        )
        serves = {tuple(w["functions"]): w["report"]["process"]["pid"] for w in status["workers"]}
        assert set(serves) == {("pid",), ("echo",)}, status["workers"]

        sender = await self.sender()
        pids = [await within(sender.rpc("pid", i), 30, "pid") for i in range(10)]
        assert set(pids) == {serves[("pid",)]}  # never the echo worker (UnknownFunction)
        assert await within(sender.rpc("echo", [1, "x"], priority=5), 30, "echo") == [1, "x"]

        code, out, err = await self.cli(
            "rpc", "--queue", self.queue, "--priority", "9", "echo", "[9]"
        )
        assert (code, json.loads(out)) == (0, [9]), err

        waiting = sender.rpc("resize", {"w": 64}, timeout=None)
        waiting.addErrback(lambda _: None)  # cancelled below
        status = await self.status_until(
            inspector, lambda s: bool(s["active"]["waiting"]), "the task waiting for resize"
        )
        assert status["active"]["waiting"][0]["func"] == "resize"
        assert status["active"]["waiting"][0]["workers"] == 0
        code, out, err = await self.cli("status", self.queue)
        assert code == 0, err
        assert "waiting for function resize: no worker serves it" in out, out
        code, out, err = await self.cli("status", self.queue, "--json")
        report = json.loads(out)
        assert [(w["func"], w["queued"], w["workers"]) for w in report["active"]["waiting"]] == [
            ("resize", 1, 0)
        ]

        code, out, err = await self.cli("rpc", "--queue", self.queue, "--timeout", "1", "resize")
        assert code == 3, (out, err)
        assert "no worker serving function 'resize'" in err, err
        waiting.cancel()
