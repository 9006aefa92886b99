"""``longalign experiment evidence``: does the recipe's training move the embedded model on held-out long tasks?"""

from __future__ import annotations

from typing import Any

from longalign.recipes import evidence
from longalign.recipes.ablation.cli import add_experiment
from longalign.recipes.evidence import EvidenceConfig


def register(subparsers: Any) -> None:
    """Add ``longalign experiment evidence``."""
    add_experiment(
        subparsers,
        "evidence",
        "fine-tune the embedded SmolLM2-135M on long lookup records (pack+pack/token/sequence, 3 seeds) "
        "and score held-out ladder tasks with bootstrap intervals; writes evidence.json",
        evidence,
        EvidenceConfig,
    )
