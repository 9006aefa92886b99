"""A local transformers model behind the same client protocol (``local:<model spec>``).

The model comes from :func:`longalign.llm.local_model.get_local_model`, so every spec accepted by
:mod:`longalign.models` works here (the embedded SmolLM2-135M-Instruct, an HF id, a folder written by
``longalign train``), and a process that also evaluates or judges with the same model loads it once. It
is fetched on the first request that misses the request cache, so a fully cached run never pays the load
(0.5 s for the embedded model, minutes for a 7B one).

Requests run one at a time (``max_concurrency = 1``, and the model's own lock): one ``generate`` call
already uses every core (CPU) or the whole device (GPU), and batching prompts of 2k-60k tokens of very
different lengths would mostly pad. The prompt is the tokenizer's chat template with the generation prompt
appended (:meth:`LocalModel.render`; a tokenizer without a template gets a plain ``User:/Assistant:``
layout, logged once). ``temperature > 0`` samples with ``top_p`` and no top-k cut (as an OpenAI-compatible
endpoint does); ``temperature == 0`` decodes greedily. A request with a ``seed`` calls
``torch.manual_seed(seed)`` right before generating, so it reproduces exactly on the same machine. Token
counts are exact: prompt tokens fed to the model and new tokens generated (EOS included).

``prefix_reuse`` (default on) keeps the KV cache of each prompt in the model's
:class:`~longalign.llm.local_model.PrefixCache`, so the next request that starts with the same tokens (the
answer request after the question request over one document) only prefills what differs; the outputs are
unchanged. ``ChatResult.extra["reused_prompt_tokens"]`` says how many prompt tokens came from that cache.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from longalign.llm.base import ChatResult, Messages, SamplingParams
from longalign.llm.local_model import DEFAULT_SPEC, LocalModel, get_local_model


class LocalBackend:
    """Single-attempt generation with a local causal LM; thread-safe (requests are serialised)."""

    max_concurrency: int | None = 1

    def __init__(self, spec: str | None, *, device: str | None = None, dtype: Any = None, prefix_reuse: bool = True):
        from longalign.models import model_display_name

        self.spec = spec or DEFAULT_SPEC
        self.model = model_display_name(self.spec)
        self._device = device
        self._dtype = dtype
        self.prefix_reuse = prefix_reuse
        self._lock = threading.Lock()
        self._lm: LocalModel | None = None

    def describe(self) -> str:
        return f"local model {self.model}"

    @property
    def local_model(self) -> LocalModel:
        """The shared loaded model (fetched, and loaded if no one has, on first access)."""
        with self._lock:
            if self._lm is None:
                self._lm = get_local_model(self.spec, device=self._device, dtype=self._dtype)
            return self._lm

    @property
    def tokenizer(self):
        """The model's tokenizer (loads the model on first access)."""
        return self.local_model.tokenizer

    def render_prompt(self, messages: Messages) -> str:
        """The exact prompt text the model sees for ``messages`` (chat template + generation prompt)."""
        return self.local_model.render(messages)

    def complete(self, messages: Messages, params: SamplingParams) -> ChatResult:
        lm = self.local_model
        start = time.monotonic()
        ids = lm.encode(lm.render(messages))
        reused_before = lm.prefix_cache.reused_tokens
        out = lm.generate(
            [ids],
            max_new_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=0,
            seed=params.seed,
            reuse_prefix=self.prefix_reuse,
        )[0]
        return ChatResult(
            text=out.text,
            prompt_tokens=out.prompt_tokens,
            completion_tokens=len(out.tokens),
            model=self.model,
            cached=False,
            latency=time.monotonic() - start,
            finish_reason=out.finish_reason,
            extra={"device": str(lm.device), "reused_prompt_tokens": lm.prefix_cache.reused_tokens - reused_before},
        )

    def close(self) -> None:
        """Drop this backend's reference; the model stays in the process-wide cache for its other users."""
        with self._lock:
            self._lm = None
