"""Judge agreement: leave-one-out items, correlations, a run against the fake HTTP server, and (slow) the
local embedded judge on the real few_shots.json (skipped when ../shared is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longalign.eval import agreement
from longalign.eval.agreement import AgreementConfig, agreement_items, correlations
from longalign.rundir import read_jsonl

REAL_FEW_SHOTS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "longbench_chat" / "few_shots.json"

SHOTS = [
    [
        {"answer": "first answer A", "score": 2},
        {"answer": "first answer B", "score": 8},
        {"answer": "first answer C", "score": 5},
    ],
    [
        {"answer": "second answer A", "score": 10},
        {"answer": "second answer B", "score": 1},
        {"answer": "second answer C", "score": 6},
    ],
]


def test_leave_one_out_items():
    items = agreement_items(SHOTS)
    assert [(i.qid, i.k, i.human) for i in items] == [
        (1, 0, 2.0),
        (1, 1, 8.0),
        (1, 2, 5.0),
        (2, 0, 10.0),
        (2, 1, 1.0),
        (2, 2, 6.0),
    ]
    assert [e["answer"] for e in items[1].examples] == ["first answer A", "first answer C"]
    assert items[0].query is None and items[0].reference is None


def test_correlations():
    c = correlations([1, 2, 3, 4], [10, 20, 30, 40])
    assert c["spearman"] == 1.0 and c["kendall"] == 1.0
    c = correlations([1, 2, 3, 4], [4, 3, 2, 1])
    assert c["spearman"] == -1.0 and c["kendall"] == -1.0
    assert correlations([5, 5, 5], [1, 2, 3])["spearman"] is None


def test_agreement_with_fake_judge(fake_llm, tmp_path):
    def responder(req):
        user = req["messages"][-1]["content"]
        rated = user.split("[Answer to rate]")[1]
        assert "not available here" in user  # told it has no question/reference
        assert rated.split("[End of answer to rate]")[0].strip() not in user.split("[Answer to rate]")[0]
        truth = {a["answer"]: a["score"] for e in SHOTS for a in e}
        answer = rated.split("[End of answer to rate]")[0].strip()
        return f"[[{max(1, truth[answer] - 1)}]]"  # monotone in the human score

    fake_llm.set_responder(responder)
    path = tmp_path / "few_shots.json"
    path.write_text(json.dumps(SHOTS), encoding="utf-8")
    cfg = AgreementConfig(few_shots=str(path), judge="openai:judge", judge_base_url=fake_llm.base_url, progress=False)
    s = agreement.run(cfg, tmp_path / "run").scores
    assert s["n"] == 6 and s["unparsed"] == 0
    assert s["spearman"] == pytest.approx(0.9856, abs=1e-4)  # ties at 1 (human 1 and 2)
    assert s["paper"]["gpt4_few_shot"] == {"spearman": 0.844, "kendall": 0.716}
    assert s["saw_question_and_reference"] is False and any("no question" in n for n in s["notes"])
    assert len(fake_llm.requests) == 6
    agreement.run(cfg, tmp_path / "run")
    assert len(fake_llm.requests) == 6  # resumed: nothing re-asked


@pytest.mark.slow
@pytest.mark.skipif(not REAL_FEW_SHOTS.is_file(), reason="../shared reference data not present")
def test_local_judge_on_real_few_shots(tmp_path):
    """The embedded model as a local judge on the first 4 questions (12 answers) of the real file; the full
    150-answer run is the CLI command ``longalign eval judge-agreement --few-shots ...``."""
    cfg = AgreementConfig(few_shots=str(REAL_FEW_SHOTS), judge="local:smollm2", limit=4, progress=False)
    s = agreement.run(cfg, tmp_path / "run").scores
    assert s["n"] == 12 and s["n_scored"] == 12 and s["unparsed"] == 0  # a local judge always scores
    recs = read_jsonl(tmp_path / "run" / "eval" / "judge_agreement" / "ratings.jsonl")
    for r in recs:
        assert 1 <= r["score"] <= 10 and 1 <= r["argmax"] <= 10
        assert sum(r["distribution"].values()) == pytest.approx(1.0, abs=1e-4)
    assert "local_expected" in s and "local_argmax" in s
    print(json.dumps({k: s[k] for k in ("n", "spearman", "kendall", "local_expected", "local_argmax")}, indent=1))
