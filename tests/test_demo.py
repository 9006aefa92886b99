"""The demo's own logic (the stages it calls are tested in their modules; CI runs ``longalign demo --quick``)."""

from __future__ import annotations

import json

import pytest

from longalign import demo
from longalign.eval.longbench_chat import load_longbench_chat
from longalign.rundir import RunDir, append_jsonl, read_jsonl


def _record(doc_id: str, answer: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"document {doc_id}\n\nWhat is it?"},
            {"role": "assistant", "content": answer},
        ],
        "doc_id": doc_id,
        "question": "What is it?",
        "lang": "en",
        "source": "pydoc",
    }


@pytest.fixture
def run(tmp_path):
    run = RunDir(tmp_path / "demo")
    append_jsonl(
        run.corpus, [{"id": f"d{i}", "source": "pydoc", "lang": "en", "n_tokens": 10, "text": "x"} for i in range(4)]
    )
    return run


def test_held_out_records_are_the_last_generated_in_corpus_order(run):
    append_jsonl(run.long, [_record("d3", "three"), _record("d0", "zero"), _record("d2", "two")])  # d1 failed
    prof = demo.PROFILES["quick"]
    train, held = demo.split_long_records(run, prof)
    assert [r["doc_id"] for r in train] == ["d0", "d2"]
    assert [r["doc_id"] for r in held] == ["d3"]


def test_one_generated_record_is_kept_for_training(run):
    append_jsonl(run.long, [_record("d1", "one")])
    train, held = demo.split_long_records(run, demo.PROFILES["full"])
    assert [r["doc_id"] for r in train] == ["d1"] and held == []


def test_mini_set_is_loadable_as_longbench_chat_with_labelled_anchor_examples(run):
    demo.write_mini_set(run, [_record("d3", "The answer is a long and careful explanation.")], [_record("d0", "zero")])
    cases = load_longbench_chat(demo.mini_set_path(run))
    assert len(cases) == 1
    case = cases[0]
    assert case.query == "What is it?" and case.answer.startswith("The answer")
    assert [e["score"] for e in case.examples] == [10, 4, 1]
    assert case.examples[2]["answer"] == "zero"
    demo.write_mini_set(run, [], [])  # rewriting replaces, never appends twice
    assert read_jsonl(demo.mini_set_path(run)) == []


def test_profile_overrides():
    cfg = demo.DemoConfig(quick=True, n_docs=5, max_steps=3)
    prof = demo.profile_for(cfg)
    assert (prof.n_docs, prof.max_steps, prof.max_len) == (5, 3, demo.PROFILES["quick"].max_len)
    assert json.dumps(prof.__dict__)
