"""The caching, retrying, logging, accounting client shared by every backend, and ``make_client``.

A backend (HTTP or local model) only knows how to make *one attempt* at a request. :class:`CachingClient`
wraps it and adds, identically for every backend:

* the request cache (:mod:`longalign.llm.cache`): a hit returns ``ChatResult(cached=True)`` and makes no
  call; a success is written to disk before ``chat`` returns it;
* retries with exponential backoff and jitter on retryable failures (429, 5xx, 408, timeouts,
  connection errors): the wait before retry ``n`` (1-based) is ``uniform(0.5, 1) * min(backoff_max,
  backoff_base * 2**(n-1))``, or the server's ``Retry-After`` when it sent one (capped at
  ``retry_after_max``). With the defaults (1 s, 60 s cap, 6 retries) a request gives up after about
  1+2+4+8+16+32 = 63 s of waiting at most, ~47 s on average: long enough to ride out a rate-limit
  window, short enough that a dead server fails a job within minutes;
* one line per attempt outcome in the calls log (``ok``, ``cached``, ``retry``, ``error``);
* usage counters (:meth:`CachingClient.usage`) and an optional cost from per-million-token prices;
* with a cache, identical requests in flight at the same time are sent once: the second waits for the
  first and reads its answer from the cache;
* an optional spending cap (:mod:`longalign.llm.budget`: ``max_cost``, ``max_requests``) asked before
  every attempt that reaches the backend; cache hits are free. When it refuses, ``chat`` and ``chat_many``
  raise :class:`LLMBudgetExceeded` instead of sending, so the job stops with everything answered cached;
* ``chat_many``: up to ``max_in_flight`` requests at once on a thread pool (1 for a local model, run in
  the calling thread), answers yielded in completion order. Closing the generator early or Ctrl-C
  cancels queued requests; requests already in flight finish and are cached (the process waits for
  them, at most ``timeout`` seconds, before it exits), but are no longer retried;
* a circuit breaker (:mod:`longalign.llm.breaker`) asked before every attempt and told of every outcome: an
  endpoint that cannot serve the job (nothing listening, a refused key, no such model; or, once it has
  answered, ``stop_after_failures`` requests in a row failing after all their retries) stops it in seconds with
  :class:`LLMEndpointDown`, raised from ``chat`` and ``chat_many`` like the spending cap's refusal.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from longalign.llm.base import (
    ChatResult,
    LLMCancelledError,
    LLMError,
    LLMJobStop,
    LLMRequestError,
    LLMRetryableError,
    LLMUnavailableError,
    Messages,
    SamplingParams,
)
from longalign.llm.breaker import STOP_AFTER_FAILURES, CircuitBreaker
from longalign.llm.budget import Budget, cost_of
from longalign.llm.cache import RequestCache, request_key
from longalign.rundir import append_jsonl

log = logging.getLogger(__name__)

BACKENDS = ("openai", "local")


class Backend(Protocol):
    model: str
    max_concurrency: int | None

    def complete(self, messages: Messages, params: SamplingParams) -> ChatResult: ...
    def describe(self) -> str: ...
    def close(self) -> None: ...


class CallsLog:
    """Append-only jsonl of attempt outcomes; one complete line per write, safe across threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        with self._lock:
            append_jsonl(self.path, record)


class CachingClient:
    """Implements :class:`longalign.llm.base.LLMClient` on top of a single-attempt backend."""

    def __init__(
        self,
        backend: Backend,
        *,
        spec: str,
        cache_dir: str | Path | None = None,
        calls_log: str | Path | None = None,
        max_retries: int = 6,
        max_in_flight: int = 8,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        retry_after_max: float = 120.0,
        price_in_per_mtok: float | None = None,
        price_out_per_mtok: float | None = None,
        rng_seed: int | None = None,
        max_cost: float | None = None,
        max_requests: int | None = None,
        stop_after_failures: int = STOP_AFTER_FAILURES,
    ):
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.backend = backend
        self.spec = spec
        self._http = parse_spec(spec)[0] == "openai"  # calls-log lines of an endpoint carry HTTP statuses
        self.model = backend.model
        self.cache = RequestCache(cache_dir) if cache_dir else None
        self.calls_log = CallsLog(calls_log) if calls_log else None
        self.max_retries = int(max_retries)
        self.max_in_flight = int(max_in_flight)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.retry_after_max = float(retry_after_max)
        self.price_in = price_in_per_mtok
        self.price_out = price_out_per_mtok
        self.budget = Budget(
            max_cost=max_cost,
            max_requests=max_requests,
            price_in_per_mtok=price_in_per_mtok,
            price_out_per_mtok=price_out_per_mtok,
        )
        self.breaker = CircuitBreaker(
            url=str(getattr(backend, "url", None) or getattr(backend, "base_url", None) or backend.describe()),
            model=self.model,
            api_key_env=getattr(backend, "api_key_env", None),
            key_set=bool(getattr(backend, "key_set", True)),
            stop_after_failures=stop_after_failures,
        )
        self._rng = random.Random(rng_seed)
        self._lock = threading.Lock()
        self._inflight: dict[str, threading.Event] = {}
        self._stop = threading.Event()
        self._counts = {
            "requests": 0,
            "cached": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "retries": 0,
            "errors": 0,
            "attempts": 0,
        }

    # ---------------------------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"CachingClient({self.spec!r}, cache={self.cache.root if self.cache else None})"

    def __enter__(self) -> CachingClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop retrying and release the backend (HTTP connections; a local model stays loaded in the process-wide
        cache of :mod:`longalign.llm.local_model` for its other users until ``release_local_models``)."""
        self._stop.set()
        self.backend.close()

    @property
    def concurrency(self) -> int:
        cap = self.backend.max_concurrency
        return self.max_in_flight if cap is None else max(1, min(self.max_in_flight, cap))

    def key(self, messages: Messages, params: SamplingParams) -> str:
        """Cache key of a request for this client's model."""
        return request_key(self.spec, messages, params)

    def usage(self) -> dict[str, Any]:
        """``requests`` answered by the backend, ``cached`` hits, token sums of the answered (paid) requests,
        ``retries`` (failed attempts that were retried), ``errors`` (requests that finally failed),
        ``attempts`` (backend calls made) and ``cost`` (None unless a price was given)."""
        with self._lock:
            out: dict[str, Any] = dict(self._counts)
        if self.price_in is None and self.price_out is None:
            out["cost"] = None
        else:
            out["cost"] = cost_of(out["prompt_tokens"], out["completion_tokens"], self.price_in, self.price_out)
        if self.budget.active:
            out["budget"] = self.budget.to_dict()
        return out

    def _count(self, **inc: int) -> None:
        with self._lock:
            for k, v in inc.items():
                self._counts[k] += v

    def _log(
        self,
        key: str,
        status: str,
        *,
        http_status: int | None = None,
        result: ChatResult | None = None,
        attempt: int = 0,
        latency: float = 0.0,
        error: str | None = None,
    ) -> None:
        if self.calls_log is None:
            return
        rec: dict[str, Any] = {
            "key": key,
            "model": self.model,
            "status": status,
            "http_status": http_status,
            "usage": (
                {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens}
                if result
                else None
            ),
            "latency": round(latency, 4),
            "attempt": attempt,
            "time": time.time(),
            "cached": status == "cached",
        }
        if error:
            rec["error"] = error[:500]
        try:
            self.calls_log.write(rec)
        except OSError as exc:  # the log is diagnostics: never lose an answer because of it
            log.warning("cannot write the calls log %s: %s", self.calls_log.path, exc)

    def backoff_delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1-based); see the module docstring."""
        if retry_after is not None:
            return min(max(0.0, retry_after), self.retry_after_max)
        with self._lock:
            u = self._rng.uniform(0.5, 1.0)
        return u * min(self.backoff_max, self.backoff_base * 2 ** (retry - 1))

    # ---------------------------------------------------------------------------------------------
    def chat(self, messages: Messages, params: SamplingParams | None = None) -> ChatResult:
        """Answer one request (from the cache when possible); raises :class:`LLMError` subclasses."""
        return self._chat(messages, params or SamplingParams(), self._stop)

    def _chat(self, messages: Messages, params: SamplingParams, stop: threading.Event) -> ChatResult:
        _check_messages(messages)
        key = self.key(messages, params)
        if self.cache is None:
            return self._attempts(key, messages, params, stop)
        while True:
            hit = self._from_cache(key)
            if hit is not None:
                return hit
            with self._lock:
                waiter = self._inflight.get(key)
                if waiter is None:
                    mine = threading.Event()
                    self._inflight[key] = mine
                    break
            waiter.wait()  # the same request is in flight: wait, then read its answer from the cache
            if stop.is_set() or self._stop.is_set():
                raise LLMCancelledError("cancelled while waiting for an identical request in flight")
        cache = self.cache
        try:
            return self._attempts(
                key,
                messages,
                params,
                stop,
                persist=lambda res: cache.put(key, res, model=self.spec, messages=messages, params=params),
            )
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            mine.set()

    def _from_cache(self, key: str) -> ChatResult | None:
        if self.cache is None:
            return None
        hit = self.cache.get(key)
        if hit is not None:
            self._count(cached=1)
            self._log(key, "cached", result=hit)
        return hit

    def _attempts(
        self,
        key: str,
        messages: Messages,
        params: SamplingParams,
        stop: threading.Event,
        persist: Callable[[ChatResult], None] | None = None,
    ) -> ChatResult:
        """Call the backend until success, a non-retryable error, cancellation or ``max_retries`` retries.

        ``persist`` stores a success (the cache) before it is counted and logged as ``ok``, so the calls
        log never shows a paid answer that a crash could lose. The circuit breaker is asked before every
        attempt and told of every outcome; when it opens, :class:`LLMEndpointDown` is raised instead."""
        attempt = 0
        while True:
            attempt += 1
            if stop.is_set() or self._stop.is_set():
                raise LLMCancelledError(f"cancelled before attempt {attempt} of a request to {self.backend.describe()}")
            self.breaker.check()  # raises LLMEndpointDown: nothing sent
            reserved = self.budget.acquire(messages, params)  # raises LLMBudgetExceeded: nothing sent
            start = time.monotonic()
            self._count(attempts=1)
            result: ChatResult | None = None
            try:
                result = self.backend.complete(messages, params)
            except LLMRetryableError as exc:
                latency = time.monotonic() - start
                down = self.breaker.attempt_failed(exc)
                if down is not None or attempt > self.max_retries:
                    self._count(errors=1)
                    self._log(
                        key, "error", http_status=exc.http_status, attempt=attempt, latency=latency, error=str(exc)
                    )
                    down = down or self.breaker.request_failed(exc)
                    if down is not None:
                        raise down from exc
                    raise LLMUnavailableError(
                        f"gave up after {attempt} attempts: {exc}", http_status=exc.http_status, attempts=attempt
                    ) from exc
                self._count(retries=1)
                self._log(key, "retry", http_status=exc.http_status, attempt=attempt, latency=latency, error=str(exc))
                delay = self.backoff_delay(attempt, exc.retry_after)
                log.debug("attempt %d failed (%s); retrying in %.2f s", attempt, exc, delay)
                if self._wait(stop, delay):
                    self.breaker.check()
                    raise LLMCancelledError(f"cancelled while waiting to retry: {exc}") from exc
                continue
            except LLMRequestError as exc:
                self._count(errors=1)
                self._log(
                    key,
                    "error",
                    http_status=exc.http_status,
                    attempt=attempt,
                    latency=time.monotonic() - start,
                    error=str(exc),
                )
                down = self.breaker.attempt_failed(exc) or self.breaker.request_failed(exc)
                if down is not None:
                    raise down from exc
                raise
            except LLMError:
                self._count(errors=1)
                raise
            except Exception as exc:  # e.g. out of memory on a long prompt: reported, not retried
                self._count(errors=1)
                msg = f"{type(exc).__name__}: {exc}"
                self._log(key, "error", attempt=attempt, latency=time.monotonic() - start, error=msg)
                raise LLMError(f"{self.backend.describe()} failed: {msg}") from exc
            finally:
                self.budget.settle(reserved, result, messages)
            if persist is not None:
                persist(result)
            self.breaker.succeeded()
            self._count(requests=1, prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens)
            self._log(
                key,
                "ok",
                http_status=200 if self._http else None,
                result=result,
                attempt=attempt,
                latency=result.latency,
            )
            return result

    def _wait(self, stop: threading.Event, delay: float) -> bool:
        """Sleep ``delay`` seconds before a retry; True as soon as the wait should end early (``stop`` or
        ``close()``, or the circuit breaker opened meanwhile)."""
        deadline = time.monotonic() + delay
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if stop.wait(min(left, 0.1)) or self._stop.is_set() or self.breaker.is_open:
                return True

    # ---------------------------------------------------------------------------------------------
    def chat_many(
        self,
        requests: Iterable[tuple[Messages, SamplingParams | None]],
        *,
        progress: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[int, ChatResult | Exception]]:
        """Answer many requests; yields ``(index, ChatResult | LLMError)`` in completion order.

        When the job must stop (:class:`LLMJobStop`: the spending cap refuses a request, or the circuit breaker
        opens with :class:`LLMEndpointDown`), that error is raised (not yielded): queued requests are dropped,
        those already being sent finish and are yielded (and cached) first.

        ``requests`` may be a lazy iterable: at most ``2 * concurrency`` are read ahead. ``progress(1)`` is
        called after each finished request (answer or error), so a tqdm bar's ``update`` fits directly.
        """
        stop = threading.Event()
        workers = self.concurrency

        def finished() -> None:
            if progress is not None:
                progress(1)

        if workers == 1:
            for i, item in enumerate(requests):
                messages, params = _unpack(item)
                try:
                    res: ChatResult | Exception = self._chat(messages, params, stop)
                except LLMJobStop:
                    raise
                except LLMError as exc:
                    res = exc
                finished()
                yield i, res
            return

        pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm")
        pending: dict[cf.Future, int] = {}
        it = iter(enumerate(requests))
        exhausted = False
        stopping: LLMJobStop | None = None
        try:
            while True:
                while stopping is None and not exhausted and len(pending) < 2 * workers:
                    try:
                        i, item = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    messages, params = _unpack(item)
                    pending[pool.submit(self._chat, messages, params, stop)] = i
                if not pending:
                    break
                ready, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in ready:
                    i = pending.pop(fut)
                    exc = fut.exception()
                    if isinstance(exc, LLMJobStop):
                        # the cap is reached or the endpoint is down: drop the queued requests, let those being
                        # sent finish (they are cached and yielded below), then raise
                        if stopping is None:
                            stopping = exc
                            for queued in [f for f in pending if f.cancel()]:
                                pending.pop(queued)
                        continue
                    if exc is not None and not isinstance(exc, LLMError):
                        raise exc
                    finished()
                    yield i, (exc if exc is not None else fut.result())
            if stopping is not None:
                raise stopping
        finally:
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)


def _unpack(item: Any) -> tuple[Messages, SamplingParams]:
    if isinstance(item, tuple) and len(item) == 2:
        messages, params = item
    else:
        messages, params = item, None
    return messages, params or SamplingParams()


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {j} must be a dict with 'role' and 'content', got {m!r:.80}")


def parse_spec(spec: str | None, *, require_prefix: bool = False) -> tuple[str, str]:
    """Split an LLM spec into ``(backend, name)``; the one place that reads the ``openai:``/``local:`` prefix.

    * ``openai:<model>`` -> ``("openai", model)``; an empty model is an error;
    * ``local:<model spec>`` -> ``("local", model spec)``, where the model spec may itself hold a colon
      (``local:random:configs/models/tiny-llama``) and an empty one (``local:``) means the embedded default;
    * a bare model spec (``smollm2``, an HF id, a folder, ``random:<config>``) -> ``("local", spec)``, unless
      ``require_prefix`` (judges must say which backend they use): then it is an error.

    Raises ValueError naming the accepted forms for an unknown prefix (``anthropic:claude``).
    """
    spec = (spec or "").strip()
    forms = ", ".join(f"{b}:<model>" for b in BACKENDS)
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in BACKENDS:
        if prefix == "openai" and not rest.strip():
            raise ValueError(f"{spec!r}: an openai: spec needs a model name, e.g. openai:gpt-4o-mini")
        return prefix, rest.strip()
    if sep and prefix != "random" and prefix.isidentifier() and not Path(spec).exists():
        raise ValueError(
            f"unknown LLM backend {prefix!r} in {spec!r}; use one of {forms}"
            + ("" if require_prefix else " (a bare spec means local)")
        )
    if require_prefix:
        raise ValueError(f"{spec!r} names no LLM backend; use one of {forms} (e.g. local:smollm2)")
    return "local", spec


def local_model_spec(spec: str | None) -> str | None:
    """The model spec of a local LLM spec (``local:x`` or bare ``x`` -> ``x``; empty -> ``smollm2``, the
    embedded default), None for an ``openai:`` spec."""
    kind, name = parse_spec(spec)
    return (name or "smollm2") if kind == "local" else None


def make_client(
    spec: str,
    *,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    cache_dir: str | Path | None = None,
    calls_log: str | Path | None = None,
    timeout: float = 120.0,
    max_retries: int = 6,
    max_in_flight: int = 8,
    price_in_per_mtok: float | None = None,
    price_out_per_mtok: float | None = None,
    backoff_base: float = 1.0,
    backoff_max: float = 60.0,
    retry_after_max: float = 120.0,
    device: str | None = None,
    dtype: Any = None,
    max_cost: float | None = None,
    max_requests: int | None = None,
    prefix_reuse: bool = True,
    local_batch_size: int = 1,
    stop_after_failures: int = STOP_AFTER_FAILURES,
) -> CachingClient:
    """Build a client for ``spec``; see :mod:`longalign.llm` for the spec forms and the guarantees.

    ``prefix_reuse`` and ``local_batch_size`` apply to a local model only (see
    :mod:`longalign.llm.local_backend`)."""
    kind, name = parse_spec(spec)
    if kind == "openai":
        from longalign.llm.openai_backend import OpenAIBackend

        backend: Backend = OpenAIBackend(name, base_url=base_url, api_key_env=api_key_env, timeout=timeout)
        full = f"openai:{name}"
    else:
        from longalign.llm.local_backend import LocalBackend

        if base_url:
            log.warning(
                "base_url %s is ignored for the local model %r; use openai:<model> to reach a server", base_url, spec
            )
        model_spec = local_model_spec(spec)
        backend = LocalBackend(
            model_spec, device=device, dtype=dtype, prefix_reuse=prefix_reuse, batch_size=local_batch_size
        )
        full = f"local:{model_spec}"
    return CachingClient(
        backend,
        spec=full,
        cache_dir=cache_dir,
        calls_log=calls_log,
        max_retries=max_retries,
        max_in_flight=max_in_flight,
        backoff_base=backoff_base,
        backoff_max=backoff_max,
        retry_after_max=retry_after_max,
        price_in_per_mtok=price_in_per_mtok,
        price_out_per_mtok=price_out_per_mtok,
        max_cost=max_cost,
        max_requests=max_requests,
        stop_after_failures=stop_after_failures,
    )
