"""longalign.views.readers: listings, the token table and missing artifacts against a fixture runs folder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from longalign.batching import Plan
from longalign.rundir import RunDir, atomic_write_json
from longalign.views import readers


@pytest.fixture(scope="module")
def run(fixture_runs) -> RunDir:
    return RunDir(fixture_runs / "fixture")


def test_runs_listing(fixture_runs):
    assert readers.list_runs(fixture_runs) == ["blank", "fixture", "fixture-b"]
    assert readers.list_runs(fixture_runs / "nowhere") == []


def test_nested_runs_are_listed_by_their_path(tmp_path):
    """The notebooks write runs/notebooks/NN_name: a folder of runs is listed by the runs inside it."""
    (tmp_path / "demo" / "tokens").mkdir(parents=True)
    (tmp_path / "notebooks" / "02_tokenize_and_pack" / "batching").mkdir(parents=True)
    (tmp_path / "notebooks" / "05_evaluation").mkdir()
    (tmp_path / "notebooks" / "05_evaluation" / "run.json").write_text("{}")
    (tmp_path / "notebooks" / "_scratch").mkdir()
    (tmp_path / "empty").mkdir()
    assert readers.list_runs(tmp_path) == [
        "demo",
        "empty",
        "notebooks/02_tokenize_and_pack",
        "notebooks/05_evaluation",
    ]


def test_classify_kind():
    kind = readers.classify_kind(
        pd.Series(["chat", "summary", "", "general"]),
        pd.Series(["x", "books", "ShareGPT", "mydata"]),
        shorts={"sharegpt", "mydata"},
    )
    assert kind.tolist() == ["short", "long", "short", "short"]


def test_token_table(run):
    tokens = readers.load_token_table(run)
    assert len(tokens) == 300
    assert tokens.columns.tolist() == ["idx", "length", "n_target", "source", "lang", "task_type", "kind"]
    assert (tokens["kind"] == "short").sum() == 100 and (tokens[tokens.kind == "short"].task_type == "chat").all()
    assert tokens["length"].max() <= readers.load_token_meta(run)["max_len"]
    labels = readers.load_labels(run, [5, 0])
    assert [len(x) for x in labels] == tokens.loc[[5, 0], "length"].tolist()
    assert [int((x != -100).sum()) for x in labels] == tokens.loc[[5, 0], "n_target"].tolist()


def test_listings_follow_the_accessors(run, tmp_path):
    assert readers.list_batch_methods(run) == ["naive", "sort", "pack"]  # simulate.json is not a method
    assert readers.list_train_runs(run) == ["naive", "sort", "pack", "pack-loss-pack"]
    other = RunDir(tmp_path / "r")
    atomic_write_json(other.batch_plan("zz"), {"batches": [[0]]})  # a plan without statistics
    atomic_write_json(other.batch_stats("pack"), {"method": "pack"})  # statistics without a plan
    (other.batching / ".pack.json.tmp").write_text("{}")  # a writer's temporary file
    assert readers.list_batch_methods(other) == ["pack", "zz"]
    other.train("empty").mkdir(parents=True)
    assert readers.list_train_runs(other) == [] and not readers.present(other, "train")


def test_load_plan_uses_the_recorded_settings(run):
    lengths = readers.load_token_table(run)["length"].to_numpy()
    plan = readers.load_plan(run, "pack", lengths)
    stats = readers.load_batch_stats(run, "pack")
    assert isinstance(plan, Plan) and plan.method == "pack"
    assert (plan.world_size, plan.grad_accum, plan.max_len) == (
        stats["world_size"],
        stats["grad_accum"],
        stats["max_len"],
    )
    assert plan.batches == readers.load_batches(run, "pack")
    assert readers.load_plan(run, "naive", lengths).batch_size == readers.load_batch_stats(run, "naive")["batch_size"]
    with pytest.raises(readers.MissingArtifact, match="no plan file bfd.plan.json"):
        readers.load_batches(run, "bfd")
    with pytest.raises(ValueError, match="holds index"):
        readers.load_plan(run, "pack", np.ones(10, dtype=int))


@pytest.mark.parametrize(
    "key,fn",
    [
        ("tokens", readers.load_token_table),
        ("simulate", readers.read_simulation),
        ("train", readers.load_metrics),
        ("longbench_chat", readers.load_longbench_chat),
        ("needle", readers.load_needle),
        ("batching", lambda r: readers.load_batches(r, "pack")),
    ],
)
def test_missing_artifacts_name_the_command(fixture_runs, key, fn):
    blank = RunDir(fixture_runs / "blank")
    with pytest.raises(readers.MissingArtifact) as exc:
        fn(blank)
    assert exc.value.key == key
    assert f"`{readers.ARTIFACTS[key].command.format(run=blank.root)}`" in str(exc.value)
    assert isinstance(exc.value, FileNotFoundError)


def test_present_rejects_unknown_keys(run):
    assert all(readers.present(run, k) for k in readers.ARTIFACTS)
    with pytest.raises(ValueError, match="tokens, batching"):
        readers.present(run, "weights")
