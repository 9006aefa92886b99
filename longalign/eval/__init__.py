"""Evaluation stage: LongBench-Chat, Needle-in-a-Haystack, judged LongBench, the RULER-style synthetic ladder and
LongBench v2 multiple choice, plus judge agreement and held-out loss.

Modules: :mod:`~longalign.eval.generate` (answers from a local model or an endpoint, middle truncation,
resumable predictions), :mod:`~longalign.eval.judge` (``[[rating]]`` parsing, endpoint and local judges),
:mod:`~longalign.eval.longbench_chat`, :mod:`~longalign.eval.needle`, :mod:`~longalign.eval.longbench`,
:mod:`~longalign.eval.ruler` (tasks in :mod:`~longalign.eval.ruler_tasks`, intervals in
:mod:`~longalign.eval.intervals`), :mod:`~longalign.eval.longbench_v2`, :mod:`~longalign.eval.agreement`,
:mod:`~longalign.eval.heldout`, the option groups they share (:mod:`~longalign.eval.options`), their summaries
(:mod:`~longalign.eval.summary`) and :mod:`~longalign.eval.cli` (``longalign eval ...``). Output files and
their fields are listed in ``longalign.rundir`` (``eval/<benchmark>/``).

``run(cfg, run_dir)`` runs the benchmark whose config ``cfg`` is; each benchmark module has its own ``run``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longalign import stage
from longalign.eval import agreement, heldout, longbench, longbench_chat, longbench_v2, needle, ruler
from longalign.eval.agreement import AgreementConfig
from longalign.eval.heldout import HeldOutConfig
from longalign.eval.longbench import LongBenchConfig
from longalign.eval.longbench_chat import LongBenchChatConfig
from longalign.eval.longbench_v2 import LongBenchV2Config
from longalign.eval.needle import NeedleConfig
from longalign.eval.ruler import RulerConfig
from longalign.eval.summary import EvalSummary
from longalign.rundir import RunDir

STEPS = {
    LongBenchChatConfig: longbench_chat.run,
    NeedleConfig: needle.run,
    LongBenchConfig: longbench.run,
    AgreementConfig: agreement.run,
    HeldOutConfig: heldout.run,
    RulerConfig: ruler.run,
    LongBenchV2Config: longbench_v2.run,
}


def run(
    cfg: LongBenchChatConfig
    | NeedleConfig
    | LongBenchConfig
    | AgreementConfig
    | HeldOutConfig
    | RulerConfig
    | LongBenchV2Config,
    run_dir: str | Path | RunDir,
    **kwargs: Any,
) -> EvalSummary:
    """Run the benchmark of ``cfg``'s type into ``<run_dir>/eval/`` (keyword arguments, e.g. ``generator=`` or
    ``judge=``, go to that benchmark's ``run``)."""
    return stage.dispatch(STEPS, "longalign.eval", cfg, run_dir, **kwargs)


__all__ = [
    "run",
    "STEPS",
    "EvalSummary",
    "LongBenchChatConfig",
    "NeedleConfig",
    "LongBenchConfig",
    "AgreementConfig",
    "HeldOutConfig",
    "RulerConfig",
    "LongBenchV2Config",
    "heldout",
    "agreement",
    "longbench",
    "longbench_chat",
    "needle",
    "ruler",
    "longbench_v2",
]
