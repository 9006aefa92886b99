"""Middle truncation (exact token counts at the boundary with the embedded tokenizer) and the resumable
prediction runner."""

from __future__ import annotations

import pytest

from longalign.eval.generate import (
    Generation,
    PredictionTask,
    load_counting_tokenizer,
    middle_truncate,
    run_predictions,
    truncate_text,
)
from longalign.llm.base import SamplingParams
from longalign.rundir import read_jsonl

PROMPT = "start " + "alpha beta gamma delta " * 24 + "finish"


@pytest.fixture(scope="module")
def tok():
    from longalign.models import load_tokenizer

    return load_tokenizer(None)


class TestMiddleTruncate:
    def test_ids(self):
        ids = list(range(10))
        assert middle_truncate(ids, 10) == (ids, False)
        assert middle_truncate(ids, 11) == (ids, False)
        assert middle_truncate(ids, 9) == ([0, 1, 2, 3, 6, 7, 8, 9], True)  # odd: two halves of 4
        assert middle_truncate(ids, 8) == ([0, 1, 2, 3, 6, 7, 8, 9], True)
        assert middle_truncate(ids, 4) == ([0, 1, 8, 9], True)
        with pytest.raises(ValueError):
            middle_truncate(ids, 0)

    def test_known_prompt_token_counts(self, tok):
        ids = tok.encode(PROMPT, add_special_tokens=False)
        assert len(ids) == 98  # start + 24 x 4 words + finish
        at = truncate_text(tok, PROMPT, 98)  # exactly at the limit: untouched
        assert (at.truncated, at.n_tokens, at.text) == (False, 98, PROMPT)
        over = truncate_text(tok, PROMPT, 97)  # one over: halves of 48
        assert (over.truncated, over.n_tokens_raw, over.n_tokens) == (True, 98, 96)
        assert tok.encode(over.text, add_special_tokens=False) == ids[:48] + ids[-48:]
        cut = truncate_text(tok, PROMPT, 20)
        assert cut.n_tokens == 20
        assert cut.text == (
            "start alpha beta gamma delta alpha beta gamma delta alpha"  # first 10
            " delta alpha beta gamma delta alpha beta gamma delta finish"
        )  # last 10
        assert len(tok.encode(cut.text, add_special_tokens=False)) == 20

    def test_chat_template_is_applied_after_truncation(self, tok):
        from longalign.eval.generate import build_messages
        from longalign.llm.local_model import render_chat

        cut = truncate_text(tok, PROMPT, 20)
        templ = render_chat(tok, build_messages(cut.text))
        n_templ = len(tok.encode(templ, add_special_tokens=False))
        assert n_templ > 20 and "<|im_start|>user\n" + cut.text + "<|im_end|>" in templ

    def test_counting_tokenizer_matches(self, tok):
        light = load_counting_tokenizer(None)
        assert light.encode(PROMPT) == tok.encode(PROMPT, add_special_tokens=False)
        assert truncate_text(light, PROMPT, 20).text == truncate_text(tok, PROMPT, 20).text


class _EchoGen:
    """A stand-in generator that records what it was asked (the real ones need a model or a server)."""

    kind = "local"
    name = "echo"
    max_positions = None

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls = []

    def generate(self, batch, params):
        self.calls.append(len(batch))
        return [Generation(m[-1]["content"][-12:], 7, 3, "stop") for m in batch]


def test_run_predictions_resumes_and_records(tmp_path):
    tok = load_counting_tokenizer(None)
    gen = _EchoGen(tok)
    tasks = [
        PredictionTask(i, f"question {i} " + "alpha beta gamma delta " * i, None, {"lang": "en"}) for i in range(5)
    ]
    out = tmp_path / "p.jsonl"
    params = SamplingParams(max_tokens=16, temperature=0.0, seed=42)
    stats = run_predictions(tasks[:3], gen, out, max_length=12, params=params, batch_size=2)
    assert stats == {"done_before": 0, "generated": 3} and gen.calls == [2, 1]
    stats = run_predictions(tasks, gen, out, max_length=12, params=params, batch_size=2)
    assert stats == {"done_before": 3, "generated": 2}
    recs = read_jsonl(out)
    assert sorted(r["idx"] for r in recs) == [0, 1, 2, 3, 4]
    r4 = next(r for r in recs if r["idx"] == 4)
    assert r4["truncated"] is True and r4["prompt_tokens"] == 12 and r4["max_length"] == 12
    assert r4["sampling"]["seed"] == 42 and r4["sampling"]["temperature"] == 0.0 and r4["lang"] == "en"
    r0 = next(r for r in recs if r["idx"] == 0)
    assert r0["truncated"] is False and r0["prompt_tokens"] == r0["prompt_tokens_raw"]


TINY = "random:configs/models/tiny-llama"


class TestLocalGenerator:
    def test_shares_the_loaded_model_and_counts_tokens(self):
        from longalign.eval.generate import LocalGenerator, build_messages, make_generator
        from longalign.llm.local_model import get_local_model

        gen = LocalGenerator(f"local:{TINY}", device="cpu")
        lm = get_local_model(TINY, device="cpu")
        assert gen.lm is lm and gen.model is lm.model and gen.tokenizer is lm.tokenizer and gen.max_positions == 4096
        assert make_generator(TINY, device="cpu").lm is lm  # a bare spec is local too
        batch = [build_messages("Name one colour."), build_messages("Tell me about rivers and hills.", "Be brief.")]
        params = SamplingParams(max_tokens=6, temperature=0.0, seed=42)
        out = gen.generate(batch, params)
        assert [g.prompt_tokens for g in out] == [len(lm.encode(lm.render(m))) for m in batch]
        assert all(1 <= g.completion_tokens <= 6 and g.finish_reason in ("stop", "length") for g in out)
        assert [g.text for g in gen.generate(batch, params)] == [g.text for g in out]  # greedy repeats
        sampled = SamplingParams(max_tokens=6, temperature=1.0, seed=5)
        assert gen.generate(batch[:1], sampled)[0].text == gen.generate(batch[:1], sampled)[0].text

    def test_endpoint_spec_is_refused(self):
        from longalign.eval.generate import LocalGenerator, is_endpoint_spec

        assert is_endpoint_spec("openai:m") and not is_endpoint_spec(TINY) and not is_endpoint_spec(None)
        with pytest.raises(ValueError, match="make_generator"):
            LocalGenerator("openai:gpt-4o")
