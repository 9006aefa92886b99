"""Data feeding: the token rows, the batch plan and its loss weights, this rank's slice of the plan, the
collators and the data loader.

``longalign.batching.make_plan`` decides every micro-batch (a padded batch for ``naive``/``sort``, one pack for
``pack``) and their order; consecutive chunks of ``world_size * grad_accum`` micro-batches form one optimizer
step, micro-batch j of a chunk runs on rank ``j % world_size`` at accumulation index ``j // world_size``.
:class:`PlanBatchSampler` yields exactly this rank's slice, so accelerate's own sharding is bypassed (the data
loader is not ``prepare``\\ d). A final, short chunk is padded with zero-weight copies of the shortest sequence
so that every rank runs the same number of forward passes (DDP and ZeRO need that); they add nothing to the
gradient. Later epochs shuffle whole optimizer steps, so the loss weights stay valid. Under sequence
parallelism the plan is dealt over the data-parallel ranks and the SP ranks of a group shard the same pack.

This module imports torch; it is imported when training starts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader

from .. import IGNORE_INDEX
from ..batching import PackedCollator, PaddedCollator, Plan, compute_stats, load_plan_batches, make_plan, token_weights
from ..batching.loss import count_targets
from ..tokenize.sources import open_token_data
from . import sequence_parallel as spm
from .config import TrainConfig

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------------------
# Rows and plan
# ------------------------------------------------------------------------------------------------------------


def load_tokens_dir(path: str | Path):
    """``(datasets.Dataset, meta)`` of the training tokens: a `longalign tokenize` folder, a
    ``datasets.save_to_disk`` folder, a parquet/jsonl file of token ids or ``hf:NAME`` (see
    :mod:`longalign.tokenize.sources`); labels default to every token, length is computed when absent."""
    data = open_token_data(path)
    if data.added:
        log.info("%s: computed %s (not in the data)", data.where, ", ".join(data.added))
    return data.ds, data.meta


def check_tokenizer_match(meta: dict[str, Any], tokenizer: Any, tokens_dir: str | Path, model_vocab: int) -> None:
    """Refuse a tokens folder made by another tokenizer than the one training uses."""
    problems = []
    vs = meta.get("vocab_size")
    if vs is not None and int(vs) != len(tokenizer):
        problems.append(f"vocab_size {vs} in longalign_meta.json vs {len(tokenizer)} for the model's tokenizer")
    eos = meta.get("eos_token_id")
    if eos is not None and tokenizer.eos_token_id is not None and int(eos) != int(tokenizer.eos_token_id):
        problems.append(f"eos_token_id {eos} vs {tokenizer.eos_token_id}")
    if vs is not None and int(vs) > int(model_vocab):
        problems.append(f"token ids up to {int(vs) - 1} but the model embeds only {model_vocab}")
    top = meta.get("max_token_id")
    if vs is None and top is not None and int(top) >= int(model_vocab):
        raise ValueError(
            f"{tokens_dir} holds token id {top} but the model embeds only {model_vocab} tokens; the ids were made "
            "by another tokenizer: tokenize the data with the model's own tokenizer (`longalign tokenize`)"
        )
    if problems:
        raise ValueError(
            f"{tokens_dir} was made by tokenizer {meta.get('tokenizer')!r}, which does not match the "
            f"model's tokenizer ({'; '.join(problems)}); re-run `longalign tokenize` with the model "
            "you train, or pass --tokenizer/--model matching the tokens"
        )


def effective_targets(ds: Any, plan_lengths: np.ndarray, truncated: np.ndarray) -> np.ndarray:
    """Targets the shifted loss sees per row (labels != -100 at positions 1..len-1 after truncation)."""
    if "n_target" in ds.column_names:
        n = np.asarray(ds["n_target"], dtype=np.int64)
        labels = ds.with_format("arrow")[:]["labels"]  # respects select()/indices mappings
        first = pc.list_element(labels, 0).to_numpy(zero_copy_only=False)
        n = n - (np.asarray(first, dtype=np.int64) != IGNORE_INDEX)
    else:
        n = np.array([count_targets(lab) for lab in ds["labels"]], dtype=np.int64)
    for i in np.asarray(truncated, dtype=np.int64).tolist():
        n[i] = count_targets(ds[int(i)]["labels"], int(plan_lengths[i]))
    n[np.asarray(plan_lengths) == 0] = 0
    return n


def plan_from_file(path: str | Path, lengths: np.ndarray, cfg: TrainConfig, max_len: int, world_size: int):
    """A :class:`~longalign.batching.Plan` over the micro-batches listed in a plan file, checked against
    the tokens (indices in range, each row at most once, packs within max_len)."""
    batches = load_plan_batches(path)
    flat = [i for b in batches for i in b]
    n = len(lengths)
    bad = [i for i in flat if not isinstance(i, int) or not 0 <= i < n]
    if bad:
        raise ValueError(
            f"{path}: row index {bad[0]!r} is outside the {n} rows of the tokens folder; the plan was "
            "made for other data"
        )
    if len(set(flat)) != len(flat) or any(not b for b in batches):
        raise ValueError(f"{path}: a row appears twice or a micro-batch is empty; re-create the plan")
    eff = np.zeros(n, dtype=np.int64)
    idx = np.asarray(flat, dtype=np.int64)
    over = idx[lengths[idx] > max_len]
    if over.size and cfg.overlong != "truncate":
        raise ValueError(
            f"{path}: row {int(over[0])} has {int(lengths[over[0]])} tokens > max_len={max_len} "
            f"(overlong={cfg.overlong!r}); raise --max-len or use overlong=truncate"
        )
    eff[idx] = np.minimum(lengths[idx], max_len)
    if cfg.method == "pack":
        for b in batches:
            if int(eff[b].sum()) > max_len:
                raise ValueError(
                    f"{path}: a pack holds {int(eff[b].sum())} tokens > max_len={max_len}; plan with the same max_len"
                )
    plan = Plan(
        batches=[list(b) for b in batches],
        stats={},
        lengths=eff,
        method=cfg.method,
        max_len=max_len,
        batch_size=max(len(b) for b in batches) if cfg.method != "pack" else 1,
        world_size=world_size,
        grad_accum=cfg.grad_accum,
        algo=None,
        seed=cfg.seed,
        overlong=cfg.overlong,
        truncated=np.sort(over),
    )
    plan.stats = compute_stats(plan)
    return plan


def load_rows(tokens_dir: str | Path, limit: int = 0):
    """``(rows, meta)`` of :func:`load_tokens_dir`, cut to the first ``limit`` rows when ``limit`` is set."""
    ds, meta = load_tokens_dir(tokens_dir)
    if limit and limit < len(ds):
        ds = ds.select(range(limit))
    return ds, meta


def make_train_plan(cfg: TrainConfig, ds: Any, max_len: int, dp_size: int, tokens_dir: str | Path):
    """``(plan, weights)``: the batch plan over the rows (``cfg.plan`` when given, else made here for ``dp_size``
    data-parallel ranks) and every row's per-token loss weight under ``cfg.loss_norm``."""
    lengths = np.asarray(ds["length"], dtype=np.int64)
    if cfg.plan:
        plan = plan_from_file(cfg.plan, lengths, cfg, max_len, dp_size)
    else:
        plan = make_plan(
            lengths,
            cfg.method,
            max_len=max_len,
            batch_size=1 if cfg.method == "pack" else cfg.per_device_batch_size,
            world_size=dp_size,
            grad_accum=cfg.grad_accum,
            algo=cfg.algo,
            seed=cfg.seed,
            overlong=cfg.overlong,
        )
    if not plan.batches:
        raise ValueError(f"{tokens_dir}: no sequence left to train on (rows={len(ds)}, overlong={cfg.overlong!r})")
    n_eff = effective_targets(ds, plan.lengths, plan.truncated)
    weights = token_weights(plan, n_eff, cfg.loss_norm, dp_size, cfg.grad_accum)
    return plan, weights


# ------------------------------------------------------------------------------------------------------------
# This rank's slice of the plan
# ------------------------------------------------------------------------------------------------------------


class PlanDataset:
    """Rows of the tokens dataset as collator features; index ``-1 - i`` is row i with weight 0 (filler)."""

    def __init__(self, ds: Any, lengths: np.ndarray, weights: np.ndarray):
        self.ds = ds.select_columns(["input_ids", "labels"])
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.weights = np.asarray(weights, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        filler = index < 0
        i = -1 - index if filler else index
        row = self.ds[int(i)]
        n = int(self.lengths[i])
        return {
            "input_ids": list(row["input_ids"][:n]),
            "labels": list(row["labels"][:n]),
            "token_weight": 0.0 if filler else float(self.weights[i]),
            "filler": filler,
        }


class PlanBatchSampler:
    """This rank's micro-batches of a plan, in consumption order (see the module docstring).

    Epoch 0 follows the plan; epoch e > 0 permutes the full optimizer steps with ``seed + e`` (a short
    last step stays last). ``set_epoch`` is called by the Trainer before each epoch, also after a resume.
    """

    def __init__(
        self,
        batches: Sequence[Sequence[int]],
        world_size: int,
        rank: int,
        grad_accum: int,
        filler_index: int,
        seed: int = 0,
    ):
        self.batches = [list(b) for b in batches]
        self.world_size, self.rank, self.grad_accum = int(world_size), int(rank), int(grad_accum)
        self.filler = [-1 - int(filler_index)]
        self.seed = int(seed)
        self.epoch = 0
        per = self.world_size * self.grad_accum
        self.chunks = [self.batches[s : s + per] for s in range(0, len(self.batches), per)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def chunk_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.chunks)))
        if epoch > 0 and len(order) > 1:
            per = self.world_size * self.grad_accum
            full = [i for i in order if len(self.chunks[i]) == per]
            rest = [i for i in order if len(self.chunks[i]) != per]
            perm = np.random.default_rng(self.seed + int(epoch)).permutation(len(full))
            order = [full[j] for j in perm] + rest
        return order

    def padded_chunk(self, chunk: list[list[int]]) -> list[list[int]]:
        short = (-len(chunk)) % self.world_size
        return chunk + [self.filler] * short

    def step_batches(self, epoch: int) -> list[list[list[int]]]:
        """Global micro-batches of every optimizer step of ``epoch`` (fillers included)."""
        return [self.padded_chunk(self.chunks[i]) for i in self.chunk_order(epoch)]

    def __iter__(self):
        for chunk in self.step_batches(self.epoch):
            yield from chunk[self.rank :: self.world_size]

    def __len__(self) -> int:
        return sum(len(self.padded_chunk(c)) // self.world_size for c in self.chunks)


class MarkedCollator:
    """Wraps a batching collator: strips the filler flag and marks an all-filler micro-batch."""

    def __init__(self, inner: Any):
        self.inner = inner

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        filler = all(f.get("filler", False) for f in features)
        batch = self.inner([{k: v for k, v in f.items() if k != "filler"} for f in features])
        batch["filler"] = torch.tensor(bool(filler))
        return batch


class PlanDataLoader(DataLoader):
    """A DataLoader whose ``set_epoch`` reaches the plan sampler."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)


def make_collator(packed: bool, max_len: int, tokenizer: Any) -> Any:
    """The batching collator: packs of up to ``max_len`` tokens, or batches padded with the tokenizer's pad id
    (its end-of-sequence id when it has none)."""
    if packed:
        return PackedCollator(max_len)
    return PaddedCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def make_loader(
    cfg: TrainConfig,
    ds: Any,
    plan: Plan,
    weights: np.ndarray,
    collator: Any,
    dp_size: int,
    layout: spm.SPLayout,
) -> PlanDataLoader:
    """The data loader of this rank: its micro-batches of ``plan`` (fillers of the shortest row where a short
    last step needs them), collated by ``collator`` and, under sequence parallelism, cut to this rank's shard."""
    dataset = PlanDataset(ds, plan.lengths, weights)
    kept_idx = np.flatnonzero(plan.lengths > 0)
    filler = int(kept_idx[np.argmin(plan.lengths[kept_idx])])
    sampler = PlanBatchSampler(plan.batches, dp_size, layout.dp_rank, cfg.grad_accum, filler, seed=cfg.seed)
    sp_size = int(cfg.sp_size)
    rank_collator = spm.ShardCollator(collator, sp_size, layout.sp_rank) if sp_size > 1 else collator
    return PlanDataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=MarkedCollator(rank_collator),
        num_workers=cfg.dataloader_num_workers,
        pin_memory=False,
    )
