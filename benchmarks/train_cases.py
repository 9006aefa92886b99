"""The CPU training cases that the speed benchmarks share (``allocator.py``, ``profile_step.py``, ``bf16_cpu.py``).

  demo   the demo's pack training: SmolLM2-135M-Instruct, packs of 1,536 tokens, fp32, sequence loss weighting,
         ``steps`` optimizer steps on sequences shaped like the demo's (per pack a document record of 900-1,400
         tokens whose answer of 60-160 tokens is the target, then short chats of ~150 tokens, the second half
         the target), or the tokens of a real demo run (``demo_tokens``)
  peer   the peer harness's packed run (``la_pack`` of ../shared/bench/peer_train_bench.py): random-init Llama,
         hidden 256, 4 layers, vocab 49,152, packs of 4,096 tokens, the long-tail mix's first 30k real tokens
         (labels on the second half of each sequence), one epoch, learning rate 1e-4 constant
  mem8k  benchmarks/memory.py's ``smollm2:8192:chunked:ckpt``: SmolLM2 at 8k tokens, chunked loss, gradient
         checkpointing, two steps

:func:`build` writes a case's data into a folder once; :func:`train_config` gives the run's
:class:`~longalign.train.TrainConfig` (keyword arguments override its fields).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CASES = ("demo", "peer", "mem8k")
DEMO_MAX_LEN = 1536
PEER_MAX_LEN = 4096


def _save_tokens(folder: Path, ids: list[list[int]], labels: list[list[int]], max_len: int, vocab: int) -> None:
    from datasets import Dataset

    Dataset.from_dict(
        {
            "input_ids": ids,
            "labels": labels,
            "length": [len(x) for x in ids],
            "n_target": [sum(t != -100 for t in lab[1:]) for lab in labels],
            "source": ["bench"] * len(ids),
            "lang": ["en"] * len(ids),
            "task_type": ["general"] * len(ids),
        }
    ).save_to_disk(str(folder))
    meta = {"tokenizer": "smollm2", "vocab_size": vocab, "max_len": max_len, "n_rows": len(ids)}
    (folder / "longalign_meta.json").write_text(json.dumps(meta))


def demo_lengths(steps: int, seed: int) -> list[tuple[int, int]]:
    """``(length, target tokens)`` of sequences shaped like the demo's training set, about one pack of 1,536
    tokens per step."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        n = int(rng.integers(900, 1401))
        out.append((n, int(rng.integers(60, 161))))
        room = DEMO_MAX_LEN - n
        while True:
            m = int(np.clip(round(float(np.exp(rng.normal(np.log(150), 0.6)))), 40, 500))
            if m > room:
                break
            out.append((m, m // 2))
            room -= m
    return out


def build(
    case: str,
    folder: Path,
    *,
    seed: int = 0,
    demo_steps: int = 4,
    demo_tokens: str | None = None,
    peer_budget: int = 30000,
) -> dict[str, Any]:
    """Write ``case``'s tokens (and model config) under ``folder``; returns what :func:`train_config` needs."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    if case == "demo":
        from longalign.models import load_tokenizer

        if demo_tokens:
            return {"case": case, "tokens": str(Path(demo_tokens).resolve()), "source": "demo run"}
        vocab = len(load_tokenizer("smollm2"))
        rng = np.random.default_rng(seed + 1)
        ids, labels = [], []
        for n, target in demo_lengths(demo_steps, seed):
            seq = rng.integers(10, vocab - 10, size=n).tolist()
            ids.append(seq)
            labels.append([-100] * (n - target) + seq[n - target :])
        _save_tokens(folder / "tokens", ids, labels, DEMO_MAX_LEN, vocab)
        return {"case": case, "tokens": str(folder / "tokens"), "source": "synthetic", "sequences": len(ids)}
    if case == "peer":
        from train_methods import MODEL, make_lengths

        chosen, total = [], 0
        for n in make_lengths(256, PEER_MAX_LEN, seed):  # the harness's mix: 256 sequences at the 4,096 scale
            if total >= peer_budget:
                break
            chosen.append(n)
            total += n
        rng = np.random.default_rng(seed + 1)
        ids = [rng.integers(3, MODEL["vocab_size"], size=n).tolist() for n in chosen]
        labels = [[-100] * (n // 2) + s[n // 2 :] for n, s in zip(chosen, ids)]
        _save_tokens(folder / "tokens", ids, labels, PEER_MAX_LEN, MODEL["vocab_size"])
        (folder / "model").mkdir(exist_ok=True)
        (folder / "model" / "config.json").write_text(json.dumps(MODEL))
        return {
            "case": case,
            "tokens": str(folder / "tokens"),
            "model": f"random:{folder / 'model'}",
            "real_tokens": total,
        }
    if case == "mem8k":
        import memory as memory_bench

        memory_bench.make_tokens(folder / "tokens", 8192)
        return {"case": case, "tokens": str(folder / "tokens")}
    raise SystemExit(f"unknown case {case!r}: choose from {', '.join(CASES)}")


def train_config(data: dict[str, Any], out: Path, *, seed: int = 0, demo_steps: int = 4, **overrides: Any):
    """The :class:`~longalign.train.TrainConfig` of a case built by :func:`build`, writing to ``out``."""
    from longalign.train import TrainConfig

    kw: dict[str, Any] = dict(
        tokens=data["tokens"],
        output_dir=str(out),
        method="pack",
        loss_norm="sequence",
        precision="fp32",
        grad_accum=1,
        warmup_ratio=0.0,
        save_steps=0,
        save_final=False,
        progress=False,
        seed=seed,
    )
    case = data["case"]
    if case == "demo":  # longalign demo's training stage (full profile), capped at demo_steps
        kw.update(model="smollm2", max_len=DEMO_MAX_LEN, learning_rate=2e-4, max_steps=demo_steps)
    elif case == "peer":  # the harness's la_pack
        kw.update(model=data["model"], max_len=PEER_MAX_LEN, learning_rate=1e-4, lr_scheduler="constant", epochs=1.0)
    else:  # memory.py's smollm2:8192:chunked:ckpt
        kw.update(
            model="smollm2",
            tokenizer="smollm2",
            max_len=8192,
            loss_impl="chunked",
            gradient_checkpointing=True,
            max_steps=2,
            learning_rate=1e-5,
            lr_scheduler="constant",
        )
    kw.update(overrides)
    return TrainConfig(**kw)


# the speed each case reports: the demo after its first step (start-up excluded), the peer case over its epoch
# (the harness's measure), the 8k case its second step (memory.py's)
SPEED = {"demo": "steady_tokens_per_s", "peer": "epoch_tokens_per_s", "mem8k": "last_step_tokens_per_s"}


def measure(data: dict[str, Any], *, seed: int = 0, demo_steps: int = 4, threads: int = 0, **overrides: Any):
    """Train ``data``'s case in this process and return its numbers: tokens/s (the case's measure in
    ``tokens_per_s``), tokens per CPU-second after the first step (user + system time of the process; the
    stable measure on a shared machine), the kernel's share of the CPU time, the loss of every step and the
    peak resident memory (``ru_maxrss``)."""
    import torch
    from transformers import TrainerCallback

    from longalign.rundir import read_jsonl
    from longalign.train import train

    if threads:
        torch.set_num_threads(threads)
    clock: list[tuple[float, float]] = []  # (user, system) CPU seconds at the start and at every step's end

    class CpuClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            clock.append(os.times()[:2])

        def on_step_end(self, args, state, control, **kw):
            clock.append(os.times()[:2])

    work = Path(tempfile.mkdtemp(prefix=f"la_case_{data['case']}_"))
    cfg = train_config(data, work / "out", seed=seed, demo_steps=demo_steps, **overrides)
    t0 = time.perf_counter()
    result = train(cfg, callbacks=[CpuClock()])
    call_s = time.perf_counter() - t0
    rows = read_jsonl(work / "out" / "metrics.jsonl")
    real = sum(r["real_tokens"] for r in rows)
    later = rows[1:]
    later_s = sum(r["step_s"] for r in later)
    steady_cpu = sum(clock[-1]) - sum(clock[1]) if len(clock) > 2 else None
    res = {
        "case": data["case"],
        "precision": cfg.precision,
        "steps": len(rows),
        "real_tokens": real,
        "train_s": rows[-1]["wall_s"],
        "call_s": call_s,
        "epoch_tokens_per_s": real / rows[-1]["wall_s"],
        "steady_tokens_per_s": sum(r["real_tokens"] for r in later) / later_s if later_s else None,
        "last_step_tokens_per_s": rows[-1]["real_tokens"] / rows[-1]["step_s"],
        "step_s": [round(r["step_s"], 3) for r in rows],
        "losses": [r["loss"] for r in rows],
        "token_mean_losses": [r["loss_token_mean"] for r in rows],
        "final_loss": rows[-1]["loss"],
        "threads": torch.get_num_threads(),
        "cpu_user_s": clock[-1][0] - clock[0][0],
        "cpu_sys_s": clock[-1][1] - clock[0][1],
        "steady_cpu_s": steady_cpu,
        "tokens_per_cpu_s": sum(r["real_tokens"] for r in later) / steady_cpu if steady_cpu else None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "run_meta": result.run_meta,
    }
    res["tokens_per_s"] = res[SPEED[data["case"]]]
    return res


def spawn(script: str, args: list[str], env: dict[str, str], timeout: int) -> dict[str, Any]:
    """Run ``script args --child-out FILE`` in a fresh process with ``env``; its JSON result with ``ok``, or
    ``ok: False`` and the end of its error output."""
    fd, out = tempfile.mkstemp(suffix=".json", prefix="la_case_")
    os.close(fd)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, script, *args, "--child-out", out],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        err, rc = proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        err, rc = f"{exc.stderr or ''}\ntimed out after {timeout} s", None
    try:
        res = json.loads(Path(out).read_text())
        res["ok"] = True
    except (OSError, json.JSONDecodeError):
        tail = "\n".join(str(err or "").strip().splitlines()[-6:])
        res = {"ok": False, "error": f"exit {rc}: {tail[-800:]}"}
    os.unlink(out)
    res["subprocess_s"] = round(time.perf_counter() - t0, 1)
    return res
