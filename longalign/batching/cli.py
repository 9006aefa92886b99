"""``longalign batch plan|simulate``: plan batches over token lengths and simulate training time.

Lengths come from ``--tokens DIR`` (the ``length`` column of a tokens/ dataset), ``--lengths FILE`` (one
integer per line, or a .npy array) or ``--run DIR`` (its tokens/). With ``--run`` the results are written
to ``batching/<method>.json`` + ``batching/<method>.plan.json`` (plan) or ``batching/simulate.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longalign.config import add_config_args, build_config, option, to_dict

METHODS = ("naive", "sort", "pack")
ALGOS = ("nextfit", "ffd", "bfd")


@dataclass
class BatchPlanConfig:
    method: str = option("pack", help="naive: random padded batches; sort: length-sorted batches; "
                                      "pack: bin-packed sequences", choices=METHODS)
    algo: str = option("ffd", help="packing algorithm (method=pack): nextfit (input order), ffd (first-fit "
                                   "decreasing), bfd (best-fit decreasing)", choices=ALGOS)
    max_len: int = option(65536, help="longest padded sequence / largest pack, in tokens")
    batch_size: int = option(1, help="sequences per micro-batch per device (naive, sort)")
    world_size: int = option(1, help="data-parallel ranks")
    grad_accum: int = option(1, help="micro-batches per rank per optimizer step")
    seed: int = option(0, help="seed for shuffling batches / groups / packs")
    overlong: str = option("truncate", help="sequences longer than max-len: truncate, drop, or error",
                           choices=("truncate", "drop", "error"))


@dataclass
class SimulateConfig:
    methods: list[str] = option(default_factory=lambda: ["naive", "sort", "pack"],
                                help="methods to simulate (comma separated)")
    algo: str = option("ffd", help="packing algorithm for pack", choices=ALGOS)
    max_len: int = option(65536, help="longest padded sequence / largest pack, in tokens")
    batch_size: int = option(1, help="sequences per micro-batch per device (naive, sort)")
    world_size: int = option(8, help="devices (data-parallel ranks)")
    grad_accum: int = option(12, help="micro-batches per device per step (naive, sort)")
    pack_grad_accum: int = option(1, help="packs per device per step (pack)")
    seed: int = option(0, help="seed for shuffling")
    overlong: str = option("truncate", help="sequences longer than max-len: truncate, drop, or error",
                           choices=("truncate", "drop", "error"))
    sync: str = option("micro", help="micro: devices wait for each other every micro-batch (ZeRO-3); "
                                     "step: once per optimizer step", choices=("micro", "step"))
    per_token: float = option(2.8e-4, help="seconds per computed token (fwd+bwd, linear layers)")
    per_token_sq: float = option(5.24288e-9, help="seconds per unit of attention work (n^2)")
    per_batch: float = option(0.0, help="fixed seconds per micro-batch")


def read_lengths_file(path: str | Path):
    """One integer per line (blank lines and #-comments skipped) or a .npy array."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"lengths file {path} does not exist")
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{path}: expected a 1-D integer array, got {arr.dtype} of shape {arr.shape}")
        return arr.astype(np.int64)
    values = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                values.append(int(text))
            except ValueError:
                raise ValueError(f"{path}:{lineno}: {text!r} is not an integer; write one token count per "
                                 "line") from None
    return np.asarray(values, dtype=np.int64)


def read_token_lengths(tokens_dir: str | Path):
    """The ``length`` column of a tokens/ dataset (datasets.save_to_disk)."""
    import numpy as np
    from datasets import load_from_disk

    tokens_dir = Path(tokens_dir)
    if not tokens_dir.is_dir():
        raise FileNotFoundError(f"tokens folder {tokens_dir} does not exist; run `longalign tokenize` first")
    ds = load_from_disk(str(tokens_dir))
    if "length" not in ds.column_names:
        raise ValueError(f"{tokens_dir}: no 'length' column (columns: {ds.column_names}); re-run tokenize")
    return np.asarray(ds.data.column("length").to_numpy(), dtype=np.int64)


def _lengths(args: argparse.Namespace):
    given = [x for x in (args.tokens, args.lengths) if x]
    if len(given) > 1:
        raise ValueError("give either --tokens DIR or --lengths FILE, not both")
    if args.lengths:
        return read_lengths_file(args.lengths)
    if args.tokens:
        return read_token_lengths(args.tokens)
    if args.run:
        from longalign.rundir import RunDir

        return read_token_lengths(RunDir(args.run).tokens)
    raise ValueError("no lengths: give --tokens DIR, --lengths FILE or --run DIR")


def _add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens", metavar="DIR", help="tokens/ folder (datasets.save_to_disk) with a length column")
    p.add_argument("--lengths", metavar="FILE", help="token lengths: one integer per line, or a .npy array")
    p.add_argument("--run", metavar="DIR", help="run directory: read DIR/tokens and write DIR/batching/")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("batch", help="plan batches (naive | sort | pack) and simulate training time",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="batch_command", metavar="{plan,simulate}")
    plan = sub.add_parser("plan", help="make a batch plan and print its statistics")
    _add_inputs(plan)
    plan.add_argument("--plan-out", metavar="FILE", help='write {"batches": [[i, ...], ...]} to FILE')
    add_config_args(plan, BatchPlanConfig)
    plan.set_defaults(func=cmd_plan)
    sim = sub.add_parser("simulate", help="simulated training time and device idle time per method")
    _add_inputs(sim)
    add_config_args(sim, SimulateConfig)
    sim.set_defaults(func=cmd_simulate)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def cmd_plan(args: argparse.Namespace) -> int:
    from longalign.batching.plans import make_plan
    from longalign.rundir import RunDir

    cfg = build_config(BatchPlanConfig, args)
    lengths = _lengths(args)
    plan = make_plan(lengths, cfg.method, max_len=cfg.max_len, batch_size=cfg.batch_size,
                     world_size=cfg.world_size, grad_accum=cfg.grad_accum, algo=cfg.algo, seed=cfg.seed,
                     overlong=cfg.overlong)
    record = plan.stats_record()
    if args.plan_out:
        plan.save(plan_path=args.plan_out)
    if args.run:
        run = RunDir(args.run)
        plan.save(run.batch_stats(cfg.method), run.batch_plan(cfg.method))
        run.record_stage(f"batching.{cfg.method}", to_dict(cfg), stats=record)
    if args.json:
        print(json.dumps(record))
    else:
        _print_plan(record)
    return 0


def _print_plan(r: dict[str, Any]) -> None:
    algo = f"/{r['algo']}" if r.get("algo") else ""
    print(f"{r['method']}{algo}: {r['n_sequences']} sequences, {r['n_tokens']} tokens -> {r['n_batches']} "
          f"micro-batches (lower bound {r['lower_bound']}), {r['n_steps']} steps")
    print(f"  efficiency {r['efficiency']:.4f}  padding {r['padding_fraction']:.4f}  "
          f"attention cost ratio {r['attention_cost_ratio']:.4f}"
          + (f" (dense mask {r['attention_cost_ratio_dense']:.4f})" if "attention_cost_ratio_dense" in r else ""))
    print(f"  truncated {r['truncated']}  dropped {r['dropped']}  planned in {r['seconds']:.3f}s")


def cmd_simulate(args: argparse.Namespace) -> int:
    from longalign.batching.simulate import CostModel, simulate
    from longalign.rundir import RunDir, atomic_write_json

    cfg = build_config(SimulateConfig, args)
    for m in cfg.methods:
        if m not in METHODS:
            raise ValueError(f"methods: {m!r} is not accepted; use any of {', '.join(METHODS)}")
    lengths = _lengths(args)
    cost = CostModel(cfg.per_token, cfg.per_token_sq, cfg.per_batch)
    result = simulate(lengths, cfg.methods, max_len=cfg.max_len, devices=cfg.world_size,
                      batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, pack_grad_accum=cfg.pack_grad_accum,
                      algo=cfg.algo, seed=cfg.seed, overlong=cfg.overlong, cost=cost, sync=cfg.sync)
    if args.run:
        run = RunDir(args.run)
        atomic_write_json(run.batching / "simulate.json", result)
        run.record_stage("batching.simulate", to_dict(cfg))
    if args.json:
        print(json.dumps(result))
    else:
        c = result["config"]
        print(f"{c['n_sequences']} sequences, {c['devices']} devices, max_len {c['max_len']}, sync={c['sync']}")
        print(f"{'method':<12}{'hours':>10}{'idle':>8}{'steps':>8}{'vs naive':>10}")
        for name, r in result["methods"].items():
            speed = r.get("speedup_vs_naive")
            print(f"{name:<12}{r['total_seconds'] / 3600:>10.2f}{r['idle_fraction']:>8.1%}{r['n_steps']:>8}"
                  + (f"{speed:>9.2f}x" if speed is not None else ""))
    return 0


if __name__ == "__main__":  # pragma: no cover
    from longalign.cli import main

    sys.exit(main(["batch", *sys.argv[1:]]))
