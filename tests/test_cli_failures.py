"""What a person meets first when something is wrong: services that cannot start end at
once with the reason and a clear exit status, configuration errors are not retried as
network errors, signals do what people expect (docs: README, "Running the services").

Every command runs as a child process on free loopback ports; waits have deadlines.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import TESTS, Proc, child_env, free_port, skip_if_external, spread_daemon, twist

HANDLERS = "e2e_handlers:HANDLERS"
SQM = "import sys; from spreadqueue._service.cli import sqm_main; sys.exit(sqm_main())"
TWISTD = "from twisted.scripts.twistd import run; run()"
#: A service that cannot start must end promptly; this only tells "ends" from "hangs"
#: (the 1 s they take on an idle machine is measured in the closing notes, not here).
END_DEADLINE = 20.0


def spreadqueue(*args: str) -> list[str]:
    return [sys.executable, "-m", "spreadqueue._service.cli", *args]


def sqm(*args: str) -> list[str]:
    return [sys.executable, "-c", SQM, *args]


def twistd(*args: str) -> list[str]:
    return [sys.executable, "-c", TWISTD, "-n", "--pidfile=", *args]


def run(args: list[str], cwd: Path, timeout: float = END_DEADLINE, **env: str) -> tuple[int, str]:
    """Run ``args`` to its end; (exit status, stdout + stderr). Fails if it hangs."""
    try:
        done = subprocess.run(
            args,
            cwd=cwd,
            env=child_env([TESTS], **env),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{args} still running after {timeout} s: {e.output}") from None
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


# --------------------------------------------------------------------------- cannot start


@pytest.mark.parametrize(
    "command",
    [
        lambda p: spreadqueue("daemon", "--listen", f"tcp:{p}:interface=127.0.0.1"),
        lambda p: twist("spread-daemon", "--listen", f"tcp:{p}:interface=127.0.0.1"),
        lambda p: twistd("spread-daemon", "--listen", f"tcp:{p}:interface=127.0.0.1"),
        lambda p: sqm("q", "--embedded-daemon=always", "--spread", f"{p}@localhost"),
        lambda p: twist("spreadqueue-manager", "--embedded-daemon=always", "--spread", f"{p}", "q"),
        lambda p: spreadqueue("daemon", "--listen", "tcp:99999:interface=127.0.0.1"),
    ],
    ids=["spreadqueue-daemon", "twist", "twistd", "sqm-always", "twist-manager-always", "port"],
)
def test_a_service_that_cannot_listen_exits_1_with_the_reason(
    command: object, busy_port: int, tmp_path: Path
) -> None:
    """A busy or impossible port: every entry point logs 'cannot start: <why>' in one
    line and exits 1, instead of idling for ever."""
    started = time.monotonic()
    status, output = run(command(busy_port), tmp_path)  # type: ignore[operator]
    took = time.monotonic() - started
    assert status == 1, output
    assert "cannot start: " in output, output
    assert "Address already in use" in output or "port must be 0-65535" in output, output
    assert "Traceback" not in output, output
    print(f"exited in {took:.2f} s")


@pytest.mark.parametrize(
    "args, message",
    [
        (["manager", "--name", "bad#name", "q"], "--name: private name b'bad#name' has bytes"),
        (["worker", "-q", "q", "-H", HANDLERS, "--name", "waytoolongname"], "at most 10"),
        (["daemon", "--listen", "garbage"], "--listen 'garbage' is not a server endpoint"),
        (["manager", "q", "--spread", "garbage"], "--spread 'garbage' is not a Spread daemon"),
        (["demo", "--workers", "0"], "--workers: 0 is not between 1 and 100"),
        (["demo", "--tasks", "-5"], "--tasks: -5 is not between 0 and 1000000"),
        (["demo", "--spread", "garbage"], "'garbage' is not a Spread daemon address"),
        (["rpc", "-q", "q", "-t", "nan", "f"], "--timeout must be a number of seconds"),
        (["rpc", "-q", "q", "-t", "inf", "f"], "--timeout must be a number of seconds"),
        (["manager", "q", "--metrics", "nope:x"], "--metrics 'nope:x' is not a port or a server"),
        (["worker", "-q", "q", "-H", HANDLERS, "--metrics", "-1"], "is not a port or a server"),
        (["manager", "q", "--web", "tcp:http"], "--web 'tcp:http' is not a port or a server"),
        (["demo", "--web", "nope:x"], "--web 'nope:x' is not a port or a server endpoint"),
        (["worker", "-q", "q", "-H", HANDLERS, "--pool", "fork"], "--pool must be one of"),
        (["worker", "-q", "q", "-H", HANDLERS, "--max-tasks-per-child", "-1"], "0 (never)"),
        (["status", "bad queue"], "queue name"),
        (["status", "q", "--timeout", "0"], "--timeout must be a number of seconds above 0"),
        (["status", "q", "--spread", "garbage"], "'garbage' is not a Spread daemon address"),
        (["control", "q", "frobnicate"], "invalid choice: 'frobnicate'"),
        (["control", "q", "drain"], "drain needs a worker"),
        (["control", "q", "cancel"], "cancel needs a task id"),
    ],
)
def test_configuration_errors_exit_2_with_one_line(
    args: list[str], message: str, tmp_path: Path
) -> None:
    status, output = run(spreadqueue(*args), tmp_path)
    assert status == 2, output
    assert message in output, output
    assert "Traceback" not in output, output


@skip_if_external("needs two sessions with one name on one daemon it can see")
def test_a_name_the_daemon_holds_is_tried_a_few_times_then_exits_2(tmp_path: Path) -> None:
    with spread_daemon(tmp_path) as endpoint:
        options = ["-q", "q", "-H", HANDLERS, "--spread", endpoint, "--name", "dup"]
        first = Proc(spreadqueue("worker", *options), tmp_path, "first", env=child_env([TESTS]))
        try:
            first.wait_ready()
            status, output = run(spreadqueue("worker", *options), tmp_path)
            assert status == 2, output
            assert output.count("cannot open a Spread session") == 5, output  # 4 retries
            assert "not retrying" in output and "cannot start: " in output, output
        finally:
            first.stop()


# --------------------------------------------------------------------------- handlers


def test_handler_modules_in_the_current_directory_are_found(tmp_path: Path) -> None:
    """As with celery -A and gunicorn, ``cd dir && spreadqueue worker --handlers
    mod:obj`` imports mod from dir (here: a directory not on PYTHONPATH)."""
    here = tmp_path / "project"
    here.mkdir()
    (here / "myhandlers.py").write_text("HANDLERS = {'triple': lambda n: 3 * n}\n")
    with spread_daemon(tmp_path) as endpoint:
        for label, args in (
            ("spreadqueue", spreadqueue("worker")),
            ("twist", twist("spreadqueue-worker")),
        ):
            proc = Proc(
                [*args, "-q", "q", "--handlers", "myhandlers:HANDLERS", "--spread", endpoint],
                here,
                label,
                env=child_env(),
            )
            try:
                proc.wait_ready()
            finally:
                proc.stop()


# --------------------------------------------------------------------------- signals


@skip_if_external("reads the worker's own log of its drain")
def test_a_stopping_worker_says_what_it_waits_for_and_a_second_signal_ends_it(
    tmp_path: Path,
) -> None:
    with spread_daemon(tmp_path) as endpoint:
        queue = ["-q", "sigq", "--spread", endpoint]
        manager = Proc(spreadqueue("manager", *queue), tmp_path, "manager")
        worker = Proc(
            spreadqueue("worker", *queue, "-H", HANDLERS, "--stop-timeout", "60"),
            tmp_path,
            "worker",
            env=child_env([TESTS]),
        )
        rpc = None
        try:
            manager.wait_ready()
            worker.wait_ready()
            runs = tmp_path / "runs"
            runs.mkdir()
            task = json.dumps({"i": 7, "delay": 100, "log": str(runs)})
            rpc = subprocess.Popen(
                spreadqueue("rpc", *queue, "-t", "120", "slow", task),
                env=child_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            _wait_for(lambda: any(runs.iterdir()), worker, "the slow task to start")
            worker.popen.send_signal(signal.SIGTERM)
            worker.wait_log(
                r"stopping: waiting for 1 running task\(s\) \(\S+ \(slow\)\) for at most 60s"
            )
            assert worker.running
            worker.popen.send_signal(signal.SIGTERM)
            assert worker.popen.wait(END_DEADLINE) == 128 + signal.SIGTERM
            assert "SIGTERM again: exiting now" in worker.log()
            # The rpc waits for its task's next worker; Ctrl-C ends it, saying so.
            rpc.send_signal(signal.SIGINT)
            _, err = rpc.communicate(timeout=END_DEADLINE)
            assert rpc.returncode == 130, err
            assert "interrupted before an answer came" in err
        finally:
            if rpc is not None and rpc.poll() is None:
                rpc.kill()
            for proc in (worker, manager):
                proc.stop()


def _wait_for(condition: object, proc: Proc, what: str, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while not condition():  # type: ignore[operator]
        proc.check_alive(what)
        if time.monotonic() > end:
            raise AssertionError(f"no {what} within {deadline} s:\n{proc.log()}")
        time.sleep(0.02)


# --------------------------------------------------------------------------- answers


@skip_if_external("starts its own manager")
def test_rpc_says_the_queue_has_a_manager_but_no_worker_and_prints_bytes_as_json(
    tmp_path: Path,
) -> None:
    with spread_daemon(tmp_path) as endpoint:
        queue = ["-q", "lonely", "--spread", endpoint]
        manager = Proc(spreadqueue("manager", *queue), tmp_path, "manager")
        try:
            manager.wait_ready()
            status, output = run(spreadqueue("rpc", *queue, "-t", "2", "echo", "1"), tmp_path)
            assert status == 3, output
            assert "queue 'lonely' has a manager, but no worker serving function 'echo'" in output
            worker = Proc(
                spreadqueue("worker", *queue, "-H", HANDLERS), tmp_path, "w", env=child_env([TESTS])
            )
            try:
                worker.wait_ready()
                status, output = run(spreadqueue("rpc", *queue, "blob", '"x"'), tmp_path)
                assert status == 0, output
                assert json.loads(output) == {"$base64": "aGVsbG8geA=="}  # b"hello x"
            finally:
                worker.stop()
        finally:
            manager.stop()


def test_versions(tmp_path: Path) -> None:
    from spreadqueue import __version__

    for args in (spreadqueue("--version"), sqm("--version"), spreadqueue("worker", "--version")):
        status, output = run(args, tmp_path)
        assert (status, output) == (0, f"spreadqueue {__version__}\n")


def test_every_command_answers_version(capsys: pytest.CaptureFixture[str]) -> None:
    """The README says every command takes --version, the argparse ones too."""
    from spreadqueue import __version__
    from spreadqueue._service.cli import main

    for command in ("demo", "rpc", "submit", "replies", "status", "control", "bench"):
        assert main([command, "--version"]) == 0, command
        assert capsys.readouterr().out == f"spreadqueue {__version__}\n", command


def test_sqm_help_shows_its_own_default(tmp_path: Path) -> None:
    status, output = run(sqm("--help"), tmp_path)
    assert status == 0
    assert "always. [default: auto]" in " ".join(output.split()), output
    status, output = run(spreadqueue("manager", "--help"), tmp_path)
    assert "always. [default: never]" in " ".join(output.split()), output
    status, output = run(spreadqueue("--help"), tmp_path)
    assert "default queue" not in output and "need --queue" in output, output


def test_status_and_control_say_when_nothing_answers(tmp_path: Path) -> None:
    """No daemon at the address: exit 3 and which daemon did not answer; a daemon but
    no manager of the queue: exit 3, the status table says so."""
    nowhere = f"tcp:host=127.0.0.1:port={free_port()}"
    status, output = run(spreadqueue("status", "q", "--spread", nowhere), tmp_path)
    assert status == 3 and f"cannot ask the queue through {nowhere}" in output, output
    status, output = run(spreadqueue("control", "q", "pause", "--spread", nowhere), tmp_path)
    assert status == 3 and "Traceback" not in output, output
    with spread_daemon(tmp_path) as endpoint:
        queue = "nobody" + uuid.uuid4().hex[:8]
        status, output = run(spreadqueue("status", queue, "--spread", endpoint), tmp_path)
        assert status == 3 and "no active manager answered" in output, output
        status, output = run(
            spreadqueue("control", queue, "pause", "-t", "1", "--spread", endpoint), tmp_path
        )
        assert status == 3 and f"no active manager of queue {queue!r} answered" in output
