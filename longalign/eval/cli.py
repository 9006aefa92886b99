"""``longalign eval longbench-chat | needle | longbench | ruler | longbench-v2 | judge-agreement | heldout``.

Every option of a subcommand is a field of its config dataclass (``--config FILE`` plus ``--field-name``
overrides); results go to ``<run>/eval/<benchmark>/`` (``--run DIR``; ``--out`` is its deprecated name).
Re-running a command with the same ``--run`` resumes: finished predictions and judge runs are skipped.
"""

from __future__ import annotations

import argparse
from typing import Any

from longalign import eval as evaluation
from longalign.config import add_config_args, add_run_arg, build_config, run_dir_of
from longalign.eval.agreement import AgreementConfig
from longalign.eval.heldout import HeldOutConfig
from longalign.eval.longbench import LongBenchConfig
from longalign.eval.longbench_chat import LongBenchChatConfig
from longalign.eval.longbench_v2 import LongBenchV2Config
from longalign.eval.needle import NeedleConfig
from longalign.eval.ruler import RulerConfig

DEFAULT_RUN = "runs/eval"

COMMANDS: dict[str, tuple[str, type]] = {
    "longbench-chat": ("LongBench-Chat: answer, judge 1-10 with scored examples, summarise", LongBenchChatConfig),
    "needle": ("needle-in-a-haystack grid of context lengths x depths, with a heatmap", NeedleConfig),
    "longbench": ("LongBench single/multi-doc QA and summarization, judged and normalised to 0-100", LongBenchConfig),
    "ruler": (
        "synthetic ladder (RULER tasks: needles, variable tracking, word extraction, QA) over context lengths, "
        "with the effective context length",
        RulerConfig,
    ),
    "longbench-v2": (
        "LongBench v2 multiple choice from your copy: accuracy overall, by difficulty and by length",
        LongBenchV2Config,
    ),
    "judge-agreement": ("correlate a judge with the human scores of LongBench-Chat's few_shots.json", AgreementConfig),
    "heldout": ("loss of a model on the assistant replies of held-out conversations (no generation)", HeldOutConfig),
}


def register(subparsers: Any) -> None:
    """Add ``longalign eval`` and one subcommand per benchmark."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a model: LongBench-Chat, needle, LongBench, RULER ladder, LongBench v2, judge agreement, "
        "held-out loss",
        description="Evaluate long-context ability; results go to <run>/eval/.",
    )
    sub = parser.add_subparsers(dest="eval_command", metavar="BENCHMARK")
    for name, (help_text, cls) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_run_arg(p, default=DEFAULT_RUN, help="run directory; results go to <run>/eval/", aliases=("out",))
        add_config_args(p, cls)
        p.set_defaults(func=_handler(cls))
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _handler(cls: type):
    def handle(args: argparse.Namespace) -> Any:
        cfg = build_config(cls, args)
        return evaluation.run(cfg, run_dir_of(args))

    return handle
