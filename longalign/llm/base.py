"""The client protocol every LLM backend implements (OpenAI-compatible HTTP endpoint, local HF model).

A request is a list of chat ``messages`` plus :class:`SamplingParams`; a response is a :class:`ChatResult`
with the text and token usage. Backends are built with ``longalign.llm.make_client(spec, ...)`` where
``spec`` is ``openai:<model>`` (with ``base_url`` and an API key read from an environment variable) or
``local:<model spec>`` (see ``longalign.models``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; part of the request-cache key.

    ``top_logprobs=k`` asks the server for the ``k`` most likely tokens at every generated position
    (``ChatResult.extra["logprobs"]``); ``continue_final=True`` asks it to continue the final assistant
    message instead of starting a new one (an assistant prefill); ``raw_prompt=True`` sends the content of the
    single message as a ready-made prompt to the completions API (``/v1/completions``, no chat template on the
    server). All three are left out of the cache key while unset, so keys of plain requests are the same as
    before they existed."""

    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None
    top_logprobs: int | None = None
    continue_final: bool = False
    raw_prompt: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["top_logprobs"] is None:
            del out["top_logprobs"]
        for flag in ("continue_final", "raw_prompt"):
            if not out[flag]:
                del out[flag]
        return out


@dataclass
class ChatResult:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""
    cached: bool = False
    latency: float = 0.0
    finish_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class LLMClient(Protocol):
    """``chat`` answers one request; ``chat_many`` answers many, several in flight where the backend can,
    yielding ``(index, ChatResult | Exception)`` in completion order and calling ``progress(1)`` after each
    finished request."""

    model: str

    def chat(self, messages: Messages, params: SamplingParams) -> ChatResult: ...

    def chat_many(
        self, requests: Iterable[tuple[Messages, SamplingParams]], *, progress: Callable[[int], None] | None = None
    ) -> Iterator[tuple[int, ChatResult | Exception]]: ...


class LLMError(RuntimeError):
    """Base of every error raised by an LLM client; ``http_status`` is set when a server answered."""

    def __init__(self, message: str, *, http_status: int | None = None):
        super().__init__(message)
        self.http_status = http_status


class LLMRequestError(LLMError):
    """The request itself was refused (400, 401, 403, 404, 422, ...): retrying cannot help."""


class LLMRetryableError(LLMError):
    """One attempt failed in a way worth retrying (429, 5xx, timeout, connection error)."""

    def __init__(self, message: str, *, http_status: int | None = None, retry_after: float | None = None):
        super().__init__(message, http_status=http_status)
        self.retry_after = retry_after


class LLMUnavailableError(LLMError):
    """Every attempt failed with a retryable error; ``attempts`` says how many were made."""

    def __init__(self, message: str, *, http_status: int | None = None, attempts: int = 0):
        super().__init__(message, http_status=http_status)
        self.attempts = attempts


class LLMBudgetExceeded(LLMError):
    """The spending cap (``max_cost`` / ``max_requests``) leaves no room for the next request; nothing was sent.

    ``chat`` and ``chat_many`` raise it (``chat_many`` does not yield it) so a job stops at a clean point;
    answers received before it are cached, and a re-run with a higher cap continues from there."""

    def __init__(self, message: str, *, spent: float = 0.0, sent: int = 0):
        super().__init__(message)
        self.spent = spent
        self.sent = sent


class LLMCancelledError(LLMError):
    """The client was closed, or the ``chat_many`` generator closed, before the request could finish."""
