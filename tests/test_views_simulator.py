"""longalign.views.simulator: the recorded simulation and a live one through longalign.batching.simulate."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from longalign.batching import simulate
from longalign.rundir import RunDir
from longalign.views import readers, simulator


@pytest.fixture(scope="module")
def run(fixture_runs) -> RunDir:
    return RunDir(fixture_runs / "fixture")


def test_recorded_and_live_simulations_put_pack_ahead_of_naive(run):
    config, table = simulator.load_simulation(run)
    assert config["world_size"] == 8 and table["method"].tolist() == ["naive", "sort", "pack"]
    assert table["speed-up vs slowest"].min() == 1.0
    tokens = readers.load_token_table(run)
    cfg, live = simulator.run_simulation(
        tokens["length"].to_numpy(), devices=4, batch_size=2, max_len=16384, grad_accum=2
    )
    live = live.set_index("method")
    assert {"naive", "sort", "pack"} <= set(live.index)
    assert live.loc["pack", simulator.TIME] < live.loc["naive", simulator.TIME]
    assert ((live[simulator.IDLE] >= 0) & (live[simulator.IDLE] < 1)).all()
    assert len(simulator.fig_simulation(live.reset_index(), devices=4).data) == 2
    assert len(simulator.fig_simulation(live.reset_index(), devices=1).data) == 1  # nothing waits on one device
    assert "pack, dense mask" in live.index


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
    assert live.set_index("method")[simulator.TIME].to_dict() == {
        simulator.METHOD_LABELS.get(m, m): r["total_seconds"] for m, r in out["methods"].items()
    }


def test_simulation_table_and_defaults():
    t = simulator.simulation_table({"a": {"total_seconds": 10.0, "curve": [1, 2]}, "b": {"total_seconds": 5.0}})
    assert t.columns.tolist() == ["method", "predicted time (s)", "speed-up vs slowest"]
    assert t["speed-up vs slowest"].tolist() == [1.0, 2.0]
    older = simulator.simulation_table({"naive": {"total_seconds": 4.0, "efficiency": 0.75, "steps": 3}})
    assert older.loc[0, "padding"] == 0.25 and older.loc[0, "optimizer steps"] == 3
    d = simulator.form_defaults({"world_size": 8, "grad_accum": 1}, {"max_len": 4096}, 9000)
    assert (d["devices"], d["grad_accum"], d["max_len"], d["batch_size"]) == (8, 1, 4096, 1)
    d = simulator.form_defaults({}, {}, 9000)
    assert (d["devices"], d["grad_accum"], d["max_len"], d["algos"][0], d["cost"]) == (8, 12, 9000, "ffd", None)
    assert isinstance(simulator.simulation_table({}), pd.DataFrame)
    assert simulator.cost_text(None).startswith("the default cost model")


def test_the_form_prices_with_the_recorded_cost_model(run):
    """The recorded simulation was priced with its own cost model: the live form uses it, so on one device its
    pack time is the sum of the recorded model's price of every pack in the run's plan file (first-fit
    decreasing makes the same packs)."""
    recorded = json.loads(run.simulation.read_text())
    cost = recorded["config"]["cost"]
    d = simulator.form_defaults(recorded["config"], {}, 1)
    assert d["cost"] == cost and "recorded simulation's cost model" in simulator.cost_text(d["cost"])
    import datasets

    lengths = np.asarray(datasets.load_from_disk(str(run.tokens))["length"], dtype=float)
    packs = json.loads(run.batch_plan("pack").read_text())["batches"]
    expected = sum(
        cost["per_batch"] + cost["per_token"] * lengths[b].sum() + cost["per_token_sq"] * (lengths[b] ** 2).sum()
        for b in packs
    )
    _, live = simulator.run_simulation(
        lengths.astype(int), devices=1, batch_size=4, max_len=16384, grad_accum=1, cost=d["cost"]
    )
    assert live.set_index("method").loc["pack", simulator.TIME] == pytest.approx(expected, rel=1e-9)
    _, default = simulator.run_simulation(lengths.astype(int), devices=1, batch_size=4, max_len=16384)
    assert default.set_index("method").loc["pack", simulator.TIME] != pytest.approx(expected, rel=1e-3)


def test_settings_table_has_no_raw_keys(run):
    config = json.loads(run.simulation.read_text())["config"]
    t = simulator.settings_table(config).set_index("setting")["value"]
    assert t["devices"] == "8" and t["devices wait"] == "every micro-batch (ZeRO-3)"
    assert "world_size" not in t.index and t["cost model"].startswith("the recorded simulation's cost model")


def test_the_form_with_the_recorded_settings_reproduces_the_recorded_simulation(tmp_path, run):
    """Started from a recorded simulation (settings, cost model, seed), the live form predicts what the file
    says: the 100.5 s against 3.6 s mismatch of a form on the default cost model cannot recur."""
    from longalign import batching
    from longalign.batching import SimulateConfig

    lengths = readers.load_token_table(run)["length"].to_numpy()
    target = RunDir(tmp_path / "sim")
    cfg = SimulateConfig(
        max_len=16384, world_size=3, batch_size=2, grad_accum=2, seed=7, per_token=1e-3, per_token_sq=2e-7
    )
    batching.run(cfg, target, lengths=lengths)
    recorded = json.loads(target.simulation.read_text())
    d = simulator.form_defaults(recorded["config"], {}, int(lengths.max()))
    _, live = simulator.run_simulation(
        lengths,
        devices=d["devices"],
        batch_size=d["batch_size"],
        max_len=d["max_len"],
        grad_accum=d["grad_accum"],
        pack_grad_accum=d["pack_grad_accum"],
        algo=d["algos"][0],
        sync=d["syncs"][0],
        cost=d["cost"],
        seed=d["seed"],
    )
    shown = live.set_index("method")[simulator.TIME].to_dict()
    assert shown == {simulator.METHOD_LABELS.get(m, m): r["total_seconds"] for m, r in recorded["methods"].items()}
