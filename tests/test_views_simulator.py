"""longalign.views.simulator: the recorded simulation and a live one through longalign.batching.simulate."""

from __future__ import annotations

import pandas as pd
import pytest

from longalign.batching import simulate
from longalign.rundir import RunDir
from longalign.views import readers, simulator


@pytest.fixture(scope="module")
def run(fixture_runs) -> RunDir:
    return RunDir(fixture_runs / "fixture")


def test_simulation(run):
    config, table = simulator.load_simulation(run)
    assert config["world_size"] == 8 and table["method"].tolist() == ["naive", "sort", "pack"]
    assert table["speed-up vs slowest"].min() == 1.0
    tokens = readers.load_token_table(run)
    cfg, live = simulator.run_simulation(
        tokens["length"].to_numpy(), devices=4, batch_size=2, max_len=16384, grad_accum=2
    )
    live = live.set_index("method")
    assert {"naive", "sort", "pack"} <= set(live.index)
    assert live.loc["pack", "total_seconds"] < live.loc["naive", "total_seconds"]
    assert ((live["idle_fraction"] >= 0) & (live["idle_fraction"] < 1)).all()
    assert len(simulator.fig_simulation(live.reset_index()).data) == 2


def test_live_table_is_the_stage_result(run):
    lengths = readers.load_token_table(run)["length"].to_numpy()
    _, live = simulator.run_simulation(lengths, devices=2, batch_size=1, max_len=16384, grad_accum=3, sync="step")
    out = simulate(
        lengths,
        ("naive", "sort", "pack"),
        max_len=16384,
        world_size=2,
        batch_size=1,
        grad_accum=3,
        pack_grad_accum=1,
        algo="ffd",
        sync="step",
    )
    assert live.set_index("method")["total_seconds"].to_dict() == {
        m: r["total_seconds"] for m, r in out["methods"].items()
    }


def test_simulation_table_and_defaults():
    t = simulator.simulation_table({"a": {"total_seconds": 10.0, "curve": [1, 2]}, "b": {"total_seconds": 5.0}})
    assert t.columns.tolist() == ["method", "total_seconds", "speed-up vs slowest"]
    assert t["speed-up vs slowest"].tolist() == [1.0, 2.0]
    d = simulator.form_defaults({"world_size": 8, "grad_accum": 1}, {"max_len": 4096}, 9000)
    assert (d["devices"], d["grad_accum"], d["max_len"], d["batch_size"]) == (8, 1, 4096, 1)
    d = simulator.form_defaults({}, {}, 9000)
    assert (d["devices"], d["grad_accum"], d["max_len"], d["algos"][0]) == (8, 12, 9000, "ffd")
    assert isinstance(simulator.simulation_table({}), pd.DataFrame)
