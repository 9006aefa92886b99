#!/usr/bin/env python
"""Peak memory and speed of training steps, ``loss_impl`` full vs chunked, next to the memory planner (CPU).

Every case is one fresh subprocess that runs ``longalign.train.train`` for two optimizer steps of one pack each
(packs of 4 sequences of ``max_len / 4`` tokens, labels on the second half of every sequence, fp32, the
segment-aware attention, sequence loss weighting) and reports its peak resident memory (``ru_maxrss``: weights,
gradients, AdamW states, activations, logits, runtime, everything the process held at its worst moment) and
the real tokens/s of the second step. The planner (:func:`longalign.train.memory.plan_memory`) predicts each
case from the model config alone; its figure stands beside the measurement.

Models: the embedded SmolLM2-135M-Instruct (30 layers, hidden 576, vocab 49,152, 8k positions) at 2k / 4k / 8k
tokens, and a random-init Llama with the same vocabulary (hidden 256, 4 layers: the peer harness's model, where
the logits dominate) from 4k to 64k tokens. Each child runs under an address-space limit just below the free
memory, so a case that does not fit fails with an allocation error (recorded) instead of waking the OOM killer.

    python benchmarks/memory.py                       # all cases, ~30 minutes on 2 quiet cores
    python benchmarks/memory.py --quick               # three tiny cases, seconds (the test runs this)
    python benchmarks/memory.py --cases small:32768:full,small:32768:chunked

JSON goes to benchmarks/results/memory.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GIB = 1024**3
VOCAB = 49152
SMALL = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": VOCAB,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 131072,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
    "use_cache": False,
}
TINY = dict(SMALL, hidden_size=64, intermediate_size=128, num_hidden_layers=2, max_position_embeddings=4096)
# model:max_len:loss_impl[:ckpt]  (ckpt = gradient checkpointing on)
DEFAULT_CASES = [
    *[f"smollm2:{n}:{impl}:ckpt" for n in (2048, 4096, 8192) for impl in ("full", "chunked")],
    "smollm2:8192:full",
    "smollm2:8192:chunked",
    *[f"small:{n}:{impl}" for n in (4096, 16384, 32768) for impl in ("full", "chunked")],
    "small:65536:full",
    "small:65536:chunked",
]
QUICK_CASES = ["tiny:256:full", "tiny:256:chunked", "tiny:1024:chunked"]


def parse_case(text: str) -> dict:
    parts = text.split(":")
    if (
        len(parts) not in (3, 4)
        or parts[0] not in ("smollm2", "small", "tiny")
        or parts[2] not in ("full", "chunked")
        or (len(parts) == 4 and parts[3] != "ckpt")
    ):
        raise SystemExit(
            f"case {text!r}: write model:max_len:loss_impl[:ckpt] with model smollm2|small|tiny and "
            "loss_impl full|chunked"
        )
    return {
        "name": text,
        "model": parts[0],
        "max_len": int(parts[1]),
        "loss_impl": parts[2],
        "gradient_checkpointing": len(parts) == 4,
    }


def model_spec(case: dict, folder: Path) -> str:
    if case["model"] == "smollm2":
        return "smollm2"
    cfg = SMALL if case["model"] == "small" else TINY
    (folder / "cfg").mkdir(parents=True, exist_ok=True)
    (folder / "cfg" / "config.json").write_text(json.dumps(cfg))
    return f"random:{folder / 'cfg'}"


def make_tokens(folder: Path, max_len: int, seed: int = 0) -> Path:
    """Two packs' worth of sequences: 8 sequences of max_len/4 tokens, labels on the second half of each."""
    import numpy as np
    from datasets import Dataset

    from longalign.models import load_tokenizer

    tok = load_tokenizer(None)
    n = max_len // 4
    rng = np.random.default_rng(seed)
    ids = [rng.integers(10, VOCAB - 10, size=n).tolist() for _ in range(8)]
    labels = [[-100] * (n // 2) + s[n // 2 :] for s in ids]
    Dataset.from_dict(
        {
            "input_ids": ids,
            "labels": labels,
            "length": [n] * 8,
            "n_target": [sum(x != -100 for x in lab) for lab in labels],
            "source": ["bench"] * 8,
            "lang": ["en"] * 8,
            "task_type": ["general"] * 8,
        }
    ).save_to_disk(str(folder))
    meta = {
        "tokenizer": "smollm2",
        "vocab_size": len(tok),
        "chat_format": "template",
        "max_len": max_len,
        "truncation": "right",
        "n_rows": 8,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    (folder / "longalign_meta.json").write_text(json.dumps(meta))
    return folder


def child(case: dict, out: Path) -> None:
    import torch

    from longalign.rundir import read_jsonl
    from longalign.train import TrainConfig, train

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="la_mem_"))
    spec = model_spec(case, work)
    make_tokens(work / "tokens", case["max_len"])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cfg = TrainConfig(
        tokens=str(work / "tokens"),
        output_dir=str(work / "out"),
        model=spec,
        tokenizer="smollm2",
        method="pack",
        loss_norm="sequence",
        loss_impl=case["loss_impl"],
        max_len=case["max_len"],
        grad_accum=1,
        max_steps=2,
        learning_rate=1e-5,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        precision="fp32",
        gradient_checkpointing=case["gradient_checkpointing"],
        save_steps=0,
        save_final=False,
        progress=False,
        seed=0,
    )
    result = {"ok": False}
    in_force = None
    try:
        in_force = train(cfg).run_meta.get("cpu_allocator")
        rows = read_jsonl(work / "out" / "metrics.jsonl")
        last = rows[-1]
        result = {
            "ok": True,
            "steps": len(rows),
            "tokens_per_s": last["real_tokens"] / last["step_s"],
            "step_s": last["step_s"],
            "first_step_s": rows[0]["step_s"],
            "loss": last["loss"],
        }
    except (RuntimeError, MemoryError) as exc:  # an allocation beyond the address-space limit
        result = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["cpu_allocator"] = in_force
    result["rss_before_train_bytes"] = rss_before
    out.write_text(json.dumps(result))


def mem_available() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 8 * GIB


def run_case(case: dict, reserve_gib: float, timeout: int, cpu_allocator: str = "auto") -> dict:
    time.sleep(2)  # the previous child's pages are returned before MemAvailable is read
    limit = int(max(2 * GIB, mem_available() - reserve_gib * GIB))
    fd, out = tempfile.mkstemp(suffix=".json", prefix="la_mem_")
    os.close(fd)

    def set_limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    if cpu_allocator != "auto":  # glibc or lean, applied in the child (a preloaded one comes from this process)
        env["LONGALIGN_CPU_ALLOCATOR"] = cpu_allocator
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(case), "--child-out", out],
        preexec_fn=set_limit,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    try:
        res = json.loads(Path(out).read_text())
    except (OSError, json.JSONDecodeError):
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        res = {"ok": False, "error": f"child exited {proc.returncode} without a result: {tail[-600:]}"}
    os.unlink(out)
    res.update(
        case=case["name"], address_space_limit_gib=round(limit / GIB, 1), wall_s=round(time.perf_counter() - t0, 1)
    )
    return res


def predicted(case: dict) -> dict:
    from longalign.train.memory import plan_memory

    shape = {"smollm2": "smollm2", "small": SMALL, "tiny": TINY}[case["model"]]
    plan = plan_memory(
        shape,
        case["max_len"],
        precision="fp32",
        device="cpu",
        loss_impl=case["loss_impl"],
        gradient_checkpointing=case["gradient_checkpointing"],
        target_fraction=0.5,
    )
    return plan.to_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="", help="comma-separated model:max_len:loss_impl[:ckpt] (default: all)")
    ap.add_argument("--quick", action="store_true", help="three tiny cases (seconds)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory.json"))
    ap.add_argument("--reserve-gib", type=float, default=1.5, help="memory left free below the child's limit")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per case")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--cpu-allocator",
        default="auto",
        choices=("auto", "tcmalloc", "glibc", "lean", "jemalloc"),
        help="allocator of the training steps (longalign.train.allocator; the planner's runtime term is lean's)",
    )
    a = ap.parse_args()
    if a.child:
        child(json.loads(a.child), Path(a.child_out))
        return
    from longalign.train import allocator

    # the children inherit a preloaded allocator (LD_PRELOAD) from this process, as `longalign train` runs them
    allocator.restart_with_preload(a.cpu_allocator if a.cpu_allocator in allocator.PRELOADED else "auto")
    names = [c for c in a.cases.split(",") if c] or (QUICK_CASES if a.quick else DEFAULT_CASES)
    cases = [parse_case(c) for c in names]
    import torch

    results = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    for case in cases:
        res = run_case(case, a.reserve_gib, a.timeout, a.cpu_allocator)
        pred = predicted(case)
        res["predicted_gib"] = pred["total_gib"]
        res["predicted_components_gib"] = pred["components_gib"]
        if res.get("peak_rss_bytes"):
            res["measured_gib"] = round(res["peak_rss_bytes"] / GIB, 3)
            res["predicted_over_measured"] = round(pred["total_gib"] / res["measured_gib"], 3)
        results.append(res)
        print(
            f"{case['name']:<28} {'ok ' if res['ok'] else 'ERR'} measured {res.get('measured_gib', float('nan')):6.2f} "
            f"GiB  planner {pred['total_gib']:6.2f} GiB  tok/s {res.get('tokens_per_s') or 0:7.1f}  "
            f"({res['wall_s']} s){'  ' + res['error'][:90] if not res['ok'] else ''}",
            flush=True,
        )
    pairs = {}
    for r in results:
        model, n, impl, *ck = r["case"].split(":")
        pairs.setdefault((model, int(n), bool(ck)), {})[impl] = r
    ratios = []
    for (model, n, ck), d in sorted(pairs.items()):
        if "full" in d and "chunked" in d:
            f, c = d["full"], d["chunked"]
            row = {
                "model": model,
                "max_len": n,
                "gradient_checkpointing": ck,
                "full_ok": f["ok"],
                "chunked_ok": c["ok"],
            }
            if f["ok"] and c["ok"]:
                row["peak_chunked_over_full"] = round(c["measured_gib"] / f["measured_gib"], 3)
                row["tokens_per_s_chunked_over_full"] = round(c["tokens_per_s"] / f["tokens_per_s"], 3)
            ratios.append(row)
    doc = {
        "benchmark": "memory",
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
            "loadavg_at_start": os.getloadavg(),
        },
        "versions": {"torch": torch.__version__},
        "cases": results,
        "ratios": ratios,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=2))
    for row in ratios:
        print(row)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
