"""LLM access layer: retries, request cache, calls log, usage, concurrency, both backends.

HTTP tests talk to the real fake server of ``tests/fake_llm_server.py`` on 127.0.0.1 (fixture ``fake_llm``).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from fake_llm_server import FakeLLMServer, messages_key, start_server_process

from longalign.llm import (
    CachingClient,
    ChatResult,
    LLMCancelledError,
    LLMClient,
    LLMEndpointDown,
    LLMError,
    LLMRequestError,
    LLMUnavailableError,
    RequestCache,
    SamplingParams,
    local_model_spec,
    make_client,
    messages_hash,
    parse_spec,
    request_key,
)
from longalign.llm.openai_backend import parse_retry_after
from longalign.rundir import read_jsonl

P = SamplingParams(max_tokens=16, temperature=0.0)


def msg(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def http_client(server: FakeLLMServer, tmp_path: Path, **kw):
    opts = dict(
        base_url=server.base_url,
        cache_dir=tmp_path / "cache",
        calls_log=tmp_path / "calls.jsonl",
        timeout=5.0,
        backoff_base=0.01,
        backoff_max=0.05,
    )
    opts.update(kw)
    return make_client("openai:fake-model", **opts)


# --- specs and keys --------------------------------------------------------------------------------------


class TestParseSpec:
    def test_forms(self):
        assert parse_spec("openai:gpt-4o-mini") == ("openai", "gpt-4o-mini")
        assert parse_spec("local:smollm2") == ("local", "smollm2")
        assert parse_spec("smollm2") == ("local", "smollm2")
        assert parse_spec("HuggingFaceTB/SmolLM2-360M-Instruct") == ("local", "HuggingFaceTB/SmolLM2-360M-Instruct")
        assert parse_spec("random:configs/tiny.json") == ("local", "random:configs/tiny.json")

    def test_unknown_backend_names_choices(self):
        with pytest.raises(ValueError, match="openai:<model>, local:<model>"):
            parse_spec("anthropic:claude")

    def test_edge_cases(self):
        assert parse_spec("local:") == ("local", "")  # the embedded default
        assert parse_spec(" local: smollm2 ") == ("local", "smollm2")
        assert parse_spec("local:random:configs/models/tiny-llama") == ("local", "random:configs/models/tiny-llama")
        assert parse_spec("openai:gpt-4o") == ("openai", "gpt-4o")
        assert parse_spec("") == parse_spec(None) == ("local", "")
        with pytest.raises(ValueError, match="needs a model name"):
            parse_spec("openai:")
        with pytest.raises(ValueError, match="unknown LLM backend 'Local'"):
            parse_spec("Local:smollm2")  # prefixes are case-sensitive

    def test_require_prefix(self):
        assert parse_spec("local:smollm2", require_prefix=True) == ("local", "smollm2")
        assert parse_spec("openai:gpt-4o", require_prefix=True) == ("openai", "gpt-4o")
        for bare in ("smollm2", "random:configs/models/tiny-llama", ""):
            with pytest.raises(ValueError, match="names no LLM backend; use one of openai:<model>, local:<model>"):
                parse_spec(bare, require_prefix=True)

    def test_local_model_spec(self):
        assert local_model_spec("local:") == local_model_spec("") == local_model_spec(None) == "smollm2"
        assert local_model_spec("local:smollm2") == local_model_spec("smollm2") == "smollm2"
        assert local_model_spec("local:random:configs/models/tiny-llama") == "random:configs/models/tiny-llama"
        assert local_model_spec("openai:gpt-4o") is None
        with pytest.raises(ValueError, match="unknown LLM backend"):
            local_model_spec("anthropic:claude")

    def test_client_spec_is_normalised(self, tmp_path):
        c = make_client("local:", cache_dir=tmp_path)  # no model is loaded yet
        assert c.spec == "local:smollm2" and c.model == "SmolLM2-135M-Instruct"
        assert make_client("random:configs/models/tiny-llama").spec == "local:random:configs/models/tiny-llama"

    def test_empty_openai_model(self):
        with pytest.raises(ValueError, match="model name"):
            make_client("openai:")


def test_request_key_canonical_and_sensitive():
    m = [{"role": "user", "content": "héllo"}]
    k = request_key("openai:m", m, P)
    assert k == request_key("openai:m", [{"content": "héllo", "role": "user"}], P)  # dict order is irrelevant
    assert len(k) == 64
    assert k != request_key("openai:m2", m, P)
    assert k != request_key("local:m", m, P)
    assert k != request_key("openai:m", [{"role": "user", "content": "hello"}], P)
    assert k != request_key("openai:m", m, SamplingParams(max_tokens=16, temperature=0.0, seed=1))
    assert k != request_key("openai:m", m, SamplingParams(max_tokens=17, temperature=0.0))
    assert messages_hash(m) == messages_key(m)  # the server logs the same hash


def test_parse_retry_after():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


def test_backoff_delay_bounds(fake_llm, tmp_path):
    c = http_client(fake_llm, tmp_path, backoff_base=1.0, backoff_max=10.0, retry_after_max=30.0)
    for n, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (9, 10.0)]:
        for _ in range(20):
            assert 0.5 * cap <= c.backoff_delay(n) <= cap
    assert c.backoff_delay(3, retry_after=7.0) == 7.0
    assert c.backoff_delay(3, retry_after=100.0) == 30.0


# --- HTTP backend ---------------------------------------------------------------------------------------


def test_client_satisfies_protocol(fake_llm, tmp_path):
    c = http_client(fake_llm, tmp_path)
    assert isinstance(c, LLMClient)
    assert c.model == "fake-model" and c.spec == "openai:fake-model"


def test_chat_returns_text_and_usage(fake_llm, tmp_path):
    c = http_client(fake_llm, tmp_path)
    res = c.chat(msg("one two three"), P)
    assert res.text == "one two three"
    assert (res.prompt_tokens, res.completion_tokens) == (3 + 4, 3)
    assert res.finish_reason == "stop" and res.cached is False and res.model == "fake-model"
    assert [r["outcome"] for r in fake_llm.requests] == ["ok"]
    assert fake_llm.requests[0]["max_tokens"] == 16 and fake_llm.requests[0]["temperature"] == 0.0
    assert fake_llm.requests[0]["seed"] is None


def test_max_tokens_and_seed_are_sent(fake_llm, tmp_path):
    c = http_client(fake_llm, tmp_path)
    res = c.chat(msg("a b c d e f"), SamplingParams(max_tokens=2, temperature=0.5, seed=7))
    assert res.text == "a b" and res.finish_reason == "length" and res.completion_tokens == 2
    assert fake_llm.requests[0]["seed"] == 7


def test_retries_429_500_timeout_then_success(fake_llm, tmp_path):
    fake_llm.delay_s = 1.0
    fake_llm.script(["429", "500", "timeout"])
    c = http_client(fake_llm, tmp_path, timeout=0.3)
    res = c.chat(msg("persist"), P)
    assert res.text == "persist"
    assert [r["outcome"] for r in fake_llm.requests] == ["429", "500", "timeout", "ok"]
    u = c.usage()
    assert (u["requests"], u["retries"], u["errors"], u["attempts"], u["cached"]) == (1, 3, 0, 4, 0)
    log = read_jsonl(tmp_path / "calls.jsonl")
    assert [r["status"] for r in log] == ["retry", "retry", "retry", "ok"]
    assert [r["http_status"] for r in log] == [429, 500, None, 200]
    assert [r["attempt"] for r in log] == [1, 2, 3, 4]


def test_no_retry_on_400(fake_llm, tmp_path):
    fake_llm.script(["400"])
    c = http_client(fake_llm, tmp_path)
    with pytest.raises(LLMRequestError, match="HTTP 400") as info:
        c.chat(msg("bad"), P)
    assert info.value.http_status == 400
    assert len(fake_llm.requests) == 1
    u = c.usage()
    assert (u["requests"], u["retries"], u["errors"]) == (0, 0, 1)
    assert [(r["status"], r["http_status"]) for r in read_jsonl(tmp_path / "calls.jsonl")] == [("error", 400)]
    assert not (tmp_path / "cache").exists() or len(RequestCache(tmp_path / "cache")) == 0


def test_gives_up_after_max_retries(fake_llm, tmp_path):
    fake_llm.script(["500", "500", "500", "ok"])
    c = http_client(fake_llm, tmp_path, max_retries=2)
    with pytest.raises(LLMUnavailableError, match="gave up after 3 attempts") as info:
        c.chat(msg("x"), P)
    assert info.value.attempts == 3 and info.value.http_status == 500
    assert len(fake_llm.requests) == 3
    assert [r["status"] for r in read_jsonl(tmp_path / "calls.jsonl")] == ["retry", "retry", "error"]
    assert c.usage()["errors"] == 1


def test_retry_after_is_honoured_and_capped(fake_llm, tmp_path):
    fake_llm.retry_after = "0.4"
    fake_llm.script(["429"])
    c = http_client(fake_llm, tmp_path)
    start = time.monotonic()
    c.chat(msg("wait"), P)
    assert time.monotonic() - start >= 0.4
    fake_llm.retry_after = "30"
    fake_llm.script(["429"])
    c = http_client(fake_llm, tmp_path, retry_after_max=0.05)
    start = time.monotonic()
    c.chat(msg("capped"), P)
    assert time.monotonic() - start < 5.0


def test_connection_error_is_retried_then_fails(tmp_path):
    server = FakeLLMServer().start()
    url = server.base_url
    server.stop()  # nothing listens on that port any more
    c = make_client(
        "openai:m", base_url=url, max_retries=1, backoff_base=0.01, timeout=2.0, calls_log=tmp_path / "calls.jsonl"
    )
    with pytest.raises(LLMUnavailableError, match="cannot connect"):
        c.chat(msg("x"), P)
    assert [r["status"] for r in read_jsonl(tmp_path / "calls.jsonl")] == ["retry", "error"]


def test_api_key_read_from_named_env_var(fake_llm, tmp_path, monkeypatch):
    fake_llm.require_key = "sk-test-123"
    monkeypatch.delenv("LONGALIGN_TEST_KEY", raising=False)
    c = http_client(fake_llm, tmp_path, api_key_env="LONGALIGN_TEST_KEY")
    with pytest.raises(LLMEndpointDown, match="HTTP 401.*LONGALIGN_TEST_KEY is not set"):
        c.chat(msg("x"), P)
    monkeypatch.setenv("LONGALIGN_TEST_KEY", "sk-test-123")
    c = http_client(fake_llm, tmp_path, api_key_env="LONGALIGN_TEST_KEY")
    assert c.chat(msg("x"), P).text == "x"
    for path in [tmp_path / "calls.jsonl", *(tmp_path / "cache").rglob("*.json")]:
        assert "sk-test-123" not in path.read_text()


# --- cache ----------------------------------------------------------------------------------------------


def test_cache_hit_makes_no_http_request(fake_llm, tmp_path):
    c = http_client(fake_llm, tmp_path)
    first = c.chat(msg("cache me"), P)
    assert len(fake_llm.requests) == 1
    key = c.key(msg("cache me"), P)
    assert (tmp_path / "cache" / key[:2] / f"{key}.json").is_file()  # on disk before chat returned
    again = c.chat(msg("cache me"), P)
    assert again.cached is True and again.text == first.text
    assert (again.prompt_tokens, again.completion_tokens) == (first.prompt_tokens, first.completion_tokens)
    # a new client (a re-run after a crash) reads the same cache
    c2 = http_client(fake_llm, tmp_path)
    assert c2.chat(msg("cache me"), P).cached is True
    assert len(fake_llm.requests) == 1
    assert c2.usage() == {
        "requests": 0,
        "cached": 1,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "retries": 0,
        "errors": 0,
        "attempts": 0,
        "cost": None,
    }
    # other sampling settings are another request
    c2.chat(msg("cache me"), SamplingParams(max_tokens=16, temperature=0.0, seed=3))
    assert len(fake_llm.requests) == 2
    statuses = [r["status"] for r in read_jsonl(tmp_path / "calls.jsonl")]
    assert statuses == ["ok", "cached", "cached", "ok"]


def test_corrupt_cache_entry_is_a_miss_and_rewritten(fake_llm, tmp_path):
    c = http_client(fake_llm, tmp_path)
    c.chat(msg("torn"), P)
    path = RequestCache(tmp_path / "cache").path(c.key(msg("torn"), P))
    path.write_text('{"key": "abc", "resu')  # torn write by some other tool
    res = c.chat(msg("torn"), P)
    assert res.cached is False and len(fake_llm.requests) == 2
    assert json.loads(path.read_text())["result"]["text"] == "torn"


def test_without_cache_every_call_is_sent(fake_llm, tmp_path):
    c = http_client(fake_llm, tmp_path, cache_dir=None)
    c.chat(msg("a"), P)
    c.chat(msg("a"), P)
    assert len(fake_llm.requests) == 2 and c.usage()["cached"] == 0


def test_random_failures_never_repeat_a_success(fake_llm, tmp_path):
    fake_llm.fail_rate = 0.4
    fake_llm.fail_kinds = {"429": 1.0, "500": 1.0, "503": 1.0}
    c = http_client(fake_llm, tmp_path, max_retries=20, max_in_flight=4)
    reqs = [(msg(f"item {i}"), P) for i in range(30)]
    out = dict(c.chat_many(reqs))
    assert sorted(out) == list(range(30))
    assert all(isinstance(r, ChatResult) and r.text == f"item {i}" for i, r in out.items())
    oks: dict[str, int] = {}
    for r in fake_llm.requests:
        assert r["key"] not in oks, "a request was sent again after it had succeeded"
        if r["outcome"] == "ok":
            oks[r["key"]] = r["n"]
    assert len(oks) == 30
    n_fail = sum(r["outcome"] != "ok" for r in fake_llm.requests)
    assert n_fail > 0 and c.usage()["retries"] == n_fail
    # a second pass is served entirely from the cache
    n = len(fake_llm.requests)
    assert all(r.cached for _, r in c.chat_many(reqs))
    assert len(fake_llm.requests) == n


# --- concurrency ----------------------------------------------------------------------------------------


def test_chat_many_respects_max_in_flight(fake_llm, tmp_path):
    fake_llm.latency_s = 0.05
    c = http_client(fake_llm, tmp_path, max_in_flight=3)
    seen: list[int] = []
    out = list(c.chat_many([(msg(f"q{i}"), P) for i in range(15)], progress=seen.append))
    assert sorted(i for i, _ in out) == list(range(15))
    assert all(r.text == f"q{i}" for i, r in out)
    assert seen == [1] * 15
    assert fake_llm.max_in_flight == 3
    assert max(r["in_flight"] for r in fake_llm.requests) == 3


def test_chat_many_keeps_max_in_flight_requests_open_at_once(fake_llm, tmp_path):
    """Structural, not timed: the server holds each request until 8 are open at the same time. A client that sends
    them one by one (or fewer at once) never gets there; the gate then opens for good after a few seconds so that
    such a client finishes, and the peak the server saw says how many overlapped."""
    gate = threading.Event()

    def hold_until_eight_open(req):
        if fake_llm.in_flight >= 8:
            gate.set()
        if not gate.wait(timeout=3.0):
            gate.set()  # never 8 at once: let the rest through without waiting again
        return req["messages"][-1]["content"]

    fake_llm.set_responder(hold_until_eight_open)
    c = http_client(fake_llm, tmp_path, max_in_flight=8)
    out = dict(c.chat_many([(msg(f"p{i}"), P) for i in range(16)]))
    assert sorted(r.text for r in out.values()) == sorted(f"p{i}" for i in range(16))
    assert fake_llm.max_in_flight == 8  # 8 overlapping requests, and never more than max_in_flight
    assert max(r["in_flight"] for r in fake_llm.requests) == 8


def test_chat_many_yields_errors_per_item(fake_llm, tmp_path):
    fake_llm.script(["400"])
    c = http_client(fake_llm, tmp_path, max_in_flight=1)
    out = dict(c.chat_many([(msg(f"e{i}"), P) for i in range(4)]))
    assert isinstance(out[0], LLMRequestError)
    assert [out[i].text for i in (1, 2, 3)] == ["e1", "e2", "e3"]


def test_identical_requests_in_flight_are_sent_once(fake_llm, tmp_path):
    fake_llm.latency_s = 0.1
    c = http_client(fake_llm, tmp_path, max_in_flight=4)
    out = dict(c.chat_many([(msg("same"), P)] * 6))
    assert len(fake_llm.requests) == 1
    assert sum(r.cached for r in out.values()) == 5
    assert c.usage()["requests"] == 1 and c.usage()["cached"] == 5


def test_chat_many_early_close_cancels_the_rest(fake_llm, tmp_path):
    fake_llm.latency_s = 0.05
    c = http_client(fake_llm, tmp_path, max_in_flight=2)
    gen = c.chat_many((msg(f"c{i}"), P) for i in range(100))
    next(gen)
    gen.close()
    time.sleep(0.3)
    assert len(fake_llm.requests) < 10  # only the read-ahead window was started


def test_chat_many_accepts_bare_messages(fake_llm, tmp_path):
    c = http_client(fake_llm, tmp_path)
    out = dict(c.chat_many([msg("bare")]))
    assert out[0].text == "bare"


def test_bad_messages_raise_value_error(fake_llm, tmp_path):
    c = http_client(fake_llm, tmp_path)
    with pytest.raises(ValueError, match="role"):
        c.chat([{"content": "no role"}], P)
    assert fake_llm.requests == []


def test_close_stops_pending_retries(fake_llm, tmp_path):
    fake_llm.script(["500"] * 5)
    c = http_client(fake_llm, tmp_path, backoff_base=30.0, backoff_max=30.0)
    errors: list[Exception] = []

    def worker():
        try:
            c.chat(msg("x"), P)
        except LLMError as exc:
            errors.append(exc)

    t = threading.Thread(target=worker)
    start = time.monotonic()
    t.start()
    while not fake_llm.requests:
        time.sleep(0.01)
    c.close()
    t.join(timeout=5)
    assert not t.is_alive() and time.monotonic() - start < 5
    assert len(errors) == 1 and isinstance(errors[0], LLMCancelledError)
    assert len(fake_llm.requests) == 1


class _Exploding:
    """A backend whose every attempt fails with an unexpected exception (like CUDA running out of memory)."""

    model = "boom"
    max_concurrency = None

    def complete(self, messages, params):
        raise MemoryError("no room for a 60k-token prompt")

    def describe(self):
        return "exploding backend"

    def close(self):
        pass


def test_unexpected_backend_failure_is_wrapped_not_retried(tmp_path):
    c = CachingClient(_Exploding(), spec="local:boom", calls_log=tmp_path / "calls.jsonl", max_in_flight=2)
    out = dict(c.chat_many([(msg("a"), P), (msg("b"), P)]))
    assert all(isinstance(e, LLMError) and "MemoryError" in str(e) for e in out.values())
    assert c.usage()["attempts"] == 2 and c.usage()["errors"] == 2 and c.usage()["retries"] == 0
    assert [r["status"] for r in read_jsonl(tmp_path / "calls.jsonl")] == ["error", "error"]


# --- accounting -----------------------------------------------------------------------------------------


def test_usage_and_cost_sums(fake_llm, tmp_path):
    c = http_client(fake_llm, tmp_path, price_in_per_mtok=2.0, price_out_per_mtok=8.0)
    texts = ["a", "b c", "d e f"]
    results = [c.chat(msg(t), P) for t in texts]
    c.chat(msg("a"), P)  # cached: free
    u = c.usage()
    assert u["requests"] == 3 and u["cached"] == 1
    assert u["prompt_tokens"] == (1 + 4) + (2 + 4) + (3 + 4) == sum(r.prompt_tokens for r in results)
    assert u["completion_tokens"] == 1 + 2 + 3
    assert u["cost"] == pytest.approx((18 * 2.0 + 6 * 8.0) / 1e6)
    only_in = http_client(fake_llm, tmp_path / "other", price_in_per_mtok=1.0)
    only_in.chat(msg("x y"), P)
    assert only_in.usage()["cost"] == pytest.approx(6 / 1e6)


def test_calls_log_lines(fake_llm, tmp_path):
    fake_llm.script(["500"])
    c = http_client(fake_llm, tmp_path)
    c.chat(msg("logged"), P)
    c.chat(msg("logged"), P)
    lines = read_jsonl(tmp_path / "calls.jsonl", strict=True)
    assert [r["status"] for r in lines] == ["retry", "ok", "cached"]
    key = c.key(msg("logged"), P)
    for r in lines:
        assert set(r) >= {"key", "model", "status", "http_status", "usage", "latency", "attempt", "time"}
        assert r["key"] == key and r["model"] == "fake-model"
    assert lines[0]["usage"] is None and "injected 500" in lines[0]["error"]
    assert lines[1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 1}
    assert lines[2]["cached"] is True and lines[2]["attempt"] == 0


# --- the fake server itself -----------------------------------------------------------------------------


def test_fake_server_models_endpoint_and_responders(fake_llm):
    with urllib.request.urlopen(fake_llm.base_url + "/models") as resp:
        assert json.load(resp)["data"][0]["id"] == "fake-model"
    from fake_llm_server import judge_responder, questions_responder

    req = {"messages": msg("Alpine glaciers retreat because summers warm faster than winters.")}
    q = questions_responder(req)
    assert q == questions_responder(req) and len(q.splitlines()) == 5 and q.startswith("1: ")
    assert "Rating: [[" in judge_responder(req)


def test_fake_server_custom_responder(fake_llm, tmp_path):
    fake_llm.set_responder(lambda req: "model said " + req["model"])
    assert http_client(fake_llm, tmp_path).chat(msg("x"), P).text == "model said fake-model"


def test_fake_server_subprocess_and_log_file(tmp_path):
    log = tmp_path / "server.jsonl"
    proc, url = start_server_process(tmp_path, responder="questions", log_path=log)
    try:
        c = make_client("openai:m", base_url=url, cache_dir=tmp_path / "cache", backoff_base=0.01)
        res = c.chat(msg("Reading documents about harbours and lighthouses"), P)
        assert res.text.startswith("1: ")
        lines = read_jsonl(log, strict=True)
        assert [(r["status"], r["key"]) for r in lines] == [
            (200, messages_hash(msg("Reading documents about harbours and lighthouses")))
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# --- local backend --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_client(tmp_path_factory):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = tmp_path_factory.mktemp("local")
    client = make_client("local:smollm2", cache_dir=root / "cache", calls_log=root / "calls.jsonl")
    yield client, root
    client.close()


def test_local_backend_generates_counts_and_caches(local_client):
    client, root = local_client
    m = msg("Name one colour.")
    params = SamplingParams(max_tokens=8, temperature=0.0)
    res = client.chat(m, params)
    assert res.cached is False and res.text.strip()
    assert 1 <= res.completion_tokens <= 8 and res.prompt_tokens > 5
    assert res.model == "SmolLM2-135M-Instruct" and res.finish_reason in ("stop", "length")
    tok = client.backend.tokenizer
    assert res.prompt_tokens == len(tok(client.backend.render_prompt(m), add_special_tokens=False)["input_ids"])
    again = client.chat(m, params)
    assert again.cached is True and again.text == res.text
    assert client.usage()["requests"] == 1 and client.usage()["cached"] == 1
    assert [r["status"] for r in read_jsonl(root / "calls.jsonl")] == ["ok", "cached"]


def test_local_backend_seeded_sampling_reproduces(local_client):
    client, _ = local_client
    m = msg("Say something about rivers.")
    params = SamplingParams(max_tokens=6, temperature=1.0, seed=11)
    # every run the same way, prompts read whole: int4 decoding, the CPU default, may sample other tokens after a
    # prompt read partly from the prefix cache (the chat template's system prompt is shared between requests)
    client.backend.prefix_reuse = False
    try:
        first = client.chat(m, params)
        uncached = type(client)(client.backend, spec=client.spec)  # same loaded model, no cache
        assert uncached.chat(m, params).text == first.text
        assert uncached.concurrency == 1
        out = dict(uncached.chat_many([(m, params), (msg("Hi"), SamplingParams(max_tokens=2, temperature=0.0))]))
        assert out[0].text == first.text and out[1].completion_tokens <= 2
    finally:
        client.backend.prefix_reuse = True


# --- the shared local-model loader (tiny random model) ---------------------------------------------------

TINY = "random:configs/models/tiny-llama"


def test_loader_returns_one_object_per_model():
    import torch

    from longalign.llm.local_model import (
        LocalModel,
        default_local_dtype,
        get_local_model,
        loaded_local_models,
        release_local_models,
    )

    release_local_models(TINY)
    lm = get_local_model(TINY, device="cpu")
    assert isinstance(lm, LocalModel) and lm.device == "cpu" and lm.model.training is False
    assert get_local_model(TINY, device="cpu") is lm
    assert get_local_model(f"random:{Path('configs/models/tiny-llama').resolve()}", device="cpu") is lm
    assert get_local_model(TINY, device="cpu", dtype=default_local_dtype("cpu")) is lm  # the default, spelled out
    half = get_local_model(TINY, device="cpu", dtype=torch.bfloat16)
    assert half is not lm and next(half.model.parameters()).dtype == torch.bfloat16
    assert LocalModel.wrap(lm.model, lm.tokenizer, device="cpu") is lm  # already loaded objects: the cached entry
    assert release_local_models(TINY) == 2 and lm not in loaded_local_models()
    again = get_local_model(TINY, device="cpu")
    assert again is not lm and again in loaded_local_models()
    with pytest.raises(ValueError, match="not a torch dtype"):
        get_local_model(TINY, device="cpu", dtype="float33")


def test_loader_concurrent_first_calls_load_once():
    from concurrent.futures import ThreadPoolExecutor

    from longalign.llm.local_model import get_local_model, release_local_models

    release_local_models(TINY)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: get_local_model(TINY, device="cpu"), range(4)))
    assert all(g is got[0] for g in got)


class _ScriptedLM:
    """A stand-in causal LM whose ``generate`` appends fixed rows (records its inputs)."""

    def __init__(self, new_rows, eos):
        import types

        self.new_rows = new_rows
        self.generation_config = types.SimpleNamespace(eos_token_id=eos)
        self.config = types.SimpleNamespace(max_position_embeddings=64)
        self.calls = []
        self.training = True

    def to(self, device):
        return self

    def eval(self):
        self.training = False
        return self

    def generate(self, input_ids, attention_mask, **kwargs):
        import torch

        self.calls.append((input_ids.tolist(), attention_mask.tolist(), kwargs))
        return torch.cat([input_ids, torch.tensor(self.new_rows, dtype=torch.long)], dim=1)


def test_generate_left_pads_and_cuts_at_the_first_end_of_turn():
    from longalign.llm.local_model import LocalModel, eos_ids_of
    from longalign.models import load_tokenizer

    tok = load_tokenizer(None)  # <|im_end|> = 2 = eos, <|endoftext|> = 0
    assert eos_ids_of(tok) == (2,)
    hi, there = tok.encode("Hi", add_special_tokens=False), tok.encode(" there", add_special_tokens=False)
    fake = _ScriptedLM([hi + [2, 2, 2], hi + there + [0, 0]], eos=[0, 2])  # row 0 stops, row 1 hits eos 0 late
    lm = LocalModel(fake, tok, spec="fake", device="cpu")
    assert lm.eos_ids == (0, 2) and fake.training is False
    out = lm.generate([[5, 6, 7], [8]], max_new_tokens=4, temperature=0.0, seed=1)
    ids, mask, kwargs = fake.calls[0]
    assert ids == [[5, 6, 7], [2, 2, 8]] and mask == [[1, 1, 1], [0, 0, 1]]  # left-padded with the pad id
    assert kwargs["eos_token_id"] == [0, 2] and kwargs["do_sample"] is False and kwargs["max_new_tokens"] == 4
    assert out[0].tokens == hi + [2] and out[0].finish_reason == "stop" and out[0].content_tokens == len(hi)
    assert out[0].text == "Hi" and out[0].prompt_tokens == 3 and out[1].prompt_tokens == 1
    assert out[1].tokens == hi + there + [0] and out[1].text == "Hi there" and out[1].finish_reason == "stop"
    fake.new_rows = [[7, 8]]
    long = lm.generate([[5]], max_new_tokens=2, temperature=0.7, top_p=0.9, top_k=0)[0]
    assert long.finish_reason == "length" and long.tokens == [7, 8] and long.content_tokens == 2
    assert {k: fake.calls[1][2][k] for k in ("do_sample", "temperature", "top_p", "top_k")} == {
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 0,
    }
    lm.generate([[5]], max_new_tokens=2, temperature=0.7)
    assert "top_k" not in fake.calls[2][2]  # None keeps the model's own default


def test_local_backend_on_the_shared_model(tmp_path):
    from longalign.llm.local_model import get_local_model

    client = make_client(f"local:{TINY}", device="cpu", cache_dir=tmp_path / "cache")
    m = msg("Name one colour.")
    res = client.chat(m, SamplingParams(max_tokens=5, temperature=0.0))
    lm = get_local_model(TINY, device="cpu")
    assert client.backend.local_model is lm and client.backend.tokenizer is lm.tokenizer
    assert res.prompt_tokens == len(lm.encode(client.backend.render_prompt(m)))
    assert 1 <= res.completion_tokens <= 5 and res.model == TINY and res.extra["device"] == "cpu"
    sampled = SamplingParams(max_tokens=6, temperature=1.0, seed=3)
    first = client.chat(m, sampled)
    uncached = type(client)(client.backend, spec=client.spec)
    assert uncached.chat(m, sampled).text == first.text  # seeded sampling reproduces
    client.close()
    assert get_local_model(TINY, device="cpu") is lm  # closing a client keeps the shared model


# --- crash safety ---------------------------------------------------------------------------------------

JOB = """
import json, sys
from longalign.llm import make_client, SamplingParams
base_url, root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = make_client("openai:fake-model", base_url=base_url, cache_dir=root + "/cache", calls_log=root + "/calls.jsonl",
                max_in_flight=4, backoff_base=0.01)
reqs = [([{"role": "user", "content": f"doc {i}"}], SamplingParams(max_tokens=8, temperature=0.0)) for i in range(n)]
for i, res in c.chat_many(reqs):
    assert not isinstance(res, Exception), res
print(json.dumps(c.usage()))
"""


def test_sigkill_mid_run_never_pays_twice(fake_llm, tmp_path):
    import subprocess
    import sys

    fake_llm.latency_s = 0.05
    job = tmp_path / "job.py"
    job.write_text(JOB)
    cmd = [sys.executable, str(job), fake_llm.base_url, str(tmp_path), "60"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while sum(r["outcome"] == "ok" for r in fake_llm.requests) < 12 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()  # SIGKILL: no cleanup code runs
    proc.wait()
    assert proc.returncode != 0
    while fake_llm.in_flight and time.monotonic() < deadline:  # let the server log what it had received
        time.sleep(0.01)
    first_run = len(fake_llm.requests)
    params = SamplingParams(max_tokens=8, temperature=0.0)
    request_keys = {
        request_key("openai:fake-model", msg(f"doc {i}"), params): messages_hash(msg(f"doc {i}")) for i in range(60)
    }
    cache = RequestCache(tmp_path / "cache")
    logged = {r["key"] for r in read_jsonl(tmp_path / "calls.jsonl") if r["status"] == "ok"}
    saved = {k for k in request_keys if k in cache}
    assert logged <= saved  # stored before logged: every logged success is in the cache
    assert 8 <= len(saved) < 60 and len(saved) - len(logged) <= 4

    out = subprocess.run(cmd, stdout=subprocess.PIPE, check=True, text=True, timeout=60)
    usage = json.loads(out.stdout.strip().splitlines()[-1])
    assert usage["cached"] == len(saved) and usage["requests"] == 60 - len(saved)
    resent = fake_llm.requests[first_run:]
    # nothing the first run had stored was sent again; server-side a request answered in the instant of
    # the kill may be sent twice (its answer never reached the cache)
    saved_msg_hashes = {request_keys[k] for k in saved}
    assert not saved_msg_hashes & {r["key"] for r in resent}
    assert len(resent) == 60 - len(saved)


# --- prefix reuse ----------------------------------------------------------------------------------------

SHARED_DOC = (
    "Read the following text carefully.\n\n"
    + " ".join(f"Paragraph {i}: the cache keeps entry {i} until the file is rewritten." for i in range(20))
    + "\n\n---\n"
)


def test_prefix_reuse_gives_the_same_greedy_and_seeded_outputs(local_client):
    """Question then answer over one document, as Self-Instruct sends them: with reuse the answer requests start
    from the document's cached prefix and still produce exactly the tokens of a full prefill."""
    client, _ = local_client
    backend = client.backend
    lm = backend.local_model
    q = msg(SHARED_DOC + "Now write five questions about the text above.")
    a = msg(SHARED_DOC + "Answer the question below using the text above.\n\nQuestion: What does the cache keep?")
    greedy, seeded = SamplingParams(max_tokens=8, temperature=0.0), SamplingParams(max_tokens=8, seed=3)
    outs = {}
    for reuse in (False, True):
        backend.prefix_reuse = reuse
        lm.prefix_cache.clear()
        outs[reuse] = [backend.complete(q, greedy), backend.complete(a, greedy), backend.complete(a, seeded)]
    backend.prefix_reuse = True
    plain, reused = outs[False], outs[True]
    assert [r.text for r in plain] == [r.text for r in reused]
    assert [r.completion_tokens for r in plain] == [r.completion_tokens for r in reused]
    assert [r.extra["reused_prompt_tokens"] for r in plain] == [0, 0, 0]
    shared = reused[1].extra["reused_prompt_tokens"]
    assert 200 < shared < reused[1].prompt_tokens  # the document, not the differing tail
    assert reused[2].extra["reused_prompt_tokens"] == reused[2].prompt_tokens - 1  # same prompt: all but one
    assert reused[1].prompt_tokens == plain[1].prompt_tokens  # usage still counts every prompt token


def test_prefix_cache_lookup_crops_a_private_copy_and_evicts_oldest():
    import torch

    from longalign.llm.local_model import PrefixCache, get_local_model

    lm = get_local_model(TINY, device="cpu")
    lm.prefix_cache.clear()
    hits = lm.prefix_cache.hits
    base = list(range(10, 80))
    lm.generate([base + [5, 6, 7]], max_new_tokens=4, reuse_prefix=True)
    cache = lm.prefix_cache
    assert len(cache) == 1 and cache.hits == hits
    n, past = cache.lookup(base + [9, 9])
    assert n == len(base) and past.get_seq_length() == len(base)
    n_full, past_full = cache.lookup(base + [5, 6, 7])  # the whole kept prompt: one token left to read
    assert n_full == len(base) + 2 and past_full.get_seq_length() == len(base) + 2
    assert cache.lookup(list(range(500, 600)))[1] is None  # no shared prefix
    assert cache._entries[0][1].get_seq_length() == len(base) + 3  # the kept cache was not touched
    with torch.inference_mode():
        lm.model(input_ids=torch.tensor([[9, 9]]), cache=past, use_cache=True)
    assert cache._entries[0][1].get_seq_length() == len(base) + 3

    small = PrefixCache(max_entries=2, min_tokens=4)
    for start in (100, 200, 300):
        small.store(list(range(start, start + 8)), lm.prefix_cache.lookup(base + [1])[1])
    assert [e[0][0] for e in small._entries] == [200, 300]  # least recently used dropped first
    assert small.lookup([100, 101, 102, 103, 104])[1] is None and small.lookup(list(range(200, 206)))[0] == 5
    with pytest.raises(ValueError, match="max_entries=0"):
        PrefixCache(max_entries=0)


def test_local_backend_batches_concurrent_requests():
    """With batch_size 4, requests in flight together run in one generate call; greedy rows equal their
    one-at-a-time outputs, requests with other settings wait for a batch of their own, and an error reaches
    every request of its batch."""
    from concurrent.futures import ThreadPoolExecutor

    from longalign.llm.local_backend import LocalBackend

    prompts = [msg(f"Item {i}: " + "word " * (5 + 7 * i)) for i in range(4)]
    greedy = SamplingParams(max_tokens=6, temperature=0.0)
    alone = LocalBackend(TINY, device="cpu")
    expected = [alone.complete(m, greedy).text for m in prompts]
    batched = LocalBackend(TINY, device="cpu", batch_size=4, batch_wait=0.5)
    assert batched.max_concurrency == 4
    client = type(make_client(TINY))(batched, spec="local:" + TINY, max_in_flight=4)
    out = dict(client.chat_many([(m, greedy) for m in prompts]))
    assert [out[i].text for i in range(4)] == expected
    assert max(batched.batches) > 1 and sum(batched.batches) == 4
    assert all(out[i].extra["batch"] >= 1 for i in range(4))

    other = SamplingParams(max_tokens=3, temperature=0.0)
    batched.batches.clear()
    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(batched.complete, m, greedy if i % 2 else other) for i, m in enumerate(prompts)]
        res = [f.result(timeout=60) for f in futs]
    assert sorted(batched.batches) == [2, 2] and all(r.completion_tokens <= 6 for r in res)

    lm = batched.local_model
    real = lm.generate

    def broken(*a, **k):
        raise RuntimeError("generation failed")

    lm.generate = broken
    try:
        with ThreadPoolExecutor(2) as pool:
            futs = [pool.submit(batched.complete, m, greedy) for m in prompts[:2]]
            for f in futs:
                with pytest.raises(RuntimeError, match="generation failed"):
                    f.result(timeout=60)
    finally:
        lm.generate = real
    with pytest.raises(ValueError, match="batch_size=0"):
        LocalBackend(TINY, batch_size=0)


def test_batched_generation_prefills_rows_from_the_prefix_cache():
    """A batch with prefix reuse prefills each prompt alone (from and into the prefix cache) and decodes the rows
    together: greedy rows equal their one-at-a-time outputs, an answer batch over the same documents reads only
    the tails, and the plain left-padded batch agrees."""
    from longalign.llm.local_model import get_local_model

    lm = get_local_model(TINY, device="cpu")
    docs = [list(range(10 + 3 * i, 90 + 5 * i)) for i in range(3)]  # three "documents" of different lengths
    questions = [d + [7, 8, 9] for d in docs]
    answers = [d + [4, 4, 5, 6, 2 + i] for i, d in enumerate(docs)]
    alone = [lm.generate([p], max_new_tokens=6, reuse_prefix=False)[0].tokens for p in questions + answers]

    lm.prefix_cache.clear()
    lm.prefix_cache.max_entries = 6
    before = lm.prefix_cache.reused_tokens
    q_out = lm.generate(questions, max_new_tokens=6, reuse_prefix=True)
    assert lm.prefix_cache.reused_tokens == before and len(lm.prefix_cache) == 3  # rows kept, nothing reused yet
    a_out = lm.generate(answers, max_new_tokens=6, reuse_prefix=True)
    assert lm.prefix_cache.reused_tokens - before == sum(len(d) for d in docs)  # each document read once
    assert [o.tokens for o in q_out + a_out] == alone
    assert [o.prompt_tokens for o in a_out] == [len(p) for p in answers]
    plain = lm.generate(answers, max_new_tokens=6, reuse_prefix=False)
    assert [o.tokens for o in plain] == alone[3:]
    # a one-token prompt cannot be prefilled apart from its last token: the batch runs the plain way
    hits = lm.prefix_cache.hits
    short = lm.generate([[5], questions[0]], max_new_tokens=3, reuse_prefix=True)
    assert lm.prefix_cache.hits == hits and short[1].tokens == alone[0][:3]
    lm.prefix_cache.max_entries = 4


def test_appending_cache_layer_writes_in_place_and_matches_the_plain_cache():
    """The prefix path's cache layers append each step into spare room (no re-concatenation of the history):
    the cached keys equal a plain DynamicLayer's after prefill, decode steps and a crop, the kept views share one
    buffer until it is full, a deep copy is private, and the byte count includes the spare room."""
    import copy

    import torch
    from transformers.cache_utils import DynamicLayer

    from longalign.llm import local_model as lmod

    cls = lmod.appending_layer_class()
    a, p = cls(), DynamicLayer()
    gen = torch.Generator().manual_seed(0)

    def step(n):
        k, v = torch.randn(2, 3, n, 8, generator=gen), torch.randn(2, 3, n, 8, generator=gen)
        ka, va = a.update(k, v)
        kp, vp = p.update(k, v)
        assert torch.equal(ka, kp) and torch.equal(va, vp)

    step(40)
    buf = a._key_store.data_ptr()
    room = a._key_store.shape[-2]
    assert room == 40 + lmod.APPEND_SPARE_TOKENS
    for _ in range(5):
        step(1)
    assert a._key_store.data_ptr() == buf and a.get_seq_length() == 45  # written in place
    a.crop(-10)
    p.crop(-10)
    step(3)  # overwrites the cropped positions
    twin = copy.deepcopy(a)
    assert twin._key_store.data_ptr() != buf and twin.keys.data_ptr() == twin._key_store.data_ptr()
    step(room - a.get_seq_length() + 1)  # past the buffer: a larger one is allocated
    assert a._key_store.data_ptr() != buf and torch.equal(twin.keys, p.keys[..., :38, :])
    a.batch_select_indices(torch.tensor([1]))  # replaced tensors: the next step starts a new buffer from them
    p.batch_select_indices(torch.tensor([1]))
    k, v = torch.randn(1, 3, 2, 8, generator=gen), torch.randn(1, 3, 2, 8, generator=gen)
    assert torch.equal(a.update(k, v)[0], p.update(k, v)[0])

    class Holder:
        layers = [twin]

    assert lmod.cache_nbytes(Holder()) == 2 * 2 * 3 * room * 8 * 4  # keys and values, spare room included


def test_generation_with_the_appending_cache_matches_the_plain_one():
    """Greedy outputs with prefix reuse (appending layers) equal a plain generate (transformers' own cache)."""
    from longalign.llm.local_model import get_local_model

    lm = get_local_model(TINY, device="cpu")
    lm.prefix_cache.clear()
    prompt = list(range(20, 140))
    plain = lm.generate([prompt], max_new_tokens=300, reuse_prefix=False)[0].tokens
    reused = lm.generate([prompt], max_new_tokens=300, reuse_prefix=True)[0].tokens
    assert type(lm.prefix_cache._entries[-1][1].layers[0]).__name__ == "AppendingLayer"
    assert reused == plain and len(plain) > 0
