"""longalign.views.home: the runs overview, a run's artifacts and its recorded stages."""

from __future__ import annotations

from longalign.rundir import RunDir
from longalign.views import home


def test_runs_overview(fixture_runs):
    ov = home.runs_overview(fixture_runs).set_index("run")
    assert ov.index.tolist() == ["blank", "fixture", "fixture-b"]
    assert ov.loc["fixture"].drop("stages").all() and not ov.loc["blank"].drop("stages").any()


def test_artifact_table_and_stages(fixture_runs):
    run = RunDir(fixture_runs / "fixture")
    t = home.artifact_table(run)
    assert t["present"].all() and t["created by"].str.startswith("longalign ").all()
    where = t.set_index("artifact")["path"]
    assert where["Batching plans"] == "batching/<method>.json + batching/<method>.plan.json"
    assert set(home.run_stages(run)["stage"]) == {"tokenize", "batch", "train", "eval", "eval_longbench_chat"}
    assert home.run_stages(RunDir(fixture_runs / "blank")).empty


def test_token_meta_table(fixture_runs):
    t = home.token_meta_table(RunDir(fixture_runs / "fixture"))
    assert t.loc["max_len (tokens)", "value"] == "16,384" and t.loc["chat format", "value"] == "template"
    assert not any("_" in k for k in t.index.drop("max_len (tokens)"))
    assert home.token_meta_table(RunDir(fixture_runs / "blank")).empty


def test_demo_tables_round_and_sign():
    summary = {
        "methods": {"naive": {"seconds": 100.5123, "real_tokens": 1224, "measured_speedup_vs_naive": 1.0}},
        "stages": {
            "eval:heldout": {"sequence_mean_loss": {"base": 2.51234, "tuned": 2.11111, "change": -0.40123}},
            "eval:longbench-chat": {"mean_score": {"base": 3.05, "tuned": 2.85, "change": -0.2}},
        },
    }
    m = home.demo_method_table(summary)
    assert m.loc[0, "training seconds"] == 100.5 and m.loc[0, "measured speed-up"] == 1.0
    e = home.demo_eval_table(summary).set_index("metric")
    loss, score = e.iloc[0], e.iloc[1]
    assert (loss["base"], loss["fine-tuned"], loss["change"]) == (2.512, 2.111, "−0.401")
    assert score["change"] == "−0.20" and score["better when"] == "higher"
    html = home.style_eval_table(home.demo_eval_table(summary)).to_html()
    # a lower loss is better (green), a lower score worse (red)
    from longalign.views.style import BETTER_COLOR, WORSE_COLOR

    assert html.count(BETTER_COLOR) == 1 and html.count(WORSE_COLOR) == 1
