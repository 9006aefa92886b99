"""Int4 decoding for local inference on a CPU: linear layers whose weights lie on a 4-bit group grid read that grid
when they multiply a few rows.

Decoding one token reads every weight once and does little arithmetic with each, so on a CPU its speed is set by
how many bytes the weights take: SmolLM2-135M in float32 reads 0.54 GB per token. The embedded model ships as a
Q4_1 GGUF: every linear layer but the output head holds, in each group of 32 consecutive input weights of a row,
only the 16 values ``low + step * q`` (``q`` = 0..15), and its float32 copy in the safetensors cache keeps them
exactly. :func:`int4_grid` recovers ``(q, step, low)`` from such a weight, checking that they rebuild it bit for
bit, and :class:`Int4Linear` keeps, beside the float32 weight, the grid packed for PyTorch's int4 CPU kernel
(``aten._weight_int4pack_mm_for_cpu``: half a byte per weight plus a bfloat16 scale and offset per group):

* a prompt's prefill (more than one position per row; bound by arithmetic, not bytes) is the float32
  ``F.linear`` with the float32 weight, exactly what the model computed before;
* a decoding step (one position per row, at most :data:`KERNEL_MAX_ROWS` rows: one sequence, or a batch decoding
  together) runs the kernel: its inputs and outputs are rounded to bfloat16 (2^-9 of their value) and the
  group's scale and offset too, so logits differ from the float32 ones by rounding and a near-tie may resolve the
  other way;
* with gradients enabled, or under :func:`float_reading`, it is always the float32 product. ``LocalModel`` reads
  every prompt that way (:func:`first_forward_reads`: a prompt whose every token but the last came from a prefix
  cache is one position long, yet reads as the whole prompt would) and scores continuations that way (the local
  judge's probabilities are the float32 model's).

The embedded model's output head is Q8_0 (an 8-bit code and a scale per group of 32): :func:`int8_grid` recovers
it the same way and :class:`Int8GridLinear` decodes it as two 4-bit halves through the same kernel. Layers on
neither grid (a fine-tuned model's, which training moves off it) stay plain float32 ``nn.Linear``: nothing is
quantized that was not already. Everything else (embeddings, norms, the KV cache, the residual stream) is the
model's own float32; a decoding step's attention runs as two plain products (:func:`decode_attention`), which on
a CPU reads a long KV cache several times faster than the fused kernel. ``benchmarks/local_inference.py``
measures the speed against float32 and how often greedy outputs agree; ``LONGALIGN_LOCAL_DTYPE=float32`` (or
``dtype="float32"``) keeps the exact float32 path.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

GROUP = 32  # Q4_1 block: consecutive input weights of one row sharing a step and an offset
# the largest outputs of a packed 8-bit-grid layer (the output head) recomputed in float32 per decoding step
HEAD_RESCORE = 64
# a decoding step of at most this many rows goes through the int4 kernel (a larger batch is bound by arithmetic)
KERNEL_MAX_ROWS = 16


# set while a forward must read its tokens in float32 whatever their number (see float_reading)
_FLOAT_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("longalign_int4_float_only", default=False)


@contextlib.contextmanager
def float_reading() -> Iterator[None]:
    """Within: every packed layer and :func:`decode_attention` compute as the float32 model does, even for one
    position per row (reading a prompt, however short, or scoring a continuation)."""
    token = _FLOAT_ONLY.set(True)
    try:
        yield
    finally:
        _FLOAT_ONLY.reset(token)


@contextlib.contextmanager
def first_forward_reads(model: nn.Module) -> Iterator[None]:
    """Within: the next forward of ``model`` runs under :func:`float_reading` (the prompt-reading forward of a
    ``generate`` call: a prompt whose every token but the last came from a prefix cache is read the way the whole
    prompt would be), the later ones (decoding steps) as usual."""
    state: dict[str, Any] = {"left": 1}

    def before(module: nn.Module, args: Any) -> None:
        if state["left"]:
            state["left"] = 0
            state["token"] = _FLOAT_ONLY.set(True)

    def after(module: nn.Module, args: Any, output: Any) -> None:
        token = state.pop("token", None)
        if token is not None:
            _FLOAT_ONLY.reset(token)

    handles = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        token = state.pop("token", None)
        if token is not None:  # the forward raised between the hooks
            _FLOAT_ONLY.reset(token)


def _decoding(x: torch.Tensor, rows: int) -> bool:
    """Whether a product with input ``x`` (``rows`` rows) is a decoding step the int4 kernel should take."""
    if rows > KERNEL_MAX_ROWS or x.dim() < 2 or x.shape[-2] != 1:
        return False
    return not torch.is_grad_enabled() and not _FLOAT_ONLY.get()


def int4_kernel_available() -> bool:
    """Whether this PyTorch has the int4 CPU kernel and its packing function."""
    ops = torch.ops.aten
    return hasattr(ops, "_weight_int4pack_mm_for_cpu") and hasattr(ops, "_convert_weight_to_int4pack_for_cpu")


def int4_grid(weight: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(q, step, low)`` when every group of ``group`` consecutive weights of a row holds only values
    ``low + step * q`` with ``q`` in 0..15, the group's smallest value being ``low`` and its largest
    ``low + 15 * step`` (as a Q4_1 quantizer writes them), so that ``q * step + low`` rebuilds ``weight`` bit for
    bit in float32; else None. ``q`` is ``[out, in]`` int32, ``step`` and ``low`` are ``[out, in / group]``."""
    if weight.dim() != 2 or weight.shape[1] % group or not weight.is_floating_point():
        return None
    out_f, in_f = weight.shape
    w = weight.detach().to(torch.float32).reshape(out_f, in_f // group, group)
    low = w.amin(dim=-1)
    step = (w.amax(dim=-1) - low) / 15
    q = torch.round((w - low[..., None]) / torch.where(step > 0, step, 1.0)[..., None])
    if not torch.equal(q * step[..., None] + low[..., None], w):
        return None
    return q.to(torch.int32).reshape(out_f, in_f), step, low


class Int4Linear(nn.Module):
    """An ``nn.Linear`` on a 4-bit group grid with the grid packed for decoding (see the module docstring). It
    shares the original layer's ``weight`` and ``bias`` parameters."""

    def __init__(self, linear: nn.Linear, grid: tuple[torch.Tensor, torch.Tensor, torch.Tensor], group: int = GROUP):
        super().__init__()
        q, step, low = grid
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.group = group
        self.weight = linear.weight
        self.bias = linear.bias
        self.register_buffer("weight_int4", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1))
        # the kernel computes (q - 8) * scale + offset, its scales and offsets laid out [in / group, out, 2]
        pairs = torch.stack([step, low + 8 * step], dim=-1).transpose(0, 1).contiguous()
        self.register_buffer("scales_offsets", pairs.to(torch.bfloat16))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if not _decoding(x, rows.shape[0]):
            return F.linear(x, self.weight, self.bias)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows.to(torch.bfloat16).contiguous(), self.weight_int4, self.group, self.scales_offsets
        ).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def int8_grid(weight: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(q, scale)`` when every group of ``group`` consecutive weights of a row is ``scale * q`` with ``q`` in
    -127..127 and ``scale`` the group's largest magnitude / 127 (a Q8_0 GGUF tensor, such as the embedded model's
    output head), so that ``q * scale`` rebuilds ``weight`` bit for bit in float32; else None. ``q`` is
    ``[out, in]`` int32, ``scale`` ``[out, in / group]``."""
    if weight.dim() != 2 or weight.shape[1] % group or not weight.is_floating_point():
        return None
    out_f, in_f = weight.shape
    w = weight.detach().to(torch.float32).reshape(out_f, in_f // group, group)
    scale = w.abs().amax(dim=-1) / 127
    q = torch.round(w / torch.where(scale > 0, scale, 1.0)[..., None])
    if not torch.equal(q * scale[..., None], w):
        return None
    return q.to(torch.int32).reshape(out_f, in_f), scale


class Int8GridLinear(nn.Module):
    """A linear layer on an 8-bit group grid (:func:`int8_grid`) decoding through the int4 kernel in two halves:
    each code ``q`` (-127..127) is ``16 * high + low`` with ``low`` in 0..15 and ``high`` in -8..7, so the weight is
    ``16 * scale * high + scale * low``, two 4-bit grids whose products are added (in float32, each rounded to
    bfloat16 by the kernel). Prefill and gradients use the float32 weight, as :class:`Int4Linear` does.

    Rounded to bfloat16, an output near 30 (a confident logit) is only good to 1/8, enough to swap two
    near-tied tokens; with ``rescore = k`` the ``k`` largest outputs of each row are recomputed in float32 from the
    float32 weight (k rows of it: a few microseconds), so the likeliest tokens, greedy's choice among them, have
    the logits the float32 head would give the same hidden state."""

    def __init__(
        self, linear: nn.Linear, grid: tuple[torch.Tensor, torch.Tensor], group: int = GROUP, rescore: int = 0
    ):
        super().__init__()
        q, scale = grid
        self.rescore = rescore
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.group = group
        self.weight = linear.weight
        self.bias = linear.bias
        low = torch.remainder(q, 16)
        high = (q - low) // 16 + 8  # 0..15
        pack = torch.ops.aten._convert_weight_to_int4pack_for_cpu
        self.register_buffer("high_int4", pack(high.to(torch.int32).contiguous(), 1))
        self.register_buffer("low_int4", pack(low.to(torch.int32).contiguous(), 1))
        # (code - 8) * scale + offset: high = (h - 8) * 16 s + 0, low = (l - 8) * s + 8 s
        high_pairs = torch.stack([16 * scale, torch.zeros_like(scale)], dim=-1)
        low_pairs = torch.stack([scale, 8 * scale], dim=-1)
        self.register_buffer("high_scales", high_pairs.transpose(0, 1).contiguous().to(torch.bfloat16))
        self.register_buffer("low_scales", low_pairs.transpose(0, 1).contiguous().to(torch.bfloat16))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if not _decoding(x, rows.shape[0]):
            return F.linear(x, self.weight, self.bias)
        exact_rows = rows
        rows = rows.to(torch.bfloat16).contiguous()
        mm = torch.ops.aten._weight_int4pack_mm_for_cpu
        y = mm(rows, self.high_int4, self.group, self.high_scales).to(x.dtype)
        y = y + mm(rows, self.low_int4, self.group, self.low_scales).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        if self.rescore:
            # the largest outputs (an output head's likeliest tokens) recomputed in float32 from the float32 weight
            top = y.topk(min(self.rescore, self.out_features), dim=-1).indices  # [rows, k]
            exact = torch.einsum("rk,rjk->rj", exact_rows, self.weight[top])
            if self.bias is not None:
                exact = exact + self.bias[top]
            y = y.scatter(-1, top, exact.to(y.dtype))
        return y.reshape(*x.shape[:-1], self.out_features)


def pack_grid_layers(model: nn.Module, int8_heads: bool = True) -> dict[str, Any]:
    """Replace, in place, every CPU float32 ``nn.Linear`` of ``model`` whose weight lies on a 4-bit group grid by an
    :class:`Int4Linear`, and (``int8_heads``) one on an 8-bit group grid by an :class:`Int8GridLinear` (no-op
    without the kernel). Returns ``layers`` (replaced), ``kept`` (linear layers left as
    they were) and ``packed_bytes`` / ``float_bytes``: what the replaced layers' decoding reads now and before."""
    stats: dict[str, Any] = {"layers": 0, "kept": 0, "packed_bytes": 0, "float_bytes": 0}
    if not int4_kernel_available():
        return stats
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    for parent, name, child in targets:
        weight = child.weight
        new: nn.Module | None = None
        # the kernel packs whole tiles: 16 output rows, a group of inputs
        fits = weight.shape[0] % 16 == 0 and weight.shape[1] % GROUP == 0
        if fits and weight.device.type == "cpu" and weight.dtype == torch.float32:
            grid4 = int4_grid(weight)
            if grid4 is not None:
                new = Int4Linear(child, grid4)
            elif int8_heads and (grid8 := int8_grid(weight)) is not None:
                new = Int8GridLinear(child, grid8, rescore=HEAD_RESCORE)
        if new is None:
            stats["kept"] += 1
            continue
        setattr(parent, name, new)
        stats["layers"] += 1
        stats["float_bytes"] += weight.numel() * weight.element_size()
        stats["packed_bytes"] += sum(b.numel() * b.element_size() for b in new.buffers())
    return stats


# the attention implementation name under which :func:`decode_attention` is registered with transformers
DECODE_ATTENTION = "longalign_decode"


def decode_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args, **kwargs):
    """Attention for transformers models that computes a decoding step (one query position, no gradients) as two
    plain matrix products over the cached keys and values, and hands everything else (a prefill, training) to
    transformers' SDPA attention unchanged.

    PyTorch's fused CPU attention kernel splits its work in blocks made for long queries; for one query against a
    2,000-token cache it takes about a millisecond per layer, several times what reading the cache takes. Here the
    query heads sharing a key/value head are stacked (no repeated keys), the scores are ``q @ k^T * scale`` plus
    the mask (a boolean mask keeps ``True``; a float mask is added), the softmax is taken in float32 and the
    result multiplies the values."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    attention_mask = args[0] if args else kwargs.get("attention_mask")
    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    plain = q_len != 1 or torch.is_grad_enabled() or _FLOAT_ONLY.get()
    if plain or heads % kv_heads or kwargs.get("softcap") is not None:
        return sdpa_attention_forward(module, query, key, value, *args, **kwargs)
    scaling = kwargs.get("scaling")
    scale = dim**-0.5 if scaling is None else scaling
    q = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(q, key.transpose(-1, -2)) * scale
    if attention_mask is not None:
        mask = attention_mask[..., -key.shape[-2] :]
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value)  # [batch, kv_heads, heads per kv head, dim]
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def use_decode_attention(model: nn.Module) -> bool:
    """Make ``model`` (an SDPA transformers model) attend through :func:`decode_attention`; False (nothing changed)
    when it uses another attention or transformers has no registry for one."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        return False
    AttentionInterface.register(DECODE_ATTENTION, decode_attention)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)
    model.set_attn_implementation(DECODE_ATTENTION)
    return model.config._attn_implementation == DECODE_ATTENTION
