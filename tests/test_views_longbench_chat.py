"""longalign.views.longbench_chat: question tables on literal frames and on the two fixture runs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from longalign.rundir import RunDir
from longalign.views import longbench_chat as lbc
from longalign.views import readers


def test_longbench_chat_tables():
    a = pd.DataFrame(
        {"idx": [1, 2, 3], "lang": ["en", "zh", "en"], "query": ["q1", "q2", "q3"], "score": [8.0, 4.0, np.nan]}
    )
    b = pd.DataFrame(
        {"idx": [1, 2, 3], "lang": ["en", "zh", "en"], "query": ["q1", "q2", "q3"], "score": [6.0, 5.0, 9.0]}
    )
    t = lbc.compare_longbench_chat({"A": a, "B": b})
    assert t.columns.tolist() == ["idx", "lang", "query", "A", "B", "change"]
    assert t["change"].tolist()[:2] == [2.0, -1.0]  # A minus B: A did better on question 1
    shown = lbc.style_comparison(t).to_html()
    assert "+2.0" in shown and "−1.0" in shown and "#1A7F37" in shown and "#CF222E" in shown
    assert lbc.filter_questions(t, ["en"], (1, 10), True, "A")["idx"].tolist() == [1, 3]
    assert lbc.filter_questions(t, ["en"], (1, 10), False, "A")["idx"].tolist() == [1]
    assert lbc.filter_questions(t, None, (5, 10), False, "B")["idx"].tolist() == [1, 2, 3]
    by = lbc.longbench_chat_by_lang({"A": a, "B": b})
    assert by.set_index("run").loc["A", "overall"] == 6.0 and by.set_index("run").loc["A", "unscored"] == 1
    assert by.set_index("run").loc["B", "en"] == 7.5
    assert lbc.question_detail(a, 2)["query"] == "q2"
    with pytest.raises(ValueError, match="available: 1, 2, 3"):
        lbc.question_detail(a, 9)
    assert lbc.mean_score(a) == 6.0 and math.isnan(lbc.mean_score(a.assign(score=np.nan)))
    assert [lbc.score_text(x) for x in (np.nan, 7.25)] == ["unscored", "7.2"]


def test_longbench_chat_fixture(fixture_runs):
    run = RunDir(fixture_runs / "fixture")
    a = readers.load_longbench_chat(run)
    summary = readers.load_longbench_chat_summary(run)
    assert len(a) == summary["n"] == 12
    assert math.isclose(a["score"].mean(), summary["mean"], abs_tol=1e-4)
    assert set(a["lang"]) == {"en", "zh"} and a["prompt_tokens"].notna().all()
    frames, warnings = lbc.load_frames(run, RunDir(fixture_runs / "fixture-b"))
    assert list(frames) == ["fixture", "fixture-b"] and not warnings
    t = lbc.compare_longbench_chat(frames)
    assert len(t) == 12 and "change" in t
    d = lbc.question_detail(a, 5)
    assert len(d["runs"]) == 2 and d["runs"][1]["score"] is None  # the fixture's unparsed judge reply
    assert "judge gpt-4o-2024-08-06" in lbc.caption(a, summary) and "`" not in lbc.caption(a, summary)
    assert len(lbc.fig_score_distribution(frames).data) == 2
    frames, warnings = lbc.load_frames(run, RunDir(fixture_runs / "blank"))
    assert list(frames) == ["fixture"] and "longalign eval longbench-chat" in warnings[0]


def test_answer_note_marks_an_answer_cut_at_the_token_limit():
    row = {"prompt_tokens": 9000, "truncated": True, "completion_tokens": 64, "max_new_tokens": 64, "cut": True}
    assert lbc.answer_note(row) == (
        "prompt 9,000 tokens (cut to fit) · answer 64 tokens · the answer was cut off at the token limit "
        "(max_new_tokens 64)"
    )
    assert "cut off" not in lbc.answer_note({"prompt_tokens": 10, "completion_tokens": 5, "cut": False})


def test_judge_run_with_rating_probabilities_says_what_its_score_is():
    title, note, dist = lbc.judge_run_view(
        {"run": 0, "score": 2.6895, "reply": "[[1]]", "distribution": {"1": 0.6, "3": 0.1, "5": 0.3}, "argmax": 1}
    )
    assert title == "judge run 0: score 2.69"
    assert "expected rating" in note and "most likely: 1" in note
    assert dist["rating"].tolist() == [1, 3, 5] and math.isclose(dist["probability"].sum(), 1.0)
    title, note, dist = lbc.judge_run_view({"run": 1, "score": None, "reply": "no rating"})
    assert title == "judge run 1: no score" and "no rating" in note and dist is None
