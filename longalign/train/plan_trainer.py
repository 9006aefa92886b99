"""The transformers Trainer driven by a batch plan, and the callback that writes one metrics line per step.

:class:`PlanTrainer` takes its data loader from the plan (:mod:`longalign.train.feed`) and returns
``world_size * sum(w * CE)`` as the loss of a micro-batch (see :mod:`longalign.train.trainer` for why the factor
and the switched-off divisions make the summed gradient exact); it also sums the statistics of each optimizer
step (loss, token-mean loss, sequences, packs, real, padded and target tokens) over ranks with one all-reduce.
:class:`StepMetrics` writes them to ``metrics.jsonl`` on rank 0, with the learning rate, gradient norm and
tokens/s, and drives a progress bar. :func:`make_trainer` wires the two together.

This module imports torch and transformers; it is imported when training starts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback

from .. import IGNORE_INDEX
from ..rundir import append_jsonl
from .config import TrainConfig
from .forward import forward_loss
from .model_setup import ModelSetup
from .sequence_parallel import SHIFTED_KEY

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
        buf = self.step_stats.clone()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dev = self.args.device if dist.get_backend() == "nccl" else torch.device("cpu")
            buf = buf.to(dev)
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf = buf.cpu()
        self.reset_step_stats()
        return dict(zip(STAT_FIELDS, buf.tolist()))


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


def make_trainer(
    cfg: TrainConfig,
    args: Any,
    setup: ModelSetup,
    tokenizer: Any,
    collator: Any,
    loader: Any,
    metrics: StepMetrics,
    callbacks: Sequence[Any],
    world_size: int,
) -> PlanTrainer:
    """A :class:`PlanTrainer` of ``setup``'s model fed by ``loader``, with ``metrics`` (bound to it) and
    ``callbacks``, without transformers' own printing and progress callbacks."""
    trainer = PlanTrainer(
        model=setup.model,
        args=args,
        processing_class=tokenizer,
        data_collator=collator,
        callbacks=[metrics, *callbacks],
        plan_loader=loader,
        packed=cfg.method == "pack",
        attention_backend=setup.backend,
        data_world_size=world_size,
        loss_head=setup.loss_head,
        loss_chunk_rows=cfg.loss_chunk_rows,
        sp_rank=setup.layout.sp_rank,
    )
    metrics.trainer = trainer
    for cls in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cls)
    return trainer
