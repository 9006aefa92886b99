#!/usr/bin/env python
"""CPU training in bf16 against fp32 on the same run: tokens/s and the loss curve, side by side.

``--precision bf16`` on a CPU with native bf16 (AVX-512 BF16 or AMX; ``longalign.train.model_setup.cpu_bf16_support``)
trains under autocast: matrix products in bf16, float32 master weights, gradients and AdamW state (the GPU
path's arrangement). Each case of ``train_cases.py`` (default ``peer`` and ``demo``) runs in both precisions, every
run a fresh subprocess on the same data with the same seed, interleaved (fp32 bf16 fp32 bf16). Reported per case and
precision: tokens/s (the case's measure; means over rounds), tokens per CPU-second (the stable measure on a
shared machine), the loss of every step, and the largest relative difference between the two loss curves.

    python benchmarks/bf16_cpu.py                          # peer + demo (8 steps), 2 rounds: ~8 minutes quiet
    python benchmarks/bf16_cpu.py --cases demo --demo-steps 12 --demo-tokens runs/demo/tokens --rounds 1

JSON goes to benchmarks/results/bf16_cpu.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import train_cases  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def summarize(runs: list[dict], cases: list[str]) -> dict:
    out = {}
    for case in cases:
        rows = {}
        for p in PRECISIONS:
            mine = [r for r in runs if r.get("case") == case and r.get("precision") == p and r.get("ok")]
            if not mine:
                continue
            per_cpu = [r["tokens_per_cpu_s"] for r in mine if r.get("tokens_per_cpu_s")]
            rows[p] = {
                "tokens_per_s": [r["tokens_per_s"] for r in mine],
                "mean_tokens_per_s": sum(r["tokens_per_s"] for r in mine) / len(mine),
                "mean_tokens_per_cpu_s": sum(per_cpu) / len(per_cpu) if per_cpu else None,
                "losses": mine[0]["losses"],
                "token_mean_losses": mine[0]["token_mean_losses"],
                "peak_rss_gib": max(r["peak_rss_bytes"] for r in mine) / 1024**3,
            }
        if len(rows) == 2:
            a, b = rows["fp32"], rows["bf16"]
            rows["bf16_over_fp32"] = {
                "tokens_per_s": round(b["mean_tokens_per_s"] / a["mean_tokens_per_s"], 3),
                "tokens_per_cpu_s": round(b["mean_tokens_per_cpu_s"] / a["mean_tokens_per_cpu_s"], 3)
                if a["mean_tokens_per_cpu_s"] and b["mean_tokens_per_cpu_s"]
                else None,
                "max_relative_loss_difference": max(abs(x - y) / abs(x) for x, y in zip(a["losses"], b["losses"]) if x),
                "final_loss": [a["losses"][-1], b["losses"][-1]],
            }
        out[case] = rows
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="peer,demo", help=f"comma-separated, of {', '.join(train_cases.CASES)}")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--demo-steps", type=int, default=8, help="optimizer steps of the demo case (its loss curve)")
    ap.add_argument("--demo-tokens", default=None, help="train the demo case on this tokens folder (RUN/tokens)")
    ap.add_argument("--peer-budget", type=int, default=30000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads of each run (0 = torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bf16_cpu.json"))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        res = train_cases.measure(
            json.loads(a.child_data), seed=a.seed, demo_steps=a.demo_steps, threads=a.threads, precision=a.precision
        )
        res["in_force"] = res.pop("run_meta").get("precision")
        Path(a.child_out).write_text(json.dumps(res))
        return
    from longalign.train import allocator
    from longalign.train.model_setup import cpu_bf16_support

    allocator.restart_with_preload()  # the runs inherit the default CPU allocator (LD_PRELOAD) from this process

    support = cpu_bf16_support()
    if support is None:
        raise SystemExit("this CPU has no native bf16 (avx512_bf16 or amx_bf16): nothing to measure")
    cases = [c for c in a.cases.split(",") if c]
    command = "python benchmarks/bf16_cpu.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    print(f"command: {command}\nCPU bf16: {support}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="la_bf16_"))
    data = {
        c: train_cases.build(
            c, work / c, seed=a.seed, demo_steps=a.demo_steps, demo_tokens=a.demo_tokens, peer_budget=a.peer_budget
        )
        for c in cases
    }
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    started, load_start = time.strftime("%Y-%m-%dT%H:%M:%S"), os.getloadavg()
    runs = []
    for rnd in range(a.rounds):
        for case in cases:
            for p in PRECISIONS:
                args = [
                    "--child",
                    case,
                    "--precision",
                    p,
                    "--child-data",
                    json.dumps(data[case]),
                    "--seed",
                    str(a.seed),
                ]
                args += ["--demo-steps", str(a.demo_steps), "--threads", str(a.threads)]
                res = train_cases.spawn(__file__, args, env, a.timeout)
                res.update(case=case, precision=p, round=rnd)
                runs.append(res)
                if res["ok"]:
                    print(
                        f"round {rnd + 1} {case:<6} {p:<5} {res['tokens_per_s']:8.1f} tokens/s "
                        f"{res['tokens_per_cpu_s'] or 0:8.1f} per CPU-s  final loss {res['final_loss']:.4f}  "
                        f"({res['subprocess_s']} s)",
                        flush=True,
                    )
                else:
                    print(f"round {rnd + 1} {case:<6} {p:<5} FAILED {res['error'][-300:]}", flush=True)
    summary = summarize(runs, cases)
    import torch

    doc = {
        "benchmark": "bf16_cpu",
        "command": command,
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cpu_bf16": support,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_at_start": load_start,
            "loadavg_at_end": os.getloadavg(),
        },
        "versions": {"torch": torch.__version__},
        "data": data,
        "runs": runs,
        "summary": summary,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=2))
    for case, rows in summary.items():
        ratio = rows.get("bf16_over_fp32")
        for p in PRECISIONS:
            if p in rows:
                v = rows[p]
                print(
                    f"{case:<6} {p:<5} {v['mean_tokens_per_s']:8.1f} tokens/s {v['mean_tokens_per_cpu_s'] or 0:8.1f} "
                    f"per CPU-s  losses {' '.join(f'{x:.3f}' for x in v['losses'])}"
                )
        if ratio:
            print(
                f"{case:<6} bf16/fp32: {ratio['tokens_per_s']}x tokens/s, {ratio['tokens_per_cpu_s']}x per CPU-s, "
                f"largest loss difference {ratio['max_relative_loss_difference']:.2%}"
            )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
