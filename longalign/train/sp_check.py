"""Check that sequence-parallel training equals one process on the same plan; run under a launcher.

    torchrun --nproc_per_node 2 -m longalign.train.sp_check --out sp_check.json [--device cuda]

Every rank builds the same small random Llama twice (seeded): once with the sequence-parallel attention over
all ranks (SP = world size, one data-parallel rank, wrapped in DDP as in training) and once plain, run locally
on the whole packs (SP = 1). For each case -- a loss normalisation, a loss implementation, gradient
checkpointing on or off, a pack layout whose sequence borders fall exactly on the shard borders or inside a
shard, and the model's key/value heads (one case has fewer than ranks) -- one optimizer step of two packs
(gradient accumulation 2) runs both ways through the trainer's own pieces (plan weights, packed and sharding
collators, :func:`~longalign.train.forward.forward_loss`, the world-size factor, AdamW). Rank 0 writes, per
case, the relative difference of the step losses and the largest parameter difference after the step, plus a
negative control: the logits of the sequence-parallel model with the boundaries withheld from the core
attention (plain causal over the whole pack) against the plain model's, next to the same comparison with the
boundaries. The caller judges the numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

# lengths of the two packs of one optimizer step, for sp = 2 (a pack of 24 tokens has its shard border at 12)
LAYOUTS = {
    "aligned": [[12, 12], [6, 6, 8, 4]],  # sequence borders at 12 = the shard border (and 4-token shards fit)
    "unaligned": [[9, 8, 6], [5, 13, 3, 2]],  # shard border inside a sequence; 23 tokens -> padded to 24
}
CASES = [
    # (loss_norm, loss_impl, gradient checkpointing, layout, key/value heads of the 4-head model)
    ("sequence", "chunked", False, "aligned", 2),
    ("sequence", "chunked", False, "unaligned", 2),
    ("token", "chunked", False, "aligned", 2),
    ("token", "chunked", False, "unaligned", 2),
    ("sequence", "full", False, "unaligned", 2),
    ("token", "full", True, "aligned", 2),
    ("sequence", "chunked", True, "unaligned", 2),
    ("sequence", "chunked", False, "unaligned", 1),  # fewer key/value heads than SP ranks: copied per rank
]
ROOT = Path(__file__).resolve().parents[2]
MODEL_CONFIG = ROOT / "configs" / "models" / "tiny-llama"


def _rows(layout: list[list[int]], seed: int) -> tuple[list[dict[str, Any]], list[list[int]]]:
    rng = np.random.default_rng(seed)
    rows, batches = [], []
    for pack in layout:
        ids = []
        for n in pack:
            seq = rng.integers(10, 2000, size=n).tolist()
            lab = [-100] * (n // 3) + seq[n // 3 :]
            ids.append(len(rows))
            rows.append({"input_ids": seq, "labels": lab})
        batches.append(ids)
    return rows, batches


def _build(config: Any, attn: str, dtype: Any, device: Any, seed: int, checkpointing: bool, loss_impl: str):
    import torch
    from transformers import AutoModelForCausalLM

    from ..batching.head_loss import install_loss_head

    torch.manual_seed(seed)
    # from_config writes the attention name into the config: each model gets its own copy
    model = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=attn, dtype=dtype).to(device)
    model.config.use_cache = False
    head = install_loss_head(model) if loss_impl == "chunked" else None
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model, head


def _step(model, head, batches, collate, backend, world: int, shift: bool, device) -> float:
    """One optimizer step's forward/backward over ``batches``; returns this rank's share of the step loss."""
    import torch

    from .forward import forward_loss

    total = 0.0
    for feats in batches:
        batch = collate(feats)
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        loss, _ = forward_loss(model, batch, True, backend, head, 0, shift=shift)
        (loss * world).backward()
        total += float(loss.detach())
    return total


def _adamw(model) -> Any:
    import torch

    return torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)


def run_checks(
    device_kind: str = "cpu", core: str = "auto", dtype_name: str = "float64", cases: list[int] | None = None
) -> dict[str, Any]:
    """Run the cases of :data:`CASES` (all, or the ones at the indices ``cases``) on every rank; rank 0's dict
    holds the per-case results."""
    import torch
    import torch.distributed as dist
    from transformers import AutoConfig

    from ..batching import PackedCollator, Plan, count_targets, select_attention, token_weights
    from . import sequence_parallel as spm

    world, rank = dist.get_world_size(), dist.get_rank()
    if device_kind == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dtype = getattr(torch, dtype_name)
    layout = spm.SPLayout(world, world, rank)
    spm.configure(spm.new_sp_groups(layout), world)
    base = spm.default_core(select_attention(device, True, dtype), device, dtype) if core == "auto" else core
    sp_name = spm.register_sp_attention(base)
    base_config = AutoConfig.from_pretrained(MODEL_CONFIG)
    results: dict[str, Any] = {"world": world, "sp_size": world, "core": base, "dtype": dtype_name, "cases": []}
    packed = PackedCollator(64, weights_dtype=dtype)
    shard = spm.ShardCollator(packed, world, layout.sp_rank)
    for k, (loss_norm, loss_impl, ckpt, lay, kv_heads) in enumerate(CASES):
        if cases is not None and k not in cases:
            continue
        config = copy.deepcopy(base_config)
        config.num_key_value_heads = kv_heads
        rows, batch_ids = _rows(LAYOUTS[lay], seed=k)
        lengths = np.array([len(r["input_ids"]) for r in rows])
        plan = Plan(
            batches=batch_ids,
            stats={},
            lengths=lengths,
            method="pack",
            max_len=64,
            batch_size=1,
            world_size=1,
            grad_accum=len(batch_ids),
            algo=None,
            seed=0,
            overlong="truncate",
            truncated=np.zeros(0, dtype=np.int64),
        )
        n_target = [count_targets(r["labels"]) for r in rows]
        w = token_weights(plan, n_target, loss_norm, 1, len(batch_ids))
        feats = [[{**rows[i], "token_weight": float(w[i])} for i in b] for b in batch_ids]

        ref, ref_head = _build(config, base, dtype, device, 0, ckpt, loss_impl)
        ref_opt = _adamw(ref)
        ref_loss = _step(ref, ref_head, feats, packed, base, 1, True, device)
        before = {n: p.detach().clone() for n, p in ref.named_parameters()}
        ref_opt.step()

        sp_model, sp_head = _build(config, sp_name, dtype, device, 0, ckpt, loss_impl)
        ddp = torch.nn.parallel.DistributedDataParallel(
            sp_model, device_ids=[device.index] if device.type == "cuda" else None
        )
        sp_opt = _adamw(sp_model)
        local = _step(ddp, sp_head, feats, shard, sp_name, world, False, device)
        buf = torch.tensor([local], dtype=torch.float64, device=device)
        dist.all_reduce(buf)
        sp_loss = float(buf.item())
        sp_opt.step()
        ref_params = dict(ref.named_parameters())
        param_diff = max(
            float((p.detach() - ref_params[n].detach()).abs().max()) for n, p in sp_model.named_parameters()
        )
        moved = max(float((p.detach() - before[n]).abs().max()) for n, p in ref.named_parameters())
        del before

        # logits of the second pack with and without boundaries, sharded model vs plain model
        probe = feats[1]
        with torch.no_grad():
            full = packed(probe)
            ref.eval()
            sp_model.eval()
            ref_logits = ref(**_varlen_inputs(full, device)).logits[0]
            logits = {}
            for label, ctx in (("with_boundaries", _nullcontext()), ("without_boundaries", spm.boundaries_withheld())):
                part = shard(probe)
                with ctx:
                    out = sp_model(**_varlen_inputs(part, device)).logits.contiguous()
                gathered = [torch.empty_like(out) for _ in range(world)]
                dist.all_gather(gathered, out)
                whole = torch.cat(gathered, dim=1)[0, : ref_logits.shape[0]]
                logits[label] = float((whole - ref_logits).abs().max())
        results["cases"].append(
            {
                "case": k,
                "loss_norm": loss_norm,
                "loss_impl": loss_impl,
                "gradient_checkpointing": ckpt,
                "layout": lay,
                "kv_heads": kv_heads,
                "pack_lengths": LAYOUTS[lay],
                "loss_sp1": ref_loss,
                "loss_sp": sp_loss,
                "loss_rel_diff": abs(sp_loss - ref_loss) / max(abs(ref_loss), 1e-30),
                "param_max_diff": param_diff,
                "param_max_moved": moved,
                "logits_diff_with_boundaries": logits["with_boundaries"],
                "logits_diff_without_boundaries": logits["without_boundaries"],
            }
        )
        del ddp
    return results


def _varlen_inputs(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    """The trainer's keyword arguments for a packed batch with its boundaries, on ``device``."""
    from longalign.train.forward import model_inputs

    kwargs = model_inputs(batch, packed=True, backend="varlen")
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in kwargs.items()}


def torchrun_command(out: str | Path, port: int, *extra: str, nproc: int = 2) -> list[str]:
    """The command that runs this check in ``nproc`` processes (``torch.distributed.run``), writing ``out``."""
    import sys

    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(port),
        "-m",
        "longalign.train.sp_check",
        *extra,
        "--out",
        str(out),
    ]


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _parse_cases(parser: argparse.ArgumentParser, text: str) -> list[int] | None:
    if not text.strip():
        return None
    try:
        cases = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        parser.error(f"--cases {text!r}: give comma-separated integers, e.g. 0,1")
    bad = [k for k in cases if not 0 <= k < len(CASES)]
    if bad or not cases:
        parser.error(f"--cases {text!r}: indices must be in 0-{len(CASES) - 1}")
    return cases


def main(argv: list[str] | None = None) -> int:
    import torch
    import torch.distributed as dist

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file for rank 0's results")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--core", default="auto", help="core attention (default: longalign.batching.select_attention)")
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32", "bfloat16"))
    parser.add_argument(
        "--cases", default="", help=f"comma-separated indices of the cases to run (0-{len(CASES) - 1}; default all)"
    )
    args = parser.parse_args(argv)
    cases = _parse_cases(parser, args.cases)
    torch.set_num_threads(1)
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    try:
        results = run_checks(args.device, args.core, args.dtype, cases)
        if dist.get_rank() == 0:
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
