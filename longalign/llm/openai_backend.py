"""One attempt at an OpenAI-compatible ``/v1/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp, ...), or at
``/v1/completions`` for a request whose prompt the caller rendered (``SamplingParams.raw_prompt``).

This layer makes exactly one HTTP request per call and classifies the outcome; retries, caching, logging
and accounting live in :class:`longalign.llm.client.CachingClient`, so they behave the same for every
backend. The ``openai`` package's own retry loop is switched off (``max_retries=0``): its retries would be
invisible to our calls log and usage counters and would stack with ours (6 x 3 attempts instead of 7).

Outcomes: a :class:`ChatResult`; :class:`LLMRetryableError` for 408, 429, 5xx, timeouts and connection
errors (with the server's ``Retry-After`` when sent); :class:`LLMRequestError` for every other 4xx, with
the server's message, since sending the same request again cannot succeed. A failure to get any HTTP answer
(refused or dropped connection, unresolvable host, TLS failure, no connection within the timeout) is the
retryable subclass :class:`LLMConnectionError`, which the client's circuit breaker counts before the endpoint
has answered once (:mod:`longalign.llm.breaker`). Every error carries ``reason``: the short cause
(``HTTP 401: invalid API key``, ``[Errno 111] Connection refused``) without the URL and hint around it.

The API key is read from the environment variable named by ``api_key_env`` when the backend is built; it
is passed to the HTTP client only and is never logged, cached or written anywhere. Local servers (vLLM,
llama.cpp) ignore it, so an unset variable sends the dummy key ``EMPTY``.
"""

from __future__ import annotations

import email.utils
import logging
import os
import time
from typing import Any

from longalign.llm.base import (
    ChatResult,
    LLMConnectionError,
    LLMRequestError,
    LLMRetryableError,
    Messages,
    SamplingParams,
)

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 429})
DUMMY_API_KEY = "EMPTY"
DEFAULT_URL = "https://api.openai.com/v1"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` (seconds or HTTP date) or ``retry-after-ms`` value."""
    if value is None:
        return None
    value = str(value).strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def connection_reason(exc: BaseException) -> str:
    """The innermost cause of a connection failure, as the operating system or TLS library put it
    (``[Errno 111] Connection refused``, ``[Errno -2] Name or service not known``)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    text = ""
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        msg = " ".join(str(cause).split())
        if msg and msg not in ("Connection error.", "Request timed out."):
            text = msg
        cause = cause.__cause__ or cause.__context__
    return text or type(exc).__name__


def _retry_after_from_headers(headers: Any) -> float | None:
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"))


def _error_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error")
        msg = inner.get("message") if isinstance(inner, dict) else body.get("message")
        if msg:
            return str(msg)
    return str(getattr(exc, "message", None) or exc)


def _plain(obj: Any) -> Any:
    if obj is None or isinstance(obj, (dict, list, str, int, float)):
        return obj
    dump = getattr(obj, "model_dump", None)
    return dump() if callable(dump) else obj


def _endpoint_fix(status: int, message: str, model: str, raw_prompt: bool) -> str | None:
    """What a refusal says about the endpoint as a whole (the circuit breaker's ``fix``): ``"key"`` for 401/403,
    ``"model"`` for a 404 of the chat route (no such model, or a base URL without ``/v1``) or one naming the
    model, None for a refusal of this one request. A 404 of ``/v1/completions`` alone only means that the
    server lacks that optional route (the judge then scores without logprobs)."""
    if status in (401, 403):
        return "key"
    if status == 404 and (not raw_prompt or model in message or "model" in message.lower()):
        return "model"
    return None


def _connect_timeout(exc: BaseException) -> bool:
    """True when a timeout happened while opening the connection (``httpx.ConnectTimeout``), not while waiting
    for the answer."""
    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if type(cause).__name__ == "ConnectTimeout":
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def token_logprobs(raw: Any) -> list[dict[str, Any]] | None:
    """The per-token log-probabilities of a choice as ``[{"token", "logprob", "top": [[token, logprob],
    ...]}]``, or None when the server sent none.

    Reads the chat shape of OpenAI, vLLM and llama.cpp (``logprobs.content[i]`` with ``token``, ``logprob``
    and ``top_logprobs: [{"token", "logprob"}]``) and the completions shape some servers also send for chat
    (``logprobs.tokens`` / ``token_logprobs`` / ``top_logprobs: [{token: logprob}]``)."""
    raw = _plain(raw)
    if not isinstance(raw, dict):
        return None
    out: list[dict[str, Any]] = []
    content = raw.get("content")
    if isinstance(content, list) and content:
        for item in content:
            item = _plain(item)
            if not isinstance(item, dict):
                continue
            top = []
            for alt in item.get("top_logprobs") or []:
                alt = _plain(alt)
                if isinstance(alt, dict) and "token" in alt and alt.get("logprob") is not None:
                    top.append([str(alt["token"]), float(alt["logprob"])])
            lp = item.get("logprob")
            out.append({"token": str(item.get("token", "")), "logprob": None if lp is None else float(lp), "top": top})
        return out
    tokens, lps, tops = raw.get("tokens"), raw.get("token_logprobs"), raw.get("top_logprobs")
    if isinstance(tops, list) and tops:
        for i, alts in enumerate(tops):
            top = [[str(t), float(v)] for t, v in (alts or {}).items() if v is not None]
            tok = tokens[i] if isinstance(tokens, list) and i < len(tokens) else (top[0][0] if top else "")
            lp = lps[i] if isinstance(lps, list) and i < len(lps) else None
            out.append({"token": str(tok), "logprob": None if lp is None else float(lp), "top": top})
        return out
    return None


class OpenAIBackend:
    """Single-attempt client for an OpenAI-compatible chat endpoint; thread-safe (one shared HTTP pool)."""

    max_concurrency: int | None = None  # as many in flight as the caller allows

    def __init__(
        self, model: str, *, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY", timeout: float = 120.0
    ):
        import openai

        if not model:
            raise ValueError("an openai: spec needs a model name, e.g. openai:gpt-4o-mini")
        self.model = model
        self.base_url = base_url
        self.url = base_url or DEFAULT_URL
        self.timeout = float(timeout)
        self._openai = openai
        self.api_key_env = api_key_env
        api_key = os.environ.get(api_key_env) or DUMMY_API_KEY
        self.key_set = api_key != DUMMY_API_KEY
        if api_key == DUMMY_API_KEY:
            log.info(
                "environment variable %s is not set: sending the dummy key %r (fine for local "
                "servers; set %s for a hosted API)",
                api_key_env,
                DUMMY_API_KEY,
                api_key_env,
            )
        for name in ("httpx", "httpx2"):  # one INFO line per HTTP request drowns a 2,000-request run
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=self.timeout, max_retries=0)

    def describe(self) -> str:
        return f"{self.model} at {self.base_url or 'api.openai.com'}"

    def complete(self, messages: Messages, params: SamplingParams) -> ChatResult:
        openai = self._openai
        kwargs: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.raw_prompt:  # a prompt rendered by the caller, through the completions API
            if len(messages) != 1:
                raise ValueError("raw_prompt requests carry the prompt as their single message")
            kwargs["prompt"] = messages[0]["content"]
            create = self._client.completions.create
        else:
            kwargs["messages"] = messages
            create = self._client.chat.completions.create
        if params.seed is not None:
            kwargs["seed"] = params.seed
        if params.top_logprobs is not None:
            if params.raw_prompt:
                kwargs["logprobs"] = int(params.top_logprobs)
            else:
                kwargs["logprobs"] = True
                kwargs["top_logprobs"] = int(params.top_logprobs)
        if params.continue_final:
            # vLLM's switches for an assistant prefill; llama.cpp's server continues a final assistant
            # message by default
            kwargs["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
        start = time.monotonic()
        try:
            resp = create(**kwargs)
        except openai.APITimeoutError as exc:
            if _connect_timeout(exc):  # no connection at all within the timeout: nothing answers at this address
                reason = f"no connection within {self.timeout:g} s"
                err: LLMRetryableError = LLMConnectionError(
                    f"cannot connect to {self.describe()}: {reason}", reason=reason
                )
            else:
                err = LLMRetryableError(f"timed out after {self.timeout:g} s talking to {self.describe()}")
                err.reason = f"no answer within {self.timeout:g} s"  # type: ignore[attr-defined]
            raise err from exc
        except openai.APIConnectionError as exc:
            reason = connection_reason(exc)
            raise LLMConnectionError(f"cannot connect to {self.describe()}: {reason}", reason=reason) from exc
        except openai.APIStatusError as exc:
            status = exc.status_code
            msg = _error_message(exc)
            if status in RETRYABLE_STATUSES or status >= 500:
                err = LLMRetryableError(
                    f"HTTP {status} from {self.describe()}: {msg}",
                    http_status=status,
                    retry_after=_retry_after_from_headers(exc.response.headers),
                )
                err.reason = f"HTTP {status}: {msg}"  # type: ignore[attr-defined]
                raise err from exc
            hint = {
                401: f"check the API key in the environment variable {self.api_key_env}",
                403: f"check the permissions of the API key in {self.api_key_env}",
                404: "check --base-url and the model name",
            }.get(status, "check the request parameters")
            refused = LLMRequestError(f"HTTP {status} from {self.describe()}: {msg} ({hint})", http_status=status)
            refused.reason = f"HTTP {status}: {msg}"  # type: ignore[attr-defined]
            refused.fix = _endpoint_fix(status, msg, self.model, params.raw_prompt)  # type: ignore[attr-defined]
            raise refused from exc
        latency = time.monotonic() - start
        if not getattr(resp, "choices", None):
            raise LLMRetryableError(f"{self.describe()} answered without any choice", http_status=200)
        choice = resp.choices[0]
        if params.raw_prompt:
            text = getattr(choice, "text", None) or ""
        else:
            text = (choice.message.content if choice.message is not None else None) or ""
        usage = getattr(resp, "usage", None)
        extra: dict[str, Any] = {}
        if usage is None:  # some servers omit usage: the counts stay 0 and the result says so
            extra["usage_missing"] = True
        if params.top_logprobs is not None:
            extra["logprobs"] = token_logprobs(getattr(choice, "logprobs", None))
        return ChatResult(
            text=text,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            model=getattr(resp, "model", None) or self.model,
            cached=False,
            latency=latency,
            finish_reason=choice.finish_reason,
            extra=extra,
        )

    def close(self) -> None:
        self._client.close()
