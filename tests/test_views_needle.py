"""longalign.views.needle: the grid, cells and highlighting; the heatmap is the eval stage's own figure."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from longalign.eval.needle import heatmap_figure, heatmap_grid
from longalign.rundir import RunDir
from longalign.views import needle, readers
from longalign.views.style import TEMPLATE


def test_needle_grid_cell_and_highlight():
    df = pd.DataFrame(
        {
            "context_length": [1000, 1000, 2000, 2000],
            "depth_percent": [10.0, 50.0, 10.0, 50.0],
            "judge_score": [10, 1, 7, 3],
            "recall": [1, 0, 0.5, 0.25],
            "window": ["w"] * 4,
        }
    )
    g = needle.needle_grid(df, "judge_score")
    assert g.index.tolist() == [10.0, 50.0] and g.columns.tolist() == [1000, 2000]
    assert g.to_numpy().tolist() == [[10, 7], [1, 3]]
    assert needle.needle_cell(df, 2000, 50)["recall"] == 0.25
    with pytest.raises(ValueError, match="no needle probe"):
        needle.needle_cell(df, 3000, 50)
    assert needle.highlight("a <b> NEEDLE c", "NEEDLE") == "a &lt;b&gt; <mark><b>NEEDLE</b></mark> c"
    assert needle.highlight("a <b>", None) == "a &lt;b&gt;"
    fig = needle.fig_needle_heatmap(g)
    assert fig.data[0].zmin == 1 and fig.data[0].zmax == 10
    assert list(fig.data[1].x) == ["1,000", "2,000", "1,000", "2,000"]
    assert list(fig.data[1].y) == ["10%", "10%", "50%", "50%"]
    # the clickable overlay carries each cell's score to two decimals, the cell text to one
    assert list(fig.data[1].customdata) == ["10.00", "7.00", "1.00", "3.00"]
    assert list(fig.data[0].text[0]) == ["10.0", "7.0"]
    with pytest.raises(ValueError, match="'judge_score', 'recall'"):
        needle.needle_grid(df, "score")


def test_a_mean_cell_is_not_rounded_to_a_whole_score():
    """A cell of repeated probes scoring 5 and 6.4 has the mean 5.7: hover and label say so, not '6'."""
    fig = heatmap_figure([1000], [50.0], {"judge_score": [[5.7]]}, selectable=True)
    assert list(fig.data[1].customdata) == ["5.70"] and "judge score %{customdata}" in fig.data[1].hovertemplate
    assert list(fig.data[0].text[0]) == ["5.7"] and "judge_score" not in fig.data[0].hovertemplate


def test_needle_fixture(fixture_runs):
    run = RunDir(fixture_runs / "fixture")
    df = readers.load_needle(run)
    g = needle.needle_grid(df)
    assert g.shape == (5, 6)
    assert math.isclose(df["judge_score"].mean(), readers.load_needle_summary(run)["mean_judge"], abs_tol=1e-4)
    cell = needle.needle_cell(df, 16000, 50.0)
    assert readers.load_needle_summary(run)["needle"] in cell["window"]
    assert {label: value for label, value, _ in needle.headline(df)}["probes"] == "30"
    # the fixture's results predate recall_norm: the reader computes it from each stored response
    assert needle.values_in(df) == ["judge_score", "recall", "recall_norm"]
    from longalign.eval.needle import PAPER_QUESTION, default_key_phrases, normalised_recall

    phrases = default_key_phrases(readers.load_needle_summary(run)["needle"], PAPER_QUESTION)  # no key_phrases
    assert df["recall_norm"].tolist() == [normalised_recall(r, phrases) for r in df["response"]]


@pytest.mark.parametrize("value", ["judge_score", "recall"])
def test_view_heatmap_is_the_stage_figure(fixture_runs, value):
    df = readers.load_needle(RunDir(fixture_runs / "fixture"))
    records = df.to_dict("records")
    shown = needle.fig_needle_heatmap(needle.needle_grid(df, value), value)
    lengths, depths, z = heatmap_grid(records, value)
    assert shown.to_json() == heatmap_figure(lengths, depths, {value: z}, selectable=True, template=TEMPLATE).to_json()


def test_clicked_cell_reads_the_figure_labels():
    fig = heatmap_figure([1000, 16000], [10.0, 50.0], {"recall": [[1.0, 0.0], [0.5, None]]}, selectable=True)
    overlay = fig.data[1]
    assert [needle.clicked_cell([{"x": x, "y": y}]) for x, y in zip(overlay.x, overlay.y)] == [
        (1000, 10.0),
        (16000, 10.0),
        (1000, 50.0),
        (16000, 50.0),
    ]
    assert needle.clicked_cell([]) is None and needle.clicked_cell([{"x": "a", "y": "b"}]) is None


def test_headline_change_and_cell_text(fixture_runs):
    """Against another run the headline carries this run's mean minus the other's, computed here from both
    results files; the cell text says where the needle sits in the context the cell built."""
    import json

    a, b = (RunDir(fixture_runs / n) for n in ("fixture", "fixture-b"))
    ra = [json.loads(x) for x in a.needle_results().read_text().splitlines()]
    rb = [json.loads(x) for x in b.needle_results().read_text().splitlines()]
    head = {label: change for label, _, change in needle.headline(readers.load_needle(a), readers.load_needle(b))}
    expected = sum(r["judge_score"] for r in ra) / len(ra) - sum(r["judge_score"] for r in rb) / len(rb)
    assert head["mean judge score"] == pytest.approx(expected) and head["probes"] is None
    cell = {"needle_token_pos": 0, "target_token_pos": 93, "context_tokens": 400, "context_length": 600}
    text = needle.cell_text(cell | {"prompt_tokens": 453}, buffer=200)
    assert text.startswith("needle at token 0 of the 400-token context (the depth aims at token 93;")
    assert "cell of 600 tokens, 200 of them kept free" in text and "whole prompt 453 tokens" in text
    assert "<mark>" in needle.window_html("* If __debug__: x NEEDLE y", "NEEDLE")
    assert "white-space:pre-wrap" in needle.window_html("a", None)
