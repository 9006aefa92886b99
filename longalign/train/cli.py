"""``longalign train``: fine-tune a model on token ids with naive, sorted or packed batching.

``--tokens`` takes a ``longalign tokenize`` folder or token ids from elsewhere: a ``datasets.save_to_disk``
folder, a .parquet or .jsonl file, or ``hf:NAME[:SPLIT]``, with an ``input_ids`` column and optionally
``labels`` (the input id on target tokens, -100 elsewhere; absent: every token is a target).

Multi-process runs use the usual launchers; each process reads its rank from the environment:

    torchrun --nproc_per_node 8 -m longalign.cli train --config configs/train/paper_64k_8gpu.yaml
    deepspeed --no_local_rank --num_gpus 8 --module longalign.cli train --config configs/train/paper_64k_8gpu.yaml
    accelerate launch --multi_gpu --num_processes 8 -m longalign.cli train --config ...

On a CPU-only machine (gloo) ``torchrun --nproc_per_node 2`` and ``accelerate launch --multi_gpu
--num_processes 2`` both run two processes; ``accelerate launch --cpu --num_processes 2`` silently runs a
single one (accelerate ignores --num_processes with --cpu unless it is given an MPI host file), so the
run trains with world size 1. ``run_meta.json`` records the world size that actually ran.
The ``deepspeed`` launcher needs ``--no_local_rank`` (the rank comes from the environment).
"""

from __future__ import annotations

import argparse
from typing import Any

from longalign import train
from longalign.config import add_config_args, add_run_arg, build_config, run_dir_of
from longalign.train import allocator
from longalign.train.config import TrainConfig


def register(subparsers: Any) -> None:
    """Add ``longalign train``."""
    parser = subparsers.add_parser(
        "train",
        help="fine-tune a model (naive / sort / pack batching, exact loss weighting)",
        description="Full-parameter SFT on transformers' Trainer. Data order comes from a batch plan "
        "(longalign.batching); the loss is normalised per sequence, per token or per pack exactly "
        "across gradient accumulation and data-parallel ranks. Writes OUTPUT/metrics.jsonl (one line "
        "per optimizer step), run_meta.json, checkpoints/ and final/.",
    )
    add_run_arg(
        parser,
        help="run directory: reads RUN/tokens and writes RUN/train/<method>/ and RUN/run.json "
        "(--tokens / --output-dir override either path)",
    )
    add_config_args(parser, TrainConfig)
    # launchers (deepspeed) pass the local rank as an argument; the environment carries it as well
    parser.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    plan = parser.add_argument_group("memory plan (prints the predicted peak per device and trains nothing)")
    plan.add_argument(
        "--memory-plan",
        action="store_true",
        help="print the predicted peak memory per device by component for this configuration, and "
        "the longest max_len that fits --device-memory; no training",
    )
    plan.add_argument(
        "--device-memory",
        default=None,
        metavar="SIZE",
        help="memory of one device, e.g. 80GB (H100), 24GB; with --memory-plan",
    )
    plan.add_argument(
        "--gpus", type=int, default=0, help="devices of the job for the plan (default: WORLD_SIZE, else 1)"
    )
    plan.add_argument(
        "--plan-device", choices=("cuda", "cpu"), default="cuda", help="plan for GPUs (default) or for this CPU"
    )
    plan.add_argument(
        "--target-fraction",
        type=float,
        default=None,
        help="share of tokens with a loss target (default: measured from the tokens folder, else 1)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> Any:
    cfg = build_config(TrainConfig, args)
    run_dir = run_dir_of(args)
    if args.memory_plan:
        return _memory_plan(cfg, args, run_dir)
    if getattr(args, "from_command_line", False):  # a preloaded CPU allocator needs a fresh process
        allocator.restart_with_preload(cfg.cpu_allocator)
    # on an error the rank exits at once and the launcher stops the others
    result = train.run(cfg, run_dir) if run_dir else train.train(cfg)
    distributed = _close_process_group()
    outcome = result if result.rank == 0 else result.exit_code  # rank 0 prints the summary
    # a rank of a distributed launch ends without the interpreter's teardown once its outcome is printed: a
    # communication library's leftover thread can abort a finished rank there (SIGABRT, "terminate called
    # without an active exception"), and the launcher would report a finished run as failed
    args.end_process = distributed and getattr(args, "from_command_line", False)
    return outcome


def _close_process_group() -> bool:
    """Wait for every rank (rank 0 may still be writing the model), then tear the process group down, so no
    rank exits while gloo/NCCL threads are still attached to it. True if there was a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
        return True
    return False


def _memory_plan(cfg: TrainConfig, args: argparse.Namespace, run_dir: str | None) -> int:
    import os

    from longalign.train.memory import largest_for_config, parse_memory, plan_for_config

    gpus = args.gpus or int(os.environ.get("WORLD_SIZE", "1"))
    memory = parse_memory(args.device_memory) if args.device_memory else None
    plan = plan_for_config(
        cfg,
        run_dir=run_dir,
        gpus=gpus,
        device=args.plan_device,
        device_memory=memory,
        target_fraction=args.target_fraction,
    )
    for line in plan.lines():
        print(line)
    if args.plan_device == "cpu":
        from longalign.train.allocator import decide, gpu_visible, requested
        from longalign.train.memory import cpu_allocator_advice, memory_available

        setting = decide(requested(cfg.cpu_allocator), gpu=gpu_visible()).setting
        available = memory if memory is not None else memory_available()
        note = cpu_allocator_advice(plan.total, available, setting, max(1, gpus))
        if note:
            print(f"  note: {note}")
        elif setting != "lean":
            print(f"  note: the plan is the lean CPU allocator's; the {setting} allocator keeps freed blocks for reuse")
    if memory is not None:
        longest = largest_for_config(cfg, plan, memory)
        print(
            f"longest max_len that fits {args.device_memory} per device: {longest:,} tokens"
            + ("" if cfg.method == "pack" else " per micro-batch (batch x padded length)")
        )
        positions = model_positions(cfg.model)
        if positions and longest > positions:
            print(
                f"note: the model has {positions:,} positions; training longer needs context extension "
                "(--rope-scale, --max-position-embeddings)"
            )
    return 0


def model_positions(spec: str) -> int:
    """``max_position_embeddings`` of a model spec's config (0 when it cannot be read)."""
    from longalign.models import model_positions as positions_of

    return positions_of(spec) or 0
