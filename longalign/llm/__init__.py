"""LLM access for data generation and judging: one client protocol, two backends, shared guarantees.

Build a client::

    from longalign.llm import make_client, SamplingParams

    client = make_client("openai:gpt-4o-mini",                 # or "local:smollm2", or a bare model spec
                         base_url="http://127.0.0.1:8000/v1",    # None = api.openai.com
                         api_key_env="OPENAI_API_KEY",           # key read from this variable ("EMPTY" if unset)
                         cache_dir=run.llm_cache,                # request cache (None = no cache)
                         calls_log=run.llm_calls,                # one jsonl line per attempt outcome
                         timeout=120.0, max_retries=6, max_in_flight=8,
                         price_in_per_mtok=0.15, price_out_per_mtok=0.60,
                         max_cost=2.0, max_requests=500,  # optional spending cap (longalign.llm.budget)
                         stop_after_failures=5)           # circuit breaker (longalign.llm.breaker)

    res = client.chat([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=64, temperature=0.0))
    res.text, res.prompt_tokens, res.completion_tokens, res.cached, res.finish_reason

    for i, res in client.chat_many([(messages, params), ...], progress=bar.update):
        if isinstance(res, Exception): ...    # an LLMError; the other requests go on
    client.usage()   # {"requests", "cached", "prompt_tokens", "completion_tokens", "retries", "errors",
                     #  "attempts", "cost"}  (cost is None unless a price was given)
    client.close()   # or use the client as a context manager

Specs: ``openai:<model>`` talks to any OpenAI-compatible ``/v1/chat/completions`` (OpenAI, vLLM,
llama.cpp, ...); ``local:<model spec>`` (or a bare spec such as ``smollm2``, an HF id, a trained folder)
runs a transformers model in-process, one request at a time (see :mod:`longalign.models` for model specs).

Guarantees, the same for both backends (:mod:`longalign.llm.client`):

* Cache: key = SHA-256 of the canonical JSON of (``client.spec``, messages, ``SamplingParams``). A hit
  returns ``ChatResult(cached=True)`` without touching the backend; every success is on disk before it
  is returned, so a re-run after a crash never pays for an answered request again. To draw several
  different samples for one prompt, give each request its own ``seed``.
* Retries: 429, 5xx, 408, timeouts and connection errors are retried with exponential backoff and jitter
  (honouring ``Retry-After``); after ``max_retries`` retries the request fails with
  :class:`LLMUnavailableError`. Other 4xx fail at once with :class:`LLMRequestError` (server message +
  hint). ``close()`` stops pending retries (:class:`LLMCancelledError`). All errors derive from
  :class:`LLMError`; an unexpected backend failure (e.g. CUDA out of memory) is wrapped in one.
* Spending cap: with ``max_cost`` (in the prices' unit) or ``max_requests``, an attempt the cap has no
  room for is not sent: :class:`LLMBudgetExceeded` is raised from ``chat``/``chat_many``. Cache hits are
  free, so a re-run with a higher cap pays only for what was not answered yet.
* Circuit breaker (:mod:`longalign.llm.breaker`): before the endpoint has answered once, 3 connection
  failures (refused, DNS, TLS) or one HTTP 401/403/404 stop the job; after it has answered,
  ``stop_after_failures`` (5) requests failing in a row after all their retries do. The client then raises
  :class:`LLMEndpointDown` (one line: URL, model, error, what to fix) from ``chat``/``chat_many``. Both stops
  derive from :class:`LLMJobStop`.
* Calls log lines: ``{"key", "model", "status": "ok"|"cached"|"retry"|"error", "http_status", "usage":
  {"prompt_tokens", "completion_tokens"} | None, "latency", "attempt", "time", "cached"}`` (+ ``"error"``).
* ``chat_many`` yields ``(index, ChatResult | LLMError)`` in completion order, at most ``max_in_flight``
  requests in flight (1 for a local model); ``progress(1)`` is called after each finished request.

Other helpers: :func:`request_key` (the cache key), :class:`RequestCache`, :func:`parse_spec` (the one parser
of the ``openai:``/``local:`` prefix) and :func:`local_model_spec`. A ``local:`` client, a local evaluation
generator and a local judge of the same model share one loaded copy (:mod:`longalign.llm.local_model`).
"""

from longalign.llm.base import (  # noqa: F401
    ChatResult,
    LLMBudgetExceeded,
    LLMCancelledError,
    LLMClient,
    LLMConnectionError,
    LLMEndpointDown,
    LLMError,
    LLMJobStop,
    LLMRequestError,
    LLMRetryableError,
    LLMUnavailableError,
    Messages,
    SamplingParams,
)
from longalign.llm.budget import Budget  # noqa: F401
from longalign.llm.cache import RequestCache, messages_hash, request_key  # noqa: F401
from longalign.llm.client import CachingClient, local_model_spec, make_client, parse_spec  # noqa: F401

__all__ = [
    "ChatResult",
    "LLMBudgetExceeded",
    "LLMCancelledError",
    "LLMClient",
    "LLMConnectionError",
    "LLMEndpointDown",
    "LLMError",
    "LLMJobStop",
    "LLMRequestError",
    "LLMRetryableError",
    "LLMUnavailableError",
    "Messages",
    "SamplingParams",
    "Budget",
    "RequestCache",
    "messages_hash",
    "request_key",
    "CachingClient",
    "local_model_spec",
    "make_client",
    "parse_spec",
]
