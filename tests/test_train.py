"""Training stage: loss weighting through the Trainer, rank slicing, resume, context extension, errors.

All runs use the tiny random-init Llama of configs/models/tiny-llama (hidden 64, 2 layers, vocab 49,152)
on CPU in float32, on small literal datasets written as tokens folders in tmp_path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")

from longalign.rundir import read_jsonl  # noqa: E402
from longalign.train import TrainConfig, apply_context_extension, rope_base, train  # noqa: E402
from longalign.train.feed import PlanBatchSampler  # noqa: E402
from longalign.train.probes import packing_probe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = f"random:{ROOT / 'configs' / 'models' / 'tiny-llama'}"
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

LENGTHS = [12, 30, 7, 22, 16, 9, 27, 19]  # 8 sequences, 142 tokens


def make_tokens(
    folder: Path,
    lengths=LENGTHS,
    *,
    seed: int = 0,
    vocab_size: int = 49152,
    max_len: int = 64,
    tokenizer: str = "smollm2",
) -> Path:
    """A tokens folder with the contract's columns: labels on the second half of each sequence."""
    rng = np.random.default_rng(seed)
    ids, labels, n_target = [], [], []
    for n in lengths:
        seq = rng.integers(10, 2000, size=n).tolist()
        lab = [-100] * (n // 2) + seq[n // 2 :]
        ids.append(seq)
        labels.append(lab)
        n_target.append(sum(x != -100 for x in lab))
    ds = datasets.Dataset.from_dict(
        {
            "input_ids": ids,
            "labels": labels,
            "length": [len(s) for s in ids],
            "n_target": n_target,
            "source": ["test"] * len(ids),
            "lang": ["en"] * len(ids),
            "task_type": ["general"] * len(ids),
        }
    )
    ds.save_to_disk(str(folder))
    meta = {
        "tokenizer": tokenizer,
        "vocab_size": vocab_size,
        "chat_format": "template",
        "max_len": max_len,
        "truncation": "right",
        "n_rows": len(ids),
        "n_truncated": 0,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }
    (folder / "longalign_meta.json").write_text(json.dumps(meta))
    return folder


def cfg_for(tmp_path: Path, name: str, **kw) -> TrainConfig:
    base = dict(
        tokens=str(tmp_path / "tokens"),
        output_dir=str(tmp_path / name),
        model=TINY,
        method="pack",
        max_len=64,
        learning_rate=1e-3,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        epochs=1.0,
        save_steps=0,
        save_final=False,
        progress=False,
        seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def tokens(tmp_path):
    return make_tokens(tmp_path / "tokens")


class GradCapture:
    """Copies every parameter's gradient just before the first optimizer step."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Capture(TrainerCallback):
            grads: dict = {}

            def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
                if not self.grads:
                    self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

        return _Capture()


def first_step_grads(tmp_path, name, **kw):
    cap = GradCapture()
    train(cfg_for(tmp_path, name, max_steps=1, max_grad_norm=0.0, **kw), callbacks=[cap])
    assert cap.grads
    return cap.grads


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ------------------------------------------------------------------------------------------------ loss weights


def test_packed_sequence_gradients_equal_naive_sequence_gradients(tmp_path, tokens):
    from longalign.batching import make_plan

    k = len(make_plan(LENGTHS, "pack", max_len=64).batches)  # all 8 sequences in one step: K packs
    assert 2 <= k < 8
    naive = first_step_grads(tmp_path, "naive", method="naive", per_device_batch_size=8, loss_norm="sequence")
    packed = first_step_grads(tmp_path, "pack", method="pack", grad_accum=k, loss_norm="sequence")
    assert max_diff(naive, packed) < 1e-5


@pytest.mark.slow
def test_dense_mask_packing_matches_and_the_pack_mean_does_not(tmp_path, tokens):
    from longalign.batching import make_plan

    k = len(make_plan(LENGTHS, "pack", max_len=64).batches)
    naive = first_step_grads(tmp_path, "naive", method="naive", per_device_batch_size=8, loss_norm="sequence")
    dense = first_step_grads(
        tmp_path, "pack_sdpa", method="pack", grad_accum=k, loss_norm="sequence", attn_implementation="sdpa"
    )
    assert max_diff(naive, dense) < 1e-5
    # the biased per-pack mean is a different objective: its gradient differs
    biased = first_step_grads(tmp_path, "pack_bias", method="pack", grad_accum=k, loss_norm="pack")
    assert max_diff(naive, biased) > 1e-4


@pytest.mark.slow
def test_token_norm_equal_across_batchings_and_accumulation(tmp_path, tokens):
    # 8 sequences as 1 micro-batch of 8 vs 4 accumulated micro-batches of 2: same token-mean gradient
    one = first_step_grads(tmp_path, "t1", method="naive", per_device_batch_size=8, loss_norm="token")
    four = first_step_grads(tmp_path, "t4", method="naive", per_device_batch_size=2, grad_accum=4, loss_norm="token")
    assert max_diff(one, four) < 1e-5


def test_metrics_lines_match_the_chosen_normalisation(tmp_path, tokens):
    res = train(
        cfg_for(
            tmp_path,
            "m",
            method="naive",
            per_device_batch_size=4,
            grad_accum=2,
            max_steps=1,
            learning_rate=0.0,
            loss_norm="sequence",
        )
    )
    (rec,) = read_jsonl(res.metrics_path)
    assert rec["step"] == 1 and rec["sequences"] == 8 and rec["packs"] == 2
    assert rec["real_tokens"] == sum(LENGTHS) and rec["padded_tokens"] >= rec["real_tokens"]
    assert rec["target_tokens"] == sum(n - n // 2 for n in LENGTHS)
    assert rec["loss_norm"] == "sequence" and rec["method"] == "naive"
    # random init over 49,152 tokens: both losses near ln(49152) = 10.80
    assert abs(rec["loss"] - np.log(49152)) < 0.2 and abs(rec["loss_token_mean"] - np.log(49152)) < 0.2
    for key in ("epoch", "lr", "grad_norm", "tokens_per_s", "wall_s"):
        assert key in rec


# ------------------------------------------------------------------------------------------------ overfitting


@pytest.mark.slow
@pytest.mark.parametrize("method", ["naive", "sort", "pack"])
def test_loss_falls_when_overfitting_eight_sequences(tmp_path, tokens, method):
    res = train(
        cfg_for(
            tmp_path,
            method,
            method=method,
            per_device_batch_size=4,
            max_len=64,
            epochs=12.0,
            learning_rate=3e-3,
            save_final=(method == "pack"),
        )
    )
    recs = read_jsonl(res.metrics_path)
    losses = [r["loss"] for r in recs]
    assert [r["step"] for r in recs] == list(range(1, len(recs) + 1))
    assert losses[-1] < 0.6 * losses[0], losses
    meta = json.loads((res.output_dir / "run_meta.json").read_text())
    assert meta["method"] == method and meta["steps"] == len(recs) and meta["finished"]
    assert meta["attention_backend"] == ("longalign_segment" if method == "pack" else "sdpa")
    if method == "pack":
        assert meta["packing_check"]["packed_err"] < 1e-4 < meta["packing_check"]["leak_err"]
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(res.final_dir)
        assert (res.final_dir / "tokenizer_config.json").is_file()
        assert model.config.use_cache is True


# ------------------------------------------------------------------------------------------------ data order


def test_sampler_gives_each_rank_its_slice_and_pads_the_last_step():
    batches = [[i] for i in range(9)]
    r0 = list(PlanBatchSampler(batches, world_size=2, rank=0, grad_accum=2, filler_index=5))
    r1 = list(PlanBatchSampler(batches, world_size=2, rank=1, grad_accum=2, filler_index=5))
    assert r0 == [[0], [2], [4], [6], [8]]
    assert r1 == [[1], [3], [5], [7], [-6]]  # filler: row 5 with weight 0
    assert len(PlanBatchSampler(batches, 2, 0, 2, 5)) == 5


def test_later_epochs_shuffle_whole_steps_only():
    batches = [[i] for i in range(10)]
    s = PlanBatchSampler(batches, world_size=1, rank=0, grad_accum=3, filler_index=0, seed=1)
    s.set_epoch(1)
    steps = s.step_batches(1)
    assert sorted(tuple(b[0] for b in st) for st in steps) == [(0, 1, 2), (3, 4, 5), (6, 7, 8), (9,)]
    assert steps[-1] == [[9]]
    assert [b for b in s] == [b for st in steps for b in st]


# ------------------------------------------------------------------------------------------------ resume


class StopAt:
    def __new__(cls, step):
        from transformers import TrainerCallback

        class _Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == step:
                    raise KeyboardInterrupt(f"killed at step {step}")

        return _Stop()


@pytest.mark.slow
@pytest.mark.ci
def test_kill_and_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path, tokens):
    """Killed after step 6, resumed from the step-5 checkpoint: the same losses, learning rates and final weights
    as the run never interrupted, bit for bit (one process, the same reduction order: nothing may differ)."""
    from safetensors.torch import load_file

    # 4 steps per epoch; 7 steps cross an epoch boundary; checkpoint at 5, killed at 6 (mid epoch 2)
    kw = dict(
        method="naive",
        per_device_batch_size=2,
        max_steps=7,
        save_steps=5,
        lr_scheduler="cosine",
        warmup_ratio=0.2,
        save_final=True,
    )
    full = train(cfg_for(tmp_path, "full", **kw))
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(tmp_path, "cut", **kw), callbacks=[StopAt(6)])
    assert [r["step"] for r in read_jsonl(tmp_path / "cut" / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="--resume"):
        train(cfg_for(tmp_path, "cut", **kw))
    resumed = train(cfg_for(tmp_path, "cut", resume=True, **kw))
    a, b = read_jsonl(full.metrics_path), read_jsonl(resumed.metrics_path)
    assert [r["step"] for r in b] == list(range(1, 8))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["lr"] for r in a] == [r["lr"] for r in b]
    assert [r["grad_norm"] for r in a] == [r["grad_norm"] for r in b]
    assert b[-1]["wall_s"] >= b[4]["wall_s"]
    wa, wb = (
        load_file(str(full.final_dir / "model.safetensors")),
        load_file(str(resumed.final_dir / "model.safetensors")),
    )
    assert sorted(wa) == sorted(wb)
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []


# ------------------------------------------------------------------------------------------------ context


def test_context_extension_handles_both_config_layouts():
    from transformers import LlamaConfig

    new = LlamaConfig(
        hidden_size=32, num_attention_heads=2, num_hidden_layers=1, intermediate_size=64, max_position_embeddings=4096
    )
    assert rope_base(new) == 10000.0
    apply_context_extension(new, 200, 65536)
    assert rope_base(new) == 2_000_000.0 and new.max_position_embeddings == 65536

    class Old:  # a config with a flat rope_theta attribute (transformers 4 layout)
        rope_theta = 10000.0
        max_position_embeddings = 4096

    old = apply_context_extension(Old(), 200, 2048)
    assert old.rope_theta == 2_000_000.0 and old.max_position_embeddings == 4096


@pytest.mark.slow
def test_rope_scale_run_records_and_saves_the_new_base(tmp_path, tokens):
    res = train(cfg_for(tmp_path, "rope", method="pack", max_steps=1, rope_scale=200.0, max_len=8192, save_final=True))
    assert res.run_meta["rope_theta"] == 2_000_000.0 and res.run_meta["max_position_embeddings"] == 8192
    from transformers import AutoConfig

    saved = AutoConfig.from_pretrained(res.final_dir)
    assert rope_base(saved) == 2_000_000.0 and saved.max_position_embeddings == 8192


# ------------------------------------------------------------------------------------------------ errors


def test_missing_tokens_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="longalign tokenize"):
        train(cfg_for(tmp_path, "x"))


def test_tokens_from_another_tokenizer(tmp_path):
    make_tokens(tmp_path / "tokens", vocab_size=32000, tokenizer="meta-llama/Llama-2-7b-hf")
    with pytest.raises(ValueError, match="does not match the model's tokenizer"):
        train(cfg_for(tmp_path, "x"))


def test_max_len_over_the_model_context(tmp_path, tokens):
    with pytest.raises(ValueError, match="max_position_embeddings=4096.*--rope-scale"):
        train(cfg_for(tmp_path, "x", max_len=8192))


def test_backend_that_cannot_isolate_packed_sequences(tmp_path, tokens):
    import torch.nn.functional as F
    from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM

    from longalign.batching import PackedCollator

    def whole_row_causal(module, q, k, v, attention_mask, scaling=None, dropout=0.0, **kw):
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scaling, enable_gqa=q.shape[1] != k.shape[1]
        )
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("test_whole_row", whole_row_causal)
    with pytest.raises(ValueError, match="cannot keep packed sequences apart"):
        train(cfg_for(tmp_path, "x", attn_implementation="test_whole_row"))
    config = AutoConfig.from_pretrained(ROOT / "configs" / "models" / "tiny-llama")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="test_whole_row")
    with pytest.raises(ValueError, match="does not keep packed sequences apart"):
        packing_probe(model, PackedCollator(64), "cpu", None, 49152, "test_whole_row")


def test_unknown_choices_are_rejected(tmp_path, tokens):
    with pytest.raises(ValueError, match="'naive', 'sort', 'pack'"):
        train(cfg_for(tmp_path, "x", method="bucket"))


# ------------------------------------------------------------------------------------------------ configs + CLI


def test_shipped_yaml_configs_parse_and_name_their_command():
    from longalign.config import build_config

    files = sorted((ROOT / "configs" / "train").glob("*.yaml"))
    assert len(files) >= 3
    for path in files:
        first = path.read_text().splitlines()[0]
        assert first.startswith("#") and "train --config" in first and path.name in first
        cfg = build_config(TrainConfig, config_file=path)
        assert cfg.method in ("naive", "sort", "pack")
        if cfg.deepspeed:
            assert (ROOT / cfg.deepspeed).is_file()
    for name in ("zero2", "zero3", "zero3_offload"):
        json.loads((ROOT / "configs" / "deepspeed" / f"{name}.json").read_text())


def test_cli_train_with_run_dir(tmp_path):
    from longalign.cli import main

    run = tmp_path / "run"
    make_tokens(run / "tokens")
    rc = main(
        [
            "train",
            "--config",
            str(ROOT / "configs" / "train" / "tiny_test.yaml"),
            "--run",
            str(run),
            "--max-steps",
            "2",
            "--progress",
            "false",
        ]
    )
    assert rc == 0
    recs = read_jsonl(run / "train" / "pack" / "metrics.jsonl")
    assert [r["step"] for r in recs] == [1, 2]
    info = json.loads((run / "run.json").read_text())
    assert "train.pack" in info["stages"]
    assert "run" not in info["stages"]["train.pack"]["config"]  # the run directory is not a training option


def test_deprecated_train_config_run_still_trains_in_that_run(tmp_path):
    from longalign.config import DeprecatedOption
    from longalign.rundir import RunDir

    run = RunDir(tmp_path / "run")
    make_tokens(run.tokens)
    with pytest.warns(DeprecatedOption, match="the train option 'run' is deprecated"):
        cfg = TrainConfig(run=str(run.root), model=TINY, max_len=64, max_steps=1, save_steps=0, progress=False)
    res = train(cfg)
    assert res.output_dir == run.train("pack") and res.metrics_path == run.metrics("pack")
    assert [r["step"] for r in read_jsonl(run.metrics("pack"))] == [1]
    assert json.loads(run.run_json.read_text())["stages"]["train.pack"]["summary"]["steps"] == 1


# ------------------------------------------------------------------------------------------------ real model

CONVERSATIONS = [
    (
        "What does a lighthouse keeper do?",
        "A lighthouse keeper tends the light, cleans the lens, winds the clockwork and records the weather.",
    ),
    ("Name three planets close to the sun.", "Mercury, Venus and Earth are the three planets closest to the sun."),
    (
        "How do you make a cup of tea?",
        "Boil water, pour it over the tea leaves, wait three to five minutes, then remove the leaves.",
    ),
    (
        "Why is the sky blue?",
        "Air scatters short blue wavelengths of sunlight much more than red ones, so blue light reaches us "
        "from every part of the sky.",
    ),
    (
        "What is a prime number?",
        "A prime number is a whole number above one whose only divisors are one and itself, such as 2, 3, 5 and 7.",
    ),
    (
        "Summarise the water cycle.",
        "Water evaporates, condenses into clouds, falls as rain or snow, and flows back to rivers and seas.",
    ),
]


@pytest.mark.slow
def test_short_sft_of_the_embedded_model_saves_a_model_that_reloads_and_generates(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from longalign.tokenize import TokenizeConfig, tokenize_file

    rows = []
    for k in range(3):  # 18 conversations, each with a short context paragraph in front of the question
        for q, ans in CONVERSATIONS:
            context = " ".join(f"Note {k}.{j}: {ans}" for j in range(3))
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": f"{context}\n\n{q}"},
                        {"role": "assistant", "content": ans},
                    ],
                    "source": "test",
                }
            )
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenize_file(data, tmp_path / "tokens", TokenizeConfig(model="smollm2", max_len=512), show_progress=False)
    res = train(
        TrainConfig(
            tokens=str(tmp_path / "tokens"),
            output_dir=str(tmp_path / "out"),
            model="smollm2",
            method="pack",
            max_len=512,
            grad_accum=1,
            max_steps=4,
            learning_rate=5e-5,
            warmup_ratio=0.0,
            save_steps=2,
            progress=False,
        )
    )
    recs = read_jsonl(res.metrics_path)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["real_tokens"] > 200 for r in recs)
    assert res.run_meta["model"] == "SmolLM2-135M-Instruct"
    tok = AutoTokenizer.from_pretrained(res.final_dir)
    model = AutoModelForCausalLM.from_pretrained(res.final_dir)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Why is the sky blue?"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert out.shape[1] > ids.shape[1] and text.strip()


def test_plan_file_is_checked_against_the_tokens(tmp_path, tokens):
    from longalign.train.feed import plan_from_file

    lengths = np.array(LENGTHS)
    good = tmp_path / "good.plan.json"
    good.write_text(json.dumps({"batches": [[1, 5], [6, 0], [3, 4], [7, 2]]}))
    plan = plan_from_file(good, lengths, cfg_for(tmp_path, "x"), 40, 1)
    assert plan.batches == [[1, 5], [6, 0], [3, 4], [7, 2]] and plan.stats["n_tokens"] == sum(LENGTHS)
    for batches, message in (
        ([[1, 8]], "outside the 8 rows"),
        ([[1], [1]], "appears twice"),
        ([[1, 6]], "holds 57 tokens > max_len=40"),
    ):
        bad = tmp_path / "bad.plan.json"
        bad.write_text(json.dumps({"batches": batches}))
        with pytest.raises(ValueError, match=message):
            plan_from_file(bad, lengths, cfg_for(tmp_path, "x"), 40, 1)


def test_cpu_training_applies_and_records_its_allocator_setting(tmp_path, tokens, monkeypatch):
    import longalign.train.model_setup as model_setup

    asked = []
    monkeypatch.setattr(model_setup.allocator, "apply_in_process", lambda d, environ=None: asked.append(d) or "lean")
    result = train(cfg_for(tmp_path, "alloc", max_steps=1, cpu_allocator="lean"))
    assert [(d.requested, d.setting) for d in asked] == [("lean", "lean")]
    assert result.run_meta["cpu_allocator"] == "lean"
    assert json.loads((tmp_path / "alloc" / "run_meta.json").read_text())["cpu_allocator"] == "lean"
