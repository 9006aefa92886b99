"""One loaded local causal LM per process and spec, shared by every in-process user of a local model.

Three users run a transformers model in-process: the ``local:`` LLM backend (Self-Instruct questions and
answers, :mod:`longalign.llm.local_backend`), the evaluation answerer (:class:`longalign.eval.generate.
LocalGenerator`) and the local judge (:class:`longalign.eval.judge.LocalJudge`). They all get their model
from :func:`get_local_model`, which loads ``(model, tokenizer)`` once per ``(spec, device, dtype)`` and keeps
it for the life of the process: the demo generates data with SmolLM2-135M and later judges with it, and
pays one load (~1 s from the safetensors cache, 0.54 GB of float32 weights) instead of three. The price is
that the weights stay in memory until :func:`release_local_models` drops them (a closed client only drops
its own reference); a model for training is never taken from here (``longalign.models.load_model``
returns a fresh copy whose weights the trainer may change).

Specs are model specs (:mod:`longalign.models`): ``smollm2`` (or empty), an HF id, a folder, or
``random:<config>``. Spellings of the same model share one entry (``""``/``smollm2``/``embedded``; a
relative and an absolute path of one folder). Device defaults to CUDA when available, else CPU; dtype to
``$LONGALIGN_LOCAL_DTYPE`` when set, else bfloat16 on CUDA (half the memory of float32, the precision the
released chat models are tuned in), and on CPU to ``int4`` where the CPU has AVX-512 (float32 elsewhere;
bfloat16 matmuls on CPU are several times slower). ``int4`` is the float32 model whose linear layers with
weights on a 4-bit or 8-bit group grid (every one of the embedded Q4_1/Q8_0 model's) decode from that grid
through PyTorch's int4 kernel, about half a byte (one for the head) per weight instead of four, and whose decoding
steps attend with two plain products (:mod:`longalign.llm.int4_decode`); prompts are prefilled in exact float32,
and ``LONGALIGN_LOCAL_DTYPE=float32`` (or ``dtype="float32"``) is the exact float32 path throughout.

:class:`LocalModel` exposes what the users need: the chat prompt (:meth:`~LocalModel.render`), the ids
that end a turn (:attr:`~LocalModel.eos_ids`), batched generation (:meth:`~LocalModel.generate`) and the
log-probability of continuations after a prefix (:meth:`~LocalModel.continuation_logprobs`, the local
judge's rating probabilities). Model calls run one at a time under the model's lock: one call already uses
every core (CPU) or the whole device (GPU), and ``torch.manual_seed`` is process-global, so a seeded
request is only reproducible if nothing else samples between the seed and its ``generate``.

Prefix reuse (:class:`PrefixCache`, ``generate(..., reuse_prefix=True)``): Self-Instruct sends two requests
over one document (five questions, then one answer), and both prompts start with the same rendered document.
After a single-prompt ``generate`` the KV cache of its prompt is kept, keyed by the prompt's token ids; the
next single prompt that shares a token prefix with a kept one starts from a copy of that cache cropped to the
longest common prefix, so only the differing tail is prefilled. The result is the same computation split in
two (prefix, then tail) instead of one pass; in float32 on CPU the greedy outputs of the benchmark and the
tests are token-for-token identical with and without reuse. Sampling draws its random numbers only while
decoding, so a seeded request samples the same tokens too (in float32; int4 decoding rounds its decoding steps
to bfloat16, which can turn the split's float32 rounding differences into a different sampled token).
A batch of several prompts with ``reuse_prefix``
prefills each prompt alone, from and into the prefix cache, and decodes them together from the stacked,
left-padded caches (:meth:`LocalModel._prefilled_batch_cache`); without it a batch is one left-padded
``generate`` over the padded prompts. At most 4 prompts and 1 GiB are kept (SmolLM2-135M in float32 needs
45 kB per token, so a 2,048-token prompt takes 94 MB; a 7B model in bfloat16 needs 0.5 MB per token, and a
prompt whose cache alone exceeds the budget is not kept).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
DEFAULT_SPEC = "smollm2"
# end-of-turn markers chat templates use besides the tokenizer's eos (looked up by text, never by id)
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")

# the environment variable that sets the local models' default dtype (``float32``: the exact float32 path)
LOCAL_DTYPE_ENV = "LONGALIGN_LOCAL_DTYPE"
# the dtype name of a float32 model whose 4-bit-grid linear layers decode from int4 (:mod:`longalign.llm.int4_decode`)
INT4_DECODE = "int4"

_load_lock = threading.Lock()
_models: dict[tuple[str, str, str], LocalModel] = {}


# --------------------------------------------------------------------------------------------- settings
def resolve_device(device: str | None = None) -> str:
    """``device`` as given, else ``cuda`` when a GPU is visible, else ``cpu``."""
    if device:
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_local_dtype(device: str = "cpu") -> str:
    """The local models' dtype when none is given: ``$LONGALIGN_LOCAL_DTYPE`` when set, else ``bfloat16`` on CUDA,
    :data:`INT4_DECODE` on a CPU with AVX-512 where PyTorch has the int4 kernel, and ``float32`` elsewhere."""
    import os

    chosen = os.environ.get(LOCAL_DTYPE_ENV, "").strip()
    if chosen:
        return chosen
    if str(device).startswith("cuda"):
        return "bfloat16"
    import torch

    from longalign.llm.int4_decode import int4_kernel_available

    if str(device) == "cpu" and torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        if int4_kernel_available():
            return INT4_DECODE
    return "float32"


def resolve_precision(dtype: Any = None, device: str = "cpu") -> tuple[Any, bool]:
    """``(torch dtype, int4 decoding)`` of a local model: :data:`INT4_DECODE` is a float32 model whose 4-bit-grid
    layers decode through :mod:`longalign.llm.int4_decode`; anything else is a plain model of that dtype (see
    :func:`resolve_dtype`, :func:`default_local_dtype` for the default)."""
    import torch

    if dtype is None:
        dtype = default_local_dtype(device)
    if isinstance(dtype, str) and dtype.strip().lower() == INT4_DECODE:
        if not str(device).startswith("cpu"):
            raise ValueError(f"dtype={INT4_DECODE!r} runs on a CPU only (device={device!r}); use bfloat16 there")
        return torch.float32, True
    return resolve_dtype(dtype, device), False


def resolve_dtype(dtype: Any = None, device: str = "cpu") -> Any:
    """A ``torch.dtype`` from a dtype or its name (``bfloat16``); default bfloat16 on CUDA, float32 elsewhere."""
    import torch

    if dtype is None:
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(
            f"dtype={dtype!r} is not a torch dtype; use float32, bfloat16, float16 or {INT4_DECODE} (CPU decoding)"
        )
    return value


def _spec_key(spec: str | None) -> str:
    """One spelling per model: the embedded aliases collapse to ``smollm2``, existing paths become absolute."""
    from longalign.models import RANDOM_PREFIX, is_embedded, random_config_path

    if is_embedded(spec):
        return DEFAULT_SPEC
    text = str(spec).strip()
    config_path = random_config_path(text)
    head, body = (RANDOM_PREFIX, config_path) if config_path is not None else ("", text)
    path = Path(body).expanduser()
    return head + (str(path.resolve()) if path.exists() else body)


# --------------------------------------------------------------------------------------------- prompts
def render_chat(tokenizer: Any, messages: Messages, assistant_prefix: str = "") -> str:
    """The model's chat template applied to ``messages`` with the generation prompt (plus an optional forced
    start of the assistant reply). Tokenizers without a template get a plain ``User:/Assistant:`` layout."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
        text = "\n\n".join(parts) + "\n\nAssistant:"
        if assistant_prefix:
            text += " "
    return text + assistant_prefix


def eos_ids_of(tokenizer: Any, model: Any = None) -> tuple[int, ...]:
    """Every id that ends a reply: the generation config's eos (one id or a list), the tokenizer's eos, and
    the end-of-turn markers of :data:`END_OF_TURN_TOKENS` present in the vocabulary. Sorted, no repeats."""
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), tokenizer):
        val = getattr(src, "eos_token_id", None)
        if val is None:
            continue
        if isinstance(val, (list, tuple)):
            ids.update(int(v) for v in val)
        else:
            ids.add(int(val))
    vocab = tokenizer.get_vocab()
    for name in END_OF_TURN_TOKENS:
        if name in vocab:
            ids.add(int(vocab[name]))
    return tuple(sorted(ids))


# --------------------------------------------------------------------------------------------- prefix cache
def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def cache_nbytes(cache: Any) -> int:
    """Bytes held by the key/value tensors of a transformers KV cache, spare capacity of an appending layer
    included (0 when its layout is unknown)."""
    seen: set[int] = set()
    total = 0
    for layer in getattr(cache, "layers", None) or ():
        for name in ("keys", "values", "_key_store", "_value_store"):
            t = getattr(layer, name, None)
            if t is None or not hasattr(t, "untyped_storage"):
                continue
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


# spare tokens an appending cache layer allocates beyond what it holds: at least this many, or a quarter more
APPEND_SPARE_TOKENS = 256
_append_layer_class: Any = None


def appending_layer_class() -> Any:
    """A transformers ``DynamicLayer`` whose keys and values live in a buffer with spare capacity, so a decode
    step writes its token in place instead of concatenating the whole history into a new tensor (None where
    transformers has no ``DynamicLayer``).

    ``DynamicLayer.update`` runs ``torch.cat`` over every cached token at every step: at a 6,000-token prompt
    SmolLM2-135M copies 280 MB per generated token, most of the step's time on CPU. Here a step copies only
    the new token; when the buffer is full it is reallocated with :data:`APPEND_SPARE_TOKENS` or a quarter
    more room. ``keys``/``values`` stay views of exactly the cached tokens, so everything that reads, crops or
    copies a ``DynamicLayer`` works unchanged; one that replaces them (batch selection, reordering) makes the
    next step start a new buffer from them.
    """
    global _append_layer_class
    if _append_layer_class is None:
        try:
            from transformers.cache_utils import DynamicLayer
        except ImportError:
            return None

        class AppendingLayer(DynamicLayer):
            _key_store: Any = None
            _value_store: Any = None

            def _holds(self, need: int, key_states: Any, value_states: Any) -> bool:
                """Whether the buffer has room for ``need`` tokens of this shape and ``keys``/``values`` are
                still its leading views (a crop keeps them so; a replacement does not)."""
                for store, new, held in (
                    (self._key_store, key_states, self.keys),
                    (self._value_store, value_states, self.values),
                ):
                    if (
                        store is None
                        or need > store.shape[-2]
                        or store.dtype != new.dtype
                        or store.device != new.device
                    ):
                        return False
                    if store.shape[:-2] != new.shape[:-2] or store.shape[-1] != new.shape[-1]:
                        return False
                    if held.numel() and (held.data_ptr() != store.data_ptr() or held.stride() != store.stride()):
                        return False
                return True

            def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                old = self.keys.shape[-2] if self.keys.dim() == 4 else 0
                need = old + key_states.shape[-2]
                if not self._holds(need, key_states, value_states):
                    room = need + max(APPEND_SPARE_TOKENS, need // 4)
                    ks = key_states.new_empty((*key_states.shape[:-2], room, key_states.shape[-1]))
                    vs = value_states.new_empty((*value_states.shape[:-2], room, value_states.shape[-1]))
                    if old:
                        ks[..., :old, :].copy_(self.keys)
                        vs[..., :old, :].copy_(self.values)
                    self._key_store, self._value_store = ks, vs
                self._key_store[..., old:need, :].copy_(key_states)
                self._value_store[..., old:need, :].copy_(value_states)
                self.keys = self._key_store[..., :need, :]
                self.values = self._value_store[..., :need, :]
                return self.keys, self.values

            def reset(self) -> None:
                self._key_store = self._value_store = None
                super().reset()

        _append_layer_class = AppendingLayer
    return _append_layer_class


def _layer_tensors(cache: Any) -> list[tuple[Any, Any]] | None:
    """``[(keys, values), ...]`` per layer of a plain transformers ``DynamicCache`` (tensors shaped ``[batch,
    heads, tokens, dim]``), or None for any other layout (sliding-window or quantised layers, older versions)."""
    layers = getattr(cache, "layers", None)
    if not layers:
        return None
    out = []
    for layer in layers:
        if type(layer).__name__ not in ("DynamicLayer", "AppendingLayer"):
            return None
        k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
        if k is None or v is None or not hasattr(k, "shape") or k.dim() != 4:
            return None
        out.append((k, v))
    return out


def _crop_to(cache: Any, length: int) -> None:
    """Crop ``cache`` to its first ``length`` tokens (a negative ``crop`` argument: recent versions refuse
    positive ones)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class PrefixCache:
    """KV caches of recent prompts, keyed by the prompt's token ids, least recently used dropped first.

    :meth:`lookup` finds the kept prompt with the longest common token prefix with a new prompt and returns a
    private copy of its cache cropped to that prefix (never the whole new prompt: at least one token is left for
    the model to read, which gives the first logits). ``max_entries`` and ``max_bytes`` bound what is kept; a
    prefix shorter than ``min_tokens`` is not worth a copy and counts as a miss. ``hits``, ``misses`` and
    ``reused_tokens`` count what happened.
    """

    def __init__(self, max_entries: int = 4, max_bytes: int = 1 << 30, min_tokens: int = 32):
        if max_entries < 1:
            raise ValueError(f"PrefixCache max_entries={max_entries}; it must be at least 1")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.min_tokens = min_tokens
        self._entries: list[tuple[tuple[int, ...], Any, int]] = []  # most recent last
        self.hits = 0
        self.misses = 0
        self.reused_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(n for _, _, n in self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def stats(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "reused_tokens": self.reused_tokens,
            "entries": len(self),
            "bytes": self.nbytes,
        }

    def lookup(self, ids: Sequence[int]) -> tuple[int, Any]:
        """``(n, cache)``: a copy of the KV cache of ``ids[:n]``, or ``(0, None)`` when nothing useful is kept."""
        best, best_n = -1, 0
        for k, (key, _, _) in enumerate(self._entries):
            n = min(_common_prefix(key, ids), len(ids) - 1)
            if n > best_n:
                best, best_n = k, n
        if best < 0 or best_n < self.min_tokens:
            self.misses += 1
            return 0, None
        entry = self._entries.pop(best)
        self._entries.append(entry)  # most recently used
        cache = copy.deepcopy(entry[1])
        _crop_to(cache, best_n)
        self.hits += 1
        self.reused_tokens += best_n
        return best_n, cache

    def store(self, ids: Sequence[int], cache: Any) -> None:
        """Keep ``cache`` (owned by the prefix cache from now on), cropped to the ``len(ids)`` prompt tokens."""
        if cache is None or not hasattr(cache, "crop") or len(ids) < self.min_tokens:
            return
        _crop_to(cache, len(ids))
        key = tuple(int(t) for t in ids)
        self._entries = [e for e in self._entries if e[0] != key]
        nbytes = cache_nbytes(cache)
        if nbytes > self.max_bytes:
            return
        self._entries.append((key, cache, nbytes))
        while len(self._entries) > self.max_entries or self.nbytes > self.max_bytes:
            self._entries.pop(0)


# --------------------------------------------------------------------------------------------- model
@dataclass
class Completion:
    """One generated reply: ``tokens`` are the new ids up to and including the first end-of-turn id (so
    ``len(tokens)`` counts the EOS when there is one), ``text`` their decoding without the end-of-turn id
    and special tokens, ``prompt_tokens`` the ids fed to the model (padding excluded)."""

    tokens: list[int]
    text: str
    prompt_tokens: int
    finish_reason: str  # "stop" (an end-of-turn id came) or "length" (max_new_tokens reached)

    @property
    def content_tokens(self) -> int:
        """New tokens without the final end-of-turn id."""
        return len(self.tokens) - (self.finish_reason == "stop")


class LocalModel:
    """A loaded causal LM and its tokenizer in eval mode on ``device``; thread-safe (model calls are serialised
    by :attr:`lock`, a re-entrant lock a caller may hold around several calls)."""

    def __init__(self, model: Any, tokenizer: Any, *, spec: str | None = DEFAULT_SPEC, device: str | None = None):
        from longalign.models import model_display_name

        self.spec = spec or DEFAULT_SPEC
        self.name = model_display_name(self.spec)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids_of(tokenizer, self.model)
        self.lock = threading.RLock()
        self._warned_template = False
        self._cache_kw: str | None = None
        self.prefix_cache = PrefixCache()
        self.last_reused: list[int] = []  # prompt tokens each prompt of the last generate took from prefix_cache
        # how the weights compute: the model's dtype, or INT4_DECODE (set by get_local_model)
        self.precision = str(getattr(model, "dtype", "")).removeprefix("torch.")

    def __repr__(self) -> str:
        return f"LocalModel({self.name!r}, device={self.device!r})"

    @classmethod
    def wrap(cls, model: Any, tokenizer: Any, *, spec: str | None = None, device: str | None = None) -> LocalModel:
        """A :class:`LocalModel` around an already loaded ``model`` and ``tokenizer``: the cached entry holding
        these very objects on that device when there is one (so its lock is shared), else a new, uncached one."""
        want = resolve_device(device)
        for lm in list(_models.values()):
            if lm.model is model and lm.tokenizer is tokenizer and lm.device == want:
                return lm
        return cls(model, tokenizer, spec=spec, device=want)

    @property
    def max_positions(self) -> int | None:
        """The model's context window (``max_position_embeddings``), None when its config does not say."""
        return getattr(self.model.config, "max_position_embeddings", None)

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    # prompts ---------------------------------------------------------------------------------------
    def render(self, messages: Messages, assistant_prefix: str = "") -> str:
        """The exact prompt text for ``messages``: :func:`render_chat` (the fallback layout is logged once)."""
        if not getattr(self.tokenizer, "chat_template", None) and not self._warned_template:
            log.warning("tokenizer of %s has no chat template: using a plain 'User:/Assistant:' layout", self.name)
            self._warned_template = True
        return render_chat(self.tokenizer, messages, assistant_prefix)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without added special tokens (a rendered prompt already has its own)."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    # generation ------------------------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        temperature: float | None = 0.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
        reuse_prefix: bool = False,
    ) -> list[Completion]:
        """Continue each prompt (token ids); a batch is left-padded together and stops at any :attr:`eos_ids`.

        ``reuse_prefix`` starts each prompt from :attr:`prefix_cache`'s cache of the longest shared token prefix
        and keeps the prompt's cache there afterwards (see the module docstring); a batch of several prompts is
        then prefilled row by row and decoded together.

        ``temperature > 0`` samples with ``top_p`` and ``top_k`` (0 disables top-k, None keeps the model's
        generation-config default); otherwise decoding is greedy. With a ``seed``, ``torch.manual_seed(seed)``
        runs right before generating, under the lock, so a request reproduces exactly on the same machine.
        A CUDA out-of-memory error frees the failed attempt's activations before it propagates, so a later,
        shorter prompt can still run.
        """
        import torch

        if not prompts:
            return []
        width = max(len(p) for p in prompts)
        pad_id = self.pad_id
        input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            if p:
                input_ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
                mask[i, width - len(p) :] = 1
        kwargs: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "pad_token_id": pad_id}
        if self.eos_ids:
            kwargs["eos_token_id"] = list(self.eos_ids)
        if temperature is not None and temperature > 0:
            kwargs.update(do_sample=True, temperature=float(temperature), top_p=float(top_p))
            if top_k is not None:
                kwargs["top_k"] = int(top_k)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        reuse = reuse_prefix and len(prompts) == 1 and width > 0
        with self.lock:
            past = None
            self.last_reused = [0] * len(prompts)
            if reuse_prefix and len(prompts) > 1:
                with torch.inference_mode(), self._reading():
                    past = self._prefilled_batch_cache(prompts)
                if past is not None:
                    kwargs[self._cache_keyword()] = past
                    kwargs["use_cache"] = True
                else:  # prefilled as one padded batch: nothing taken from the cache
                    self.last_reused = [0] * len(prompts)
            if reuse:
                self.last_reused[0], past = self.prefix_cache.lookup(prompts[0])
                if past is None:
                    past = self._new_cache()
                if past is not None:  # generate fills it in place; it is kept for the next prompt
                    kwargs[self._cache_keyword()] = past
                    kwargs["use_cache"] = True  # some configs default to no cache, which would ignore it
            if seed is not None:
                torch.manual_seed(int(seed))
            try:
                with torch.inference_mode(), self._reading_first_forward():
                    out = self.model.generate(
                        input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), **kwargs
                    )
            except torch.OutOfMemoryError:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise
            if reuse and past is not None:
                self.prefix_cache.store(prompts[0], past)
        eos = set(self.eos_ids)
        results = []
        for i, p in enumerate(prompts):
            new = out[i, width:].tolist()
            finish = "length"
            for j, t in enumerate(new):  # a finished row is padded after its EOS: cut at the first one
                if t in eos:
                    new, finish = new[: j + 1], "stop"
                    break
            content = new[:-1] if finish == "stop" else new
            results.append(Completion(new, self.tokenizer.decode(content, skip_special_tokens=True), len(p), finish))
        return results

    # scoring ---------------------------------------------------------------------------------------
    def continuation_logprobs(self, prefix_ids: Sequence[int], continuations: Sequence[Sequence[int]]) -> list[float]:
        """Natural-log probability of each continuation (token ids, at least one each) right after ``prefix_ids``:
        the sum over its tokens of the next-token log-softmax.

        One forward pass over the prefix keeps its KV cache; each continuation of ``k`` tokens then costs one
        pass over its first ``k - 1`` tokens, after which the cache is cropped back to the prefix. A model whose
        cache cannot be cropped re-reads prefix + continuation instead (``len(continuations)`` full passes).
        """
        import torch

        prefix = list(prefix_ids)
        if not prefix:
            raise ValueError("continuation_logprobs needs a non-empty prefix")
        if any(len(c) == 0 for c in continuations):
            raise ValueError("every continuation needs at least one token")
        out_lp: list[float] = []
        with self.lock, torch.inference_mode(), self._reading():
            out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True)
            cache = _output_cache(out)
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
            croppable = cache is not None and hasattr(cache, "crop")
            for cont in continuations:
                cont = list(cont)
                total = float(first[cont[0]])
                if len(cont) > 1:
                    if croppable:
                        step = self.model(
                            input_ids=torch.tensor([cont[:-1]], device=self.device),
                            use_cache=True,
                            **{self._cache_keyword(): cache},
                        )
                        cache.crop(-(len(cont) - 1))  # negative = drop that many tokens (every version)
                        lp = torch.log_softmax(step.logits[0].float(), dim=-1)
                    else:
                        full = torch.tensor([prefix + cont[:-1]], device=self.device)
                        lp = torch.log_softmax(self.model(input_ids=full).logits[0, len(prefix) :].float(), dim=-1)
                    for k, tok in enumerate(cont[1:]):
                        total += float(lp[k, tok])
                out_lp.append(total)
        return out_lp

    def _prefilled_batch_cache(self, prompts: Sequence[Sequence[int]]) -> Any:
        """The left-padded KV cache of every prompt but its last token, for a batched ``generate``, or None.

        Each prompt is prefilled alone (from :attr:`prefix_cache` where it shares a prefix with a kept prompt,
        and kept there afterwards), so no row pays for another's padding and the document shared by a question
        and an answer request is read once. The rows are then left-padded with zeros to one length and stacked;
        ``generate`` is given the padded prompts and their attention mask, finds every token but the last in the
        cache and feeds the last one, whose position comes from the mask as in any left-padded batch. The padding
        is masked out, so each row computes what it would alone, up to the rounding of the batched products.
        None (the plain left-padded ``generate`` then runs) when a prompt is shorter than two tokens or the
        model's cache has a layout other than one key and one value tensor per layer.
        """
        import torch

        if any(len(p) < 2 for p in prompts):
            return None
        rows = []
        for i, p in enumerate(prompts):
            head = list(p[:-1])
            n, past = self.prefix_cache.lookup(p)
            if past is None:
                n, past = 0, self._new_cache()
            if past is None:
                return None
            self.last_reused[i] = n
            if n < len(head):
                self.model(
                    input_ids=torch.tensor([head[n:]], device=self.device),
                    use_cache=True,
                    **{self._cache_keyword(): past},
                    **self._one_logit_kwargs(),
                )
            kv = _layer_tensors(past)
            if kv is None or past.get_seq_length() != len(head):
                return None
            rows.append(kv)
            self.prefix_cache.store(head, past)  # the rows below are copies: the kept cache stays as it is
        width = max(len(p) for p in prompts) - 1
        batched = self._new_cache()
        if batched is None:
            return None
        for layer in range(len(rows[0])):
            keys, values = [], []
            for kv in rows:
                for t, out in zip(kv[layer], (keys, values)):
                    pad = width - t.shape[-2]
                    if pad:
                        t = torch.cat([t.new_zeros((*t.shape[:-2], pad, t.shape[-1])), t], dim=-2)
                    out.append(t)
            batched.update(torch.cat(keys), torch.cat(values), layer)
        return batched

    def _packed(self) -> bool:
        return self.precision == INT4_DECODE

    def _reading(self) -> Any:
        """Context in which the model reads tokens as the float32 model does (int4 decoding: see
        :func:`longalign.llm.int4_decode.float_reading`; nothing to do otherwise)."""
        if not self._packed():
            return contextlib.nullcontext()
        from longalign.llm.int4_decode import float_reading

        return float_reading()

    def _reading_first_forward(self) -> Any:
        """Context in which the model's next forward (a ``generate`` call's prompt) reads as the float32 model."""
        if not self._packed():
            return contextlib.nullcontext()
        from longalign.llm.int4_decode import first_forward_reads

        return first_forward_reads(self.model)

    def _new_cache(self) -> Any:
        """An empty ``DynamicCache`` for this model (None where transformers has none), its plain full-attention
        layers replaced by :func:`appending_layer_class` layers."""
        try:
            from transformers import DynamicCache
        except ImportError:
            return None
        try:
            cache = DynamicCache(config=self.model.config)
        except TypeError:
            return DynamicCache()
        appending = appending_layer_class()
        layers = getattr(cache, "layers", None)
        if appending is not None and isinstance(layers, list):
            for i, layer in enumerate(layers):
                if type(layer).__name__ == "DynamicLayer" and not layer.is_initialized:
                    layers[i] = appending()
        return cache

    def _one_logit_kwargs(self) -> dict[str, int]:
        """The ``forward`` keyword that computes logits for the last position only (none where there is none):
        a prefill that only fills the cache needs no ``[tokens x vocab]`` logits."""
        params = inspect.signature(self.model.forward).parameters
        for name in ("logits_to_keep", "num_logits_to_keep"):
            if name in params:
                return {name: 1}
        return {}

    def _cache_keyword(self) -> str:
        """``cache`` in recent transformers' ``forward``, ``past_key_values`` before."""
        if self._cache_kw is None:
            params = inspect.signature(self.model.forward).parameters
            self._cache_kw = "cache" if "cache" in params else "past_key_values"
        return self._cache_kw


def _output_cache(out: Any) -> Any:
    """The KV cache of a model output (``cache`` in recent transformers, ``past_key_values`` before)."""
    for name in ("cache", "past_key_values"):
        value = getattr(out, name, None) if not isinstance(out, dict) else out.get(name)
        if value is not None:
            return value
    return None


# --------------------------------------------------------------------------------------------- cache
def get_local_model(spec: str | None = None, *, device: str | None = None, dtype: Any = None) -> LocalModel:
    """The process-wide :class:`LocalModel` for a model spec, loaded on first use (see module docstring).

    ``dtype`` (default :func:`default_local_dtype`) is a torch dtype or its name, or :data:`INT4_DECODE`: the
    float32 model with its 4-bit-grid layers packed for decoding (:mod:`longalign.llm.int4_decode`). Thread-safe:
    concurrent first calls load once (loads are serialised; a cached model is returned without waiting for
    another model's load).
    """
    device = resolve_device(device)
    torch_dtype, int4 = resolve_precision(dtype, device)
    precision = INT4_DECODE if int4 else str(torch_dtype).removeprefix("torch.")
    key = (_spec_key(spec), device, precision)
    hit = _models.get(key)
    if hit is not None:
        return hit
    with _load_lock:
        hit = _models.get(key)
        if hit is not None:
            return hit
        from longalign.models import load_model, load_tokenizer

        start = time.monotonic()
        tokenizer = load_tokenizer(spec)
        model = load_model(spec, dtype=torch_dtype)
        packed = ""
        if int4:
            from longalign.llm.int4_decode import pack_grid_layers, use_decode_attention

            stats = pack_grid_layers(model)
            packed = f", {stats['layers']} of {stats['layers'] + stats['kept']} linear layers decode from int4"
            if stats["layers"] and use_decode_attention(model):  # nothing packed: the float32 model as it is
                packed += ", decoding attention as two products"
        lm = LocalModel(model, tokenizer, spec=spec, device=device)
        lm.precision = precision
        _models[key] = lm
        log.info("loaded %s on %s (%s%s) in %.1f s", lm.name, device, precision, packed, time.monotonic() - start)
        return lm


def local_model_for(
    spec: str | None = None, *, device: str | None = None, dtype: Any = None, model: Any = None, tokenizer: Any = None
) -> LocalModel:
    """The :class:`LocalModel` a user should run: the cached one for ``spec``, or one around an already loaded
    ``model`` and/or ``tokenizer`` (the missing half is the cached model, or the spec's tokenizer)."""
    if model is None:
        lm = get_local_model(spec, device=device, dtype=dtype)
        return lm if tokenizer is None else LocalModel.wrap(lm.model, tokenizer, spec=spec, device=lm.device)
    if tokenizer is None:
        from longalign.models import load_tokenizer

        tokenizer = load_tokenizer(spec)
    return LocalModel.wrap(model, tokenizer, spec=spec, device=device)


def loaded_local_models() -> list[LocalModel]:
    """The models currently held by the process-wide cache."""
    return list(_models.values())


def release_local_models(spec: str | None = None) -> int:
    """Drop cached models (every one when ``spec`` is None, else every device/dtype of that spec, e.g.
    ``"smollm2"``) so their memory is freed once their users let go of them too; returns how many entries
    were dropped."""
    with _load_lock:
        keys = [k for k in _models if spec is None or k[0] == _spec_key(spec)]
        for k in keys:
            del _models[k]
    if keys:
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
    return len(keys)
