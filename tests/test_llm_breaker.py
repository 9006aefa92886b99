"""The LLM client's circuit breaker (``longalign.llm.breaker``): an endpoint that cannot serve a job stops it in
seconds; one that answered keeps its retries; a long run of failed requests stops the job instead of failing
every remaining request.

HTTP cases talk to the real fake server of ``tests/fake_llm_server.py`` on 127.0.0.1 (or to a closed port of
it); the rule cases drive the client with a scripted single-attempt backend.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from fake_llm_server import FakeLLMServer, answered_requests, closed_port, paid_twice

from longalign.llm import (
    CachingClient,
    ChatResult,
    LLMConnectionError,
    LLMEndpointDown,
    LLMJobStop,
    LLMRequestError,
    LLMRetryableError,
    LLMUnavailableError,
    SamplingParams,
    make_client,
)

P = SamplingParams(max_tokens=16, temperature=0.0)


def msg(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def client_at(url: str, tmp_path: Path, model: str = "fake-model", **kw) -> CachingClient:
    opts = dict(
        base_url=url,
        cache_dir=tmp_path / "cache",
        calls_log=tmp_path / "calls.jsonl",
        timeout=5.0,
        backoff_base=0.01,
        backoff_max=0.05,
    )
    opts.update(kw)
    return make_client(f"openai:{model}", **opts)


def drain(client: CachingClient, n: int, prefix: str = "q") -> dict[int, object]:
    out: dict[int, object] = {}
    for i, res in client.chat_many([(msg(f"{prefix}{i}"), P) for i in range(n)]):
        out[i] = res
    return out


# --- before the first answer --------------------------------------------------------------------------------


@pytest.mark.parametrize("in_flight", [8, 1])
def test_closed_port_stops_after_three_attempts(tmp_path, in_flight):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    # the default backoff (1 s, doubling): three attempts of one request cost at most 1 + 2 s of waiting
    c = client_at(url, tmp_path, backoff_base=1.0, backoff_max=60.0, max_in_flight=in_flight)
    start = time.monotonic()
    with pytest.raises(LLMEndpointDown) as info:
        drain(c, 40)
    elapsed = time.monotonic() - start
    assert elapsed < 5.0
    err = info.value
    assert err.fix == "url" and err.url == url and err.model == "fake-model" and err.attempts == 3
    assert "Connection refused" in err.error
    usage = c.usage()
    assert usage["requests"] == 0 and 3 <= usage["attempts"] <= max(3, in_flight)  # never one per request
    line = str(err)
    assert "\n" not in line and url in line and "fake-model" in line and "--base-url" in line
    assert "re-run the same command" in line


def test_the_line_names_the_flags_of_the_command(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/v1"
    c = client_at(url, tmp_path, model="judge-x", max_in_flight=1)
    with pytest.raises(LLMEndpointDown) as info:
        c.chat(msg("x"), P)
    err = info.value
    judged = err.line({"judge": "openai:judge-x", "judge_base_url": url + "/", "model": "smollm2"})
    assert "correct --judge-base-url (host" in judged and "--base-url," not in judged
    generic = err.line({})
    assert "--base-url, --model-base-url or --judge-base-url" in generic


def test_unauthorised_stops_at_the_first_answer(tmp_path, monkeypatch):
    monkeypatch.delenv("LONGALIGN_BREAKER_KEY", raising=False)
    with FakeLLMServer(require_key="sk-right") as server:
        url = server.base_url
        c = client_at(url, tmp_path, api_key_env="LONGALIGN_BREAKER_KEY", max_in_flight=4)
        with pytest.raises(LLMEndpointDown) as info:
            drain(c, 50)
        assert len(server.requests) <= 4  # the requests already in flight, not one per request
        assert {r["status"] for r in server.requests} == {401}
    err = info.value
    assert err.fix == "key" and err.http_status == 401
    line = err.line({"llm": "openai:fake-model", "base_url": url})
    assert "HTTP 401: invalid API key" in line and "LONGALIGN_BREAKER_KEY is not set" in line
    assert "--api-key-env" in line


def test_wrong_key_that_is_set_is_named_without_its_value(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGALIGN_BREAKER_KEY", "sk-wrong-123")
    with FakeLLMServer(require_key="sk-right") as server:
        c = client_at(server.base_url, tmp_path, api_key_env="LONGALIGN_BREAKER_KEY")
        with pytest.raises(LLMEndpointDown) as info:
            c.chat(msg("x"), P)
    text = str(info.value)
    assert "environment variable LONGALIGN_BREAKER_KEY" in text and "not set" not in text
    assert "sk-wrong-123" not in text


def test_unknown_model_stops_and_names_the_model_flag(tmp_path):
    with FakeLLMServer(models={"served-model"}) as server:
        url = server.base_url
        c = client_at(url, tmp_path, model="gpt-typo", max_in_flight=2)
        with pytest.raises(LLMEndpointDown) as info:
            drain(c, 20)
        assert len(server.requests) <= 2
    err = info.value
    assert err.fix == "model" and "gpt-typo" in err.error
    line = err.line({"model": "openai:gpt-typo", "model_base_url": url})
    assert "--model " in line and "--model-base-url" in line


def test_a_missing_completions_route_is_not_the_endpoints_fault(tmp_path):
    """A 404 of /v1/completions (a judge's raw prompt) says only that the server lacks that route."""
    with FakeLLMServer(completions_route=False) as server:
        c = client_at(server.base_url, tmp_path)
        with pytest.raises(LLMRequestError, match="HTTP 404"):
            c.chat(msg("rendered prompt [["), SamplingParams(max_tokens=4, raw_prompt=True))
        assert not c.breaker.is_open and c.chat(msg("x"), P).text == "x"
        server.script(["404"])
        with pytest.raises(LLMEndpointDown):  # a 404 of the chat route is the endpoint's
            client_at(server.base_url, tmp_path / "2").chat(msg("y"), P)


# --- after the first answer ---------------------------------------------------------------------------------


def test_random_failures_after_the_first_answer_lose_nothing_and_pay_nothing_twice(tmp_path):
    log = tmp_path / "server.jsonl"
    kinds = {"429": 1.0, "500": 1.0, "503": 1.0, "drop": 1.0, "timeout": 1.0}
    # the client's timeout leaves a busy machine's answers time to arrive (an answer that came after the client gave
    # up would be paid twice); the injected timeouts outlast it
    with FakeLLMServer(fail_rate=0.3, fail_after=1, fail_kinds=kinds, delay_s=3.0, seed=5, log_path=log) as server:
        c = client_at(server.base_url, tmp_path, timeout=2.0, max_retries=10, max_in_flight=8)
        assert c.chat(msg("first"), P).text == "first"
        got = drain(c, 60)
        entries = list(server.requests)
    assert sorted(got) == list(range(60))
    assert all(isinstance(r, ChatResult) and r.text == f"q{i}" for i, r in got.items())
    outcomes = Counter(e["outcome"] for e in entries)
    assert outcomes["ok"] == 61 and sum(outcomes.values()) - 61 > 10 and outcomes["drop"] > 0
    answered = answered_requests(entries)
    assert len(answered) == 61 and paid_twice(entries) == []  # 0 lost, 0 duplicated, 0 paid twice
    assert c.usage()["requests"] == 61 and c.breaker.answered == 61 and not c.breaker.is_open


def test_a_server_that_dies_stops_the_job_and_the_rerun_resumes(tmp_path):
    server = FakeLLMServer(latency_s=0.02).start()
    url = server.base_url
    c = client_at(url, tmp_path, max_in_flight=2, max_retries=2, stop_after_failures=3)
    answers: dict[int, ChatResult] = {}
    with pytest.raises(LLMEndpointDown) as info:
        for i, res in c.chat_many([(msg(f"q{i}"), P) for i in range(30)]):
            if isinstance(res, ChatResult):
                answers[i] = res
            if len(answers) == 5 and server._httpd is not None:
                server.stop()  # answered 5, then nothing listens any more
    err = info.value
    assert err.fix == "server" and err.failures == 3 and err.answered >= 5
    assert "failed 3 requests in a row" in str(err) and "--stop-after-failures" in str(err)
    first_log = list(server.requests)
    answered_before = set(answered_requests(first_log))
    # the re-run (a new client, the same cache) against the server back on its port sends only what is missing
    with FakeLLMServer(port=int(url.rsplit(":", 1)[1].split("/")[0])) as again:
        c2 = client_at(url, tmp_path, max_in_flight=2)
        got = drain(c2, 30)
        second = list(again.requests)
    assert sorted(got) == list(range(30)) and all(isinstance(r, ChatResult) for r in got.values())
    assert not answered_before & set(answered_requests(second))  # nothing answered before was paid again
    assert len(answered_before) + len(answered_requests(second)) == 30


# --- the rules, with a scripted backend ---------------------------------------------------------------------


class Scripted:
    """A single-attempt backend answering from a list of outcomes (an exception to raise, or text)."""

    model = "m"
    max_concurrency = 1
    url = "http://scripted/v1"
    api_key_env = "SCRIPTED_KEY"
    key_set = True

    def __init__(self, outcomes):
        self.outcomes = list(outcomes)
        self.calls = 0

    def complete(self, messages, params):
        self.calls += 1
        out = self.outcomes.pop(0) if self.outcomes else "ok"
        if isinstance(out, BaseException):
            raise out
        return ChatResult(text=out, prompt_tokens=1, completion_tokens=1)

    def describe(self):
        return "m at scripted"

    def close(self):
        pass


def scripted(outcomes, **kw) -> tuple[CachingClient, Scripted]:
    backend = Scripted(outcomes)
    opts = dict(spec="openai:m", max_retries=2, backoff_base=0.001, backoff_max=0.002)
    opts.update(kw)
    return CachingClient(backend, **opts), backend


def http(status):
    return LLMRequestError(f"HTTP {status}", http_status=status)


def unavailable():
    return LLMRetryableError("HTTP 503", http_status=503)


def test_request_errors_of_one_request_neither_count_nor_reset():
    c, _ = scripted(["ok", unavailable(), unavailable(), unavailable(), http(400), http(422)], stop_after_failures=2)
    c.chat(msg("a"), P)
    with pytest.raises(LLMUnavailableError):
        c.chat(msg("b"), P)
    for text in ("c", "d"):
        with pytest.raises(LLMRequestError):
            c.chat(msg(text), P)
    assert c.breaker.failures_in_a_row == 1 and not c.breaker.is_open


def test_an_answer_resets_the_run():
    fails = [unavailable()] * 3
    c, backend = scripted(["ok", *fails, *fails, "ok", *fails, *fails], stop_after_failures=3)
    c.chat(msg("a"), P)
    for text in ("b", "c"):
        with pytest.raises(LLMUnavailableError):
            c.chat(msg(text), P)
    c.chat(msg("d"), P)
    for text in ("e", "f"):
        with pytest.raises(LLMUnavailableError):
            c.chat(msg(text), P)
    assert not c.breaker.is_open and c.breaker.failures_in_a_row == 2
    backend.outcomes = [unavailable()] * 3
    with pytest.raises(LLMEndpointDown):
        c.chat(msg("g"), P)
    calls = backend.calls
    with pytest.raises(LLMEndpointDown):  # open: nothing more is sent
        c.chat(msg("h"), P)
    assert backend.calls == calls


def test_zero_never_stops():
    c, _ = scripted([unavailable()] * 30, stop_after_failures=0)
    for i in range(10):
        with pytest.raises(LLMUnavailableError):
            c.chat(msg(str(i)), P)
    assert not c.breaker.is_open


def test_connection_errors_after_an_answer_are_retried():
    refused = LLMConnectionError("refused", reason="[Errno 111] Connection refused")
    c, backend = scripted(["ok", refused, refused, "ok"], max_retries=3)
    c.chat(msg("a"), P)
    assert c.chat(msg("b"), P).text == "ok" and backend.calls == 4 and not c.breaker.is_open


def test_dns_and_tls_failures_count_as_connection_failures():
    dns = LLMConnectionError("dns", reason="[Errno -2] Name or service not known")
    tls = LLMConnectionError("tls", reason="[SSL: WRONG_VERSION_NUMBER] wrong version number")
    c, backend = scripted([dns, tls, dns], max_retries=6)
    with pytest.raises(LLMEndpointDown) as info:
        c.chat(msg("a"), P)
    assert backend.calls == 3 and "Name or service not known" in str(info.value)
    assert isinstance(info.value, LLMJobStop)


def test_a_request_waiting_to_retry_wakes_when_the_breaker_opens():
    """One request sleeps in a long backoff; another trips the breaker: the first stops at once."""
    c, _ = scripted([], max_retries=5, backoff_base=30.0, backoff_max=30.0)
    c.breaker.answered = 1
    gate = threading.Event()

    class Backend(Scripted):
        def complete(self, messages, params):
            if messages[0]["content"] == "slow":
                gate.set()
                raise unavailable()
            gate.wait(5)
            raise http(401)

    c.backend = Backend([])
    c.breaker.answered = 0
    errors: list[BaseException] = []

    def slow():
        try:
            c.chat(msg("slow"), P)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    t = threading.Thread(target=slow)
    start = time.monotonic()
    t.start()
    with pytest.raises(LLMEndpointDown):
        c.chat(msg("fast"), P)
    t.join(10)
    assert not t.is_alive() and time.monotonic() - start < 5
    assert len(errors) == 1 and isinstance(errors[0], LLMEndpointDown)
