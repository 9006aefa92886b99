"""Packed attention keeps sequences apart: packed logits (and gradients) equal per-sequence ones."""

import pytest
import torch

from longalign.batching import PackedCollator
from longalign.batching.attention import (
    FLEX,
    SEGMENT,
    check_packed_batch,
    install_packed_guard,
    is_packed_positions,
    packed_forward,
    register_attention,
    segments_from_positions,
    select_attention,
    varlen_attention_forward,
)

LENS = [5, 9, 3, 12, 1]


def tiny_llama(impl: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    register_attention()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=101,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    model = LlamaForCausalLM(cfg).float()
    model.set_attn_implementation(impl)
    return model.eval()


def packed_inputs(lens=LENS):
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 101, (n,), generator=g) for n in lens]
    batch = PackedCollator(64)([{"input_ids": s, "labels": s} for s in seqs])
    return seqs, batch


@pytest.mark.parametrize("impl", ["eager", "sdpa", SEGMENT, FLEX])
def test_packed_logits_equal_per_sequence(impl):
    model = tiny_llama(impl)
    seqs, batch = packed_inputs()
    with torch.no_grad():
        ref = torch.cat([model(input_ids=s[None], use_cache=False).logits[0] for s in seqs])
        out = packed_forward(model, batch).logits[0]
        plain = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
    assert model.config._attn_implementation == impl
    assert (out - ref).abs().max().item() <= 1e-5
    assert (plain - ref).abs().max().item() <= 1e-5  # boundaries from position_ids alone


@pytest.mark.parametrize("impl,lens", [("sdpa", LENS), (SEGMENT, LENS), (SEGMENT, [4, 4, 4, 7, 2, 2, 9])])
def test_packed_gradients_equal_per_sequence(impl, lens):
    """Also runs of equal-length sequences, which the segment backend batches into one call."""
    seqs, batch = packed_inputs(lens)
    model = tiny_llama(impl).train()
    ref_logits = [model(input_ids=s[None], use_cache=False).logits for s in seqs]
    sum(x.pow(2).sum() for x in ref_logits).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = packed_forward(model, batch).logits
    assert (logits[0] - torch.cat(ref_logits, 1)[0]).abs().max().item() <= 1e-5
    logits.pow(2).sum().backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, ref[n], atol=1e-4, rtol=1e-4), n


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_transformers_mixes_sequences_without_the_precautions(impl):
    """Why the guard exists: with a cache or a 2-D mask transformers attends across the pack."""
    model = tiny_llama(impl)
    seqs, batch = packed_inputs()
    with torch.no_grad():
        ref = torch.cat([model(input_ids=s[None], use_cache=False).logits[0] for s in seqs])
        cached = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits[0]
        masked = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            use_cache=False,
            attention_mask=torch.ones_like(batch["input_ids"]),
        ).logits[0]
    assert (cached - ref).abs().max().item() > 1e-3
    assert (masked - ref).abs().max().item() > 1e-3


def test_guard():
    _, batch = packed_inputs()
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    with pytest.raises(ValueError, match="use_cache"):
        check_packed_batch(inputs, use_cache=True)
    with pytest.raises(ValueError, match="use_cache"):
        check_packed_batch(inputs, use_cache=None)  # config default: on
    with pytest.raises(ValueError, match="attention_mask"):
        check_packed_batch({**inputs, "attention_mask": torch.ones(1, sum(LENS))}, use_cache=False)
    assert check_packed_batch(inputs, use_cache=False) is True
    plain = {"position_ids": torch.arange(6)[None], "attention_mask": torch.ones(1, 6)}
    assert check_packed_batch(plain, use_cache=True) is False

    model = tiny_llama("sdpa")
    handle = install_packed_guard(model)
    with pytest.raises(ValueError, match="packed batch"):
        model(**inputs)
    model(**inputs, use_cache=False)
    handle.remove()


def test_segments_and_detection():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0]])
    assert is_packed_positions(pos) and not is_packed_positions(torch.arange(5)[None])
    assert segments_from_positions(pos) == [[(0, 3), (3, 5), (5, 6)]]


def test_segment_attention_padded_batch_matches_sdpa():
    """Without packing the segment backend is ordinary causal attention, padding mask included."""
    a, b = tiny_llama("sdpa"), tiny_llama(SEGMENT)
    ids = torch.randint(0, 101, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        x = a(input_ids=ids, attention_mask=mask, use_cache=False).logits
        y = b(input_ids=ids, attention_mask=mask, use_cache=False).logits
    assert (x[0] - y[0]).abs().max() <= 1e-5 and (x[1, :4] - y[1, :4]).abs().max() <= 1e-5


def test_select_attention_cpu():
    assert select_attention("cpu", packed=True) == SEGMENT
    assert select_attention("cpu", packed=False) == "sdpa"
    from transformers import AttentionInterface

    assert SEGMENT in AttentionInterface._global_mapping and FLEX in AttentionInterface._global_mapping


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_cuda_backends_match_per_sequence(dtype):
    impl = select_attention("cuda", packed=True, dtype=dtype)
    for name in {impl, FLEX}:
        model = tiny_llama(name).to("cuda", dtype)
        seqs, batch = packed_inputs()
        batch = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in batch.items()}
        with torch.no_grad():
            ref = torch.cat([model(input_ids=s[None].cuda(), use_cache=False).logits[0] for s in seqs])
            out = packed_forward(model, batch).logits[0]
        assert (out.float() - ref.float()).abs().max().item() <= 5e-2, name


@pytest.mark.parametrize("gqa", [False, True])
def test_varlen_kernel_gets_one_half_dtype(monkeypatch, gqa):
    """Under autocast transformers hands the attention a float32 query and key (the rotary embedding multiplies
    by float32 cos/sin) next to a bf16 value; torch's varlen flash kernel takes one fp16/bf16 dtype. Checked on a
    CPU through the kernel's shape function (meta tensors); what reaches the kernel is recorded."""
    varlen = pytest.importorskip("torch.nn.attention.varlen")
    seen = []
    real = varlen.varlen_attn

    def recording(q, k, v, *args, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(varlen, "varlen_attn", recording)
    kv = 2 if gqa else 4
    q = torch.empty(1, 4, 12, 16, device="meta")
    k = torch.empty(1, kv, 12, 16, device="meta")
    v = torch.empty(1, kv, 12, 16, device="meta", dtype=torch.bfloat16)
    cu = torch.tensor([0, 5, 12], dtype=torch.int32)
    out, _ = varlen_attention_forward(torch.nn.Module(), q, k, v, None, scaling=0.25, cu_seq_lens_q=cu)
    assert seen == [(torch.bfloat16,) * 3]
    assert out.shape == (1, 12, 4, 16) and out.dtype == torch.bfloat16
    # all float32 (no autocast, no half input): passed on unchanged, the kernel's own check decides
    seen.clear()
    varlen_attention_forward(torch.nn.Module(), q, k, v.float(), None, scaling=0.25, cu_seq_lens_q=cu)
    assert seen == [(torch.float32,) * 3]
