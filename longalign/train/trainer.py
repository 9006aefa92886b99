"""The train stage: full-parameter SFT on transformers' Trainer, driven by a batch plan and exact loss weights.

:func:`train` reads as its phases, each in its own module (all imported when training starts):

* :mod:`longalign.train.feed` -- the token rows, the batch plan and its loss weights, this rank's slice of the
  plan, the collators and the data loader;
* :mod:`longalign.train.model_setup` -- the model's config (context extension), the tokenizer, parallelism,
  precision, the attention backend and the model;
* :mod:`longalign.train.plan_trainer` -- the Trainer subclass and the callback that writes ``metrics.jsonl``;
* :mod:`longalign.train.probes` -- the start-up checks of packing and of the chunked loss on the real model;
* :mod:`longalign.train.forward` -- one micro-batch through the model (shared with the checks and benchmarks);
* this module -- the paths (a run directory or ``--tokens``/``--output-dir``; :class:`~longalign.rundir.TrainDir`
  names every file under ``train/<name>/``), resuming, the TrainingArguments, ``run_meta.json`` and the result.

What the Trainer does and what this module replaces:

* **Data order** (:mod:`~longalign.train.feed`). ``longalign.batching.make_plan`` decides every micro-batch (a
  padded batch for ``naive``/``sort``, one pack for ``pack``) and their order; consecutive chunks of
  ``world_size * grad_accum`` micro-batches form one optimizer step, micro-batch j of a chunk runs on rank
  ``j % world_size`` at accumulation index ``j // world_size``. ``PlanBatchSampler`` yields exactly
  this rank's slice, so accelerate's own sharding is bypassed (the dataloader is not ``prepare``\\ d). A
  final, short chunk is padded with zero-weight copies of the shortest sequence so that every rank runs
  the same number of forward passes (DDP and ZeRO need that); they add nothing to the gradient. Later
  epochs shuffle whole optimizer steps, so the loss weights stay valid.
* **Loss** (:mod:`~longalign.train.plan_trainer`). ``PlanTrainer.compute_loss`` returns ``world_size * sum(w * CE)``
  with the per-token weights of ``longalign.batching.token_weights``. The Trainer's own divisions are switched off
  explicitly: ``loss_is_scaled_for_ga = True`` (no division by gradient_accumulation_steps) and transformers passes
  ``scale_wrt_gas=False`` to DeepSpeed; the factor ``world_size`` cancels the mean that DDP / ZeRO take over ranks.
  The summed gradient of one optimizer step is therefore exactly the gradient of the chosen normalisation (sequence
  / token / pack) over every rank and accumulation step; the tests check 2 ranks x 1 accumulation against 1 rank x 2
  accumulations and packed against padded batches.
* **Packs** (:mod:`~longalign.train.forward`, :mod:`~longalign.train.probes`). A pack is one row with
  ``position_ids`` restarting at 0 per sequence and no attention mask; the attention backend
  (``longalign.batching.select_attention``: flash-attn varlen, flex, the segment-aware CPU kernel, or sdpa with
  transformers' block-diagonal mask) keeps sequences apart. A two-sequence probe at the start of training checks
  this on the real model (packed logits must match separate ones far better than a pack whose sequences see each
  other). ``use_cache=False`` always.
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

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from ..batching import Plan
from ..config import to_dict
from ..models import model_display_name
from ..rundir import RunDir, TrainDir, atomic_write_json, atomic_write_text, read_json, read_jsonl
from ..stage import Summary, as_run_dir, record
from . import feed, model_setup
from .config import TrainConfig
from .model_setup import ModelSetup, Parallel
from .plan_trainer import StepMetrics, make_trainer
from .probes import StartupProbes

log = logging.getLogger(__name__)

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


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
# The stage
# ------------------------------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig, *, run_dir: str | Path | RunDir | None = None, callbacks: Sequence[Any] = ()
) -> TrainResult:
    """Fine-tune ``cfg.model`` on ``cfg.tokens`` with the chosen batching and loss normalisation.

    Works in one process or under ``torchrun`` / ``deepspeed`` / ``accelerate launch`` (the world size comes
    from the environment). ``run_dir`` supplies the paths ``cfg`` leaves open (``<run>/tokens``,
    ``<run>/train/<method>``) and gets the run recorded in its run.json; ``callbacks`` are extra transformers
    TrainerCallbacks. See the module docstring.
    """
    _validate(cfg)
    paths = resolve_paths(cfg, run_dir)
    world_size, rank = _dist_env()
    started = time.strftime(TIME_FORMAT)
    packed = cfg.method == "pack"

    # data and plan (cheap: lengths only)
    ds, meta = feed.load_rows(paths.tokens, cfg.limit)
    tokenizer = model_setup.cached_tokenizer(cfg.tokenizer or cfg.model)
    model_config, max_len = model_setup.setup_config(cfg, meta, paths.tokens)
    model_vocab = int(getattr(model_config, "vocab_size", len(tokenizer)))
    feed.check_tokenizer_match(meta, tokenizer, paths.tokens, model_vocab)
    par = model_setup.setup_parallel(cfg, model_config, max_len, world_size)
    plan, weights = feed.make_train_plan(cfg, ds, max_len, par.dp_size, paths.tokens)

    # output folder, resume
    plan_record = _plan_record(cfg, plan, len(ds), max_len, world_size)
    resume_from, wall_offset = _setup_output(cfg, paths.out, plan_record, rank)

    # model (the TrainingArguments first: they set up the process group and ZeRO-3's partitioned init)
    precision = model_setup.resolve_precision(cfg)
    total_steps = _total_steps(cfg, plan)
    args = _training_args(cfg, paths.out, total_steps, precision, world_size)
    rank = _check_launch(args, world_size)
    setup = model_setup.setup_model(cfg, model_config, par, args.device, rank, precision)
    if setup.cpu_allocator is not None and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        _advise_cpu_memory(cfg, paths.tokens, max_len, setup.cpu_allocator)

    # data loader, start-up probes, trainer
    collator = feed.make_collator(packed, max_len, tokenizer)
    loader = feed.make_loader(cfg, ds, plan, weights, collator, par.dp_size, setup.layout)
    probes = StartupProbes.for_setup(setup, packed and cfg.check_packing, collator, len(tokenizer))
    metrics = StepMetrics(paths.out.metrics, cfg.method, cfg.loss_norm, wall_offset, cfg.progress, probes)
    trainer = make_trainer(cfg, args, setup, tokenizer, collator, loader, metrics, callbacks, world_size)

    # train
    run_meta = _run_meta(cfg, plan, par, setup, max_len, precision, total_steps, paths.tokens, started, resume_from)
    _write_run_meta(paths.out, run_meta, rank, resume_from)
    trainer.train(resume_from_checkpoint=resume_from)
    final_dir = _save_final(cfg, trainer, setup, tokenizer, paths.out)
    return _finish(cfg, paths, trainer, metrics, probes, run_meta, final_dir, rank)


def run(cfg: TrainConfig, run_dir: str | Path | RunDir, *, callbacks: Sequence[Any] = ()) -> TrainResult:
    """The train stage: :func:`train` on ``<run>/tokens`` (unless ``cfg.tokens``) into ``<run>/train/<method>``
    (unless ``cfg.output_dir``), recorded in run.json as ``train.<method>`` by rank 0."""
    return train(cfg, run_dir=run_dir, callbacks=callbacks)


# ------------------------------------------------------------------------------------------------------------
# Paths and launch
# ------------------------------------------------------------------------------------------------------------


@dataclass
class TrainPaths:
    """Where a run reads its tokens and writes its folder; ``run`` is the run directory, if any."""

    tokens: Path
    out: TrainDir
    run: RunDir | None


def resolve_paths(cfg: TrainConfig, run_dir: str | Path | RunDir | None = None) -> TrainPaths:
    """``cfg.tokens`` and ``cfg.output_dir``, else those of the run directory (``run_dir``, or the deprecated
    ``TrainConfig(run=...)``)."""
    if run_dir is None:
        run_dir = cfg.run
    run = as_run_dir(run_dir) if run_dir else None
    tokens = Path(cfg.tokens) if cfg.tokens else (run.tokens if run else None)
    if tokens is None:
        raise ValueError(
            "no training data: pass --tokens (a `longalign tokenize` folder, a datasets.save_to_disk folder, a "
            ".parquet/.jsonl file of token ids or hf:NAME) or --run RUN"
        )
    out = Path(cfg.output_dir) if cfg.output_dir else (run.train(cfg.method) if run else None)
    if out is None:
        raise ValueError("no output folder: pass --output-dir DIR or --run RUN")
    return TrainPaths(tokens, TrainDir(out), run)


def _dist_env() -> tuple[int, int]:
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def _validate(cfg: TrainConfig) -> None:
    cfg.__post_init__()  # choices and ranges again, for a config changed after it was built
    if cfg.deepspeed and not Path(cfg.deepspeed).is_file():
        raise FileNotFoundError(
            f"DeepSpeed config {cfg.deepspeed} does not exist; use one of configs/deepspeed/"
            "zero2.json, zero3.json, zero3_offload.json"
        )


def _check_launch(args: Any, world_size: int) -> int:
    """This process's rank, once the TrainingArguments agree with the launcher on the devices and the world."""
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
    return args.process_index


def _total_steps(cfg: TrainConfig, plan: Plan) -> int:
    per_rank = len(plan.rank_batches(0))  # every rank runs the same count (fillers), rank 0 has the most
    steps_per_epoch = math.ceil(max(1, per_rank) / cfg.grad_accum)
    return cfg.max_steps if cfg.max_steps > 0 else int(math.ceil(cfg.epochs * steps_per_epoch))


def _training_args(cfg: TrainConfig, out: TrainDir, total_steps: int, precision: str, world_size: int):
    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    warmup = int(math.ceil(cfg.warmup_ratio * total_steps)) if cfg.warmup_ratio > 0 else 0
    kw: dict[str, Any] = dict(
        output_dir=str(out.checkpoints),
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
    if not torch.cuda.is_available():
        kw["use_cpu"] = True
    if "lr_scheduler_kwargs" in names and cfg.lr_scheduler == "cosine_with_min_lr":
        kw["lr_scheduler_kwargs"] = {"min_lr_rate": 0.1}
    return TrainingArguments(**{k: v for k, v in kw.items() if k in names})


def _advise_cpu_memory(cfg: TrainConfig, tokens: Path, max_len: int, setting: str) -> str | None:
    """Log the memory planner's advice for a CPU run whose predicted peak comes near the machine's available
    memory on an allocator that keeps freed blocks (:func:`longalign.train.memory.cpu_allocator_advice`)."""
    from .memory import cpu_allocator_advice, memory_available, plan_for_config

    try:
        plan = plan_for_config(dataclasses.replace(cfg, tokens=str(tokens)), device="cpu", max_len=max_len)
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:  # a model the planner cannot read
        log.debug("no memory plan for this run: %s", exc)
        return None
    available = memory_available()
    if available is not None:
        available += _resident_bytes()  # what this process already holds is part of the predicted peak
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    note = cpu_allocator_advice(plan.total, available, setting, processes)
    if note:
        log.warning("memory plan: %s", note)
    return note


def _resident_bytes() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return float(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0.0


# ------------------------------------------------------------------------------------------------------------
# The output folder: plan, resume, run_meta.json, the final model
# ------------------------------------------------------------------------------------------------------------


def _plan_record(cfg: TrainConfig, plan: Plan, rows: int, max_len: int, world_size: int) -> dict[str, Any]:
    """What ``plan.json`` holds: the plan and the settings it depends on (a resumed run must match it)."""
    sp_size = int(cfg.sp_size)
    return {
        "method": cfg.method,
        "algo": plan.algo,
        "max_len": max_len,
        "world_size": world_size,
        "grad_accum": cfg.grad_accum,
        "seed": cfg.seed,
        "rows": rows,
        **({"sp_size": sp_size} if sp_size > 1 else {}),
        "batches": plan.batches,
    }


def _find_resume(cfg: TrainConfig, out: TrainDir) -> str | None:
    """The checkpoint to resume from (``--resume``); refuses to start over a folder that holds checkpoints."""
    if cfg.resume and out.checkpoints.is_dir():
        last = get_last_checkpoint(str(out.checkpoints))
        return last if last else None
    if not cfg.resume and out.has_checkpoints():
        raise ValueError(
            f"{out.root} already holds checkpoints of an earlier run; pass --resume to continue it or "
            "choose another --output-dir (or delete the folder)"
        )
    return None


def _setup_output(cfg: TrainConfig, out: TrainDir, plan_record: dict[str, Any], rank: int) -> tuple[str | None, float]:
    """``(resume_from, wall_offset)``. A new run: rank 0 removes old metrics and writes ``plan.json``. A resumed
    one: its plan must match ``plan.json``, and rank 0 keeps the metrics up to the checkpoint's step (the wall
    clock goes on from the last one kept)."""
    resume_from = _find_resume(cfg, out)
    if resume_from is not None:
        saved = read_json(out.plan)
        if saved is not None and saved != json.loads(json.dumps(plan_record)):
            raise ValueError(
                f"{out.root}: the batch plan differs from the one the checkpoints were trained with "
                "(data, max_len, method, world size, sp_size, grad_accum or seed changed); resume with the "
                "same settings or start a new --output-dir"
            )
    if rank != 0:
        return resume_from, 0.0
    out.root.mkdir(parents=True, exist_ok=True)
    if resume_from is None:
        if out.metrics.exists():
            out.metrics.unlink()
        atomic_write_text(out.plan, json.dumps(plan_record, separators=(",", ":")) + "\n")
        return None, 0.0
    step = _checkpoint_step(Path(resume_from))
    kept = [r for r in read_jsonl(out.metrics) if int(r.get("step", 0)) <= step]
    atomic_write_text(out.metrics, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    log.info("resuming from %s (step %d)", resume_from, step)
    return resume_from, float(kept[-1].get("wall_s", 0.0)) if kept else 0.0


def _checkpoint_step(path: Path) -> int:
    state = read_json(path / "trainer_state.json", default={}) or {}
    return int(state.get("global_step", 0))


def _run_meta(
    cfg: TrainConfig,
    plan: Plan,
    par: Parallel,
    setup: ModelSetup,
    max_len: int,
    precision: str,
    total_steps: int,
    tokens_dir: Path,
    started: str,
    resume_from: str | None,
) -> dict[str, Any]:
    """What ``run_meta.json`` records before training; :func:`_finish` adds the end, the steps and the probes."""
    model = setup.model
    return {
        "method": cfg.method,
        "algo": plan.algo,
        "loss_norm": cfg.loss_norm,
        "loss_impl": cfg.loss_impl,
        "attention_backend": setup.backend,
        "model": model_display_name(cfg.model),
        "world_size": par.world_size,
        "sp_size": par.sp_size,
        "dp_size": par.dp_size,
        "grad_accum": cfg.grad_accum,
        "max_len": max_len,
        "rope_theta": model_setup.rope_base(model.config),
        "rope_scale": cfg.rope_scale,
        "max_position_embeddings": int(getattr(model.config, "max_position_embeddings", 0) or 0),
        "precision": precision,
        "deepspeed": cfg.deepspeed,
        "per_device_batch_size": 1 if cfg.method == "pack" else cfg.per_device_batch_size,
        "tokens": str(tokens_dir),
        "plan_stats": plan.stats,
        "total_steps": total_steps,
        "started": started,
        "finished": None,
        "steps": 0,
        "resumed_from": resume_from,
        "device": str(setup.device),
        "cpu_allocator": setup.cpu_allocator,
        "config": to_dict(cfg),
    }


def _write_run_meta(out: TrainDir, run_meta: dict[str, Any], rank: int, resume_from: str | None) -> None:
    """Rank 0 writes ``run_meta.json`` (a resumed run keeps the first start time)."""
    if rank != 0:
        return
    previous = read_json(out.meta) if resume_from else None
    if previous and previous.get("started"):
        run_meta["started"] = previous["started"]
    atomic_write_json(out.meta, run_meta)


def _save_final(cfg: TrainConfig, trainer: Any, setup: ModelSetup, tokenizer: Any, out: TrainDir) -> Path | None:
    """Save the trained model (and, on rank 0, the tokenizer) to ``final/`` with ``cfg.save_final``."""
    if not cfg.save_final:
        return None
    model = setup.model
    model.config.use_cache = True
    if setup.backend not in model_setup.PLAIN_BACKENDS:
        # a custom kernel name would not resolve for a plain from_pretrained elsewhere
        model.config._attn_implementation = "sdpa"
    trainer.save_model(str(out.final))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out.final))
    return out.final


def _finish(
    cfg: TrainConfig,
    paths: TrainPaths,
    trainer: Any,
    metrics: StepMetrics,
    probes: StartupProbes,
    run_meta: dict[str, Any],
    final_dir: Path | None,
    rank: int,
) -> TrainResult:
    """The result; rank 0 completes ``run_meta.json`` and records the stage in the run directory's run.json."""
    steps = int(trainer.state.global_step)
    last = metrics.last or {}
    run_meta.update(finished=time.strftime(TIME_FORMAT), steps=steps, packing_check=probes.result or None)
    result = TrainResult(
        output_dir=paths.out.root,
        metrics_path=paths.out.metrics,
        final_dir=final_dir,
        steps=steps,
        final_loss=last.get("loss"),
        attention_backend=run_meta["attention_backend"],
        run_meta=run_meta,
        rank=int(rank),
    )
    if trainer.is_world_process_zero():
        atomic_write_json(paths.out.meta, run_meta)
        if paths.run is not None:
            record(paths.run, f"train.{cfg.method}", cfg, result)
    return result
