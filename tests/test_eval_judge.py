"""Judge building blocks: [[rating]] parsing, template filling, example orders, prompt assembly, and the
endpoint judge's retries against the fake HTTP server."""

from __future__ import annotations

import re

import pytest

from longalign.eval.judge import (
    EndpointJudge,
    JudgeRequest,
    JudgeSettings,
    LocalJudge,
    check_judge_spec,
    fill_template,
    is_local_judge,
    make_judge,
    parse_rating,
    template_slots,
)
from longalign.eval.longbench_chat import ChatCase, build_from_template, example_orders, judge_messages
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
        judge = EndpointJudge(client, max_attempts=5)
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
        out = EndpointJudge(client).rate(JudgeRequest([{"role": "user", "content": "rate"}]))
        assert out.score is None and out.attempts == 5 and len(out.replies) == 5
        assert len(fake_llm.requests) == 5
        assert out.prompt_tokens == 5 * (1 + 4)  # usage summed over attempts


TINY = "random:configs/models/tiny-llama"


class TestLocalJudge:
    def test_three_users_share_one_loaded_model(self, tmp_path):
        from longalign.eval.generate import make_generator
        from longalign.llm.local_model import get_local_model

        lm = get_local_model(TINY, device="cpu")
        judge = make_judge(JudgeSettings(spec=f"local:{TINY}"), device="cpu")
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
