"""Model setup: the model's config with the context extension, the tokenizer, the attention backend, sequence
parallelism and the model itself, in float32 (mixed precision is autocast's or DeepSpeed's business).

The attention backend must keep packed sequences apart (``longalign.batching.select_attention``: flash-attn
varlen, flex, the segment-aware CPU kernel, or sdpa with transformers' block-diagonal mask); with sequence
parallelism (``sp_size`` > 1, :mod:`longalign.train.sequence_parallel`) the model runs the Ulysses wrapper of
that core. Context extension multiplies the RoPE base (LongAlign: x200, 10,000 -> 2,000,000) and raises
``max_position_embeddings``. On a CPU, the run's memory allocator setting is applied
(:func:`setup_cpu_allocator`, :mod:`longalign.train.allocator`).

This module imports torch; it is imported when training starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..batching import select_attention
from ..batching.head_loss import install_loss_head
from ..models import check_length, load_model, load_model_config, load_tokenizer
from . import allocator
from . import sequence_parallel as spm
from .config import TrainConfig

log = logging.getLogger(__name__)

PACKING_SAFE_BACKENDS = (
    "flash_attention_2",
    "flash_attention_3",
    "longalign_flex",
    "longalign_segment",
    "longalign_varlen",
    "sdpa",
    "eager",
)
# attention implementations a plain from_pretrained resolves without this project's kernels registered
PLAIN_BACKENDS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention")


# ------------------------------------------------------------------------------------------------------------
# Config and context extension
# ------------------------------------------------------------------------------------------------------------


def rope_base(config: Any) -> float | None:
    """The RoPE base of a config, in either layout (``rope_theta`` or transformers-5 ``rope_parameters``)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and params.get("rope_theta") is not None:
        return float(params["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    return float(theta) if theta is not None else None


def apply_context_extension(config: Any, rope_scale: float = 1.0, max_position_embeddings: int = 0) -> Any:
    """Multiply the RoPE base by ``rope_scale`` and raise ``max_position_embeddings`` (in place).

    LongAlign extends Llama-2 from 4k to 64k by raising the base 10,000 -> 2,000,000 (x200) before
    continual pre-training and SFT. Both config layouts are handled: ``config.rope_theta`` and
    ``config.rope_parameters["rope_theta"]`` (transformers 5); a config with neither cannot be extended.
    """
    if rope_scale and rope_scale != 1.0:
        if rope_scale <= 0:
            raise ValueError(f"rope_scale must be > 0, got {rope_scale}")
        base = rope_base(config)
        if base is None:
            raise ValueError(
                f"{type(config).__name__} has no RoPE base (rope_theta / rope_parameters); "
                "context extension by rope_scale needs a RoPE model"
            )
        new = base * float(rope_scale)
        params = getattr(config, "rope_parameters", None)
        if isinstance(params, dict):
            params = dict(params)
            params["rope_theta"] = new
            config.rope_parameters = params
        if getattr(config, "rope_theta", None) is not None or not isinstance(params, dict):
            config.rope_theta = new
    if max_position_embeddings and max_position_embeddings > int(getattr(config, "max_position_embeddings", 0) or 0):
        config.max_position_embeddings = int(max_position_embeddings)
    return config


_TOKENIZERS: dict[str, Any] = {}


def cached_tokenizer(spec: str | None):
    """The tokenizer for ``spec``, loaded once per process (1-2 s each time otherwise)."""
    key = str(spec or "")
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = load_tokenizer(spec)
    return _TOKENIZERS[key]


def setup_config(cfg: TrainConfig, meta: dict[str, Any], tokens_dir: str | Path) -> tuple[Any, int]:
    """``(model_config, max_len)``: the config of ``cfg.model`` with the context extension applied, and the
    training length (``cfg.max_len``, else the tokens folder's), checked against the model's positions."""
    model_config = load_model_config(cfg.model)
    max_len = int(cfg.max_len or meta.get("max_len") or 0)
    if max_len < 2:
        raise ValueError(f"max_len is not set: pass --max-len (the tokens {tokens_dir} record none)")
    target_pos = cfg.max_position_embeddings or (max_len if cfg.rope_scale != 1.0 else 0)
    apply_context_extension(model_config, cfg.rope_scale, target_pos)
    check_length(
        max_len,
        asked=f"max_len={max_len}",
        model=cfg.model,
        positions=int(getattr(model_config, "max_position_embeddings", 0) or 0),
        shorter="lower --max-len",
        extend="extend the context with --rope-scale (paper: 200) and --max-position-embeddings {length}",
    )
    return model_config, max_len


# ------------------------------------------------------------------------------------------------------------
# Parallelism, precision, attention
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Parallel:
    """The ranks of a run: ``world_size`` = data-parallel x ``sp_size`` ranks; ``shape`` is what
    :func:`longalign.train.sequence_parallel.check_sp` checks besides the sizes (method, heads, max_len)."""

    world_size: int
    sp_size: int
    shape: dict[str, Any]

    @property
    def dp_size(self) -> int:
        """Data-parallel ranks: the plan is dealt over them; the SP ranks of a group share a pack."""
        return self.world_size // self.sp_size


def setup_parallel(cfg: TrainConfig, model_config: Any, max_len: int, world_size: int) -> Parallel:
    """The run's :class:`Parallel`, checked for sequence parallelism before any backend is chosen."""
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    heads = int(getattr(text_config, "num_attention_heads", 1) or 1)
    kv_heads = int(getattr(text_config, "num_key_value_heads", None) or heads)
    shape = dict(method=cfg.method, num_heads=heads, num_kv_heads=kv_heads, max_len=max_len)
    par = Parallel(world_size=world_size, sp_size=int(cfg.sp_size), shape=shape)
    spm.check_sp(par.sp_size, world_size, backend=None, **shape)
    return par


def resolve_precision(cfg: TrainConfig) -> str:
    """``cfg.precision``; ``auto`` is bf16 on a GPU that supports it, else fp32. ``bf16`` for CPU training needs
    native bf16 instructions (:func:`cpu_bf16_support`): elsewhere it would be emulated and slower than fp32, and
    is refused with the fix."""
    if cfg.precision == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if cfg.precision == "bf16" and not torch.cuda.is_available() and cpu_bf16_support() is None:
        raise ValueError(
            "--precision bf16 on this CPU: it has no native bf16 instructions (avx512_bf16 or amx_bf16 in "
            "/proc/cpuinfo), so bf16 would be emulated, slower than fp32; use --precision fp32 (or auto)"
        )
    return cfg.precision


def cpu_bf16_support(cpuinfo: str | None = None) -> str | None:
    """The native bf16 instructions of this CPU -- ``amx_bf16`` (Intel AMX) or ``avx512_bf16`` (Intel Cooper Lake
    and later, AMD Zen 4 and later) -- or None. Read from the ``flags`` of /proc/cpuinfo (or the text
    ``cpuinfo``); where that file does not exist, from torch's own CPU checks."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = None
    if cpuinfo is not None:
        flags: set[str] = set()
        for line in cpuinfo.splitlines():
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[-1].split())
        return next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), None)
    checks = (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"))
    for name, fn in checks:
        check = getattr(torch.cpu, fn, None)
        if check is not None and check():
            return name
    return None


def choose_attention(cfg: TrainConfig, device: Any, dtype: Any, sp_size: int) -> str:
    """The attention backend (the core one under sequence parallelism): ``cfg.attn_implementation``, or the best
    for ``device`` with ``auto``; refused when it cannot keep packed sequences apart."""
    packed = cfg.method == "pack"
    auto_backend = select_attention(device, packed, dtype)  # also registers the custom kernels
    if sp_size > 1:
        auto_backend = spm.default_core(auto_backend, device, dtype)
    backend = auto_backend if cfg.attn_implementation == "auto" else cfg.attn_implementation
    if spm.core_of(backend):  # a sequence-parallel name given directly: its core decides
        backend = spm.core_of(backend)
    if packed and backend not in PACKING_SAFE_BACKENDS:
        raise ValueError(
            f"attention backend {backend!r} cannot keep packed sequences apart; use one of "
            f"{', '.join(PACKING_SAFE_BACKENDS)} (or --attn-implementation auto) or --method sort"
        )
    return backend


def _bind_deepspeed() -> None:
    # ZeRO-3 builds the model partitioned (zero.Init), and its config reads the world size through
    # deepspeed.comm: bind that to the process group the launcher set up, or it counts one rank
    if dist.is_available() and dist.is_initialized():
        import deepspeed

        deepspeed.init_distributed(dist_backend=dist.get_backend())


# ------------------------------------------------------------------------------------------------------------
# The model
# ------------------------------------------------------------------------------------------------------------


@dataclass
class ModelSetup:
    """The model built for training and what it runs with."""

    model: Any
    device: Any
    dtype: Any  # the autocast dtype (bf16/fp16), None in float32
    backend: str  # the attn_implementation the model runs (under SP: the wrapper of core_backend)
    core_backend: str
    loss_head: Any  # the chunked loss head, None with loss_impl=full
    layout: spm.SPLayout
    cpu_allocator: str | None = None  # the allocator setting in force on a CPU (None on a GPU)


def setup_model(
    cfg: TrainConfig, model_config: Any, par: Parallel, device: Any, rank: int, precision: str
) -> ModelSetup:
    """Build the model on ``device`` for this rank: the CPU allocator setting, DeepSpeed's process group, the
    attention backend (and the sequence-parallel groups), the chunked loss head, gradient checkpointing."""
    cpu_allocator = setup_cpu_allocator(cfg) if torch.device(device).type == "cpu" else None
    layout = spm.SPLayout(par.world_size, par.sp_size, rank)
    if cfg.deepspeed:
        _bind_deepspeed()
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    core_backend = choose_attention(cfg, device, half, par.sp_size)
    backend = core_backend
    if par.sp_size > 1:
        spm.check_sp(par.sp_size, par.world_size, backend=backend, **par.shape)
        spm.configure(spm.new_sp_groups(layout), par.sp_size)
        backend = spm.register_sp_attention(backend)
    model = load_model(cfg.model, dtype=torch.float32, attn_implementation=backend, seed=cfg.seed, config=model_config)
    model.config.use_cache = False
    loss_head = install_loss_head(model) if cfg.loss_impl == "chunked" else None
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return ModelSetup(model, device, half, backend, core_backend, loss_head, layout, cpu_allocator)


# ------------------------------------------------------------------------------------------------------------
# CPU memory
# ------------------------------------------------------------------------------------------------------------


def setup_cpu_allocator(cfg: TrainConfig) -> str:
    """Apply the run's CPU allocator setting in this process (:mod:`longalign.train.allocator`) and return the
    setting in force (``glibc``, ``lean``, ``tcmalloc`` or ``jemalloc``)."""
    decision = allocator.decide(allocator.requested(cfg.cpu_allocator), gpu=allocator.gpu_visible())
    if decision.note:
        log.info("CPU allocator: %s", decision.note)
    return allocator.apply_in_process(decision)
