#!/usr/bin/env python
"""Where the time of a packed training step goes on CPU: attention, MLP, loss head, optimizer, data.

Runs ``longalign.train.train`` on one of the shared cases (``train_cases.py``; default ``peer``, the peer
harness's packed run) and, after ``--warmup`` steps, times every part of ``--steps`` steps:

* forward and backward of each kind of module (embedding, attention, MLP, norms, the loss head), from module
  hooks (backward: from the gradient of a module's output being ready to the gradient of its input; the
  embedding's from the head's last layer to its weight's gradient), and the forward's remainder (residual
  adds, rotary tables, the decoder's glue);
* between the trainer's events: data (the next batch: plan sampler, collator) and bookkeeping, gradient
  clipping (the norm over all parameters), the optimizer step (AdamW), scheduler and ``zero_grad``;
* the top operators by self CPU time from ``torch.profiler`` over the same steps.

Wall seconds and CPU seconds (user + system of the whole process) are both reported; on a machine that other
jobs share, the CPU seconds are the stable measure of work (``--threads 1`` removes thread-pool waits).

    python benchmarks/profile_step.py                          # peer case, ~1 minute on 2 quiet cores
    python benchmarks/profile_step.py --case demo --steps 3
    python benchmarks/profile_step.py --threads 1 --no-ops     # phases only, no operator table

JSON goes to benchmarks/results/profile_step.json (``--out``).
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
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_cases  # noqa: E402


def _clock() -> tuple[float, float]:
    t = os.times()
    return time.perf_counter(), t[0] + t[1]


MODULE_KINDS = {  # class name -> part of the step
    "Embedding": "embedding",
    "LlamaAttention": "attention",
    "LlamaMLP": "mlp",
    "LlamaRMSNorm": "norms",
    "LossHead": "loss_head",
}


class StepProfile:
    """Accumulates wall / CPU seconds per part of the measured steps (module hooks and trainer events)."""

    def __init__(self, warmup: int, steps: int, ops: bool):
        self.warmup, self.steps, self.ops = warmup, steps, ops
        self.step = 0
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.step_wall: list[float] = []
        self.starts: dict[tuple[int, str], tuple[float, float]] = {}
        self.mark: tuple[float, float] | None = None  # the last trainer event
        self.step_start: tuple[float, float] | None = None
        self.backward_start: tuple[float, float] | None = None
        self.forward_end: tuple[float, float] | None = None
        self.prof = None
        self.inputs: dict = {}
        self.forward_begin: tuple[float, float] | None = None
        self.last_layer_end: tuple[float, float] | None = None

    @property
    def active(self) -> bool:
        return self.warmup <= self.step < self.warmup + self.steps

    def add(self, part: str, since: tuple[float, float], now: tuple[float, float] | None = None) -> None:
        if not self.active:
            return
        now = now or _clock()
        self.wall[part] += now[0] - since[0]
        self.cpu[part] += now[1] - since[1]

    # ---- module hooks
    def install(self, model) -> None:
        """Forward: pre/post hooks per module. Backward: a hook on the module's output tensor (its gradient is
        ready: the module's backward starts) and one on its input tensor (the input's gradient is complete)."""
        import torch

        def pre(module, args, kwargs, key):
            self.starts[key + ("f",)] = _clock()
            self.inputs[key] = args[0] if args else kwargs.get("hidden_states", kwargs.get("input"))

        def post(module, args, kwargs, out, key):
            self.add(key[1] + ":forward", self.starts[key + ("f",)])
            y = out[0] if isinstance(out, tuple) else out
            x = self.inputs.pop(key, None)
            if not torch.is_grad_enabled() or not isinstance(y, torch.Tensor) or not y.requires_grad:
                return
            if not isinstance(x, torch.Tensor) or not x.requires_grad:
                return
            y.register_hook(lambda g: self._module_backward_start(key))
            x.register_hook(lambda g: self._module_backward_end(key))

        for module in model.modules():
            kind = MODULE_KINDS.get(type(module).__name__)
            if kind is None:
                continue
            key = (id(module), kind)
            module.register_forward_pre_hook(lambda m, a, k, key=key: pre(m, a, k, key), with_kwargs=True)
            module.register_forward_hook(lambda m, a, k, o, key=key: post(m, a, k, o, key), with_kwargs=True)
            if kind == "embedding":
                module.weight.register_post_accumulate_grad_hook(lambda p: self._backward_end())
        model.register_forward_pre_hook(lambda m, a: self._forward_start(), prepend=True)
        model.register_forward_hook(lambda m, a, o: self._forward_end())

    def _module_backward_start(self, key) -> None:
        now = _clock()
        self.starts[key + ("b",)] = now
        if key[1] == "loss_head" and self.backward_start is None:
            self.backward_start = now
            if self.forward_end is not None:  # the loss bookkeeping between the forward and the backward
                self.add("trainer:loss_bookkeeping", self.forward_end, now)

    def _module_backward_end(self, key) -> None:
        now = _clock()
        self.add(key[1] + ":backward", self.starts[key + ("b",)], now)
        self.last_layer_end = now

    def _backward_end(self) -> None:
        now = _clock()
        if self.backward_start is not None:
            self.add("backward:total", self.backward_start, now)
            if self.last_layer_end is not None:
                self.add("embedding:backward", self.last_layer_end, now)
        self.backward_start = None
        self.mark = now

    def _forward_start(self) -> None:
        now = _clock()
        if self.mark is not None:
            self.add("trainer:data_and_step_begin", self.mark, now)
        self.forward_begin = now

    def _forward_end(self) -> None:
        now = _clock()
        if self.forward_begin is not None:
            self.add("forward:total", self.forward_begin, now)
        self.forward_end = now

    # ---- trainer events
    def callback(self):
        from transformers import TrainerCallback

        prof = self

        class Events(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kw):
                prof.install(model)
                prof.mark = _clock()

            def on_step_begin(self, args, state, control, **kw):
                if prof.step == prof.warmup and prof.ops and prof.prof is None:
                    import torch

                    prof.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                    prof.prof.__enter__()
                prof.step_start = prof.mark

            def on_pre_optimizer_step(self, args, state, control, **kw):
                now = _clock()
                prof.add("trainer:grad_clip_norm", prof.mark, now)
                prof.mark = now

            def on_optimizer_step(self, args, state, control, **kw):
                now = _clock()
                prof.add("optimizer:step", prof.mark, now)
                prof.mark = now

            def on_step_end(self, args, state, control, **kw):
                now = _clock()
                prof.add("trainer:scheduler_zero_grad_metrics", prof.mark, now)
                if prof.active and prof.step_start is not None:
                    prof.step_wall.append(now[0] - prof.step_start[0])
                prof.mark = now
                prof.step += 1
                if prof.step == prof.warmup + prof.steps and prof.prof is not None:
                    prof.prof.__exit__(None, None, None)
                    control.should_training_stop = True

        return Events()


def operator_table(prof, top: int) -> list[dict]:
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) or 1.0
    return [
        {
            "op": e.key,
            "self_cpu_s": round(e.self_cpu_time_total / 1e6, 4),
            "share": round(e.self_cpu_time_total / total, 4),
            "calls": e.count,
        }
        for e in rows[:top]
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="peer", choices=train_cases.CASES)
    ap.add_argument("--warmup", type=int, default=2, help="steps before the measured ones")
    ap.add_argument("--steps", type=int, default=4, help="measured steps")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--no-ops", action="store_true", help="skip the torch.profiler operator table")
    ap.add_argument("--top", type=int, default=25, help="operators in the table")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "profile_step.json"))
    a = ap.parse_args()
    from longalign.train import allocator

    allocator.restart_with_preload()  # measure on the default CPU allocator, as `longalign train` runs
    import torch

    from longalign.train import train

    if a.threads:
        torch.set_num_threads(a.threads)
    command = "python benchmarks/profile_step.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    print(f"command: {command}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="la_profile_"))
    data = train_cases.build(a.case, work / "data", seed=a.seed, demo_steps=a.warmup + a.steps)
    steps = a.warmup + a.steps
    cfg = train_cases.train_config(
        data, work / "out", seed=a.seed, demo_steps=steps, max_steps=steps, precision=a.precision
    )
    prof = StepProfile(a.warmup, a.steps, not a.no_ops)
    result = train(cfg, callbacks=[prof.callback()])
    rows = [json.loads(x) for x in (work / "out" / "metrics.jsonl").read_text().splitlines()]
    measured = rows[a.warmup : a.warmup + a.steps]
    tokens = sum(r["real_tokens"] for r in measured)
    parts_wall, parts_cpu = dict(prof.wall), dict(prof.cpu)
    step_wall = sum(prof.step_wall)
    # the forward's remainder: what no hooked module covers (residual adds, rotary tables, decoder glue)
    fwd_parts = [k for k in parts_wall if k.endswith(":forward")]
    parts_wall["forward:other"] = parts_wall.get("forward:total", 0.0) - sum(parts_wall[k] for k in fwd_parts)
    parts_cpu["forward:other"] = parts_cpu.get("forward:total", 0.0) - sum(parts_cpu[k] for k in fwd_parts)
    bwd_parts = [k for k in parts_wall if k.endswith(":backward")]
    parts_wall["backward:other"] = parts_wall.get("backward:total", 0.0) - sum(parts_wall[k] for k in bwd_parts)
    parts_cpu["backward:other"] = parts_cpu.get("backward:total", 0.0) - sum(parts_cpu[k] for k in bwd_parts)
    total_cpu = sum(v for k, v in parts_cpu.items() if not k.endswith(":total"))
    by_kind: dict[str, dict[str, float]] = defaultdict(lambda: {"wall_s": 0.0, "cpu_s": 0.0})
    for k in parts_wall:
        if k.endswith(":total"):
            continue
        kind = k.split(":")[0]
        by_kind[kind]["wall_s"] += parts_wall[k]
        by_kind[kind]["cpu_s"] += parts_cpu[k]
    doc = {
        "benchmark": "profile_step",
        "command": command,
        "case": a.case,
        "attention_backend": result.attention_backend,
        "precision": a.precision,
        "threads": torch.get_num_threads(),
        "cpu_allocator": result.run_meta.get("cpu_allocator"),
        "measured_steps": len(prof.step_wall),
        "real_tokens": tokens,
        "step_wall_s": round(step_wall, 3),
        "tokens_per_s": round(tokens / step_wall, 1) if step_wall else None,
        "tokens_per_cpu_s": round(tokens / total_cpu, 1) if total_cpu else None,
        "parts": {
            k: {
                "wall_s": round(parts_wall[k], 4),
                "cpu_s": round(parts_cpu[k], 4),
                "cpu_share": round(parts_cpu[k] / total_cpu, 4) if total_cpu else None,
            }
            for k in sorted(parts_wall, key=lambda k: -parts_cpu[k])
        },
        "by_kind": {
            k: {
                "wall_s": round(v["wall_s"], 4),
                "cpu_s": round(v["cpu_s"], 4),
                "cpu_share": round(v["cpu_s"] / total_cpu, 4) if total_cpu else None,
            }
            for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1]["cpu_s"])
        },
        "operators": operator_table(prof.prof, a.top) if prof.prof is not None else [],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg": os.getloadavg()},
        "versions": {"torch": torch.__version__},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=2))
    print(
        f"{a.case}: {len(prof.step_wall)} steps, {tokens} real tokens, {doc['tokens_per_s']} tokens/s, "
        f"{doc['tokens_per_cpu_s']} per CPU-s ({doc['threads']} threads, load {os.getloadavg()[0]:.1f})"
    )
    print(f"\n{'part':<40} {'wall s':>8} {'CPU s':>8} {'share':>7}")
    for k, v in doc["parts"].items():
        if not k.endswith(":total"):
            print(f"{k:<40} {v['wall_s']:8.3f} {v['cpu_s']:8.3f} {v['cpu_share'] or 0:7.1%}")
    print(f"\n{'kind':<40} {'wall s':>8} {'CPU s':>8} {'share':>7}")
    for k, v in doc["by_kind"].items():
        print(f"{k:<40} {v['wall_s']:8.3f} {v['cpu_s']:8.3f} {v['cpu_share'] or 0:7.1%}")
    if doc["operators"]:
        print(f"\n{'operator':<60} {'self CPU s':>10} {'share':>7} {'calls':>7}")
        for r in doc["operators"]:
            print(f"{r['op'][:60]:<60} {r['self_cpu_s']:10.3f} {r['share']:7.1%} {r['calls']:7d}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
