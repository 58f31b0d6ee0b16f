"""End to end: spreadqueue.aio under asyncio.run and uvloop, as asyncio applications use it.

The asyncio examples run next to ``sqm QUEUE`` exactly as the Twisted ones do
(tests/test_e2e_queue.py), on plain asyncio and on uvloop; and a script that does a
whole cycle (connect, a worker with coroutine and thread handlers, rpc, submit,
cancel, errors) checks that it ends cleanly: in Python's development mode with every
warning an error, nothing printed, no thread left, no signal handler installed.

The daemon restarts under load (as tests/test_e2e_reconnect.py does it for the
Twisted API): an asyncio sender and two asyncio workers on sessions opened with
``reconnect=True`` (tests/e2e_aio_apps.py) ride out a kill -9 of the daemon and a new
one on the same port; every call is answered once, the workers register again and
serve on, and the programs still end cleanly.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from collections import Counter
from typing import Any

import pytest
from e2e_case import RUN_DEADLINE, SQM, QueueCase
from procs import (
    ROOT,
    TESTS,
    Proc,
    all_ready,
    child_env,
    external_spread,
    free_port,
    log_match,
    poll_until,
    skip_if_external,
)

#: Python's development mode with warnings as errors: a pending task destroyed, an
#: unclosed transport or socket, an exception ignored in __del__ all show on stderr.
STRICT = {"PYTHONDEVMODE": "1", "PYTHONWARNINGS": "error"}
#: What must never appear in the output of a clean asyncio program.
UNCLEAN = re.compile(
    r"Task was destroyed|unclosed|Unclosed|Exception ignored|never retrieved|Traceback"
)

LOOPS = ["asyncio", "uvloop"]


def loop_args(loop: str) -> list[str]:
    return ["--uvloop"] if loop == "uvloop" else []


class AsyncioExamples(QueueCase):
    """examples/asyncio_worker.py and examples/asyncio_sender.py next to ``sqm``."""

    async def examples(self, loop: str) -> None:
        external = external_spread()
        spread = external or f"{free_port()}@localhost"
        env = child_env(SPREAD_DAEMON=spread, SPREAD_QUEUE_NAME=self.queue, SPREAD_QUEUE="")
        sqm = self.spawn([sys.executable, "-c", SQM, self.queue], "sqm", env=env)
        await all_ready(sqm)
        strict = {**env, **STRICT}
        worker = self.spawn(
            [sys.executable, str(ROOT / "examples" / "asyncio_worker.py"), *loop_args(loop)],
            "worker",
            env=strict,
            ready_file=False,
        )
        await log_match(worker, r"worker ready on queue")
        sender = self.run_example("asyncio_sender.py", strict, *loop_args(loop))
        assert sender.returncode == 0, sender
        assert sender.stdout.splitlines() == [
            "submit + receive: {'response': 'I heard you!'}",
            "rpc: {'response': 'I heard you!'}",
        ], sender
        assert not UNCLEAN.search(sender.stderr), sender.stderr
        # SIGTERM: the worker leaves the queue and its loop ends cleanly, at once.
        status = worker.stop(timeout=RUN_DEADLINE)
        log = worker.log_path.read_text()
        assert status == 0, log
        assert not UNCLEAN.search(log), log
        assert sqm.running

    async def test_the_examples_on_asyncio(self) -> None:
        await self.examples("asyncio")

    async def test_the_examples_on_uvloop(self) -> None:
        pytest.importorskip("uvloop")
        await self.examples("uvloop")

    async def test_the_asyncio_sender_with_the_twisted_worker(self) -> None:
        """The two faces are one protocol: an asyncio sender, a Twisted worker."""
        env = child_env(SPREAD_DAEMON=self.endpoint, SPREAD_QUEUE_NAME=self.queue)
        manager = self.manager()
        worker = self.spawn(
            [sys.executable, str(ROOT / "examples" / "worker.py")],
            "worker",
            env=env,
            ready_file=False,
        )
        await all_ready(manager)
        await log_match(worker, r"worker ready on queue")
        sender = self.run_example("asyncio_sender.py", {**env, **STRICT})
        assert sender.returncode == 0, sender
        assert sender.stdout.splitlines()[-1] == "rpc: {'response': 'I heard you!'}", sender

    def test_the_sender_says_when_no_daemon_answers(self) -> None:
        env = child_env(SPREAD_DAEMON=f"{free_port()}@127.0.0.1", SPREAD_QUEUE_NAME=self.queue)
        done = self.run_example("asyncio_sender.py", {**env, **STRICT})
        assert done.returncode == 1, done
        assert "cannot reach the Spread daemon" in done.stdout, done
        assert not UNCLEAN.search(done.stderr), done.stderr


#: A whole asyncio program: every feature once, then checks of how it ended.
LIFECYCLE = textwrap.dedent(
    """
    import asyncio, signal, sys, threading
    from spreadqueue import RemoteError, TaskTimeout, aio

    QUEUE, SPREAD, LOOP, RECONNECT = sys.argv[1:5]
    SIGNALS = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)}

    async def main():
        async with aio.connect(SPREAD, reconnect=RECONNECT == "reconnect") as session:
            assert session.reconnects == (RECONNECT == "reconnect")
            async def slow(n):
                await asyncio.sleep(n)
                return n
            def in_thread(_):
                return threading.current_thread().name
            async def fail(_):
                raise KeyError("nope")
            worker = session.worker(QUEUE, {"slow": slow, "thread": in_thread, "fail": fail})
            await worker.start()
            sender = session.sender(QUEUE)
            assert await sender.rpc("slow", 0) == 0
            assert (await sender.rpc("thread", None)).startswith("PoolThread-")
            try:
                await sender.rpc("fail", None)
            except RemoteError as e:
                assert e.type_name == "KeyError", e.type_name
            else:
                raise AssertionError("no RemoteError")
            task_id = sender.submit("slow", 0)
            assert (await sender.receive()).task_id == task_id
            call = asyncio.ensure_future(sender.rpc("slow", 60))
            await asyncio.sleep(0.05)
            call.cancel()
            try:
                await call
            except asyncio.CancelledError:
                pass
            assert sender.pending == 0
            try:
                await sender.rpc("slow", 60, timeout=0.2)
            except TaskTimeout:
                pass
            # a call left running: closing the session stops the worker (cancelling it)
            asyncio.ensure_future(sender.rpc("slow", 60)).add_done_callback(
                lambda f: f.cancelled() or f.exception()
            )
            await asyncio.sleep(0.05)
            await worker.stop(timeout=0.1)
        print("done")

    if LOOP == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
    assert threading.enumerate() == [threading.main_thread()], threading.enumerate()
    for s, handler in SIGNALS.items():
        assert signal.getsignal(s) == handler, (s, signal.getsignal(s))
    print("clean")
    """
)


@pytest.mark.parametrize("reconnect", ["plain", "reconnect"])
@pytest.mark.parametrize("loop", LOOPS)
def test_an_asyncio_program_ends_cleanly(loop: str, reconnect: str, tmp_path: object) -> None:
    """No warning, no pending task, no thread, no signal handler left behind (on a
    session that reconnects too)."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    from pathlib import Path

    from procs import spread_daemon

    workdir = Path(str(tmp_path))
    queue = f"life{free_port()}"
    with spread_daemon(workdir) as endpoint:
        manager = Proc(
            [
                sys.executable,
                "-m",
                "spreadqueue._service.cli",
                "manager",
                queue,
                "--spread",
                endpoint,
            ],
            workdir,
            "manager",
        )
        try:
            manager.wait_ready()
            done = subprocess.run(
                [sys.executable, "-c", LIFECYCLE, queue, endpoint, loop, reconnect],
                env=child_env(**STRICT),
                capture_output=True,
                text=True,
                timeout=RUN_DEADLINE,
            )
        finally:
            manager.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["done", "clean"], done.stdout + done.stderr
    assert not UNCLEAN.search(done.stderr), done.stderr


#: calls in all, calls kept in flight, how long each runs at a worker (seconds)
TOTAL = 300
IN_FLIGHT = 40
RUN_TIME = 0.2
#: the whole run, restart included, on a loaded 2-core machine
RESTART_DEADLINE = 120.0


def aio_app(*args: str) -> list[str]:
    """The command line of tests/e2e_aio_apps.py with ``args``."""
    return [sys.executable, str(TESTS / "e2e_aio_apps.py"), *args]


class AsyncioDaemonRestart(QueueCase):
    """An asyncio sender and asyncio workers ride out a restart of their daemon."""

    async def restart_under_load(self, loop: str) -> None:
        daemon, daemon_args = await self.own_daemon()
        manager = self.manager()
        strict = child_env([TESTS], **STRICT)
        workers = [
            self.spawn(aio_app("worker", self.queue, self.endpoint, loop, "4"), f"w{i}", env=strict)
            for i in (1, 2)
        ]
        await all_ready(manager, *workers)
        args = (str(self.runs), str(TOTAL), str(IN_FLIGHT), str(RUN_TIME))
        sender = self.spawn(
            aio_app("sender", self.queue, self.endpoint, loop, *args),
            "sender",
            env=strict,
            ready_file=False,
        )
        await log_match(sender, r"(?m)^a third answered$", RESTART_DEADLINE)

        started_at_kill = sum(self.run_counts().values())
        daemon.kill()
        killed = time.monotonic()
        await log_match(sender, r"(?m)^SessionLost$")
        again = self.spawn(daemon_args, "daemon2")
        await all_ready(again)
        restarted = time.monotonic()
        await poll_until(
            lambda: not sender.running,
            "the sender's end",
            RESTART_DEADLINE,
            alive=[manager, *workers, again],
        )

        out = sender.log()
        assert sender.popen.returncode == 0, out
        assert out.splitlines()[-1] == "clean", out
        assert not UNCLEAN.search(out), out
        (line,) = [x for x in out.splitlines() if x.startswith("{")]
        summary: dict[str, Any] = json.loads(line)
        answers = {int(i): a for i, a in summary["answers"].items()}
        assert summary["failures"] == [], summary["failures"][:5]
        assert sorted(answers) == list(range(1, TOTAL + 1))
        assert all(len(a) == 1 for a in answers.values()), "answered twice"
        assert all(a[0][0][0] == i for i, a in answers.items())
        kinds = [kind for _, kind, _ in summary["events"]]
        assert kinds == ["SessionLost", "SessionBack"], summary["events"]
        back = summary["events"][1][0]

        # The workers came back, registered again and served on: answers after the
        # restart came from each of them.
        pids = {w.pid for w in workers}
        served_after = {a[0][0][1] for a in answers.values() if a[0][1] > back}
        assert served_after == pids, (served_after, pids)
        for worker in workers:
            assert worker.count(r"Spread session \S+ lost \(") == 1, worker.log()
            assert worker.count(r"back after [\d.]+s; registering again with") == 1, worker.log()
            assert worker.stop(timeout=RUN_DEADLINE) == 0, worker.log()
            log = worker.log_path.read_text()
            assert log.splitlines()[-1] == "clean" and not UNCLEAN.search(log), log

        first_after = min(a[0][1] for a in answers.values() if a[0][1] > killed)
        runs = Counter(self.run_counts())
        answered_before = sum(1 for a in answers.values() if a[0][1] < killed)
        print(
            f"\n[{loop}] {summary['events'][0][2]} call(s) in flight at the kill, "
            f"{started_at_kill - answered_before} running at the workers; "
            f"daemon down {restarted - killed:.2f} s (kill to ready); "
            f"sender back {back - restarted:.2f} s after the new daemon was ready, "
            f"first answer {first_after - restarted:.2f} s after it "
            f"({first_after - killed:.2f} s after the kill); "
            f"{len(answers)} of {TOTAL} answered, once each, 0 failed; "
            f"{sum(1 for n in runs.values() if n > 1)} task(s) ran twice; "
            f"{summary['stats']['late_replies']} late replies dropped; "
            f"{summary['stats']['resubmitted']} resubmissions"
        )

    @skip_if_external("it kills and restarts the Spread daemon, which must be ours")
    async def test_the_daemon_restarts_under_load_on_asyncio(self) -> None:
        await self.restart_under_load("asyncio")

    @skip_if_external("it kills and restarts the Spread daemon, which must be ours")
    async def test_the_daemon_restarts_under_load_on_uvloop(self) -> None:
        pytest.importorskip("uvloop")
        await self.restart_under_load("uvloop")
