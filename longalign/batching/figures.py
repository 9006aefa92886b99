"""The batching figures: one name and one meaning for every number that describes a batch plan.

The batching stage writes these keys to ``batching/<method>.json``, its summary lines print them, and the
dashboard and the notebooks show them under the labels defined here. Two ideas that are easy to mix up are kept
apart on purpose:

* **padding** -- computed positions that hold no token: ``1 - tokens / positions computed``. A padded batch of
  B sequences computes B x longest positions; a pack computes its own tokens only (the trainer's packed collator
  is padding-free and attention follows the sequence boundaries), so a pack's padding is 0.
* **fill** -- share of the ``max_len`` capacity used: ``tokens / (rows x max_len)``, a row being one pack or one
  padded sequence. Fill is what packing optimises (fewer, fuller packs mean fewer steps); it says nothing about
  wasted compute.

Attention cost has one direction: causal (query, key) pairs computed per useful pair, so 1.00x means no wasted
attention and larger is worse. A sequence of n tokens has n(n+1)/2 useful pairs; a padded batch computes
B x L(L+1)/2 for its longest length L; a pack with segment-aware (varlen) attention computes only the useful pairs;
``attention_cost_dense`` prices a pack as one dense block-diagonal mask over all its tokens.

Records written before these keys existed (``efficiency``, ``attention_cost_ratio``, a pack's
``computed_tokens`` counted as max_len slots) are read by :func:`read_figures`, which converts them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BatchFigure:
    """One figure of a batch plan: its JSON key, the label a reader sees, what it means, how it is written
    (``count``, ``share`` or ``times``) and which direction is better (``lower``, ``higher`` or None)."""

    key: str
    label: str
    meaning: str
    kind: str
    better: str | None = None


FIGURES: tuple[BatchFigure, ...] = (
    BatchFigure("n_sequences", "sequences", "sequences in the plan (dropped ones left out)", "count"),
    BatchFigure("n_tokens", "tokens", "tokens of the planned sequences, after truncation to max_len", "count"),
    BatchFigure("n_batches", "micro-batches", "micro-batches (one pack, or one padded batch, each)", "count", "lower"),
    BatchFigure("n_steps", "optimizer steps", "optimizer steps: micro-batches / (devices x accumulation)", "count"),
    BatchFigure(
        "lower_bound",
        "fewest micro-batches",
        "fewest micro-batches possible: tokens / max_len for packs, sequences / batch size for padded batches",
        "count",
    ),
    BatchFigure(
        "computed_tokens",
        "positions computed",
        "token positions the model computes: B x longest per padded batch, the pack's own tokens per pack",
        "count",
        "lower",
    ),
    BatchFigure(
        "padding_fraction",
        "padding",
        "share of computed positions that hold no token (0 for padding-free packs)",
        "share",
        "lower",
    ),
    BatchFigure(
        "capacity_tokens",
        "max_len capacity",
        "rows x max_len, a row being one pack or one padded sequence",
        "count",
    ),
    BatchFigure(
        "fill",
        "fill",
        "share of the max_len capacity used: tokens / (rows x max_len)",
        "share",
        "higher",
    ),
    BatchFigure(
        "attention_cost",
        "attention cost",
        "causal attention pairs computed per useful pair (1.00x = none wasted)",
        "times",
        "lower",
    ),
    BatchFigure(
        "attention_cost_dense",
        "attention cost, dense mask",
        "attention cost of a pack run as one dense block-diagonal mask instead of segment-aware attention",
        "times",
        "lower",
    ),
    BatchFigure(
        "packs_over_lower_bound",
        "packs over the fewest",
        "packs / fewest packs possible (1.00x = optimal)",
        "times",
        "lower",
    ),
    BatchFigure("truncated", "truncated", "sequences cut to max_len", "count"),
    BatchFigure("dropped", "dropped", "sequences left out for being longer than max_len", "count"),
)
BY_KEY: dict[str, BatchFigure] = {f.key: f for f in FIGURES}
SETTINGS = ("method", "algo", "max_len", "batch_size", "world_size", "grad_accum", "seed", "overlong")
SETTING_LABELS = {
    "method": "method",
    "algo": "packing algorithm",
    "max_len": "max_len",
    "batch_size": "batch size",
    "world_size": "devices",
    "grad_accum": "accumulation steps",
    "seed": "seed",
    "overlong": "overlong sequences",
}


def label(key: str) -> str:
    """The label of figure ``key`` (the key itself when it is not a batching figure)."""
    f = BY_KEY.get(key)
    return f.label if f else SETTING_LABELS.get(key, key)


def causal_pairs(n: Any) -> Any:
    """Causal (query, key) pairs of a sequence of ``n`` tokens: n(n+1)/2 (float, elementwise for arrays)."""
    n = np.asarray(n, dtype=np.float64)
    out = n * (n + 1) / 2
    return float(out) if out.ndim == 0 else out


def plan_figures(flat_lengths: Any, sizes: Any, packed: bool, max_len: int) -> dict[str, float]:
    """The figures of a plan whose micro-batches hold the token lengths ``flat_lengths`` cut by ``sizes``
    (micro-batch k holds the next ``sizes[k]`` lengths): tokens, positions computed, padding, capacity, fill and
    attention cost (plus the dense-mask cost for packs). Vectorised: O(n) numpy work for n sequences."""
    lens = np.asarray(flat_lengths, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.int64)
    keep = sizes > 0
    sizes = sizes[keep]
    tokens = float(lens.sum())
    useful = float(causal_pairs(lens).sum()) if lens.size else 0.0
    if sizes.size:
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        per_batch = np.add.reduceat(lens, starts)
        longest = np.maximum.reduceat(lens, starts)
    else:
        per_batch = longest = np.zeros(0)
    if packed:
        computed = tokens
        capacity = float(sizes.size) * max_len
        pairs = useful
    else:
        computed = float((sizes * longest).sum())
        capacity = float(sizes.sum()) * max_len
        pairs = float((sizes * causal_pairs(longest)).sum()) if sizes.size else 0.0
    out = {
        "n_tokens": int(tokens),
        "computed_tokens": int(computed),
        "padding_fraction": 1.0 - tokens / computed if computed else 0.0,
        "capacity_tokens": int(capacity),
        "fill": tokens / capacity if capacity else 0.0,
        "attention_pairs_useful": useful,
        "attention_pairs_computed": pairs,
        "attention_cost": pairs / useful if useful else 1.0,
    }
    if packed:
        dense = float(causal_pairs(per_batch).sum()) if per_batch.size else 0.0
        out["attention_cost_dense"] = dense / useful if useful else 1.0
    return out


def batch_list_figures(batch_lengths: Sequence[Sequence[int]], packed: bool, max_len: int) -> dict[str, float]:
    """:func:`plan_figures` of micro-batches given as one list of token lengths each."""
    sizes = [len(b) for b in batch_lengths]
    flat = np.concatenate([np.asarray(b, dtype=np.float64) for b in batch_lengths]) if batch_lengths else np.zeros(0)
    return plan_figures(flat, sizes, packed, max_len)


def read_figures(record: Mapping[str, Any]) -> dict[str, Any]:
    """A ``batching/<method>.json`` record in today's keys, converting one written before them.

    Older records counted a pack as ``max_len`` computed slots (``computed_tokens``, with the padding-free count
    in ``computed_tokens_padding_free``), so their ``padding_fraction`` of a pack was the unused capacity; they
    wrote ``efficiency`` (tokens / computed) and ``attention_cost_ratio`` (useful / computed, the inverse of
    today's attention cost, with n^2 instead of causal pairs). Keys already in today's form are kept as they are.
    """
    r = dict(record)
    if "fill" in r and "attention_cost" in r:
        return r
    method = str(r.get("method") or "")
    packed = method == "pack" or "computed_tokens_padding_free" in r
    tokens = r.get("n_tokens")
    max_len = r.get("max_len")
    if packed and "computed_tokens_padding_free" in r:
        slots = r.get("computed_tokens")
        r["computed_tokens"] = r.pop("computed_tokens_padding_free")
        if slots is not None and "capacity_tokens" not in r:
            r["capacity_tokens"] = slots
    if tokens is not None and r.get("computed_tokens"):
        r["padding_fraction"] = 1.0 - tokens / r["computed_tokens"]
    if "capacity_tokens" not in r and max_len:
        rows = r.get("n_batches") if packed else r.get("n_sequences")
        if rows is not None:
            r["capacity_tokens"] = int(rows) * int(max_len)
    if tokens is not None and r.get("capacity_tokens"):
        r["fill"] = tokens / r["capacity_tokens"]
    old = r.pop("attention_cost_ratio", None)
    if "attention_cost" not in r and old:
        r["attention_cost"] = 1.0 / old
    old_dense = r.pop("attention_cost_ratio_dense", None)
    if "attention_cost_dense" not in r and old_dense:
        r["attention_cost_dense"] = 1.0 / old_dense
    for gone in ("efficiency", "attention_real", "attention_computed"):
        r.pop(gone, None)
    return r


def format_figure(key: str, value: Any) -> str:
    """``value`` written for a reader: counts with thousands separators, shares as percent with one decimal,
    ratios as ``1.39×``; '—' when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    f = BY_KEY.get(key)
    kind = f.kind if f else ("count" if isinstance(value, (int, np.integer)) else "")
    if kind == "share":
        return f"{float(value):.1%}"
    if kind == "times":
        return f"{float(value):.2f}×"
    if kind == "count" or isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def figure_rows(record: Mapping[str, Any], keys: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    """(label, value as text, meaning) of each figure of ``record`` (converted by :func:`read_figures`) that it
    holds, in the order of :data:`FIGURES` (or of ``keys``)."""
    r = read_figures(record)
    return [(BY_KEY[k].label, format_figure(k, r[k]), BY_KEY[k].meaning) for k in (keys or BY_KEY) if k in r]


def summary_line(record: Mapping[str, Any]) -> str:
    """Padding, fill and attention cost in one line, in the words of :data:`FIGURES`."""
    r = read_figures(record)
    parts = [
        f"padding {format_figure('padding_fraction', r.get('padding_fraction'))} of the positions computed",
        f"fill {format_figure('fill', r.get('fill'))} of the max_len capacity",
        f"attention cost {format_figure('attention_cost', r.get('attention_cost'))} the useful pairs",
    ]
    if r.get("attention_cost_dense") is not None:
        parts[-1] += f" ({format_figure('attention_cost_dense', r['attention_cost_dense'])} with a dense mask)"
    return ", ".join(parts)
