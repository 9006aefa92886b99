"""Reference step losses, computed the long way, to check the weighted-loss path against.

The trainer's loss is one weighted sum, ``sum(token_weight * CE)`` over the collated micro-batches of a step
(:func:`~longalign.batching.token_weights`, the collators, :func:`~longalign.batching.weighted_causal_lm_loss`).
This module computes the same quantities two ways, for notebook 3 and for tests:

* **from the formulas** (:func:`sequence_losses`, :func:`formula_step_losses`): each sequence's summed
  next-token cross-entropy ``L_i`` on the sequence alone, then eq. 2 (sequence mean), eq. 3 (mean of the
  per-pack token means) and the global token mean, with no weights and no collator involved;
* **through the library's path** (:func:`weighted_step_loss`, :func:`ddp_step_loss`): collate each
  micro-batch with the given per-token weights, feed it logits laid out as the model would produce them
  (concatenated for a pack, right-padded for a padded batch), and sum the weighted loss, per rank and over
  ranks as DDP does.

Both take the logits as given (``logits[i]`` of shape ``[len_i, V]`` for sequence i), so no model is involved
and with float64 logits the two agree to rounding (the tests ask for rtol 1e-12). That is the point of the
module: a mismatch between the two paths is a weighting bug, not noise. :func:`toy_sequence` and
:func:`random_logits` make deterministic inputs; :func:`micro_batch_sequence_weights` gives the biased
per-micro-batch sequence mean that a trainer computing the weights inside each micro-batch would use, for
contrast.

Everything runs on the CPU: the 24 step losses of notebook 3's last section (16 sequences, ~3.5k tokens, a
50-token vocabulary) take about 0.1 s on one core. It is not meant for real datasets: it keeps every
sequence's ``[len, V]`` logits in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from longalign import IGNORE_INDEX

if TYPE_CHECKING:
    import torch

    from longalign.batching.plans import Plan

Feature = Mapping[str, Sequence[int]]


def toy_sequence(n_tokens: int, *, prompt_tokens: int, vocab: int, seed: int) -> dict[str, list[int]]:
    """A random sequence of ``n_tokens`` ids below ``vocab``: the first ``prompt_tokens`` are context (label
    -100), the rest are targets (label = id). Deterministic in ``seed`` (a torch generator of its own)."""
    import torch

    if n_tokens < 1 or not 0 <= prompt_tokens <= n_tokens:
        raise ValueError(
            f"need n_tokens >= 1 and 0 <= prompt_tokens <= n_tokens, got n_tokens={n_tokens}, "
            f"prompt_tokens={prompt_tokens}"
        )
    g = torch.Generator().manual_seed(int(seed))
    ids = torch.randint(0, int(vocab), (int(n_tokens),), generator=g).tolist()
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * prompt_tokens + ids[prompt_tokens:]}


def random_logits(lengths: Sequence[int] | np.ndarray, vocab: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Standard-normal float64 logits ``[length, vocab]`` per sequence, drawn in order from ``generator``."""
    import torch

    return [torch.randn(int(n), int(vocab), generator=generator, dtype=torch.float64) for n in lengths]


def boost_targets(logits: torch.Tensor, labels: Sequence[int], boost: float) -> torch.Tensor:
    """Raise, in place, the logit of the correct next token at every position that predicts a target by
    ``boost``: a sequence the model already predicts well (its loss drops as ``boost`` grows)."""
    import torch

    nxt = torch.as_tensor(list(labels)[1:])
    at = torch.nonzero(nxt != IGNORE_INDEX).squeeze(1)
    logits[at, nxt[at]] += boost
    return logits


def _check_aligned(features: Sequence[Feature], logits: Sequence[torch.Tensor]) -> None:
    if len(features) != len(logits):
        raise ValueError(f"{len(features)} sequences but {len(logits)} logits tensors; give one per sequence")
    for i, (f, lg) in enumerate(zip(features, logits)):
        if len(f["labels"]) != lg.shape[0]:
            raise ValueError(f"sequence {i}: {len(f['labels'])} labels but logits of {lg.shape[0]} positions")


def sequence_losses(features: Sequence[Feature], logits: Sequence[torch.Tensor]) -> np.ndarray:
    """``L_i``: summed next-token cross-entropy over each sequence's targets, on the sequence alone."""
    import torch
    import torch.nn.functional as F

    _check_aligned(features, logits)
    out = np.zeros(len(features))
    for i, (f, lg) in enumerate(zip(features, logits)):
        labels = torch.as_tensor(list(f["labels"]))
        if len(labels) > 1 and bool((labels[1:] != IGNORE_INDEX).any()):
            out[i] = float(F.cross_entropy(lg[:-1], labels[1:], ignore_index=IGNORE_INDEX, reduction="sum"))
    return out


def formula_step_losses(
    L: Sequence[float] | np.ndarray, n_target: Sequence[int] | np.ndarray, batches: Sequence[Sequence[int]]
) -> dict[str, float]:
    """The step loss of ``batches`` (one optimizer step) under each normalisation, from the formulas.

    ``sequence`` = (1/M) sum_i L_i/N_i (eq. 2), ``pack`` = (1/K) sum_k sum_{i in k} L_i / N_k (eq. 3),
    ``token`` = sum_i L_i / T. As in :func:`~longalign.batching.token_weights`, sequences without targets
    are not counted in M and micro-batches without targets not in K.
    """
    L, n = np.asarray(L, dtype=np.float64), np.asarray(n_target, dtype=np.int64)
    members = np.array(sorted({i for b in batches for i in b}), dtype=np.int64)
    if members.size == 0:
        raise ValueError("batches are empty; give the micro-batches of one optimizer step")
    has = members[n[members] > 0]
    if has.size == 0:
        raise ValueError("no sequence of the step has a target token; the step loss is undefined")
    per_pack = [L[b].sum() / n[b].sum() for b in map(list, batches) if n[b].sum() > 0]
    return {
        "sequence": float((L[has] / n[has]).sum() / has.size),
        "token": float(L[has].sum() / n[has].sum()),
        "pack": float(np.mean(per_pack)),
    }


def weighted_step_loss(
    features: Sequence[Feature],
    logits: Sequence[torch.Tensor],
    batches: Sequence[Sequence[int]],
    weights: Sequence[float] | np.ndarray,
    *,
    packed: bool = True,
) -> float:
    """Sum over ``batches`` of :func:`~longalign.batching.weighted_causal_lm_loss` on each collated micro-batch.

    ``weights[i]`` is sequence i's per-token weight. A packed micro-batch goes through
    :class:`~longalign.batching.PackedCollator` with the sequences' logits concatenated; a padded one
    through :class:`~longalign.batching.PaddedCollator` with each row's logits zero-padded to the longest.
    Weights stay float64, so the result matches :func:`formula_step_losses` to rounding.
    """
    import torch
    import torch.nn.functional as F

    from longalign.batching import PackedCollator, PaddedCollator, plan_features, weighted_causal_lm_loss

    _check_aligned(features, logits)
    total = 0.0
    for b in map(list, batches):
        if packed:
            collate = PackedCollator(sum(len(features[i]["labels"]) for i in b), weights_dtype=torch.float64)
            batch = collate(plan_features(features, b, weights))
            lg = torch.cat([logits[i] for i in b])[None]
        else:
            batch = PaddedCollator(0, weights_dtype=torch.float64)(plan_features(features, b, weights))
            width = batch["labels"].shape[1]
            lg = torch.stack([F.pad(logits[i], (0, 0, 0, width - logits[i].shape[0])) for i in b])
        total += float(weighted_causal_lm_loss(lg, batch["labels"], batch["loss_weights"]))
    return total


def rank_step_losses(
    plan: Plan,
    features: Sequence[Feature],
    logits: Sequence[torch.Tensor],
    weights: Sequence[float] | np.ndarray,
    *,
    packed: bool,
) -> list[float]:
    """Each rank's sum of ``weight x CE`` over the micro-batches it consumes (:meth:`Plan.rank_batches`)."""
    return [
        weighted_step_loss(features, logits, plan.rank_batches(r), weights, packed=packed)
        for r in range(plan.world_size)
    ]


def ddp_step_loss(
    plan: Plan,
    features: Sequence[Feature],
    logits: Sequence[torch.Tensor],
    weights: Sequence[float] | np.ndarray,
    *,
    packed: bool,
    scale_by_world_size: bool = True,
) -> float:
    """The step loss DDP optimises: the mean over ranks of each rank's loss.

    With step-global weights (:func:`~longalign.batching.token_weights`) a rank's sum covers only its share
    of the step, so the trainer multiplies it by ``world_size`` first (``scale_by_world_size=True``) and the
    mean equals the full step's weighted sum. Weights normalised per rank (such as
    :func:`micro_batch_sequence_weights`) already give each rank a full loss: pass ``False``.
    """
    scale = plan.world_size if scale_by_world_size else 1
    return float(np.mean([scale * s for s in rank_step_losses(plan, features, logits, weights, packed=packed)]))


def micro_batch_sequence_weights(plan: Plan, n_target: Sequence[int] | np.ndarray) -> np.ndarray:
    """Per-token weights of a sequence mean taken inside each micro-batch: ``1 / (N_i * B_k * grad_accum)``
    for sequence i in micro-batch k of B_k sequences (0 for sequences without targets, which are not
    counted in B_k). Each rank's step loss is then the mean over its micro-batches of their sequence means,
    which depends on how the sequences are grouped, unlike the step-global sequence weights (eq. 2/4)."""
    n = np.asarray(n_target, dtype=np.float64)
    out = np.zeros(len(n))
    for b in map(list, plan.batches):
        has = [i for i in b if n[i] > 0]
        if has:
            out[has] = 1.0 / (n[has] * len(has) * plan.grad_accum)
    return out


def batch_index(batches: Sequence[Sequence[int]], n: int) -> np.ndarray:
    """For each of ``n`` sequences, the index of the micro-batch holding it (-1 where none does)."""
    out = np.full(int(n), -1, dtype=np.int64)
    for k, b in enumerate(batches):
        out[list(b)] = k
    return out


def capacity_for_packs(lengths: Sequence[int] | np.ndarray, n_packs: int, *, step: int = 8, algo: str = "ffd") -> int:
    """The smallest pack capacity, from the longest sequence up in steps of ``step`` tokens, at which packing
    ``lengths`` with ``algo`` makes exactly ``n_packs`` packs (every capacity up to one pack holding them all
    is tried, one packing run each: cheap for the few dozen sequences of an example). Raises when none does:
    the pack count can skip ``n_packs`` as the capacity grows, or ``n_packs`` exceeds the sequences."""
    from longalign.batching.plans import pack_lengths

    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0 or n_packs < 1 or step < 1:
        raise ValueError(
            f"need lengths, n_packs >= 1 and step >= 1 (got {lengths.size} lengths, n_packs={n_packs}, step={step})"
        )
    for capacity in range(int(lengths.max()), int(lengths.sum()) + step, step):
        if len(pack_lengths(lengths, capacity, algo)) == n_packs:
            return capacity
    raise ValueError(
        f"no capacity in steps of {step} from {int(lengths.max())} tokens packs these {lengths.size} "
        f"sequences into exactly {n_packs} packs with {algo!r}; try another n_packs or a smaller step"
    )
