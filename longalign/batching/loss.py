"""Exact loss normalisation across packs, gradient accumulation and data-parallel ranks.

One optimizer step consumes ``world_size * grad_accum`` micro-batches (see :mod:`longalign.batching.plans`).
Let sequence i have N_i target tokens and summed token loss L_i; M = sequences in the step (all ranks,
all accumulation steps), T = sum N_i, K = micro-batches in the step, N_k = target tokens of micro-batch k.

=========  ==============================================  =====================  ===========================
loss_norm  step loss                                       weight of each token   note
=========  ==============================================  =====================  ===========================
sequence   (1/M) * sum_i L_i / N_i                         1 / (N_i * M)          LongAlign weighting (eq. 2, 4)
token      (1/T) * sum_i L_i                               1 / T                  global token mean
pack       (1/K) * sum_k (sum_{i in k} L_i) / N_k          1 / (N_k * K)          plain packing (eq. 3, biased)
=========  ==============================================  =====================  ===========================

Every variant is a weighted *sum* of per-token cross-entropies, so each rank sums ``w * CE`` over its
micro-batches and the step loss is the sum over ranks. DDP averages gradients over ranks, so a trainer
multiplies its per-rank sum by ``world_size`` before ``backward`` (or sums gradients itself).

Two ways to get the weights:

* from the plan (:func:`token_weights`): every rank knows the whole plan, so M, T and K come for free and
  no communication is needed. Exact, and the default.
* from an all-reduce (:func:`step_totals_allreduce` + :func:`weights_from_totals`): when a rank only sees
  its own data (a streaming loader, or dynamic batching), each rank counts its local sequences, tokens and
  micro-batches of the coming step and one all-reduce of three numbers gives M, T, K. The rank must know
  its ``grad_accum`` micro-batches before the first forward of the step (prefetch them).

Sequences without target tokens (N_i = 0) get weight 0 and are not counted in M; micro-batches without
targets are not counted in K. ``n_target`` must count targets the loss sees: labels != -100 at positions
1..len-1 within the effective (truncated) length, see :func:`count_targets`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from longalign import IGNORE_INDEX
from longalign.config import check_choice

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from longalign.batching.plans import Plan

LOSS_NORMS = ("sequence", "token", "pack")
# how the loss is computed: from hidden states in chunks (longalign.batching.head_loss) or from the full logits
LOSS_IMPLS = ("chunked", "full")
CHUNK_ELEMENTS = 2**25  # rows x vocab of one chunk's logits in the chunked loss


def default_chunk_rows(vocab: int) -> int:
    """Rows per chunk of the chunked loss, so that one ``[rows, vocab]`` float32 buffer holds about 128 MB."""
    return max(16, CHUNK_ELEMENTS // max(1, int(vocab)))


def count_targets(labels: Sequence[int] | np.ndarray, max_len: int | None = None) -> int:
    """Targets the shifted loss sees: labels != -100 at positions 1.. (position 0 is never predicted)."""
    arr = np.asarray(labels)
    if max_len is not None:
        arr = arr[:max_len]
    return int((arr[1:] != IGNORE_INDEX).sum())


def _micro_weights(
    n_target_lists: Sequence[Sequence[int] | np.ndarray], loss_norm: str, M: int, T: int, K: int
) -> list[np.ndarray]:
    out = []
    for nt in n_target_lists:
        nt = np.asarray(nt, dtype=np.float64)
        w = np.zeros_like(nt)
        has = nt > 0
        if loss_norm == "sequence":
            w[has] = 1.0 / (nt[has] * M)
        elif loss_norm == "token":
            w[has] = 1.0 / T
        else:
            n_k = nt.sum()
            if n_k > 0:
                w[has] = 1.0 / (n_k * K)
        out.append(w)
    return out


def token_weights(
    plan: Plan,
    n_target: Sequence[int] | np.ndarray,
    loss_norm: str,
    world_size: int | None = None,
    grad_accum: int | None = None,
) -> np.ndarray:
    """Per-sequence token weight (float64, indexed like the dataset) for ``loss_norm``.

    ``world_size``/``grad_accum`` default to the plan's. Sequences outside the plan (dropped) get 0.
    Summing ``w_i * CE(token)`` over every target token of every micro-batch of a step, on every rank,
    gives that step's loss.
    """
    check_choice("loss_norm", loss_norm, LOSS_NORMS)
    world_size = plan.world_size if world_size is None else int(world_size)
    grad_accum = plan.grad_accum if grad_accum is None else int(grad_accum)
    n_target = np.asarray(n_target, dtype=np.int64)
    if n_target.shape[0] != plan.lengths.shape[0]:
        raise ValueError(
            f"n_target has {n_target.shape[0]} entries but the plan covers {plan.lengths.shape[0]} "
            "sequences; pass one count per row of tokens/"
        )
    weights = np.zeros(n_target.shape[0], dtype=np.float64)
    per_step = world_size * grad_accum
    for start in range(0, len(plan.batches), per_step):
        step = plan.batches[start : start + per_step]
        nts = [n_target[b] for b in step]
        totals = StepTotals.from_counts(nts)
        for b, w in zip(step, _micro_weights(nts, loss_norm, totals.sequences, totals.tokens, totals.micro_batches)):
            weights[b] = w
    return weights


@dataclass(frozen=True)
class StepTotals:
    """M, T and K of one optimizer step."""

    sequences: int  # M: sequences with at least one target token
    tokens: int  # T: target tokens
    micro_batches: int  # K: micro-batches with at least one target token

    @classmethod
    def from_counts(cls, n_target_per_micro_batch: Sequence[Sequence[int] | np.ndarray]) -> StepTotals:
        m = t = k = 0
        for nt in n_target_per_micro_batch:
            nt = np.asarray(nt, dtype=np.int64)
            m += int((nt > 0).sum())
            s = int(nt.sum())
            t += s
            k += int(s > 0)
        return cls(m, t, k)


def step_totals_allreduce(local_n_target: Sequence[Sequence[int] | np.ndarray], group: Any = None) -> StepTotals:
    """Global M, T, K of a step from this rank's micro-batches of that step (one all-reduce of 3 int64).

    ``local_n_target[a]`` lists the target counts of the sequences in this rank's micro-batch at
    accumulation index a. Without an initialised process group this returns the local totals.
    """
    import torch
    import torch.distributed as dist

    local = StepTotals.from_counts(local_n_target)
    if not (dist.is_available() and dist.is_initialized()):
        return local
    backend = dist.get_backend(group)
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    buf = torch.tensor([local.sequences, local.tokens, local.micro_batches], dtype=torch.int64, device=device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    m, t, k = (int(x) for x in buf.tolist())
    return StepTotals(m, t, k)


def weights_from_totals(
    local_n_target: Sequence[Sequence[int] | np.ndarray], totals: StepTotals, loss_norm: str
) -> list[np.ndarray]:
    """Per-sequence token weights for this rank's micro-batches given the step's global totals."""
    check_choice("loss_norm", loss_norm, LOSS_NORMS)
    return _micro_weights(local_n_target, loss_norm, totals.sequences, totals.tokens, totals.micro_batches)


def weighted_causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, loss_weights: torch.Tensor, chunk_tokens: int = 8192
) -> torch.Tensor:
    """Sum over target tokens of ``weight * CE(next token)``; labels and weights are shifted inside.

    ``logits`` [B, L, V], ``labels`` [B, L] (-100 = no loss), ``loss_weights`` [B, L] aligned to labels.
    Position t predicts labels[t+1]. Cross-entropy runs in float32 over chunks of ``chunk_tokens`` rows,
    so a bf16 [L, V] logits tensor is never copied to float32 whole. In a pack the label at each sequence
    start is -100 (the packed collator ensures it), so no prediction crosses a sequence boundary.
    """
    return weighted_and_plain_ce(logits, labels, loss_weights, chunk_tokens)[0]


def weighted_and_plain_ce(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_weights: torch.Tensor,
    chunk_tokens: int = 8192,
    *,
    shift: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum w * CE, sum CE)`` over the target tokens from one pass over the logits (the second, detached, is
    the token-sum statistic; see :func:`weighted_causal_lm_loss` for the layout). ``shift=False`` takes labels
    and weights already shifted (position t carries the target of token t + 1, as a sequence-parallel shard
    does), so every position is scored."""
    import torch
    import torch.nn.functional as F

    if logits.shape[:2] != labels.shape or labels.shape != loss_weights.shape:
        raise ValueError(
            f"shape mismatch: logits {tuple(logits.shape)}, labels {tuple(labels.shape)}, "
            f"loss_weights {tuple(loss_weights.shape)}; expected [B, L, V], [B, L], [B, L]"
        )
    vocab = logits.shape[-1]
    cut = 1 if shift else 0
    flat_logits = logits[:, : logits.shape[1] - cut, :].reshape(-1, vocab)
    flat_labels = labels[:, cut:].reshape(-1).to(flat_logits.device)
    flat_w = loss_weights[:, cut:].reshape(-1).to(flat_logits.device)
    acc_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    total = flat_logits[:0].sum().to(acc_dtype)  # zero that stays attached to the graph
    plain = torch.zeros((), dtype=acc_dtype, device=flat_logits.device)
    for start in range(0, flat_labels.numel(), chunk_tokens):
        lab = flat_labels[start : start + chunk_tokens]
        keep = lab != IGNORE_INDEX
        if not bool(keep.any()):
            continue
        ce = F.cross_entropy(
            flat_logits[start : start + chunk_tokens][keep].to(acc_dtype), lab[keep].long(), reduction="none"
        )
        total = total + (ce * flat_w[start : start + chunk_tokens][keep].to(acc_dtype)).sum()
        plain += ce.detach().sum()
    return total, plain
