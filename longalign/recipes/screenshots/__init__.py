"""Screenshots of the dashboard's pages for a real run, taken in headless Chromium (playwright + Debian's chromium).

    python -m longalign.recipes.screenshots --runs runs --run demo --compare demo-base --out docs/screenshots

starts ``longalign app`` on a free local port, opens every page for ``--run`` (the LongBench-Chat, Needle and Ladder
pages compared with ``--compare``), waits until its plotly charts are drawn and the script run has finished, refuses
a page that shows an exception, and saves one PNG per page (reduced to a 256-colour palette when Pillow is present).
The README's pictures are made this way from a ``longalign demo`` run. The command is :mod:`.__main__`; the
dashboard runs as its own command in a child process, as a user starts it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

# url path (before ?run=), file name, plotly charts the page draws at least when its artifacts exist
PAGES: tuple[tuple[str, str, int], ...] = (
    ("", "home", 0),
    ("Lengths", "lengths", 2),
    ("Packing", "packing", 8),
    ("Simulator", "simulator", 1),
    ("Training", "training", 2),
    ("LongBench_Chat", "longbench_chat", 1),
    ("Needle", "needle", 1),
    ("Ladder", "ladder", 1),
)
COMPARED = ("longbench_chat", "needle", "ladder")  # pages shot with the --compare run beside --run
LAUNCH_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)


def select_pages(names: str) -> tuple[tuple[str, str, int], ...]:
    """The :data:`PAGES` named in the comma list ``names`` (file names: ``ladder,needle``), in the dashboard's order;
    all of them for an empty list. An unknown name is refused with the valid ones."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted:
        return PAGES
    valid = [name for _, name, _ in PAGES]
    unknown = [n for n in wanted if n not in valid]
    if unknown:
        raise ValueError(f"unknown page(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
    return tuple(p for p in PAGES if p[1] in wanted)


def find_chromium() -> str | None:
    return shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(runs: str | Path, *, cwd: str | Path | None = None, timeout: float = 120.0) -> Iterator[str]:
    """Run the dashboard with ``longalign app`` on 127.0.0.1 (a free port) for the runs folder ``runs``; yields
    its URL."""
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    command = [sys.executable, "-m", "longalign.cli", "app", "--runs", str(runs), "--port", str(port)]
    command += ["--headless", "true", "--address", "127.0.0.1"]
    proc = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                raise RuntimeError(f"the dashboard did not start: {log.read()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        os.unlink(log.name)


WIDTH, HEIGHT = 1400, 1000  # the viewport the pages are checked at (no key column clipped at this width)


def save_full_page(page, path: Path, width: int = WIDTH, max_height: int = 4200) -> None:
    """Streamlit scrolls inside its main block: grow the viewport to the content, shoot, then shrink the PNG."""
    height = page.evaluate(
        "(() => { const m = document.querySelector('[data-testid=\"stMainBlockContainer\"]');"
        " return m ? m.scrollHeight + 40 : document.body.scrollHeight; })()"
    )
    page.set_viewport_size({"width": width, "height": int(min(max(height, 600), max_height))})
    page.wait_for_timeout(700)
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": width, "height": HEIGHT})
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def shoot(
    url: str,
    run: str,
    out: str | Path,
    *,
    compare: str | None = None,
    pages: Sequence[tuple[str, str, int]] = PAGES,
    chromium: str | None = None,
    suffix: str = "",
) -> list[Path]:
    """Open every page of the dashboard at ``url`` for ``run`` and save ``<out>/<name>.png`` (``<name>_<suffix>.png``
    with a suffix); returns the files.
    Raises RuntimeError when a page shows an exception or draws fewer charts than expected."""
    from playwright.sync_api import sync_playwright

    chromium = chromium or find_chromium()
    if chromium is None:
        raise RuntimeError("chromium is not installed: apt-get install -y chromium")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=list(LAUNCH_ARGS))
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            for path, name, n_charts in pages:
                query = f"run={run}" + (f"&compare={compare}" if compare and name in COMPARED else "")
                page.goto(f"{url}/{path}?{query}", wait_until="domcontentloaded")
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
                page.wait_for_timeout(800)  # let plotly finish its transitions
                if page.locator('[data-testid="stException"]').count():
                    raise RuntimeError(f"page {name or 'home'} shows an exception for run {run}")
                plots = page.locator(".js-plotly-plot")
                if plots.count() < n_charts or any(
                    plots.nth(i).locator(".main-svg").count() < 1 for i in range(plots.count())
                ):
                    raise RuntimeError(f"page {name}: {plots.count()} charts drawn, expected {n_charts}")
                target = out / (f"{name}_{suffix}.png" if suffix else f"{name}.png")
                save_full_page(page, target)
                saved.append(target)
        finally:
            browser.close()
    return saved
