"""The wheel, as a user gets it: installed into a fresh virtual environment, it carries
the twistd plugins, and twistd lists them. CI gives it the wheel it builds and checks
($SPREADQUEUE_TEST_WHEEL); elsewhere the test builds one from the tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import spreadqueue

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ("spread-daemon", "spreadqueue-manager", "spreadqueue-worker")
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
#: What pip says when it cannot reach the package index (no network here).
OFFLINE = (
    "Could not find a version that satisfies",
    "No matching distribution found",
    "Failed to establish a new connection",
    "Network is unreachable",
    "Temporary failure in name resolution",
)


def run(args: list[str | Path], cwd: Path, what: str, timeout: float = 300) -> str:
    """Run ``args`` without PYTHONPATH (only installed copies may be found); skip when
    pip could not reach the index, unless on CI, where this test must run."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    out = done.stdout + done.stderr
    if done.returncode != 0:
        if any(s in out for s in OFFLINE) and not os.environ.get("CI"):
            pytest.skip(f"{what}: the package index cannot be reached (offline?)")
        pytest.fail(f"{what} failed ({done.returncode}):\n{out}")
    return out


def the_wheel(tmp_path: Path) -> Path:
    """$SPREADQUEUE_TEST_WHEEL (CI passes the wheel it builds and checks), else a wheel
    built from the tree now."""
    given = os.environ.get("SPREADQUEUE_TEST_WHEEL")
    if given:
        return Path(given)
    # Build from a copy of the tree, so that the build leaves nothing (build/,
    # *.egg-info) in the checkout that could pass for an installed copy later.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git",
            ".tox",
            ".venv",
            "venv",
            "build",
            "dist",
            "*.egg-info",
            "_build",
            "__pycache__",
            ".*_cache",
            ".hypothesis",
            "dropin.cache",
            "tests",
            "docs",
        ),
    )
    wheels = tmp_path / "wheels"
    run([*PIP, "wheel", "--no-deps", "--wheel-dir", wheels, source], tmp_path, "pip wheel")
    (wheel,) = wheels.glob("spreadqueue-*.whl")
    return wheel


def test_twistd_lists_the_plugins_after_installing_the_wheel_in_a_fresh_venv(
    tmp_path: Path,
) -> None:
    wheel = the_wheel(tmp_path)
    assert wheel.name.startswith(f"spreadqueue-{spreadqueue.__version__}-"), wheel.name
    with zipfile.ZipFile(wheel) as contents:
        assert "twisted/plugins/spreadqueue_plugins.py" in contents.namelist()

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, "venv")
    python = venv / "bin" / "python"
    # This environment's pip installs into the new one (--python), with the wheel's
    # dependencies from the index: faster than bootstrapping pip into the venv.
    run([*PIP, "--python", python, "install", "--no-compile", wheel], tmp_path, "pip install")

    outside = tmp_path / "elsewhere"  # not the tree: only the installed copy is found
    outside.mkdir()
    where = run(
        [python, "-c", "import spreadqueue; print(spreadqueue.__file__)"], outside, "import"
    )
    assert Path(where.strip()).is_relative_to(venv), where
    listing = run([venv / "bin" / "twistd", "--help"], outside, "twistd --help")
    for name in PLUGINS:
        assert f"    {name} " in listing, listing
