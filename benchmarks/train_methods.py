#!/usr/bin/env python
"""Training throughput of naive, sorted and packed batching through ``longalign.train`` (CPU).

One run measures, side by side on the same sequences (one epoch each, every run in its own subprocess):

  naive        random batches of 4, padded to the longest            (attention: sdpa, padding mask)
  sort         length-sorted batches of 4, batch order shuffled      (sdpa)
  pack         first-fit-decreasing packs of max_len tokens, loss weighting, segment-aware attention
  pack_dense   the same packs through transformers' dense block-diagonal mask (sdpa)

Model: random-init Llama, hidden 256, 4 layers, vocab 49,152, fp32 (the architecture of the peer harness
in ../shared/bench/peer_train_bench.py, so the numbers compare). Data: seeded long-tail mix at the
scale of --max-len (default 2,048: 90% log-normal around 75 tokens clipped to [32, 512], 10% uniform 512-2,048;
labels on the
second half of each sequence), the shortest prefix of it holding ``--budget`` real tokens.

Reported per method: real tokens/s over the whole epoch (wall clock) and per CPU-second of the training
process (user + system time between the start and the end of the Trainer loop; on a shared machine this
is the load-robust number, wall-clock ratios move with what else runs), time to epoch, padding, and the
speed-up over naive; next to it the prediction of ``longalign.batching.simulate`` for
one device (a) with FLOP-derived cost coefficients and (b) with coefficients fitted to the measured step
times of all runs. JSON goes to benchmarks/results/train_methods.json.

    python benchmarks/train_methods.py                    # ~5-8 minutes on 2 busy cores
    python benchmarks/train_methods.py --budget 4000 --methods naive,pack   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VOCAB = 49152
MODEL = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": VOCAB,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 16384,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
    "use_cache": False,
}
METHODS = {
    "naive": {"method": "naive", "per_device_batch_size": 4},
    "sort": {"method": "sort", "per_device_batch_size": 4},
    "pack": {"method": "pack", "attn_implementation": "auto"},
    "pack_dense": {"method": "pack", "attn_implementation": "sdpa"},
}


def make_lengths(n: int, max_len: int, seed: int):
    import numpy as np

    s = max_len / 8192.0
    rng = np.random.default_rng(seed)
    n_long = int(round(0.1 * n))
    short = np.clip(np.round(np.exp(rng.normal(np.log(300 * s), 0.9, size=n - n_long))), 32, int(2048 * s))
    long_ = rng.integers(int(2048 * s), int(8192 * s) + 1, size=n_long)
    lengths = np.concatenate([short.astype(int), long_])
    rng.shuffle(lengths)
    return [int(x) for x in lengths]


def build_inputs(folder: Path, a) -> dict:
    import datasets
    import numpy as np

    lengths = make_lengths(2000, a.max_len, a.seed)
    chosen, total = [], 0
    for n in lengths:
        if total >= a.budget:
            break
        chosen.append(n)
        total += n
    rng = np.random.default_rng(a.seed + 1)
    ids, labels = [], []
    for n in chosen:
        seq = rng.integers(3, VOCAB, size=n).astype(np.int32).tolist()
        ids.append(seq)
        labels.append([-100] * (n // 2) + seq[n // 2 :])
    ds = datasets.Dataset.from_dict(
        {
            "input_ids": ids,
            "labels": labels,
            "length": chosen,
            "n_target": [n - n // 2 for n in chosen],
            "source": ["synthetic"] * len(chosen),
            "lang": [""] * len(chosen),
            "task_type": [""] * len(chosen),
        }
    )
    ds.save_to_disk(str(folder / "tokens"))
    meta = {
        "tokenizer": "smollm2",
        "vocab_size": VOCAB,
        "chat_format": "template",
        "max_len": a.max_len,
        "truncation": "right",
        "n_rows": len(chosen),
        "n_truncated": 0,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }
    (folder / "tokens" / "longalign_meta.json").write_text(json.dumps(meta))
    (folder / "model").mkdir(exist_ok=True)
    (folder / "model" / "config.json").write_text(json.dumps(MODEL))
    return {
        "n_sequences": len(chosen),
        "real_tokens": total,
        "lengths": chosen,
        "max_seq": max(chosen),
        "mean_seq": total / len(chosen),
    }


def child(name: str, folder: Path, out_json: Path, a) -> None:
    import torch

    from longalign.rundir import TrainDir, read_jsonl
    from longalign.train import TrainConfig, train

    torch.set_num_threads(a.threads)
    spec = METHODS[name]
    cfg = TrainConfig(
        tokens=str(folder / "tokens"),
        output_dir=str(folder / name),
        model=f"random:{folder / 'model'}",
        max_len=a.max_len,
        epochs=1.0,
        learning_rate=1e-4,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        save_steps=0,
        save_final=False,
        progress=False,
        seed=a.seed,
        precision="fp32",
        **spec,
    )
    from transformers import TrainerCallback

    class CpuClock(TrainerCallback):
        begin = end = None

        def on_train_begin(self, args, state, control, **kw):
            CpuClock.begin = time.process_time()

        def on_train_end(self, args, state, control, **kw):
            CpuClock.end = time.process_time()

    t0 = time.perf_counter()
    res = train(cfg, callbacks=[CpuClock()])
    cpu_s = CpuClock.end - CpuClock.begin
    wall = time.perf_counter() - t0
    recs = read_jsonl(res.metrics_path)
    real = sum(r["real_tokens"] for r in recs)
    padded = sum(r["padded_tokens"] for r in recs)
    train_s = recs[-1]["wall_s"]
    rest_s = sum(r["step_s"] for r in recs[1:])
    plan = json.loads(TrainDir(folder / name).plan.read_text())["batches"]
    out = {
        "method": name,
        "backend": res.attention_backend,
        "steps": len(recs),
        "micro_batches": len(plan),
        "real_tokens": real,
        "padded_tokens": padded,
        "padding_fraction": 1 - real / padded if padded else 0.0,
        "time_to_epoch_s": train_s,
        "call_s": wall,
        "tokens_per_s": real / train_s,
        "cpu_s": cpu_s,
        "tokens_per_cpu_s": real / cpu_s,
        "tokens_per_s_after_first_step": (real - recs[0]["real_tokens"]) / rest_s if rest_s else None,
        "step_seconds": [r["step_s"] for r in recs],
        "batches": plan,
        "final_loss": recs[-1]["loss"],
    }
    out_json.write_text(json.dumps(out))


def spawn(name: str, folder: Path, a) -> dict:
    out_json = folder / f"{name}.result.json"
    cmd = [
        sys.executable,
        __file__,
        "--child",
        name,
        "--folder",
        str(folder),
        "--budget",
        str(a.budget),
        "--max-len",
        str(a.max_len),
        "--seed",
        str(a.seed),
        "--threads",
        str(a.threads),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false"}
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=a.timeout)
    if proc.returncode != 0 or not out_json.is_file():
        return {"method": name, "error": (proc.stderr or "")[-2000:], "subprocess_s": time.perf_counter() - t}
    res = json.loads(out_json.read_text())
    res["subprocess_s"] = time.perf_counter() - t
    return res


def predictions(inputs: dict, runs: dict, a) -> dict:
    """Simulator speed-ups for one device: FLOP-based coefficients and coefficients fitted to the runs."""
    import numpy as np

    from longalign.batching import METHODS as BATCH_METHODS
    from longalign.batching import simulate
    from longalign.batching.simulate import CostModel, fit_cost_model, measurement

    lengths = np.asarray(inputs["lengths"])
    h, layers = MODEL["hidden_size"], MODEL["num_hidden_layers"]
    n_params = layers * (4 * h * h * 3 / 4 + 3 * h * MODEL["intermediate_size"]) + VOCAB * h  # + LM head
    flop = CostModel.for_transformer(n_params, layers, h, flops_per_second=20e9)
    records = []
    for name, r in runs.items():
        if "error" in r:
            continue
        packed = METHODS[name]["method"] == "pack"
        for batch, secs in list(zip(r["batches"], r["step_seconds"]))[1:]:  # one micro-batch per step
            records.append(
                measurement(
                    lengths[batch], secs, packed=packed, attention="dense" if name == "pack_dense" else "varlen"
                )
            )
    out = {}
    models = {"flop_based": flop}
    if len(records) >= 3:
        models["fitted_to_runs"] = fit_cost_model(records)
    for label, cost in models.items():
        sim = simulate(
            lengths,
            BATCH_METHODS,
            max_len=a.max_len,
            world_size=1,
            batch_size=4,
            grad_accum=1,
            pack_grad_accum=1,
            seed=a.seed,
            cost=cost,
            dense_pack=True,
        )
        out[label] = {
            "cost": cost.to_dict(),
            "speedup_vs_naive": {m: round(v["speedup_vs_naive"], 3) for m, v in sim["methods"].items()},
            "seconds": {m: round(v["total_seconds"], 2) for m, v in sim["methods"].items()},
        }
    return out


def main() -> int:
    from longalign.train import allocator

    allocator.restart_with_preload()  # the runs inherit the default CPU allocator (LD_PRELOAD), as longalign train
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--budget", type=int, default=6000, help="real tokens per epoch (same sequences for all)")
    p.add_argument("--max-len", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=int, default=400, help="seconds per method")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_methods.json"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, Path(a.folder), Path(a.folder) / f"{a.child}.result.json", a)
        return 0
    names = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="train_methods_") as tmp:
        folder = Path(tmp)
        inputs = build_inputs(folder, a)
        print(
            f"{inputs['n_sequences']} sequences, {inputs['real_tokens']} real tokens (mean "
            f"{inputs['mean_seq']:.0f}, max {inputs['max_seq']}), max_len {a.max_len}",
            flush=True,
        )
        runs = {}
        for name in names:
            runs[name] = r = spawn(name, folder, a)
            if "error" in r:
                print(f"{name:11s} FAILED: {r['error'][-300:]}", flush=True)
            else:
                print(
                    f"{name:11s} {r['tokens_per_s']:8.1f} tok/s  {r['tokens_per_cpu_s']:7.1f} tok/cpu-s  "
                    f"epoch {r['time_to_epoch_s']:7.1f}s  "
                    f"padding {r['padding_fraction']:.0%}  steps {r['steps']}  ({r['backend']})",
                    flush=True,
                )
        pred = predictions(inputs, runs, a)
    base = runs.get("naive", {}).get("tokens_per_s")
    base_cpu = runs.get("naive", {}).get("tokens_per_cpu_s")
    table = {}
    for name, r in runs.items():
        if "error" in r:
            table[name] = {"error": True}
            continue
        table[name] = {
            "tokens_per_s": round(r["tokens_per_s"], 1),
            "tokens_per_s_after_first_step": round(r["tokens_per_s_after_first_step"] or 0, 1),
            "time_to_epoch_s": round(r["time_to_epoch_s"], 1),
            "padding_fraction": round(r["padding_fraction"], 3),
            "speedup_vs_naive": round(r["tokens_per_s"] / base, 3) if base else None,
            "tokens_per_cpu_s": round(r["tokens_per_cpu_s"], 1),
            "speedup_vs_naive_cpu": round(r["tokens_per_cpu_s"] / base_cpu, 3) if base_cpu else None,
            "backend": r["backend"],
            "steps": r["steps"],
        }
    if (
        "pack" in table
        and "pack_dense" in table
        and "error" not in table["pack"]
        and "error" not in table["pack_dense"]
    ):
        table["pack"]["speedup_vs_pack_dense"] = round(
            runs["pack"]["tokens_per_s"] / runs["pack_dense"]["tokens_per_s"], 3
        )
        table["pack"]["speedup_vs_pack_dense_cpu"] = round(
            runs["pack"]["tokens_per_cpu_s"] / runs["pack_dense"]["tokens_per_cpu_s"], 3
        )
    print("\nmeasured speed-up vs naive (wall):", {k: v.get("speedup_vs_naive") for k, v in table.items()})
    print("measured speed-up vs naive (CPU time):", {k: v.get("speedup_vs_naive_cpu") for k, v in table.items()})
    for label, v in pred.items():
        print(f"simulated ({label}):", v["speedup_vs_naive"])
    import torch
    import transformers

    result = {
        "config": {
            "budget": a.budget,
            "max_len": a.max_len,
            "seed": a.seed,
            "threads": a.threads,
            "model": MODEL,
            "n_sequences": inputs["n_sequences"],
            "real_tokens": inputs["real_tokens"],
        },
        "measured": table,
        "simulated": pred,
        "runs": {k: {kk: vv for kk, vv in v.items() if kk not in ("batches",)} for k, v in runs.items()},
        "paper": "packing and sorted batching >= 2.2x faster than naive (8xA800, 64k)",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cpus": os.cpu_count(),
        },
        "total_s": round(time.perf_counter() - t0, 1),
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out} ({result['total_s']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
