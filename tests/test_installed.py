"""The skip rule of ``tests/installed.py`` and ``tests/conftest.py``: a test whose component is missing skips
locally and fails under ``CI=true``; other skips stay skips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

SAMPLE = """
import installed
import pytest

installed.FINDERS["absent"] = lambda: None
installed.FIXES["absent"] = "install absent"


def test_needs_an_absent_component():
    installed.require("absent")


def test_skips_for_another_reason():
    pytest.skip("not this platform")
"""


def run_sample(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    if ci is not None:
        env["CI"] = ci
    cmd = [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rs", "-q"]
    cmd += ["--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path / "test_sample.py")]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_missing_component_skips_outside_ci(tmp_path):
    proc = run_sample(tmp_path, None)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 skipped" in proc.stdout and "component not installed: absent (install absent)" in proc.stdout


def test_missing_component_fails_under_ci(tmp_path):
    proc = run_sample(tmp_path, "true")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed, 1 skipped" in proc.stdout, proc.stdout
    assert "CI=true and component not installed: absent" in proc.stdout
