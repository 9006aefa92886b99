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


class LLMConnectionError(LLMRetryableError):
    """No HTTP answer at all: the connection was refused or dropped, the host name did not resolve, the TLS
    handshake failed, or the connection could not be opened in time. ``reason`` is the low-level cause
    (``[Errno 111] Connection refused``). Retried like any retryable error once the endpoint has answered in
    this job; before that it counts towards the circuit breaker (:mod:`longalign.llm.breaker`)."""

    def __init__(self, message: str, *, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


class LLMUnavailableError(LLMError):
    """Every attempt failed with a retryable error; ``attempts`` says how many were made."""

    def __init__(self, message: str, *, http_status: int | None = None, attempts: int = 0):
        super().__init__(message, http_status=http_status)
        self.attempts = attempts


class LLMJobStop(LLMError):
    """The job must stop: the client sends nothing more. ``chat`` and ``chat_many`` raise it (``chat_many`` never
    yields it): requests already in flight finish and are cached first, so a re-run continues from there."""


class LLMBudgetExceeded(LLMJobStop):
    """The spending cap (``max_cost`` / ``max_requests``) leaves no room for the next request; nothing was sent.

    ``chat`` and ``chat_many`` raise it (``chat_many`` does not yield it) so a job stops at a clean point;
    answers received before it are cached, and a re-run with a higher cap continues from there."""

    def __init__(self, message: str, *, spent: float = 0.0, sent: int = 0):
        super().__init__(message)
        self.spent = spent
        self.sent = sent


class LLMCancelledError(LLMError):
    """The client was closed, or the ``chat_many`` generator closed, before the request could finish."""


ENDPOINT_FLAG_PREFIXES = {"llm": "", "model": "model_", "judge": "judge_"}  # option holding the spec -> its group


class LLMEndpointDown(LLMJobStop):
    """The circuit breaker opened: the endpoint cannot serve this job (:mod:`longalign.llm.breaker`).

    ``fix`` says what to correct: ``"url"`` (nothing listens there, the name does not resolve, TLS fails),
    ``"key"`` (HTTP 401/403), ``"model"`` (HTTP 404: no such model or route) or ``"server"`` (it answered
    before, then failed ``failures`` requests in a row after all their retries). ``str(exc)`` is one line
    naming the URL, the model, the error and the option or variable to fix; :meth:`line` names the exact flags
    of a command when given its option values."""

    def __init__(
        self,
        *,
        url: str,
        model: str,
        error: str,
        fix: str,
        api_key_env: str | None = None,
        key_set: bool = True,
        answered: int = 0,
        attempts: int = 0,
        failures: int = 0,
        http_status: int | None = None,
    ):
        self.url = url
        self.model = model
        self.error = " ".join(str(error).split())[:300]
        self.fix = fix
        self.api_key_env = api_key_env
        self.key_set = key_set
        self.answered = answered
        self.attempts = attempts
        self.failures = failures
        super().__init__(self.line(), http_status=http_status)

    def copy(self) -> LLMEndpointDown:
        """A new exception with the same fields (one per raise, so threads never share a traceback)."""
        return LLMEndpointDown(
            url=self.url,
            model=self.model,
            error=self.error,
            fix=self.fix,
            api_key_env=self.api_key_env,
            key_set=self.key_set,
            answered=self.answered,
            attempts=self.attempts,
            failures=self.failures,
            http_status=self.http_status,
        )

    def flags(self, options: dict[str, Any] | None = None) -> tuple[str, str, str]:
        """(URL flag, key flag, model flag) of the command whose option values are ``options``: the options
        whose value is this endpoint's spec or URL; generic names when none matches."""
        opts = dict(options or {})
        prefixes = [p for name, p in ENDPOINT_FLAG_PREFIXES.items() if opts.get(name) == f"openai:{self.model}"]
        prefixes += [
            k[: -len("base_url")] for k, v in opts.items() if k.endswith("base_url") and _same_url(v, self.url)
        ]
        prefixes = list(dict.fromkeys(prefixes))
        if not prefixes:
            return (
                "the base URL (--base-url, --model-base-url or --judge-base-url)",
                "--api-key-env, --model-api-key-env or --judge-api-key-env",
                "the openai:<model> spec",
            )
        spec_of = {p: n for n, p in ENDPOINT_FLAG_PREFIXES.items()}

        def flag(name: str) -> str:
            return "/".join("--" + (p + name).replace("_", "-") for p in prefixes)

        return flag("base_url"), flag("api_key_env"), "/".join("--" + spec_of.get(p, "model") for p in prefixes)

    def line(self, options: dict[str, Any] | None = None) -> str:
        """The one-line report; with a command's option values it names that command's flags."""
        url_flag, key_flag, model_flag = self.flags(options)
        where = f"{self.url} (model {self.model})"
        var = self.api_key_env or "the API key variable"
        if self.fix == "url":
            head = f"cannot reach {where}: {self.error} ({self.attempts} attempts, no answer yet)"
            todo = f"start the server, or correct {url_flag} (host, port, http or https)"
        elif self.fix == "key":
            head = f"{where} refused the API key: {self.error}"
            unset = "" if self.key_set else f"{var} is not set; "
            todo = f"{unset}put a valid key in the environment variable {var} (or name another one with {key_flag})"
        elif self.fix == "model":
            head = f"{where} does not serve this model or route: {self.error}"
            todo = f"check the model name in {model_flag} and the path in {url_flag} (usually ending in /v1)"
        else:
            before = f"it answered {self.answered} before" if self.answered else "it has not answered any"
            head = f"{where} failed {self.failures} requests in a row after all their retries ({before}): {self.error}"
            todo = "check the server (or raise --stop-after-failures)"
        return f"{head}; {todo}. Answers received so far are kept: re-run the same command to resume"


def _same_url(a: Any, b: Any) -> bool:
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    return a.strip().rstrip("/") == b.strip().rstrip("/")
