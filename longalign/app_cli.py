"""``longalign app``: open the Streamlit dashboard on a folder of run directories.

The dashboard (``app/Home.py`` and ``app/pages/``) only reads run directories through
:mod:`longalign.views`; this command starts ``streamlit run`` with the runs folder passed after ``--`` (and
in ``$LONGALIGN_RUNS``, which the pages read when no ``--runs`` is given).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from longalign.config import Options, add_config_args, build_config, option

RUNS_ENV = "LONGALIGN_RUNS"


@dataclass
class AppConfig(Options):
    """Options of ``longalign app``."""

    runs: str = option("runs", help="folder holding run directories")
    port: int = option(8501, minimum=1, maximum=65535, help="port to serve on")
    address: str | None = option(None, help="address to bind (unset: Streamlit's, all interfaces)")
    headless: bool = option(False, help="do not open a browser window")


def app_script() -> Path:
    """``app/Home.py`` next to the package (the app ships with the source tree)."""
    return Path(__file__).resolve().parents[1] / "app" / "Home.py"


def build_command(runs: str | Path, port: int, headless: bool = False, address: str | None = None) -> list[str]:
    """The ``streamlit run`` command line for the dashboard."""
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(app_script()),
        "--server.port",
        str(int(port)),
        "--browser.gatherUsageStats",
        "false",
    ]
    if headless:
        cmd += ["--server.headless", "true"]
    if address:
        cmd += ["--server.address", address]
    return cmd + ["--", "--runs", str(runs)]  # relative paths resolve against the working directory


def _handler(args: argparse.Namespace) -> int:
    cfg = build_config(AppConfig, args)
    script = app_script()
    if not script.is_file():
        raise FileNotFoundError(
            f"{script} not found: the dashboard ships with the source tree; run "
            f"`longalign app` from a clone of the project (pip install -e .)"
        )
    runs = Path(cfg.runs)
    if not runs.is_dir():
        print(
            f"note: {runs} does not exist yet; the dashboard will say so until a stage writes a run there",
            file=sys.stderr,
        )
    env = dict(os.environ, **{RUNS_ENV: str(runs)})
    cmd = build_command(runs, cfg.port, headless=cfg.headless, address=cfg.address)
    print(f"LongAlign Workbench dashboard on http://{cfg.address or 'localhost'}:{cfg.port} (runs folder {runs})")
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0


def register(subparsers) -> None:
    """Add ``longalign app``."""
    p = subparsers.add_parser(
        "app",
        help="open the dashboard (Streamlit) on a folder of runs",
        description="Start the Streamlit dashboard: lengths, packing, simulator, training curves, LongBench-Chat "
        "and needle results, all read from run directories.",
    )
    add_config_args(p, AppConfig, with_config_file=False)
    p.set_defaults(func=_handler)
