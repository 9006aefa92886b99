"""The dashboard in a real browser: ``streamlit run`` (headless, free port) on a fixture runs folder, every page
opened in headless Chromium through playwright, plotly charts checked as drawn, screenshots saved to
$LONGALIGN_SCREENSHOT_DIR (the README's pictures: LONGALIGN_SCREENSHOT_DIR=docs/screenshots).
Skips when Debian's chromium or playwright is missing."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
SHOTS = Path(os.environ.get("LONGALIGN_SCREENSHOT_DIR") or Path(tempfile.gettempdir()) / "longalign-screenshots")
# url path, screenshot name, plotly charts expected at least
PAGES = [
    ("", "home", 0),
    ("Lengths", "lengths", 2),
    ("Packing", "packing", 8),
    ("Simulator", "simulator", 1),
    ("Training", "training", 2),
    ("LongBench_Chat?compare=fixture-b", "longbench_chat", 1),
    ("Needle", "needle", 1),
]
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def _load_make_run():
    spec = importlib.util.spec_from_file_location("make_run", ROOT / "tests" / "fixtures" / "make_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.make_run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    work = tmp_path_factory.mktemp("browser")
    runs = work / "runs"  # served as the relative path "runs", as a user would type it
    make_run = _load_make_run()
    make_run(runs, "fixture", 0)
    make_run(runs, "fixture-b", 1, model="longalign-smollm2-naive", skill=5.0)
    from longalign.app_cli import build_command

    port = _free_port()
    log = open(work / "streamlit.log", "w")
    proc = subprocess.Popen(
        build_command("runs", port, headless=True, address="127.0.0.1"),
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, LONGALIGN_RUNS="runs"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"streamlit did not start: {(work / 'streamlit.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _screenshot(page, path: Path, width: int = 1300, max_height: int = 4200) -> None:
    """Streamlit scrolls inside its main block, so grow the viewport to the content before the shot; then
    reduce the PNG to a 256-colour palette when Pillow is present (about 3x smaller)."""
    height = page.evaluate(
        "(() => { const m = document.querySelector('[data-testid=\"stMainBlockContainer\"]');"
        " return m ? m.scrollHeight + 40 : document.body.scrollHeight; })()"
    )
    page.set_viewport_size({"width": width, "height": int(min(max(height, 600), max_height))})
    page.wait_for_timeout(700)
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": width, "height": 900})
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def test_every_page_renders_its_charts(server):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            for path, name, n_charts in PAGES:
                sep = "&" if "?" in path else "?"
                page.goto(f"{server}/{path}{sep}run=fixture", wait_until="domcontentloaded")
                page.wait_for_selector('[data-testid="stApp"]', timeout=180_000)
                if n_charts:
                    page.wait_for_function(
                        f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {n_charts}", timeout=180_000
                    )
                else:
                    page.wait_for_selector('[data-testid="stDataFrame"]', timeout=180_000)
                page.wait_for_function(  # the script run has finished (no running indicator)
                    "!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=180_000
                )
                page.wait_for_timeout(800)  # let plotly finish its transitions before the screenshot
                assert page.locator('[data-testid="stException"]').count() == 0, f"{name}: exception shown"
                plots = page.locator(".js-plotly-plot")
                assert plots.count() >= n_charts, name
                for i in range(plots.count()):  # each chart has drawn its traces
                    assert plots.nth(i).locator(".main-svg").count() >= 1
                assert (
                    "fixture"
                    in page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.inner_html()
                )
                _screenshot(page, SHOTS / f"{name}.png")
        finally:
            browser.close()
    for _, name, _ in PAGES:
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000
