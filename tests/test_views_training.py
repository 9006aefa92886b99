"""longalign.views.training: summaries and figures of the fixture run's training metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from longalign.rundir import RunDir
from longalign.views import readers, training


def test_summary_gives_steps_normalisation_and_final_loss_of_each_run(fixture_runs):
    run = RunDir(fixture_runs / "fixture")
    m = readers.load_metrics(run)
    s = training.train_summary(run, m).set_index("training folder")
    assert s.loc["pack", "steps"] == 26 and s.loc["naive", "steps"] == 19
    assert s.loc["pack-loss-pack", "loss normalisation"] == "pack" and s.loc["pack", "padding"] == 0
    assert s.loc["pack", "tokens per second"] > s.loc["naive", "tokens per second"]
    # the final loss follows the loss column chosen (read straight from the metrics file)
    import json

    last = [json.loads(x) for x in run.metrics("naive").read_text().splitlines()][-1]
    assert s.loc["naive", "final loss"] == last["loss"]
    tm = training.train_summary(run, m, y="loss_token_mean").set_index("training folder")
    assert tm.loc["naive", "final loss"] == last["loss_token_mean"]
    fig = training.fig_loss(m, window=3)
    assert len(fig.data) == 4 and fig.data[3].line.dash == "dash"
    assert len(training.fig_throughput(m).data) == 8
    assert training.smooth(pd.Series([1.0, 3.0, 5.0]), 2).tolist() == [1.0, 2.0, 4.0]


def test_select_and_step_seconds():
    m = pd.DataFrame({"train": ["a", "a", "b"], "step": [1, 2, 1], "loss": [2.0, 1.0, 3.0], "wall_s": [1.0, 3.5, 2.0]})
    shown, y = training.select(m, ["a"], "loss_token_mean")
    assert shown["train"].tolist() == ["a", "a"] and y == "loss"
    assert training.step_seconds(shown).tolist() == [1.0, 2.5]
    assert shown["seconds"].tolist() == [1.0, 3.5] and training.x_axes_in(shown) == ["step", "seconds"]


def test_loss_against_tokens_seen_and_time(fixture_runs):
    run = RunDir(fixture_runs / "fixture")
    shown, y = training.select(readers.load_metrics(run), ["naive", "pack"], "loss_token_mean")
    import json

    recs = [json.loads(x) for x in run.metrics("pack").read_text().splitlines()]
    pack = shown[shown["train"] == "pack"]
    assert pack["tokens_seen"].tolist() == list(np.cumsum([r["real_tokens"] for r in recs]))
    assert pack["seconds"].tolist() == pytest.approx(list(np.cumsum([r["step_s"] for r in recs])))
    fig = training.fig_loss(shown, y=y, x="tokens_seen")
    assert fig.layout.xaxis.title.text == "tokens seen" and fig.layout.yaxis.title.text == "token-mean loss"
    assert list(fig.data[1].x) == pack["tokens_seen"].tolist()


def test_summary_and_throughput_figure_equal_what_each_metrics_file_gives(fixture_runs):
    """Expected figures computed here from each training folder's metrics.jsonl, not through the view."""
    import json

    run = RunDir(fixture_runs / "fixture")
    m = readers.load_metrics(run)
    s = training.train_summary(run, m).set_index("training folder")
    fig = training.fig_throughput(m)
    per_step = {t.name: t for t in fig.data if t.xaxis in (None, "x")}
    clock = {t.name: t for t in fig.data if t.xaxis == "x2"}
    assert set(s.index) == set(per_step) == set(clock) == {"naive", "sort", "pack", "pack-loss-pack"}
    for name in s.index:
        recs = [json.loads(x) for x in run.metrics(name).read_text().splitlines()]
        real = sum(r["real_tokens"] for r in recs)
        seconds = sum(r["step_s"] for r in recs)
        assert s.loc[name, "tokens per second"] == pytest.approx(real / seconds, rel=1e-12)
        assert s.loc[name, "wall time (s)"] == pytest.approx(seconds, rel=1e-12)
        assert s.loc[name, "padding"] == pytest.approx(1 - real / sum(r["padded_tokens"] for r in recs), rel=1e-12)
        assert s.loc[name, "lowest loss"] == min(r["loss"] for r in recs)
        assert list(per_step[name].y) == [r["tokens_per_s"] for r in recs]
        assert list(clock[name].y) == pytest.approx(np.cumsum([r["step_s"] for r in recs]).tolist(), rel=1e-12)
