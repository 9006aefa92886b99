"""One micro-batch through the model: its keyword arguments and its weighted loss.

Shared by the Trainer subclass (:mod:`longalign.train.plan_trainer`), the start-up probes
(:mod:`longalign.train.probes`), the sequence-parallel check and the GPU benchmark, so that every one of them
feeds the model exactly as training does. A pack is one row with ``position_ids`` restarting at 0 per sequence
and no attention mask; ``use_cache=False`` always.
"""

from __future__ import annotations

from typing import Any

from ..batching.head_loss import loss_request, read_loss_output
from ..batching.loss import weighted_and_plain_ce

VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def forward_loss(
    model: Any,
    batch: dict[str, Any],
    packed: bool,
    backend: str,
    loss_head: Any = None,
    chunk_rows: int = 0,
    shift: bool = True,
    return_outputs: bool = False,
) -> tuple[Any, ...]:
    """``(sum w * CE, sum CE)`` of one collated micro-batch through ``model`` (chunked loss when ``loss_head``
    is installed, else from the logits), plus the model's outputs with ``return_outputs``; ``shift=False`` for
    labels already shifted (sequence-parallel shards)."""
    labels, weights = batch["labels"], batch["loss_weights"]
    kwargs = model_inputs(batch, packed, backend)
    if loss_head is not None:  # chunked: the head returns the two sums instead of logits
        with loss_request(loss_head, labels, weights, chunk_rows, shift=shift):
            outputs = model(**kwargs)
        sums = read_loss_output(outputs.logits)
    else:
        outputs = model(**kwargs)
        sums = weighted_and_plain_ce(outputs.logits, labels, weights.to(outputs.logits.device), shift=shift)
    return (*sums, outputs) if return_outputs else sums


def model_inputs(batch: dict[str, Any], packed: bool, backend: str) -> dict[str, Any]:
    """Keyword arguments of the model's forward for one collated micro-batch.

    Packs get ``position_ids`` (restarting per sequence) and no attention mask; varlen-style backends also
    get the collator's ``cu_seq_lens_q/k`` and ``max_length_q/k`` so they need not re-derive boundaries.
    """
    kwargs: dict[str, Any] = {"input_ids": batch["input_ids"], "use_cache": False}
    if packed:
        kwargs["position_ids"] = batch["position_ids"]
        if backend not in ("sdpa", "eager"):
            for key in VARLEN_KEYS:
                if batch.get(key) is not None:
                    kwargs[key] = batch[key]
    elif batch.get("attention_mask") is not None:
        kwargs["attention_mask"] = batch["attention_mask"]
    return kwargs
