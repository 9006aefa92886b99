"""benchmarks/gpu_check.py before it meets a GPU: the whole check rehearsed on a CPU at tiny sizes, the planner
part's bisection against fake memory probes with known limits, part budgets, and the CUDA calls of its device
layer bound against torch.cuda's own signatures."""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("datasets")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
MiB = 2**20


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # inspect.getsource finds the file through it
    spec.loader.exec_module(mod)
    return mod


check = _load()


# ------------------------------------------------------------------------------------------------------------
# the rehearsal
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """``gpu_check.py --device cpu --tiny`` in a fresh process, as a user runs it. The budgets are scaled up
    (the defaults are sized for a quiet machine; a busy test machine must not turn a slow part into a failure)."""
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out)]
    cmd += ["--budget-scale", "4", "--deadline-s", "1200"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    seconds = time.perf_counter() - t
    print(f"gpu_check.py --device cpu --tiny: {seconds:.1f} s, exit code {proc.returncode}")
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def errors_in(entry, where: str = "") -> list[str]:
    """Every error recorded anywhere inside a part's entry (a backend, a check, a method), without tracebacks."""
    found = []
    if isinstance(entry, dict):
        if "error" in entry:
            found.append(f"{where or '.'}: {entry['error'][:400]}")
        for k, v in entry.items():
            found += errors_in(v, f"{where}/{k}")
    elif isinstance(entry, list):
        for i, v in enumerate(entry):
            found += errors_in(v, f"{where}/{i}")
    return found


def test_rehearsal_every_part_runs_and_passes(rehearsal):
    proc, data = rehearsal
    parts = data["parts"]
    assert list(parts) == ["equality", "planner", "trainer", "throughput", "sp"]  # ordered by value
    failed = {k: errors_in(v) or v for k, v in parts.items() if v["ok"] is not True}
    assert not failed, json.dumps(failed, indent=1, default=str)[:6000]
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert check.check_report(data) == [] and data["schema_problems"] == []
    assert data["device"]["kind"] == "cpu" and data["settings"]["tiny"] is True
    for name, entry in parts.items():
        assert entry["seconds"] <= entry["budget_s"] + 5, name  # each part kept to its own budget


def test_rehearsal_equality(rehearsal):
    eq = rehearsal[1]["parts"]["equality"]
    expected = {f"{b}/{d}" for b in ("sdpa", "longalign_segment", "longalign_flex") for d in ("float32", "bfloat16")}
    assert set(eq["results"]) == expected
    for key, r in eq["results"].items():
        # packed equals separate; the control (one pack without boundaries) is far off
        assert r["pass"] and r["leak_control"] > 0.05 and r["max_abs_diff"] < 0.1 * r["leak_control"], key
    assert eq["auto_backend_bf16"] == eq["auto_backend_fp32"] == "longalign_segment"
    cuda_only = eq["cuda_only_checks"]
    assert set(cuda_only) == {"longalign_varlen", "longalign_flex_compiled", "flash_attention_2"}
    assert all(c["ok"] for c in cuda_only.values()), cuda_only
    varlen = cuda_only["longalign_varlen"]
    assert varlen["available"] and varlen["layers_checked"] == eq["model"]["layers"]
    assert {"cu_seq_lens_q", "position_ids"} <= set(varlen["first_call"]["keywords"])
    assert cuda_only["flash_attention_2"]["keywords"] == [
        "cu_seq_lens_q",
        "cu_seq_lens_k",
        "max_length_q",
        "max_length_k",
    ]


def test_rehearsal_planner(rehearsal):
    from longalign.train.memory import GIB, ModelShape, largest_max_len

    pl = rehearsal[1]["parts"]["planner"]
    assert [(p["max_len"], p["gradient_checkpointing"]) for p in pl["points"]] == [
        (512, False),
        (1024, False),
        (1024, True),
    ]
    for p in pl["points"]:
        assert p["predicted_gib"] > p["predicted_without_runtime_gib"] > 0
        assert p["measured_gib"] is not None and p["peak_gib"] >= p["measured_gib"]
        assert len(p["step_s"]) == 2 and p["fits"] is (p["reason"] is None)
    # checkpointing keeps fewer activations: the plan predicts less at the same length
    assert pl["points"][2]["predicted_gib"] < pl["points"][1]["predicted_gib"]
    # the planner's longest, recomputed here from the tiny model's shape (labels on half of every sequence)
    m = pl["model"]
    shape = ModelShape(
        hidden=m["hidden"],
        intermediate=m["intermediate"],
        layers=m["layers"],
        heads=m["heads"],
        kv_heads=m["kv_heads"],
        head_dim=m["hidden"] // m["heads"],
        vocab=m["vocab"],
        tied=False,
    )
    longest = largest_max_len(
        shape, 0.68 * GIB, multiple=128, precision="fp32", device="cpu", loss_impl="chunked", target_fraction=0.5
    )
    assert pl["planner_longest"] == longest > 0
    assert pl["memory_plan_cli"][0].startswith("memory plan:")
    cli_longest = largest_max_len(  # the command line searches in multiples of 1024
        shape, 0.68 * GIB, precision="fp32", device="cpu", loss_impl="chunked", target_fraction=0.5
    )
    assert pl["memory_plan_cli"][-1] == f"longest max_len that fits 0.680GiB per device: {cli_longest:,} tokens"
    b = pl["bisection"]
    assert b["start"] == longest and b["probes"][0]["max_len"] == longest
    assert b["stopped"] in ("converged", "max_probes", "time", "limit", "smallest_fails")
    fitted = [p["max_len"] for p in b["probes"] if p["fits"]]
    failed = [p["max_len"] for p in b["probes"] if not p["fits"]]
    assert b["longest_fit"] == max(fitted, default=0)
    assert b["shortest_fail"] == min(failed, default=None)
    assert all(p["reason"] in ("memory_cap", "time_slice") for p in b["probes"] if not p["fits"])


def test_rehearsal_trainer_throughput_sp(rehearsal):
    parts = rehearsal[1]["parts"]
    tr = parts["trainer"]
    assert tr["steps"] == 3 and all(math.isfinite(x) for x in tr["loss"]) and tr["backend"] == "longalign_segment"
    assert tr["packing_check"]["packed_err"] < 1e-4 < tr["packing_check"]["leak_err"]
    th = parts["throughput"]
    assert set(th["methods"]) == {"pack", "naive", "sort", "pack_dense"}
    for name, r in th["methods"].items():
        assert r["steps"] >= 1 and r["real_tokens_per_s"] > 0, name
    assert th["methods"]["pack"]["backend"] == "longalign_segment" and th["methods"]["pack_dense"]["backend"] == "sdpa"
    sp = parts["sp"]
    assert sp["backend"] == "gloo" and list(sp["cores"]) == ["longalign_segment"]
    cases = sp["cores"]["longalign_segment"]["cases"]
    assert [c["case"] for c in cases] == [0, 1] and sp["cores"]["longalign_segment"]["ok"]


# ------------------------------------------------------------------------------------------------------------
# the planner's bisection on fake probes
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limit,start",
    [
        (37 * 1024, 30 * 1024),  # the planner was low
        (37 * 1024, 80 * 1024),  # the planner was high
        (37 * 1024, 37 * 1024),  # the planner was right
        (1024, 64 * 1024),  # only the smallest fits
        (200 * 1024, 1024),  # far above the start
    ],
)
def test_bisection_finds_a_known_limit(limit, start):
    seen = []

    def probe(n):
        seen.append(n)
        return {"max_len": n, "fits": n <= limit, "seconds": 1.0}

    r = check.find_longest(probe, start, multiple=1024, resolution=0.0, max_probes=40)
    assert r["longest_fit"] == limit and r["shortest_fail"] == limit + 1024
    assert r["converged"] and r["stopped"] == "converged"
    assert all(n % 1024 == 0 for n in seen) and len(set(seen)) == len(seen)  # no length probed twice
    # steps of 1.5x up or down to a bracket, then halvings of it
    bound = 2 + math.ceil(math.log(max(limit, start) / min(limit, start), 1.5)) + math.ceil(math.log2(limit / 1024 + 1))
    assert len(seen) <= bound, (len(seen), bound)


def test_bisection_edges_and_its_time_slice():
    never = check.find_longest(lambda n: {"fits": False, "seconds": 1.0}, 4096, multiple=1024, resolution=0.0)
    assert never["longest_fit"] == 0 and never["stopped"] == "smallest_fails" and never["shortest_fail"] == 1024
    always = check.find_longest(lambda n: {"fits": True, "seconds": 1.0}, 4096, multiple=1024, limit=16384)
    assert always["longest_fit"] == 16384 and always["stopped"] == "limit" and always["shortest_fail"] is None
    # a fixed time slice: every probe costs 10 s of it; the search stops before a probe that would overrun it
    clock = {"left": 35.0}

    def probe(n):
        clock["left"] -= 10.0
        return {"fits": n <= 37 * 1024, "seconds": 10.0}

    r = check.find_longest(probe, 30 * 1024, multiple=1024, resolution=0.0, time_left=lambda: clock["left"])
    assert r["stopped"] == "time" and len(r["probes"]) == 3 and not r["converged"]
    assert r["longest_fit"] <= 37 * 1024 < (r["shortest_fail"] or math.inf)


class FakeMemory:
    """A device with ``capacity`` bytes: the Device methods measure() uses, and an allocator that raises torch's
    own out-of-memory error beyond the capacity."""

    def __init__(self, capacity: float):
        self.capacity, self.in_use, self.peak, self.releases = capacity, 0.0, 0.0, 0

    def release(self):
        self.releases += 1

    def in_use_bytes(self):
        return self.in_use

    def reset_peak(self):
        self.peak = self.in_use

    def peak_bytes(self):
        return self.peak

    def reserved_peak_bytes(self):
        return None

    def allocate(self, nbytes: float):
        if self.in_use + nbytes > self.capacity:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {nbytes / MiB:.0f} MiB")
        self.in_use += nbytes
        self.peak = max(self.peak, self.in_use)


def fake_training(memory: FakeMemory, fixed: float, per_token: float, step_s_per_token: float = 1e-5):
    def run(n):
        taken = 0.0
        try:
            for nbytes in (fixed, per_token * n):  # weights and optimizer state, then the activations
                memory.allocate(nbytes)
                taken += nbytes
            return [step_s_per_token * n] * 2
        finally:
            memory.in_use -= taken

    return run


def test_planner_probe_finds_the_limit_of_a_fake_device():
    """measure() + find_longest(), the planner part's logic, against a device whose limit is known: 2 GiB held
    by weights and optimizer, 96 KiB per token, 80 GiB in all -> the longest multiple of 1024 is computed here."""
    capacity, fixed, per_token = 80 * 1024 * MiB, 2 * 1024 * MiB, 96 * 1024
    expected = int((capacity - fixed) // per_token) // 1024 * 1024
    memory = FakeMemory(capacity)
    run = fake_training(memory, fixed, per_token)
    r = check.find_longest(
        lambda n: check.measure(run, n, memory, slice_s=60.0), 700_000, multiple=1024, resolution=0.0, max_probes=40
    )
    assert r["longest_fit"] == expected and r["shortest_fail"] == expected + 1024
    ok = [p for p in r["probes"] if p["fits"]]
    oom = [p for p in r["probes"] if not p["fits"]]
    assert ok and oom and all(p["reason"] == "out_of_memory" and "out of memory" in p["oom"] for p in oom)
    for p in ok:  # the measured peak is what the fake allocated
        assert p["measured_gib"] == pytest.approx((fixed + per_token * p["max_len"]) / 2**30, abs=1e-3)
    assert memory.in_use == 0 and memory.releases == 2 * len(r["probes"])


def test_planner_probe_time_slice_and_memory_cap():
    memory = FakeMemory(1e15)
    run = fake_training(memory, 0.0, 1000.0, step_s_per_token=1e-3)  # a step takes 1 ms per token
    slow = check.find_longest(
        lambda n: check.measure(run, n, memory, slice_s=20.0), 4096, multiple=1024, resolution=0.0, max_probes=40
    )
    assert slow["longest_fit"] == 19 * 1024 and {p["reason"] for p in slow["probes"] if not p["fits"]} == {"time_slice"}
    # on a CPU the cap stands in for the allocator's limit
    capped = check.find_longest(
        lambda n: check.measure(run, n, memory, slice_s=1e9, cap=10_000_000),
        4096,
        multiple=1024,
        resolution=0.0,
        max_probes=40,
    )
    assert capped["longest_fit"] == 9 * 1024
    assert {p["reason"] for p in capped["probes"] if not p["fits"]} == {"memory_cap"}


def test_measure_passes_other_errors_on():
    def broken(n):
        raise TypeError("train() got an unexpected keyword argument 'max_lenn'")

    with pytest.raises(TypeError, match="max_lenn"):
        check.measure(broken, 1024, FakeMemory(1e9), slice_s=1.0)
    assert check.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory."))
    assert check.is_out_of_memory(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not check.is_out_of_memory(ValueError("max_len exceeds the model's positions"))


# ------------------------------------------------------------------------------------------------------------
# budgets, parts and the CUDA branch of the device layer
# ------------------------------------------------------------------------------------------------------------


def test_a_part_past_its_budget_is_stopped_and_the_next_one_runs(tmp_path):
    rep = check.Report(tmp_path / "r.json")
    dev = check.Device("cpu")

    def slow(ctx):
        ctx.out["first_unit"] = "done"
        ctx.save()
        time.sleep(300)

    def broken(ctx):
        import numpy as np  # noqa: F401

        return undefined_name  # noqa: F821

    def fine(ctx):
        ctx.out["value"] = 1

    t = time.perf_counter()
    rep.part("slow", slow, None, dev, check.Budget(0.5, math.inf))
    rep.part("broken", broken, None, dev, check.Budget(10, math.inf))
    rep.part("fine", fine, None, dev, check.Budget(10, math.inf))
    rep.part("late", fine, None, dev, check.Budget(10, time.perf_counter()))  # the check's deadline has passed
    assert time.perf_counter() - t < 120  # stopped long before its 300 s sleep, with room for a busy machine
    parts = json.loads((tmp_path / "r.json").read_text())["parts"]
    assert parts["slow"]["ok"] is False and "PartTimeout" in parts["slow"]["error"]
    assert parts["slow"]["first_unit"] == "done"  # what it finished is kept
    assert parts["broken"]["ok"] is False and "NameError" in parts["broken"]["error"]
    assert "undefined_name" in parts["broken"]["traceback"]
    assert parts["fine"]["ok"] is True and parts["fine"]["value"] == 1, json.dumps(parts["fine"])[:3000]
    assert parts["late"]["ok"] is False and "deadline" in parts["late"]["error"]


def test_budgets_and_parts_from_the_command_line():
    a = check.parse_args(["--parts", "planner,sp", "--budgets", "planner=200", "--budget-scale", "2"])
    assert a.parts == ["planner", "sp"] and a.budget_seconds["planner"] == 400 and a.budget_seconds["sp"] == 120
    assert sum(check.BUDGETS_S.values()) <= 8 * 60 - 15  # the whole check within 8 minutes on one GPU
    assert list(check.BUDGETS_S) == list(check.PARTS) == ["equality", "planner", "trainer", "throughput", "sp"]
    tiny = check.parse_args(["--tiny", "--device", "cpu"])
    assert tiny.vocab == 1024 and tiny.threads == 1 and tiny.budget_seconds == check.TINY_BUDGETS_S
    for bad in (["--parts", "equality,speed"], ["--budgets", "planer=3"], ["--budgets", "planner=soon"]):
        with pytest.raises(SystemExit):
            check.parse_args(bad)


CUDA_RETURNS = {
    "synchronize": None,
    "reset_peak_memory_stats": None,
    "max_memory_allocated": 3 * 2**30,
    "max_memory_reserved": 4 * 2**30,
    "memory_allocated": 2**20,
    "empty_cache": None,
    "mem_get_info": (70 * 2**30, 80 * 2**30),
    "device_count": 1,
    "get_device_capability": (9, 0),
    "get_device_name": "NVIDIA H100 80GB HBM3",
}


def test_cuda_branch_of_the_device_layer_binds_to_torch_cuda(monkeypatch):
    """The Device methods' CUDA branch, never run on a CPU machine, is called against autospecced stand-ins of
    the torch.cuda functions it names: a misspelt function or a wrong keyword fails here."""
    used = set(re.findall(r"torch\.cuda\.(\w+)\(", inspect.getsource(check.Device)))
    assert used == set(CUDA_RETURNS), used ^ set(CUDA_RETURNS)
    fakes = {}
    for name, value in CUDA_RETURNS.items():
        fakes[name] = mock.create_autospec(getattr(torch.cuda, name), return_value=value)
        monkeypatch.setattr(torch.cuda, name, fakes[name])
    dev = check.Device("cuda")
    dev.sync()
    dev.reset_peak()
    assert dev.peak_bytes() == 3 * 2**30 and dev.reserved_peak_bytes() == 4 * 2**30 and dev.in_use_bytes() == 2**20
    dev.release()
    assert dev.total_bytes() == 80 * 2**30 and dev.count() == 1 and dev.capability() == (9, 0)
    desc = dev.describe()
    assert desc["name"] == "NVIDIA H100 80GB HBM3" and desc["memory_gib"] == 80.0
    assert all(f.called for f in fakes.values()), [n for n, f in fakes.items() if not f.called]


class OneGPU:
    """A stand-in for Device("cuda") on a machine with one H100 (no torch.cuda call is made through it)."""

    kind, is_cuda, memory_probe = "cuda", True, "torch.cuda.max_memory_allocated"

    def count(self):
        return 1

    def capability(self):
        return (9, 0)

    def release(self):
        pass


def test_cuda_choices_on_one_gpu(tmp_path):
    """The branches a single H100 takes: the backends it compares (flex last: it compiles), SP skipped."""
    names = check.packed_backends(OneGPU())
    assert names[-3:] == ["sdpa", "longalign_segment", "longalign_flex"]
    assert ("longalign_varlen" in names) == (importlib.util.find_spec("torch.nn.attention.varlen") is not None)
    assert ("flash_attention_2" in names) == (importlib.util.find_spec("flash_attn") is not None)
    rep = check.Report(tmp_path / "r.json")
    a = check.parse_args(["--device", "cuda"])
    rep.part("sp", check.part_sp, a, OneGPU(), check.Budget(60, math.inf))
    sp = json.loads((tmp_path / "r.json").read_text())["parts"]["sp"]
    assert sp["ok"] is None and "needs 2 GPUs" in sp["skipped"] and sp["gpus"] == 1
    assert check.check_report({**rep.data, "env": {}, "device": {}, "settings": {}}) == []
