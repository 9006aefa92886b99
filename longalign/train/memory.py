"""How much memory one training step needs per device, before the run: the memory planner.

``plan_memory(model, max_len, ...)`` predicts the peak of one optimizer step (forward, backward, optimizer) on
one device, by component, for a decoder-only transformer of the Llama family (Llama, Mistral, Qwen2, SmolLM2 ...:
RMSNorm, rotary positions, gated MLP); ``largest_max_len(...)`` searches the longest pack that fits a device.
``longalign train --memory-plan`` prints both for the run's configuration and trains nothing.

Where each term comes from (P = parameters, T = tokens per micro-batch on the device after sequence
parallelism, N = target tokens among them, L = layers, H = hidden size, I = MLP width, KV = key/value width,
h = heads, d = head width, V = vocabulary, b = bytes of an activation):

* **weights / gradients / optimizer** -- without DeepSpeed the model is kept in float32 (autocast computes in
  bf16/fp16 and caches a half copy of the weights for the forward): 4P + 2P (half only), gradients 4P, AdamW's
  two moments 8P. With DeepSpeed in bf16/fp16 (the ZeRO paper's accounting, K = 12): half weights 2P, half
  gradients 2P plus a float32 gradient partition 4P, and 12P of optimizer state (float32 master weights and two
  moments); ZeRO-1 partitions the optimizer state over all ranks of the job (with sequence parallelism too:
  the trainer hands DeepSpeed the whole world as its data-parallel group), ZeRO-2 the gradients too, ZeRO-3
  the weights too (plus a live working set: two layers' weights and the larger of the embedding and the head);
  CPU offload moves optimizer state and float32 gradients (and, with ``offload="optimizer+params"``, the weights)
  to host memory, which the plan reports separately.
* **activations** -- what autograd saves, counted tensor by tensor for the transformers Llama decoder layer and
  checked exactly against ``torch.autograd.graph.saved_tensors_hooks`` in the tests: per token per layer
  ``8H + 2KV + 4I + h + 2`` elements (inputs of the two norms and of the q/k/v, o, gate/up and down
  projections; q and k before and after the rotation; v; the attention output and its log-sum-exp; the gate,
  its SiLU, the up projection and their product; two RMS factors), plus ``2H + 2d + 3`` per token once (the
  final norm, the rotary cos/sin). Gradient checkpointing keeps only each layer's input (H per token per layer)
  and recomputes one layer at a time in the backward. In bf16/fp16 the norms' inputs are saved in float32
  (4H extra bytes per token per layer). With sequence parallelism (``sp_size``, Ulysses all-to-all) the core
  attention saves q/k/v and its output for the whole pack but h/SP heads: as many elements as T tokens with
  all heads, so the per-token count holds with T = ceil(max_len / SP) (the trainer pads a pack to a multiple
  of SP); not counted: the copies of the key/value heads when SP exceeds their number.
* **logits / loss** -- ``full``: the larger of two moments. At the end of the forward: the ``[T, V]`` logits in
  the head's dtype, the float32 log-softmax of the N target rows that the cross-entropy saves, and one float32
  chunk of at most 8,192 rows in flight. In the backward: the logits (the model's output still holds them) and
  their ``[T, V]`` gradient, which the slicing into chunks materialises at full size, plus one chunk;
  ``chunked``: two float32 ``[C, V]`` buffers (C = 2**25 / V rows), the float32 gradient of the head weight and
  the N target rows of hidden states with their gradient -- independent of T.
* **runtime** -- a CUDA context and allocator slack (1.0 GiB per GPU, a typical H100 figure); on a CPU the
  interpreter with torch, transformers and datasets imported plus the Trainer's bookkeeping and the data (0.65
  GiB: the resident size of the benchmark's step process at the start of the first step less the weights, 0.62
  GiB, measured for SmolLM2-135M on this project's 2-core machine with the ``lean`` CPU allocator setting of
  :mod:`longalign.train.allocator`, which returns freed blocks to the system at once; the others keep freed
  blocks for reuse and can hold more -- glibc's heap 1.9-2.9 GiB more for a SmolLM2 step at 8k tokens --
  so :func:`cpu_allocator_advice` names ``lean`` when a CPU run's peak comes near the machine's memory).
* **not at the peak** (a negative term) -- the transient terms do not all exist at one moment, and the peak
  is the largest of three: (1) the loss -- the saved activations (with gradient checkpointing, the layer
  inputs only: no layer is being recomputed yet) and the logits/loss term, before any parameter gradient
  exists (the trainer frees them after every optimizer step; under DeepSpeed the gradients are counted here
  too, as ZeRO keeps its flat gradient buffers between steps); (2) the backward through the layers -- the
  activations (with checkpointing, one recomputed layer too) and the gradients; (3) the optimizer step --
  the gradients and the step's temporaries, after the activations are freed. The term is the sum of the
  four transient components less that largest moment, so the total is the resident weights, optimizer state
  and runtime plus the largest moment. Checked against ``benchmarks/memory.py`` (per-phase RSS of SmolLM2 at
  8k with gradient checkpointing peaks in the backward through the layers with the chunked loss, at the
  loss with the full one).

Not modelled: activation offloading and tiled MLPs (not used here), fragmentation beyond the runtime term,
attention with a dense ``[T, T]`` mask (``attention="dense"`` adds it: varlen/flash/segment attention keeps only
per-token tensors).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longalign.config import check_choice
from longalign.models import DecoderShape, random_config_path
from longalign.stage import as_run_dir

GIB = 1024**3
PRECISIONS = ("fp32", "bf16", "fp16")
OFFLOAD = ("none", "optimizer", "optimizer+params")
ATTENTION = ("varlen", "dense")
DEVICES = ("cuda", "cpu")
CUDA_RUNTIME = 1.0 * GIB
CPU_RUNTIME = 0.65 * GIB
FULL_CE_CHUNK = 8192  # rows per float32 chunk of longalign.batching.weighted_and_plain_ce


@dataclass(frozen=True)
class ModelShape(DecoderShape):
    """The sizes of a decoder-only transformer that memory depends on (parameters: :class:`DecoderShape`), and
    the activations autograd saves per token."""

    def activation_elements_per_token_layer(self) -> int:
        return 8 * self.hidden + 2 * self.kv_dim + 4 * self.intermediate + self.heads + 2

    def activation_elements_per_token_once(self) -> int:
        return 2 * self.hidden + 2 * self.head_dim + 3


def load_shape(model: Any) -> ModelShape:
    """A :class:`ModelShape` from a shape, a config (object or dict), a ``config.json`` path or folder, or a model
    spec (``smollm2``, an HF id or folder, ``random:<config>``)."""
    if isinstance(model, ModelShape):
        return model
    if isinstance(model, dict) or hasattr(model, "hidden_size"):
        return ModelShape.from_config(model)
    text = str(model)
    config_path = random_config_path(text)
    path = Path(text if config_path is None else config_path)
    if path.is_file():
        return ModelShape.from_config(json.loads(path.read_text()))
    if (path / "config.json").is_file():
        return ModelShape.from_config(json.loads((path / "config.json").read_text()))
    from transformers import AutoConfig

    from longalign.models import resolve_model_path

    return ModelShape.from_config(AutoConfig.from_pretrained(resolve_model_path(str(model))))


@dataclass
class MemoryPlan:
    """Predicted peak bytes per device by component (``host`` is what offloading puts in CPU memory)."""

    max_len: int
    tokens_per_device: int
    components: dict[str, float]
    host: float
    settings: dict[str, Any]
    device_memory: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return float(sum(self.components.values()))

    @property
    def fits(self) -> bool | None:
        return None if self.device_memory is None else self.total <= self.device_memory

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_len": self.max_len,
            "tokens_per_device": self.tokens_per_device,
            "components_gib": {k: round(v / GIB, 3) for k, v in self.components.items()},
            "total_gib": round(self.total / GIB, 3),
            "host_gib": round(self.host / GIB, 3),
            "device_memory_gib": None if self.device_memory is None else round(self.device_memory / GIB, 2),
            "fits": self.fits,
            "settings": self.settings,
            "notes": self.notes,
        }

    def lines(self) -> list[str]:
        s = self.settings
        out = [
            f"memory plan: {s['params'] / 1e6:,.1f}M parameters, {self.max_len:,} tokens per micro-batch "
            f"({self.tokens_per_device:,} per device), {s['precision']}, "
            f"{'ZeRO-' + str(s['zero_stage']) if s['zero_stage'] is not None else 'no DeepSpeed'}"
            f"{' + offload ' + s['offload'] if s['offload'] != 'none' else ''}, {s['gpus']} device(s)"
            f"{', SP ' + str(s['sp_size']) if s['sp_size'] > 1 else ''}, gradient checkpointing "
            f"{'on' if s['gradient_checkpointing'] else 'off'}, loss {s['loss_impl']}"
        ]
        width = max(len(k) for k in self.components)
        for k, v in self.components.items():
            out.append(f"  {k:<{width}}  {v / GIB:9.2f} GiB")
        out.append(
            f"  {'total':<{width}}  {self.total / GIB:9.2f} GiB per device"
            + (
                ""
                if self.device_memory is None
                else f" of {self.device_memory / GIB:.1f} GiB: {'fits' if self.fits else 'does NOT fit'}"
            )
            + (f" (peak at the {s['peak_moment'].replace('_', ' ')})" if s.get("peak_moment") else "")
        )
        if self.host:
            out.append(f"  host memory for offloaded state: {self.host / GIB:.2f} GiB per device")
        out += [f"  note: {n}" for n in self.notes]
        return out


def _check(
    precision: str,
    zero_stage: int | None,
    offload: str,
    gpus: int,
    sp_size: int,
    loss_impl: str,
    attention: str,
    device: str,
    target_fraction: float,
) -> None:
    from longalign.batching.loss import LOSS_IMPLS

    check_choice("precision", precision, PRECISIONS)
    check_choice("offload", offload, OFFLOAD)
    check_choice("loss_impl", loss_impl, LOSS_IMPLS)
    check_choice("attention", attention, ATTENTION)
    check_choice("device", device, DEVICES)
    if zero_stage is not None and zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage={zero_stage!r} is not accepted; use None (no DeepSpeed) or 0, 1, 2, 3")
    if offload != "none" and zero_stage is None:
        raise ValueError(
            "offload needs DeepSpeed: give zero_stage (offload='optimizer' with ZeRO 1-3, "
            "'optimizer+params' with ZeRO-3)"
        )
    if offload == "optimizer+params" and zero_stage != 3:
        raise ValueError("offload='optimizer+params' needs ZeRO-3 (zero_stage=3)")
    if gpus < 1 or sp_size < 1 or gpus % sp_size:
        raise ValueError(f"gpus={gpus} must be a positive multiple of sp_size={sp_size}")
    if not 0.0 <= target_fraction <= 1.0:
        raise ValueError(f"target_fraction must be in [0, 1], got {target_fraction}")


def plan_memory(
    model: Any,
    max_len: int,
    *,
    precision: str = "bf16",
    zero_stage: int | None = None,
    offload: str = "none",
    gpus: int = 1,
    sp_size: int = 1,
    gradient_checkpointing: bool = False,
    loss_impl: str = "chunked",
    target_fraction: float = 1.0,
    attention: str = "varlen",
    device: str = "cuda",
    chunk_rows: int = 0,
    device_memory: float | None = None,
    runtime: float | None = None,
) -> MemoryPlan:
    """Predicted peak memory per device of one training step (see the module docstring for every term).

    ``max_len`` is the tokens of one micro-batch (a pack, or batch x padded length); ``gpus`` the devices in
    the job (data-parallel ranks x ``sp_size``); ``target_fraction`` the share of tokens with a loss target
    (1.0 is the worst case); ``device_memory`` in bytes turns on the fit check.
    """
    _check(precision, zero_stage, offload, gpus, sp_size, loss_impl, attention, device, target_fraction)
    shape = load_shape(model)
    half = precision != "fp32"
    T = int(math.ceil(int(max_len) / sp_size))
    N = int(math.ceil(T * target_fraction))
    notes: list[str] = []
    # ZeRO partitions over every rank: the trainer gives DeepSpeed the whole world (DP x SP ranks) as its
    # data-parallel group and sums the SP ranks' gradients through the same reduction
    weights, grads, optim, host = _model_states(shape, half, zero_stage, offload, dp=gpus)
    activations, per_layer = _activations(shape, T, max_len, half, gradient_checkpointing, attention, sp_size, notes)
    loss = _logits_loss(shape, T, N, half, loss_impl, chunk_rows, zero_stage)
    step = 0.0
    if zero_stage is None:
        step = 2.0 * 4.0 * max(shape.vocab * shape.hidden, shape.layer_params)  # AdamW's per-tensor temporaries
    rt = runtime if runtime is not None else (CUDA_RUNTIME if device == "cuda" else CPU_RUNTIME)
    recomputed_layer = T * per_layer if gradient_checkpointing else 0.0
    peak_moment, not_at_peak = _peak_moment(activations, recomputed_layer, loss, grads, step, zero_stage)
    components = {
        "weights": weights,
        "gradients": grads,
        "optimizer": optim,
        "activations": activations,
        "logits_loss": loss,
        "optimizer_step": step,
        "runtime": rt,
        "not_at_peak": not_at_peak,
    }
    settings = {
        "params": shape.params,
        "precision": precision,
        "zero_stage": zero_stage,
        "offload": offload,
        "gpus": gpus,
        "sp_size": sp_size,
        "gradient_checkpointing": bool(gradient_checkpointing),
        "loss_impl": loss_impl,
        "target_fraction": target_fraction,
        "attention": attention,
        "device": device,
        "peak_moment": peak_moment,
    }
    return MemoryPlan(
        max_len=int(max_len),
        tokens_per_device=T,
        components=components,
        host=host,
        settings=settings,
        device_memory=device_memory,
        notes=notes,
    )


def _model_states(
    shape: ModelShape, half: bool, zero_stage: int | None, offload: str, dp: int
) -> tuple[float, float, float, float]:
    """``(weights, gradients, optimizer, host)`` bytes per device: the model states, without or with ZeRO and
    offloading (module docstring, first item)."""
    P = shape.params
    host = 0.0
    if zero_stage is None:
        weights = 4.0 * P + (2.0 * P if half else 0.0)
        return weights, 4.0 * P, 8.0 * P, host
    wb = 2.0 if half else 4.0
    fp32_grads = 4.0 * P if half else 0.0
    states = 12.0 * P if half else 8.0 * P
    weights, grads, optim = wb * P, wb * P + fp32_grads, states
    if zero_stage >= 1:
        optim /= dp
        grads = wb * P + fp32_grads / dp
    if zero_stage >= 2:
        grads = (wb * P + fp32_grads) / dp
    if zero_stage == 3:
        live = wb * (2 * shape.layer_params + shape.vocab * shape.hidden)
        weights = wb * P / dp + live
    if offload in ("optimizer", "optimizer+params"):
        host += optim + fp32_grads / dp
        grads -= fp32_grads / dp if zero_stage >= 1 else 0.0
        optim = 0.0
    if offload == "optimizer+params":
        host += wb * P / dp
        weights = wb * (2 * shape.layer_params + shape.vocab * shape.hidden)
    return weights, grads, optim, host


def _activations(
    shape: ModelShape,
    T: int,
    max_len: int,
    half: bool,
    gradient_checkpointing: bool,
    attention: str,
    sp_size: int,
    notes: list[str],
) -> tuple[float, float]:
    """``(activations, bytes per token of one layer)``: what autograd saves for ``T`` tokens per device (module
    docstring, second item); a dense attention mask adds a note to ``notes``."""
    b = 2.0 if half else 4.0
    per_layer = shape.activation_elements_per_token_layer() * b + (4.0 * shape.hidden if half else 0.0)
    once = shape.activation_elements_per_token_once() * b
    if gradient_checkpointing:
        activations = T * (shape.layers * shape.hidden * b + per_layer + once)
    else:
        activations = T * (shape.layers * per_layer + once)
    if attention == "dense":
        activations += float(max_len) * max_len * (1 + 4 * shape.heads / sp_size)  # bool mask + float scores
        notes.append("dense attention: the [T, T] mask and scores grow quadratically; use varlen attention")
    return activations, per_layer


def _logits_loss(
    shape: ModelShape, T: int, N: int, half: bool, loss_impl: str, chunk_rows: int, zero_stage: int | None
) -> float:
    """Bytes of the logits and the loss (module docstring, third item): ``T`` tokens, ``N`` of them targets."""
    from longalign.batching.loss import default_chunk_rows

    logit_b = 2.0 if half else 4.0
    b = 2.0 if half else 4.0
    V, H = shape.vocab, shape.hidden
    if loss_impl == "full":
        chunk_b = min(N, FULL_CE_CHUNK) * V * 4.0
        forward_peak = T * V * logit_b + N * V * 4.0 + chunk_b  # logits + saved log-softmax + a chunk in flight
        backward_peak = 2.0 * T * V * logit_b + chunk_b  # logits (still referenced) + their full-size gradient
        return max(forward_peak, backward_peak)
    C = int(chunk_rows) if chunk_rows and chunk_rows > 0 else default_chunk_rows(V)
    loss = 2.0 * min(C, max(N, 1)) * V * 4.0 + V * H * 4.0 + 2.0 * N * H * b
    if half and zero_stage is None:
        loss += V * H * 2.0  # the head weight cast to the compute dtype once per pass
    return loss


def _peak_moment(
    activations: float, recomputed_layer: float, loss: float, grads: float, step: float, zero_stage: int | None
) -> tuple[str, float]:
    """The moment of the step with the largest transient memory, and the (negative) share of the transient
    components that does not exist at that moment (module docstring, last item)."""
    # without DeepSpeed the trainer sets the gradients to None after every step, so none exists at the loss;
    # ZeRO reduces into flat gradient buffers it keeps between steps (not measured here): held throughout
    held_grads = 0.0 if zero_stage is None else grads
    moments = {
        "loss": activations - recomputed_layer + loss + held_grads,
        "backward": activations + grads,
        "optimizer_step": grads + step,
    }
    peak_moment = max(moments, key=moments.get)
    return peak_moment, moments[peak_moment] - (grads + activations + loss + step)


def largest_max_len(
    model: Any, device_memory: float, *, multiple: int = 1024, limit: int = 1 << 24, **settings: Any
) -> int:
    """The longest ``max_len`` (a multiple of ``multiple``) whose plan fits ``device_memory`` bytes; 0 when even
    ``multiple`` tokens do not fit. ``settings`` are :func:`plan_memory`'s keyword arguments."""

    def fits(n: int) -> bool:
        return plan_memory(model, n, device_memory=device_memory, **settings).fits is True

    if not fits(multiple):
        return 0
    lo, hi = 1, 2
    while hi * multiple <= limit and fits(hi * multiple):
        lo, hi = hi, hi * 2
    if hi * multiple > limit:
        return lo * multiple
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid * multiple) else (lo, mid)
    return lo * multiple


def parse_memory(text: str | float | int) -> float:
    """Bytes from '80GB', '80 GiB', '24g', '512MB' or a number of bytes (GB and GiB are both read as GiB, the
    unit device memory is quoted in)."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip().lower().replace(" ", "")
    for suffix, mult in (
        ("gib", GIB),
        ("gb", GIB),
        ("g", GIB),
        ("mib", 2**20),
        ("mb", 2**20),
        ("m", 2**20),
        ("tib", 2**40),
        ("tb", 2**40),
        ("t", 2**40),
    ):
        if s.endswith(suffix):
            try:
                return float(s[: -len(suffix)]) * mult
            except ValueError:
                break
    try:
        return float(s)
    except ValueError:
        raise ValueError(f"device memory {text!r} is not understood; write e.g. 80GB, 24GiB or 512MB") from None


# a CPU run whose predicted peak passes this share of the memory it may use is told about the lean allocator
LEAN_ADVICE_SHARE = 0.8


def memory_available() -> float | None:
    """Bytes of memory this machine can still give (``MemAvailable`` of /proc/meminfo), or None off Linux."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cpu_allocator_advice(predicted: float, available: float | None, setting: str, processes: int = 1) -> str | None:
    """What to tell a CPU run whose predicted peak (``predicted`` bytes per process, ``processes`` on the machine)
    comes near the ``available`` memory while it runs on an allocator that keeps freed blocks (anything but
    ``lean``): the planner's figure is the lean allocator's, the others can hold more. None when there is
    nothing to say."""
    if available is None or available <= 0 or setting == "lean":
        return None
    need = predicted * max(1, int(processes))
    if need <= LEAN_ADVICE_SHARE * available:
        return None
    return (
        f"the predicted peak ({need / GIB:.1f} GiB{f' over {processes} processes' if processes > 1 else ''}) is "
        f"{need / available:.0%} of the {available / GIB:.1f} GiB this machine has available, and the {setting} "
        "allocator keeps freed blocks for reuse: --cpu-allocator lean (or LONGALIGN_CPU_ALLOCATOR=lean) returns "
        "them to the system at once, for the lowest peak at some speed"
    )


def deepspeed_settings(path: str | Path | None) -> tuple[int | None, str]:
    """``(zero_stage, offload)`` from a DeepSpeed JSON config (``(None, 'none')`` without one)."""
    if not path:
        return None, "none"
    cfg = json.loads(Path(path).read_text())
    zero = cfg.get("zero_optimization") or {}
    stage = int(zero.get("stage", 0))
    opt = (zero.get("offload_optimizer") or {}).get("device", "none") not in (None, "none")
    par = (zero.get("offload_param") or {}).get("device", "none") not in (None, "none")
    return stage, ("optimizer+params" if opt and par else "optimizer" if opt else "none")


def target_fraction_of(tokens_dir: str | Path) -> float | None:
    """Share of tokens with a loss target in a tokens folder (from its ``n_target``/``length`` columns), or None
    when the folder or the columns are missing."""
    path = Path(tokens_dir)
    if not (path / "dataset_info.json").is_file() and not (path / "state.json").is_file():
        return None
    from datasets import load_from_disk

    ds = load_from_disk(str(path))
    if "n_target" not in ds.column_names or "length" not in ds.column_names:
        return None
    total = sum(ds["length"])
    return min(1.0, sum(ds["n_target"]) / total) if total else None


def plan_for_config(
    cfg: Any,
    *,
    run_dir: Any = None,
    gpus: int = 1,
    device: str = "cuda",
    device_memory: float | None = None,
    target_fraction: float | None = None,
    max_len: int | None = None,
) -> MemoryPlan:
    """:func:`plan_memory` for a :class:`~longalign.train.TrainConfig`: its model, max_len (or the tokens
    folder's: ``cfg.tokens``, else ``<run_dir>/tokens``), precision (``auto`` is bf16 on a GPU, fp32 on a CPU),
    DeepSpeed JSON (stage and offload), gradient checkpointing and loss_impl; the target fraction is measured from
    the tokens folder when it exists (else 1.0, the worst case)."""
    if run_dir is None:
        run_dir = getattr(cfg, "run", None)  # the deprecated TrainConfig(run=...)
    tokens = Path(cfg.tokens) if getattr(cfg, "tokens", None) else (as_run_dir(run_dir).tokens if run_dir else None)
    n = int(max_len or cfg.max_len or 0)
    if not n and tokens is not None and (tokens / "longalign_meta.json").is_file():
        n = int(json.loads((tokens / "longalign_meta.json").read_text()).get("max_len") or 0)
    if n < 2:
        raise ValueError(
            "the memory plan needs the tokens per micro-batch: pass --max-len (no tokens folder records one)"
        )
    if target_fraction is None and tokens is not None:
        target_fraction = target_fraction_of(tokens)
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device == "cuda" else "fp32")
    stage, offload = deepspeed_settings(cfg.deepspeed)
    tokens_per_micro = n if cfg.method == "pack" else n * max(1, int(cfg.per_device_batch_size))
    return plan_memory(
        cfg.model,
        tokens_per_micro,
        precision=precision,
        zero_stage=stage,
        offload=offload,
        gpus=gpus,
        sp_size=int(getattr(cfg, "sp_size", 1) or 1),
        gradient_checkpointing=cfg.gradient_checkpointing,
        loss_impl=cfg.loss_impl,
        target_fraction=1.0 if target_fraction is None else float(target_fraction),
        device=device,
        chunk_rows=cfg.loss_chunk_rows,
        device_memory=device_memory,
    )


PLAN_SEARCH_KEYS = (
    "precision",
    "zero_stage",
    "offload",
    "gpus",
    "sp_size",
    "gradient_checkpointing",
    "loss_impl",
    "target_fraction",
    "device",
)


def largest_for_config(cfg: Any, plan: MemoryPlan, device_memory: float, *, multiple: int = 1024) -> int:
    """The longest ``max_len`` that fits ``device_memory`` bytes with every other setting of ``plan`` (a
    :func:`plan_for_config` result for ``cfg``) unchanged: tokens per pack, or per micro-batch (batch x padded
    length) for naive/sort. What ``longalign train --memory-plan --device-memory`` prints."""
    settings = {k: plan.settings[k] for k in PLAN_SEARCH_KEYS}
    return largest_max_len(cfg.model, device_memory, multiple=multiple, chunk_rows=cfg.loss_chunk_rows, **settings)
