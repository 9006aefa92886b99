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
``torch.manual_seed(seed)`` right before generating, so it reproduces exactly on the same machine when it runs
the same way (with int4 decoding, the CPU default, a prompt read partly from the prefix cache may sample other
tokens than the same prompt read whole: the bfloat16 rounding of decoding turns float32 rounding differences
into visible ones; ``LONGALIGN_LOCAL_DTYPE=float32`` samples the same either way in practice). Token
counts are exact: prompt tokens fed to the model and new tokens generated (EOS included).

``prefix_reuse`` (default on) keeps the KV cache of each prompt in the model's
:class:`~longalign.llm.local_model.PrefixCache`, so the next request that starts with the same tokens (the
answer request after the question request over one document) only prefills what differs; the outputs are
unchanged. ``ChatResult.extra["reused_prompt_tokens"]`` says how many prompt tokens came from that cache.

``batch_size > 1`` (default 1, off) lets up to that many requests be in flight and runs the ones waiting
together, with the same sampling settings, in one batched ``generate`` call: a request arriving while
another batch runs waits for it and joins the next. With prefix reuse each prompt of a batch is prefilled
alone (from and into the prefix cache, which then keeps ``2 × batch_size`` prompts) and the rows decode
together; without it the prompts are left-padded to the longest and prefilled as one batch. On a CPU one
decoding step reads every weight, so several rows per step cost little more than one; but every row waits
for the longest reply, and a
batch draws its samples from one random stream (seeded with its first request's seed), so a sampled request
reproduces only in the same batch. Greedy decoding gives each row the tokens it gets alone, up to the rounding
of padded matrix products. ``benchmarks/selfinstruct_throughput.py`` measures both ways.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from longalign.llm.base import ChatResult, Messages, SamplingParams
from longalign.llm.local_model import DEFAULT_SPEC, LocalModel, get_local_model


@dataclass
class _Waiting:
    """A request waiting to be generated in a batch, and then its outcome."""

    ids: list[int]
    params: SamplingParams
    start: float
    result: ChatResult | None = None
    error: BaseException | None = None
    done: bool = False

    def same_settings(self, other: _Waiting) -> bool:
        a, b = self.params, other.params
        return (a.max_tokens, a.temperature, a.top_p) == (b.max_tokens, b.temperature, b.top_p)


class LocalBackend:
    """Single-attempt generation with a local causal LM; thread-safe (requests run one at a time, or in
    batches of up to ``batch_size``)."""

    max_concurrency: int | None = 1

    def __init__(
        self,
        spec: str | None,
        *,
        device: str | None = None,
        dtype: Any = None,
        prefix_reuse: bool = True,
        batch_size: int = 1,
        batch_wait: float = 0.05,
    ):
        from longalign.models import model_display_name

        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: it must be at least 1 (1 = no batching)")
        self.spec = spec or DEFAULT_SPEC
        self.model = model_display_name(self.spec)
        self._device = device
        self._dtype = dtype
        self.prefix_reuse = prefix_reuse
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.max_concurrency = batch_size
        self._lock = threading.Lock()
        self._lm: LocalModel | None = None
        self._batch_cv = threading.Condition()
        self._waiting: list[_Waiting] = []
        self._running = False
        self.batches: list[int] = []  # size of every generate call made for batched requests

    def describe(self) -> str:
        return f"local model {self.model}"

    @property
    def local_model(self) -> LocalModel:
        """The shared loaded model (fetched, and loaded if no one has, on first access)."""
        with self._lock:
            if self._lm is None:
                self._lm = get_local_model(self.spec, device=self._device, dtype=self._dtype)
                cache = self._lm.prefix_cache  # room for a batch's question and answer prompts
                cache.max_entries = max(cache.max_entries, 2 * self.batch_size)
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
        if self.batch_size <= 1:
            return self._generate([_Waiting(ids, params, start)])[0]
        item = _Waiting(ids, params, start)
        cv = self._batch_cv
        with cv:
            self._waiting.append(item)
            cv.notify_all()
            while True:
                while not item.done and self._running:
                    cv.wait()
                if item.done:
                    break
                # nothing runs: this thread gathers a batch, waiting briefly for requests still on their way
                self._running = True
                deadline = time.monotonic() + self.batch_wait
                while len(self._waiting) < self.batch_size and (left := deadline - time.monotonic()) > 0:
                    cv.wait(left)
                first = self._waiting[0]
                group = [w for w in self._waiting if w.same_settings(first)][: self.batch_size]
                self._waiting = [w for w in self._waiting if all(w is not g for g in group)]
                cv.release()
                try:
                    try:
                        for w, r in zip(group, self._generate(group)):
                            w.result = r
                    except BaseException as exc:  # every request of a failed batch reports its error
                        for w in group:
                            w.error = exc
                finally:
                    cv.acquire()
                self.batches.append(len(group))
                for w in group:
                    w.done = True
                self._running = False
                cv.notify_all()  # this thread's own request may still wait for a later batch: loop
        return self._outcome(item)

    @staticmethod
    def _outcome(item: _Waiting) -> ChatResult:
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    def _generate(self, group: list[_Waiting]) -> list[ChatResult]:
        lm = self.local_model
        params = group[0].params
        reused_before = lm.prefix_cache.reused_tokens
        outs = lm.generate(
            [w.ids for w in group],
            max_new_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=0,
            seed=params.seed,
            reuse_prefix=self.prefix_reuse,
        )
        reused = lm.prefix_cache.reused_tokens - reused_before
        end = time.monotonic()
        return [
            ChatResult(
                text=out.text,
                prompt_tokens=out.prompt_tokens,
                completion_tokens=len(out.tokens),
                model=self.model,
                cached=False,
                latency=end - w.start,
                finish_reason=out.finish_reason,
                extra={"device": str(lm.device), "reused_prompt_tokens": reused, "batch": len(group)},
            )
            for w, out in zip(group, outs)
        ]

    def close(self) -> None:
        """Drop this backend's reference; the model stays in the process-wide cache for its other users."""
        with self._lock:
            self._lm = None
