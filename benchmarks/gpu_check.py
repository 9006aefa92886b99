#!/usr/bin/env python
"""GPU check of the training path (``benchmarks/gpu_check.sh`` on a CUDA machine), and its CPU rehearsal.

    bash benchmarks/gpu_check.sh                        # a CUDA machine: $OUT/gpu_check.json (or benchmarks/results/)
    python benchmarks/gpu_check.py --device cpu --tiny  # the rehearsal: every part at tiny sizes on a CPU

Parts, in order of value, each with its own time budget (``--budgets``; on one H100 they add up to 7.5 minutes):

1. ``equality``: for every packed attention backend that loads on the device (CUDA: flash_attention_2
   when flash-attn is installed, longalign_varlen on Ampere or newer, longalign_flex compiled, sdpa with the
   dense block-diagonal mask, longalign_segment; CPU: longalign_flex eager, sdpa, longalign_segment), the
   logits of a pack of 4 sequences against the same sequences run alone, in fp32 and under bf16 autocast, on a
   small random Llama; a pack without boundaries is the negative control. Also the CUDA-only branches, on any
   device: the varlen kernel called through a model forward on meta tensors (its shape function checks the
   arguments), the compiled flex function built, and the keywords transformers' flash-attention path reads.
2. ``planner``: for the ~0.55B random Llama of the throughput part, the memory planner's predicted peak
   (``longalign train --memory-plan``) against the measured one (``torch.cuda.max_memory_allocated`` on CUDA,
   the peak resident set on a CPU) of two optimizer steps of ``longalign.train.train`` at each of
   ``--planner-lengths``; a bisection for the longest pack that trains (no out-of-memory error, the second
   step within ``--step-slice-s``), started at the planner's longest for the device's memory; then the
   comparison once more with gradient checkpointing at ``--planner-checkpointed-lengths``.
3. ``trainer``: a 3-step ``longalign.train.train`` run with packing (plan sampler, loss weights, packing and
   loss probes, metrics.jsonl).
4. ``throughput``: the ~0.55B random Llama, bf16 autocast, gradient checkpointing, fused AdamW; per method
   (naive and sort: padded batches; pack: one pack of ``--pack-tokens`` per step, with the auto-selected
   backend and with the dense mask) real tokens/s (first step excluded), padding and peak memory.
5. ``sp``: sequence parallelism over two processes (``longalign.train.sp_check``, float32) against one
   process: NCCL on two GPUs (skipped with a message on one), gloo on a CPU.

A part that fails records its error and traceback and the next part still runs; a part that runs past its
budget is stopped (SIGALRM) and keeps what it finished. The JSON file is rewritten after every unit of work,
so a run cut short leaves every finished piece behind. Everything is random-init: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import inspect
import io
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
T0 = time.perf_counter()
GIB = 1024**3

PARTS = ("equality", "planner", "trainer", "throughput", "sp")  # in order of value
BUDGETS_S = {"equality": 90, "planner": 150, "trainer": 45, "throughput": 105, "sp": 60}
# caps, not targets (the parts used about 7, 12, 1, 4 and 17 CPU-seconds, the last over two worker processes)
TINY_BUDGETS_S = {"equality": 40, "planner": 60, "trainer": 30, "throughput": 30, "sp": 60}
REQUIRED = {  # what every part that finished records (the same on CUDA and CPU)
    "equality": (
        "model",
        "pack_lengths",
        "auto_backend_bf16",
        "auto_backend_fp32",
        "cuda_only_checks",
        "backends",
        "results",
        "all_pass",
    ),
    "planner": (
        "model",
        "params_m",
        "settings",
        "memory_probe",
        "device_memory_gib",
        "memory_plan_cli",
        "points",
        "planner_longest",
        "bisection",
    ),
    "trainer": ("model", "max_len", "backend", "precision", "packing_check", "steps", "loss", "tokens_per_s"),
    "throughput": ("pack_tokens", "n_seqs", "real_tokens", "model", "batch_size_padded", "methods"),
    "sp": ("processes", "backend", "cases", "cores"),
}
SMALL = {"hidden": 512, "layers": 4, "heads": 8, "kv_heads": 4, "intermediate": 1024}
TINY = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128}
EQUALITY_LENGTHS = [37, 128, 300, 75]
TINY_EQUALITY_LENGTHS = [9, 32, 60, 19]
# the keywords transformers' variable-length attention reads, which PackedCollator provides
VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")
DENSE_BACKENDS = ("sdpa", "eager")
HALF_ONLY = ("longalign_varlen",)
DRY_VARLEN = "gpu_check_varlen_dry_run"
SP_CORES_ON_CUDA = ("longalign_flex", "longalign_segment")
SP_CORES_ON_CPU = ("longalign_segment",)  # torch has no flex-attention backward on a CPU


def elapsed() -> float:
    return time.perf_counter() - T0


def gib(x: float | None) -> float | None:
    return None if x is None else round(x / GIB, 3)


def error_record(exc: BaseException) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": traceback.format_exc()[-4000:]}


# ------------------------------------------------------------------------------------------------------------
# device, memory, deadlines
# ------------------------------------------------------------------------------------------------------------


def _proc_status_bytes(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


class Device:
    """What the parts need from the device. CUDA: torch.cuda's allocator statistics. CPU: the process's
    resident set (its peak, ``VmHWM``, reset before every measurement through /proc/self/clear_refs)."""

    def __init__(self, kind: str):
        import torch

        self.kind = kind
        self.torch = torch.device(kind)
        self.is_cuda = kind == "cuda"
        self.memory_probe = "torch.cuda.max_memory_allocated" if self.is_cuda else "peak resident set (VmHWM)"

    def sync(self) -> None:
        import torch

        if self.is_cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        import torch

        if self.is_cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.memory_probe = "peak resident set since the start (ru_maxrss; not resettable here)"

    def peak_bytes(self) -> float:
        import torch

        if self.is_cuda:
            return float(torch.cuda.max_memory_allocated())
        try:
            return _proc_status_bytes("VmHWM")
        except OSError:
            return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

    def reserved_peak_bytes(self) -> float | None:
        import torch

        return float(torch.cuda.max_memory_reserved()) if self.is_cuda else None

    def in_use_bytes(self) -> float:
        import torch

        if self.is_cuda:
            return float(torch.cuda.memory_allocated())
        try:
            return _proc_status_bytes("VmRSS")
        except OSError:
            return 0.0

    def release(self) -> None:
        import torch

        gc.collect()
        if self.is_cuda:
            torch.cuda.empty_cache()

    def total_bytes(self) -> float | None:
        import torch

        return float(torch.cuda.mem_get_info()[1]) if self.is_cuda else None

    def count(self) -> int:
        import torch

        return int(torch.cuda.device_count()) if self.is_cuda else 1

    def capability(self) -> tuple[int, int] | None:
        import torch

        return tuple(torch.cuda.get_device_capability()) if self.is_cuda else None

    def describe(self) -> dict:
        import platform

        import torch

        return {
            "kind": self.kind,
            "name": torch.cuda.get_device_name(0) if self.is_cuda else (platform.processor() or "cpu"),
            "count": self.count(),
            "capability": self.capability(),
            "memory_gib": gib(self.total_bytes()),
            "cpu_threads": torch.get_num_threads(),
        }


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    if isinstance(exc, (oom, MemoryError)):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "alloc_failed" in text


class PartTimeout(BaseException):
    """Raised in the main thread when a part runs past its budget (a BaseException: library code that catches
    Exception does not swallow it)."""


class Budget:
    """The time a part may take: ``seconds`` from its start, and never past ``hard_end`` (the check's deadline)."""

    def __init__(self, seconds: float, hard_end: float, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.start = clock()
        self.end = min(self.start + max(0.0, seconds), hard_end)
        self.seconds = max(0.0, self.end - self.start)

    def left(self) -> float:
        return self.end - self.clock()

    def allows(self, estimate: float) -> bool:
        return self.left() > estimate


@contextlib.contextmanager
def alarm_at(budget: Budget, name: str):
    """Raise :class:`PartTimeout` in the main thread when ``budget`` runs out (no-op where SIGALRM is missing)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise PartTimeout(f"part {name!r} ran past its budget of {budget.seconds:.0f} s and was stopped")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(0.05, budget.left()))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Context:
    """What a part gets: the arguments, the device, its budget, its own output dict and a way to save it."""

    def __init__(self, args: argparse.Namespace, device: Device, budget: Budget, out: dict, report: Report):
        self.args, self.device, self.budget, self.out, self.report = args, device, budget, out, report

    def save(self) -> None:
        self.report.write()


class Report:
    def __init__(self, path: Path):
        self.path = path
        self.data: dict = {"schema": 2, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "parts": {}}

    def write(self) -> None:
        self.data["elapsed_s"] = round(elapsed(), 1)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, self.path)

    def part(self, name: str, fn: Callable[[Context], Any], args, device: Device, budget: Budget) -> None:
        entry: dict = {"ok": None, "budget_s": round(budget.seconds, 1)}
        self.data["parts"][name] = entry
        print(f"== {name} (t={elapsed():.0f}s, budget {budget.seconds:.0f}s)", flush=True)
        t, cpu = time.perf_counter(), time.process_time()
        if budget.seconds <= 0:
            entry.update(ok=False, error="not started: the check's deadline (--deadline-s) had passed")
        else:
            try:
                with alarm_at(budget, name):
                    fn(Context(args, device, budget, entry, self))
                entry["ok"] = None if "skipped" in entry else entry["ok"] is not False
            except (Exception, PartTimeout) as exc:  # recorded; the next part still runs
                entry.update(ok=False, **error_record(exc))
                print(f"   failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            with contextlib.suppress(Exception):
                device.release()
        entry["seconds"] = round(time.perf_counter() - t, 1)
        entry["cpu_s"] = round(time.process_time() - cpu, 1)  # this process only (not the SP part's workers)
        self.write()


def check_report(data: dict) -> list[str]:
    """Problems with the JSON layout of a report (empty when every finished part has its fields)."""
    problems = [f"missing top-level {k!r}" for k in ("schema", "env", "device", "settings", "parts") if k not in data]
    for name, entry in data.get("parts", {}).items():
        for k in ("ok", "seconds", "budget_s"):
            if k not in entry:
                problems.append(f"part {name}: missing {k!r}")
        # a part that finished (passed, or failed its checks without an exception) has all its fields
        if entry.get("ok") is not None and "error" not in entry:
            problems += [f"part {name}: missing {k!r}" for k in REQUIRED.get(name, ()) if k not in entry]
    return problems


# ------------------------------------------------------------------------------------------------------------
# models, tokenizer, token folders
# ------------------------------------------------------------------------------------------------------------


def dims_record(dims: dict, vocab: int) -> dict:
    return {**dims, "vocab": vocab}


def llama_config(dims: dict, vocab: int, max_positions: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": dims["hidden"],
        "intermediate_size": dims["intermediate"],
        "num_hidden_layers": dims["layers"],
        "num_attention_heads": dims["heads"],
        "num_key_value_heads": dims["kv_heads"],
        "head_dim": dims["hidden"] // dims["heads"],
        "max_position_embeddings": max_positions,
        "tie_word_embeddings": False,
        "attention_dropout": 0.0,
        "use_cache": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }


def build_model(dims: dict, vocab: int, backend: str, seed: int = 0, max_positions: int = 65536):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    fields = {k: v for k, v in llama_config(dims, vocab, max_positions).items() if k not in ("architectures",)}
    fields.pop("model_type")
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(LlamaConfig(**fields), attn_implementation=backend, dtype=torch.float32)


def write_model(folder: Path, dims: dict, vocab: int, max_positions: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(llama_config(dims, vocab, max_positions), indent=1))
    return folder


_WORK: dict[str, Path] = {}


def work_dir(name: str) -> Path:
    if "root" not in _WORK:
        _WORK["root"] = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    folder = _WORK["root"] / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def tokenizer_dir(vocab: int) -> Path:
    """A word-level tokenizer with the model's vocabulary size, saved once per run (nothing is downloaded)."""
    folder = work_dir(f"tokenizer_{vocab}")
    if (folder / "tokenizer.json").is_file():
        return folder
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<s>": 1, "</s>": 2}
    words.update({f"t{i}": i for i in range(3, vocab)})
    tk = Tokenizer(WordLevel(words, unk_token="<pad>"))
    tk.pre_tokenizer = WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="</s>", eos_token="</s>", bos_token="<s>")
    fast.save_pretrained(str(folder))
    return folder


def write_tokens(folder: Path, lengths: list[int], vocab: int, max_len: int, seed: int) -> Path:
    """A tokens folder (the train stage's contract) of random ids, labels on the second half of each row."""
    import datasets
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = [rng.integers(3, vocab, size=n).tolist() for n in lengths]
    datasets.Dataset.from_dict(
        {
            "input_ids": ids,
            "labels": [[-100] * (len(s) // 2) + s[len(s) // 2 :] for s in ids],
            "length": [len(s) for s in ids],
            "n_target": [len(s) - len(s) // 2 for s in ids],
            "source": ["gpu_check"] * len(ids),
            "lang": [""] * len(ids),
            "task_type": [""] * len(ids),
        }
    ).save_to_disk(str(folder))
    meta = {"tokenizer": "gpu_check word-level", "vocab_size": vocab, "max_len": max_len, "eos_token_id": 2}
    (folder / "longalign_meta.json").write_text(json.dumps(meta))
    return folder


def long_tail(n: int, max_len: int, seed: int) -> list[int]:
    """The long-tail length mix of benchmarks/train_methods.py (same generator, same seed semantics)."""
    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    from train_methods import make_lengths

    return make_lengths(n, max_len, seed)


def forward_pack(model: Any, batch: dict, backend: str) -> Any:
    """The model on a collated pack, as training runs it: no attention mask, no cache, restarting position ids;
    the variable-length keywords for boundary-aware backends only."""
    from longalign.batching.attention import packed_forward

    keep = {k: v for k, v in batch.items() if not (backend in DENSE_BACKENDS and k in VARLEN_KEYS)}
    return packed_forward(model, keep)


def to_device(batch: dict, device: Any) -> dict:
    import torch

    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def autocast(device: Device, dtype: Any):
    import torch

    return torch.autocast(device.kind, dtype=dtype, enabled=dtype != torch.float32)


# ------------------------------------------------------------------------------------------------------------
# part 1: equality
# ------------------------------------------------------------------------------------------------------------


def small_dims(a) -> dict:
    return dict(TINY if a.tiny else SMALL)


def packed_backends(dev: Device) -> list[str]:
    from longalign.batching.attention import (
        FLEX,
        SEGMENT,
        VARLEN,
        flash_attn_available,
        register_attention,
        torch_varlen_available,
    )

    register_attention()
    names = []
    if dev.is_cuda:
        if flash_attn_available():
            names.append("flash_attention_2")
        if torch_varlen_available() and dev.capability()[0] >= 8:
            names.append(VARLEN)
    # flex last: on CUDA its first call per dtype compiles the kernel, the slow unit of this part
    return names + ["sdpa", SEGMENT, FLEX]


def compare_packed(dev: Device, a, backend: str, dtype: Any, pack: dict, seqs: list[list[int]]) -> dict:
    import torch

    model = build_model(small_dims(a), a.vocab, backend).to(dev.torch).eval()
    batch = to_device(pack, dev.torch)
    with torch.no_grad(), autocast(dev, dtype):
        packed = forward_pack(model, batch, backend).logits[0].float()
        sep = torch.cat(
            [model(input_ids=torch.tensor([s], device=dev.torch), use_cache=False).logits[0].float() for s in seqs]
        )
        leak = model(input_ids=batch["input_ids"], use_cache=False).logits[0].float()
    err, leak_err = float((packed - sep).abs().max()), float((leak - sep).abs().max())
    return {
        "max_abs_diff": err,
        "leak_control": leak_err,
        "scale": float(sep.abs().max()),
        "pass": err <= max(1e-5, 0.1 * leak_err),
    }


def guarded(fn: Callable[..., dict], *args: Any) -> dict:
    try:
        return {"ok": True, **fn(*args)}
    except Exception as exc:
        return {"ok": False, **error_record(exc)}


def check_varlen(a, pack: dict) -> dict:
    """torch's varlen kernel, reached through a real model forward: every layer's call of
    ``varlen_attention_forward`` runs on meta copies of its query/key/value (the kernel's shape function checks
    the arguments and the keywords), while the forward continues with the segment-aware kernel."""
    import torch

    from longalign.batching.attention import (
        segment_attention_forward,
        torch_varlen_available,
        varlen_attention_forward,
    )

    if not torch_varlen_available():
        return {"available": False, "note": f"torch {torch.__version__} has no torch.nn.attention.varlen"}
    from torch.nn.attention.varlen import varlen_attn
    from transformers import AttentionInterface

    calls: list[dict] = []

    def dry_run(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        q, k, v = (t.detach().to("meta") for t in (query, key, value))
        out, _ = varlen_attention_forward(module, q, k, v, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
        real, weights = segment_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        if tuple(out.shape) != tuple(real.shape) or out.dtype != real.dtype:
            raise ValueError(f"varlen output {tuple(out.shape)} {out.dtype} vs {tuple(real.shape)} {real.dtype}")
        calls.append(
            {
                "query": list(query.shape),
                "key": list(key.shape),
                "dtype": str(query.dtype).split(".")[-1],
                "keywords": sorted(x for x in kwargs if x in VARLEN_KEYS or x == "position_ids"),
            }
        )
        return real, weights

    AttentionInterface.register(DRY_VARLEN, dry_run)
    dims = small_dims(a)
    model = build_model(dims, a.vocab, DRY_VARLEN).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        forward_pack(model, pack, DRY_VARLEN)
    if len(calls) != dims["layers"]:
        raise ValueError(f"the dry run saw {len(calls)} attention calls, the model has {dims['layers']} layers")
    return {
        "available": True,
        "signature": str(inspect.signature(varlen_attn)),
        "layers_checked": len(calls),
        "first_call": calls[0],
        "how": "the model's forward on CPU, each attention call also through varlen_attention_forward on meta "
        "tensors (shape function only; the kernel runs on CUDA)",
    }


def check_flex_compiled() -> dict:
    """The CUDA branch of longalign_flex builds ``torch.compile(flex_attention)`` (compilation itself waits for the
    first CUDA call); the call's keywords are the eager ones the equality part runs."""
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    from longalign.batching.attention import flex_kernel

    kernel = flex_kernel(torch.device("cuda"))
    if kernel is flex_attention:
        raise ValueError("flex_kernel('cuda') returned the eager flex_attention, not a compiled one")
    return {
        "compiled_object": type(kernel).__name__,
        "signature": str(inspect.signature(flex_attention)),
        "how": "built for CUDA, not compiled (that needs the GPU); the call's keywords run eagerly in the "
        "longalign_flex results",
    }


def check_flash_attention(pack: dict) -> dict:
    """flash_attention_2 reads the pack boundaries from the keywords the collator provides."""
    from transformers import modeling_flash_attention_utils as fa
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from longalign.batching.attention import flash_attn_available

    params = inspect.signature(fa._flash_attention_forward).parameters
    missing = [k for k in VARLEN_KEYS if k not in params]
    if missing:
        raise ValueError(f"transformers' flash-attention path reads no {missing}: packed boundaries would be lost")
    if "flash_attention_2" not in ALL_ATTENTION_FUNCTIONS:
        raise ValueError("transformers registers no flash_attention_2")
    not_collated = [k for k in VARLEN_KEYS if k not in pack]
    if not_collated:
        raise ValueError(f"PackedCollator does not provide {not_collated}")
    return {"installed": flash_attn_available(), "keywords": list(VARLEN_KEYS)}


def cuda_only_checks(a, pack: dict) -> dict:
    return {
        "longalign_varlen": guarded(check_varlen, a, pack),
        "longalign_flex_compiled": guarded(check_flex_compiled),
        "flash_attention_2": guarded(check_flash_attention, pack),
    }


def part_equality(ctx: Context) -> None:
    import torch

    from longalign.batching import PackedCollator, select_attention

    a, dev, out = ctx.args, ctx.device, ctx.out
    lens = TINY_EQUALITY_LENGTHS if a.tiny else EQUALITY_LENGTHS
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, a.vocab, (n,), generator=gen).tolist() for n in lens]
    pack = PackedCollator(sum(lens))([{"input_ids": s, "labels": s, "token_weight": 1.0} for s in seqs])
    out["model"] = dims_record(small_dims(a), a.vocab)
    out["pack_lengths"] = lens
    out["auto_backend_bf16"] = select_attention(dev.torch, True, torch.bfloat16)
    out["auto_backend_fp32"] = select_attention(dev.torch, True, torch.float32)
    out["cuda_only_checks"] = cuda_only_checks(a, pack)
    for name, check in out["cuda_only_checks"].items():
        print(f"   {name}: {'ok' if check['ok'] else check['error']}", flush=True)
    out["backends"] = packed_backends(dev)
    results: dict = {}
    out["results"] = results
    ctx.save()
    last = 0.0
    for backend in out["backends"]:
        for dtype in (torch.float32, torch.bfloat16):
            key = f"{backend}/{str(dtype).split('.')[-1]}"
            if backend in HALF_ONLY and dtype == torch.float32:
                results[key] = {"skipped": "the kernel takes fp16/bf16 only"}
                continue
            if not ctx.budget.allows(last):
                results[key] = {"skipped": "part budget"}
                continue
            t = time.perf_counter()
            try:
                results[key] = compare_packed(dev, a, backend, dtype, pack, seqs)
            except Exception as exc:
                results[key] = error_record(exc)
            last = time.perf_counter() - t
            results[key]["seconds"] = round(last, 2)
            dev.release()
            print(f"   {key}: { ({k: v for k, v in results[key].items() if k != 'traceback'}) }", flush=True)
            ctx.save()
    ran = [r for r in results.values() if "max_abs_diff" in r]
    out["all_pass"] = bool(ran) and all(r["pass"] for r in ran)
    incomplete = [k for k, r in results.items() if "error" in r or r.get("skipped") == "part budget"]
    failed_checks = [k for k, c in out["cuda_only_checks"].items() if not c["ok"]]
    out["ok"] = out["all_pass"] and not incomplete and not failed_checks


# ------------------------------------------------------------------------------------------------------------
# part 2: planner
# ------------------------------------------------------------------------------------------------------------


def measure(
    run: Callable[[int], list[float]], n: int, memory: Any, *, slice_s: float, cap: float | None = None
) -> dict:
    """One probe: ``run(n)`` trains at ``n`` tokens per pack and returns its step times; ``memory`` (a
    :class:`Device`, or a fake with the same methods) measures the peak. The pack does not fit when the run
    raises an out-of-memory error, when its last step takes longer than ``slice_s`` seconds, or when the
    measured peak (less what was in use before) exceeds ``cap`` bytes (how a CPU stands in for a GPU's
    limit). Any other error propagates."""
    memory.release()
    before = memory.in_use_bytes()
    memory.reset_peak()
    t = time.perf_counter()
    oom = None
    try:
        steps = [float(s) for s in run(n)]
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        steps, oom = [], f"{type(exc).__name__}: {str(exc)[:300]}"
    seconds = time.perf_counter() - t
    peak = memory.peak_bytes()
    reserved = memory.reserved_peak_bytes()
    memory.release()
    if oom:
        fits, reason = False, "out_of_memory"
    elif not steps:
        fits, reason = False, "no_step"
    elif steps[-1] > slice_s:
        fits, reason = False, "time_slice"
    elif cap is not None and peak - before > cap:
        fits, reason = False, "memory_cap"
    else:
        fits, reason = True, None
    return {
        "max_len": int(n),
        "fits": fits,
        "reason": reason,
        "oom": oom,
        "step_s": [round(s, 3) for s in steps],
        "seconds": round(seconds, 2),
        "in_use_before_gib": gib(before),
        "peak_gib": gib(peak),
        "measured_gib": gib(max(0.0, peak - before)),
        "reserved_peak_gib": gib(reserved),
    }


def find_longest(
    probe: Callable[[int], dict],
    start: int,
    *,
    multiple: int,
    limit: int = 1 << 24,
    grow: float = 1.5,
    resolution: float = 0.05,
    max_probes: int = 8,
    time_left: Callable[[], float] = lambda: math.inf,
    on_probe: Callable[[dict], None] = lambda r: None,
    probes: list[dict] | None = None,
) -> dict:
    """Bisection for the longest ``n`` (a multiple of ``multiple``, at most ``limit``) for which ``probe(n)["fits"]``.

    Starts at ``start`` (the planner's longest), steps up or down by ``grow`` until one probe fits and one does
    not, then halves the bracket until it is within ``resolution`` of the longest fit (or one ``multiple``). Stops
    early after ``max_probes`` probes, or when ``time_left()`` is below the estimated time of the next probe
    (the slowest probe so far, scaled by length). Assumes that what fits at ``n`` fits below it."""

    def snap(x: float) -> int:
        return int(min(limit, max(multiple, (int(x) // multiple) * multiple)))

    probes = [] if probes is None else probes  # filled as the search goes (a caller may save it meanwhile)
    lo, hi = 0, None  # longest that fits, shortest that does not
    n = snap(start)
    stopped = None
    while True:
        if len(probes) >= max_probes:
            stopped = "max_probes"
            break
        estimate = max((p["seconds"] * max(1.0, n / p["max_len"]) for p in probes), default=0.0)
        if time_left() < estimate:
            stopped = "time"
            break
        r = dict(probe(n))
        r.setdefault("max_len", n)
        probes.append(r)
        on_probe(r)
        if r["fits"]:
            lo = max(lo, n)
        else:
            hi = n if hi is None else min(hi, n)
        if hi is None:  # everything fitted so far: go up
            if n >= limit:
                stopped = "limit"
                break
            n = max(snap(n * grow), n + multiple) if n + multiple <= limit else limit
        elif lo == 0:  # nothing fitted yet: go down
            if n <= multiple:
                stopped = "smallest_fails"
                break
            n = min(snap(n / grow), n - multiple)
        else:
            if hi - lo <= max(multiple, resolution * lo):
                stopped = "converged"
                break
            n = snap((lo + hi) / 2)
            if n <= lo:
                n = lo + multiple
            if n >= hi:
                stopped = "converged"
                break
    return {
        "start": snap(start),
        "longest_fit": lo,
        "shortest_fail": hi,
        "converged": stopped == "converged",
        "stopped": stopped,
        "probes": probes,
    }


def step_timer(device: Device):
    """A transformers callback that times each optimizer step (device synchronised at both ends)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self._t = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            device.sync()
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            device.sync()
            self.seconds.append(time.perf_counter() - self._t)

    return StepTimer()


def pack_lengths_for(n: int, seq_len: int, packs: int = 2) -> list[int]:
    """Sequence lengths that fill ``packs`` packs of exactly ``n`` tokens (sequences of ``seq_len``, one shorter)."""
    one = [seq_len] * (n // seq_len) + ([n % seq_len] if n % seq_len else [])
    return one * packs


def memory_plan_cli(tokens: Path, model: str, tokenizer: Path, n: int, memory: float, dev: Device, ckpt: bool) -> list:
    """What ``longalign train --memory-plan`` prints for the planner's configuration."""
    from longalign.cli import main as cli_main

    argv = [
        "train",
        "--tokens",
        str(tokens),
        "--model",
        model,
        "--tokenizer",
        str(tokenizer),
        "--max-len",
        str(n),
        "--gradient-checkpointing",
        str(ckpt).lower(),
        "--memory-plan",
        "--device-memory",
        f"{memory / GIB:.3f}GiB",
        "--plan-device",
        dev.kind,
    ]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli_main(argv)
    if rc != 0:
        raise RuntimeError(f"longalign {' '.join(argv)} exited with {rc}: {buf.getvalue()[-500:]}")
    return buf.getvalue().splitlines()


def part_planner(ctx: Context) -> None:
    from longalign.models import parameter_count
    from longalign.train import TrainConfig, train
    from longalign.train.memory import largest_for_config, parse_memory, plan_for_config

    a, dev, out = ctx.args, ctx.device, ctx.out
    if importlib.util.find_spec("datasets") is None:
        out["skipped"] = "datasets is not installed here (longalign train needs it)"
        return
    dims = big_dims(a)
    work = work_dir("planner")
    lengths = [int(x) for x in a.planner_lengths.split(",") if x.strip()]
    ckpt_lengths = [int(x) for x in a.planner_checkpointed_lengths.split(",") if x.strip()]
    model_dir = write_model(work / "model", dims, a.vocab, a.planner_max_positions)
    spec = f"random:{model_dir}"
    tok = tokenizer_dir(a.vocab)
    memory = parse_memory(a.device_memory) if a.device_memory else dev.total_bytes()
    if memory is None:
        raise ValueError("--device-memory is needed on a CPU (the memory the planner plans for)")
    out["model"] = dims_record(dims, a.vocab)
    out["params_m"] = round(parameter_count(llama_config(dims, a.vocab, 1)) / 1e6, 1)
    out["memory_probe"] = dev.memory_probe
    out["device_memory_gib"] = gib(memory)
    out["settings"] = {
        "method": "pack",
        "loss_impl": "chunked",
        "precision": "auto",
        "sequence_length": a.planner_seq_len,
        "steps_per_probe": 2,
        "time_slice_s": a.step_slice_s,
        "multiple": a.multiple,
        "bisection_gradient_checkpointing": False,
        "measured": "peak over the whole train() call less what was in use before it",
        "compared_with": "the plan's total less its runtime term (CUDA context / interpreter, not allocated memory)",
        "limit": "an out-of-memory error"
        if dev.is_cuda
        else "the measured peak above the device memory less the plan's runtime term (a CPU has no allocator "
        "limit to hit)",
    }

    def config_for(n: int, ckpt: bool) -> TrainConfig:
        tokens = work / f"tokens_{n}"
        if not tokens.is_dir():
            write_tokens(tokens, pack_lengths_for(n, a.planner_seq_len), a.vocab, n, a.seed)
        shutil.rmtree(work / "out", ignore_errors=True)
        return TrainConfig(
            tokens=str(tokens),
            output_dir=str(work / "out"),
            model=spec,
            tokenizer=str(tok),
            method="pack",
            max_len=n,
            grad_accum=1,
            max_steps=2,
            warmup_ratio=0.0,
            save_steps=0,
            save_final=False,
            progress=False,
            gradient_checkpointing=ckpt,
            seed=a.seed,
        )

    cache: dict[tuple[int, bool], dict] = {}

    def probe(n: int, ckpt: bool = False) -> dict:
        if (n, ckpt) in cache:
            return {**cache[n, ckpt], "cached": True}
        cfg = config_for(n, ckpt)
        plan = plan_for_config(cfg, device=dev.kind, device_memory=memory)
        runtime = plan.components.get("runtime", 0.0)
        timer = step_timer(dev)

        def run(_n: int) -> list[float]:
            result = train(cfg, callbacks=[timer])
            if result.steps < 2:
                raise RuntimeError(f"train() ran {result.steps} steps at max_len={_n}, expected 2")
            return timer.seconds

        r = measure(run, n, dev, slice_s=a.step_slice_s, cap=None if dev.is_cuda else memory - runtime)
        r["gradient_checkpointing"] = ckpt
        r["predicted_gib"] = gib(plan.total)
        r["predicted_without_runtime_gib"] = gib(plan.total - runtime)
        r["predicted_peak_moment"] = plan.settings.get("peak_moment")
        r["predicted_components_gib"] = {k: gib(v) for k, v in plan.components.items()}
        r["ratio_measured_to_predicted"] = (
            round(r["measured_gib"] / r["predicted_without_runtime_gib"], 3)
            if r["fits"] and r["predicted_without_runtime_gib"]
            else None
        )
        shutil.rmtree(work / f"tokens_{n}", ignore_errors=True)
        cache[n, ckpt] = r
        print(
            f"   {n:,} tokens{' (checkpointing)' if ckpt else ''}: predicted {r['predicted_without_runtime_gib']} GiB,"
            f" measured {r['measured_gib']} GiB, fits={r['fits']} {r['reason'] or ''} steps {r['step_s']}",
            flush=True,
        )
        return r

    first = config_for(lengths[0], False)
    if not dev.is_cuda:
        # the first train() of a process grows the resident set by the modules it imports: not measured
        t = time.perf_counter()
        train(first)
        out["warmup_s"] = round(time.perf_counter() - t, 2)
        first = config_for(lengths[0], False)
    out["memory_plan_cli"] = memory_plan_cli(Path(first.tokens), spec, tok, lengths[0], memory, dev, False)
    plan = plan_for_config(first, device=dev.kind, device_memory=memory)
    out["planner_longest"] = largest_for_config(first, plan, memory, multiple=a.multiple)
    points: list[dict] = []
    out["points"] = points
    ctx.save()

    def measure_points(series: list[int], ckpt: bool) -> None:
        for n in series:
            done = [p for p in points if "seconds" in p]
            estimate = max((p["seconds"] * max(1.0, n / p["max_len"]) for p in done), default=0.0)
            if not ctx.budget.allows(estimate):
                points.append({"max_len": n, "gradient_checkpointing": ckpt, "skipped": "part budget"})
                continue
            points.append(probe(n, ckpt))
            ctx.save()

    measure_points(lengths, False)
    tried: list[dict] = []
    out["bisection"] = {"probes": tried}
    out["bisection"] = find_longest(
        probe,
        out["planner_longest"],
        multiple=a.multiple,
        limit=a.planner_max_positions,
        resolution=a.resolution,
        max_probes=a.max_probes,
        time_left=ctx.budget.left,
        on_probe=lambda r: ctx.save(),
        probes=tried,
    )
    b = out["bisection"]
    b["time_slice_s"] = a.step_slice_s
    b["longest_fit_over_planner"] = (
        round(b["longest_fit"] / out["planner_longest"], 3) if out["planner_longest"] and b["longest_fit"] else None
    )
    measure_points(ckpt_lengths, True)
    out["ok"] = all("skipped" not in p for p in points) and bool(b["probes"])


# ------------------------------------------------------------------------------------------------------------
# part 3: trainer
# ------------------------------------------------------------------------------------------------------------


def part_trainer(ctx: Context) -> None:
    from longalign.rundir import read_jsonl
    from longalign.train import TrainConfig, train

    a, out = ctx.args, ctx.out
    if importlib.util.find_spec("datasets") is None:
        out["skipped"] = "datasets is not installed here"
        return
    work = work_dir("trainer")
    max_len = 256 if a.tiny else 4096
    dims = small_dims(a)
    lengths = long_tail(24 if a.tiny else 64, max_len, a.seed)
    tokens = write_tokens(work / "tokens", lengths, a.vocab, max_len, 1)
    model_dir = write_model(work / "model", dims, a.vocab, max(8192, max_len))
    out["model"] = dims_record(dims, a.vocab)
    out["max_len"] = max_len
    res = train(
        TrainConfig(
            tokens=str(tokens),
            output_dir=str(work / "out"),
            model=f"random:{model_dir}",
            tokenizer=str(tokenizer_dir(a.vocab)),
            method="pack",
            max_len=max_len,
            grad_accum=2,
            max_steps=3,
            learning_rate=1e-4,
            save_steps=0,
            save_final=False,
            progress=False,
            gradient_checkpointing=True,
            seed=a.seed,
        )
    )
    recs = read_jsonl(res.metrics_path)
    out.update(
        backend=res.attention_backend,
        precision=res.run_meta.get("precision"),
        device=res.run_meta.get("device"),
        packing_check=res.run_meta.get("packing_check"),
        steps=len(recs),
        loss=[r["loss"] for r in recs],
        tokens_per_s=[round(r["tokens_per_s"], 1) for r in recs],
    )
    out["ok"] = res.steps == 3 and len(recs) == 3 and all(math.isfinite(x) for x in out["loss"])


# ------------------------------------------------------------------------------------------------------------
# part 4: throughput
# ------------------------------------------------------------------------------------------------------------


def big_dims(a) -> dict:
    return {
        "hidden": a.hidden,
        "layers": a.layers,
        "heads": a.heads,
        "kv_heads": a.kv_heads,
        "intermediate": a.intermediate,
    }


def run_method(ctx: Context, method: str, backend: str, lengths: list[int]) -> dict:
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

    a, dev = ctx.args, ctx.device
    max_len = a.pack_tokens
    packed = method == "pack"
    plan = make_plan(lengths, method, max_len=max_len, batch_size=1 if packed else a.batch_size, seed=a.seed)
    gen = np.random.default_rng(a.seed)
    data = [gen.integers(3, a.vocab, size=min(n, max_len)).tolist() for n in lengths]
    n_target = np.array([count_targets([-100] * (len(d) // 2) + d[len(d) // 2 :]) for d in data])
    weights = token_weights(plan, n_target, "sequence")
    collator = PackedCollator(max_len) if packed else PaddedCollator(2)
    dev.release()
    dev.reset_peak()
    before = dev.in_use_bytes()
    model = build_model(big_dims(a), a.vocab, backend).to(dev.torch)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, betas=(0.9, 0.95), weight_decay=0.0, fused=True)
    n_params = parameter_count(model)
    times, reals, computed = [], [], []
    for batch_ids in plan.batches[: a.steps]:
        if times and not ctx.budget.allows(2 * max(times)):
            break
        feats = [
            {
                "input_ids": data[i],
                "labels": [-100] * (len(data[i]) // 2) + data[i][len(data[i]) // 2 :],
                "token_weight": float(weights[i]),
            }
            for i in batch_ids
        ]
        batch = to_device(collator(feats), dev.torch)
        dev.sync()
        t = time.perf_counter()
        with autocast(dev, torch.bfloat16):
            if packed:
                logits = forward_pack(model, batch, backend).logits
            else:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
                logits = logits.logits
        loss = weighted_causal_lm_loss(logits, batch["labels"], batch["loss_weights"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dev.sync()
        times.append(time.perf_counter() - t)
        reals.append(sum(len(data[i]) for i in batch_ids))
        computed.append(int(batch["input_ids"].numel()))
        del logits, loss, batch
    peak = dev.peak_bytes() - (0.0 if dev.is_cuda else before)
    del model, opt
    dev.release()
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
        "peak_mem_gib": gib(peak),
        "mean_step_s": round(secs / max(1, len(times[steady])), 3),
    }


def part_throughput(ctx: Context) -> None:
    import torch

    from longalign.batching import select_attention

    a, dev, out = ctx.args, ctx.device, ctx.out
    auto = select_attention(dev.torch, True, torch.bfloat16)
    lengths = long_tail(a.n_seqs, a.pack_tokens, a.seed)
    out.update(
        pack_tokens=a.pack_tokens,
        n_seqs=len(lengths),
        real_tokens=sum(min(n, a.pack_tokens) for n in lengths),
        model=dims_record(big_dims(a), a.vocab),
        batch_size_padded=a.batch_size,
        memory_probe=dev.memory_probe,
        methods={},
    )
    runs = [
        ("pack", "pack", auto),
        ("naive", "naive", "sdpa"),
        ("sort", "sort", "sdpa"),
        ("pack_dense", "pack", "sdpa"),
    ]
    last = 0.0
    for name, method, backend in runs:
        if not ctx.budget.allows(last):
            out["methods"][name] = {"skipped": "part budget"}
            continue
        t = time.perf_counter()
        try:
            out["methods"][name] = run_method(ctx, method, backend, lengths)
        except Exception as exc:
            out["methods"][name] = error_record(exc)
            dev.release()
        last = time.perf_counter() - t
        print(f"   {name}: { ({k: v for k, v in out['methods'][name].items() if k != 'traceback'}) }", flush=True)
        ctx.save()
    base = out["methods"].get("naive", {}).get("real_tokens_per_s")
    for r in out["methods"].values():
        if base and r.get("real_tokens_per_s"):
            r["speedup_vs_naive"] = round(r["real_tokens_per_s"] / base, 3)
    out["ok"] = all("real_tokens_per_s" in r for r in out["methods"].values())


# ------------------------------------------------------------------------------------------------------------
# part 5: sequence parallelism
# ------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_process(cmd: list[str], env: dict, timeout: float) -> tuple[int | None, str]:
    """Run ``cmd`` (a torchrun launcher) in its own process group. On a timeout or an interruption the launcher
    gets SIGTERM, which it passes on to its workers (they run in sessions of their own), then SIGKILL."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        text, _ = proc.communicate(timeout=max(1.0, timeout))
        return proc.returncode, text
    except BaseException:
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.communicate(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        raise


def part_sp(ctx: Context) -> None:
    """Sequence parallelism over two processes: NCCL on two GPUs (skipped with a message on fewer), gloo on a CPU."""
    from longalign.train.sp_check import torchrun_command

    a, dev, out = ctx.args, ctx.device, ctx.out
    if dev.is_cuda and dev.count() < 2:
        msg = f"sequence-parallel check skipped: it needs 2 GPUs (one process each), {dev.count()} visible"
        print(f"   {msg}", flush=True)
        out.update(skipped=msg, gpus=dev.count())
        return
    cores = SP_CORES_ON_CUDA if dev.is_cuda else SP_CORES_ON_CPU
    out.update(processes=2, backend="nccl" if dev.is_cuda else "gloo", cases=a.sp_cases or "all", cores={})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    if dev.is_cuda:
        env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "0,1")
    for core in cores:
        if not ctx.budget.allows(5):
            out["cores"][core] = {"ok": False, "skipped": "part budget"}
            continue
        result = work_dir("sp") / f"{core}.json"
        extra = ["--device", dev.kind, "--dtype", "float32", "--core", core]
        extra += ["--cases", a.sp_cases] if a.sp_cases else []
        cmd = torchrun_command(result, _free_port(), *extra)
        try:
            rc, text = run_process(cmd, env, ctx.budget.left())
        except subprocess.TimeoutExpired:
            out["cores"][core] = {"ok": False, "error": "part budget: the two processes were stopped"}
            continue
        if rc != 0 or not result.is_file():
            out["cores"][core] = {"ok": False, "error": f"exit code {rc}: {text[-2000:]}"}
            continue
        cases = json.loads(result.read_text())["cases"]
        out["cores"][core] = {
            "ok": bool(cases)
            and all(
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
        print(f"   {core}: ok={out['cores'][core]['ok']}", flush=True)
        ctx.save()
    out["ok"] = all(c.get("ok") for c in out["cores"].values())


PART_FUNCTIONS = {
    "equality": part_equality,
    "planner": part_planner,
    "trainer": part_trainer,
    "throughput": part_throughput,
    "sp": part_sp,
}


# ------------------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------------------

TINY_DEFAULTS = dict(
    vocab=1024,
    pack_tokens=512,
    n_seqs=16,
    steps=3,
    hidden=TINY["hidden"],
    layers=TINY["layers"],
    heads=TINY["heads"],
    kv_heads=TINY["kv_heads"],
    intermediate=TINY["intermediate"],
    planner_lengths="512,1024",
    planner_checkpointed_lengths="1024",
    planner_seq_len=64,
    planner_max_positions=1 << 16,
    multiple=128,
    max_probes=4,
    resolution=0.25,
    step_slice_s=30.0,
    device_memory="0.68GiB",
    sp_cases="0,1",
    deadline_s=300.0,
    threads=1,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (the check) or cpu (rehearsal)")
    p.add_argument("--tiny", action="store_true", help="tiny models and sizes (the CPU rehearsal's defaults)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated parts, run in this order")
    p.add_argument("--budgets", default="", help="per-part seconds, e.g. planner=200,throughput=90")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every part's budget")
    p.add_argument("--deadline-s", type=float, default=465.0, help="no part runs past this (whole check)")
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--pack-tokens", type=int, default=16384)
    p.add_argument("--n-seqs", type=int, default=96, help="long-tail sequences in the throughput data")
    p.add_argument("--steps", type=int, default=12, help="optimizer steps per method")
    p.add_argument("--batch-size", type=int, default=2, help="sequences per padded batch (naive, sort)")
    p.add_argument("--hidden", type=int, default=1536)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=4096)
    p.add_argument("--planner-lengths", default="16384,32768,49152", help="pack lengths of the planner comparison")
    p.add_argument("--planner-seq-len", type=int, default=4096, help="sequence length inside the planner's packs")
    p.add_argument(
        "--planner-checkpointed-lengths",
        default="16384,65536",
        help="pack lengths compared once more with gradient checkpointing (after the bisection; empty: none)",
    )
    p.add_argument("--planner-max-positions", type=int, default=1 << 22, help="longest pack the bisection tries")
    p.add_argument("--multiple", type=int, default=1024, help="pack lengths of the bisection are multiples of this")
    p.add_argument("--max-probes", type=int, default=8, help="most training runs of the bisection")
    p.add_argument("--resolution", type=float, default=0.05, help="bisection stops within this share of the longest")
    p.add_argument("--step-slice-s", type=float, default=30.0, help="a pack fits when its second step takes <= this")
    p.add_argument("--device-memory", default=None, help="memory the planner plans for (default: the GPU's)")
    p.add_argument("--sp-cases", default="", help="cases of longalign.train.sp_check (default all)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads of torch (default: torch's; 1 with --tiny: tiny ops "
        "run faster on one thread, above all on a busy machine)",
    )
    p.add_argument("--seed", type=int, default=0)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    first, _ = p.parse_known_args(argv)
    if first.tiny:
        tiny = dict(TINY_DEFAULTS)
        if first.device == "cuda":
            tiny.pop("device_memory")  # a GPU plans for its own memory
        p.set_defaults(**tiny)
    a = p.parse_args(argv)
    parts = [x.strip() for x in a.parts.split(",") if x.strip()]
    unknown = [x for x in parts if x not in PART_FUNCTIONS]
    if unknown:
        p.error(f"--parts: unknown {unknown}; choose from {', '.join(PARTS)}")
    a.parts = parts
    budgets = dict(TINY_BUDGETS_S if a.tiny else BUDGETS_S)
    for item in [x for x in a.budgets.split(",") if x.strip()]:
        name, _, value = item.partition("=")
        if name.strip() not in budgets:
            p.error(f"--budgets: unknown part {name.strip()!r}; write e.g. planner=200")
        try:
            budgets[name.strip()] = float(value)
        except ValueError:
            p.error(f"--budgets: {item!r} is not PART=SECONDS")
    a.budget_seconds = {k: v * a.budget_scale for k, v in budgets.items()}
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rep = Report(out)
    rep.data["settings"] = {
        k: v for k, v in vars(a).items() if k not in ("out", "budgets", "budget_scale", "budget_seconds")
    }
    rep.data["settings"]["budgets_s"] = a.budget_seconds
    try:
        import torch
        import transformers

        rep.data["env"] = {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "cuda": torch.version.cuda,
            "flash_attn": importlib.util.find_spec("flash_attn") is not None,
            "datasets": importlib.util.find_spec("datasets") is not None,
        }
    except Exception as exc:
        rep.data["env"] = {"error": repr(exc)}
        rep.data["device"] = None
        rep.write()
        return 1
    if a.device == "cuda" and not torch.cuda.is_available():
        rep.data["device"] = None
        rep.data["error"] = "no CUDA device (for the CPU rehearsal: --device cpu --tiny)"
        rep.write()
        print(rep.data["error"], flush=True)
        return 1
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = Device(a.device)
    rep.data["device"] = dev.describe()
    rep.write()
    hard_end = T0 + a.deadline_s
    for name in a.parts:
        budget = Budget(a.budget_seconds[name], hard_end)
        rep.part(name, PART_FUNCTIONS[name], a, dev, budget)
    rep.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    rep.data["summary"] = {k: v.get("ok") for k, v in rep.data["parts"].items()}
    rep.data["schema_problems"] = check_report(rep.data)
    rep.write()
    if "root" in _WORK:
        shutil.rmtree(_WORK["root"], ignore_errors=True)
    print(json.dumps(rep.data["summary"]), f"{elapsed():.0f}s", flush=True)
    failed = [k for k, ok in rep.data["summary"].items() if ok is False]
    return 1 if failed or rep.data["schema_problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
