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
from pathlib import Path

RUNS_ENV = "LONGALIGN_RUNS"


def app_script() -> Path:
    """``app/Home.py`` next to the package (the app ships with the source tree)."""
    return Path(__file__).resolve().parents[1] / "app" / "Home.py"


def build_command(runs: str | Path, port: int, headless: bool = False, address: str | None = None) -> list[str]:
    """The ``streamlit run`` command line for the dashboard."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_script()), "--server.port", str(int(port)),
           "--browser.gatherUsageStats", "false"]
    if headless:
        cmd += ["--server.headless", "true"]
    if address:
        cmd += ["--server.address", address]
    return cmd + ["--", "--runs", str(runs)]  # relative paths resolve against the working directory


def _handler(args: argparse.Namespace) -> int:
    script = app_script()
    if not script.is_file():
        raise FileNotFoundError(f"{script} not found: the dashboard ships with the source tree; run "
                                f"`longalign app` from a clone of the project (pip install -e .)")
    runs = Path(args.runs)
    if not runs.is_dir():
        print(f"note: {runs} does not exist yet; the dashboard will say so until a stage writes a run there",
              file=sys.stderr)
    env = dict(os.environ, **{RUNS_ENV: str(runs)})
    cmd = build_command(runs, args.port, headless=args.headless, address=args.address)
    print(f"LongAlign Workbench dashboard on http://{args.address or 'localhost'}:{args.port} (runs folder {runs})")
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "app", help="open the dashboard (Streamlit) on a folder of runs",
        description="Start the Streamlit dashboard: lengths, packing, simulator, training curves, LongBench-Chat "
                    "and needle results, all read from run directories.")
    p.add_argument("--runs", default="runs", help="folder holding run directories (default: runs)")
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default: 8501)")
    p.add_argument("--address", default=None, help="address to bind (default: Streamlit's, all interfaces)")
    p.add_argument("--headless", action="store_true", help="do not open a browser window")
    p.set_defaults(func=_handler)
