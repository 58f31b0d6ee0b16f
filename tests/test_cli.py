"""The command lines as users run them: exit status, output, and what they start.

Every command runs as a child process (``python -m spreadqueue._service.cli ...``, ``sqm`` via
``spreadqueue._service.cli.sqm_main``, the twistd plugins via ``python -m twisted``). The
one-shot commands are started all at once by a module fixture and checked one by one,
so the module costs about as long as its slowest command (an rpc waiting out the
5-second acknowledgement timeout). The ``spreadqueue rpc`` calls that need a queue
run against a manager and a worker process on the test daemon (or the external one
named by SPREADQUEUE_TEST_SPREAD).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from procs import TESTS, Proc, child_env, free_port, spread_daemon, twist

from spreadqueue._service import cli
from spreadqueue._spread import wire

SQM = "import sys; from spreadqueue._service.cli import sqm_main; sys.exit(sqm_main())"
HANDLERS = "e2e_handlers:HANDLERS"
LONG_QUEUE = "q" * 28  # one more than a queue name may have
#: The most any one command may take on a loaded machine.
COMMAND_DEADLINE = 60.0


def spreadqueue(*args: str) -> list[str]:
    """The ``spreadqueue`` command line."""
    return [sys.executable, "-m", "spreadqueue._service.cli", *args]


def sqm(*args: str) -> list[str]:
    """The ``sqm`` command line."""
    return [sys.executable, "-c", SQM, *args]


def unique_queue() -> str:
    return f"cli{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True)
class Ran:
    """What one command did."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        output = f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        return f"{self.args}: exit {self.returncode}\n{output}"


class Batch:
    """Commands running in parallel, collected at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: dict[str, tuple[list[str], subprocess.Popen[str]]] = {}

    def start(self, label: str, args: list[str], env: Mapping[str, str] | None = None) -> None:
        popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(env) if env is not None else child_env([TESTS]),
            cwd=self.workdir,
        )
        self.running[label] = (args, popen)

    def collect(self) -> dict[str, Ran]:
        out = {}
        for label, (args, popen) in self.running.items():
            stdout, stderr = popen.communicate(timeout=COMMAND_DEADLINE)
            out[label] = Ran(args, popen.returncode, stdout, stderr)
        return out

    def kill(self) -> None:
        for _, popen in self.running.values():
            if popen.poll() is None:
                popen.kill()
            popen.communicate()


def one_shot_commands() -> dict[str, list[str]]:
    """The commands that need no daemon of the tests."""
    nowhere = f"tcp:host=127.0.0.1:port={free_port()}"
    return {
        "help": spreadqueue("--help"),
        "no-command": spreadqueue(),
        "unknown-command": spreadqueue("frobnicate"),
        "help-sqm": sqm("--help"),
        "help-daemon": spreadqueue("daemon", "--help"),
        "help-manager": spreadqueue("manager", "--help"),
        "help-worker": spreadqueue("worker", "--help"),
        "help-rpc": spreadqueue("rpc", "--help"),
        "help-demo": spreadqueue("demo", "--help"),
        "help-status": spreadqueue("status", "--help"),
        "help-control": spreadqueue("control", "--help"),
        "help-replies": spreadqueue("replies", "--help"),
        "help-plugin-daemon": twist("spread-daemon", "--help"),
        "help-plugin-manager": twist("spreadqueue-manager", "--help"),
        "help-plugin-worker": twist("spreadqueue-worker", "--help"),
        "demo": spreadqueue("demo", "--workers", "2", "--tasks", "40"),
        "rpc-bad-json": spreadqueue("rpc", "--queue", "q", "myfunc", "{not json"),
        "rpc-bad-priority": spreadqueue("rpc", "--queue", "q", "--priority", "10", "myfunc"),
        "long-queue-rpc": spreadqueue("rpc", "--queue", LONG_QUEUE, "myfunc"),
        "long-queue-sqm": sqm(LONG_QUEUE),
        "long-queue-manager": spreadqueue("manager", "--queue", LONG_QUEUE),
        "long-queue-worker": spreadqueue("worker", "--queue", LONG_QUEUE, "--handlers", HANDLERS),
        "rpc-no-daemon": spreadqueue("rpc", "--queue", "q", "--spread", nowhere, "f"),
    }


@pytest.fixture(scope="module")
def ran(tmp_path_factory: Any) -> Iterator[dict[str, Ran]]:
    """Every one-shot command of this module, run in parallel; label -> outcome."""
    workdir = tmp_path_factory.mktemp("cli")
    batch = Batch(workdir)
    try:
        with spread_daemon(workdir) as endpoint:
            # The slowest first: nobody manages this queue, so the rpc waits out the
            # 5-second acknowledgement timeout.
            nobody = ["--queue", unique_queue(), "--spread", endpoint]
            batch.start("rpc-no-manager", spreadqueue("rpc", *nobody, "--timeout", "20", "f"))
            queue = unique_queue()
            options = ["--queue", queue, "--spread", endpoint]
            workers = ["--handlers", HANDLERS, "--concurrency", "4"]
            procs = [
                Proc(twist("spreadqueue-manager", *options), workdir, "manager"),
                Proc(
                    twist("spreadqueue-worker", *options, *workers),
                    workdir,
                    "worker",
                    env=child_env([TESTS]),
                ),
            ]
            try:
                for proc in procs:
                    proc.wait_ready()

                def rpc(*args: str) -> list[str]:
                    return spreadqueue("rpc", *options, *args)

                batch.start("rpc-ok", rpc("myfunc", '{"name": "value"}'))
                batch.start("rpc-echo", rpc("echo", '[1, "two", {"three": 3.5}, null]'))
                batch.start(
                    "rpc-env",
                    spreadqueue("rpc", "myfunc"),
                    child_env(SPREAD_DAEMON=endpoint, SPREAD_QUEUE_NAME=queue, SPREAD_QUEUE=""),
                )
                batch.start("rpc-fail", rpc("fail", '{"x": 1}'))
                batch.start("rpc-unknown", rpc("--timeout", "1", "no_such_function", "1"))
                batch.start("rpc-priority", rpc("--priority", "9", "echo", "[9]"))
                batch.start("rpc-timeout", rpc("--timeout", "1", "slow", '{"i": 1, "delay": 60}'))
                for label, args in one_shot_commands().items():
                    batch.start(label, args)
                results = batch.collect()
            finally:
                for proc in procs:
                    proc.kill()
                    proc.stop()
        yield results
    finally:
        batch.kill()


HELP = {
    "help": [
        "usage: spreadqueue COMMAND",
        *("demo", "daemon", "manager", "worker", "rpc", "replies", "status", "control"),
        "bench",
    ],
    "help-sqm": [
        "Usage: sqm [options] [QUEUE]",
        "--no-embedded-daemon",
        "--spread",
        "--queue",
        "--max-attempts",
        "--ready-file",
        *("--metrics", "--web", "--control-allow"),
    ],
    "help-daemon": ["Usage: spreadqueue daemon [options]", "--listen", "--allow", "--max-sessions"],
    "help-manager": [
        "Usage: spreadqueue manager [options] [QUEUE]",
        "--embedded-daemon",
        "--priority-aging",
    ],
    "help-worker": [
        "Usage: spreadqueue worker --handlers module:object",
        "--concurrency",
        "--metrics",
        "--pool",
        "Where plain (non-async) handlers run: 'threads'",
        "--max-tasks-per-child",
        "--auto-manager",
    ],
    "help-status": [
        *("usage: spreadqueue status", "QUEUE", "--watch", "--json"),
        "seconds to wait for answers [default: 1]",
    ],
    "help-control": [
        *("usage: spreadqueue control", "QUEUE ACTION [TARGET]", "pause, resume, purge"),
        "seconds to wait for answers [default: 5]",
    ],
    "help-replies": [
        "usage: spreadqueue replies",
        *("GROUP", "--count", "--timeout", "--serializer", "--spread", "--ready-file"),
    ],
    "help-rpc": [
        "usage: spreadqueue rpc",
        *("--queue", "--spread", "--timeout", "--priority", "FUNC", "JSON"),
    ],
    "help-demo": [
        "usage: spreadqueue demo",
        "--workers",
        "--tasks",
        "--spread",
        "--web",
        "--linger",
    ],
    "help-plugin-daemon": ["spread-daemon [options]", "--listen", "--allow", "--ready-file"],
    "help-plugin-manager": ["spreadqueue-manager [options] [QUEUE]", "--queue", "--max-attempts"],
    "help-plugin-worker": ["spreadqueue-worker --handlers", "--concurrency", "--ready-file"],
}


@pytest.mark.parametrize("label", sorted(HELP))
def test_help(ran: dict[str, Ran], label: str) -> None:
    """``--help`` of spreadqueue, each subcommand, sqm and each twistd plugin exits 0
    and names the command's options."""
    r = ran[label]
    assert r.returncode == 0, r
    for text in HELP[label]:
        assert text in r.stdout, f"{text!r} missing: {r}"


def test_no_or_unknown_command_is_a_usage_error(ran: dict[str, Ran]) -> None:
    """``spreadqueue`` alone or with an unknown command: exit 2 with the usage."""
    assert ran["no-command"].returncode == 2, ran["no-command"]
    assert "usage: spreadqueue COMMAND" in ran["no-command"].stdout
    unknown = ran["unknown-command"]
    assert unknown.returncode == 2, unknown
    assert "unknown command 'frobnicate'" in unknown.stderr


def test_demo(ran: dict[str, Ran]) -> None:
    """``spreadqueue demo`` runs the synopsis and a burst on its own embedded daemon,
    exits 0 and says every task was answered, none wrong, none lost."""
    r = ran["demo"]
    assert r.returncode == 0, r
    assert "submit + receive: task" in r.stdout and "I heard you!" in r.stdout
    assert re.search(r"demo: 40 tasks answered by 2 workers in .*, 0 wrong, 0 lost", r.stdout), r


def test_rpc_prints_the_result_as_json(ran: dict[str, Ran]) -> None:
    """``spreadqueue rpc`` prints the worker's answer as JSON and exits 0; the queue and
    daemon also come from $SPREAD_QUEUE_NAME and $SPREAD_DAEMON."""
    for label in ("rpc-ok", "rpc-env"):
        r = ran[label]
        assert r.returncode == 0, r
        assert json.loads(r.stdout) == {"response": "I heard you!"}, r
    echo = ran["rpc-echo"]
    assert echo.returncode == 0, echo
    assert json.loads(echo.stdout) == [1, "two", {"three": 3.5}, None]


def test_rpc_remote_error_exits_1_with_the_message(ran: dict[str, Ran]) -> None:
    """A handler that raises: exit 1, the exception and the worker's traceback on
    stderr, nothing on stdout."""
    r = ran["rpc-fail"]
    assert r.returncode == 1, r
    assert "the worker raised ValueError: bad value: {'x': 1}" in r.stderr, r
    assert "Traceback" in r.stderr and "e2e_handlers.py" in r.stderr
    assert r.stdout == ""


def test_rpc_of_a_function_no_worker_serves_exits_3_naming_it(ran: dict[str, Ran]) -> None:
    """The task waits for a worker that serves the function; none comes: exit 3 at the
    timeout, and the message names the function."""
    unknown = ran["rpc-unknown"]
    assert unknown.returncode == 3, unknown
    assert "no result within 1s" in unknown.stderr
    assert "no worker serving function 'no_such_function'" in unknown.stderr, unknown


def test_rpc_priority(ran: dict[str, Ran]) -> None:
    """``--priority`` 0..9: a call with one is answered as any other; out of range is a
    usage error (exit 2)."""
    r = ran["rpc-priority"]
    assert (r.returncode, json.loads(r.stdout)) == (0, [9]), r
    bad = ran["rpc-bad-priority"]
    assert bad.returncode == 2, bad
    assert "--priority must be from 0 to 9" in bad.stderr


def test_rpc_unanswered_exits_3(ran: dict[str, Ran]) -> None:
    """Nothing answered in time - the task timed out, no manager acknowledged it, or no
    daemon answers at all: exit 3 with the reason on stderr."""
    timeout = ran["rpc-timeout"]
    assert timeout.returncode == 3, timeout
    assert "no result within 1s" in timeout.stderr
    nobody = ran["rpc-no-manager"]
    assert nobody.returncode == 3, nobody
    assert "no manager of queue" in nobody.stderr and "acknowledged" in nobody.stderr
    unreachable = ran["rpc-no-daemon"]
    assert unreachable.returncode == 3, unreachable
    assert "cannot reach the Spread daemon" in unreachable.stderr


def test_rpc_bad_json_exits_2(ran: dict[str, Ran]) -> None:
    """Arguments that are not JSON are a usage error (exit 2), before any connection."""
    r = ran["rpc-bad-json"]
    assert r.returncode == 2, r
    assert "ARGS is not JSON" in r.stderr


@pytest.mark.parametrize(
    "label, prog",
    [
        ("long-queue-rpc", "spreadqueue rpc"),
        ("long-queue-sqm", "sqm"),
        ("long-queue-manager", "spreadqueue manager"),
        ("long-queue-worker", "spreadqueue worker"),
    ],
)
def test_a_too_long_queue_name_is_a_clear_usage_error(
    ran: dict[str, Ran], label: str, prog: str
) -> None:
    """A 28-character queue name: exit 2, one line naming the command, the name, and
    the limit of 27; no traceback and no twist usage text."""
    r = ran[label]
    assert r.returncode == 2, r
    assert r.stderr.startswith(f"{prog}: queue name '{LONG_QUEUE}' is 28 characters; at most 27")
    assert "Traceback" not in r.stderr and "plugin [plugin_options]" not in r.stderr, r


def test_plugin_usage_errors_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    """The plugin commands report usage errors in their own terms (exit 2), like
    ``spreadqueue rpc``, and their help shows their own synopsis."""
    assert cli.sqm_main([LONG_QUEUE]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sqm: queue name '{LONG_QUEUE}' is 28 characters")
    assert "sqm --help lists the options" in err
    assert cli.main(["worker", "--queue", "q"]) == 2
    assert capsys.readouterr().err.startswith("spreadqueue worker: --handlers module:object")
    assert cli.main(["daemon", "--no-such-option"]) == 2
    assert "spreadqueue daemon: option --no-such-option not recognized" in capsys.readouterr().err
    assert cli.sqm_main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("Usage: sqm [options] [QUEUE]\n")


def _speaks_spread(port: int) -> bool:
    """True if a Spread daemon answers a client connect at 127.0.0.1:port."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.settimeout(10)
        s.sendall(wire.encode_connect(("c" + uuid.uuid4().hex)[:10]))
        return s.recv(6)[:1] == b"\x05"  # the authentication methods' length


def test_sqm_starts_an_embedded_daemon_when_nothing_answers(tmp_path: Path) -> None:
    """``sqm QUEUE`` with nothing answering at its (local) address starts an embedded
    Spread daemon there, says so in its log, becomes the active manager on an
    in-process session, and the daemon serves Spread clients over TCP."""
    port = free_port()
    proc = Proc(sqm(unique_queue(), "--spread", f"{port}@localhost"), tmp_path, "sqm")
    try:
        proc.wait_ready()
        log = proc.log()
        assert (
            f"no Spread daemon answered at {port}@localhost: started an embedded Spread "
            f"daemon on 127.0.0.1:{port}"
        ) in log, log
        assert "in-process session of the embedded daemon" in log
        assert _speaks_spread(port)
    finally:
        status = proc.stop()
    assert status in (0, -signal.SIGTERM), proc.log()


def test_sqm_no_embedded_daemon_starts_none(tmp_path: Path) -> None:
    """``sqm --no-embedded-daemon`` with nothing at the address starts no daemon: it
    says it cannot reach Spread, keeps retrying, never becomes ready, and nothing
    listens on the port."""
    port = free_port()
    args = sqm(
        unique_queue(), "--no-embedded-daemon", "--spread", f"tcp:host=127.0.0.1:port={port}"
    )
    proc = Proc(args, tmp_path, "sqm")
    try:
        proc.wait_log(r"cannot open a Spread session \(Connection was refused.*retrying")
        assert "embedded" not in proc.log(), proc.log()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
        assert proc.running and not proc.ready_file.exists()
    finally:
        proc.stop()
