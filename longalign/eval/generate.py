"""Answer generation for the evaluation stage: a local causal LM (the embedded SmolLM2, any HF id, or a
``longalign train`` output folder) or an OpenAI-compatible endpoint behind ``longalign.llm``.

Prompt handling follows the LongBench-Chat harness: the raw user prompt is tokenized *without* special
tokens and, when longer than ``max_length``, only its first and last ``max_length // 2`` tokens are kept
(middle truncation: the question usually sits at the end and the document's opening at the start, so the
middle is the cheapest part to lose); only then is the chat template applied, so the template's own tokens
never count against the budget and are never cut. For an endpoint the tokens are counted with a local
tokenizer (``tokenizer=``; the embedded one unless told otherwise), which is an approximation of the
served model's own count that the prediction records say.

Batching trades memory for speed: on 2 CPU cores a 135M model gains little from batches (one 2.9k-token
prompt already saturates the cores), so the default batch size is 1; on a GPU, sorting a batch of similar
lengths and left-padding gives several-fold throughput. Greedy decoding (temperature 0) is the default,
and every case is seeded (``seed``; 42 like the benchmark's harness) so sampled runs repeat too.

Predictions are appended one line per case (``rundir.append_jsonl``) and a re-run skips every ``idx``
already present, so a crash loses at most the batch in flight.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longalign.llm.base import SamplingParams
from longalign.rundir import append_jsonl, read_jsonl

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
TEMPLATE_ALLOWANCE = 64  # tokens kept free for the chat template when max_length is capped to the model


# --------------------------------------------------------------------------------------------- truncation
def middle_truncate(ids: Sequence[int], max_length: int) -> tuple[list[int], bool]:
    """Keep the first and last ``max_length // 2`` tokens when ``len(ids) > max_length``.

    With an odd ``max_length`` the result has ``max_length - 1`` tokens (two equal halves), matching the
    benchmark harness. Returns ``(ids, truncated)``.
    """
    ids = list(ids)
    if max_length <= 0:
        raise ValueError(f"max_length={max_length} must be a positive number of tokens")
    if len(ids) <= max_length:
        return ids, False
    half = max_length // 2
    return ids[:half] + (ids[-half:] if half else []), True


@dataclass
class PreparedPrompt:
    text: str  # user prompt after truncation (plain text, no template)
    n_tokens_raw: int  # tokens of the raw prompt (no special tokens)
    n_tokens: int  # tokens after truncation (no special tokens)
    truncated: bool


def truncate_text(tokenizer: Any, text: str, max_length: int) -> PreparedPrompt:
    """Middle-truncate ``text`` to ``max_length`` tokens of ``tokenizer`` (tokenized without special tokens).

    Both halves are decoded separately and joined, so no token is merged across the cut.
    """
    ids = tokenizer.encode(text, add_special_tokens=False)
    kept, truncated = middle_truncate(ids, max_length)
    if not truncated:
        return PreparedPrompt(text, len(ids), len(ids), False)
    half = len(kept) // 2
    new_text = tokenizer.decode(kept[:half], skip_special_tokens=True) + tokenizer.decode(
        kept[half:], skip_special_tokens=True
    )
    return PreparedPrompt(new_text, len(ids), len(kept), True)


def build_messages(user_text: str, system: str | None = None) -> Messages:
    msgs: Messages = []
    if system:
        msgs.append({"role": "system", "content": system})
    msgs.append({"role": "user", "content": user_text})
    return msgs


# --------------------------------------------------------------------------------------------- generators
@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def is_endpoint_spec(spec: str | None) -> bool:
    """True for ``openai:<model>``; False for ``local:<spec>``, a bare model spec or nothing."""
    from longalign.llm.client import parse_spec

    return bool(spec) and parse_spec(spec)[0] == "openai"


class LocalGenerator:
    """Generate with a local causal LM through transformers (``generate`` with the chat template).

    The model is the process-wide one of :func:`longalign.llm.local_model.get_local_model` (shared with a local
    judge or ``local:`` LLM client of the same spec); ``model=``/``tokenizer=`` use objects already loaded."""

    kind = "local"

    def __init__(
        self,
        model_spec: str | None = None,
        *,
        device: str | None = None,
        dtype: str | None = None,
        model: Any = None,
        tokenizer: Any = None,
    ):
        from longalign.llm.client import local_model_spec
        from longalign.llm.local_model import local_model_for
        from longalign.models import model_display_name

        spec = local_model_spec(model_spec)
        if spec is None:
            raise ValueError(
                f"model={model_spec!r} is an endpoint, not a local model; use make_generator, which "
                "builds an EndpointGenerator for openai:<model>"
            )
        self.spec = spec
        self.name = model_display_name(spec)
        self.lm = local_model_for(spec, device=device, dtype=dtype, model=model, tokenizer=tokenizer)
        self.model = self.lm.model
        self.tokenizer = self.lm.tokenizer
        self.device = self.lm.device

    @property
    def max_positions(self) -> int | None:
        return self.lm.max_positions

    def generate(self, batch: Sequence[Messages], params: SamplingParams) -> list[Generation]:
        """Answer a batch of chat requests (left-padded together); seeded with ``params.seed``."""
        prompts = [self.lm.encode(self.lm.render(m)) for m in batch]
        outs = self.lm.generate(
            prompts,
            max_new_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
        )
        return [Generation(o.text.strip(), o.prompt_tokens, o.content_tokens, o.finish_reason) for o in outs]


class CountingTokenizer:
    """Encode/decode through the ``tokenizers`` library alone (no torch import: ~0.2 s instead of several
    seconds), enough for counting and truncating prompts sent to an endpoint."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self.path = str(path)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


def load_counting_tokenizer(spec: str | None) -> Any:
    """A light tokenizer for ``spec`` when its folder has ``tokenizer.json``, else the transformers one."""
    from longalign.models import embedded_cache_path, is_embedded, load_tokenizer

    folder = embedded_cache_path() if is_embedded(spec) else Path(str(spec))
    if (folder / "tokenizer.json").is_file():
        return CountingTokenizer(folder / "tokenizer.json")
    return load_tokenizer(spec)


class EndpointGenerator:
    """Generate through an OpenAI-compatible endpoint via ``longalign.llm.make_client`` (cached, retried)."""

    kind = "endpoint"

    def __init__(
        self,
        model_spec: str,
        *,
        client: Any = None,
        tokenizer: Any = None,
        tokenizer_spec: str | None = None,
        **client_kwargs: Any,
    ):
        if client is None:
            from longalign.llm import make_client

            client = make_client(model_spec, **client_kwargs)
        self.client = client
        self.spec = model_spec
        self.name = model_spec
        self.tokenizer = tokenizer if tokenizer is not None else load_counting_tokenizer(tokenizer_spec)
        self.max_positions = None

    def generate(self, batch: Sequence[Messages], params: SamplingParams) -> list[Generation]:
        out: list[Generation | None] = [None] * len(batch)
        for i, res in self.client.chat_many([(m, params) for m in batch]):
            if isinstance(res, Exception):
                raise res
            out[i] = Generation(
                res.text.strip(), res.prompt_tokens, res.completion_tokens, res.finish_reason, {"cached": res.cached}
            )
        return [g for g in out if g is not None]


def make_generator(
    model_spec: str | None,
    *,
    tokenizer_spec: str | None = None,
    device: str | None = None,
    client_kwargs: dict[str, Any] | None = None,
) -> LocalGenerator | EndpointGenerator:
    """``openai:<model>`` gives an endpoint generator; anything else (``local:<spec>`` or a bare model spec)
    a local one."""
    if is_endpoint_spec(model_spec):
        return EndpointGenerator(str(model_spec), tokenizer_spec=tokenizer_spec, **(client_kwargs or {}))
    return LocalGenerator(model_spec, device=device)


# --------------------------------------------------------------------------------------------- limits
def model_limit(model_spec: str | None, generator: Any = None) -> int:
    """Positions of the model under test, for the length checks that run before any work: the generator's
    when one is given, else read from the spec's config without loading the model
    (:func:`longalign.models.model_positions`); 0 when unknown (an endpoint)."""
    if generator is not None:
        return int(getattr(generator, "max_positions", None) or 0)
    if is_endpoint_spec(model_spec):
        return 0
    from longalign.llm.client import local_model_spec
    from longalign.models import model_positions

    return model_positions(local_model_spec(model_spec)) or 0


def check_prompt_budget(
    model_spec: str | None, max_len: int, max_new_tokens: int, *, generator: Any = None, fit_to_model: bool = False
) -> None:
    """Before any work: refuse a ``max_len`` whose prompts plus the answer budget (plus the chat template's
    allowance) cannot fit the model's positions, unless ``fit_to_model``; then :func:`run_predictions`
    middle-truncates every prompt to what fits, the rule LongBench and LongBench-Chat apply to a model with a
    shorter window."""
    from longalign.models import check_length

    if fit_to_model:
        return
    positions = model_limit(model_spec, generator)
    need = max_len + max_new_tokens + TEMPLATE_ALLOWANCE
    fits = max(16, positions - max_new_tokens - TEMPLATE_ALLOWANCE)
    check_length(
        need,
        asked=f"--max-len {max_len} + {max_new_tokens} new tokens + {TEMPLATE_ALLOWANCE} for the chat template",
        model=model_spec,
        positions=positions,
        shorter=f"lower --max-len to {fits} (longer prompts are middle-truncated to it)",
        opt_in=f"pass --fit-to-model true to middle-truncate every prompt to {fits} tokens",
    )


# --------------------------------------------------------------------------------------------- runner
@dataclass
class PredictionTask:
    """One case to answer: ``idx`` (unique), the raw user prompt and fields copied into the record."""

    idx: Any
    prompt: str
    system: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)


def done_indices(path: str | Path, key: str = "idx") -> set:
    return {rec.get(key) for rec in read_jsonl(path) if key in rec}


def run_predictions(
    tasks: Iterable[PredictionTask],
    generator: Any,
    out_path: str | Path,
    *,
    max_length: int,
    params: SamplingParams,
    batch_size: int = 1,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Answer every task not yet in ``out_path`` and append one record per task.

    Records: ``{"idx", "prediction", "model", "prompt_tokens", "prompt_tokens_raw", "truncated",
    "max_length", "sampling", "completion_tokens", "finish_reason", ...task.fields}``. Returns counts
    ``{"done_before", "generated"}``. Seeds are per batch (``params.seed``), so with ``batch_size=1``
    every case starts from the same seed as in the benchmark harness.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    done = done_indices(out_path)
    pending = [t for t in tasks if t.idx not in done]
    prepared = []
    limit = max_length
    positions = getattr(generator, "max_positions", None)
    if positions and max_length + params.max_tokens + TEMPLATE_ALLOWANCE > positions:
        limit = max(16, positions - params.max_tokens - TEMPLATE_ALLOWANCE)
        log.warning(
            "max_length %d + %d new tokens exceeds the model's %d positions: prompts are truncated to %d "
            "tokens instead",
            max_length,
            params.max_tokens,
            positions,
            limit,
        )
    for t in pending:
        p = truncate_text(generator.tokenizer, t.prompt, limit)
        prepared.append((t, p))
    # similar lengths together so left padding wastes little; order within output does not matter (idx key)
    if batch_size > 1:
        prepared.sort(key=lambda tp: tp[1].n_tokens)
    sampling = {
        **params.to_dict(),
        "seed_scope": "per batch" if batch_size > 1 else "per case",
        "batch_size": batch_size,
    }
    generated = 0
    for start in range(0, len(prepared), batch_size):
        chunk = prepared[start : start + batch_size]
        msgs = [build_messages(p.text, t.system) for t, p in chunk]
        t0 = time.perf_counter()
        outs = generator.generate(msgs, params)
        dt = time.perf_counter() - t0
        records = []
        for (t, p), g in zip(chunk, outs):
            rec = {
                "idx": t.idx,
                **t.fields,
                "prediction": g.text,
                "model": generator.name,
                "prompt_tokens": p.n_tokens,
                "prompt_tokens_raw": p.n_tokens_raw,
                "prompt_tokens_templated": g.prompt_tokens,
                "completion_tokens": g.completion_tokens,
                "finish_reason": g.finish_reason,
                "truncated": p.truncated,
                "max_length": limit,
                "max_length_requested": max_length,
                "sampling": sampling,
                "seconds": round(dt / len(chunk), 3),
            }
            if getattr(generator, "kind", "") == "endpoint":
                rec["token_count_note"] = "prompt_tokens counted with a local tokenizer"
            records.append(rec)
        append_jsonl(out_path, records)
        generated += len(records)
        if progress:
            progress(len(records))
    return {"done_before": len(done), "generated": generated}
