"""The Ladder page's views on literal ladder results: the two-run comparison (paired where the samples are the
same, two means where they are not), the marks in a sample's prompt and answer, a clicked cell mapped back, and
the effective length in words. Expected values are worked out here from the literal records."""

from __future__ import annotations

import html
import math

import pandas as pd
import pytest

from longalign.eval import ruler
from longalign.eval.intervals import Z95, wilson
from longalign.views import ladder


def rec(task: str, length: int, index: int, score: float, *, expected=("1234567",), seed: int = 42) -> dict:
    return {
        "key": f"{task}/{length}/{index}",
        "task": task,
        "length": length,
        "index": index,
        "expected": list(expected),
        "depths": [50.0],
        "prompt_tokens": length - 128,
        "seed": seed,
        "score": score,
        "output": "",
    }


def test_compare_pairs_the_same_samples_and_falls_back_to_two_means():
    a = [rec("vt", 1024, i, s) for i, s in enumerate([1.0, 1.0, 0.5, 0.0])]
    b = [rec("vt", 1024, i, s) for i, s in enumerate([0.0, 1.0, 0.5, 0.5])]
    d = ruler.compare(a, b)["cells"]["vt"]["1024"]
    diffs = [1.0, 0.0, 0.0, -0.5]
    assert d["paired"] and d["n"] == 4
    assert d["diff"] == pytest.approx(100 * sum(diffs) / 4)
    # Agresti-Min: add a pair at +1, one at -1 and a tie, then the normal interval of the mean of the n+2 pairs
    m = 4 + 2
    mean = sum(diffs) / m
    var = (sum(x * x for x in diffs) + 1 - sum(diffs) ** 2 / m) / (m * m)
    assert (d["lo"], d["hi"]) == pytest.approx(
        (100 * (mean - Z95 * math.sqrt(var)), 100 * (mean + Z95 * math.sqrt(var)))
    )
    assert (d["a"], d["b"]) == pytest.approx((62.5, 50.0))

    other = [rec("vt", 1024, i, s, seed=7) for i, s in enumerate([0.0, 1.0, 0.5, 0.5])]  # another seed: not paired
    d = ruler.compare(a, other)["overall"]
    pa, pb = 2.5 / 4, 2.0 / 4
    (la, ua), (lb, ub) = wilson(pa, 4), wilson(pb, 4)
    assert not d["paired"] and d["n"] == 0
    assert d["lo"] == pytest.approx(100 * (pa - pb - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2)))
    assert d["hi"] == pytest.approx(100 * (pa - pb + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)))


def test_compare_keeps_only_what_both_runs_hold():
    a = [rec("vt", 1024, 0, 1.0), rec("vt", 2048, 0, 1.0), rec("cwe", 1024, 0, 0.3)]
    b = [rec("vt", 1024, 0, 0.0), rec("niah_single_noise", 1024, 0, 1.0)]
    out = ruler.compare(a, b)
    assert list(out["cells"]) == ["vt"] and list(out["cells"]["vt"]) == ["1024"]
    assert out["overall"]["diff"] == pytest.approx(100.0) and out["overall"]["n"] == 1


def test_marks_are_whole_words_and_everything_else_is_escaped():
    text = "a <b>tag</b> 1234567 and 12345678 and VAR ABCDE = 1234567."
    body, n = ladder.highlight_html(text, [("1234567", "expected"), ("ABCDE", "key")])
    assert n == 3  # the longer number holding the value is not marked
    assert "&lt;b&gt;tag&lt;/b&gt;" in body and "<b>" not in body
    assert body.count(">1234567</mark>") == 2 and ">ABCDE</mark>" in body
    plain = html.unescape(body.replace("</mark>", "").split("<mark")[0])
    assert plain == "a <b>tag</b> "
    answer = ladder.answer_html("The value is 1234567", ["1234567", "7654321"], "Answer:")
    assert ">1234567</mark>" in answer and "7654321" not in answer


def test_score_line_and_expected_table_follow_the_scorer():
    r = {**rec("niah_multivalue", 1024, 0, 0.5, expected=["111", "222", "333", "444"]), "output": "111 and 333"}
    r["metric"] = "all"
    assert ladder.score_line(r) == "score 0.50: 2 of 4 expected values in the answer"
    table = ladder.expected_table(r)
    assert table["in the answer"].tolist() == [True, False, True, False]


def _ladder(by_length_scores: dict[int, float], threshold: float = 85.6) -> ladder.Ladder:
    rows = [rec("vt", x, 0, s) for x, s in by_length_scores.items()]
    lengths = sorted(by_length_scores)
    scores = ruler.summarise(rows, ["vt"], lengths, threshold)
    return ladder.Ladder("run", pd.DataFrame(rows), {}, ["vt"], lengths, scores)


def test_effective_length_in_words_and_a_clicked_cell():
    held = _ladder({1024: 1.0, 2048: 1.0, 4096: 0.0})
    assert held.effective_length == 2048
    assert ladder.effective_text(held).startswith("effective length 2k tokens")
    none = _ladder({1024: 0.0, 2048: 1.0})
    assert none.effective_length is None and "no effective length" in ladder.effective_text(none)
    points = [{"x": ladder.length_label(2048), "y": ladder.task_label("vt")}]
    assert ladder.clicked_cell(points, held) == ("vt", 2048)
    assert ladder.clicked_cell([{"x": "2k", "y": ladder.AVERAGE}], held) is None
    assert ladder.clicked_cell([], held) is None
