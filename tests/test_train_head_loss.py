"""The chunked loss from hidden states equals the loss read from the full logits.

Loss and every parameter gradient are compared over whole optimizer steps of real plans (pack, padded batches,
a filler micro-batch) with the weights of each loss normalisation, for tied and untied heads, in float64
(1e-10) and float32 (1e-5). A dispatch-mode probe shows that the chunked path never builds an ``[L, V]`` tensor.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from longalign import IGNORE_INDEX  # noqa: E402
from longalign.batching import PackedCollator, PaddedCollator, make_plan, plan_features, token_weights  # noqa: E402
from longalign.batching.head_loss import (  # noqa: E402
    chunked_head_loss,
    install_loss_head,
    loss_request,
    read_loss_output,
)
from longalign.batching.loss import LOSS_NORMS, default_chunk_rows, weighted_and_plain_ce  # noqa: E402

torch.set_num_threads(1)
VOCAB = 320
LENGTHS = [11, 4, 9, 15, 6, 13, 8, 3]


def tiny_model(tied: bool, dtype, seed: int = 0) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(dtype)


def dataset(lengths=LENGTHS, seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for n in lengths:
        ids = rng.integers(3, VOCAB, size=n).tolist()
        k = int(rng.integers(1, max(2, n)))  # prompt of k tokens, the rest is the target
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * k + ids[k:]})
    return rows


class Rows:
    """The minimal dataset interface plan_features reads."""

    def __init__(self, rows):
        self.rows = rows

    def __getitem__(self, i):
        return self.rows[int(i)]

    def __len__(self):
        return len(self.rows)


def step_micro_batches(method: str, loss_norm: str, *, filler: bool = False):
    rows = dataset()
    lengths = np.array([len(r["input_ids"]) for r in rows])
    n_target = np.array([sum(x != IGNORE_INDEX for x in r["labels"][1:]) for r in rows])
    plan = make_plan(lengths, method, max_len=24, batch_size=3, world_size=1, grad_accum=64, seed=0)
    w = token_weights(plan, n_target, loss_norm)
    collate = PackedCollator(24) if method == "pack" else PaddedCollator(pad_token_id=0)
    batches = [collate(plan_features(Rows(rows), b, w)) for b in plan.batches]
    if filler:  # a micro-batch that only pads a short step: real tokens, zero weights
        batches.append(collate([dict(f, token_weight=0.0) for f in plan_features(Rows(rows), plan.batches[0], w)]))
    return batches


def forward_kwargs(batch):
    kw = {"input_ids": batch["input_ids"], "use_cache": False}
    if "position_ids" in batch:
        kw["position_ids"] = batch["position_ids"]
    elif batch.get("attention_mask") is not None:
        kw["attention_mask"] = batch["attention_mask"]
    return kw


def run_full(model, batches, dtype):
    total = torch.zeros((), dtype=torch.float64)
    plain = 0.0
    for b in batches:
        logits = model(**forward_kwargs(b)).logits
        loss, p = weighted_and_plain_ce(logits, b["labels"], b["loss_weights"].to(dtype))
        loss.backward()
        total += loss.detach().double()
        plain += float(p.detach())
    return float(total), plain


def run_chunked(model, batches, dtype, chunk_rows=5):
    head = install_loss_head(model)
    total = torch.zeros((), dtype=torch.float64)
    plain = 0.0
    for b in batches:
        with loss_request(head, b["labels"], b["loss_weights"].to(dtype), chunk_rows):
            out = model(**forward_kwargs(b))
        loss, p = read_loss_output(out.logits)
        loss.backward()
        total += loss.detach().double()
        plain += float(p.detach())
    return float(total), plain


def assert_same_grads(a, b, tol):
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for name in pa:
        ga, gb = pa[name].grad, pb[name].grad
        assert ga is not None and gb is not None, name
        scale = float(ga.abs().max()) or 1.0
        assert float((ga - gb).abs().max()) <= tol * scale, (name, float((ga - gb).abs().max()), scale)


class TestChunkedEqualsFull:
    @pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
    @pytest.mark.parametrize("tied", [True, False])
    @pytest.mark.parametrize("loss_norm", LOSS_NORMS)
    @pytest.mark.parametrize("method", ["pack", "naive"])
    def test_loss_and_every_gradient(self, method, loss_norm, tied, dtype, tol):
        batches = step_micro_batches(method, loss_norm, filler=True)
        ref = tiny_model(tied, dtype)
        new = copy.deepcopy(ref)
        full_loss, full_plain = run_full(ref, batches, dtype)
        chunk_loss, chunk_plain = run_chunked(new, batches, dtype)
        assert abs(full_loss - chunk_loss) <= tol * abs(full_loss)
        assert abs(full_plain - chunk_plain) <= tol * abs(full_plain)
        assert_same_grads(ref, new, tol)

    def test_a_filler_micro_batch_alone_gives_zero_loss_and_zero_gradients(self):
        batch = step_micro_batches("pack", "sequence", filler=True)[-1]
        assert float(batch["loss_weights"].abs().sum()) == 0.0
        model = tiny_model(True, torch.float64)
        loss, plain = run_chunked(model, [batch], torch.float64)
        assert loss == 0.0 and plain > 0.0  # the statistic still counts the tokens' cross-entropy
        for name, p in model.named_parameters():
            assert p.grad is not None and float(p.grad.abs().max()) == 0.0, name

    def test_chunk_size_does_not_change_the_result(self):
        batches = step_micro_batches("pack", "sequence")
        results = []
        for rows in (1, 3, 7, 10_000):
            m = tiny_model(False, torch.float64)
            results.append(run_chunked(m, batches, torch.float64, chunk_rows=rows))
        assert all(abs(r[0] - results[0][0]) <= 1e-12 * abs(results[0][0]) for r in results)

    def test_upstream_gradient_scales_every_gradient(self):
        """An outer factor (world size, a loss scale) must reach the head weight as well as the hidden states.

        (Llama's RMSNorm computes in float32 even in a float64 model, so x3 is exact only to float32 rounding.)"""
        batches = step_micro_batches("pack", "token")
        a, b = tiny_model(True, torch.float64), tiny_model(True, torch.float64)
        ha, hb = install_loss_head(a), install_loss_head(b)
        for model, head, factor in ((a, ha, 1.0), (b, hb, 3.0)):
            for bt in batches:
                with loss_request(head, bt["labels"], bt["loss_weights"].double()):
                    loss, _ = read_loss_output(model(**forward_kwargs(bt)).logits)
                (loss * factor).backward()
        for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
            assert float((pb.grad - 3.0 * pa.grad).abs().max()) <= 1e-6 * float(pa.grad.abs().max()), name

    def test_bf16_autocast_stays_close_and_accumulates_in_float32(self):
        batches = step_micro_batches("pack", "sequence")
        ref, new = tiny_model(True, torch.float32), tiny_model(True, torch.float32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            full_loss, _ = run_full(ref, batches, torch.float32)
            chunk_loss, _ = run_chunked(new, batches, torch.float32)
        assert abs(full_loss - chunk_loss) <= 2e-2 * abs(full_loss)
        head = new.get_output_embeddings()
        assert head.weight.grad.dtype == torch.float32


class TestFusedGradient:
    """The trainer's path forms the head's gradients in the forward; a gradient of the plain sum recomputes."""

    @staticmethod
    def head_products(fn) -> tuple[int, int]:
        """``(forward, backward)`` matrix products whose output has a vocabulary-sized dimension."""
        from torch.utils._python_dispatch import TorchDispatchMode

        counts = {"phase": "forward", "forward": 0, "backward": 0}

        class Count(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                name = str(func.overloadpacket).split(".")[-1]
                if name in ("mm", "addmm", "addmm_", "bmm", "linear") and VOCAB in tuple(out.shape):
                    counts[counts["phase"]] += 1
                return out

        with Count():
            fn(counts)
        return counts["forward"], counts["backward"]

    def test_the_backward_recomputes_no_logits(self):
        model = tiny_model(False, torch.float32)
        head = install_loss_head(model)
        batch = step_micro_batches("pack", "sequence")[0]
        n_rows = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        chunk = 4

        def step(counts):
            with loss_request(head, batch["labels"], batch["loss_weights"], chunk):
                loss, _ = read_loss_output(model(**forward_kwargs(batch)).logits)
            counts["phase"] = "backward"
            (loss * 2.0).backward()

        fwd, bwd = self.head_products(step)
        chunks = -(-n_rows // chunk)
        assert (fwd, bwd) == (2 * chunks, 0)  # per chunk: the logits and the head weight's gradient

    def test_without_gradients_the_forward_forms_no_gradient(self):
        model = tiny_model(False, torch.float32)
        head = install_loss_head(model)
        batch = step_micro_batches("pack", "sequence")[0]
        n_rows = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

        def forward(counts):
            with torch.no_grad(), loss_request(head, batch["labels"], batch["loss_weights"], 4):
                model(**forward_kwargs(batch))

        assert self.head_products(forward) == (-(-n_rows // 4), 0)

    @pytest.mark.parametrize("which", ["plain", "both"])
    def test_a_gradient_of_the_plain_sum_matches_the_full_path(self, which):
        batch = step_micro_batches("pack", "token")[0]
        grads = []
        for chunked in (False, True):
            model = tiny_model(False, torch.float64)
            hidden = model.model(**forward_kwargs(batch)).last_hidden_state
            weight = model.get_output_embeddings().weight
            if chunked:
                weighted, plain = chunked_head_loss(hidden, weight, None, batch["labels"], batch["loss_weights"], 3)
            else:  # the reference, with a differentiable plain sum
                logits = (hidden @ weight.t())[0, :-1]
                ce = torch.nn.functional.cross_entropy(logits, batch["labels"][0, 1:], reduction="none")
                weighted = (ce * batch["loss_weights"][0, 1:].double()).sum()
                plain = ce.sum()
            (plain if which == "plain" else weighted + 0.5 * plain).backward()
            grads.append(model)
        assert_same_grads(*grads, 1e-10)

    def test_the_head_module_returns_the_plain_sum_without_a_gradient(self):
        model = tiny_model(False, torch.float32)
        head = install_loss_head(model)
        batch = step_micro_batches("pack", "sequence")[0]
        with loss_request(head, batch["labels"], batch["loss_weights"]):
            weighted, plain = read_loss_output(model(**forward_kwargs(batch)).logits)
        assert weighted.requires_grad and plain.grad_fn is not None  # a view of the head's output
        plain.backward()  # the detached element: every parameter's gradient is zero (or absent)
        assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in model.parameters())


class TestMemory:
    def test_no_tensor_of_positions_times_vocab_is_ever_built(self):
        """Every tensor any op produces in forward + backward is recorded; the largest stays O(chunk x V)."""
        from torch.utils._python_dispatch import TorchDispatchMode

        class Largest(TorchDispatchMode):
            biggest = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in out if isinstance(out, (tuple, list)) else (out,):
                    if isinstance(t, torch.Tensor):
                        Largest.biggest = max(Largest.biggest, t.numel())
                return out

        L, chunk = 600, 8
        model = tiny_model(True, torch.float32)
        head = install_loss_head(model)
        ids = torch.randint(3, VOCAB, (1, L))
        labels = ids.clone()
        w = torch.full((1, L), 1.0 / L)
        Largest.biggest = 0
        with Largest():
            with loss_request(head, labels, w, chunk):
                loss, _ = read_loss_output(model(input_ids=ids, use_cache=False).logits)
            loss.backward()
        assert Largest.biggest < L * VOCAB / 4  # the [L, V] logits would be 600 x 320 = 192,000 elements
        assert Largest.biggest <= max(VOCAB * 32 * 2, chunk * VOCAB, L * 64 * 2)  # weights, one chunk, activations

    def test_default_chunk_holds_about_128_mb_of_float32_logits(self):
        assert default_chunk_rows(49_152) == 682
        assert default_chunk_rows(128_256) == 261
        assert default_chunk_rows(10**9) == 16


class TestHead:
    def test_the_head_module_is_called_once_per_micro_batch_whatever_the_chunking(self):
        """ZeRO-3 gathers a module's weight in its forward pre-hook (and again before its backward, through the
        module's output): one call per micro-batch means one gather each way, not one per chunk."""
        model = tiny_model(True, torch.float32)
        head = install_loss_head(model)
        calls = []
        head.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape))
        batch = step_micro_batches("pack", "sequence")[0]
        with loss_request(head, batch["labels"], batch["loss_weights"], chunk_rows=1):
            out = model(**forward_kwargs(batch))
        loss, _ = read_loss_output(out.logits)
        assert out.logits.requires_grad  # the gradient flows back through the head's own output
        loss.backward()
        assert len(calls) == 1

    def test_the_head_is_a_plain_linear_outside_a_request(self):
        model = tiny_model(False, torch.float32)
        ids = torch.randint(3, VOCAB, (2, 7))
        before = model(input_ids=ids, use_cache=False).logits
        install_loss_head(model)
        after = model(input_ids=ids, use_cache=False).logits
        assert torch.equal(before, after)
        assert isinstance(model.get_output_embeddings(), torch.nn.Linear)

    def test_state_dict_keys_and_saving_are_unchanged(self, tmp_path):
        model = tiny_model(True, torch.float32)
        keys = sorted(model.state_dict())
        install_loss_head(model)
        assert sorted(model.state_dict()) == keys
        model.save_pretrained(tmp_path / "m")
        again = LlamaForCausalLM.from_pretrained(tmp_path / "m")
        for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
            assert torch.equal(a, b), n

    def test_a_non_linear_output_layer_is_refused_with_the_fix(self):
        model = tiny_model(False, torch.float32)
        model.lm_head = torch.nn.Sequential(model.lm_head)
        with pytest.raises(ValueError, match="--loss-impl full"):
            install_loss_head(model)

    def test_shape_mismatch_is_named(self):
        model = tiny_model(False, torch.float32)
        with pytest.raises(ValueError, match="shape mismatch"):
            chunked_head_loss(
                torch.zeros(1, 4, 32),
                model.lm_head.weight,
                None,
                torch.zeros(1, 5, dtype=torch.long),
                torch.zeros(1, 5),
            )


class TestTraining:
    def test_two_steps_with_chunked_reproduce_the_full_run(self, tmp_path):
        """Losses to 1e-6 relative; parameters to 1e-6 after two AdamW steps, except for a handful of elements
        per tensor. AdamW divides each gradient by its own running magnitude, so an element whose gradient is
        within float32 rounding of zero can take the other sign under a different reduction order (another
        thread count, another CPU) and move by up to 2 x lr: at 2 threads one of 8,192 elements of a layer does.
        A wrong gradient (a lost weight, a missing chunk) moves far more than 0.1% of a tensor."""
        from test_train import TINY, make_tokens

        from longalign.rundir import read_jsonl
        from longalign.train import TrainConfig, train

        make_tokens(tmp_path / "tokens")
        finals = {}
        for impl in ("full", "chunked"):
            cfg = TrainConfig(
                tokens=str(tmp_path / "tokens"),
                output_dir=str(tmp_path / impl),
                model=TINY,
                method="pack",
                max_len=64,
                learning_rate=1e-4,
                lr_scheduler="constant",
                warmup_ratio=0.0,
                max_steps=2,
                grad_accum=2,
                save_steps=0,
                save_final=True,
                progress=False,
                seed=0,
                loss_impl=impl,
            )
            res = train(cfg)
            finals[impl] = (read_jsonl(res.metrics_path), res.final_dir)
            meta = json.loads((Path(res.output_dir) / "run_meta.json").read_text())
            assert meta["loss_impl"] == impl
        (mf, df), (mc, dc) = finals["full"], finals["chunked"]
        assert len(mf) == len(mc) == 2
        for a, b in zip(mf, mc):
            for key in ("loss", "loss_token_mean"):
                assert abs(a[key] - b[key]) <= 1e-6 * abs(a[key]), key
            assert a["target_tokens"] == b["target_tokens"]
        from safetensors.torch import load_file

        from longalign.models import load_model

        w0 = load_model(TINY, seed=0).state_dict()
        wa, wb = load_file(str(Path(df) / "model.safetensors")), load_file(str(Path(dc) / "model.safetensors"))
        assert wa.keys() == wb.keys()
        for k in wa:
            assert float((wa[k] - w0[k]).abs().max()) > 1e-5, k  # every tensor trained
            off = int(((wa[k] - wb[k]).abs() > 1e-6).sum())
            assert off <= max(2, wa[k].numel() // 1000), (k, off, wa[k].numel())

    def test_a_model_that_transforms_its_logits_is_refused(self):
        from longalign.train.probes import loss_probe

        model = tiny_model(False, torch.float32)
        head = install_loss_head(model)
        inner_forward = model.forward

        def scaled_forward(*a, **kw):  # a logit scale after the output layer, as some architectures have
            out = inner_forward(*a, **kw)
            out.logits = out.logits * 2.0
            return out

        model.forward = scaled_forward
        with pytest.raises(ValueError, match="--loss-impl full"):
            loss_probe(model, head, "cpu", None, VOCAB)
        model.forward = inner_forward
        assert loss_probe(model, head, "cpu", None, VOCAB)["loss_rel_err"] <= 1e-5
