"""The circuit breaker of an LLM endpoint: stop a job in seconds when the endpoint cannot serve it.

One breaker per client (:class:`longalign.llm.client.CachingClient`), shared by all its requests and threads.
It distinguishes two phases of a job:

* **Before the endpoint has answered once.** A wrong ``--base-url``, a server that is not running, a host name
  that does not resolve, a TLS failure (:class:`~longalign.llm.base.LLMConnectionError`) will not heal by
  retrying each document for a minute: the breaker opens after ``first_contact_attempts`` (3) such attempts,
  counted over all requests together. An HTTP 401/403 (the key) or 404 (no such model or route) opens it on
  the first answer: every other request would get the same.
* **After the endpoint has answered.** Timeouts, 429, 5xx and dropped connections keep the client's retries
  and backoff. A request that still fails after all its retries (or gets 401/403/404) adds one to a run of
  consecutive failed requests; any answer resets the run. When the run reaches ``stop_after_failures`` (5; 0 =
  never) the breaker opens: the server is down, and marking every remaining document failed would only cost
  time. Other refusals of one request (400, 422: that request's own problem) neither count nor reset.

Once open, the breaker refuses every further attempt before it is sent, and wakes requests waiting to retry;
the client raises :class:`~longalign.llm.base.LLMEndpointDown` from ``chat``/``chat_many``, whose message is one
line naming the URL, the model, the error and what to fix. Answers already received are in the request cache
(and the outputs written from them), so re-running the same command resumes without paying for them again.
A local model never opens it: its failures are neither connection nor HTTP errors.
"""

from __future__ import annotations

import threading

from longalign.llm.base import LLMConnectionError, LLMEndpointDown, LLMError, LLMRequestError

FIRST_CONTACT_ATTEMPTS = 3
STOP_AFTER_FAILURES = 5
ENDPOINT_STATUSES = {401: "key", 403: "key", 404: "model"}


def _fix_of(exc: BaseException) -> str | None:
    """What a failed attempt says about the endpoint: "url", "key", "model", or None (a transient failure, or a
    problem of that one request)."""
    if isinstance(exc, LLMConnectionError):
        return "url"
    if isinstance(exc, LLMRequestError):
        if hasattr(exc, "fix"):  # the backend knew better (a 404 of an optional route is not the endpoint's)
            return exc.fix
        return ENDPOINT_STATUSES.get(exc.http_status or 0)
    return None


class CircuitBreaker:
    """Thread-safe state of one endpoint in one job; see the module docstring for the rules."""

    def __init__(
        self,
        *,
        url: str,
        model: str,
        api_key_env: str | None = None,
        key_set: bool = True,
        first_contact_attempts: int = FIRST_CONTACT_ATTEMPTS,
        stop_after_failures: int = STOP_AFTER_FAILURES,
    ):
        if first_contact_attempts < 1:
            raise ValueError(f"first_contact_attempts must be >= 1, got {first_contact_attempts}")
        if stop_after_failures < 0:
            raise ValueError(f"stop_after_failures must be >= 0 (0 = never stop), got {stop_after_failures}")
        self.url = url
        self.model = model
        self.api_key_env = api_key_env
        self.key_set = key_set
        self.first_contact_attempts = int(first_contact_attempts)
        self.stop_after_failures = int(stop_after_failures)
        self.answered = 0  # successful answers in this job
        self.contact_failures = 0  # connection failures before the first answer
        self.failures_in_a_row = 0  # requests that finally failed since the last answer
        self._open: LLMEndpointDown | None = None
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._open is not None

    def check(self) -> None:
        """Raise :class:`LLMEndpointDown` when the breaker is open (call before sending an attempt)."""
        err = self._open
        if err is not None:
            raise err.copy()

    def succeeded(self) -> None:
        with self._lock:
            self.answered += 1
            self.failures_in_a_row = 0

    def attempt_failed(self, exc: LLMError) -> LLMEndpointDown | None:
        """One attempt failed with ``exc``: the error to stop the job with when this opens the breaker (or it
        was open already), else None (retry or report the request's own failure as usual)."""
        fix = _fix_of(exc)
        with self._lock:
            if self._open is None and fix is not None and self.answered == 0:
                if fix == "url":
                    self.contact_failures += 1
                    if self.contact_failures >= self.first_contact_attempts:
                        self._trip(exc, fix)
                else:
                    self._trip(exc, fix)
            return None if self._open is None else self._open.copy()

    def request_failed(self, exc: LLMError) -> LLMEndpointDown | None:
        """A request failed for good (retries exhausted, or refused with 401/403/404): counts towards the run
        of consecutive failures; returns the stop error when the breaker is (now) open."""
        counts = not isinstance(exc, LLMRequestError) or _fix_of(exc) is not None
        with self._lock:
            if self._open is None and counts:
                self.failures_in_a_row += 1
                if self.stop_after_failures and self.failures_in_a_row >= self.stop_after_failures:
                    self._trip(exc, "server" if self.answered else (_fix_of(exc) or "server"))
            return None if self._open is None else self._open.copy()

    def _trip(self, exc: LLMError, fix: str) -> None:
        self._open = LLMEndpointDown(
            url=self.url,
            model=self.model,
            error=getattr(exc, "reason", None) or str(exc),
            fix=fix,
            api_key_env=self.api_key_env,
            key_set=self.key_set,
            answered=self.answered,
            attempts=self.contact_failures,
            failures=self.failures_in_a_row,
            http_status=exc.http_status,
        )
