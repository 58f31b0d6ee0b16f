"""sqm's embedded daemon: when the process that holds it dies, another sqm takes it over.

Two ``sqm`` processes on one port in auto mode: the first starts the embedded daemon,
the second stands by on a TCP session to it. kill -9 of the first takes the daemon
with it; the standby finds nothing answering, starts the daemon itself at the same
address, and becomes the active manager; workers and senders reconnect.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from procs import TESTS, Proc, child_env, free_port, skip_if_external

SQM = "import sys; from spreadqueue._service.cli import sqm_main; sys.exit(sqm_main())"
HANDLERS = "e2e_handlers:HANDLERS"


def ok_times(proc: Proc) -> list[float]:
    return [float(t) for t in re.findall(r"^ok (\d+\.\d+)$", proc.log(), re.M)]


def wait_for(condition: object, procs: list[Proc], what: str, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while not condition():  # type: ignore[operator]
        for proc in procs:
            proc.check_alive(what)
        if time.monotonic() > end:
            raise AssertionError(f"no {what} within {deadline} s:\n" + procs[0].log())
        time.sleep(0.02)


def rpc_loop(tmp_path: Path, spread: str) -> Proc:
    """A sender process making rpcs of queue ``q`` for ever, logging 'ok <time>' each."""
    return Proc(
        [sys.executable, str(TESTS / "e2e_rpc_loop.py"), "q", spread],
        tmp_path,
        "loop",
        env=child_env([TESTS]),
        ready_file=False,
    )


def kill_and_time_the_takeover(victim: Proc, heir: Proc, loop: Proc) -> float:
    """SIGKILL ``victim`` (which holds the embedded daemon); ``heir`` must start the
    daemon itself and become active, and ``loop``'s rpcs be answered again within 3 s.
    Returns how long that took."""
    victim.kill()
    killed = time.monotonic()
    wait_for(lambda: any(t > killed for t in ok_times(loop)), [heir, loop], "rpcs after the kill")
    back = min(t for t in ok_times(loop) if t > killed) - killed
    assert back < 3.0, f"rpcs answered again {back:.2f} s after the kill\n" + loop.log()
    log = heir.log()
    assert "started an embedded Spread daemon" in log, log
    assert "is active" in log, log
    return back


@skip_if_external("sqm's embedded daemon is ours by definition")
def test_a_standby_sqm_takes_the_embedded_daemon_over_and_rpcs_come_back(
    tmp_path: Path,
) -> None:
    port = free_port()
    spread = f"{port}@localhost"
    sqm = [sys.executable, "-c", SQM, "q", "--spread", spread]
    first = Proc(sqm, tmp_path, "sqm1")
    procs = [first]
    try:
        first.wait_ready()
        second = Proc(sqm, tmp_path, "sqm2", ready_file=False)
        procs.append(second)
        second.wait_log(r"stands by")
        worker = [sys.executable, "-m", "spreadqueue._service.cli", "worker", "-q", "q"]
        workers = [
            Proc(
                [*worker, "-H", HANDLERS, "--spread", spread],
                tmp_path,
                f"worker{i}",
                env=child_env([TESTS]),
            )
            for i in (1, 2)
        ]
        procs += workers
        for worker in workers:
            worker.wait_ready()
        loop = rpc_loop(tmp_path, spread)
        procs.append(loop)
        wait_for(lambda: len(ok_times(loop)) >= 20, [loop], "rpcs before the kill")

        # SIGKILL: the embedded daemon goes with it
        back = kill_and_time_the_takeover(first, second, loop)
        for worker in workers:
            assert worker.running, worker.log()
        print(f"answered again {back:.2f} s after the kill")
    finally:
        for proc in reversed(procs):
            proc.stop()


@skip_if_external("the embedded daemon that --auto-manager starts is ours by definition")
def test_workers_with_auto_manager_need_no_sqm_and_survive_the_one_holding_it(
    tmp_path: Path,
) -> None:
    """``spreadqueue worker --auto-manager``, twice, and nothing else: the first starts
    the embedded daemon and the active manager, the second stands by. kill -9 of the
    first: the second takes the daemon and the queue over; rpcs come back."""
    spread = f"{free_port()}@localhost"
    worker = [sys.executable, "-m", "spreadqueue._service.cli", "worker", "-q", "q"]
    worker += ["-H", HANDLERS, "--spread", spread, "--auto-manager"]
    first = Proc(worker, tmp_path, "worker1", env=child_env([TESTS]))
    procs = [first]
    try:
        first.wait_ready()
        first.wait_log(r"is active")
        second = Proc(worker, tmp_path, "worker2", env=child_env([TESTS]))
        procs.append(second)
        second.wait_ready()
        second.wait_log(r"stands by")
        loop = rpc_loop(tmp_path, spread)
        procs.append(loop)
        wait_for(lambda: len(ok_times(loop)) >= 20, [loop], "rpcs before the kill")
        assert "started an embedded Spread daemon" in first.log(), first.log()

        # SIGKILL: the daemon and the active manager go with it
        back = kill_and_time_the_takeover(first, second, loop)
        print(f"answered again {back:.2f} s after the kill")
    finally:
        for proc in reversed(procs):
            proc.stop()
