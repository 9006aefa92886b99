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
  other way. A one-token prefill (a prompt whose every token but the last came from a prefix cache) counts as a
  decoding step;
* with gradients enabled it is always the float32 product (the kernel has no backward).

Layers off the grid (the embedded model's Q8_0 output head; a fine-tuned model's layers, which training moves off
it) stay plain float32 ``nn.Linear``: nothing is quantized that was not already. Everything else (embeddings,
norms, attention, the KV cache, the residual stream) is the model's own float32. ``benchmarks/local_inference.py``
measures the speed against float32 and how often greedy outputs agree; ``LONGALIGN_LOCAL_DTYPE=float32`` (or
``dtype="float32"``) keeps the exact float32 path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

GROUP = 32  # Q4_1 block: consecutive input weights of one row sharing a step and an offset
# a decoding step of at most this many rows goes through the int4 kernel (a larger batch is bound by arithmetic)
KERNEL_MAX_ROWS = 16


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
        decoding = x.dim() >= 2 and x.shape[-2] == 1 and rows.shape[0] <= KERNEL_MAX_ROWS
        if not decoding or torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows.to(torch.bfloat16).contiguous(), self.weight_int4, self.group, self.scales_offsets
        ).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)


def pack_grid_layers(model: nn.Module) -> dict[str, Any]:
    """Replace, in place, every CPU float32 ``nn.Linear`` of ``model`` whose weight lies on a 4-bit group grid by an
    :class:`Int4Linear` (no-op without the kernel). Returns ``layers`` (replaced), ``kept`` (linear layers left as
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
        grid = None
        if weight.device.type == "cpu" and weight.dtype == torch.float32:
            grid = int4_grid(weight)
        if grid is None:
            stats["kept"] += 1
            continue
        new = Int4Linear(child, grid)
        setattr(parent, name, new)
        stats["layers"] += 1
        stats["float_bytes"] += weight.numel() * weight.element_size()
        stats["packed_bytes"] += new.weight_int4.numel() + new.scales_offsets.numel() * 2
    return stats
