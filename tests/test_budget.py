"""The spending cap (``max_cost`` in the prices' unit, ``max_requests``) for Self-Instruct generation and for
judging, against the fake HTTP server: the job stops before a request the cap has no room for, says so,
keeps everything answered (cache and outputs), and a re-run with a higher cap sends only the rest (server
request log). Cached answers never count against the cap."""

from __future__ import annotations

import json

import pytest
from test_data_selfinstruct import FAST, _write_corpus, si_responder
from test_eval_longbench_chat import _cfg, chat_responder, make_fixture

from longalign.cli import main as cli_main
from longalign.data.selfinstruct import GenerateConfig
from longalign.data.selfinstruct.job import generate_long_data
from longalign.eval import longbench_chat
from longalign.llm import Budget, LLMBudgetExceeded, SamplingParams, make_client
from longalign.llm.cache import RequestCache
from longalign.rundir import RunDir, read_jsonl

P = SamplingParams(max_tokens=10, temperature=0.0)


def msgs(i: int, words: int = 5) -> list[dict[str, str]]:
    return [{"role": "user", "content": " ".join([f"w{i}"] * words)}]


def identities(entries: list[dict]) -> list[tuple]:
    """What makes two logged requests the same request (messages hash and sampling settings)."""
    return [(e["key"], e["seed"], e["temperature"], e["max_tokens"], e.get("logprobs")) for e in entries]


def ok_calls(run: RunDir) -> list[dict]:
    return [r for r in read_jsonl(run.llm_calls) if r["status"] == "ok"]


def spent(calls: list[dict], price_in: float, price_out: float) -> float:
    return (
        sum(c["usage"]["prompt_tokens"] * price_in + c["usage"]["completion_tokens"] * price_out for c in calls) / 1e6
    )


# --------------------------------------------------------------------------------------------- the budget
class TestBudget:
    def test_request_cap_is_sticky(self):
        b = Budget(max_requests=2)
        for _ in range(2):
            b.settle(b.acquire(msgs(0), P))
        with pytest.raises(LLMBudgetExceeded, match="request cap reached: 2 request"):
            b.acquire(msgs(0), P)
        assert b.to_dict()["sent"] == 2 and "max_requests=2" in b.to_dict()["stopped"]

    def test_cost_estimate_learns_the_token_ratio(self):
        b = Budget(max_cost=1e3, price_in_per_mtok=1e6, price_out_per_mtok=0.0)  # 1 unit per prompt token
        m = [{"role": "user", "content": "x" * 100}]
        assert b.estimate(m, P) == pytest.approx(50 + 4)  # before any answer: 0.5 tokens per character

        class R:
            prompt_tokens, completion_tokens = 29, 3  # 25 tokens of content + 4 for the message

        b.settle(0.0, R(), m)
        assert b.estimate(m, P) == pytest.approx(25 + 4)

    def test_cost_cap_refuses_what_could_pass_it_and_stays_closed(self):
        b = Budget(max_cost=30.0, price_in_per_mtok=0.0, price_out_per_mtok=1e6)  # 1 unit per completion token
        r1 = b.acquire(msgs(0), SamplingParams(max_tokens=10))
        r2 = b.acquire(msgs(1), SamplingParams(max_tokens=10))
        with pytest.raises(LLMBudgetExceeded, match=r"cost cap reached: spent 0 \(\+20 in flight\)"):
            b.acquire(msgs(2), SamplingParams(max_tokens=11))

        class R:
            prompt_tokens, completion_tokens = 9, 2

        b.settle(r1, R(), msgs(0))
        b.settle(r2, R(), msgs(1))
        assert b.spent == pytest.approx(4.0)
        with pytest.raises(LLMBudgetExceeded):  # closed for good, although 26 units are left now
            b.acquire(msgs(3), SamplingParams(max_tokens=1))

    def test_bad_settings(self):
        with pytest.raises(ValueError, match="needs a price"):
            Budget(max_cost=1.0)
        with pytest.raises(ValueError, match="max_requests must be >= 0"):
            Budget(max_requests=-1)
        with pytest.raises(ValueError, match="needs the prices it is counted in"):
            GenerateConfig(max_cost=2.0)
        with pytest.raises(ValueError, match="minimum|>= 0|at least"):
            GenerateConfig(max_requests=-3)


# --------------------------------------------------------------------------------------------- the client
class TestClientCap:
    @pytest.mark.parametrize("in_flight", [1, 3])
    def test_cap_then_resume_pays_only_for_the_rest(self, fake_llm, tmp_path, in_flight):
        reqs = [(msgs(i), P) for i in range(10)]
        got = {}
        with make_client(
            "openai:fake", base_url=fake_llm.base_url, cache_dir=tmp_path / "c", max_requests=4, max_in_flight=in_flight
        ) as client:
            with pytest.raises(LLMBudgetExceeded, match="max_requests=4"):
                for i, res in client.chat_many(reqs):
                    got[i] = res
            assert client.usage()["budget"]["sent"] == 4
        assert len(fake_llm.requests) == 4 and len(RequestCache(tmp_path / "c")) == 4  # every paid answer kept
        first = identities(fake_llm.requests)
        with make_client(
            "openai:fake", base_url=fake_llm.base_url, cache_dir=tmp_path / "c", max_requests=6, max_in_flight=in_flight
        ) as client:
            answers = dict(client.chat_many(reqs))
            usage = client.usage()
        assert sorted(answers) == list(range(10)) and usage["cached"] == 4 and usage["requests"] == 6
        assert len(fake_llm.requests) == 10 and len(set(identities(fake_llm.requests))) == 10
        assert not set(first) & set(identities(fake_llm.requests)[4:])

    def test_cached_answers_are_free(self, fake_llm, tmp_path):
        with make_client("openai:fake", base_url=fake_llm.base_url, cache_dir=tmp_path / "c") as client:
            for i in range(3):
                client.chat(msgs(i), P)
        with make_client("openai:fake", base_url=fake_llm.base_url, cache_dir=tmp_path / "c", max_requests=0) as c2:
            assert [c2.chat(msgs(i), P).cached for i in range(3)] == [True] * 3
            with pytest.raises(LLMBudgetExceeded):
                c2.chat(msgs(3), P)
        assert len(fake_llm.requests) == 3


# --------------------------------------------------------------------------------------------- generation
GEN = {**FAST, "max_in_flight": 3, "window": 6}


def test_generation_request_cap_stops_then_resumes(fake_llm, tmp_path):
    fake_llm.set_responder(si_responder)
    base = RunDir(tmp_path / "uncapped")
    ids = _write_corpus(base, 6)
    full = generate_long_data(GenerateConfig(base_url=fake_llm.base_url, **GEN), base, progress=False)
    assert full.written == 6 and full.stopped is None
    baseline = identities(fake_llm.requests)
    assert len(baseline) == 12  # questions + answer per document
    fake_llm.reset_log()

    run = RunDir(tmp_path / "run")
    _write_corpus(run, 6)
    cfg = GenerateConfig(base_url=fake_llm.base_url, max_requests=5, **GEN)
    s = generate_long_data(cfg, run, progress=False)
    assert s.stopped and "max_requests=5" in s.stopped and "re-run" in s.stopped and s.exit_code == 1
    assert any("max_requests=5" in line for line in s.lines())
    assert len(fake_llm.requests) == 5 and len(RequestCache(run.llm_cache)) == 5
    assert s.failed == 0 and not read_jsonl(run.failed)  # stopped documents are not failed documents
    assert s.written == len(read_jsonl(run.long)) < 6
    first = identities(fake_llm.requests)

    again = generate_long_data(GenerateConfig(base_url=fake_llm.base_url, max_requests=50, **GEN), run, progress=False)
    assert again.stopped is None and again.exit_code == 0 and again.records_total == 6
    later = identities(fake_llm.requests)[5:]
    assert len(later) == 12 - 5 and not set(first) & set(later)  # only the rest was sent
    assert sorted(first + later) == sorted(baseline)  # and together they are exactly the uncapped job's requests
    assert again.usage["cached"] >= 1 and again.usage["budget"]["sent"] == 7
    strip = lambda r: {k: v for k, v in r.items() if k != "generation"}  # noqa: E731
    assert sorted(map(json.dumps, map(strip, read_jsonl(run.long)))) == sorted(
        map(json.dumps, map(strip, read_jsonl(base.long)))
    )
    assert sorted(r["doc_id"] for r in read_jsonl(run.long)) == ids


def test_generation_cost_cap_stays_under_the_cap(fake_llm, tmp_path):
    fake_llm.set_responder(si_responder)
    run = RunDir(tmp_path / "run")
    _write_corpus(run, 6)
    # prices 1 and 2 per million tokens: a request costs ~0.0003 here and may cost up to ~0.0011 (its prompt
    # plus max_tokens of reply); one request in flight keeps the count deterministic
    cap = 0.002
    cfg = GenerateConfig(base_url=fake_llm.base_url, max_cost=cap, **{**GEN, "max_in_flight": 1})
    s = generate_long_data(cfg, run, progress=False)
    assert s.stopped and "cost cap reached" in s.stopped and f"max_cost={cap:g}" in s.stopped
    paid = ok_calls(run)
    cost = spent(paid, 1.0, 2.0)
    assert 0 < cost <= cap and s.usage["cost"] == pytest.approx(cost)
    assert len(fake_llm.requests) == len(paid) == len(RequestCache(run.llm_cache))
    n_first = len(fake_llm.requests)
    assert 2 <= n_first < 12
    again = generate_long_data(GenerateConfig(base_url=fake_llm.base_url, max_cost=1.0, **GEN), run, progress=False)
    assert again.stopped is None and again.records_total == 6
    assert len(fake_llm.requests) == 12 and len(set(identities(fake_llm.requests))) == 12


def test_generate_cli_prints_the_stop(fake_llm, tmp_path, capsys):
    fake_llm.set_responder(si_responder)
    run = RunDir(tmp_path / "run")
    _write_corpus(run, 3)
    argv = ["data", "generate", "--run", str(run.root), "--llm", "openai:fake-model", "--base-url", fake_llm.base_url]
    argv += ["--max-prompt-tokens", "0", "--max-requests", "3", "--no-progress"]
    assert cli_main(argv) == 1
    out = capsys.readouterr().out
    assert "request cap reached: 3 request(s) sent, max_requests=3" in out and "--max-requests" in out
    assert len(fake_llm.requests) == 3


# --------------------------------------------------------------------------------------------- judging
def test_judging_cap_stops_then_resumes(fake_llm, tmp_path):
    fake_llm.set_responder(chat_responder)
    folder = make_fixture(tmp_path / "lbc")
    longbench_chat.run(_cfg(folder, fake_llm.base_url), tmp_path / "uncapped")
    baseline = identities(fake_llm.requests)
    assert len(baseline) == 4 + 8
    fake_llm.reset_log()

    out = tmp_path / "run"
    edir = out / "eval" / "longbench_chat"
    s = longbench_chat.run(_cfg(folder, fake_llm.base_url, max_requests=3, judge_max_in_flight=2), out)
    # the cap is the judge's: the 4 answers are not counted, 3 judge requests are
    assert len(fake_llm.requests) == 4 + 3 and s.exit_code == 1
    assert "max_requests=3" in s.judging["stopped"] and any(line.startswith("stopped:") for line in s.lines())
    runs = read_jsonl(edir / "judge_runs.jsonl")
    assert len(runs) == 3 and all(r["score"] is not None for r in runs)
    assert any("judged so far" in n for n in s.scores["notes"])
    first = identities(fake_llm.requests)

    s2 = longbench_chat.run(_cfg(folder, fake_llm.base_url, max_requests=20), out)
    assert s2.exit_code == 0 and s2.judging.get("stopped") is None and s2.scores["n"] == 4
    later = identities(fake_llm.requests)[len(first) :]
    assert len(later) == 8 - 3 and not set(first) & set(later)
    assert sorted(first + later) == sorted(baseline)


def test_judging_cost_cap(fake_llm, tmp_path):
    fake_llm.set_responder(chat_responder)
    folder = make_fixture(tmp_path / "lbc")
    prices = dict(price_in_per_mtok=10.0, price_out_per_mtok=30.0, judge_max_tokens=16)
    longbench_chat.run(_cfg(folder, fake_llm.base_url, **prices), tmp_path / "uncapped")
    full = spent([c for c in ok_calls(RunDir(tmp_path / "uncapped")) if c["model"] == "judge-x"], 10.0, 30.0)
    fake_llm.reset_log()
    out = tmp_path / "run"
    cap = round(full / 2, 6)  # half of what judging everything costs
    s = longbench_chat.run(_cfg(folder, fake_llm.base_url, max_cost=cap, **prices), out)
    assert "cost cap reached" in s.judging["stopped"] and s.exit_code == 1
    judge_calls = [c for c in ok_calls(RunDir(out)) if c["model"] == "judge-x"]
    assert 0 < len(judge_calls) < 8 and spent(judge_calls, 10.0, 30.0) <= cap
    n_first = len(fake_llm.requests)
    s2 = longbench_chat.run(_cfg(folder, fake_llm.base_url, max_cost=cap * 4, **prices), out)
    assert s2.exit_code == 0 and s2.scores["n"] == 4 and len(fake_llm.requests) == 4 + 8 > n_first


def test_longbench_judging_cap_and_a_judge_that_cannot_rate(fake_llm, tmp_path):
    from test_eval_longbench import write_fixture

    from longalign.eval import longbench
    from longalign.eval.longbench import LongBenchConfig

    unrated = {"on": False}

    def responder(req):
        if req["model"] == "judge":
            return "A fair answer." if unrated["on"] else "Rating: [[2]]"
        return "An answer."

    fake_llm.set_responder(responder)
    fake_llm.logprobs = False
    folder = write_fixture(tmp_path / "lb")

    def cfg(**kw):
        return LongBenchConfig(
            data=str(folder),
            tasks=["hotpotqa", "qasper", "gov_report"],
            model="openai:m",
            model_base_url=fake_llm.base_url,
            judge="openai:judge",
            judge_base_url=fake_llm.base_url,
            progress=False,
            **kw,
        )

    s = longbench.run(cfg(max_requests=4), tmp_path / "run")
    jpath = tmp_path / "run" / "eval" / "longbench" / "judgments.jsonl"
    assert s.exit_code == 1 and "max_requests=4" in s.stopped and len(read_jsonl(jpath)) == 4
    assert any(line.startswith("stopped:") for line in s.lines())
    s = longbench.run(cfg(), tmp_path / "run")
    n = len(read_jsonl(tmp_path / "run" / "eval" / "longbench" / "predictions.jsonl"))
    assert n == 5 and s.exit_code == 0 and s.stopped is None and len(read_jsonl(jpath)) == n

    unrated["on"] = True  # another run folder, a judge that never writes [[N]] on a server without logprobs
    n0 = len(fake_llm.requests)
    s = longbench.run(cfg(judge_max_attempts=2, judge_give_up_after=2), tmp_path / "run2")
    assert s.exit_code == 1 and "gave no rating for any of the first 2 case(s)" in s.stopped
    assert len(read_jsonl(tmp_path / "run2" / "eval" / "longbench" / "judgments.jsonl")) == 2
    judge_reqs = [r for r in fake_llm.requests[n0:] if r["model"] == "judge"]
    assert len(judge_reqs) == 2 * (2 + 1)  # two cases x (2 text attempts + 1 logprob request), then the stop
