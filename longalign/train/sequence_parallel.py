"""Sequence parallelism (Ulysses all-to-all) that keeps packed sequences apart and the loss exact.

Layout. A job of ``world = DP x SP`` ranks forms ``DP`` groups of ``SP`` consecutive ranks: rank r is SP rank
``r % SP`` of data-parallel rank ``r // SP``. The batch plan is made and dealt over the DP ranks only, so the SP
ranks of one group read the same micro-batch (one pack) and each keeps its own contiguous shard of it.

Sharding a pack (:func:`shard_pack`). The pack of L tokens is padded to ``L' = SP * ceil(L / SP)`` with one
trailing padding segment (its own sequence for the attention, label -100, weight 0). Labels and loss weights are
shifted *before* cutting: position t carries the label of token t + 1, so the target of the first token of
shard s + 1 is predicted by the last position of shard s and lives on rank s; no target is lost or counted
twice, and the loss functions run with ``shift=False``. Input ids and position ids (restarting per sequence)
are cut the same way; ``cu_seq_lens_q/k`` and ``max_length_q/k`` stay those of the *whole* pack.

Attention (:func:`ulysses_attention`). Each decoder layer computes q/k/v for its L'/SP tokens and all heads;
one all-to-all turns them into the whole pack for H/SP heads (the head split keeps each query head with its
key/value head under GQA), the core attention runs over the full pack with the full pack's boundaries
(``cu_seq_lens_q`` from the collator, and ``position_ids`` rebuilt from it for kernels that read those), and a
second all-to-all returns the output to sequence shards with all heads. The backward is the same exchange in
the other direction. Core kernels that take the boundaries: ``longalign_segment`` (any device),
``longalign_flex`` and ``longalign_varlen`` (CUDA; the latter is torch's variable-length flash kernel).
``sdpa`` and ``eager`` would need an L' x L' mask and are refused. transformers' ``flash_attention_2/3``
wrapper picks its kernel from the model's attention name, which under SP is the wrapper's, so with
``--attn-implementation auto`` the trainer takes ``longalign_varlen`` (bf16/fp16 on Ampere or newer) or
``longalign_flex`` instead of flash-attn, and refuses flash-attn when it is asked for by name.

Loss and gradients. Every rank sums ``w * CE`` over the targets of its shard; weights come from the plan over
DP ranks (``token_weights(plan, ..., world_size=DP)``), so the step loss is the sum over all DP x SP ranks.
Each rank's backward yields the gradient of its *own* shard's loss with respect to every parameter (the
all-to-all backward carries the other shards' attention gradients to the rank that owns the tokens), so the
gradient of the step loss is the sum of the parameter gradients over all ranks. DDP and ZeRO average over all
``world`` ranks (DeepSpeed partitions and reduces over every rank: it is not told about the SP groups), hence
the trainer multiplies the local loss by ``world = DP x SP``: the DP part cancels the data-parallel mean, the SP
part turns the mean over the SP group into the sum that the sharded tokens need.

Why not ``deepspeed.runtime.sequence_parallel.ulysses_sp.UlyssesSPAttentionHF``: it swaps the core function in
transformers' global attention table (every model of the process then runs sequence-parallel), needs DeepSpeed
(an optional dependency here) and its ``deepspeed.comm`` set up even for a plain DDP run, and all-gathers the
position ids in every layer to find the boundaries. The layer below registers its own attention name, works on
any ``torch.distributed`` group (gloo on CPU, NCCL on CUDA), and gives the core the full pack's ``cu_seq_lens``
that every SP rank already holds, with no extra communication.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from longalign import IGNORE_INDEX

PREFIX = "longalign_sp_"
# core attention functions that take a pack's boundaries (cu_seq_lens / restarting position_ids)
SP_CORES = ("longalign_segment", "longalign_flex", "longalign_varlen")
FLASH_ATTN = ("flash_attention_2", "flash_attention_3")
SHIFTED_KEY = "labels_shifted"


# ------------------------------------------------------------------------------------------------------------
# layout and checks
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SPLayout:
    """Where this rank sits in a ``DP x SP`` job."""

    world_size: int
    sp_size: int
    rank: int = 0

    @property
    def dp_size(self) -> int:
        return self.world_size // self.sp_size

    @property
    def dp_rank(self) -> int:
        return self.rank // self.sp_size

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sp_size

    def sp_ranks(self, dp_rank: int | None = None) -> list[int]:
        d = self.dp_rank if dp_rank is None else int(dp_rank)
        return list(range(d * self.sp_size, (d + 1) * self.sp_size))


def sp_attention_name(core: str) -> str:
    """The ``attn_implementation`` name of the sequence-parallel wrapper around ``core``."""
    return PREFIX + core


def core_of(name: str) -> str | None:
    """The core attention of a sequence-parallel name, or None for another name."""
    return name[len(PREFIX) :] if name and name.startswith(PREFIX) else None


def check_sp(
    sp_size: int,
    world_size: int,
    *,
    method: str,
    backend: str | None,
    num_heads: int,
    num_kv_heads: int,
    max_len: int,
    where: str = "--sp-size",
) -> None:
    """Refuse every combination the sequence-parallel path does not support, naming the fix (``backend=None``
    skips the attention check, for a call before the backend is chosen)."""
    sp = int(sp_size)
    if sp < 1:
        raise ValueError(f"{where} must be >= 1, got {sp}")
    if sp == 1:
        return
    if world_size % sp:
        raise ValueError(
            f"{where} {sp} does not divide the world size {world_size} (world = data-parallel x sequence-"
            f"parallel ranks); launch a multiple of {sp} processes or choose an --sp-size that divides {world_size}"
        )
    if method != "pack":
        raise ValueError(
            f"{where} {sp} needs --method pack (sequence parallelism shards one pack per micro-batch; "
            f"--method {method} pads batches of several rows); use --method pack or --sp-size 1"
        )
    if backend in FLASH_ATTN:
        raise ValueError(
            f"attention backend {backend!r} cannot run under {where} {sp} (transformers' flash-attn wrapper "
            "chooses its kernel by the model's attention name); use --attn-implementation auto, "
            "longalign_varlen (torch's varlen flash kernel, bf16/fp16) or longalign_flex"
        )
    if backend is not None and backend not in SP_CORES:
        raise ValueError(
            f"attention backend {backend!r} cannot take a pack's boundaries after the sequence-parallel "
            f"all-to-all; use --attn-implementation auto or one of {', '.join(SP_CORES)} with {where} {sp}"
        )
    if num_heads % sp:
        raise ValueError(
            f"the model has {num_heads} attention heads, not divisible by {where} {sp} (each SP rank "
            "attends with an equal share of the heads); choose an --sp-size that divides the head count"
        )
    if not (num_kv_heads % sp == 0 or sp % num_kv_heads == 0):
        raise ValueError(
            f"the model has {num_kv_heads} key/value heads: {where} {sp} must divide it or be a multiple of "
            "it; choose another --sp-size"
        )
    if max_len < sp:
        raise ValueError(f"max_len={max_len} is shorter than {where} {sp}; raise --max-len or lower --sp-size")


def default_core(auto: str, device: Any, dtype: Any = None) -> str:
    """The core attention for sequence parallelism given ``select_attention``'s pick: flash-attn is replaced by
    torch's varlen flash kernel (bf16/fp16 on Ampere or newer) or flex attention; other picks stay."""
    if auto not in FLASH_ATTN:
        return auto
    import torch

    from ..batching.attention import FLEX, VARLEN, torch_varlen_available

    dev = torch.device(device)
    if (
        dtype in (torch.float16, torch.bfloat16)
        and torch_varlen_available()
        and torch.cuda.is_available()
        and torch.cuda.get_device_capability(dev)[0] >= 8
    ):
        return VARLEN
    return FLEX


# ------------------------------------------------------------------------------------------------------------
# sharding a pack
# ------------------------------------------------------------------------------------------------------------


def shift_targets(labels: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and weights moved one position left: position t gets token t + 1's (the last gets none)."""
    lab = np.full_like(labels, IGNORE_INDEX)
    w = np.zeros_like(weights)
    lab[:-1] = labels[1:]
    w[:-1] = weights[1:]
    w[lab == IGNORE_INDEX] = 0.0
    return lab, w


def shard_pack(batch: Mapping[str, Any], sp_size: int, sp_rank: int) -> dict[str, Any]:
    """This SP rank's shard of one packed row from :class:`~longalign.batching.PackedCollator`.

    Returns ``input_ids``, ``position_ids``, ``labels`` and ``loss_weights`` of the shard ([1, L'/SP], labels
    and weights already shifted: position t carries the target of token t + 1), the whole pack's ``cu_seqlens``
    / ``cu_seq_lens_q/k`` / ``max_length_q/k`` (padding segment included) and ``seq_lens`` of the real
    sequences, plus ``labels_shifted=True`` for the loss.
    """
    import torch

    sp, r = int(sp_size), int(sp_rank)
    if not 0 <= r < sp:
        raise ValueError(f"sp_rank {r} is outside 0..{sp - 1}")
    ids = batch["input_ids"][0].numpy()
    labels = batch["labels"][0].numpy()
    weights = batch["loss_weights"][0].numpy()
    cu = np.asarray(batch["cu_seqlens"], dtype=np.int64)
    if ids.shape[0] != int(cu[-1]):
        raise ValueError(f"pack of {ids.shape[0]} tokens but cu_seqlens ends at {int(cu[-1])}")
    total = int(cu[-1])
    padded = -(-total // sp) * sp
    pad = padded - total
    shifted, w = shift_targets(labels, weights)
    if pad:
        pad_id = int(ids[-1])
        ids = np.concatenate([ids, np.full(pad, pad_id, dtype=ids.dtype)])
        shifted = np.concatenate([shifted, np.full(pad, IGNORE_INDEX, dtype=shifted.dtype)])
        w = np.concatenate([w, np.zeros(pad, dtype=w.dtype)])
        cu = np.concatenate([cu, [padded]])
    seg = np.diff(cu)
    positions = np.arange(padded, dtype=np.int64) - np.repeat(cu[:-1], seg)
    n = padded // sp
    part = slice(r * n, (r + 1) * n)
    cu_t = torch.from_numpy(cu.astype(np.int32))
    max_seq = int(seg.max())
    return {
        "input_ids": torch.from_numpy(np.ascontiguousarray(ids[part])).unsqueeze(0),
        "labels": torch.from_numpy(np.ascontiguousarray(shifted[part])).unsqueeze(0),
        "position_ids": torch.from_numpy(np.ascontiguousarray(positions[part])).unsqueeze(0),
        "loss_weights": torch.from_numpy(np.ascontiguousarray(w[part])).to(batch["loss_weights"].dtype).unsqueeze(0),
        "cu_seqlens": cu_t,
        "seq_lens": batch["seq_lens"],
        "cu_seq_lens_q": cu_t,
        "cu_seq_lens_k": cu_t,
        "max_length_q": max_seq,
        "max_length_k": max_seq,
        SHIFTED_KEY: True,
    }


class ShardCollator:
    """Wraps a :class:`~longalign.batching.PackedCollator`: collates the whole pack, keeps this rank's shard."""

    def __init__(self, inner: Any, sp_size: int, sp_rank: int):
        self.inner = inner
        self.sp_size, self.sp_rank = int(sp_size), int(sp_rank)

    def __call__(self, features: Any) -> dict[str, Any]:
        return shard_pack(self.inner(features), self.sp_size, self.sp_rank)


# ------------------------------------------------------------------------------------------------------------
# all-to-all and the attention wrapper
# ------------------------------------------------------------------------------------------------------------


class _State:
    group: Any = None  # the SP process group of this rank
    size: int = 1
    bypass: bool = False  # run the core on the local tensors (probes on unsharded inputs)
    withhold_boundaries: bool = False  # negative control: plain causal attention over the whole pack


def configure(group: Any, size: int) -> None:
    """Bind the sequence-parallel attention of this process to ``group`` (``size`` ranks)."""
    _State.group, _State.size = group, int(size)


@contextlib.contextmanager
def bypassed() -> Iterator[None]:
    """Within, the wrapper calls its core directly on unsharded inputs (for probes that run one whole pack)."""
    old = _State.bypass
    _State.bypass = True
    try:
        yield
    finally:
        _State.bypass = old


@contextlib.contextmanager
def boundaries_withheld() -> Iterator[None]:
    """Within, the core gets no boundaries: plain causal attention over the whole pack (a negative control)."""
    old = _State.withhold_boundaries
    _State.withhold_boundaries = True
    try:
        yield
    finally:
        _State.withhold_boundaries = old


def _exchange(x: Any, group: Any) -> Any:
    """All-to-all along dim 0 (split into ``group size`` equal blocks; block j goes to rank j)."""
    import torch
    import torch.distributed as dist

    x = x.contiguous()
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


def _all_to_all_function():
    import torch

    class AllToAll(torch.autograd.Function):
        """Exchange between sequence shards and head shards; ``seq_to_heads`` picks the direction.

        seq_to_heads: [B, H, n, D] (n = L/P tokens, all H heads) -> [B, H/P, L, D];
        heads_to_seq: [B, L, H/P, D] -> [B, n, H, D]. The backward is the exchange the other way.
        """

        @staticmethod
        def forward(ctx, x, group, size, seq_to_heads):
            ctx.group, ctx.size, ctx.seq_to_heads = group, size, seq_to_heads
            return _seq_to_heads(x, group, size) if seq_to_heads else _heads_to_seq(x, group, size)

        @staticmethod
        def backward(ctx, grad):
            back = _seq_to_heads_backward if ctx.seq_to_heads else _heads_to_seq_backward
            return back(grad, ctx.group, ctx.size), None, None, None

    return AllToAll


def _seq_to_heads(x: Any, group: Any, p: int) -> Any:
    b, h, n, d = x.shape
    # [B, H, n, D] -> [P, B, H/P, n, D]: block j holds the heads rank j attends with
    blocks = x.reshape(b, p, h // p, n, d).permute(1, 0, 2, 3, 4)
    got = _exchange(blocks, group)  # block j now holds shard j's tokens for this rank's heads
    return got.permute(1, 2, 0, 3, 4).reshape(b, h // p, p * n, d)


def _heads_to_seq_backward(g: Any, group: Any, p: int) -> Any:
    # gradient of _heads_to_seq: [B, n, H, D] -> [B, L, H/P, D]
    b, n, h, d = g.shape
    blocks = g.reshape(b, n, p, h // p, d).permute(2, 0, 1, 3, 4)
    got = _exchange(blocks, group)
    return got.permute(1, 0, 2, 3, 4).reshape(b, p * n, h // p, d)


def _heads_to_seq(x: Any, group: Any, p: int) -> Any:
    b, length, hl, d = x.shape
    n = length // p
    # [B, L, H/P, D] -> [P, B, n, H/P, D]: block j holds shard j's tokens
    blocks = x.reshape(b, p, n, hl, d).permute(1, 0, 2, 3, 4)
    got = _exchange(blocks, group)  # block j now holds this shard's tokens for rank j's heads
    return got.permute(1, 2, 0, 3, 4).reshape(b, n, p * hl, d)


def _seq_to_heads_backward(g: Any, group: Any, p: int) -> Any:
    # gradient of _seq_to_heads: [B, H/P, L, D] -> [B, H, n, D]
    b, hl, length, d = g.shape
    n = length // p
    blocks = g.reshape(b, hl, p, n, d).permute(2, 0, 1, 3, 4)
    got = _exchange(blocks, group)
    return got.permute(1, 0, 2, 3, 4).reshape(b, p * hl, n, d)


_A2A: Any = None


def seq_to_heads(x: Any, group: Any, size: int) -> Any:
    """[B, H, L/P, D] sequence shards -> [B, H/P, L, D] head shards of the whole sequence (differentiable)."""
    global _A2A
    if _A2A is None:
        _A2A = _all_to_all_function()
    return _A2A.apply(x, group, int(size), True)


def heads_to_seq(x: Any, group: Any, size: int) -> Any:
    """[B, L, H/P, D] head shards -> [B, L/P, H, D] sequence shards with all heads (differentiable)."""
    global _A2A
    if _A2A is None:
        _A2A = _all_to_all_function()
    return _A2A.apply(x, group, int(size), False)


def _full_positions(cu: Any, device: Any) -> Any:
    import torch

    cu = torch.as_tensor(cu, dtype=torch.long, device=device)
    seg = torch.diff(cu)
    return (torch.arange(int(cu[-1]), device=device) - torch.repeat_interleave(cu[:-1], seg)).unsqueeze(0)


def ulysses_attention(core: Any):
    """A transformers attention function that runs ``core`` sequence-parallel over the configured group."""

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        import torch

        p, group = _State.size, _State.group
        if _State.bypass or p == 1:
            return core(module, query, key, value, attention_mask, *args, **kwargs)
        if attention_mask is not None:
            raise ValueError("sequence-parallel attention takes no attention_mask: the boundaries come with the pack")
        cu = kwargs.get("cu_seq_lens_q")
        if cu is None:
            raise ValueError(
                "sequence-parallel attention needs the whole pack's cu_seq_lens_q (the sharding collator "
                "passes it); call the model with the collator's keys"
            )
        rep = 1
        kv_heads = key.shape[1]
        if kv_heads < p:  # fewer key/value heads than ranks: each rank gets a copy of its group's head
            rep = p // kv_heads
            key = key.repeat_interleave(rep, dim=1)
            value = value.repeat_interleave(rep, dim=1)
        q = seq_to_heads(query, group, p)
        k = seq_to_heads(key, group, p)
        v = seq_to_heads(value, group, p)
        length = q.shape[2]
        kw = dict(kwargs)
        if _State.withhold_boundaries:
            for name in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k"):
                kw.pop(name, None)
            kw["position_ids"] = torch.arange(length, device=q.device).unsqueeze(0)
        else:
            if int(cu[-1]) != length:
                raise ValueError(
                    f"cu_seq_lens_q ends at {int(cu[-1])} but the gathered pack has {length} tokens; pass the "
                    "sharding collator's keys unchanged"
                )
            kw["position_ids"] = _full_positions(cu, q.device)
        groups = getattr(module, "num_key_value_groups", None)
        if rep > 1 and groups is not None:
            module.num_key_value_groups = q.shape[1] // k.shape[1]
        try:
            out, weights = core(module, q, k, v, None, *args, **kw)
        finally:
            if rep > 1 and groups is not None:
                module.num_key_value_groups = groups
        return heads_to_seq(out, group, p), weights

    return attention


_REGISTERED: set[str] = set()


def register_sp_attention(core: str) -> str:
    """Register the sequence-parallel wrapper of ``core`` with transformers; returns its name."""
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from ..batching.attention import register_attention

    if core not in SP_CORES:
        raise ValueError(f"attention {core!r} cannot run sequence-parallel; use one of {', '.join(SP_CORES)}")
    register_attention()
    name = sp_attention_name(core)
    if name not in _REGISTERED:
        if core not in ALL_ATTENTION_FUNCTIONS:
            raise ValueError(f"attention {core!r} is not available in this transformers installation")
        AttentionInterface.register(name, ulysses_attention(ALL_ATTENTION_FUNCTIONS[core]))
        _REGISTERED.add(name)
    return name


def new_sp_groups(layout: SPLayout) -> Any:
    """Create the SP process groups of every DP rank (all ranks must call this) and return this rank's."""
    import torch.distributed as dist

    mine = None
    for d in range(layout.dp_size):
        group = dist.new_group(layout.sp_ranks(d))
        if d == layout.dp_rank:
            mine = group
    return mine
