"""Packing algorithms on a long-tail length distribution, side by side in one run.

    python benchmarks/packing.py [--n 1000000] [--max-len 65536] [--out benchmarks/results/packing.json]

Lengths: 90% log-normal around 500 clipped to [16, 8192], 10% uniform 8k-64k (seeded). For each algorithm:
packs vs the lower bound ceil(tokens / max_len), fill (tokens / (packs x max_len)), the time of the packing
itself and of the whole ``make_plan`` (packing + shuffling/dealing + statistics + index lists), and peak traced
memory.
The compiled kernels are loaded (or compiled) once before timing; that cost is reported separately, as is
the plain-Python kernel on a 100,000-length sample (what numba buys).
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np

from longalign.batching import PACK_ALGOS, make_plan, pack_lengths


def long_tail(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    short = np.clip(rng.lognormal(np.log(500), 1.0, int(n * 0.9)), 16, 8192).astype(np.int64)
    long = rng.integers(8192, 65536 + 1, n - short.size)
    lengths = np.concatenate([short, long])
    rng.shuffle(lengths)
    return lengths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--max-len", type=int, default=65536)
    ap.add_argument("--world-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/packing.json")
    args = ap.parse_args()

    lengths = long_tail(args.n)
    n_tokens = int(lengths.sum())
    lower = -(-n_tokens // args.max_len)
    t = time.perf_counter()
    for algo in PACK_ALGOS:
        pack_lengths(lengths[:1000], args.max_len, algo)
    warmup = time.perf_counter() - t
    print(
        f"{args.n:,} lengths, {n_tokens:,} tokens, max_len {args.max_len:,}: lower bound {lower:,} packs "
        f"(kernel load/compile {warmup:.2f}s)"
    )

    results = {}
    for algo in PACK_ALGOS:
        pack_s = min(_timed(lambda algo=algo: pack_lengths(lengths, args.max_len, algo)) for _ in range(args.repeats))
        plan_s = min(
            _timed(
                lambda algo=algo: make_plan(
                    lengths, "pack", max_len=args.max_len, algo=algo, world_size=args.world_size
                )
            )
            for _ in range(args.repeats)
        )
        tracemalloc.start()
        plan = make_plan(lengths, "pack", max_len=args.max_len, algo=algo, world_size=args.world_size)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        tracemalloc.start()
        pack_lengths(lengths, args.max_len, algo)
        _, peak_pack = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        s = plan.stats
        results[algo] = {
            "packs": s["n_batches"],
            "lower_bound": s["lower_bound"],
            "packs_over_lower_bound": s["n_batches"] / s["lower_bound"],
            "fill": s["fill"],
            "pack_seconds": pack_s,
            "make_plan_seconds": plan_s,
            "peak_mb_pack": peak_pack / 2**20,
            "peak_mb_make_plan": peak / 2**20,
            "sequences_per_pack": s["sequences_per_pack"]["mean"],
            "attention_cost_dense": s["attention_cost_dense"],
        }
        del plan
        r = results[algo]
        print(
            f"{algo:8s} packs {r['packs']:>7,}  x{r['packs_over_lower_bound']:.5f} of bound  fill "
            f"{r['fill']:.5f}  pack {r['pack_seconds']:.3f}s  make_plan {r['make_plan_seconds']:.3f}s  "
            f"peak {r['peak_mb_pack']:.0f} MB (pack) / {r['peak_mb_make_plan']:.0f} MB (plan)"
        )

    sample = lengths[:100_000]
    py = {}
    for algo in ("ffd", "bfd"):
        py_s = _timed(lambda algo=algo: pack_lengths(sample, args.max_len, algo, compiled=False))
        jit_s = min(_timed(lambda algo=algo: pack_lengths(sample, args.max_len, algo)) for _ in range(args.repeats))
        py[algo] = {"python_seconds_100k": py_s, "compiled_seconds_100k": jit_s, "speedup": py_s / jit_s}
        print(f"{algo} on 100,000 lengths: plain Python {py_s:.2f}s vs compiled {jit_s:.3f}s ({py_s / jit_s:.0f}x)")
    ratio = results["ffd"]["fill"] / results["nextfit"]["fill"]
    print(
        f"ffd vs nextfit: {ratio:.3f}x fill, {results['nextfit']['packs'] / results['ffd']['packs']:.3f}x fewer packs"
    )
    out = {
        "config": {
            "n": args.n,
            "max_len": args.max_len,
            "world_size": args.world_size,
            "n_tokens": n_tokens,
            "lower_bound": lower,
            "kernel_warmup_seconds": warmup,
        },
        "algorithms": results,
        "python_vs_compiled": py,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
