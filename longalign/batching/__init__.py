"""Batching stage: plans (naive | sort | pack), collators, exact loss weighting, packed attention.

Public API::

    make_plan(lengths, method, *, max_len, batch_size=1, world_size=1, grad_accum=1, algo="ffd",
              seed=0, overlong="truncate") -> Plan
    token_weights(plan, n_target, loss_norm, world_size=None, grad_accum=None) -> np.ndarray
    weighted_causal_lm_loss(logits, labels, loss_weights) -> torch scalar
    step_totals_allreduce(local_n_target, group=None) -> StepTotals; weights_from_totals(...)
    PaddedCollator(pad_token_id), PackedCollator(max_len)      (longalign.batching.collate)
    select_attention(device, packed) -> attn_implementation    (longalign.batching.attention)
    simulate(lengths, ...), fit_cost_model(measurements)       (longalign.batching.simulate)
    FIGURES, read_figures(record), format_figure(key, value)   (longalign.batching.figures: what each
                                                                figure of a plan is called and means)
    run(BatchPlanConfig | SimulateConfig, run_dir) -> PlanSummary | SimulationSummary   (the stage)

Only numpy is imported here; torch and transformers load when a collator, loss or attention function is
used, so planning stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from longalign import stage
from longalign.batching import plans as _plans
from longalign.batching import simulate as _simulate_module
from longalign.batching.collate import PackedCollator, PaddedCollator, plan_features
from longalign.batching.config import METHODS, OVERLONG, PACK_ALGOS, BatchPlanConfig, SimulateConfig
from longalign.batching.figures import FIGURES, format_figure, read_figures
from longalign.batching.lengths import read_lengths_file, read_token_lengths
from longalign.batching.loss import (
    LOSS_IMPLS,
    LOSS_NORMS,
    StepTotals,
    count_targets,
    step_totals_allreduce,
    token_weights,
    weighted_causal_lm_loss,
    weights_from_totals,
)
from longalign.batching.plans import (
    Plan,
    PlanSummary,
    compute_stats,
    load_plan_batches,
    make_plan,
    pack_lengths,
)
from longalign.batching.simulate import CostModel, SimulationSummary, fit_cost_model, simulate, simulate_plan
from longalign.rundir import RunDir

STEPS: dict[type, Callable[..., stage.Summary]] = {
    BatchPlanConfig: _plans.run,
    SimulateConfig: _simulate_module.run,
}


def run(cfg: BatchPlanConfig | SimulateConfig, run_dir: str | Path | RunDir, **kwargs: Any) -> stage.Summary:
    """The batching stage: a plan (``batching/<method>.json`` + ``.plan.json``) or a simulation
    (``batching/simulate.json``) of the run's token lengths, recorded in run.json."""
    return stage.dispatch(STEPS, "longalign.batching", cfg, run_dir, **kwargs)


def select_attention(device, packed: bool, dtype=None) -> str:
    """See :func:`longalign.batching.attention.select_attention` (imported lazily: it loads transformers)."""
    from longalign.batching.attention import select_attention as _select

    return _select(device, packed, dtype)


__all__ = [
    "run",
    "BatchPlanConfig",
    "SimulateConfig",
    "PlanSummary",
    "SimulationSummary",
    "read_lengths_file",
    "read_token_lengths",
    "METHODS",
    "PACK_ALGOS",
    "OVERLONG",
    "LOSS_NORMS",
    "LOSS_IMPLS",
    "Plan",
    "make_plan",
    "pack_lengths",
    "compute_stats",
    "load_plan_batches",
    "token_weights",
    "count_targets",
    "StepTotals",
    "step_totals_allreduce",
    "weights_from_totals",
    "weighted_causal_lm_loss",
    "PaddedCollator",
    "PackedCollator",
    "plan_features",
    "select_attention",
    "CostModel",
    "simulate",
    "simulate_plan",
    "fit_cost_model",
    "FIGURES",
    "read_figures",
    "format_figure",
]
