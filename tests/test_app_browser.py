"""The dashboard in a real browser: ``streamlit run`` (headless, free port) on a fixture runs folder, every page
opened in headless Chromium through playwright (:mod:`longalign.recipes.screenshots`), plotly charts checked as drawn,
no exception shown, screenshots saved to $LONGALIGN_SCREENSHOT_DIR (default: a temporary folder). The README's
pictures come from a real demo run instead. Skips when Debian's chromium or playwright is missing (a failure under
``CI=true``, where ``.ci/run`` installs both: ``tests/installed.py``)."""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from installed import require  # noqa: E402

from longalign.recipes.screenshots import PAGES, find_chromium, serve, shoot  # noqa: E402

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = find_chromium()
SHOTS = Path(os.environ.get("LONGALIGN_SCREENSHOT_DIR") or Path(tempfile.gettempdir()) / "longalign-screenshots")


def _load_make_run():
    spec = importlib.util.spec_from_file_location("make_run", ROOT / "tests" / "fixtures" / "make_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_run


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require("chromium")
    require("playwright")
    work = tmp_path_factory.mktemp("browser")
    runs = work / "runs"  # served as the relative path "runs", as a user would type it
    make_run = _load_make_run()
    make_run(runs, "fixture", 0)
    make_run(runs, "fixture-b", 1, model="longalign-smollm2-naive", skill=5.0)
    with serve("runs", cwd=work) as url:
        yield url


def test_every_page_renders_its_charts(server):
    saved = shoot(server, "fixture", SHOTS, compare="fixture-b", chromium=CHROMIUM)
    assert [p.name for p in saved] == [f"{name}.png" for _, name, _ in PAGES]
    for path in saved:
        assert path.stat().st_size > 10_000
