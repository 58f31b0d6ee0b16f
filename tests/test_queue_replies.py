"""ReplyReader: the answers of detached tasks, read from the group they name
(``reply_to``), over spreadqueue.testing.FakeSpreadNetwork."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import msgpack
import pytest
from queue_net import Net, echo, failure_of, fired, pending
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import capturedLogs

from spreadqueue import (
    DeadLettered,
    JsonSerializer,
    ReaderStopped,
    RemoteError,
    Reply,
    ReplyReader,
    Task,
    UnknownFunction,
)
from spreadqueue._queue.messages import Kind, Result, Status, encode, mess_type
from spreadqueue._queue.worker import Worker
from spreadqueue._service.replies_cmd import read_answers
from spreadqueue._spread.session import SpreadSession

GROUP = "answers"


def reader(net: Net, session: SpreadSession | None = None, **options: Any) -> ReplyReader:
    """A started reader of GROUP, in the group once this returns."""
    r = ReplyReader(net.clock, session or net.session(), GROUP, **options)
    d = r.start()
    net.pump()
    fired(d)
    return r


def enqueue(net: Net, func: str, args: Any, **options: Any) -> str:
    """Enqueue a detached task answering GROUP; its id once the managers hold it."""
    d = net.sender(**{k: options.pop(k) for k in ("serializer",) if k in options}).enqueue(
        func, args, reply_to=GROUP, **options
    )
    net.pump()
    task_id: str = fired(d)
    return task_id


def test_a_result_reaches_the_reader_as_a_reply(net: Net) -> None:
    net.manager()
    net.worker({"double": lambda n: n * 2})
    replies = reader(net)
    task_id = enqueue(net, "double", 21)
    net.pump()
    assert fired(replies.receive()) == Reply(task_id, 42, True)
    assert replies.stats["answers"] == 1 and replies.buffered == 0


def test_receive_waits_for_the_next_answer_and_answers_keep_their_order(net: Net) -> None:
    net.manager()
    net.worker({"f": echo})
    replies = reader(net)
    waiting = replies.receive()
    first = enqueue(net, "f", "one")
    net.pump()
    second = enqueue(net, "f", "two")
    net.pump()
    assert fired(waiting) == Reply(first, "one")
    assert fired(replies.receive()) == Reply(second, "two")
    assert pending(replies.receive())


def test_a_handler_error_comes_as_remote_error(net: Net) -> None:
    net.manager()

    def broken(_: Any) -> None:
        raise ValueError("no good")

    net.worker({"f": broken})
    replies = reader(net)
    task_id = enqueue(net, "f", 1)
    net.pump()
    err = failure_of(replies.receive(), RemoteError)
    assert err.task_id == task_id and err.type_name == "ValueError"
    assert err.remote_message == "no good" and "broken" in err.remote_traceback


def test_an_unknown_function_comes_as_unknown_function(net: Net) -> None:
    net.manager()
    net.worker({"f": echo}, declares=False)  # it gets "missing" too
    replies = reader(net)
    task_id = enqueue(net, "missing", 1)
    net.pump()
    err = failure_of(replies.receive(), UnknownFunction)
    assert err.task_id == task_id and "'missing'" in str(err)


def test_a_task_whose_ttl_runs_out_comes_as_dead_lettered(net: Net) -> None:
    net.manager()
    replies = reader(net)
    task_id = enqueue(net, "f", 1, ttl=1.0)
    net.advance(0.5)
    assert replies.buffered == 0  # not expired yet
    net.advance(1.0)  # no worker came in time
    err = failure_of(replies.receive(), DeadLettered)
    assert err.task_id == task_id and str(err).startswith("dead letter: ")


def test_a_task_whose_workers_keep_dying_comes_as_dead_lettered(net: Net) -> None:
    net.manager(max_attempts=2)
    replies = reader(net)
    task_id = enqueue(net, "f", "poison")
    for _ in range(2):
        session = net.session()
        net.worker({"f": lambda _: Deferred()}, session=session)  # never answers
        net.crash(session)
        net.pump()
    err = failure_of(replies.receive(), DeadLettered)
    assert err.task_id == task_id and "max_attempts" in err.message


def test_a_task_that_answers_several_times_gives_a_reply_each_the_last_final(net: Net) -> None:
    net.manager()
    worker = Worker(net.clock, net.session(), "q")

    @worker.handler("progress", with_task=True)
    def progress(task: Task, n: int) -> str:
        for i in range(n):
            worker.respond(task, i)
        return "done"

    worker.start()
    replies = reader(net)
    task_id = enqueue(net, "progress", 2)
    net.pump()
    got = [fired(replies.receive()) for _ in range(3)]
    assert got == [Reply(task_id, 0, False), Reply(task_id, 1, False), Reply(task_id, "done")]
    worker.stop()


def test_malformed_messages_are_counted_and_logged_once_other_traffic_is_ignored(
    net: Net,
) -> None:
    net.manager()
    net.worker({"f": echo})
    replies = reader(net)
    other = net.session()
    bad_result = msgpack.packb([1, [["t", "w", True, 0, "not bin"]]])
    with capturedLogs() as events:
        other.multicast(GROUP, bad_result, mess_type=mess_type(Kind.RESULT))
        other.multicast(GROUP, b"\xc1", mess_type=mess_type(Kind.FAILED))
        other.multicast(GROUP, b"the application's own", mess_type=7)
        other.multicast(GROUP, msgpack.packb([1, []]), mess_type=mess_type(Kind.ACK))
        net.pump()
    assert replies.stats["malformed"] == 2 and replies.buffered == 0
    warnings = [e for e in events if "malformed" in e.get("log_format", "")]
    assert len(warnings) == 1 and warnings[0]["source"] == other.private_group
    task_id = enqueue(net, "f", "still reading")
    net.pump()
    assert fired(replies.receive()) == Reply(task_id, "still reading")
    assert replies.stats == {"answers": 1, "malformed": 2, "dropped": 0}


def test_every_reader_of_a_group_gets_every_answer(net: Net) -> None:
    net.manager()
    net.worker({"f": echo})
    shared = net.session()
    a, b, c = reader(net), reader(net, shared), reader(net, shared)
    task_id = enqueue(net, "f", "x")
    net.pump()
    for r in (a, b, c):
        assert fired(r.receive()) == Reply(task_id, "x")
    # one reader leaving does not take the other out of the group it shares
    fired(c.stop())
    net.pump()
    second = enqueue(net, "f", "y")
    net.pump()
    assert fired(b.receive()) == Reply(second, "y")
    assert shared.view(GROUP) is not None


def test_answers_of_a_sender_with_json_need_a_reader_with_json(net: Net) -> None:
    net.manager()
    net.worker({"f": echo}, serializer=JsonSerializer())
    json_reader = reader(net, serializer=JsonSerializer())
    msgpack_reader = reader(net)
    task_id = enqueue(net, "f", {"a": [1]}, serializer=JsonSerializer())
    net.pump()
    assert fired(json_reader.receive()) == Reply(task_id, {"a": [1]})
    err = failure_of(msgpack_reader.receive(), RemoteError)
    assert err.type_name == "spreadqueue.BadResult"


def test_a_stopped_reader_gives_what_it_kept_then_fails_with_reader_stopped(net: Net) -> None:
    net.manager()
    net.worker({"f": echo})
    replies = reader(net)
    task_id = enqueue(net, "f", 1)
    net.pump()
    left = replies.stop()
    net.pump()
    fired(left)
    assert fired(replies.receive()) == Reply(task_id, 1)
    err = failure_of(replies.receive(), ReaderStopped)
    assert "it was stopped" in str(err)
    enqueue(net, "f", 2)
    net.pump()
    assert replies.buffered == 0


def test_a_waiting_receive_fails_when_the_session_is_lost(net: Net) -> None:
    session = net.session()
    replies = reader(net, session)
    waiting = replies.receive()
    net.crash(session)
    net.pump()
    err = failure_of(waiting, ReaderStopped)
    assert "session was lost" in str(err)


def test_a_reader_that_does_not_keep_up_drops_the_oldest_answers(net: Net) -> None:
    net.manager()
    replies = reader(net, max_buffered=2)
    other = net.session()
    for i in range(4):
        result = Result(f"t{i}", "w", True, Status.OK, msgpack.packb(i))
        [data] = encode(Kind.RESULT, [result])
        other.multicast(GROUP, data, mess_type=mess_type(Kind.RESULT))
    net.pump()
    assert replies.stats["dropped"] == 2
    assert [fired(replies.receive()).task_id for _ in range(2)] == ["t2", "t3"]


@pytest.mark.parametrize("group", ["#me#daemon", "has space", "", "x" * 32])
def test_a_reader_needs_a_public_group_name(net: Net, group: str) -> None:
    with pytest.raises(ValueError):
        ReplyReader(net.clock, net.session(), group)


def test_receive_starts_the_reader_and_fails_with_why_if_it_cannot_join(net: Net) -> None:
    net.manager()
    net.worker({"f": echo})
    replies = ReplyReader(net.clock, net.session(), GROUP)
    waiting = replies.receive()  # joins
    net.pump()
    task_id = enqueue(net, "f", "first")
    net.pump()
    assert fired(waiting) == Reply(task_id, "first")
    closed = net.session()
    closed.disconnect()
    net.pump()
    err = failure_of(ReplyReader(net.clock, closed, GROUP).receive(), ReaderStopped)
    assert "session was lost" in str(err)
    refusing = _Refusing()
    err = failure_of(ReplyReader(net.clock, refusing, GROUP).receive(), ReaderStopped)  # type: ignore[arg-type]
    assert "could not join group 'answers': no such luck" in str(err)
    assert refusing.listeners == 0  # it let go of what it took


class _Refusing:
    """A live session whose joins fail."""

    def __init__(self) -> None:
        self.listeners = 0

    def add_listener(self, *_: Any) -> None:
        self.listeners += 1

    def remove_listener(self, *_: Any) -> None:
        self.listeners -= 1

    def whenDisconnected(self) -> Deferred[None]:
        return Deferred()

    def acquire(self, group: str) -> Deferred[None]:
        return fail(ValueError("no such luck"))

    def release(self, group: str) -> Deferred[None]:
        return succeed(None)


def test_a_stopped_reader_lets_go_of_its_session(net: Net) -> None:
    """Readers come and go on a long-lived session (one per consumer): each stopped one
    leaves no listener, no group share and no watch on the session's end behind."""
    session = net.session()
    waiting_for_the_end = len(session._disconnect_waiters)
    for _ in range(3):
        r = reader(net, session)
        left = r.stop()
        net.pump()
        fired(left)
    assert len(session._disconnect_waiters) == waiting_for_the_end
    assert session.holders(GROUP) == 0 and GROUP not in session._listeners


def test_a_stopped_reader_does_not_start_again(net: Net) -> None:
    session = net.session()
    never_started = ReplyReader(net.clock, session, GROUP)
    fired(never_started.stop())
    err = failure_of(never_started.start(), ReaderStopped)
    assert "it was stopped" in str(err)
    assert session.holders(GROUP) == 0
    replies = reader(net, session)
    left = replies.stop()
    net.pump()
    fired(left)
    failure_of(replies.start(), ReaderStopped)
    assert session.holders(GROUP) == 0


def test_start_after_a_failed_receive_fails_too(net: Net) -> None:
    closed = net.session()
    closed.disconnect()
    net.pump()
    replies = ReplyReader(net.clock, closed, GROUP)
    failure_of(replies.receive(), ReaderStopped)  # it tried to start, and could not
    failure_of(replies.start(), ReaderStopped)  # not a success, later either


def _options(**given: Any) -> argparse.Namespace:
    options = {"group": GROUP, "count": None, "timeout": None, "serializer": "msgpack"}
    return argparse.Namespace(ready_file=None, **{**options, **given})


def test_the_replies_command_prints_answers_and_says_when_its_session_ends(
    net: Net, capsys: pytest.CaptureFixture[str]
) -> None:
    net.manager()
    net.worker({"double": lambda n: n * 2})
    session = net.session()
    status = Deferred.fromCoroutine(read_answers(net.clock, session, _options()))
    net.pump()
    task_id = enqueue(net, "double", 4)
    net.pump()
    net.crash(session)
    net.pump()
    assert fired(status) == 3  # (as when no daemon answers)
    out, err = capsys.readouterr()
    assert json.loads(out) == {"task_id": task_id, "value": 8, "final": True}
    assert "stopped: the Spread session was lost" in err


def test_the_replies_command_ends_quietly_when_its_reader_goes(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    net.manager()
    net.worker({"double": lambda n: n * 2})
    status = Deferred.fromCoroutine(read_answers(net.clock, net.session(), _options(count=5)))
    net.pump()

    def closed_pipe(*_: Any, **__: Any) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("builtins.print", closed_pipe)
    redirected: list[int] = []
    monkeypatch.setattr(os, "dup2", lambda fd, to: redirected.append(to))
    enqueue(net, "double", 1)
    net.pump()
    assert fired(status) == 0 and redirected == [sys.stdout.fileno()]
