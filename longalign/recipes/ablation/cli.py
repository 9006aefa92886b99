"""``longalign experiment ablation``: batching x loss weighting on a needle / continuation mix (CPU)."""

from __future__ import annotations

import argparse
from typing import Any

from longalign.config import add_config_args, build_config
from longalign.recipes import ablation
from longalign.recipes.ablation import AblationConfig


def experiments(subparsers: Any) -> Any:
    """The subcommands of ``longalign experiment`` (the ``experiment`` command is added by the first caller)."""
    exp = subparsers.choices.get("experiment")
    if exp is None:
        exp = subparsers.add_parser(
            "experiment",
            help="controlled experiments that train several arms and compare them",
            description="Controlled experiments built on the train stage.",
        )
        exp.set_defaults(func=lambda args: exp.print_help() or 2)
        exp.set_defaults(_experiments=exp.add_subparsers(dest="experiment", metavar="EXPERIMENT"))
    return exp.get_default("_experiments")


def add_experiment(subparsers: Any, name: str, help_text: str, module: Any, cls: type) -> None:
    """Add ``longalign experiment NAME``: the options of ``cls`` (a config dataclass), the recipe module's docstring
    as its description, and ``module.run(cfg, progress=print)`` as its command."""
    p = experiments(subparsers).add_parser(
        name, help=help_text, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(p, cls)

    def command(args: argparse.Namespace) -> Any:
        return module.run(build_config(cls, args), progress=lambda msg: print(msg, flush=True))

    p.set_defaults(func=command)


def register(subparsers: Any) -> None:
    """Add ``longalign experiment ablation``."""
    add_experiment(
        subparsers,
        "ablation",
        "naive/sort/pack batching x token/sequence/pack loss on a mix of long-input short-answer "
        "and short-input long-answer rows; writes ablation.json and a figure",
        ablation,
        AblationConfig,
    )
