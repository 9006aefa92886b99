"""longalign.views.training: summaries and figures of the fixture run's training metrics."""

from __future__ import annotations

import pandas as pd

from longalign.rundir import RunDir
from longalign.views import readers, training


def test_metrics(fixture_runs):
    run = RunDir(fixture_runs / "fixture")
    m = readers.load_metrics(run)
    s = training.train_summary(run, m).set_index("train")
    assert s.loc["pack", "steps"] == 26 and s.loc["naive", "steps"] == 19
    assert s.loc["pack-loss-pack", "loss norm"] == "pack" and s.loc["pack", "padding share"] == 0
    assert s.loc["pack", "tokens/s"] > s.loc["naive", "tokens/s"]
    fig = training.fig_loss(m, window=3)
    assert len(fig.data) == 4 and fig.data[3].line.dash == "dash"
    assert len(training.fig_throughput(m).data) == 8
    assert training.smooth(pd.Series([1.0, 3.0, 5.0]), 2).tolist() == [1.0, 2.0, 4.0]


def test_select_and_step_seconds():
    m = pd.DataFrame({"train": ["a", "a", "b"], "step": [1, 2, 1], "loss": [2.0, 1.0, 3.0], "wall_s": [1.0, 3.5, 2.0]})
    shown, y = training.select(m, ["a"], "loss_token_mean")
    assert shown["train"].tolist() == ["a", "a"] and y == "loss"
    assert training.step_seconds(shown).tolist() == [1.0, 2.5]
