"""The tutorial's second part (docs/tutorial.md, steps 4 and 5) runs as written: its
handlers behind two workers of queue ``calc``, the ``spreadqueue rpc`` calls with their
outputs and exit statuses, and docs/tutorial/calc_sender.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from procs import ROOT, Proc, child_env, spread_daemon

TUTORIAL = ROOT / "docs" / "tutorial"


def test_the_calc_queue_of_the_tutorial(tmp_path: Path) -> None:
    with spread_daemon(tmp_path) as endpoint:
        env = child_env([TUTORIAL], SPREAD_DAEMON=endpoint)
        cli = [sys.executable, "-m", "spreadqueue._service.cli"]
        manager = Proc([*cli, "manager", "calc"], tmp_path, "manager", env=env)
        worker = [*cli, "worker", "--queue", "calc", "--handlers", "handlers:handlers"]
        workers = [
            Proc([*worker, "--concurrency", "4"], tmp_path, f"worker{n}", env=env) for n in (1, 2)
        ]
        try:
            for proc in (manager, *workers):
                proc.wait_ready()

            def rpc(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [*cli, "rpc", "--queue", "calc", *args],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )

            added = rpc("add", '{"a": 2, "b": 3}')
            assert (added.returncode, added.stdout) == (0, "5\n"), added.stderr
            divided = rpc("divide", '{"a": 1, "b": 0}')
            assert divided.returncode == 1
            assert "the worker raised ZeroDivisionError: division by zero" in divided.stderr
            unknown = rpc("--timeout", "2", "sqrt", "2")
            assert unknown.returncode == 3
            assert "no worker serving function 'sqrt' was registered" in unknown.stderr
            slow = rpc("--timeout", "1", "slow", "3")
            assert slow.returncode == 3
            assert "no result within 1s" in slow.stderr

            sent = subprocess.run(
                [sys.executable, str(TUTORIAL / "calc_sender.py")],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            status = subprocess.run(
                [*cli, "status", "calc", "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            for proc in (*workers, manager):
                proc.stop()
    assert sent.returncode == 0, sent.stdout + sent.stderr
    lines = sent.stdout.splitlines()
    assert sorted(lines[:10]) == sorted(f"{n} + {n} = {2 * n}" for n in range(10))
    assert lines[10] == "the worker raised ZeroDivisionError: division by zero"
    assert lines[11].startswith("gave up: no result within 1s (task ")
    assert len(lines) == 12, sent.stdout
    # both workers were there to share the work, as the tutorial's status shows
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert len(report["workers"]) == 2
