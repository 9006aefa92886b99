"""Sequence parallelism: pack sharding, refusals, and SP = 2 against SP = 1 in two gloo processes.

The two-process check (``longalign.train.sp_check`` under torchrun, float64, the tiny random Llama) runs once
per session and every case reads its numbers: one optimizer step of two packs with SP = 2 must give the
SP = 1 step loss to 1e-6 (relative) and the same parameters to 1e-6, for sequence and token loss
normalisation, chunked and full loss, with and without gradient checkpointing, with fewer key/value heads
than ranks, on packs whose sequence
borders fall on the shard border and packs where a shard border cuts a sequence. A negative control withholds
the boundaries from the core attention and must change the logits. The slow tests train through the CLI:
DP = 2 x SP = 1 against DP = 1 x SP = 2 (torchrun), and SP = 2 under ZeRO-2 / ZeRO-3 (deepspeed).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from installed import require  # noqa: E402
from test_train import LENGTHS, cfg_for, make_tokens  # noqa: E402
from test_train_dist import COMMON, assert_trained_alike, free_port, launch, saved_initial_model  # noqa: E402

from longalign import IGNORE_INDEX  # noqa: E402
from longalign.batching import PackedCollator  # noqa: E402
from longalign.rundir import read_jsonl  # noqa: E402
from longalign.train import sequence_parallel as spm  # noqa: E402
from longalign.train import train  # noqa: E402
from longalign.train.sp_check import CASES, torchrun_command  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------------------
# sharding a pack (no processes)
# ------------------------------------------------------------------------------------------------------------


def _pack(lengths, seed=0, weight_of=lambda i: 1.0 / (i + 1)):
    rng = np.random.default_rng(seed)
    feats = []
    for i, n in enumerate(lengths):
        seq = rng.integers(10, 2000, size=n).tolist()
        feats.append({"input_ids": seq, "labels": [-100] * (n // 3) + seq[n // 3 :], "token_weight": weight_of(i)})
    return PackedCollator(sum(lengths) + 8, weights_dtype=torch.float64)(feats)


@pytest.mark.parametrize("sp", [2, 3, 4])
@pytest.mark.parametrize("lengths", [[12, 12], [9, 8, 6], [5, 13, 3, 2], [1, 7], [23]])
def test_shards_hold_every_target_once_with_its_weight(lengths, sp):
    full = _pack(lengths)
    shards = [spm.shard_pack(full, sp, r) for r in range(sp)]
    total = sum(lengths)
    padded = -(-total // sp) * sp
    assert {s["input_ids"].shape[1] for s in shards} == {padded // sp}
    cat = {k: torch.cat([s[k] for s in shards], dim=1)[0] for k in ("input_ids", "labels", "loss_weights")}
    pos = torch.cat([s["position_ids"] for s in shards], dim=1)[0]
    assert torch.equal(cat["input_ids"][:total], full["input_ids"][0])
    assert torch.equal(pos[:total], full["position_ids"][0])
    # the unsharded loss scores position t against labels[t + 1]: the shards carry exactly those pairs
    want_labels = full["labels"][0, 1:]
    want_w = full["loss_weights"][0, 1:]
    assert torch.equal(cat["labels"][: total - 1], want_labels)
    assert torch.equal(cat["loss_weights"][: total - 1], want_w)
    assert (cat["labels"][total - 1 :] == IGNORE_INDEX).all() and (cat["loss_weights"][total - 1 :] == 0).all()
    n_targets = int((full["labels"][0, 1:] != IGNORE_INDEX).sum())
    assert sum(int((s["labels"] != IGNORE_INDEX).sum()) for s in shards) == n_targets
    # every shard knows the whole pack's boundaries, padding segment included
    cu = [int(x) for x in shards[0]["cu_seq_lens_q"]]
    assert cu[: len(lengths) + 1] == [int(x) for x in full["cu_seqlens"]]
    assert cu[-1] == padded and (len(cu) == len(lengths) + 1) == (padded == total)
    assert all(torch.equal(s["cu_seq_lens_q"], shards[0]["cu_seq_lens_q"]) for s in shards)
    assert all(s[spm.SHIFTED_KEY] is True for s in shards)


def test_target_of_a_shards_first_token_lives_on_the_previous_shard():
    full = _pack([5, 13, 3, 2])  # 23 tokens -> 24, shard border at 12 inside the second sequence
    first, second = spm.shard_pack(full, 2, 0), spm.shard_pack(full, 2, 1)
    token12 = int(full["input_ids"][0, 12])
    assert int(full["labels"][0, 12]) == token12  # a target of the unsharded loss
    assert int(first["labels"][0, -1]) == token12  # predicted by position 11, on shard 0
    assert float(first["loss_weights"][0, -1]) == float(full["loss_weights"][0, 12]) > 0
    assert int(second["input_ids"][0, 0]) == token12
    assert int(second["position_ids"][0, 0]) == 12 - 5


def test_loss_functions_take_shifted_labels():
    from longalign.batching.head_loss import chunked_head_loss
    from longalign.batching.loss import weighted_and_plain_ce

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, 11, 8, dtype=torch.float64, generator=gen)
    weight = torch.randn(17, 8, dtype=torch.float64, generator=gen)
    labels = torch.randint(0, 17, (1, 11), generator=gen)
    labels[0, :3] = IGNORE_INDEX
    w = torch.rand(1, 11, dtype=torch.float64, generator=gen)
    lab_s = torch.full_like(labels, IGNORE_INDEX)
    lab_s[:, :-1] = labels[:, 1:]
    w_s = torch.zeros_like(w)
    w_s[:, :-1] = w[:, 1:]
    logits = hidden @ weight.T
    ref = weighted_and_plain_ce(logits, labels, w)
    for got in (
        weighted_and_plain_ce(logits, lab_s, w_s, shift=False),
        chunked_head_loss(hidden, weight, None, lab_s, w_s, 4, shift=False),
        chunked_head_loss(hidden, weight, None, labels, w, 4),
    ):
        assert float(got[0]) == pytest.approx(float(ref[0]), rel=1e-12)
        assert float(got[1]) == pytest.approx(float(ref[1]), rel=1e-12)


def test_layout_of_ranks():
    lay = spm.SPLayout(world_size=8, sp_size=4, rank=6)
    assert (lay.dp_size, lay.dp_rank, lay.sp_rank, lay.sp_ranks()) == (2, 1, 2, [4, 5, 6, 7])


# ------------------------------------------------------------------------------------------------------------
# refusals
# ------------------------------------------------------------------------------------------------------------

OK = dict(method="pack", backend="longalign_segment", num_heads=4, num_kv_heads=2, max_len=64)


@pytest.mark.parametrize(
    "world,sp,changes,message",
    [
        (3, 2, {}, "does not divide the world size 3"),
        (2, 2, {"method": "naive"}, "needs --method pack"),
        (2, 2, {"method": "sort"}, "use --method pack or --sp-size 1"),
        (2, 2, {"backend": "sdpa"}, "cannot take a pack's boundaries"),
        (2, 2, {"backend": "eager"}, "--attn-implementation auto"),
        (2, 2, {"backend": "flash_attention_2"}, "longalign_varlen"),
        (4, 4, {"num_heads": 6}, "6 attention heads, not divisible"),
        (6, 3, {"num_heads": 6, "num_kv_heads": 2}, "2 key/value heads"),
        (2, 2, {"max_len": 1}, "raise --max-len"),
    ],
)
def test_unsupported_combinations_are_refused_with_the_fix(world, sp, changes, message):
    with pytest.raises(ValueError, match=message):
        spm.check_sp(sp, world, **{**OK, **changes})


def test_flash_attn_is_replaced_under_sp():
    assert spm.default_core("flash_attention_2", "cpu", torch.float32) == "longalign_flex"
    assert spm.default_core("longalign_segment", "cpu") == "longalign_segment"


def test_supported_combinations_pass():
    spm.check_sp(1, 1, **{**OK, "method": "naive", "backend": "sdpa"})  # SP off: nothing to check
    spm.check_sp(2, 4, **OK)
    spm.check_sp(4, 4, **{**OK, "num_kv_heads": 2})  # fewer kv heads than ranks: copied
    spm.check_sp(2, 2, **{**OK, "backend": None})


def test_train_refuses_an_sp_size_that_does_not_divide_the_world(tmp_path):
    make_tokens(tmp_path / "tokens")
    with pytest.raises(ValueError, match=r"--sp-size 2 does not divide the world size 1"):
        train(cfg_for(tmp_path, "sp", sp_size=2))


def test_sp_size_option_and_memory_plan():
    from longalign.train import TrainConfig
    from longalign.train.memory import plan_for_config

    with pytest.raises(ValueError):
        TrainConfig(sp_size=0)
    cfg = TrainConfig(model=str(ROOT / "configs" / "models" / "tiny-llama"), max_len=4096, sp_size=4)
    one = plan_for_config(TrainConfig(model=cfg.model, max_len=4096), gpus=4, device="cpu")
    four = plan_for_config(cfg, gpus=4, device="cpu")
    assert four.settings["sp_size"] == 4 and four.tokens_per_device == 1024
    assert four.components["activations"] == pytest.approx(one.components["activations"] / 4, rel=1e-6)


def test_cli_accepts_sp_size():
    import argparse

    from longalign.train import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["train", "--sp-size", "2", "--tokens", "t", "--output-dir", "o"])
    from longalign.config import build_config
    from longalign.train import TrainConfig

    assert build_config(TrainConfig, args).sp_size == 2


# ------------------------------------------------------------------------------------------------------------
# two gloo processes: SP = 2 against SP = 1
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("sp") / "sp_check.json"
    launch(torchrun_command(out, free_port()), timeout=300)
    return json.loads(out.read_text())


def _case(results, *key):
    for c in results["cases"]:
        if (c["loss_norm"], c["loss_impl"], c["gradient_checkpointing"], c["layout"], c["kv_heads"]) == key:
            return c
    raise AssertionError(f"no case {key} in the results")


@pytest.mark.parametrize("loss_norm,loss_impl,ckpt,layout,kv_heads", CASES)
def test_sp2_step_equals_sp1(sp_results, loss_norm, loss_impl, ckpt, layout, kv_heads):
    assert sp_results["world"] == sp_results["sp_size"] == 2
    c = _case(sp_results, loss_norm, loss_impl, ckpt, layout, kv_heads)
    assert c["loss_rel_diff"] < 1e-6, c
    assert c["param_max_diff"] < 1e-6, c
    assert c["param_max_moved"] > 1e-4, c  # the step did move the parameters
    assert c["logits_diff_with_boundaries"] < 1e-6, c


def test_layouts_cover_both_shard_borders():
    from longalign.train.sp_check import LAYOUTS

    for pack in LAYOUTS["aligned"]:
        assert (sum(pack) // 2) in np.cumsum(pack).tolist() and sum(pack) % 2 == 0
    for pack in LAYOUTS["unaligned"]:
        border = -(-sum(pack) // 2)
        assert border not in np.cumsum(pack).tolist()


def test_withheld_boundaries_change_the_logits(sp_results):
    for c in sp_results["cases"]:
        assert c["logits_diff_without_boundaries"] > 1e-2, c
        assert c["logits_diff_without_boundaries"] > 1e6 * max(c["logits_diff_with_boundaries"], 1e-15), c


# ------------------------------------------------------------------------------------------------------------
# slow: the real trainer through the CLI
# ------------------------------------------------------------------------------------------------------------


def _train_cmd(start, tokens, out, plan, grad_accum, extra=()):
    return [
        *start,  # ends with the launcher's module flag
        "longalign.cli",
        "train",
        "--tokens",
        str(tokens),
        "--output-dir",
        str(out),
        "--method",
        "pack",
        "--max-len",
        "40",
        "--grad-accum",
        str(grad_accum),
        "--plan",
        str(plan),
        *COMMON,
        *extra,
    ]


def _torchrun():
    port = str(free_port())
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port, "-m"]


def _same_run(a: Path, b: Path) -> None:
    ra, rb = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == [1, 2]
    for x, y in zip(ra, rb):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-6)
        assert y["loss_token_mean"] == pytest.approx(x["loss_token_mean"], rel=1e-6)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-5), (x["grad_norm"], y["grad_norm"])
        assert (y["sequences"], y["target_tokens"], y["real_tokens"], y["packs"]) == (
            x["sequences"],
            x["target_tokens"],
            x["real_tokens"],
            x["packs"],
        )
    # the bounded tolerance of tests/test_train_dist.py: a few elements, each within what AdamW can step
    off, worst = assert_trained_alike(a, b)
    print(f"\n{b.name} against {a.name}: {off} elements beyond 1e-5, largest difference {worst:.3g}")


@pytest.fixture
def packed_plan(tmp_path):
    from longalign.batching import make_plan

    tokens = make_tokens(tmp_path / "tokens")
    # 8 sequences in 4 packs of up to 40 tokens: 2 optimizer steps of 2 packs under either layout
    plan = make_plan(LENGTHS, "pack", max_len=40, world_size=2, grad_accum=1)
    plan.save(plan_path=tmp_path / "pack.plan.json")
    return tokens, tmp_path / "pack.plan.json"


@pytest.mark.slow
@pytest.mark.ci
def test_dp2_sp1_equals_dp1_sp2(tmp_path, packed_plan):
    tokens, plan = packed_plan
    launch(_train_cmd(_torchrun(), tokens, tmp_path / "dp2", plan, 1))
    launch(_train_cmd(_torchrun(), tokens, tmp_path / "sp2", plan, 2, ["--sp-size", "2"]))
    meta = json.loads((tmp_path / "sp2" / "run_meta.json").read_text())
    assert (meta["world_size"], meta["sp_size"], meta["dp_size"]) == (2, 2, 1)
    assert meta["attention_backend"] == spm.sp_attention_name("longalign_segment")
    _same_run(tmp_path / "dp2", tmp_path / "sp2")


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", pytest.param("zero3", marks=pytest.mark.ci)])
def test_sp2_under_zero_equals_dp2(tmp_path, packed_plan, zero):
    launcher = require("deepspeed")
    tokens, plan = packed_plan
    init = saved_initial_model(tmp_path / "init")  # ZeRO-3 initialises shard by shard: start from saved weights
    model = ["--model", str(init), "--tokenizer", "smollm2"]
    launch(_train_cmd(_torchrun(), tokens, tmp_path / "dp2", plan, 1, model))
    start = [launcher, "--no_local_rank", "--num_gpus", "2", "--master_port", str(free_port()), "--module"]
    extra = ["--sp-size", "2", "--deepspeed", f"configs/deepspeed/{zero}.json", *model]
    launch(_train_cmd(start, tokens, tmp_path / zero, plan, 2, extra))
    _same_run(tmp_path / "dp2", tmp_path / zero)
