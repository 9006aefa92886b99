"""Collators: turn the rows of one planned micro-batch into model inputs with per-token loss weights.

Padded (naive/sort), B=3, pad to the longest (here 5)::

    input_ids       a a a a a      attention_mask  1 1 1 1 1
                    b b b P P                      1 1 1 0 0
                    c c P P P                      1 1 0 0 0

Packed (one row, no padding, no attention mask; ``position_ids`` restart at 0 per sequence)::

    input_ids     a a a a b b b c c        position_ids  0 1 2 3 0 1 2 0 1
    labels        - a a a - b b - c        cu_seqlens    [0, 4, 7, 9]     seq_lens [4, 3, 2]
    loss_weights  0 w w w 0 v v 0 u        (w, v, u = token_weight of a, b, c)

The label at each sequence start is set to -100, so the shifted loss never predicts a sequence's first
token from the previous sequence. A padded batch computes B x L_max tokens; a pack computes its real
tokens only, provided attention follows the boundaries (see :mod:`longalign.batching.attention`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from longalign import IGNORE_INDEX


def _as_list(x: Any) -> list[int]:
    if hasattr(x, "tolist"):
        x = x.tolist()
    return list(x)


def _feature(f: Mapping[str, Any], i: int, max_len: int | None) -> tuple[list[int], list[int], float]:
    if "input_ids" not in f:
        raise ValueError(f"feature {i} has no 'input_ids' (keys: {sorted(f)}); collators need input_ids and labels")
    ids = _as_list(f["input_ids"])
    labels = _as_list(f["labels"]) if f.get("labels") is not None else list(ids)
    if len(labels) != len(ids):
        raise ValueError(f"feature {i}: {len(ids)} input_ids but {len(labels)} labels")
    if max_len is not None:
        ids, labels = ids[:max_len], labels[:max_len]
    if not ids:
        raise ValueError(f"feature {i} is empty; drop empty sequences before batching")
    weight = f.get("token_weight")
    return ids, labels, 1.0 if weight is None else float(weight)


class PaddedCollator:
    """Right-padded batch: input_ids, labels (-100 on padding), attention_mask, loss_weights [B, L_max].

    ``loss_weights`` carries each sequence's ``token_weight`` where its label is a target, 0 elsewhere.
    ``max_len`` truncates each sequence (right) to match a plan made with ``overlong='truncate'``;
    ``pad_to_multiple_of`` rounds L_max up (tensor-core friendly shapes). Weights are float32 unless
    ``weights_dtype`` says otherwise (float64 for exact comparisons).
    """

    def __init__(
        self,
        pad_token_id: int,
        max_len: int | None = None,
        pad_to_multiple_of: int | None = None,
        *,
        weights_dtype: Any = None,
    ):
        self.pad_token_id = int(pad_token_id)
        self.weights_dtype = weights_dtype
        self.max_len = max_len
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        if not features:
            raise ValueError("PaddedCollator got an empty batch")
        rows = [_feature(f, i, self.max_len) for i, f in enumerate(features)]
        width = max(len(ids) for ids, _, _ in rows)
        if self.pad_to_multiple_of:
            m = int(self.pad_to_multiple_of)
            width = -(-width // m) * m
        n = len(rows)
        input_ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        weights = torch.zeros((n, width), dtype=self.weights_dtype or torch.float32)
        for r, (ids, lab, w) in enumerate(rows):
            k = len(ids)
            input_ids[r, :k] = torch.tensor(ids, dtype=torch.long)
            lab_t = torch.tensor(lab, dtype=torch.long)
            labels[r, :k] = lab_t
            mask[r, :k] = 1
            weights[r, :k] = (lab_t != IGNORE_INDEX).to(weights.dtype) * w
        return {"input_ids": input_ids, "labels": labels, "attention_mask": mask, "loss_weights": weights}


class PackedCollator:
    """One packed row [1, L]: input_ids, labels, position_ids, cu_seqlens, seq_lens, loss_weights.

    Also returns the keys transformers' attention functions read for variable-length attention
    (``cu_seq_lens_q``/``cu_seq_lens_k``, ``max_length_q``/``max_length_k``), so flash-attention and the
    segment-aware CPU attention use the boundaries directly instead of re-deriving them from position_ids.
    Raises when the sequences (after truncation to ``max_len`` each) exceed ``max_len`` together:
    that batch did not come from a pack plan with this ``max_len``.
    """

    def __init__(self, max_len: int, *, weights_dtype: Any = None):
        self.max_len = int(max_len)
        self.weights_dtype = weights_dtype

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        if not features:
            raise ValueError("PackedCollator got an empty batch")
        rows = [_feature(f, i, self.max_len) for i, f in enumerate(features)]
        seq_lens = [len(ids) for ids, _, _ in rows]
        total = int(sum(seq_lens))
        if total > self.max_len:
            raise ValueError(
                f"pack of {len(rows)} sequences has {total} tokens > max_len={self.max_len}; "
                "build the plan with method='pack' and the same max_len"
            )
        ids = np.concatenate([np.asarray(r[0], dtype=np.int64) for r in rows])
        labels = np.concatenate([np.asarray(r[1], dtype=np.int64) for r in rows])
        cu = np.concatenate(([0], np.cumsum(seq_lens))).astype(np.int32)
        labels[cu[:-1]] = IGNORE_INDEX
        positions = np.arange(total, dtype=np.int64) - np.repeat(cu[:-1].astype(np.int64), seq_lens)
        w = np.repeat(np.array([r[2] for r in rows], dtype=np.float64), seq_lens)
        w[labels == IGNORE_INDEX] = 0.0
        cu_t = torch.from_numpy(cu)
        max_seq = int(max(seq_lens))
        return {
            "input_ids": torch.from_numpy(ids).unsqueeze(0),
            "labels": torch.from_numpy(labels).unsqueeze(0),
            "position_ids": torch.from_numpy(positions).unsqueeze(0),
            "cu_seqlens": cu_t,
            "seq_lens": torch.tensor(seq_lens, dtype=torch.int32),
            "loss_weights": torch.from_numpy(w).to(self.weights_dtype or torch.float32).unsqueeze(0),
            "cu_seq_lens_q": cu_t,
            "cu_seq_lens_k": cu_t,
            "max_length_q": max_seq,
            "max_length_k": max_seq,
        }


def plan_features(
    dataset: Any, batch: Sequence[int], weights: Sequence[float] | np.ndarray | None = None
) -> list[dict[str, Any]]:
    """Rows ``batch`` of a tokens dataset as collator features (input_ids, labels, token_weight)."""
    rows = dataset[list(batch)] if hasattr(dataset, "column_names") else None
    if rows is not None:
        feats = [{"input_ids": rows["input_ids"][j], "labels": rows["labels"][j]} for j in range(len(batch))]
    else:
        feats = [{"input_ids": dataset[i]["input_ids"], "labels": dataset[i]["labels"]} for i in batch]
    if weights is not None:
        for f, i in zip(feats, batch):
            f["token_weight"] = float(weights[i])
    return feats
