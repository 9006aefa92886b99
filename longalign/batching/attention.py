"""Attention for packed batches: keep sequences apart, and pay for sum n_i^2 instead of L^2.

A pack is one row of L tokens holding sequences of n_1..n_k tokens, with ``position_ids`` restarting at 0
at every sequence start. Three ways to run attention over it:

1. transformers' own path (``sdpa``/``eager``): with ``attention_mask=None``, ``use_cache=False`` and
   restarting ``position_ids``, transformers >= 5 detects the pack (``find_packed_sequence_indices``) and
   builds a dense block-diagonal causal mask. Exact, but it computes all L^2 scores: at 8,192 tokens
   (16 x 512) that is 16x the work of the real sequences. With ``use_cache=True``
   (the config default of most checkpoints) or any ``attention_mask`` the detection is skipped and
   sequences attend to each other silently: :func:`check_packed_batch` / :func:`install_packed_guard`
   refuse such calls.
2. ``longalign_segment`` (CPU or any device): runs causal sdpa per sequence segment, boundaries taken from
   ``cu_seq_lens_q`` (the packed collator passes it) or from ``position_ids`` (which transformers hands to
   every attention function in its kwargs). Cost sum n_i^2; no mask tensor at all. Runs of equal-length
   sequences share one kernel call. Measured fwd+bwd at 16 x 512 on 2 busy CPU cores
   (benchmarks/attention_cpu.py): attention alone 8.3 s dense mask vs 0.75 s segment-aware vs 0.60 s for
   the sequences as a batch; a small Llama (hidden 256, 4 layers) 70.7 s vs 43.1 s vs 35.6 s.
3. CUDA: ``flash_attention_2`` (flash-attn varlen kernels, boundaries from ``cu_seq_lens_q`` or
   ``position_ids``) when flash-attn is installed; otherwise ``longalign_flex``, torch flex attention with
   a document mask (block-sparse: only the blocks on the diagonal are computed); and, for bf16/fp16 on
   Ampere or newer with torch's varlen kernel, ``longalign_varlen``.

:func:`select_attention` picks one and registers the custom ones with ``transformers.AttentionInterface``.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import warnings
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

SEGMENT = "longalign_segment"
FLEX = "longalign_flex"
VARLEN = "longalign_varlen"
_registered = False


# ----------------------------------------------------------------------------------------------------------
# boundaries
# ----------------------------------------------------------------------------------------------------------


def is_packed_positions(position_ids: Any) -> bool:
    """True when some row of ``position_ids`` [B, L] holds more than one sequence (positions do not just
    count up by one)."""
    import torch

    if position_ids is None:
        return False
    pos = torch.as_tensor(position_ids)
    if pos.ndim == 1:
        pos = pos.unsqueeze(0)
    if pos.shape[-1] < 2:
        return False
    return bool((torch.diff(pos, dim=-1) != 1).any())


def segments_from_positions(position_ids: Any) -> list[list[tuple[int, int]]]:
    """Per row, the (start, end) token ranges of the sequences in it (a new one wherever the position does
    not grow by exactly 1)."""
    import torch

    pos = torch.as_tensor(position_ids)
    if pos.ndim == 1:
        pos = pos.unsqueeze(0)
    out = []
    length = pos.shape[-1]
    for row in pos:
        starts = [0] + (torch.nonzero(torch.diff(row) != 1).flatten() + 1).tolist()
        ends = starts[1:] + [length]
        out.append(list(zip(starts, ends)))
    return out


def _segments(query_len: int, batch: int, kwargs: Mapping[str, Any]) -> list[list[tuple[int, int]]] | None:
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        cu = kwargs.get("cu_seqlens")
    if cu is not None and batch == 1:
        cu_list = [int(x) for x in (cu.tolist() if hasattr(cu, "tolist") else cu)]
        if cu_list[0] != 0 or cu_list[-1] != query_len:
            raise ValueError(
                f"cu_seq_lens_q {cu_list[:3]}...{cu_list[-1:]} does not cover the {query_len} "
                "tokens of the pack; pass the collator's cu_seqlens unchanged"
            )
        return [list(zip(cu_list[:-1], cu_list[1:]))]
    pos = kwargs.get("position_ids")
    if pos is None:
        return None
    if pos.shape[0] != batch:
        pos = pos.expand(batch, -1)
    return segments_from_positions(pos)


# ----------------------------------------------------------------------------------------------------------
# guard
# ----------------------------------------------------------------------------------------------------------


def check_packed_batch(batch: Mapping[str, Any], *, use_cache: bool | None, config: Any = None) -> bool:
    """Raise ``ValueError`` when a packed batch would let sequences attend to each other.

    Packed = ``position_ids`` restart inside a row. transformers keeps the sequences of such a row apart
    only when ``attention_mask`` is None and no cache is built: pass ``use_cache=False`` and drop the
    attention mask. ``use_cache=None`` falls back to ``config.use_cache`` (True for most checkpoints).
    Returns whether the batch is packed.
    """
    if not is_packed_positions(batch.get("position_ids")):
        return False
    effective = use_cache if use_cache is not None else bool(getattr(config, "use_cache", True))
    problems = []
    if effective:
        problems.append("use_cache is on (pass use_cache=False: with a cache transformers skips the per-sequence mask)")
    if batch.get("attention_mask") is not None:
        problems.append(
            "an attention_mask is given (drop it: a 2-D mask disables the per-sequence mask, "
            "so tokens attend across sequence boundaries)"
        )
    if problems:
        raise ValueError("packed batch (position_ids restart inside a row) cannot run safely: " + "; ".join(problems))
    return True


def install_packed_guard(model: Any) -> Any:
    """Make ``model.forward`` run :func:`check_packed_batch` on every call; returns the hook handle."""

    def hook(module, args, kwargs):
        check_packed_batch(kwargs, use_cache=kwargs.get("use_cache"), config=getattr(module, "config", None))
        return None

    return model.register_forward_pre_hook(hook, with_kwargs=True)


COLLATOR_ONLY_KEYS = ("labels", "loss_weights", "seq_lens", "cu_seqlens")


def packed_forward(model: Any, batch: Mapping[str, Any], **extra: Any) -> Any:
    """Forward a packed batch from :class:`~longalign.batching.collate.PackedCollator` safely:
    ``use_cache=False``, no attention mask, boundaries passed on for varlen kernels."""
    inputs = {k: v for k, v in batch.items() if k not in COLLATOR_ONLY_KEYS}
    inputs.setdefault("use_cache", False)
    inputs.update(extra)
    check_packed_batch(inputs, use_cache=inputs["use_cache"], config=getattr(model, "config", None))
    return model(**inputs)


# ----------------------------------------------------------------------------------------------------------
# attention functions (transformers AttentionInterface signature)
# ----------------------------------------------------------------------------------------------------------


def _gqa(module: Any, query: Any, key: Any) -> bool:
    return query.shape[1] != key.shape[1]


def segment_attention_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
):
    """Causal attention computed per sequence segment; query/key/value [B, H, L, D] -> [B, L, H, D].

    Without packing (one sequence per row) it is plain causal sdpa, with the 2-D padding mask when given.
    """
    import torch
    import torch.nn.functional as F

    batch, _, q_len, _ = query.shape
    if key.shape[2] != q_len:
        raise ValueError(
            f"{SEGMENT} handles training-style forwards only (query and key of equal length, "
            f"got {q_len} and {key.shape[2]}); call the model with use_cache=False"
        )
    gqa = _gqa(module, query, key)
    segs = _segments(q_len, batch, kwargs)
    packed = segs is not None and any(len(row) > 1 for row in segs)
    if packed and attention_mask is not None:
        raise ValueError(f"{SEGMENT}: a packed batch must not come with an attention_mask (drop it)")
    drop = dropout if getattr(module, "training", False) else 0.0
    if not packed:
        if attention_mask is None:
            out = F.scaled_dot_product_attention(
                query, key, value, dropout_p=drop, is_causal=True, scale=scaling, enable_gqa=gqa
            )
        else:
            if attention_mask.ndim == 2:
                causal = torch.ones(q_len, q_len, dtype=torch.bool, device=query.device).tril()
                mask = causal[None, None] & attention_mask.bool()[:, None, None, :]
                mask = mask | torch.eye(q_len, dtype=torch.bool, device=query.device)[None, None]
            else:
                mask = attention_mask
            out = F.scaled_dot_product_attention(
                query, key, value, attn_mask=mask, dropout_p=drop, scale=scaling, enable_gqa=gqa
            )
        return out.transpose(1, 2).contiguous(), None
    assert segs is not None  # packed
    rows = []
    for b, row in enumerate(segs):
        # Consecutive sequences of equal length run as one batched call on a view (fewer kernel launches and
        # thread-pool barriers); outputs are joined with one cat, so autograd's backward allocates once per
        # row (writing each segment into a preallocated output costs a full-size gradient copy per segment).
        outs = []
        i = 0
        while i < len(row):
            start, end = row[i]
            n = end - start
            j = i
            while j + 1 < len(row) and row[j + 1][1] - row[j + 1][0] == n:
                j += 1
            m = j - i + 1
            stop = start + m * n
            if m == 1:
                q, k, v = (t[b : b + 1, :, start:end] for t in (query, key, value))
            else:
                q, k, v = (
                    t[b, :, start:stop].reshape(t.shape[1], m, n, t.shape[-1]).transpose(0, 1)
                    for t in (query, key, value)
                )
            o = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True, scale=scaling, enable_gqa=gqa)
            if m > 1:
                o = o.transpose(0, 1).reshape(1, o.shape[1], m * n, o.shape[-1])
            outs.append(o)
            i = j + 1
        rows.append(torch.cat(outs, dim=2) if len(outs) > 1 else outs[0])
    out = torch.cat(rows) if len(rows) > 1 else rows[0]
    return out.transpose(1, 2).contiguous(), None


class _FlexState:
    """Compiled flex attention (CUDA) and the last document BlockMask (shared by all layers of a forward)."""

    compiled: Any = None
    last_key: Any = None
    last_anchor: Any = None
    last_mask: Any = None


def _document_ids(query_len: int, batch: int, kwargs: Mapping[str, Any], device: Any):
    import torch

    segs = _segments(query_len, batch, kwargs)
    doc = torch.zeros(batch, query_len, dtype=torch.int32)
    if segs is not None:
        for b, row in enumerate(segs):
            for k, (s, e) in enumerate(row):
                doc[b, s:e] = k
    return doc.to(device)


def flex_attention_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
):
    """torch flex attention with a causal document mask built from the pack boundaries.

    On CUDA the kernel is compiled once (block-sparse: cost follows sum n_i^2 up to the 128-token block
    size); elsewhere flex attention runs eagerly (correct, dense cost: for tests).
    """
    from torch.nn.attention.flex_attention import create_block_mask

    if attention_mask is not None:
        raise ValueError(f"{FLEX} builds its own document mask; call the model without attention_mask")
    if dropout and getattr(module, "training", False):
        raise ValueError(f"{FLEX} does not support attention dropout; set attention_dropout=0")
    batch, _, q_len, _ = query.shape
    anchor = (
        kwargs.get("cu_seq_lens_q")
        if batch == 1 and kwargs.get("cu_seq_lens_q") is not None
        else kwargs.get("position_ids")
    )
    cache_key = (id(anchor), getattr(anchor, "_version", None), q_len, batch, str(query.device))
    if _FlexState.last_key == cache_key and _FlexState.last_anchor is anchor:
        block_mask = _FlexState.last_mask
    else:
        doc = _document_ids(q_len, batch, kwargs, query.device)

        def document_causal(b, h, q_idx, kv_idx):
            return (doc[b, q_idx] == doc[b, kv_idx]) & (q_idx >= kv_idx)

        block_mask = create_block_mask(document_causal, batch, None, q_len, q_len, device=query.device)
        _FlexState.last_key, _FlexState.last_anchor, _FlexState.last_mask = cache_key, anchor, block_mask
    gqa = _gqa(module, query, key)
    kernel = flex_kernel(query.device)
    with warnings.catch_warnings():
        if query.device.type != "cuda":  # torch warns that uncompiled flex attention is slow: known, for tests
            warnings.simplefilter("ignore", UserWarning)
        out = kernel(query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


def flex_kernel(device: Any):
    """The flex attention function for ``device``: on CUDA compiled once per process (the block-sparse
    kernel; compilation happens at the first call), elsewhere torch's eager function.

    Building the compiled function touches no GPU, so a CPU-only machine can check that this line runs
    (``benchmarks/gpu_check.py --device cpu``)."""
    import torch
    from torch.nn.attention.flex_attention import flex_attention

    if torch.device(device).type != "cuda":
        return flex_attention
    if _FlexState.compiled is None:
        _FlexState.compiled = torch.compile(flex_attention, dynamic=None)
    return _FlexState.compiled


def _half_dtype(query: Any, key: Any, value: Any) -> Any:
    """The fp16/bf16 dtype a half-precision-only kernel must be given: autocast's for the device when autocast
    is on (there the rotary embedding leaves query and key in float32, while value comes out of a bf16 linear
    layer), else the one half dtype among the inputs; None when there is none (all float32)."""
    import torch

    try:
        if torch.is_autocast_enabled(query.device.type):
            return torch.get_autocast_dtype(query.device.type)
    except (RuntimeError, TypeError, ValueError):  # a device type without autocast (meta)
        pass
    halves = {t.dtype for t in (query, key, value)} & {torch.float16, torch.bfloat16}
    return halves.pop() if len(halves) == 1 else None


def varlen_attention_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
):
    """torch's variable-length flash kernel (``torch.nn.attention.varlen``; CUDA, fp16/bf16) over a pack.

    Query, key and value go to the kernel in one half dtype (:func:`_half_dtype`): under autocast transformers
    hands over a float32 query and key next to a bf16 value, which the kernel would refuse."""
    import torch
    from torch.nn.attention.varlen import varlen_attn

    if attention_mask is not None:
        raise ValueError(f"{VARLEN} needs attention_mask=None (the pack boundaries come from cu_seq_lens_q)")
    half = _half_dtype(query, key, value)
    if half is not None:
        query, key, value = (t if t.dtype == half else t.to(half) for t in (query, key, value))
    batch, heads, q_len, dim = query.shape
    segs = _segments(q_len, batch, kwargs) or [[(0, q_len)] for _ in range(batch)]
    bounds = [0]
    for b, row in enumerate(segs):
        bounds.extend(b * q_len + e for _, e in row)
    cu = torch.tensor(bounds, dtype=torch.int32, device=query.device)
    max_len = max(e - s for row in segs for s, e in row)
    q = query.transpose(1, 2).reshape(batch * q_len, heads, dim)
    k = key.transpose(1, 2).reshape(batch * q_len, key.shape[1], dim)
    v = value.transpose(1, 2).reshape(batch * q_len, value.shape[1], value.shape[-1])
    params = inspect.signature(varlen_attn).parameters
    extra: dict[str, Any] = {"scale": scaling}
    if "is_causal" in params:
        extra["is_causal"] = True
    else:
        extra["window_size"] = (-1, 0)
    if "enable_gqa" in params:
        extra["enable_gqa"] = _gqa(module, query, key)
    elif _gqa(module, query, key):
        rep = heads // key.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    out = varlen_attn(q, k, v, cu, cu, max_len, max_len, **extra)
    if isinstance(out, tuple):  # (output, log-sum-exp) when asked for it
        out = out[0]
    return out.reshape(batch, q_len, heads, -1), None


# ----------------------------------------------------------------------------------------------------------
# registration and selection
# ----------------------------------------------------------------------------------------------------------


def register_attention() -> None:
    """Register ``longalign_segment``, ``longalign_flex`` and ``longalign_varlen`` with transformers."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface

    AttentionInterface.register(SEGMENT, segment_attention_forward)
    AttentionInterface.register(FLEX, flex_attention_forward)
    AttentionInterface.register(VARLEN, varlen_attention_forward)
    _registered = True


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def torch_varlen_available() -> bool:
    return importlib.util.find_spec("torch.nn.attention.varlen") is not None


def select_attention(device: Any, packed: bool, dtype: Any = None) -> str:
    """The ``attn_implementation`` to use for ``device`` (registers the custom ones first).

    packed on CUDA: flash_attention_2 (flash-attn installed) > longalign_varlen (only when ``dtype`` is
    fp16/bf16 is given and the GPU is Ampere or newer) > longalign_flex. packed elsewhere:
    longalign_segment. Not packed: flash_attention_2 on CUDA when installed, else sdpa.
    """
    import torch

    register_attention()
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda":
        if flash_attn_available():
            return "flash_attention_2"
        if not packed:
            return "sdpa"
        half = dtype in (torch.float16, torch.bfloat16)
        if (
            half
            and torch_varlen_available()
            and torch.cuda.is_available()
            and torch.cuda.get_device_capability(dev)[0] >= 8
        ):
            return VARLEN
        return FLEX
    return SEGMENT if packed else "sdpa"
