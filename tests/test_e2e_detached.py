"""Detached tasks end to end: queued by a process that exits, held by the managers.

Real processes on the daemon of this module (or the one SPREADQUEUE_TEST_SPREAD names):
managers, workers running tests/e2e_handlers.py, and tests/e2e_enqueue.py, which queues
tasks and exits. The handlers write each run to a file, so the tests count what really
ran (the side effects), not what anyone was told.
"""

from __future__ import annotations

import json
import sys

from e2e_case import OpsCase
from procs import TESTS, Proc, all_ready, child_env, log_match, poll_until, spreadqueue_cli

ENQUEUE = str(TESTS / "e2e_enqueue.py")
#: How long a thousand tasks may take to run on a loaded 2-core machine.
RUN_DEADLINE = 120.0


class DetachedTasks(OpsCase):
    def enqueue(self, n: int, label: str = "enqueue") -> Proc:
        """The process that queues ``n`` detached tasks (handler ``slow``, 5 ms each)."""
        args = [sys.executable, ENQUEUE, self.queue, self.endpoint, str(n), str(self.runs)]
        return self.spawn([*args, "slow5"], label, env=child_env([TESTS]), ready_file=False)

    async def standby(self, label: str, *extra: str) -> Proc:
        """A manager that stands by, up to date (it took the queue's state)."""
        proc = self.manager(label, *extra)
        await log_match(proc, r"took the queue's state from")
        return proc

    async def exits(self, proc: Proc) -> None:
        """Wait for ``proc`` to end by itself, successfully."""
        await poll_until(lambda: not proc.running, f"{proc.label} to exit", RUN_DEADLINE)
        assert proc.popen.returncode == 0, proc.log()

    async def all_ran(self, n: int, *alive: Proc) -> None:
        await poll_until(
            lambda: len(self.run_counts()) >= n, f"{n} tasks to run", RUN_DEADLINE, alive
        )

    async def test_a_thousand_tasks_survive_the_kill_of_each_active_manager(self) -> None:
        """A process queues 1,000 tasks and exits; the active manager is killed (-9)
        while it queues them, and the next one while the workers run them: every task
        runs, and none runs twice (no worker was lost)."""
        first = self.manager("m1")
        await all_ready(first)
        second = await self.standby("m2")
        enqueue = self.enqueue(1000)
        await log_match(enqueue, r"held 300")
        first.kill()  # kill -9, in the middle of the submits
        await log_match(second, r"is active on .*at once, with the queue's state")
        await self.exits(enqueue)  # it has gone: nobody waits for answers
        third = await self.standby("m3")
        workers = [self.worker(f"w{i}", 4) for i in range(2)]
        await all_ready(*workers)
        await poll_until(lambda: len(self.run_counts()) >= 300, "300 tasks run", RUN_DEADLINE)
        second.kill()  # and the next active manager, while the workers run the tasks
        await log_match(third, r"is active on .*at once, with the queue's state")
        await self.all_ran(1000, third, *workers)
        counts = self.run_counts()
        assert sorted(counts) == list(range(1000))
        twice = sorted(i for i, c in counts.items() if c > 1)
        assert twice == [], f"{len(twice)} task(s) ran more than once: {twice[:20]}"

    async def test_every_manager_killed_with_a_journal_then_restarted(self) -> None:
        """Both managers keep journals; 300 tasks are held, then both are killed (-9) at
        once before any ran. Started again, they run every task."""
        journals = [str(self.workdir / f"m{i}.journal") for i in range(2)]
        first = self.manager("m1", "--journal", journals[0])
        await all_ready(first)
        await self.standby("m2", "--journal", journals[1])
        enqueue = self.enqueue(300)
        await self.exits(enqueue)
        for proc in self.procs:
            proc.kill()
        # They come back in the other order: the first is active with its journal's
        # tasks, the second hands its own over (deduplicated) and takes the state.
        first_back = self.manager("m1-again", "--journal", journals[1])
        await log_match(first_back, r"journal .* holds 300 detached task\(s\)")
        await all_ready(first_back)
        second_back = await self.standby("m0-again", "--journal", journals[0])
        worker = self.worker("w", 4)
        await self.all_ran(300, worker, first_back, second_back)
        assert sorted(self.run_counts()) == list(range(300))

    async def test_a_detached_task_that_fails_is_a_dead_letter_an_operator_requeues(
        self,
    ) -> None:
        manager = self.manager()
        worker = self.worker("w")
        await all_ready(manager, worker)
        code, out, err = await self.cli("submit", "--queue", self.queue, "fail", '{"x": 1}')
        assert code == 0, (out, err)
        task_id = out.strip()
        inspector = await self.inspector()
        status = await self.status_until(
            inspector, lambda s: s["active"]["dead_letters"]["count"] == 1, "a dead letter"
        )
        [letter] = status["active"]["dead_letters"]["recent"]
        assert letter["task_id"] == task_id and letter["reason"] == "failed"
        assert "ValueError: bad value" in letter["error"]
        code, out, err = await self.cli("control", self.queue, "dead-letters")
        assert code == 0 and task_id in out and "1 dead letter(s)" in out, (out, err)
        code, out, err = await self.cli("control", self.queue, "dead-requeue", task_id)
        assert code == 0 and "1 dead letter(s) queued again" in out, (out, err)
        await self.status_until(
            inspector,
            lambda s: s["active"]["counts"]["dead_lettered"] == 2,
            "the requeued task to fail again",
        )
        code, out, err = await self.cli("control", self.queue, "dead-purge", "all")
        assert code == 0 and "1 dead letter(s) purged" in out, (out, err)

    async def test_submit_prints_the_id_once_held_and_says_when_nobody_holds_it(self) -> None:
        code, out, err = await self.cli(
            "submit", "--queue", self.queue, "--wait", "1", "work", "{}"
        )
        assert code == 3 and "no manager of queue" in err, (code, out, err)
        manager = self.manager()
        await all_ready(manager)
        code, out, err = await self.cli(
            "submit",
            "--queue",
            self.queue,
            "--delay",
            "0",
            "--ttl",
            "60",
            "work",
            f'{{"i": 7, "log": "{self.runs}"}}',
        )
        assert code == 0 and out.strip(), (code, out, err)
        worker = self.worker("w")
        await self.all_ran(1, worker)
        assert self.run_counts() == {7: 1}
        code, out, err = await self.cli("submit", "--queue", self.queue, "work", "{not json")
        assert code == 2 and "ARGS is not JSON" in err

    async def test_replies_prints_each_answer_sent_to_its_group_as_a_json_line(self) -> None:
        manager = self.manager()
        worker = self.worker("w")
        group = f"{self.queue[:20]}-ans"
        watch = self.spawn(
            spreadqueue_cli("replies", group, "--count", "3", "--spread", self.endpoint),
            "replies",
        )
        await all_ready(manager, worker, watch)
        ids = []
        for func, args, extra in (
            ("echo", '{"n": 1}', ()),
            ("fail", '{"x": 1}', ()),
            ("nobody-serves-it", "null", ("--ttl", "0.5")),
        ):
            code, out, err = await self.cli(
                "submit", "--queue", self.queue, "--reply-to", group, *extra, func, args
            )
            assert code == 0, (out, err)
            ids.append(out.strip())
        await poll_until(lambda: not watch.running, "replies to exit", 60.0)
        assert watch.popen.returncode == 0, watch.log()
        lines = [json.loads(x) for x in watch.log().splitlines() if x.startswith("{")]
        by_id = {line["task_id"]: line for line in lines}
        assert len(lines) == 3 and set(by_id) == set(ids), watch.log()
        assert by_id[ids[0]] == {"task_id": ids[0], "value": {"n": 1}, "final": True}
        assert by_id[ids[1]]["error"] == "RemoteError"
        assert "ValueError: bad value" in by_id[ids[1]]["message"]
        assert by_id[ids[2]]["error"] == "DeadLettered"
        assert by_id[ids[2]]["message"].startswith("dead letter: ")
        code, out, err = await self.cli("replies", "#private#group")
        assert code == 2 and "public Spread group" in err, (code, out, err)
