"""Full-parameter SFT on transformers' Trainer, driven by a batch plan and exact loss weights.

What the Trainer does and what this module replaces:

* **Data order.** ``longalign.batching.make_plan`` decides every micro-batch (a padded batch for
  ``naive``/``sort``, one pack for ``pack``) and their order; consecutive chunks of
  ``world_size * grad_accum`` micro-batches form one optimizer step, micro-batch j of a chunk runs on rank
  ``j % world_size`` at accumulation index ``j // world_size``. :class:`PlanBatchSampler` yields exactly
  this rank's slice, so accelerate's own sharding is bypassed (the dataloader is not ``prepare``\\ d). A
  final, short chunk is padded with zero-weight copies of the shortest sequence so that every rank runs
  the same number of forward passes (DDP and ZeRO need that); they add nothing to the gradient. Later
  epochs shuffle whole optimizer steps, so the loss weights stay valid.
* **Loss.** :class:`PlanTrainer.compute_loss` returns ``world_size * sum(w * CE)`` with the per-token
  weights of ``longalign.batching.token_weights``. The Trainer's own divisions are switched off
  explicitly: ``loss_is_scaled_for_ga = True`` (no division by gradient_accumulation_steps) and
  transformers passes ``scale_wrt_gas=False`` to DeepSpeed; the factor ``world_size`` cancels the mean that
  DDP / ZeRO take over ranks. The summed gradient of one optimizer step is therefore exactly the gradient
  of the chosen normalisation (sequence / token / pack) over every rank and accumulation step; the tests
  check 2 ranks x 1 accumulation against 1 rank x 2 accumulations and packed against padded batches.
* **Packs.** A pack is one row with ``position_ids`` restarting at 0 per sequence and no attention mask;
  the attention backend (``longalign.batching.select_attention``: flash-attn varlen, flex, the
  segment-aware CPU kernel, or sdpa with transformers' block-diagonal mask) keeps sequences apart. A
  two-sequence probe at the start of training checks this on the real model (packed logits must match
  separate ones far better than a pack whose sequences see each other). ``use_cache=False`` always.

* **Sequence parallelism** (``sp_size`` > 1, :mod:`longalign.train.sequence_parallel`): the world is
  DP x SP ranks; the plan, the weights and the sampler use the DP ranks only, the SP ranks of a group shard
  the same pack (labels shifted before the cut) and run the Ulysses attention with the whole pack's
  boundaries. The factor above stays the full world size: DDP / ZeRO average over every rank, and the SP
  ranks' gradients must add up (each holds a disjoint part of the pack's targets).

Cost of the bookkeeping: one extra chunked cross-entropy without gradient per micro-batch (the token-mean
loss written next to the chosen loss; under 1% of a step for models of 100M+ parameters) and one
all-reduce of 8 numbers per optimizer step.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import IGNORE_INDEX
from ..config import to_dict
from ..rundir import (
    METRICS_FILE,
    TRAIN_META_FILE,
    RunDir,
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    read_json,
    read_jsonl,
)
from ..stage import Summary, as_run_dir, record
from .config import TrainConfig

log = logging.getLogger(__name__)

PACKING_SAFE_BACKENDS = (
    "flash_attention_2",
    "flash_attention_3",
    "longalign_flex",
    "longalign_segment",
    "longalign_varlen",
    "sdpa",
    "eager",
)
VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
STAT_FIELDS = (
    "loss",
    "loss_token_sum",
    "target_tokens",
    "sequences",
    "packs",
    "real_tokens",
    "padded_tokens",
    "micro_batches",
)


# glibc mallopt parameter number of M_MMAP_THRESHOLD (malloc.h)
_M_MMAP_THRESHOLD = -3
CPU_MMAP_THRESHOLD = 1 << 20  # bytes: blocks this large get their own mapping, returned to the OS when freed


def release_freed_tensors_on_cpu(threshold: int = CPU_MMAP_THRESHOLD) -> bool:
    """Have glibc's malloc give every block of ``threshold`` bytes or more its own ``mmap``, so that the memory of
    a freed CPU tensor goes back to the operating system at once. Returns whether the setting was applied.

    By default glibc serves a block from its heap unless it is larger than a *dynamic* threshold, which rises
    to the size of every mapped block freed (up to 32 MiB). After the first few frees, the activations of a
    long pack (SmolLM2 at 8k tokens: [T, H] float32 = 18 MiB, [T, KV] = 6 MiB) come from the heap, and a freed
    block there stays part of the process whenever a live block sits above it: the heap fragments and the
    process holds memory no tensor uses. Measured (``benchmarks/memory.py``, SmolLM2-135M, 8k, chunked loss,
    gradient checkpointing, two steps): peak RSS 6.1-6.4 GiB by default, 3.2 GiB with this setting, the second
    step's forward alone growing by 1.3 GiB of freed blocks. ``malloc_trim`` once per step is not enough: the
    heap fragments within a step.

    Skipped (returns False) off Linux, without glibc's ``mallopt``, or when ``MALLOC_MMAP_THRESHOLD_`` is set
    in the environment (the user's choice stands). The process keeps the setting; numbers do not change, only
    where the allocator takes memory from.
    """
    if not sys.platform.startswith("linux") or os.environ.get("MALLOC_MMAP_THRESHOLD_") is not None:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, int(threshold)))


# ------------------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------------------


@dataclass
class TrainResult(Summary):
    """What :func:`train` returns (on every rank; files are written by rank 0): the train stage's summary."""

    output_dir: Path
    metrics_path: Path
    final_dir: Path | None
    steps: int
    final_loss: float | None
    attention_backend: str
    run_meta: dict[str, Any] = field(default_factory=dict)
    rank: int = 0

    SUMMARY_META = (
        "method",
        "loss_norm",
        "world_size",
        "sp_size",
        "dp_size",
        "max_len",
        "precision",
        "total_steps",
        "device",
    )

    def to_dict(self) -> dict[str, Any]:
        """The result with a few settings of ``run_meta`` (all of it is in ``run_meta.json``)."""
        out = super().to_dict()
        meta = out.pop("run_meta") or {}
        out.update({k: meta.get(k) for k in self.SUMMARY_META})
        return out

    def lines(self) -> list[str]:
        m = self.run_meta
        loss = f"{self.final_loss:.4f}" if self.final_loss is not None else "n/a"
        out = [
            f"trained {self.steps} steps ({m.get('method')}, loss_norm={m.get('loss_norm')}, attention="
            f"{self.attention_backend}); last loss {loss}",
            f"metrics: {self.metrics_path}",
        ]
        if self.final_dir is not None:
            out.append(f"model:   {self.final_dir}")
        return out


# ------------------------------------------------------------------------------------------------------------
# Tokens folder
# ------------------------------------------------------------------------------------------------------------


def load_tokens_dir(path: str | Path):
    """``(datasets.Dataset, meta)`` of the training tokens: a `longalign tokenize` folder, a
    ``datasets.save_to_disk`` folder, a parquet/jsonl file of token ids or ``hf:NAME`` (see
    :mod:`longalign.tokenize.sources`); labels default to every token, length is computed when absent."""
    from ..tokenize.sources import open_token_data

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
    import pyarrow.compute as pc

    from ..batching.loss import count_targets

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
    from ..batching import Plan, compute_stats, load_plan_batches

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


# ------------------------------------------------------------------------------------------------------------
# Model: loading, context extension
# ------------------------------------------------------------------------------------------------------------


def rope_base(config: Any) -> float | None:
    """The RoPE base of a config, in either layout (``rope_theta`` or transformers-5 ``rope_parameters``)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and params.get("rope_theta") is not None:
        return float(params["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    return float(theta) if theta is not None else None


def apply_context_extension(config: Any, rope_scale: float = 1.0, max_position_embeddings: int = 0) -> Any:
    """Multiply the RoPE base by ``rope_scale`` and raise ``max_position_embeddings`` (in place).

    LongAlign extends Llama-2 from 4k to 64k by raising the base 10,000 -> 2,000,000 (x200) before
    continual pre-training and SFT. Both config layouts are handled: ``config.rope_theta`` and
    ``config.rope_parameters["rope_theta"]`` (transformers 5); a config with neither cannot be extended.
    """
    if rope_scale and rope_scale != 1.0:
        if rope_scale <= 0:
            raise ValueError(f"rope_scale must be > 0, got {rope_scale}")
        base = rope_base(config)
        if base is None:
            raise ValueError(
                f"{type(config).__name__} has no RoPE base (rope_theta / rope_parameters); "
                "context extension by rope_scale needs a RoPE model"
            )
        new = base * float(rope_scale)
        params = getattr(config, "rope_parameters", None)
        if isinstance(params, dict):
            params = dict(params)
            params["rope_theta"] = new
            config.rope_parameters = params
        if getattr(config, "rope_theta", None) is not None or not isinstance(params, dict):
            config.rope_theta = new
    if max_position_embeddings and max_position_embeddings > int(getattr(config, "max_position_embeddings", 0) or 0):
        config.max_position_embeddings = int(max_position_embeddings)
    return config


_TOKENIZERS: dict[str, Any] = {}


def cached_tokenizer(spec: str | None):
    """The tokenizer for ``spec``, loaded once per process (1-2 s each time otherwise)."""
    from ..models import load_tokenizer

    key = str(spec or "")
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = load_tokenizer(spec)
    return _TOKENIZERS[key]


def load_model_config(spec: str | None):
    from transformers import AutoConfig

    from ..models import resolve_model_path

    if spec and str(spec).startswith("random:"):
        return AutoConfig.from_pretrained(str(spec)[len("random:") :])
    return AutoConfig.from_pretrained(resolve_model_path(spec))


def build_model(spec: str | None, config: Any, attn_implementation: str | None, seed: int):
    """Instantiate the model with an (already extended) config, in float32 (mixed precision is autocast or
    DeepSpeed's business)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..models import resolve_model_path

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if spec and str(spec).startswith("random:"):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, **kwargs)
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(spec), config=config, **kwargs)


# ------------------------------------------------------------------------------------------------------------
# Data: rank slice of the plan
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
        import torch

        filler = all(f.get("filler", False) for f in features)
        batch = self.inner([{k: v for k, v in f.items() if k != "filler"} for f in features])
        batch["filler"] = torch.tensor(bool(filler))
        return batch


def _make_loader_class():
    from torch.utils.data import DataLoader

    class PlanDataLoader(DataLoader):
        """A DataLoader whose ``set_epoch`` reaches the plan sampler."""

        def set_epoch(self, epoch: int) -> None:
            if hasattr(self.batch_sampler, "set_epoch"):
                self.batch_sampler.set_epoch(epoch)

    return PlanDataLoader


# ------------------------------------------------------------------------------------------------------------
# Trainer
# ------------------------------------------------------------------------------------------------------------


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
    from ..batching.loss import weighted_and_plain_ce
    from .head_loss import loss_request, read_loss_output

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


def _trainer_class():
    import torch
    from transformers import Trainer

    from .sequence_parallel import SHIFTED_KEY

    class PlanTrainer(Trainer):
        """Trainer whose data order comes from a plan and whose loss is the exact weighted sum."""

        # compute_loss already returns the share of the optimizer-step loss: no division by grad_accum
        loss_is_scaled_for_ga = True

        def __init__(
            self,
            *args: Any,
            plan_loader: Any,
            packed: bool,
            attention_backend: str,
            data_world_size: int,
            loss_head: Any = None,
            loss_chunk_rows: int = 0,
            sp_rank: int = 0,
            **kwargs: Any,
        ):
            super().__init__(*args, **kwargs)
            self.loss_head = loss_head
            self.loss_chunk_rows = int(loss_chunk_rows)
            self.plan_loader = plan_loader
            self.packed = packed
            self.attention_backend = attention_backend
            self.data_world_size = int(data_world_size)  # ranks the gradient mean runs over: DP x SP
            self.sp_rank = int(sp_rank)  # per-pack counts (sequences, tokens) come from SP rank 0 only
            # num_items_in_batch is not needed (the weights carry the normalisation): skip its gather
            self.model_accepts_loss_kwargs = False
            self.step_stats = None
            self.last_grad_norm: float | None = None
            self.reset_step_stats()

        def reset_step_stats(self) -> None:
            self.step_stats = torch.zeros(len(STAT_FIELDS), dtype=torch.float64)

        def get_train_dataloader(self):
            return self.plan_loader

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            filler = bool(inputs.pop("filler", torch.tensor(False)))
            shifted = bool(inputs.pop(SHIFTED_KEY, False))
            labels = inputs["labels"]
            loss, token_sum, outputs = forward_loss(
                model,
                inputs,
                self.packed,
                self.attention_backend,
                self.loss_head,
                self.loss_chunk_rows,
                shift=not shifted,
                return_outputs=True,
            )
            with torch.no_grad():
                target = labels != IGNORE_INDEX
                if not shifted:
                    target[:, 0] = False
                if not filler:
                    if self.packed:
                        seq_lens = inputs.get("seq_lens")
                        n_seq = int(seq_lens.numel()) if seq_lens is not None else 1
                        real = int(seq_lens.sum()) if seq_lens is not None else labels.numel()
                    else:
                        n_seq = int(labels.shape[0])
                        mask = inputs.get("attention_mask")
                        real = int(mask.sum()) if mask is not None else labels.numel()
                    n_target = int(target.sum())
                    stats = [
                        float(loss.detach()),
                        float(token_sum.detach()),
                        n_target,
                        n_seq,
                        1.0 if self.packed else 0.0,
                        real,
                        labels.numel(),
                        1.0,
                    ]
                    if self.sp_rank:  # the pack is counted once, by SP rank 0; its targets by every shard
                        stats[3] = stats[4] = stats[5] = stats[7] = 0.0
                    self.step_stats += torch.tensor(stats, dtype=torch.float64)
            # DDP and ZeRO average gradients over all ranks; the step loss is the *sum* over ranks (over SP
            # ranks too: each holds a disjoint shard of the pack's targets)
            scaled = loss * self.data_world_size
            return (scaled, outputs) if return_outputs else scaled

        def _get_grad_norm(self, *args: Any, **kwargs: Any):  # remember the norm for metrics.jsonl
            value = super()._get_grad_norm(*args, **kwargs)
            try:
                self.last_grad_norm = float(value) if value is not None else None
            except (TypeError, ValueError):
                self.last_grad_norm = None
            return value

        def reduce_step_stats(self) -> dict[str, float]:
            """Sum this step's statistics over ranks (all ranks call it) and reset them."""
            import torch.distributed as dist

            buf = self.step_stats.clone()
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dev = self.args.device if dist.get_backend() == "nccl" else torch.device("cpu")
                buf = buf.to(dev)
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                buf = buf.cpu()
            self.reset_step_stats()
            return dict(zip(STAT_FIELDS, buf.tolist()))

    return PlanTrainer


def _callback_class():
    from transformers import TrainerCallback

    class StepMetrics(TrainerCallback):
        """Writes one metrics.jsonl line per optimizer step (rank 0) and drives a tqdm bar with tokens/s."""

        def __init__(
            self, metrics_path: Path, method: str, loss_norm: str, wall_offset: float, progress: bool, probe: Any = None
        ):
            self.metrics_path = Path(metrics_path)
            self.method, self.loss_norm = method, loss_norm
            self.wall_offset = float(wall_offset)
            self.progress = progress
            self.probe = probe
            self.trainer = None
            self.bar = None
            self.t0 = self.t_last = None
            self.lr = None
            self.last: dict[str, Any] | None = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if self.probe is not None:
                self.probe(model)
            self.t0 = self.t_last = time.perf_counter()
            if self.progress and state.is_world_process_zero:
                from tqdm.auto import tqdm

                self.bar = tqdm(
                    total=state.max_steps,
                    initial=state.global_step,
                    desc=f"train {self.method}",
                    unit="step",
                    dynamic_ncols=True,
                )

        def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
            opt = optimizer if optimizer is not None else getattr(self.trainer, "optimizer", None)
            try:
                self.lr = float(opt.param_groups[0]["lr"])
            except Exception:  # an optimizer wrapper without param_groups
                self.lr = None

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            stats = self.trainer.reduce_step_stats()
            step_s = now - self.t_last
            self.t_last = now
            tgt = stats["target_tokens"]
            rec = {
                "step": int(state.global_step),
                "epoch": round(float(state.epoch or 0.0), 6),
                "loss": stats["loss"],
                "loss_token_mean": stats["loss_token_sum"] / tgt if tgt else None,
                "loss_norm": self.loss_norm,
                "method": self.method,
                "lr": self.lr,
                "grad_norm": self.trainer.last_grad_norm,
                "sequences": int(stats["sequences"]),
                "packs": int(stats["micro_batches"]),
                "micro_batches": int(stats["micro_batches"]),
                "real_tokens": int(stats["real_tokens"]),
                "padded_tokens": int(stats["padded_tokens"]),
                "target_tokens": int(tgt),
                "tokens_per_s": stats["real_tokens"] / step_s if step_s > 0 else None,
                "step_s": step_s,
                "wall_s": self.wall_offset + (now - self.t0),
            }
            self.last = rec
            if state.is_world_process_zero:
                append_jsonl(self.metrics_path, rec)
                if self.bar is not None:
                    self.bar.update(1)
                    self.bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rec['tokens_per_s']:.0f}")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is not None and self.last is not None and "loss" in logs:
                logs.setdefault("loss_token_mean", self.last["loss_token_mean"])
                logs.setdefault("tokens_per_s", self.last["tokens_per_s"])

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return StepMetrics


# ------------------------------------------------------------------------------------------------------------
# Packing probe
# ------------------------------------------------------------------------------------------------------------


def packing_probe(model: Any, collator: Any, device: Any, dtype: Any, vocab: int, backend: str) -> dict[str, float]:
    """Check that a pack of two sequences gives the logits the sequences give alone.

    Returns the max abs difference of packed vs separate logits (``packed_err``) and of a pack whose
    sequences see each other (``leak_err``: no position restart, plain causal). Raises ValueError when the
    backend does not keep the sequences apart (``packed_err`` not far below ``leak_err``).
    """
    import torch

    gen = torch.Generator().manual_seed(1234)
    lens = (7, 5)
    seqs = [torch.randint(10, max(11, vocab - 1), (n,), generator=gen).tolist() for n in lens]
    feats = [{"input_ids": s, "labels": s, "token_weight": 1.0} for s in seqs]
    pack = collator(feats)
    was_training = model.training
    model.eval()
    autocast = (
        torch.autocast(device_type=torch.device(device).type, dtype=dtype)
        if dtype is not None and dtype != torch.float32
        else torch.autocast("cpu", enabled=False)
    )
    try:
        with torch.no_grad(), autocast:
            batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in pack.items()}
            packed = model(**model_inputs(batch, True, backend)).logits[0].float()
            sep = torch.cat(
                [model(input_ids=torch.tensor([s], device=device), use_cache=False).logits[0].float() for s in seqs]
            )
            leak = model(input_ids=batch["input_ids"], use_cache=False).logits[0].float()
    finally:
        model.train(was_training)
    packed_err = float((packed - sep).abs().max())
    leak_err = float((leak - sep).abs().max())
    result = {"packed_err": packed_err, "leak_err": leak_err}
    if not packed_err <= max(1e-5, 0.1 * leak_err):
        raise ValueError(
            f"attention backend {backend!r} does not keep packed sequences apart (packed vs separate "
            f"logits differ by {packed_err:.3g}, a pack without boundaries by {leak_err:.3g}); use "
            "--attn-implementation auto (flash-attn, flex, sdpa or longalign_segment) or "
            "--method sort"
        )
    return result


def loss_probe(model: Any, head: Any, device: Any, dtype: Any, vocab: int) -> dict[str, float]:
    """Check on the real model that the chunked loss equals the loss read from its logits.

    A model whose forward transforms the head's output (soft-capping, a logit scale) would train on a wrong
    loss under ``loss_impl='chunked'``: this raises ValueError naming the fix when the two disagree by more than
    float rounding (1e-4 relative in float32, 2e-2 under bf16/fp16 autocast).
    """
    import torch

    from ..batching.loss import weighted_and_plain_ce
    from .head_loss import loss_request, read_loss_output

    gen = torch.Generator().manual_seed(4321)
    ids = torch.randint(10, max(11, vocab - 1), (2, 9), generator=gen).to(device)
    labels = ids.clone()
    labels[:, :3] = IGNORE_INDEX
    weights = torch.rand(ids.shape, generator=gen, dtype=torch.float64).to(device)
    was_training = model.training
    model.eval()
    autocast = (
        torch.autocast(device_type=torch.device(device).type, dtype=dtype)
        if dtype is not None and dtype != torch.float32
        else torch.autocast("cpu", enabled=False)
    )
    try:
        with torch.no_grad(), autocast:
            full, _ = weighted_and_plain_ce(model(input_ids=ids, use_cache=False).logits, labels, weights)
            with loss_request(head, labels, weights):
                chunked, _ = read_loss_output(model(input_ids=ids, use_cache=False).logits)
    finally:
        model.train(was_training)
    rel = float((full.double() - chunked.double()).abs() / full.double().abs().clamp_min(1e-12))
    tol = 1e-4 if dtype is None or dtype == torch.float32 else 2e-2
    if not rel <= tol:
        raise ValueError(
            f"the chunked loss differs from the loss of the model's logits by {rel:.3g} (relative): "
            f"this model transforms its logits after the output layer; use --loss-impl full"
        )
    return {"loss_rel_err": rel}


# ------------------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------------------


def resolve_paths(cfg: TrainConfig) -> tuple[Path, Path, RunDir | None]:
    run = RunDir(cfg.run) if cfg.run else None
    tokens = Path(cfg.tokens) if cfg.tokens else (run.tokens if run else None)
    if tokens is None:
        raise ValueError(
            "no training data: pass --tokens (a `longalign tokenize` folder, a datasets.save_to_disk folder, a "
            ".parquet/.jsonl file of token ids or hf:NAME) or --run RUN"
        )
    out = Path(cfg.output_dir) if cfg.output_dir else (run.train(cfg.method) if run else None)
    if out is None:
        raise ValueError("no output folder: pass --output-dir DIR or --run RUN")
    return tokens, out, run


def _dist_env() -> tuple[int, int]:
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def _checkpoint_step(path: Path) -> int:
    state = read_json(path / "trainer_state.json", default={}) or {}
    return int(state.get("global_step", 0))


def _precision(cfg: TrainConfig) -> str:
    import torch

    if cfg.precision != "auto":
        return cfg.precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def _training_args(cfg: TrainConfig, out: Path, total_steps: int, precision: str, world_size: int):
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    warmup = int(math.ceil(cfg.warmup_ratio * total_steps)) if cfg.warmup_ratio > 0 else 0
    kw: dict[str, Any] = dict(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=1,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=warmup,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        logging_strategy="steps",
        logging_steps=max(1, cfg.logging_steps),
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=max(1, cfg.save_steps),
        save_total_limit=cfg.save_total_limit if cfg.save_total_limit > 0 else None,
        report_to=[x.strip() for x in cfg.report_to.split(",") if x.strip()] or "none",
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=cfg.dataloader_num_workers,
        dataloader_pin_memory=False,
        deepspeed=cfg.deepspeed,
        average_tokens_across_devices=False,
        ddp_find_unused_parameters=False,
    )
    import torch

    if not torch.cuda.is_available():
        kw["use_cpu"] = True
    if "lr_scheduler_kwargs" in names and cfg.lr_scheduler == "cosine_with_min_lr":
        kw["lr_scheduler_kwargs"] = {"min_lr_rate": 0.1}
    return TrainingArguments(**{k: v for k, v in kw.items() if k in names})


def _validate(cfg: TrainConfig) -> None:
    cfg.__post_init__()  # choices and ranges again, for a config changed after it was built
    if cfg.deepspeed and not Path(cfg.deepspeed).is_file():
        raise FileNotFoundError(
            f"DeepSpeed config {cfg.deepspeed} does not exist; use one of configs/deepspeed/"
            "zero2.json, zero3.json, zero3_offload.json"
        )


def train(cfg: TrainConfig, *, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Fine-tune ``cfg.model`` on ``cfg.tokens`` with the chosen batching and loss normalisation.

    Works in one process or under ``torchrun`` / ``deepspeed`` / ``accelerate launch`` (the world size comes
    from the environment). ``callbacks`` are extra transformers TrainerCallbacks. See the module docstring.
    """
    import torch
    from transformers import PrinterCallback, ProgressCallback
    from transformers.trainer_utils import get_last_checkpoint

    from ..batching import PackedCollator, PaddedCollator, make_plan, select_attention, token_weights
    from ..models import check_length, model_display_name
    from . import sequence_parallel as spm
    from .head_loss import install_loss_head

    _validate(cfg)
    tokens_dir, out, run = resolve_paths(cfg)
    world_size, rank = _dist_env()
    sp_size = int(cfg.sp_size)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    packed = cfg.method == "pack"

    # ---- data and plan (cheap: lengths only) -----------------------------------------------------------
    ds, meta = load_tokens_dir(tokens_dir)
    if cfg.limit and cfg.limit < len(ds):
        ds = ds.select(range(cfg.limit))
    tokenizer = cached_tokenizer(cfg.tokenizer or cfg.model)
    model_config = load_model_config(cfg.model)
    max_len = int(cfg.max_len or meta.get("max_len") or 0)
    if max_len < 2:
        raise ValueError(f"max_len is not set: pass --max-len (the tokens {tokens_dir} record none)")
    target_pos = cfg.max_position_embeddings or (max_len if cfg.rope_scale != 1.0 else 0)
    apply_context_extension(model_config, cfg.rope_scale, target_pos)
    check_length(
        max_len,
        asked=f"max_len={max_len}",
        model=cfg.model,
        positions=int(getattr(model_config, "max_position_embeddings", 0) or 0),
        shorter="lower --max-len",
        extend="extend the context with --rope-scale (paper: 200) and --max-position-embeddings {length}",
    )
    check_tokenizer_match(meta, tokenizer, tokens_dir, int(getattr(model_config, "vocab_size", len(tokenizer))))
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    heads = int(getattr(text_config, "num_attention_heads", 1) or 1)
    kv_heads = int(getattr(text_config, "num_key_value_heads", None) or heads)
    sp_check = dict(method=cfg.method, num_heads=heads, num_kv_heads=kv_heads, max_len=max_len)
    spm.check_sp(sp_size, world_size, backend=None, **sp_check)
    dp_size = world_size // sp_size  # the plan is dealt over data-parallel ranks; SP ranks share a pack
    lengths = np.asarray(ds["length"], dtype=np.int64)
    if cfg.plan:
        plan = plan_from_file(cfg.plan, lengths, cfg, max_len, dp_size)
    else:
        plan = make_plan(
            lengths,
            cfg.method,
            max_len=max_len,
            batch_size=1 if packed else cfg.per_device_batch_size,
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

    # ---- output folder, resume --------------------------------------------------------------------------
    metrics_path = out / METRICS_FILE
    ckpt_dir = out / "checkpoints"
    resume_from = None
    if cfg.resume and ckpt_dir.is_dir():
        last = get_last_checkpoint(str(ckpt_dir))
        resume_from = last if last else None
    elif not cfg.resume and ckpt_dir.is_dir() and any(ckpt_dir.glob("checkpoint-*")):
        raise ValueError(
            f"{out} already holds checkpoints of an earlier run; pass --resume to continue it or "
            "choose another --output-dir (or delete the folder)"
        )
    plan_record = {
        "method": cfg.method,
        "algo": plan.algo,
        "max_len": max_len,
        "world_size": world_size,
        "grad_accum": cfg.grad_accum,
        "seed": cfg.seed,
        "rows": len(ds),
        **({"sp_size": sp_size} if sp_size > 1 else {}),
        "batches": plan.batches,
    }
    plan_file = out / "plan.json"
    wall_offset = 0.0
    if resume_from is not None:
        saved = read_json(plan_file)
        if saved is not None and saved != json.loads(json.dumps(plan_record)):
            raise ValueError(
                f"{out}: the batch plan differs from the one the checkpoints were trained with "
                "(data, max_len, method, world size, sp_size, grad_accum or seed changed); resume with the "
                "same settings or start a new --output-dir"
            )
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if resume_from is not None:
            step = _checkpoint_step(Path(resume_from))
            kept = [r for r in read_jsonl(metrics_path) if int(r.get("step", 0)) <= step]
            atomic_write_text(metrics_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
            wall_offset = float(kept[-1].get("wall_s", 0.0)) if kept else 0.0
            log.info("resuming from %s (step %d)", resume_from, step)
        else:
            if metrics_path.exists():
                metrics_path.unlink()
            atomic_write_text(plan_file, json.dumps(plan_record, separators=(",", ":")) + "\n")

    # ---- model ------------------------------------------------------------------------------------------
    precision = _precision(cfg)
    per_rank = len(plan.rank_batches(0))  # every rank runs the same count (fillers), rank 0 has the most
    steps_per_epoch = math.ceil(max(1, per_rank) / cfg.grad_accum)
    total_steps = cfg.max_steps if cfg.max_steps > 0 else int(math.ceil(cfg.epochs * steps_per_epoch))
    args = _training_args(cfg, out, total_steps, precision, world_size)  # before the model: ZeRO-3 init
    if args.n_gpu > 1:
        raise ValueError(
            f"{args.n_gpu} GPUs are visible to one process; launch one process per GPU with "
            "torchrun, deepspeed or accelerate launch (or set CUDA_VISIBLE_DEVICES)"
        )
    if args.world_size != world_size:
        raise ValueError(
            f"world size {args.world_size} from the process group differs from WORLD_SIZE; launch "
            "with torchrun, deepspeed or accelerate launch"
        )
    rank = args.process_index
    device = args.device
    if torch.device(device).type == "cpu":
        release_freed_tensors_on_cpu()
    layout = spm.SPLayout(world_size, sp_size, rank)
    if cfg.deepspeed:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            import deepspeed

            # ZeRO-3 builds the model partitioned (zero.Init), and its config reads the world size through
            # deepspeed.comm: bind that to the process group the launcher set up, or it counts one rank
            deepspeed.init_distributed(dist_backend=dist.get_backend())
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    auto_backend = select_attention(device, packed, half)  # also registers the custom kernels
    if sp_size > 1:
        auto_backend = spm.default_core(auto_backend, device, half)
    backend = auto_backend if cfg.attn_implementation == "auto" else cfg.attn_implementation
    if spm.core_of(backend):  # a sequence-parallel name given directly: its core decides
        backend = spm.core_of(backend)
    if packed and backend not in PACKING_SAFE_BACKENDS:
        raise ValueError(
            f"attention backend {backend!r} cannot keep packed sequences apart; use one of "
            f"{', '.join(PACKING_SAFE_BACKENDS)} (or --attn-implementation auto) or --method sort"
        )
    core_backend = backend
    if sp_size > 1:
        spm.check_sp(sp_size, world_size, backend=backend, **sp_check)
        spm.configure(spm.new_sp_groups(layout), sp_size)
        backend = spm.register_sp_attention(backend)
    model = build_model(cfg.model, model_config, backend, cfg.seed)
    model.config.use_cache = False
    loss_head = install_loss_head(model) if cfg.loss_impl == "chunked" else None
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    collator = (
        PackedCollator(max_len)
        if packed
        else PaddedCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    )
    dataset = PlanDataset(ds, plan.lengths, weights)
    kept_idx = np.flatnonzero(plan.lengths > 0)
    filler = int(kept_idx[np.argmin(plan.lengths[kept_idx])])
    sampler = PlanBatchSampler(plan.batches, dp_size, layout.dp_rank, cfg.grad_accum, filler, seed=cfg.seed)
    rank_collator = spm.ShardCollator(collator, sp_size, layout.sp_rank) if sp_size > 1 else collator
    loader = _make_loader_class()(
        dataset,
        batch_sampler=sampler,
        collate_fn=MarkedCollator(rank_collator),
        num_workers=cfg.dataloader_num_workers,
        pin_memory=False,
    )

    probe_result: dict[str, float] = {}

    def probe(m: Any) -> None:
        # probes run one whole pack on each rank: under SP the wrapper calls its core directly
        with spm.bypassed():
            run_probes(m)

    def run_probes(m: Any) -> None:
        if loss_head is not None:
            probe_result.update(loss_probe(m, loss_head, device, half, len(tokenizer)))
            log.info("chunked loss check: relative difference to the full loss %.2e", probe_result["loss_rel_err"])
        if packed and cfg.check_packing:
            probe_result.update(packing_probe(m, collator, device, half, len(tokenizer), backend))
            log.info(
                "packing check (%s): packed vs separate %.2e, without boundaries %.2e",
                core_backend,
                probe_result["packed_err"],
                probe_result["leak_err"],
            )

    callback = _callback_class()(metrics_path, cfg.method, cfg.loss_norm, wall_offset, cfg.progress, probe)
    trainer = _trainer_class()(
        model=model,
        args=args,
        processing_class=tokenizer,
        data_collator=collator,
        callbacks=[callback, *callbacks],
        plan_loader=loader,
        packed=packed,
        attention_backend=backend,
        data_world_size=world_size,
        loss_head=loss_head,
        loss_chunk_rows=cfg.loss_chunk_rows,
        sp_rank=layout.sp_rank,
    )
    callback.trainer = trainer
    for cls in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cls)

    rope = rope_base(model.config)
    run_meta = {
        "method": cfg.method,
        "algo": plan.algo,
        "loss_norm": cfg.loss_norm,
        "loss_impl": cfg.loss_impl,
        "attention_backend": backend,
        "model": model_display_name(cfg.model),
        "world_size": world_size,
        "sp_size": sp_size,
        "dp_size": dp_size,
        "grad_accum": cfg.grad_accum,
        "max_len": max_len,
        "rope_theta": rope,
        "rope_scale": cfg.rope_scale,
        "max_position_embeddings": int(getattr(model.config, "max_position_embeddings", 0) or 0),
        "precision": precision,
        "deepspeed": cfg.deepspeed,
        "per_device_batch_size": 1 if packed else cfg.per_device_batch_size,
        "tokens": str(tokens_dir),
        "plan_stats": plan.stats,
        "total_steps": total_steps,
        "started": started,
        "finished": None,
        "steps": 0,
        "resumed_from": resume_from,
        "device": str(device),
        "config": to_dict(cfg),
    }
    meta_path = out / TRAIN_META_FILE
    if rank == 0:
        previous = read_json(meta_path) if resume_from else None
        if previous and previous.get("started"):
            run_meta["started"] = previous["started"]
        atomic_write_json(meta_path, run_meta)

    trainer.train(resume_from_checkpoint=resume_from)

    final_dir = None
    if cfg.save_final:
        final_dir = out / "final"
        model.config.use_cache = True
        if backend not in ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"):
            # a custom kernel name would not resolve for a plain from_pretrained elsewhere
            model.config._attn_implementation = "sdpa"
        trainer.save_model(str(final_dir))
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(str(final_dir))
    steps = int(trainer.state.global_step)
    last = callback.last or {}
    run_meta.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S"), steps=steps, packing_check=probe_result or None)
    result = TrainResult(
        output_dir=out,
        metrics_path=metrics_path,
        final_dir=final_dir,
        steps=steps,
        final_loss=last.get("loss"),
        attention_backend=backend,
        run_meta=run_meta,
        rank=int(rank),
    )
    if trainer.is_world_process_zero():
        atomic_write_json(meta_path, run_meta)
        if run is not None:
            record(run, f"train.{cfg.method}", cfg, result)
    return result


def run(cfg: TrainConfig, run_dir: str | Path | RunDir, *, callbacks: Sequence[Any] = ()) -> TrainResult:
    """The train stage: :func:`train` on ``<run>/tokens`` (unless ``cfg.tokens``) into ``<run>/train/<method>``
    (unless ``cfg.output_dir``), recorded in run.json as ``train.<method>`` by rank 0."""
    return train(dataclasses.replace(cfg, run=str(as_run_dir(run_dir).root)), callbacks=callbacks)
