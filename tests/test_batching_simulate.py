import numpy as np
import pytest

from longalign.batching import CostModel, fit_cost_model, make_plan, simulate, simulate_plan
from longalign.batching.simulate import measurement, micro_batch_work, step_timeline


def test_micro_batch_work_literal():
    lengths = np.array([3, 5, 2, 4])
    flat, sizes = np.array([0, 1, 2, 3]), np.array([2, 2])
    tok, att = micro_batch_work(lengths, flat, sizes, packed=False)
    assert tok.tolist() == [10, 8] and att.tolist() == [50, 32]  # B*L, B*L^2
    tok, att = micro_batch_work(lengths, flat, sizes, packed=True)
    assert tok.tolist() == [8, 6] and att.tolist() == [34, 20]  # sum n, sum n^2
    _, att = micro_batch_work(lengths, flat, sizes, packed=True, attention="dense")
    assert att.tolist() == [64, 36]


def test_timeline_slowest_device_sets_the_pace():
    costs = np.array([4.0, 1.0, 2.0, 2.0, 3.0])  # G=2, A=1: slots (4,1) (2,2) (3,-)
    r = step_timeline(costs, world_size=2, grad_accum=1)
    assert r["total_seconds"] == 4 + 2 + 3 and r["n_steps"] == 3
    assert r["idle_fraction"] == pytest.approx(1 - 12 / 18)
    r = step_timeline(np.array([4.0, 1.0, 1.0, 3.0]), world_size=2, grad_accum=2, sync="step")
    assert r["total_seconds"] == 5  # rank0: 4+1, rank1: 1+3


def test_simulate_story():
    rng = np.random.default_rng(0)
    lengths = np.concatenate(
        [np.clip(rng.lognormal(np.log(500), 1, 1800), 16, 8192), rng.integers(8192, 65537, 200)]
    ).astype(int)
    rng.shuffle(lengths)
    res = simulate(lengths, max_len=65536, world_size=8, batch_size=1, grad_accum=12)
    m = res["methods"]
    assert set(m) == {"naive", "sort", "pack", "pack_dense"}
    assert m["naive"]["idle_fraction"] > 0.5
    assert m["sort"]["speedup_vs_naive"] > 2 and m["pack"]["speedup_vs_naive"] > 2
    assert m["pack"]["total_seconds"] < m["pack_dense"]["total_seconds"]
    assert res["config"]["cost"] == CostModel().to_dict()


def test_simulate_plan_matches_hand_count():
    plan = make_plan([4, 2, 3, 1], "sort", max_len=10, batch_size=2)
    r = simulate_plan(plan, CostModel(per_token=1.0, per_token_sq=0.5, per_batch=2.0))
    # batches (1,2) and (3,4): 2*2 + 0.5*8 + 2 = 10 and 2*4 + 0.5*32 + 2 = 26
    assert r["total_seconds"] == 36 and r["idle_fraction"] == 0


def test_fit_cost_model_recovers_coefficients():
    true = CostModel(per_token=2e-4, per_token_sq=3e-9, per_batch=0.05)
    rng = np.random.default_rng(1)
    ms = []
    for _ in range(40):
        lens = rng.integers(100, 30000, rng.integers(1, 6))
        m = measurement(lens, 0.0, packed=True)
        m["seconds"] = float(true.seconds(m["tokens"], m["attention"], 1))
        ms.append(m)
    fit = fit_cost_model(ms)
    assert fit.per_token == pytest.approx(true.per_token, rel=1e-6)
    assert fit.per_token_sq == pytest.approx(true.per_token_sq, rel=1e-6)
    assert fit.per_batch == pytest.approx(true.per_batch, rel=1e-6)
    with pytest.raises(ValueError, match="at least 3"):
        fit_cost_model(ms[:2])
    with pytest.raises(ValueError, match="lacks"):
        fit_cost_model([{"tokens": 1}] * 3)
