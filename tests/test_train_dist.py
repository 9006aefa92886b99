"""Two data-parallel processes (gloo on CPU) give the same optimizer steps as one process with gradient
accumulation 2: same losses in metrics.jsonl and same parameters after 2 steps.

Both launchers are covered: ``torchrun`` (DDP) and ``deepspeed`` (ZeRO-2). Each run starts 2 Python
processes that import torch and transformers, so these tests take about a minute each on 2 cores.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from installed import require  # noqa: E402
from test_train import LENGTHS, TINY, cfg_for, make_tokens  # noqa: E402

from longalign.rundir import read_jsonl  # noqa: E402
from longalign.train import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMMON = [
    "--model",
    TINY,
    "--learning-rate",
    "1e-3",
    "--lr-scheduler",
    "constant",
    "--warmup-ratio",
    "0",
    "--max-grad-norm",
    "0",
    "--epochs",
    "1",
    "--save-steps",
    "0",
    "--save-final",
    "true",
    "--progress",
    "false",
    "--seed",
    "0",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmd: list[str], timeout: int = 600) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def compare(single: Path, multi: Path) -> None:
    a, b = read_jsonl(single / "metrics.jsonl"), read_jsonl(multi / "metrics.jsonl")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-6)
        assert rb["loss_token_mean"] == pytest.approx(ra["loss_token_mean"], rel=1e-6)
        assert (rb["sequences"], rb["target_tokens"], rb["real_tokens"]) == (
            ra["sequences"],
            ra["target_tokens"],
            ra["real_tokens"],
        )
    wa, wb = weights(single / "final"), weights(multi / "final")
    assert set(wa) <= set(wb)  # DeepSpeed also writes the tied lm_head.weight
    start = weights_at_init()
    moved = max(float((wa[k] - start[k]).abs().max()) for k in wa if k in start)
    assert moved > 1e-4  # the runs did train
    # AdamW divides by each element's own gradient magnitude: an element whose gradient is within float32
    # rounding of zero can take the other sign under another reduction order, so a handful per tensor may differ.
    for k in wa:
        off = int(((wa[k] - wb[k]).abs() > 1e-5).sum())
        assert off <= max(2, wa[k].numel() // 1000), (k, off, wa[k].numel())


def saved_initial_model(folder: Path) -> Path:
    """The tiny model's seed-0 initial weights (what ``random:`` builds) saved as a model folder."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(
        AutoConfig.from_pretrained(ROOT / "configs" / "models" / "tiny-llama")
    ).save_pretrained(folder)
    return folder


def weights_at_init() -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ROOT / "configs" / "models" / "tiny-llama"))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_ddp_two_ranks_equal_one_rank_with_accumulation(tmp_path, launcher):
    tokens = make_tokens(tmp_path / "tokens")
    # naive, 3 sequences per micro-batch: micro-batches of 3, 3, 2 -> step 2 holds one real micro-batch,
    # so rank 1 runs a zero-weight filler there
    train(
        cfg_for(
            tmp_path,
            "single",
            method="naive",
            per_device_batch_size=3,
            grad_accum=2,
            max_grad_norm=0.0,
            save_final=True,
        )
    )
    port = str(free_port())
    if launcher == "torchrun":
        start = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    else:  # on CPU --multi_gpu starts 2 gloo processes (--cpu --num_processes 2 would start only one)
        start = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            port,
        ]
    cmd = [
        *start,
        "-m",
        "longalign.cli",
        "train",
        "--tokens",
        str(tokens),
        "--output-dir",
        str(tmp_path / "ddp"),
        "--method",
        "naive",
        "--per-device-batch-size",
        "3",
        "--max-len",
        "64",
        "--grad-accum",
        "1",
        *COMMON,
    ]
    launch(cmd)
    meta = (tmp_path / "ddp" / "run_meta.json").read_text()
    assert '"world_size": 2' in meta
    compare(tmp_path / "single", tmp_path / "ddp")


@pytest.mark.slow
@pytest.mark.parametrize("zero,loss_impl", [("zero2", "chunked"), ("zero3", "chunked"), ("zero3", "full")])
def test_deepspeed_two_ranks_equal_one_rank_with_accumulation(tmp_path, zero, loss_impl):
    from longalign.batching import make_plan

    launcher = require("deepspeed")
    tokens = make_tokens(tmp_path / "tokens")
    # max_len 40 packs the 8 sequences into 4 packs: 2 optimizer steps of 2 packs. The plan for 2 ranks
    # pairs packs of similar cost, so both runs read that one plan file (same packs in each step)
    plan = make_plan(LENGTHS, "pack", max_len=40, world_size=2, grad_accum=1)
    plan.save(plan_path=tmp_path / "pack.plan.json")
    # ZeRO-3 initialises a random model shard by shard (other random numbers): both runs start from saved weights
    init = saved_initial_model(tmp_path / "init")
    train(
        cfg_for(
            tmp_path,
            "single",
            model=str(init),
            tokenizer="smollm2",
            method="pack",
            max_len=40,
            grad_accum=2,
            max_grad_norm=0.0,
            save_final=True,
            plan=str(tmp_path / "pack.plan.json"),
            loss_impl="full",
        )
    )
    cmd = [
        launcher,
        "--no_local_rank",
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        "--module",
        "longalign.cli",
        "train",
        "--tokens",
        str(tokens),
        "--output-dir",
        str(tmp_path / zero),
        "--method",
        "pack",
        "--max-len",
        "40",
        "--grad-accum",
        "1",
        "--plan",
        str(tmp_path / "pack.plan.json"),
        "--deepspeed",
        f"configs/deepspeed/{zero}.json",
        "--loss-impl",
        loss_impl,
        *COMMON,
        "--model",
        str(init),
        "--tokenizer",
        "smollm2",
    ]
    launch(cmd)
    compare(tmp_path / "single", tmp_path / zero)
