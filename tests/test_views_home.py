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
    assert set(home.run_stages(run)["stage"]) == {"tokenize", "batch", "train", "eval"}
    assert home.run_stages(RunDir(fixture_runs / "blank")).empty


def test_token_meta_table(fixture_runs):
    t = home.token_meta_table(RunDir(fixture_runs / "fixture"))
    assert t.loc["max_len", "value"] == "16384" and t.loc["chat_format", "value"] == "template"
    assert home.token_meta_table(RunDir(fixture_runs / "blank")).empty
