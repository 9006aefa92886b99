"""A local transformers model behind the same client protocol (``local:<model spec>``).

The model and tokenizer come from :func:`longalign.models.load_model` / :func:`load_tokenizer`, so every
spec accepted there works here (the embedded SmolLM2-135M-Instruct, an HF id, a folder written by
``longalign train``). They are loaded on the first request that misses the cache, so a fully cached run
never pays the load (0.5 s for the embedded model, minutes for a 7B one).

Requests run one at a time under a lock: one ``generate`` call already uses every core (CPU) or the
whole device (GPU), and batching prompts of 2k-60k tokens of very different lengths would mostly pad.
The prompt is the tokenizer's chat template with the generation prompt appended; a tokenizer without a
template gets a plain ``role: content`` transcript (logged once). ``temperature > 0`` samples (with
``top_p``); ``temperature == 0`` decodes greedily. A request with a ``seed`` calls
``torch.manual_seed(seed)`` right before generating, so it reproduces exactly on the same machine.
Token counts are exact: prompt tokens fed to the model and new tokens generated (EOS included).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from longalign.llm.base import ChatResult, Messages, SamplingParams

log = logging.getLogger(__name__)


class LocalBackend:
    """Single-attempt generation with a local causal LM; thread-safe (requests are serialised)."""

    max_concurrency: int | None = 1

    def __init__(self, spec: str | None, *, device: str | None = None, dtype: Any = None):
        from longalign.models import model_display_name

        self.spec = spec or "smollm2"
        self.model = model_display_name(self.spec)
        self._device = device
        self._dtype = dtype
        self._lock = threading.Lock()
        self._tok = None
        self._lm = None
        self._warned_template = False

    def describe(self) -> str:
        return f"local model {self.model}"

    # loading ---------------------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if self._lm is not None:
            return
        import torch

        from longalign.models import load_model, load_tokenizer

        device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = self._dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
        start = time.monotonic()
        tok = load_tokenizer(self.spec)
        lm = load_model(self.spec, dtype=dtype)
        lm.to(device)
        lm.eval()
        self._tok, self._lm, self._device = tok, lm, device
        log.info("loaded %s on %s in %.1f s", self.model, device, time.monotonic() - start)

    @property
    def tokenizer(self):
        """The model's tokenizer (loads the model on first access)."""
        with self._lock:
            self._ensure_loaded()
        return self._tok

    def render_prompt(self, messages: Messages) -> str:
        """The exact prompt text the model sees for ``messages`` (chat template + generation prompt)."""
        tok = self._tok
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not self._warned_template:
            log.warning("tokenizer of %s has no chat template: using a plain 'role: content' transcript", self.model)
            self._warned_template = True
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "

    # generation ------------------------------------------------------------------------------------
    def complete(self, messages: Messages, params: SamplingParams) -> ChatResult:
        import torch

        with self._lock:
            self._ensure_loaded()
            tok, lm = self._tok, self._lm
            start = time.monotonic()
            prompt = self.render_prompt(messages)
            enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
            input_ids = enc["input_ids"].to(self._device)
            attention_mask = enc["attention_mask"].to(self._device)
            gen_kwargs: dict[str, Any] = {"max_new_tokens": int(params.max_tokens),
                                          "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None
                                          else tok.eos_token_id}
            if params.temperature and params.temperature > 0:
                gen_kwargs.update(do_sample=True, temperature=float(params.temperature), top_p=float(params.top_p),
                                  top_k=0)
            else:
                gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if params.seed is not None:
                torch.manual_seed(int(params.seed))
            try:
                with torch.inference_mode():
                    out = lm.generate(input_ids=input_ids, attention_mask=attention_mask, **gen_kwargs)
            except torch.OutOfMemoryError:
                # free the failed attempt's activations so the next (shorter) prompt can still run
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise
            new_tokens = out[0, input_ids.shape[1]:].tolist()
            eos = _eos_ids(tok, lm)
            finish = "length"
            if new_tokens and new_tokens[-1] in eos:
                finish = "stop"
            # generate may pad after EOS; cut at the first EOS for the text and the count
            for i, t in enumerate(new_tokens):
                if t in eos:
                    new_tokens = new_tokens[:i + 1]
                    finish = "stop"
                    break
            text = tok.decode(new_tokens, skip_special_tokens=True)
            return ChatResult(text=text, prompt_tokens=int(input_ids.shape[1]), completion_tokens=len(new_tokens),
                              model=self.model, cached=False, latency=time.monotonic() - start, finish_reason=finish,
                              extra={"device": str(self._device)})

    def close(self) -> None:
        with self._lock:
            self._lm = None


def _eos_ids(tok: Any, lm: Any) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(lm, "generation_config", None), tok):
        val = getattr(src, "eos_token_id", None)
        if val is None:
            continue
        if isinstance(val, (list, tuple)):
            ids.update(int(v) for v in val)
        else:
            ids.add(int(val))
    return ids
