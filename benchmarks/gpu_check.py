#!/usr/bin/env python
"""GPU check of the training path (run by benchmarks/gpu_check.sh on a CUDA machine).

Parts, each guarded (a failure is recorded and the next part runs) and written to the JSON file as soon
as it finishes, so a run cut short still leaves every finished part behind:

1. ``equality``: for every packed attention backend that loads on this machine (longalign_varlen,
   longalign_flex, sdpa with transformers' dense block-diagonal mask, longalign_segment), the logits of a
   pack of 4 sequences against the same sequences run alone, in fp32 and bf16, on a small random Llama
   (head_dim 64); plus a pack without boundaries as the negative control.
2. ``throughput``: a random-init Llama of ~0.55B parameters (hidden 1536, 16 layers, vocab 49,152), bf16
   autocast, gradient checkpointing, fused AdamW. For each method (naive and sort: batches of 2 padded;
   pack: one pack of ``--pack-tokens`` per step, with the auto-selected backend and with the dense mask)
   a fixed number of optimizer steps over the same long-tail sequences: real tokens/s (first step, which
   includes kernel compilation, excluded), padding, peak GPU memory.
3. ``trainer``: when ``datasets`` is importable, a 3-step ``longalign.train.train`` run with packing on
   this GPU (the Trainer path end to end: plan sampler, loss weights, probe, metrics.jsonl).
4. ``sp``: only with 2 or more visible GPUs (skipped with a message on one): sequence parallelism over two
   GPUs (NCCL) against one process, ``longalign.train.sp_check`` in float32 with the ``longalign_flex`` and
   ``longalign_segment`` cores: step loss, parameters after one step, and logits with the boundaries withheld.

Everything is random-init (no weights travel); a global deadline (``--deadline-s``) skips parts that
would not finish in time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VOCAB = 49152
T0 = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - T0


class Report:
    def __init__(self, path: Path):
        self.path = path
        self.data: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "parts": {}}

    def write(self) -> None:
        self.data["elapsed_s"] = round(elapsed(), 1)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)

    def part(self, name: str, fn, *args) -> None:
        t = time.perf_counter()
        print(f"== {name} (t={elapsed():.0f}s)", flush=True)
        try:
            self.data["parts"][name] = {"ok": True, **fn(self, *args)}
        except Exception as exc:  # recorded, the next part still runs
            self.data["parts"][name] = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}"[:2000],
                "traceback": traceback.format_exc()[-4000:],
            }
            print(f"   failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        self.data["parts"][name]["seconds"] = round(time.perf_counter() - t, 1)
        self.write()


def llama(hidden: int, layers: int, heads: int, kv: int, inter: int, backend: str, seed: int = 0, max_pos=65536):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=max_pos,
        tie_word_embeddings=False,
        use_cache=False,
        pad_token_id=2,
        eos_token_id=2,
        bos_token_id=1,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM._from_config(cfg, attn_implementation=backend, dtype=torch.float32)


def packed_backends() -> list[str]:
    import torch

    from longalign.batching.attention import register_attention, torch_varlen_available

    register_attention()
    names = []
    if torch_varlen_available() and torch.cuda.get_device_capability()[0] >= 8:
        names.append("longalign_varlen")
    names += ["longalign_flex", "sdpa", "longalign_segment"]
    return names


# ------------------------------------------------------------------------------------------------ part 1
def part_equality(rep: Report, a) -> dict:
    import torch

    from longalign.batching import PackedCollator, select_attention
    from longalign.train.forward import model_inputs

    dev = torch.device("cuda")
    out = {
        "auto_backend_bf16": select_attention(dev, True, torch.bfloat16),
        "auto_backend_fp32": select_attention(dev, True, torch.float32),
        "results": {},
    }
    gen = torch.Generator().manual_seed(0)
    lens = [37, 128, 300, 75]
    seqs = [torch.randint(3, VOCAB, (n,), generator=gen).tolist() for n in lens]
    pack = PackedCollator(sum(lens))([{"input_ids": s, "labels": s, "token_weight": 1.0} for s in seqs])
    for backend in packed_backends():
        for dtype in (torch.float32, torch.bfloat16):
            key = f"{backend}/{str(dtype).split('.')[-1]}"
            try:
                model = llama(512, 4, 8, 4, 1024, backend).to(dev).eval()
                batch = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in pack.items()}
                with torch.no_grad(), torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                    packed = model(**model_inputs(batch, True, backend)).logits[0].float()
                    sep = torch.cat(
                        [
                            model(input_ids=torch.tensor([s], device=dev), use_cache=False).logits[0].float()
                            for s in seqs
                        ]
                    )
                    leak = model(input_ids=batch["input_ids"], use_cache=False).logits[0].float()
                err, leak_err = float((packed - sep).abs().max()), float((leak - sep).abs().max())
                out["results"][key] = {
                    "max_abs_diff": err,
                    "leak_control": leak_err,
                    "scale": float(sep.abs().max()),
                    "pass": err <= max(1e-5, 0.1 * leak_err),
                }
                del model
            except Exception as exc:
                out["results"][key] = {"error": f"{type(exc).__name__}: {exc}"[:600]}
            torch.cuda.empty_cache()
            print(f"   {key}: {out['results'][key]}", flush=True)
            rep.data["parts"]["equality"] = {"ok": None, **out}
            rep.write()
    out["all_pass"] = all(r.get("pass") for r in out["results"].values() if "error" not in r)
    return out


# ------------------------------------------------------------------------------------------------ part 2
def long_tail(n: int, max_len: int, seed: int) -> list[int]:
    """The long-tail length mix of benchmarks/train_methods.py (same generator, same seed semantics)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_methods import make_lengths

    return make_lengths(n, max_len, seed)


def run_method(name: str, method: str, backend: str, lengths: list[int], a) -> dict:
    import numpy as np
    import torch

    from longalign.batching import (
        PackedCollator,
        PaddedCollator,
        count_targets,
        make_plan,
        token_weights,
        weighted_causal_lm_loss,
    )
    from longalign.models import parameter_count
    from longalign.train.forward import model_inputs

    dev = torch.device("cuda")
    max_len = a.pack_tokens
    packed = method == "pack"
    plan = make_plan(lengths, method, max_len=max_len, batch_size=1 if packed else a.batch_size, seed=a.seed)
    gen = np.random.default_rng(a.seed)
    data = [gen.integers(3, VOCAB, size=min(n, max_len)).tolist() for n in lengths]
    n_target = np.array([count_targets([-100] * (len(d) // 2) + d[len(d) // 2 :]) for d in data])
    weights = token_weights(plan, n_target, "sequence")
    collator = PackedCollator(max_len) if packed else PaddedCollator(2)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = llama(a.hidden, a.layers, a.heads, a.kv_heads, a.intermediate, backend).to(dev)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, betas=(0.9, 0.95), weight_decay=0.0, fused=True)
    n_params = parameter_count(model)
    times, reals, computed = [], [], []
    deadline = T0 + a.deadline_s - 60
    for batch_ids in plan.batches[: a.steps]:
        if time.perf_counter() > deadline:
            break
        feats = [
            {
                "input_ids": data[i],
                "labels": [-100] * (len(data[i]) // 2) + data[i][len(data[i]) // 2 :],
                "token_weight": float(weights[i]),
            }
            for i in batch_ids
        ]
        batch = {kk: (v.to(dev, non_blocking=True) if torch.is_tensor(v) else v) for kk, v in collator(feats).items()}
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(**model_inputs(batch, packed, backend)).logits
        loss = weighted_causal_lm_loss(logits, batch["labels"], batch["loss_weights"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        reals.append(sum(len(data[i]) for i in batch_ids))
        computed.append(int(batch["input_ids"].numel()))
        del logits, loss, batch
    peak = torch.cuda.max_memory_allocated() / 2**30
    del model, opt
    torch.cuda.empty_cache()
    steady = slice(1, None) if len(times) > 1 else slice(0, None)
    secs = sum(times[steady])
    return {
        "method": method,
        "backend": backend,
        "params_m": round(n_params / 1e6, 1),
        "steps": len(times),
        "first_step_s": round(times[0], 2) if times else None,
        "real_tokens_per_s": round(sum(reals[steady]) / secs, 1) if secs else None,
        "padding_fraction": round(1 - sum(reals) / sum(computed), 4) if computed else None,
        "peak_mem_gib": round(peak, 2),
        "mean_step_s": round(secs / max(1, len(times[steady])), 3),
    }


def part_throughput(rep: Report, a) -> dict:
    import torch

    from longalign.batching import select_attention

    auto = select_attention(torch.device("cuda"), True, torch.bfloat16)
    lengths = long_tail(a.n_seqs, a.pack_tokens, a.seed)
    out = {
        "pack_tokens": a.pack_tokens,
        "n_seqs": len(lengths),
        "real_tokens": sum(min(n, a.pack_tokens) for n in lengths),
        "model": {
            "hidden": a.hidden,
            "layers": a.layers,
            "heads": a.heads,
            "kv_heads": a.kv_heads,
            "intermediate": a.intermediate,
            "vocab": VOCAB,
        },
        "batch_size_padded": a.batch_size,
        "methods": {},
    }
    runs = [
        ("pack", "pack", auto),
        ("naive", "naive", "sdpa"),
        ("sort", "sort", "sdpa"),
        ("pack_dense", "pack", "sdpa"),
    ]
    for name, method, backend in runs:
        if elapsed() > a.deadline_s - 90:
            out["methods"][name] = {"skipped": "deadline"}
            continue
        try:
            out["methods"][name] = run_method(name, method, backend, lengths, a)
        except Exception as exc:
            out["methods"][name] = {"error": f"{type(exc).__name__}: {exc}"[:800]}
            torch.cuda.empty_cache()
        print(f"   {name}: {out['methods'][name]}", flush=True)
        rep.data["parts"]["throughput"] = {"ok": None, **out}
        rep.write()
    base = out["methods"].get("naive", {}).get("real_tokens_per_s")
    for r in out["methods"].values():
        if base and r.get("real_tokens_per_s"):
            r["speedup_vs_naive"] = round(r["real_tokens_per_s"] / base, 3)
    return out


# ------------------------------------------------------------------------------------------------ part 3
def part_trainer(rep: Report, a) -> dict:
    import importlib.util
    import tempfile

    if importlib.util.find_spec("datasets") is None:
        return {"skipped": "datasets is not installed here"}
    import datasets
    import numpy as np

    from longalign.rundir import read_jsonl
    from longalign.train import TrainConfig, train

    tmp = Path(tempfile.mkdtemp(prefix="gpu_train_"))
    lengths = long_tail(64, 4096, a.seed)
    rng = np.random.default_rng(1)
    ids = [rng.integers(3, VOCAB, size=n).tolist() for n in lengths]
    labels = [[-100] * (len(s) // 2) + s[len(s) // 2 :] for s in ids]
    datasets.Dataset.from_dict(
        {
            "input_ids": ids,
            "labels": labels,
            "length": lengths,
            "n_target": [n - n // 2 for n in lengths],
            "source": ["x"] * len(ids),
            "lang": [""] * len(ids),
            "task_type": [""] * len(ids),
        }
    ).save_to_disk(str(tmp / "tokens"))
    (tmp / "tokens" / "longalign_meta.json").write_text(
        json.dumps({"tokenizer": "random", "vocab_size": VOCAB, "max_len": 4096, "eos_token_id": 2})
    )
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "vocab_size": VOCAB,
                "hidden_size": 512,
                "intermediate_size": 1024,
                "num_hidden_layers": 4,
                "num_attention_heads": 8,
                "num_key_value_heads": 4,
                "max_position_embeddings": 8192,
                "rope_theta": 10000.0,
                "eos_token_id": 2,
                "pad_token_id": 2,
            }
        )
    )
    tokenizer = make_tokenizer(tmp / "tokenizer")
    res = train(
        TrainConfig(
            tokens=str(tmp / "tokens"),
            output_dir=str(tmp / "out"),
            model=f"random:{tmp / 'model'}",
            tokenizer=str(tokenizer),
            method="pack",
            max_len=4096,
            grad_accum=2,
            max_steps=3,
            learning_rate=1e-4,
            save_steps=0,
            save_final=False,
            progress=False,
            gradient_checkpointing=True,
        )
    )
    recs = read_jsonl(res.metrics_path)
    return {
        "backend": res.attention_backend,
        "precision": res.run_meta.get("precision"),
        "packing_check": res.run_meta.get("packing_check"),
        "steps": len(recs),
        "loss": [r["loss"] for r in recs],
        "tokens_per_s": [round(r["tokens_per_s"], 1) for r in recs],
    }


# ------------------------------------------------------------------------------------------------ part 4
SP_CORES_ON_CUDA = ("longalign_flex", "longalign_segment")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def part_sp(rep: Report, a) -> dict:
    """Sequence parallelism over 2 GPUs (NCCL): ``longalign.train.sp_check`` per core attention, float32.

    Needs two visible GPUs (one process per GPU); with fewer the part is skipped with a message."""
    import subprocess
    import tempfile

    import torch

    n = torch.cuda.device_count()
    if n < 2:
        msg = f"sequence-parallel check skipped: it needs 2 GPUs (one process each), {n} visible"
        print(f"   {msg}", flush=True)
        return {"skipped": msg, "gpus": n}
    out: dict = {"gpus": n, "cores": {}}
    for core in SP_CORES_ON_CUDA:
        if elapsed() > a.deadline_s:
            out["cores"][core] = {"skipped": "deadline"}
            continue
        from longalign.train.sp_check import torchrun_command

        result = Path(tempfile.mkdtemp(prefix="gpu_sp_")) / "sp_check.json"
        cmd = torchrun_command(result, _free_port(), "--device", "cuda", "--dtype", "float32", "--core", core)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0,1")}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        if proc.returncode != 0 or not result.is_file():
            out["cores"][core] = {"ok": False, "error": (proc.stderr or proc.stdout)[-2000:]}
            continue
        data = json.loads(result.read_text())
        cases = data["cases"]
        out["cores"][core] = {
            "ok": all(
                c["loss_rel_diff"] < 1e-4
                and c["logits_diff_without_boundaries"] > 100 * c["logits_diff_with_boundaries"]
                for c in cases
            ),
            "worst_loss_rel_diff": max(c["loss_rel_diff"] for c in cases),
            "worst_param_diff": max(c["param_max_diff"] for c in cases),
            "worst_logits_diff_with_boundaries": max(c["logits_diff_with_boundaries"] for c in cases),
            "least_logits_diff_without_boundaries": min(c["logits_diff_without_boundaries"] for c in cases),
            "cases": cases,
        }
    return out


def make_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer with the model's vocabulary size (nothing is downloaded)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"t{i}": i for i in range(3, VOCAB)})
    tk = Tokenizer(WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="</s>", eos_token="</s>", bos_token="<s>")
    fast.save_pretrained(str(folder))
    return folder


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    p.add_argument("--parts", default="equality,throughput,trainer,sp")
    p.add_argument("--pack-tokens", type=int, default=16384)
    p.add_argument("--n-seqs", type=int, default=96, help="long-tail sequences in the throughput data")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per method")
    p.add_argument("--batch-size", type=int, default=2, help="sequences per padded batch (naive, sort)")
    p.add_argument("--hidden", type=int, default=1536)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deadline-s", type=float, default=440.0, help="stop starting new work after this")
    a = p.parse_args()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rep = Report(out)
    try:
        import torch
        import transformers

        rep.data["env"] = {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "flash_attn": importlib_has("flash_attn"),
            "datasets": importlib_has("datasets"),
        }
    except Exception as exc:
        rep.data["env"] = {"error": repr(exc)}
    rep.write()
    import torch

    if not torch.cuda.is_available():
        rep.data["error"] = "no CUDA device"
        rep.write()
        return 1
    parts = {"equality": part_equality, "throughput": part_throughput, "trainer": part_trainer, "sp": part_sp}
    for name in [x.strip() for x in a.parts.split(",") if x.strip()]:
        if elapsed() > a.deadline_s:
            rep.data["parts"][name] = {"ok": False, "skipped": "deadline"}
            rep.write()
            continue
        rep.part(name, parts[name], a)
    rep.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    rep.write()
    print(json.dumps({k: v.get("ok") for k, v in rep.data["parts"].items()}), flush=True)
    return 0


def importlib_has(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    sys.exit(main())
