"""``longalign experiment evidence``: does the recipe's training move the embedded model on held-out long tasks?"""

from __future__ import annotations

import argparse
from typing import Any

from longalign.config import add_config_args, build_config
from longalign.recipes import evidence
from longalign.recipes.ablation.cli import experiments
from longalign.recipes.evidence import EvidenceConfig


def register(subparsers: Any) -> None:
    """Add ``longalign experiment evidence``."""
    p = experiments(subparsers).add_parser(
        "evidence",
        help="fine-tune the embedded SmolLM2-135M on long lookup records (pack+pack/token/sequence, 3 seeds) "
        "and score held-out ladder tasks with bootstrap intervals; writes evidence.json",
        description=evidence.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_args(p, EvidenceConfig)
    p.set_defaults(func=_cmd_evidence)


def _cmd_evidence(args: argparse.Namespace) -> evidence.EvidenceSummary:
    cfg = build_config(EvidenceConfig, args)
    return evidence.run(cfg, progress=lambda msg: print(msg, flush=True))
