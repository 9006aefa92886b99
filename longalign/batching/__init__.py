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

Only numpy is imported here; torch and transformers load when a collator, loss or attention function is
used, so planning stays cheap.
"""

from longalign.batching.collate import PackedCollator, PaddedCollator, plan_features
from longalign.batching.loss import (LOSS_NORMS, StepTotals, count_targets, step_totals_allreduce, token_weights,
                                     weighted_causal_lm_loss, weights_from_totals)
from longalign.batching.plans import (METHODS, OVERLONG, PACK_ALGOS, Plan, compute_stats, load_plan_batches,
                                      make_plan, pack_lengths)
from longalign.batching.simulate import CostModel, fit_cost_model, simulate, simulate_plan


def select_attention(device, packed: bool, dtype=None) -> str:
    """See :func:`longalign.batching.attention.select_attention` (imported lazily: it loads transformers)."""
    from longalign.batching.attention import select_attention as _select

    return _select(device, packed, dtype)


__all__ = [
    "METHODS", "PACK_ALGOS", "OVERLONG", "LOSS_NORMS", "Plan", "make_plan", "pack_lengths", "compute_stats",
    "load_plan_batches", "token_weights", "count_targets", "StepTotals", "step_totals_allreduce",
    "weights_from_totals", "weighted_causal_lm_loss", "PaddedCollator", "PackedCollator", "plan_features",
    "select_attention", "CostModel", "simulate", "simulate_plan", "fit_cost_model",
]
