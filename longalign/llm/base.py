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
    """Sampling settings; part of the request-cache key."""

    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


class LLMCancelledError(LLMError):
    """The client was closed, or the ``chat_many`` generator closed, before the request could finish."""
