#!/usr/bin/env python
"""Batching x loss weighting, measured: does LongAlign's loss weighting help long-input short-answer tasks, and
do sorting and packing reach the same quality sooner than naive batching? (CPU, minutes.)

Five arms train a small random-init Llama on the same rows, with the same epochs and seeds, through
``longalign.train``: naive+token, sort+sequence, pack+pack (eq. 3), pack+token, pack+sequence (eq. 4). The mix
puts needle questions over 300-1,500-token documents (~8-token answers) beside continuation rows with ~250-token
answers; held-out rows of each kind are scored during training. See ``longalign/recipes/ablation/`` for the
design. Writes benchmarks/results/ablation.json and ablation.html (ablation.png when kaleido is installed).
This script is ``longalign experiment ablation`` with ``--out benchmarks/results`` (from any directory); every
option of the command applies (``--help``).

    python benchmarks/ablation.py            # 3 seeds x 5 arms, ~20 minutes on a quiet 2-core machine
    python benchmarks/ablation.py --smoke    # seconds: the smallest end-to-end run
    longalign experiment ablation --seeds 0 --arms pack+token,pack+sequence   # the same from the CLI
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    from longalign.cli import main as longalign

    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        args += ["--out", str(ROOT / "benchmarks" / "results")]
    return longalign(["experiment", "ablation", *args])


if __name__ == "__main__":
    sys.exit(main())
