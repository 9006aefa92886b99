"""longalign.views.lengths: histograms and summaries on literal tables, the figure on the fixture run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from longalign.rundir import RunDir
from longalign.views import lengths, readers


@pytest.fixture(scope="module")
def tokens(fixture_runs) -> pd.DataFrame:
    return readers.load_token_table(RunDir(fixture_runs / "fixture"))


def test_length_histogram_and_edges():
    df = pd.DataFrame({"length": [1, 5, 10, 11], "source": ["a", "a", "b", "a"]})
    h = lengths.length_histogram(df, "source", np.array([0, 5, 10]))
    assert h[h.group == "a"]["count"].tolist() == [1, 1]
    assert h[h.group == "b"]["count"].tolist() == [0, 1]
    e = lengths.length_edges(1, 1000, 3, log=True)
    np.testing.assert_allclose(e, [1, 10, 100, 1000])


def test_length_and_mix_summary():
    df = pd.DataFrame(
        {
            "length": [100, 300, 10],
            "n_target": [10, 30, 5],
            "source": ["a", "a", "s"],
            "kind": ["long", "long", "short"],
        }
    )
    s = lengths.length_summary(df, "source")
    assert s["source"].tolist() == ["a", "s"] and s["tokens"].tolist() == [400, 10]
    assert s["max"].tolist() == [300, 10]
    m = lengths.mix_summary(df)
    assert m["sequences"].tolist() == [2, 1]
    assert m["token share"].tolist() == [400 / 410, 10 / 410]
    with pytest.raises(ValueError, match="source, lang, task_type, kind"):
        lengths.length_summary(df, "colour")


def test_length_figure_puts_every_sequence_in_one_bin(tokens):
    fig = lengths.fig_length_distribution(tokens, "source")
    assert len(fig.data) == 2 * tokens["source"].nunique()
    assert sum(int(np.sum(t.y)) for t in fig.data) == len(tokens)  # every sequence in exactly one panel bin
    assert fig.layout.annotations[1].text.startswith("8k–16k")
    log = lengths.fig_length_distribution(tokens, "lang", log_x=True)
    assert log.layout.xaxis.type == "log" and all(isinstance(t, go.Scatter) for t in log.data)


def test_headline_and_mix_figure(tokens):
    h = {label: value for label, value, _ in lengths.headline(tokens, {"n_truncated": 3})}
    assert h["sequences"] == "300" and h["long / short"] == "200 / 100" and h["truncated"] == "3"
    assert [t.name for t in lengths.fig_mix(tokens).data] == ["long", "short"]


def test_no_empty_panel_when_nothing_reaches_the_split():
    """The demo's sequences are all under 1,500 tokens: one panel that ends just above the longest, not an
    empty '8k–16k (0 sequences)' panel beside a 0–8k axis."""
    df = pd.DataFrame({"length": [120, 480, 1210, 1388], "source": ["a", "b", "a", "b"]})
    assert lengths.length_panels(df, 8192) == [(0, 1500)]
    fig = lengths.fig_length_distribution(df, "source", split=8192)
    assert [a.text for a in fig.layout.annotations] == ["0–1,500 tokens (4 sequences)"]
    assert lengths.panels_text(lengths.length_panels(df, 8192)) == "0–1,500 tokens"
    long = pd.DataFrame({"length": [500, 9000, 40000], "source": ["a", "a", "b"]})
    assert lengths.length_panels(long, 8192) == [(0, 8192), (8192, 65536)]
    assert lengths.panels_text(lengths.length_panels(long, 8192)) == "0–8k and 8k–64k tokens"
    assert [lengths.nice_ceiling(x) for x in (1388, 8000, 3, 1)] == [1500, 8000, 3, 1]
