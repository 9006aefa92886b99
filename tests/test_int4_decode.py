"""Int4 decoding of 4-bit-grid layers (longalign.llm.int4_decode) and the local models' dtype switch."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from longalign.llm import int4_decode
from longalign.llm.int4_decode import (
    DECODE_ATTENTION,
    Int4Linear,
    Int8GridLinear,
    decode_attention,
    int4_grid,
    int8_grid,
    pack_grid_layers,
    use_decode_attention,
)
from longalign.llm.local_model import (
    INT4_DECODE,
    LOCAL_DTYPE_ENV,
    _output_cache,
    default_local_dtype,
    get_local_model,
    release_local_models,
    resolve_precision,
)

TINY = "random:configs/models/tiny-llama"

pytestmark = pytest.mark.skipif(not int4_decode.int4_kernel_available(), reason="this torch has no int4 CPU kernel")


def grid_weight(out_f: int, in_f: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A Q4_1-style weight: per group of 32 inputs, a float16 step and offset and codes 0..15 (both ends used),
    dequantized in float32 as a GGUF reader does. Returns (weight, q, step, low)."""
    g = torch.Generator().manual_seed(seed)
    groups = in_f // 32
    q = torch.randint(0, 16, (out_f, groups, 32), generator=g)
    q[..., 0], q[..., 1] = 0, 15
    step = (torch.rand(out_f, groups, generator=g) * 0.01 + 1e-4).half().float()
    low = (-torch.rand(out_f, groups, generator=g) * 0.08).half().float()
    w = q.float() * step[..., None] + low[..., None]
    return w.reshape(out_f, in_f), q.reshape(out_f, in_f), step, low


def test_grid_is_recovered_exactly_and_anything_else_refused():
    w, q, step, low = grid_weight(48, 96)
    got = int4_grid(w)
    assert got is not None
    gq, gstep, glow = got
    assert torch.equal(gq, q.to(torch.int32)) and torch.equal(gstep, step) and torch.equal(glow, low)
    off = w.clone()
    off[3, 40] = torch.nextafter(off[3, 40], torch.tensor(1.0))  # one weight one ulp off its grid
    assert int4_grid(off) is None
    assert int4_grid(torch.randn(48, 96)) is None  # a trained float weight
    assert int4_grid(torch.randn(48, 100)) is None  # rows not a whole number of groups
    flat = torch.full((4, 64), 0.25)  # constant groups: step 0, every code 0
    got = int4_grid(flat)
    assert got is not None and int(got[0].abs().sum()) == 0 and float(got[1].abs().sum()) == 0.0


def test_prefill_is_the_float32_product_and_a_decoding_step_is_close_to_it():
    w, _, _, _ = grid_weight(64, 128, seed=1)
    lin = nn.Linear(128, 64, bias=True)
    with torch.no_grad():
        lin.weight.copy_(w)
    layer = Int4Linear(lin, int4_grid(w))
    g = torch.Generator().manual_seed(2)
    with torch.inference_mode():
        prompt = torch.randn(2, 20, 128, generator=g)
        assert torch.equal(layer(prompt), F.linear(prompt, w, lin.bias))  # bit for bit
        step = torch.randn(3, 1, 128, generator=g)
        ref = F.linear(step.double(), w.double(), lin.bias.double())
        got = layer(step)
        assert got.shape == (3, 1, 64) and got.dtype == torch.float32
        assert not torch.equal(got, F.linear(step, w, lin.bias))  # the int4 kernel ran (bfloat16 rounding)
        rel = float((got.double() - ref).norm() / ref.norm())
        assert rel < 1e-2, rel
    # with gradients on, the float32 product (the kernel has no backward)
    x = torch.randn(1, 1, 128, generator=g)
    assert torch.equal(layer(x), F.linear(x, w, lin.bias))


def test_q8_head_is_recovered_and_decodes_as_two_int4_halves():
    g = torch.Generator().manual_seed(3)
    q = torch.randint(-127, 128, (48, 64), generator=g)
    q[:, 0], q[:, 32] = 127, -127  # each group's largest magnitude is its scale * 127
    scale = (torch.rand(48, 2, generator=g) * 0.01 + 1e-3).half().float()
    w = (q.float().view(48, 2, 32) * scale[..., None]).view(48, 64)
    got = int8_grid(w)
    assert got is not None and torch.equal(got[0], q.to(torch.int32)) and torch.equal(got[1], scale)
    assert int4_grid(w) is None and int8_grid(torch.randn(48, 64)) is None
    lin = nn.Linear(64, 48, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    layer = Int8GridLinear(lin, got)
    with torch.inference_mode():
        x = torch.randn(2, 1, 64, generator=g)
        ref = F.linear(x.double(), w.double())
        y = layer(x)
        assert float((y.double() - ref).norm() / ref.norm()) < 1e-2
        prompt = torch.randn(1, 5, 64, generator=g)
        assert torch.equal(layer(prompt), lin(prompt))


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_decode_attention_matches_sdpa(mask_kind):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = torch.Generator().manual_seed(4)
    module = nn.Module()
    module.num_key_value_groups, module.is_causal = 3, True
    q = torch.randn(2, 6, 1, 16, generator=g)
    k, v = torch.randn(2, 2, 40, 16, generator=g), torch.randn(2, 2, 40, 16, generator=g)
    keep = torch.ones(2, 1, 1, 40, dtype=torch.bool)
    keep[1, ..., :7] = False  # a left-padded row
    mask = {"none": None, "bool": keep, "float": torch.where(keep, 0.0, torch.finfo(torch.float32).min)}[mask_kind]
    with torch.inference_mode():
        want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.25)
        got, _ = decode_attention(module, q, k, v, mask, scaling=0.25)
    assert got.shape == want.shape == (2, 1, 6, 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.inference_mode():  # several query positions: SDPA itself, bit for bit
        q4 = torch.randn(2, 6, 4, 16, generator=g)
        a, _ = decode_attention(module, q4, k, v, None, scaling=0.25)
        b, _ = sdpa_attention_forward(module, q4, k, v, None, scaling=0.25)
    assert torch.equal(a, b)


def snap_to_grid(model: nn.Module, skip: str) -> int:
    """Put every linear weight of ``model`` but those named with ``skip`` on a 4-bit grid; returns how many."""
    n = 0
    for name, mod in model.named_modules():
        if type(mod) is nn.Linear and skip not in name:
            w, _, _, _ = grid_weight(*mod.weight.shape, seed=n)
            with torch.no_grad():
                mod.weight.copy_(w)
            n += 1
    return n


def test_packed_model_prefills_exactly_and_decodes_close_to_float32():
    from longalign.models import load_model

    ref = load_model(TINY).eval()
    snapped = snap_to_grid(ref, skip="lm_head")
    model = load_model(TINY).eval()
    model.load_state_dict(ref.state_dict())
    stats = pack_grid_layers(model)
    assert stats["layers"] == snapped and stats["kept"] == 1  # the untouched head stays a float32 layer
    assert use_decode_attention(model) and model.config._attn_implementation == DECODE_ATTENTION
    assert stats["packed_bytes"] < stats["float_bytes"] / 5
    assert sum(isinstance(m, Int4Linear) for m in model.modules()) == snapped
    ids = torch.randint(3, 1000, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, ref(ids).logits)  # prefill: float32 bit for bit
        a, b = ref(ids, use_cache=True), model(ids, use_cache=True)
        nxt = torch.tensor([[7]])
        la = ref(nxt, cache=_output_cache(a), use_cache=True).logits
        lb = model(nxt, cache=_output_cache(b), use_cache=True).logits
        assert not torch.equal(la, lb)
        assert float((la - lb).norm() / la.norm()) < 2e-2


def test_dtype_switch(monkeypatch):
    monkeypatch.delenv(LOCAL_DTYPE_ENV, raising=False)
    avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    assert default_local_dtype("cpu") == (INT4_DECODE if avx512 else "float32")
    assert default_local_dtype("cuda") == "bfloat16"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert default_local_dtype("cpu") == "float32"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert default_local_dtype("cpu") == INT4_DECODE
    assert resolve_precision(None, "cpu") == (torch.float32, True)
    monkeypatch.setenv(LOCAL_DTYPE_ENV, "float32")
    assert default_local_dtype("cpu") == "float32" and resolve_precision(None, "cpu") == (torch.float32, False)
    assert resolve_precision("INT4", "cpu") == (torch.float32, True)
    with pytest.raises(ValueError, match="CPU only"):
        resolve_precision("int4", "cuda")
    with pytest.raises(ValueError, match="not a torch dtype"):
        resolve_precision("float33", "cpu")

    release_local_models(TINY)
    exact = get_local_model(TINY, device="cpu")  # the environment says float32
    assert exact.precision == "float32" and not any(isinstance(m, Int4Linear) for m in exact.model.modules())
    monkeypatch.setenv(LOCAL_DTYPE_ENV, "int4")
    packed = get_local_model(TINY, device="cpu")
    assert packed is not exact and packed.precision == INT4_DECODE
    assert get_local_model(TINY, device="cpu", dtype="float32") is exact  # an explicit dtype wins
    assert release_local_models(TINY) == 2


@pytest.mark.slow
def test_embedded_model_decodes_from_int4_close_to_float32(monkeypatch):
    """The embedded SmolLM2: every layer is on a grid (Q4_1, the head Q8_0); prefill logits equal float32's bit for
    bit, and along the float32 model's own greedy reply the int4 decoding steps give nearly the same logits."""
    monkeypatch.delenv(LOCAL_DTYPE_ENV, raising=False)
    exact = get_local_model("smollm2", device="cpu", dtype="float32")
    packed = get_local_model("smollm2", device="cpu", dtype="int4")
    n_packed = sum(isinstance(m, Int4Linear) for m in packed.model.modules())
    assert n_packed == 7 * packed.model.config.num_hidden_layers
    assert isinstance(packed.model.lm_head, Int8GridLinear)  # the Q8_0 head
    assert packed.model.config._attn_implementation == DECODE_ATTENTION
    assert exact.model.config._attn_implementation == "sdpa"
    prompt = exact.encode(exact.render([{"role": "user", "content": "Name three colours of the rainbow."}]))
    (reply,) = exact.generate([prompt], max_new_tokens=24)
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        a = exact.model(ids, use_cache=True)
        b = packed.model(ids, use_cache=True)
        assert torch.equal(a.logits, b.logits)
        agree = 0
        for tok in reply.tokens[:-1]:
            step = torch.tensor([[tok]])
            a = exact.model(step, cache=_output_cache(a), use_cache=True)
            b = packed.model(step, cache=_output_cache(b), use_cache=True)
            la, lb = a.logits[0, -1], b.logits[0, -1]
            assert float((la - lb).norm() / la.norm()) < 5e-2  # bfloat16 rounding over 30 layers: ~3%
            agree += int(la.argmax() == lb.argmax())
    assert agree >= len(reply.tokens[:-1]) - 1
    (again,) = packed.generate([prompt], max_new_tokens=24)
    assert again.text.strip() and again.prompt_tokens == len(prompt)
    release_local_models("smollm2")
