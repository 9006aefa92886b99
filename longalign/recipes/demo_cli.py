"""``longalign demo``: the whole recipe at small scale (:mod:`longalign.recipes.demo`) on the command line."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from longalign.config import add_config_args, build_config
from longalign.recipes import demo
from longalign.recipes.demo import DemoConfig


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
    skip = {"stage_seconds", "budget_s"}
    parts = []
    for k, v in numbers.items():
        if isinstance(v, dict) and "base" in v and "tuned" in v:  # base vs fine-tuned
            b, t = (f"{x:.3g}" if isinstance(x, float) else str(x) for x in (v["base"], v["tuned"]))
            parts.append(f"{k}={b}->{t}")
            continue
        if isinstance(v, dict) and v.get("diff") is not None and v.get("lo") is not None:  # with its interval
            parts.append(f"{k}={v['diff']:+.1f} (95% interval {v['lo']:+.1f} to {v['hi']:+.1f})")
            continue
        if k in skip or isinstance(v, (dict, list)):
            continue
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def _cmd_demo(args: argparse.Namespace) -> int:
    cfg = build_config(DemoConfig, args)
    started: dict[str, float] = {}

    def on_stage(name: str, event: str, numbers: dict | None) -> None:
        budget = (numbers or {}).get("budget_s")
        if event == "start":
            started[name] = time.perf_counter()
            print(f"==> {name}" + (f" (planned {budget:.0f} s)" if budget else ""), flush=True)
        else:
            secs = numbers["stage_seconds"]
            over = budget is not None and secs > budget and not numbers.get("resumed")
            print(f"    done in {secs:.0f} s: {_fmt(numbers)}", flush=True)
            if over:
                print(f"    {demo.overrun_text(name, secs, budget)}", flush=True)

    summary = demo.run_demo(cfg, on_stage=on_stage)
    print()
    print(f"{'stage':<22}{'seconds':>9}{'planned':>8}  numbers")
    for name, numbers in summary["stages"].items():
        budget = numbers.get("budget_s")
        print(f"{name:<22}{numbers['stage_seconds']:>9.0f}{budget or 0:>8.0f}  {_fmt(numbers)}")
    print("\nWhat the numbers say:")
    for line in summary["explained"]:
        print(f"  - {line}")
    print(f"\nfinished in {summary['seconds']:.0f}s; everything is in {summary['run']}")
    print(f"the base model's evaluation is in {summary['base_run']}")
    print(f"open the dashboard:  longalign app --runs {Path(summary['run']).parent}")
    return 0
