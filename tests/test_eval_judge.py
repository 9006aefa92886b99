"""Judge building blocks: [[rating]] parsing, template filling, example orders, prompt assembly, the
endpoint judge's retries, its logprob scoring after a forced ``[[`` and its early stop against the fake
HTTP server (which serves ``top_logprobs`` in the shape vLLM and llama.cpp use), and a SIGKILL mid-judging."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from fake_llm_server import longbench_chat_cli, rating_distribution, start_server_process

from longalign.eval.judge import (
    EndpointJudge,
    JudgeCannotRate,
    JudgeRequest,
    LocalJudge,
    check_judge_spec,
    fill_template,
    is_local_judge,
    make_judge,
    parse_rating,
    rating_from_logprobs,
    template_slots,
)
from longalign.eval.longbench_chat import ChatCase, build_from_template, example_orders, judge_messages
from longalign.eval.options import JudgeOptions
from longalign.llm import make_client


class TestParseRating:
    @pytest.mark.parametrize(
        "reply, expected",
        [
            ("Rating: [[7]]", 7.0),
            ("[[3]] at first, but on reflection [[8]]", 8.0),  # the LAST bracket counts
            ("Solid answer. [[7.5]]", 7.5),  # decimals
            ("[[ 9 ]]", 9.0),
            ("[[8/10]]", 8.0),  # first number inside the last bracket
            ("评分：[[6]]。回答基本正确。", 6.0),  # Chinese text around it
            ("评分：［［９］］", 9.0),  # full-width brackets and digits
            ("Rating: [[10]]", 10.0),
        ],
    )
    def test_parses(self, reply, expected):
        assert parse_rating(reply) == expected

    @pytest.mark.parametrize(
        "reply",
        [
            "",
            None,
            "I would give it a 7.",
            "Rating: [9]",
            "Rating: **8**",
            '[[7]] ... following the required "[[rating]]" format',  # last bracket has no number
            "[[11]]",
            "[[0]]",
            "[[-3]]",
        ],
    )
    def test_none(self, reply):
        assert parse_rating(reply) is None

    def test_range_is_configurable(self):
        assert parse_rating("[[3]]", 1, 3) == 3.0
        assert parse_rating("[[4]]", 1, 3) is None
        assert parse_rating("[[5]]", 1, 5) == 5.0


class TestFillTemplate:
    def test_positional_and_named(self):
        assert fill_template("{} and {}", ["a", "b"]) == "a and b"
        assert fill_template("{x}-{0}", ["p"], {"x": "q"}) == "q-p"

    def test_values_are_not_rescanned_and_escapes(self):
        assert fill_template("{} {{literal}}", ["{not a slot}"]) == "{not a slot} {literal}"

    def test_errors_name_the_source(self):
        with pytest.raises(ValueError, match="prompt.txt"):
            fill_template("{} {} {}", ["a"], source="prompt.txt")
        with pytest.raises(ValueError, match="unknown slot"):
            fill_template("{nope}", [], {"x": 1})

    def test_slots(self):
        assert template_slots("{} x {} {name} {{no}}") == (2, {"name"})


def test_check_judge_spec():
    check_judge_spec("openai:gpt-4o")
    check_judge_spec("local:smollm2")
    with pytest.raises(ValueError, match="openai:<model>"):
        check_judge_spec("gpt-4o")


def test_judge_spec_edge_cases():
    check_judge_spec("local:")  # the embedded default
    check_judge_spec("local:random:configs/models/tiny-llama")
    for bad, why in (
        ("smollm2", "names no LLM backend"),
        ("random:configs/models/tiny-llama", "names no LLM backend"),
        ("", "names no LLM backend"),
        ("anthropic:claude", "unknown LLM backend"),
        ("openai:", "needs a model name"),
    ):
        with pytest.raises(ValueError, match=why):
            check_judge_spec(bad)
    assert is_local_judge("local:smollm2") and not is_local_judge("openai:gpt-4o") and not is_local_judge("")


CASE = ChatCase(
    idx=3,
    prompt="LONG DOC ... Q?",
    query="What did the memo decide?",
    answer="It approved the budget.",
    lang="en",
    examples=[
        {"answer": "ANSWER-A approves", "score": 2},
        {"answer": "ANSWER-B budget", "score": 6},
        {"answer": "ANSWER-C approved budget", "score": 9},
    ],
)


class TestPromptAssembly:
    def test_orders_differ_per_run_and_are_seeded(self):
        runs = example_orders(3, 2, seed=0, idx=3)
        assert runs[0] != runs[1]
        assert sorted(runs[0]) == sorted(runs[1]) == [0, 1, 2]
        assert example_orders(3, 2, seed=0, idx=3) == runs  # same seed, same orders
        six = example_orders(3, 6, seed=0, idx=3)
        assert len({tuple(o) for o in six}) == 6  # all permutations before repeating
        many = {tuple(tuple(o) for o in example_orders(3, 2, seed=s, idx=3)) for s in range(20)}
        assert len(many) > 5  # the seed changes the shuffle
        assert example_orders(3, 2, 0, 3, shuffle=False) == [[0, 1, 2], [0, 1, 2]]

    def test_three_examples_in_the_given_order(self):
        msgs = judge_messages(CASE, "PREDICTION-X", [2, 0, 1])
        assert [m["role"] for m in msgs] == ["system", "user"]
        user = msgs[1]["content"]
        pos = [
            user.index(s)
            for s in (
                "What did the memo decide?",
                "It approved the budget.",
                "ANSWER-C",
                "ANSWER-A",
                "ANSWER-B",
                "PREDICTION-X",
            )
        ]
        assert pos == sorted(pos)  # question, reference, C, A, B, answer
        assert re.findall(r"Rating: \[\[(\d+)\]\]", user) == ["9", "2", "6"]  # scores travel with their answers
        assert "[[rating]]" in user

    def test_benchmark_template_positional(self):
        tpl = "Q: {}\nRef: {}\n" + "A: {}\nRating: [[{}]]\n" * 3 + "Rate: {}\nRating: "
        text = build_from_template(tpl, CASE.query, CASE.answer, [CASE.examples[i] for i in (1, 2, 0)], "PRED")
        assert text == (
            "Q: What did the memo decide?\nRef: It approved the budget.\n"
            "A: ANSWER-B budget\nRating: [[6]]\nA: ANSWER-C approved budget\nRating: [[9]]\n"
            "A: ANSWER-A approves\nRating: [[2]]\nRate: PRED\nRating: "
        )

    def test_benchmark_template_named_and_wrong_slot_count(self):
        text = build_from_template("{question}|{prediction}|{score_2}|{answer_1}", "q", "r", CASE.examples, "p")
        assert text == "q|p|6|ANSWER-A approves"
        with pytest.raises(ValueError, match="expected 9"):
            build_from_template("{} {}", "q", "r", CASE.examples, "p")


class TestEndpointJudge:
    def test_retries_until_a_rating_parses(self, fake_llm):
        calls = {}

        def responder(req):
            key = req["messages"][-1]["content"]
            calls[key] = calls.get(key, 0) + 1
            return "Looks fine overall." if calls[key] < 3 else "Good. Rating: [[8]]"

        fake_llm.set_responder(responder)
        client = make_client("openai:fake-judge", base_url=fake_llm.base_url, max_retries=0)
        judge = EndpointJudge(client, JudgeOptions(judge_max_attempts=5, judge_logprobs="off"))
        out = judge.rate(JudgeRequest([{"role": "user", "content": "rate this"}], seed=0))
        assert out.score == 8.0 and out.attempts == 3
        assert out.replies == ["Looks fine overall.", "Looks fine overall.", "Good. Rating: [[8]]"]
        assert len(fake_llm.requests) == 3
        seeds = [r["seed"] for r in fake_llm.requests]
        assert len(set(seeds)) == 3  # each retry is a new request
        assert fake_llm.requests[0]["temperature"] == 0.0 and fake_llm.requests[1]["temperature"] > 0

    def test_gives_up_after_five(self, fake_llm):
        fake_llm.set_responder(lambda req: "No rating from me.")
        client = make_client("openai:fake-judge", base_url=fake_llm.base_url, max_retries=0)
        out = EndpointJudge(client, JudgeOptions(judge_logprobs="off")).rate(
            JudgeRequest([{"role": "user", "content": "rate"}])
        )
        assert out.score is None and out.attempts == 5 and len(out.replies) == 5
        assert len(fake_llm.requests) == 5
        assert out.prompt_tokens == 5 * (1 + 4)  # usage summed over attempts


TINY = "random:configs/models/tiny-llama"


class TestLocalJudge:
    def test_three_users_share_one_loaded_model(self, tmp_path):
        from longalign.eval.generate import make_generator
        from longalign.llm.local_model import get_local_model

        lm = get_local_model(TINY, device="cpu")
        judge = make_judge(JudgeOptions(judge=f"local:{TINY}"), device="cpu")
        gen = make_generator(f"local:{TINY}", device="cpu")
        client = make_client(f"local:{TINY}", device="cpu", cache_dir=tmp_path)
        assert isinstance(judge, LocalJudge) and judge.lm is gen.lm is client.backend.local_model is lm
        assert judge.name == f"local:{TINY}" and judge.max_length == 4096 - 8
        given = LocalJudge(None, model=gen.model, tokenizer=gen.tokenizer, device="cpu")  # objects already loaded
        assert given.lm is lm

    def test_distribution_matches_full_forward_passes(self):
        import math

        import torch

        judge = LocalJudge(f"local:{TINY}", device="cpu")
        msgs = [{"role": "user", "content": "Rate this answer: blue."}]
        dist, mass, n_prompt, truncated = judge.rating_distribution(msgs, range(1, 11))
        text, prefix, _ = judge.prompt_ids(msgs)
        assert text.endswith("[[") and n_prompt == len(prefix) and truncated is False
        naive = {}
        with torch.no_grad():
            for r in range(1, 11):
                full = judge.lm.encode(text + f"{r}]]")
                cont = full[len(prefix) :]
                logits = judge.model(input_ids=torch.tensor([full])).logits[0].float()
                lp = torch.log_softmax(logits, dim=-1)
                naive[r] = sum(float(lp[len(prefix) - 1 + k, t]) for k, t in enumerate(cont))
        z = sum(math.exp(v) for v in naive.values())
        assert math.isclose(mass, z, rel_tol=1e-3)
        for r, p in dist.items():
            assert math.isclose(p, math.exp(naive[r]) / z, rel_tol=1e-3, abs_tol=1e-7)
        out = judge.rate(JudgeRequest(msgs, 1, 10))
        assert out.reply == f"[[{out.extra['argmax']}]]" and 1 <= out.score <= 10

    def test_continuation_logprobs_checks_its_input(self):
        from longalign.llm.local_model import get_local_model

        lm = get_local_model(TINY, device="cpu")
        with pytest.raises(ValueError, match="at least one token"):
            lm.continuation_logprobs([1, 2, 3], [[4], []])
        with pytest.raises(ValueError, match="non-empty prefix"):
            lm.continuation_logprobs([], [[4]])

    def test_endpoint_spec_is_refused(self):
        with pytest.raises(ValueError, match="make_judge"):
            LocalJudge("openai:gpt-4o")


# --- endpoint logprob scoring ------------------------------------------------------------------------------
L = math.log


def pos(token, *alts):
    return {"token": token, "logprob": next((lp for t, lp in alts if t == token), None), "top": [list(a) for a in alts]}


class TestRatingFromLogprobs:
    def test_continued_prefix_splits_one_and_ten(self):
        positions = [
            pos("1", ("1", L(0.5)), ("9", L(0.3)), ("8", L(0.2))),
            pos("0", ("0", L(0.6)), ("]]", L(0.4))),
            pos("]]", ("]]", L(0.99))),
        ]
        dist, mass, start = rating_from_logprobs(positions, 1, 10)
        assert start == 0 and mass == pytest.approx(1.0)
        assert dist == pytest.approx({1: 0.2, 8: 0.2, 9: 0.3, 10: 0.3})

    def test_rating_after_the_replys_own_brackets(self):
        toks = ["The", " rating", " is", " [[", "7", "]]"]
        positions = [pos(t, (t, L(0.9))) for t in toks]
        positions[4] = pos("7", ("7", L(0.6)), ("8", L(0.2)), (" the", L(0.1)))
        dist, mass, start = rating_from_logprobs(positions, 1, 10)
        assert start == 4 and mass == pytest.approx(0.8)
        assert dist == pytest.approx({7: 0.75, 8: 0.25})

    def test_merged_and_spaced_tokens_and_range(self):
        positions = [pos(" 4", (" 4", L(0.5)), ("5]]", L(0.3)), ("0", L(0.1)), ("12", L(0.1)))]
        dist, mass, _ = rating_from_logprobs(positions, 1, 10)
        assert dist == pytest.approx({4: 0.625, 5: 0.375}) and mass == pytest.approx(0.8)
        dist, _, _ = rating_from_logprobs(positions, 1, 4)  # a 1-4 scale
        assert dist == {4: 1.0}

    def test_a_completions_continuation_is_read_whatever_the_model_wrote(self):
        # what the embedded 135M model does after a forced "[[": it echoes the instructions' "[[N]]"
        positions = [pos("N", ("N", L(0.5)), ("1", L(0.1)), ("7", L(0.3))), pos("]]", ("]]", L(0.9)))]
        assert rating_from_logprobs(positions, 1, 10) is None
        dist, mass, start = rating_from_logprobs(positions, 1, 10, continued=True)
        assert start == 0 and mass == pytest.approx(0.4) and dist == pytest.approx({1: 0.25, 7: 0.75})

    @pytest.mark.parametrize(
        "positions",
        [
            None,
            [],
            [pos("Good", ("Good", L(0.9)), ("Fine", L(0.1)))],  # no [[ and no digit: the prefill was not continued
            [pos("[[", ("[[", 0.0)), pos("x", ("x", L(0.9)), ("y", L(0.1)))],  # no rating token in the top-k
            [pos("1", ("1", L(0.9)), ("2", L(0.1))), pos(".", (".", L(0.9))), pos(" The", (" The", L(0.9)))],  # a list
        ],
    )
    def test_none(self, positions):
        assert rating_from_logprobs(positions, 1, 10) is None


def expected_from_server(messages, mode="expected"):
    """What logprob scoring must give against the fake server: its rating distribution, except that without
    the greedy path through "1" the mass of 10 cannot be told from that of 1 (both start with the token "1")."""
    dist = dict(rating_distribution(messages))
    best = max(dist, key=lambda r: dist[r])
    if best not in (1, 10):
        dist[1] += dist.pop(10)
    if mode == "argmax":
        return float(best)
    return round(sum(r * p for r, p in dist.items()), 4)


def judge_requests(n):
    return [JudgeRequest([{"role": "user", "content": f"Rate answer number {i}, please."}], seed=i) for i in range(n)]


class TestEndpointLogprobs:
    def client(self, server, **kw):
        return make_client("openai:judge-x", base_url=server.base_url, max_retries=0, **kw)

    def test_scores_every_case_where_parsing_scores_none(self, fake_llm):
        fake_llm.set_responder("unrated")
        reqs = judge_requests(8)
        parsed = dict(
            EndpointJudge(
                self.client(fake_llm), JudgeOptions(judge_logprobs="off", judge_max_attempts=2, judge_give_up_after=0)
            ).rate_many(reqs)
        )
        assert all(o.score is None for o in parsed.values()) and len(fake_llm.requests) == 16
        fake_llm.reset_log()
        outs = dict(EndpointJudge(self.client(fake_llm), JudgeOptions(judge_max_attempts=2)).rate_many(reqs))
        assert sorted(outs) == list(range(8))
        peaks = set()
        for i, o in outs.items():
            assert o.score == pytest.approx(expected_from_server(reqs[i].messages), abs=2e-4)
            assert o.extra["scored_by"] == "logprobs" and o.reply.startswith("[[") and o.attempts == 2
            assert o.extra["argmax"] == expected_from_server(reqs[i].messages, "argmax")
            peaks.add(o.extra["argmax"])
        assert len(peaks) > 2  # the prompts really differ in rating
        lp = [r for r in fake_llm.requests if r["logprobs"]]
        assert len(fake_llm.requests) == 16 and len(lp) == 8  # one text reply, then one logprob request per case
        assert all(r["logprobs"] == 20 and r["prefill"] and r["temperature"] == 0.0 for r in lp)

    def test_first_mode_argmax_and_the_completions_shape(self, fake_llm):
        fake_llm.set_responder("unrated")
        fake_llm.logprobs_shape = "completions"
        reqs = judge_requests(5)
        judge = EndpointJudge(
            self.client(fake_llm), JudgeOptions(judge_logprobs="first", local_score="argmax", judge_top_logprobs=3)
        )
        outs = dict(judge.rate_many(reqs))
        assert [outs[i].score for i in range(5)] == [expected_from_server(r.messages, "argmax") for r in reqs]
        assert len(fake_llm.requests) == 5 and all(r["logprobs"] == 3 for r in fake_llm.requests)

    def test_llamacpp_prefill_without_the_vllm_switch(self, fake_llm):
        fake_llm.set_responder("unrated")
        fake_llm.prefill = "llamacpp"
        req = judge_requests(1)[0]
        out = EndpointJudge(self.client(fake_llm), JudgeOptions(judge_logprobs="first")).rate(req)
        assert out.score == pytest.approx(expected_from_server(req.messages), abs=2e-4)

    def test_completions_prefill_renders_the_judges_chat_template(self, fake_llm):
        from longalign.llm.local_model import render_chat
        from longalign.models import load_tokenizer

        tok = load_tokenizer(None)
        fake_llm.set_responder("unrated")
        fake_llm.prefill = "none"  # like llama-cpp-python: a final assistant message is not continued
        reqs = judge_requests(4)
        chat_judge = EndpointJudge(
            self.client(fake_llm), JudgeOptions(judge_logprobs="first", judge_max_attempts=1, judge_give_up_after=0)
        )
        chat = dict(chat_judge.rate_many(reqs))
        assert all(o.score is None for o in chat.values())
        fake_llm.reset_log()
        judge = EndpointJudge(
            self.client(fake_llm), JudgeOptions(judge_logprobs="first", judge_prefill="completions"), tokenizer=tok
        )
        outs = dict(judge.rate_many(reqs))
        for i, o in outs.items():
            prompt = render_chat(tok, reqs[i].messages)
            assert prompt.endswith("<|im_start|>assistant\n")
            assert o.score == pytest.approx(expected_from_server(prompt), abs=2e-4)
            assert o.extra["scored_by"] == "logprobs"
        assert len(fake_llm.requests) == 4 and all(r["prefill"] and r["logprobs"] == 20 for r in fake_llm.requests)

    def test_text_rating_needs_no_logprob_request(self, fake_llm):
        fake_llm.set_responder("judge")
        outs = dict(EndpointJudge(self.client(fake_llm)).rate_many(judge_requests(4)))
        assert all(o.extra["scored_by"] == "text" for o in outs.values())
        assert len(fake_llm.requests) == 4 and not any(r["logprobs"] for r in fake_llm.requests)

    def test_gives_up_early_without_logprobs(self, fake_llm):
        fake_llm.set_responder("unrated")
        fake_llm.logprobs = False  # a server that ignores logprobs
        got = []
        judge = EndpointJudge(self.client(fake_llm), JudgeOptions(judge_give_up_after=3))
        with pytest.raises(JudgeCannotRate) as err:
            for i, o in judge.rate_many(judge_requests(20)):
                got.append((i, o.score))
        assert sorted(got) == [(0, None), (1, None), (2, None)]  # the first three are reported before the stop
        # 3 cases x (5 text attempts + 1 logprob request asked in the same round), nothing for the other 17
        assert len(fake_llm.requests) == 18
        msg = str(err.value)
        assert "first 3 case(s)" in msg and "returned no logprobs" in msg and "--judge-give-up-after 0" in msg
        assert judge.logprobs_unavailable == "the endpoint returned no logprobs"

    def test_gives_up_when_the_prefill_is_ignored(self, fake_llm):
        fake_llm.set_responder("unrated")
        fake_llm.prefill = "none"  # logprobs come back, but for a fresh reply without any rating
        with pytest.raises(JudgeCannotRate, match="did not continue the prefilled"):
            list(
                EndpointJudge(
                    self.client(fake_llm), JudgeOptions(judge_give_up_after=2, judge_max_attempts=1)
                ).rate_many(judge_requests(5))
            )
        assert len(fake_llm.requests) == 2 * 2

    def test_a_rating_in_the_probe_keeps_judging(self, fake_llm):
        fake_llm.logprobs = False
        fake_llm.set_responder(lambda req: "Rating: [[6]]" if "number 1," in req["messages"][0]["content"] else "ok")
        outs = dict(
            EndpointJudge(self.client(fake_llm), JudgeOptions(judge_give_up_after=3, judge_max_attempts=1)).rate_many(
                judge_requests(6)
            )
        )
        assert sorted(outs) == list(range(6)) and outs[1].score == 6.0
        assert sum(o.score is None for o in outs.values()) == 5

    def test_options_reach_the_judge_and_its_client(self, fake_llm):
        from longalign.eval.longbench import LongBenchConfig
        from longalign.eval.needle import NeedleConfig

        cfg = LongBenchConfig(
            judge="openai:judge-x",
            judge_base_url=fake_llm.base_url,
            judge_max_in_flight=3,
            judge_logprobs="first",
            judge_top_logprobs=5,
            judge_give_up_after=0,
            local_score="argmax",
            price_in_per_mtok=2.0,
            max_requests=7,
        )
        judge = make_judge(cfg)
        assert judge.options is cfg and judge.name == "openai:judge-x"
        client = judge.client
        assert (client.max_in_flight, client.price_in, client.price_out, client.budget.max_requests) == (
            3,
            2.0,
            None,
            7,
        )
        assert client.backend.base_url == fake_llm.base_url
        fake_llm.set_responder("unrated")
        out = judge.rate(judge_requests(1)[0])
        assert out.extra["scored_by"] == "logprobs" and out.extra["score_mode"] == "argmax"
        assert [r["logprobs"] for r in fake_llm.requests] == [5]  # logprobs first, top 5 asked for
        unpriced = make_judge(NeedleConfig(judge="openai:judge-x", judge_base_url=fake_llm.base_url))
        assert unpriced.client.price_in is None and not unpriced.client.budget.active
        assert unpriced.client.max_in_flight == 4  # the judge group's default
        opts = JudgeOptions()
        opts.judge_logprobs = "sometimes"  # changed after it was built
        with pytest.raises(ValueError, match="judge_logprobs"):
            EndpointJudge(client, opts)


HERE = Path(__file__).resolve()


def unrated_chat_responder(req: dict) -> str:
    """The model under test answers; the judge never writes [[N]] (rated only through logprobs)."""
    if req.get("model", "").startswith("judge"):
        return "A reasonable answer, though brief."
    return "Model answer: " + req["messages"][-1]["content"].strip().splitlines()[-1][:40]


def _ok_keys(calls_log: Path) -> list[str]:
    if not calls_log.is_file():
        return []
    lines = [json.loads(x) for x in calls_log.read_text().splitlines() if x.strip()]
    return [r["key"] for r in lines if r["status"] == "ok"]


@pytest.mark.slow
def test_sigkill_mid_logprob_judging_loses_nothing_and_rejudges_nothing(tmp_path):
    from test_eval_longbench_chat import make_fixture

    from longalign.rundir import read_jsonl

    folder = make_fixture(tmp_path / "lbc")
    log_path = tmp_path / "server.jsonl"
    server, url = start_server_process(
        tmp_path, responder=f"{HERE}:unrated_chat_responder", latency=0.2, log_path=log_path
    )
    out = tmp_path / "run"
    edir = out / "eval" / "longbench_chat"
    calls = out / "data" / "llm_calls.jsonl"
    env = {**os.environ, "OPENAI_API_KEY": "test", "OMP_NUM_THREADS": "1"}
    cmd = longbench_chat_cli(folder, out, url, "--judge-max-attempts", "2")
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(read_jsonl(edir / "judge_runs.jsonl")) < 3 and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, proc.stdout.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before_runs = read_jsonl(edir / "judge_runs.jsonl")
        assert 3 <= len(before_runs) < 8
        paid_before = _ok_keys(calls)
        n_server_before = len(read_jsonl(log_path))
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)
    runs = read_jsonl(edir / "judge_runs.jsonl")
    assert sorted((r["idx"], r["run"]) for r in runs) == [(i, r) for i in range(1, 5) for r in range(2)]
    assert runs[: len(before_runs)] == before_runs  # nothing lost or rewritten
    assert all(r["score"] is not None and r["scored_by"] == "logprobs" for r in runs)
    paid_after = _ok_keys(calls)[len(paid_before) :]
    assert not set(paid_before) & set(paid_after)  # no answered request paid again
    server_log = read_jsonl(log_path)
    # 4 answers + 8 judge runs x (1 text reply + 1 logprob request); at most the one request in flight at the
    # kill (answered by the server, never received) is sent twice
    assert 20 <= len(server_log) <= 21 and n_server_before < len(server_log)
    ids = [(e["key"], e["seed"], e["logprobs"], e["max_tokens"]) for e in server_log]
    assert len(ids) - len(set(ids)) <= 1
    summary = json.loads((edir / "summary.json").read_text())
    assert summary["n"] == 4 and summary["n_scored"] == 4 and summary["unparsed"] == 0
