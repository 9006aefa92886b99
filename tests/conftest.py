"""Shared pytest fixtures.

``fake_llm``: a real OpenAI-compatible HTTP server on 127.0.0.1 (``tests/fake_llm_server.py``) running in a
thread for the test; yields the :class:`FakeLLMServer` with ``.base_url``, ``.requests`` (request log),
``.set_responder(fn)``, ``.fail_rate`` (settable), ``.script([...])`` and ``.max_in_flight``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fake_llm_server import FakeLLMServer  # noqa: E402
from installed import MISSING, in_ci  # noqa: E402


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under ``CI=true`` a skip because a component that ``scripts/setup.sh`` installs is missing fails the test:
    CI installed it, so the skip means the check did not run (``tests/installed.py``)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci() and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if MISSING in reason:
            report.outcome = "failed"
            report.longrepr = f"CI=true and {reason.removeprefix('Skipped: ')}: the check this test makes did not run"


@pytest.fixture
def fake_llm():
    server = FakeLLMServer(responder="echo", seed=0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def make_fixture_run():
    """``make_run(root, name, seed, **kw)`` from tests/fixtures/make_run.py: a realistic fixture run directory."""
    import importlib.util

    path = Path(__file__).resolve().parent / "fixtures" / "make_run.py"
    spec = importlib.util.spec_from_file_location("longalign_fixture_make_run", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_run


@pytest.fixture(autouse=True)
def _restore_main_module():
    """Streamlit's AppTest runs page scripts as ``__main__``; a later test that starts processes with the
    ``spawn`` method would then re-run that page in each child. Put pytest's own ``__main__`` back."""
    main = sys.modules.get("__main__")
    yield
    if main is not None and sys.modules.get("__main__") is not main:
        sys.modules["__main__"] = main


@pytest.fixture(scope="session")
def fixture_runs(tmp_path_factory, make_fixture_run) -> Path:
    """A runs folder for the view tests: fixture and fixture-b (a weaker model), an empty run and a hidden folder."""
    root = tmp_path_factory.mktemp("view_runs")
    make_fixture_run(root, "fixture", 0)
    make_fixture_run(root, "fixture-b", 1, model="other-model", skill=5.0, older_batching_keys=True)
    (root / "blank").mkdir()
    (root / ".hidden").mkdir()
    return root
