"""``longalign demo``: the whole recipe at small scale (:mod:`longalign.demo`) on the command line."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from longalign import demo
from longalign.config import add_config_args, build_config
from longalign.demo import DemoConfig


def register(subparsers: Any) -> None:
    """Add ``longalign demo``."""
    p = subparsers.add_parser(
        "demo",
        help="run the whole recipe at small scale on the embedded model (CPU, offline)",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p, DemoConfig)
    p.set_defaults(func=_cmd_demo)


def _fmt(numbers: dict[str, Any]) -> str:
    skip = {"stage_seconds"}
    parts = []
    for k, v in numbers.items():
        if k in skip or isinstance(v, (dict, list)):
            continue
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def _cmd_demo(args: argparse.Namespace) -> int:
    cfg = build_config(DemoConfig, args)
    started: dict[str, float] = {}

    def on_stage(name: str, event: str, numbers: dict | None) -> None:
        if event == "start":
            started[name] = time.perf_counter()
            print(f"==> {name}", flush=True)
        else:
            print(f"    done in {numbers['stage_seconds']:.0f}s: {_fmt(numbers)}", flush=True)

    summary = demo.run_demo(cfg, on_stage=on_stage)
    print()
    print(f"{'stage':<22}{'seconds':>9}  numbers")
    for name, numbers in summary["stages"].items():
        print(f"{name:<22}{numbers['stage_seconds']:>9.0f}  {_fmt(numbers)}")
    print(f"\nfinished in {summary['seconds']:.0f}s; everything is in {summary['run']}")
    print(f"open the dashboard:  longalign app --runs {Path(summary['run']).parent}")
    return 0
