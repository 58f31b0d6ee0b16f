"""The README's Python API example runs as written, next to a manager of its queue."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from procs import Proc, child_env, spread_daemon

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(heading: str) -> str:
    """The first ```python block of the README section ``heading``."""
    section = README.read_text().split(f"\n## {heading}\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def run_next_to_a_manager(
    code: str, tmp_path: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a script (with ``env`` set) next to a manager of queue "doubler"
    (and a daemon)."""
    assert '"doubler"' in code  # its own queue, served by its own worker
    script = tmp_path / "example.py"
    script.write_text(code)
    with spread_daemon(tmp_path) as endpoint:
        manager = Proc(
            [
                sys.executable,
                "-m",
                "spreadqueue._service.cli",
                "manager",
                "doubler",
                "--spread",
                endpoint,
            ],
            tmp_path,
            "manager",
        )
        try:
            manager.wait_ready()
            done = subprocess.run(
                [sys.executable, str(script)],
                env=child_env(SPREAD_DAEMON=endpoint, **env),
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            manager.stop()
    return done


def test_the_python_api_example_answers_42_and_8(tmp_path: Path) -> None:
    done = run_next_to_a_manager(readme_block("Python API"), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "42\n8\n", done.stdout + done.stderr


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_asyncio_example_answers_42_and_8(tmp_path: Path, loop: str) -> None:
    code = readme_block("asyncio")
    assert "asyncio.run(main())" in code
    if loop == "uvloop":
        pytest.importorskip("uvloop")
        code = "import uvloop\n" + code.replace("asyncio.run(main())", "uvloop.run(main())")
    # in development mode with warnings as errors: it must end cleanly too
    done = run_next_to_a_manager(code, tmp_path, PYTHONDEVMODE="1", PYTHONWARNINGS="error")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "42\n8\n", done.stdout + done.stderr
    assert done.stderr == "", done.stderr
