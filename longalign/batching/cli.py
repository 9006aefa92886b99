"""``longalign batch plan|simulate``: plan batches over token lengths and simulate training time.

Lengths come from ``--tokens DIR`` (the ``length`` column of a tokens/ dataset), ``--lengths FILE`` (one
integer per line, or a .npy array) or ``--run DIR`` (its tokens/). With ``--run`` the results are written
to ``batching/<method>.json`` + ``batching/<method>.plan.json`` (plan) or ``batching/simulate.json`` and the
stage is recorded in run.json; without it nothing but ``--plan-out`` is written.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from longalign import batching
from longalign.batching.config import BatchPlanConfig, SimulateConfig
from longalign.batching.plans import plan_lengths
from longalign.batching.simulate import simulate_config
from longalign.config import add_config_args, add_run_arg, build_config, run_dir_of

RUN_HELP = "run directory: read DIR/tokens (unless --tokens/--lengths) and write DIR/batching/"


def register(subparsers: Any) -> None:
    """Add ``longalign batch plan|simulate``."""
    p = subparsers.add_parser(
        "batch",
        help="plan batches (naive | sort | pack) and simulate training time",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="batch_command", metavar="{plan,simulate}")
    plan = sub.add_parser("plan", help="make a batch plan and print its statistics")
    add_run_arg(plan, help=RUN_HELP)
    add_config_args(plan, BatchPlanConfig)
    plan.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    plan.set_defaults(func=cmd_plan)
    sim = sub.add_parser("simulate", help="simulated training time and device idle time per method")
    add_run_arg(sim, help=RUN_HELP)
    add_config_args(sim, SimulateConfig)
    sim.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    sim.set_defaults(func=cmd_simulate)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _emit(summary: Any, as_json: bool) -> Any:
    """The summary as JSON on stdout (``--json``), else the summary itself, whose lines ``longalign`` prints."""
    if not as_json:
        return summary
    print(json.dumps(summary.to_dict()))
    return summary.exit_code


def cmd_plan(args: argparse.Namespace) -> Any:
    cfg = build_config(BatchPlanConfig, args)
    run_dir = run_dir_of(args)
    return _emit(batching.run(cfg, run_dir) if run_dir else plan_lengths(cfg), args.json)


def cmd_simulate(args: argparse.Namespace) -> Any:
    cfg = build_config(SimulateConfig, args)
    run_dir = run_dir_of(args)
    return _emit(batching.run(cfg, run_dir) if run_dir else simulate_config(cfg), args.json)
