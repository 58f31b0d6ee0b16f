"""Status and control over Spread, on the in-memory network: what `spreadqueue status`,
`spreadqueue control`, the metrics and the dashboard are built on."""

from __future__ import annotations

from typing import Any

import pytest
from queue_net import Net, echo, failure_of, fired
from twisted.internet.defer import Deferred
from twisted.logger import capturedLogs

from spreadqueue._queue.errors import NoManager, TaskCancelled, TaskError
from spreadqueue._queue.inspect import QueueInspector
from spreadqueue._queue.messages import Control, Kind, encode, mess_type
from spreadqueue._spread.wire import AGREED_MESS, RegularMessage

Q = "q"


@pytest.fixture
def net() -> Net:
    return Net()


def inspector(net: Net) -> QueueInspector:
    return QueueInspector(net.clock, net.session("ops"), Q)


def status(net: Net, ops: QueueInspector) -> dict[str, Any]:
    d = ops.status(timeout=1)
    net.advance(1.1)
    return fired(d)  # type: ignore[no-any-return]


def test_status_has_the_queue_its_workers_and_their_own_numbers(net: Net) -> None:
    manager = net.manager()
    busy = net.worker({"slow": lambda _: Deferred(), "echo": echo}, concurrency=2)
    idle = net.worker({"slow": lambda _: Deferred(), "echo": echo})
    sender = net.sender()
    for i in range(3):
        sender.rpc("echo", i)
    net.pump()
    slow = [sender.rpc("slow", i, timeout=None) for i in range(4)]  # 3 run, 1 queues
    net.advance(0.5)
    ops = inspector(net)
    d = ops.status(timeout=5)
    net.pump()
    report = fired(d)  # everyone answered: no need to wait out the timeout
    active = report["active"]
    assert active["manager"] == manager.session.private_group and active["active"]
    assert active["counts"]["done"] == 3 and active["counts"]["submitted"] == 7
    assert (active["in_flight"], active["depth"]) == (3, 1)
    assert 0.4 < active["oldest_queued_for"] <= 0.5  # queued on the first step
    assert active["functions"]["echo"]["outcomes"] == {"done": 3}
    assert active["functions"]["echo"]["queue_wait"]["count"] == 3
    assert active["senders"] == 1 and active["workers_ever"] == 2
    assert active["process"]["pid"] > 0 and active["process"]["spreadqueue"]
    names = {w["worker"]: w for w in report["workers"]}
    assert set(names) == {
        f"{busy.worker_id}@{busy.session.private_group}",
        f"{idle.worker_id}@{idle.session.private_group}",
    }
    mine = names[f"{busy.worker_id}@{busy.session.private_group}"]
    assert mine["registered"] and mine["report"]["running"] == 2
    assert {t["func"] for t in mine["report"]["current"]} == {"slow"}
    assert 0 < mine["report"]["utilisation_1m"] <= 1
    assert not slow[0].called


def test_a_standby_answers_for_itself(net: Net) -> None:
    net.manager()
    standby = net.manager()
    report = status(net, inspector(net))
    assert len(report["managers"]) == 2
    other = [m for m in report["managers"] if not m["active"]]
    assert [m["manager"] for m in other] == [standby.session.private_group]
    assert "depth" not in other[0] and other[0]["process"]["pid"] > 0


def test_no_manager_status_and_control(net: Net) -> None:
    net.worker({"echo": echo})
    ops = inspector(net)
    report = status(net, ops)
    assert report["active"] is None and [w["registered"] for w in report["workers"]] == [False]
    d = ops.control("pause", timeout=2)
    net.advance(2.1)
    assert "no active manager of queue 'q' answered" in str(failure_of(d, NoManager))


def control(net: Net, ops: QueueInspector, action: str, target: str = "") -> tuple[bool, str]:
    d = ops.control(action, target)
    net.pump()
    return fired(d)  # type: ignore[no-any-return]


def test_pause_queues_and_resume_dispatches_and_who_asked_is_logged(net: Net) -> None:
    manager = net.manager()
    net.worker({"echo": echo})
    ops = inspector(net)
    with capturedLogs() as events:
        assert control(net, ops, "pause") == (True, "dispatch paused")
    logged = [e for e in events if e.get("manager_event") == "control"]
    assert logged[0]["requester"] == ops.session.private_group and logged[0]["action"] == "pause"
    calls = [net.sender().rpc("echo", i) for i in range(3)]
    net.advance(1)
    assert not any(d.called for d in calls) and manager.state is not None
    assert manager.state.queued == 3 and status(net, ops)["active"]["paused"]
    assert control(net, ops, "resume") == (True, "dispatch resumed")
    net.pump()
    assert [fired(d) for d in calls] == [0, 1, 2]


def test_drain_gives_a_worker_nothing_new_while_others_go_on(net: Net) -> None:
    net.manager()
    runs: dict[str, int] = {"a": 0, "b": 0}

    def counted(name: str) -> Any:
        def handler(n: int) -> int:
            runs[name] += 1
            return n

        return handler

    a = net.worker({"f": counted("a")})
    net.worker({"f": counted("b")})
    ops = inspector(net)
    ok, text = control(net, ops, "drain", a.worker_id)
    assert ok and "drains: no new task" in text
    sender = net.sender()
    calls = [sender.rpc("f", i) for i in range(20)]
    net.pump()
    assert [fired(d) for d in calls] == list(range(20))
    assert runs == {"a": 0, "b": 20}
    assert [w["drained"] for w in status(net, ops)["workers"]] == [True, False]
    assert control(net, ops, "undrain", a.worker_id)[0]
    private_name = a.session.private_group.split("#")[1]  # what --name gave the worker
    assert control(net, ops, "drain", private_name)[0]
    assert [w["drained"] for w in status(net, ops)["workers"]] == [True, False]
    ok, text = control(net, ops, "drain", "nobody")
    assert not ok and text.startswith("no worker matches 'nobody' (workers: ")


def test_purge_and_cancel_end_tasks_with_task_cancelled(net: Net) -> None:
    net.manager()
    sender = net.sender()
    queued = [sender.rpc("echo", i, timeout=None) for i in range(3)]  # no worker
    net.pump()
    ops = inspector(net)
    ok, text = control(net, ops, "cancel", sender._pending[next(iter(sender._pending))].task_id)
    assert ok and "cancelled before it ran" in text
    assert control(net, ops, "purge") == (True, "2 queued task(s) purged")
    errors = [failure_of(d, TaskCancelled) for d in queued]
    assert "cancelled by an operator" in str(errors[0])
    assert "purged from the queue by an operator" in str(errors[1])
    assert control(net, ops, "cancel", "nope")[0] is False

    net.worker({"slow": lambda _: Deferred()})
    running = sender.rpc("slow", 1, timeout=None)
    net.pump()
    task_id = next(iter(sender._pending))
    ok, text = control(net, ops, "cancel", task_id)
    assert ok and "is being cancelled at" in text
    assert "the worker cancelled the task" in str(failure_of(running, TaskError))


def test_tasks_lists_what_the_manager_holds_oldest_first(net: Net) -> None:
    net.manager()
    worker = net.worker({"slow": lambda _: Deferred()})
    sender = net.sender()
    sender.rpc("slow", 1, timeout=None)
    net.advance(1)
    sender.rpc("slow", 2, timeout=None, priority=3)  # waits: the worker's one slot is taken
    net.advance(1)
    detached = sender.enqueue("nobody", 3)
    net.advance(0.5)
    task_id = fired(detached)
    ops = inspector(net)
    everything = control(net, ops, "tasks")
    ok, text = everything
    head, *lines = text.splitlines()
    assert ok and head == "3 task(s) held (2 queued in all)"
    me = sender.session.private_group
    running = f"running on {worker.worker_id}@{worker.session.private_group}"
    assert [line.split("  ")[1:3] for line in lines] == [
        ["slow", running],
        ["slow", "queued"],
        ["nobody", "queued"],
    ]
    assert lines[0].endswith(f"attempt 1  for {me}")
    ages = [float(line.split("  ")[4].removesuffix("s old")) for line in lines]
    assert 2.3 <= ages[0] <= 2.5 and 1.3 <= ages[1] <= 1.5 and ages[2] <= 0.5
    assert "priority 3" in lines[1] and lines[2].startswith(task_id)
    assert lines[2].endswith("attempt 0  detached")
    ok, text = control(net, ops, "tasks", "nobody")
    assert ok and text.splitlines()[0] == "1 task(s) of 'nobody' held (2 queued in all)"
    assert control(net, ops, "tasks", task_id)[1].splitlines()[1:] == lines[2:]
    assert control(net, ops, "tasks", "all") == everything
    assert (
        control(net, ops, "tasks", "unknown")[1] == "0 task(s) of 'unknown' held (2 queued in all)"
    )


def test_control_from_another_daemon_is_refused_unless_allowed(net: Net) -> None:
    manager = net.manager()
    net.manager(control_allow=["#ops*#bastion"])  # a standby: only the active one acts
    assert manager.may_control(manager.session.private_group)
    assert not manager.may_control("#ops#elsewhere")
    data = encode(Kind.CONTROL, [Control("r1", "pause", "")])[0]
    frame = RegularMessage(AGREED_MESS, "#ops#elsewhere", ("q-mgr",), mess_type(Kind.CONTROL), data)
    with capturedLogs() as events:
        manager._on_manager_group(frame)
    assert manager.state is not None and not manager.state.paused
    assert manager.stats["control_refused"] == 1
    refused = [e for e in events if e.get("manager_event") == "control"]
    assert refused[0]["ok"] is False and "refused: #ops#elsewhere is not on" in refused[0]["result"]
    allowed = net.manager(control_allow=["#ops*#elsewhere"])
    assert allowed.may_control("#ops2#elsewhere") and not allowed.may_control("#x#elsewhere")


def test_tasks_are_counted_by_how_they_ended(net: Net) -> None:
    """done, failed, timed out (sender's timeout while it ran, or the worker's own
    expiry), expired (timed out in the queue), cancelled (by its sender or an
    operator): the queue's counts are the sums over its functions."""
    net.manager()
    sender = net.sender()
    waited = sender.rpc("echo", 0, timeout=1.0)  # no worker yet: expires in the queue
    net.advance(1.5)
    failure_of(waited, TaskError)
    handlers = {"echo": echo, "boom": lambda _: 1 / 0, "hold": lambda _: Deferred()}
    net.worker(handlers, concurrency=4)
    calls = [sender.rpc("echo", 1), sender.rpc("boom", 1)]
    timed = sender.rpc("hold", 1, timeout=2.0)  # the sender's timeout cancels it
    asked = sender.rpc("hold", 2, timeout=None)
    net.pump()
    asked.cancel()  # its sender cancels it: counted as cancelled
    net.advance(2.5)
    for d in [calls[1], timed, asked]:
        d.addErrback(lambda f: None)
    assert fired(calls[0]) == 1
    counts = status(net, inspector(net))["active"]["counts"]
    assert counts["done"] == 1 and counts["failed"] == 1
    assert counts["timed_out"] == 1 and counts["cancelled"] == 1 and counts["expired"] == 1
    assert counts["submitted"] == 5 and counts["worker_lost"] == 0
