"""longalign.views.packing: literal inputs with exact expectations, then the views against the fixture run; the
loss weights a view shows are the batching stage's ``token_weights`` of the saved plan."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from longalign.batching import LOSS_NORMS, Plan, make_plan, token_weights
from longalign.rundir import RunDir
from longalign.views import packing, readers


@pytest.fixture(scope="module")
def run(fixture_runs) -> RunDir:
    return RunDir(fixture_runs / "fixture")


@pytest.fixture(scope="module")
def tokens(run) -> pd.DataFrame:
    return readers.load_token_table(run)


def saved_plan_weights(batches, n_target, norm, world_size=1, grad_accum=1) -> np.ndarray:
    """What a view computes for a saved plan: token_weights of Plan.from_batches."""
    plan = Plan.from_batches(batches, np.full(len(n_target), 8), "pack", world_size=world_size, grad_accum=grad_accum)
    return token_weights(plan, np.asarray(n_target), norm)


# ------------------------------------------------------------------------------------------ loss weights
class TestSavedPlanWeights:
    batches = [[0, 1], [2]]
    n_target = np.array([2, 3, 5])

    def test_sequence(self):
        w = saved_plan_weights(self.batches, self.n_target, "sequence", world_size=1, grad_accum=2)
        np.testing.assert_allclose(w, [1 / 6, 1 / 9, 1 / 15])

    def test_token(self):
        w = saved_plan_weights(self.batches, self.n_target, "token", world_size=2, grad_accum=1)
        np.testing.assert_allclose(w, [0.1, 0.1, 0.1])

    def test_pack(self):
        w = saved_plan_weights(self.batches, self.n_target, "pack", world_size=1, grad_accum=2)
        np.testing.assert_allclose(w, [0.1, 0.1, 0.1])

    def test_separate_steps(self):
        w = saved_plan_weights(self.batches, self.n_target, "sequence", world_size=1, grad_accum=1)
        np.testing.assert_allclose(w, [1 / 4, 1 / 6, 1 / 5])

    @pytest.mark.parametrize("norm", LOSS_NORMS)
    def test_each_step_sums_to_one(self, norm):
        rng = np.random.default_rng(3)
        n_target = rng.integers(0, 50, size=40)
        batches = [list(range(i, min(i + 3, 40))) for i in range(0, 40, 3)]
        w = saved_plan_weights(batches, n_target, norm, world_size=2, grad_accum=2)
        for s in range(0, len(batches), 4):
            idx = [i for b in batches[s : s + 4] for i in b]
            if n_target[idx].sum():
                assert math.isclose(float((w[idx] * n_target[idx]).sum()), 1.0, rel_tol=1e-12)
        assert (w[n_target == 0] == 0).all()

    def test_sequences_without_targets_do_not_count(self):
        w = saved_plan_weights([[0, 1]], np.array([0, 4]), "sequence")
        np.testing.assert_allclose(w, [0.0, 0.25])

    def test_bad_norm(self):
        with pytest.raises(ValueError, match="'sequence', 'token', 'pack'|sequence, token, pack"):
            saved_plan_weights([[0]], np.array([1]), "mean")

    @pytest.mark.parametrize("norm", LOSS_NORMS)
    def test_matches_the_plan_that_made_the_batches(self, norm):
        rng = np.random.default_rng(0)
        lengths = rng.integers(10, 500, size=60)
        n_target = rng.integers(0, 40, size=60)
        plan = make_plan(lengths, "pack", max_len=1000, world_size=2, grad_accum=2)
        np.testing.assert_allclose(
            saved_plan_weights(plan.batches, n_target, norm, 2, 2), token_weights(plan, n_target, norm, 2, 2)
        )


@pytest.mark.parametrize("norm", LOSS_NORMS)
def test_view_weights_are_token_weights_of_the_saved_plan(tmp_path, make_fixture_run, norm):
    """A plan made and saved by the batching stage with settings the fixture does not use (3 accumulation
    steps): the weights the Packing page shows for every micro-batch are token_weights of that plan."""
    run = RunDir(make_fixture_run(tmp_path, "weights", 2))
    table = readers.load_token_table(run)
    plan = make_plan(table["length"].to_numpy(), "pack", max_len=16384, world_size=2, grad_accum=3, seed=5)
    plan.save(run.batch_stats("pack"), run.batch_plan("pack"))
    expected = token_weights(plan, table["n_target"].to_numpy(), norm)
    shown = {}
    for k in range(len(plan.batches)):
        view = packing.batch_view(run, "pack", k, norm, table)
        shown.update(zip(view.table["idx"], view.table["token weight"]))
    assert sorted(shown) == sorted(i for b in plan.batches for i in b)
    np.testing.assert_array_equal([shown[i] for i in sorted(shown)], expected[sorted(shown)])


# ------------------------------------------------------------------------------------------ masks and grids
class TestAttentionMaskGrid:
    def test_pack_is_block_diagonal_causal(self):
        grid, total = packing.attention_mask_grid([[2, 1]], cells=3, packed=True, supersample=1)
        assert total == 3
        np.testing.assert_array_equal(grid, [[1, 0, 0], [1, 1, 0], [0, 0, 1]])

    def test_padded_rows_mark_padding(self):
        grid, total = packing.attention_mask_grid([[2], [1]], cells=4, packed=False, supersample=1)
        assert total == 4
        np.testing.assert_array_equal(grid, [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, -1], [0, 0, -1, -1]])

    def test_downsampled_area_matches_useful_pairs(self):
        grid, total = packing.attention_mask_grid([[120, 60, 20]], cells=50, packed=True, supersample=4)
        useful = sum(n * (n + 1) / 2 for n in (120, 60, 20))
        assert grid.shape == (50, 50)
        assert abs(grid.clip(0).sum() * (total / 50) ** 2 - useful) / useful < 0.03

    def test_never_attends_across_sequences(self):
        grid, _ = packing.attention_mask_grid([[4, 4]], cells=8, packed=True, supersample=1)
        assert (grid[4:, :4] == 0).all() and (grid[:4, 4:] == 0).all()


def test_downsample_cols():
    a = np.array([[0, 0, 1, 1, 2, 2]], dtype=float)
    np.testing.assert_array_equal(packing.downsample_cols(a, 3, "first"), [[0, 1, 2]])
    b = np.array([[1.0, np.nan, np.nan, np.nan, 2.0, 4.0]])
    out = packing.downsample_cols(b, 3, "mean")
    assert out[0, 0] == 1.0 and np.isnan(out[0, 1]) and out[0, 2] == 3.0


def test_batch_view_grid():
    view = packing.BatchView(
        method="pack",
        batch=0,
        packed=True,
        row_len=5,
        seq_rows=[[7, 3]],
        labels={7: np.array([-100, 5, 6]), 3: np.array([-100, 9])},
        weights={7: 0.25, 3: 0.5},
        table=pd.DataFrame(),
    )
    slot, target, weight = view.grid()
    np.testing.assert_array_equal(slot, [[0, 0, 0, 1, 1]])
    np.testing.assert_array_equal(target, [[0, 1, 1, 0, 1]])
    np.testing.assert_array_equal(weight, [[0, 0.25, 0.25, 0, 0.5]])
    padded = packing.BatchView(
        method="naive",
        batch=0,
        packed=False,
        row_len=3,
        seq_rows=[[7], [3]],
        labels=view.labels,
        weights=view.weights,
        table=pd.DataFrame(),
    )
    slot, _, weight = padded.grid()
    np.testing.assert_array_equal(slot, [[0, 0, 0], [1, 1, -1]])
    assert np.isnan(weight[1, 2])
    fig = packing.fig_token_strip(padded)
    assert len(fig.data) == 3 and all(isinstance(t, go.Heatmap) for t in fig.data)


# ------------------------------------------------------------------------------------------ tables
class TestBatchTable:
    lengths = np.array([4, 2, 3])

    def test_padded(self):
        t = packing.batch_table([[0, 1], [2]], self.lengths, packed=False, max_len=8)
        cols = ["sequences", "tokens", "longest", "positions computed", "padding positions", "capacity"]
        assert t.loc[0, cols].tolist() == [
            2,
            6,
            4,
            8,
            2,
            16,
        ]
        assert t.loc[0, "fill"] == 6 / 16
        assert t.loc[0, "attention pairs"] == 2 * 4 * 5 / 2 and t.loc[0, "useful attention pairs"] == 10 + 3
        assert t.loc[1, "padding positions"] == 0

    def test_packed(self):
        t = packing.batch_table([[0, 1, 2]], self.lengths, packed=True, max_len=10)
        assert t.loc[0, ["positions computed", "padding positions", "capacity"]].tolist() == [9, 0, 10]
        assert t.loc[0, "fill"] == 0.9
        assert t.loc[0, "attention pairs"] == t.loc[0, "useful attention pairs"] == 10 + 3 + 6

    def test_steps_and_ranks(self):
        t = packing.batch_table(
            [[0], [1], [2], [0], [1]], self.lengths, packed=True, max_len=10, world_size=2, grad_accum=2
        )
        assert t["step"].tolist() == [0, 0, 0, 0, 1] and t["rank"].tolist() == [0, 1, 0, 1, 0]


def test_default_batch_prefers_mixed_packs():
    lengths = np.array([100, 10, 10, 10, 10, 10, 10, 50, 40])
    assert packing.default_batch([[1, 2, 3, 4, 5, 6], [0], [7, 8, 1]], lengths) == 2
    assert packing.default_batch([[0], [1, 2]], lengths) == 1
    assert packing.batch_holding([[0], [1, 2]], 2) == 1 and packing.batch_holding([[0]], 5) == 0


# ------------------------------------------------------------------------------------------ fixture run
def _files(run: RunDir) -> tuple[np.ndarray, dict]:
    """The run's token lengths and plans read straight from its files (not through the views)."""
    import datasets

    lengths = np.asarray(datasets.load_from_disk(str(run.tokens))["length"])
    plans = {m: json.loads(run.batch_plan(m).read_text())["batches"] for m in ("naive", "sort", "pack")}
    return lengths, plans


def test_method_comparison(run, tokens):
    t = packing.method_comparison(run, tokens["length"].to_numpy()).set_index("method")
    assert t.index.tolist() == ["naive", "sort", "pack"]
    lengths, plans = _files(run)
    for m, batches in plans.items():
        real = sum(int(lengths[b].sum()) for b in batches)
        computed = real if m == "pack" else sum(len(b) * int(lengths[b].max()) for b in batches)
        rows = len(batches) if m == "pack" else sum(len(b) for b in batches)
        recorded = json.loads(run.batch_stats(m).read_text())
        assert t.loc[m, "sequences"] == 300 and t.loc[m, "tokens"] == real
        assert t.loc[m, "positions computed"] == computed == recorded["computed_tokens"]
        assert t.loc[m, "padding"] == pytest.approx(1 - real / computed) == recorded["padding_fraction"]
        assert t.loc[m, "fill"] == pytest.approx(real / (rows * 16384)) == recorded["fill"]
        assert t.loc[m, "attention cost"] == pytest.approx(recorded["attention_cost"])
    assert t.loc["pack", "padding"] == 0 and t.loc["pack", "attention cost"] == 1.0
    assert t.loc["naive", "padding"] > t.loc["sort", "padding"] > 0
    assert t.loc["pack", "fill"] > 0.9 > t.loc["naive", "fill"]
    assert ((t["rank idle"] >= 0) & (t["rank idle"] < 1)).all()
    assert len(packing.fig_method_comparison(t.reset_index()).data) == 4
    stats = packing.recorded_stats(run, ["naive", "pack"]).set_index("figure")
    assert stats.loc["devices", "pack"] == "2" and stats.loc["padding", "pack"] == "0.0%"


def test_older_records_read_the_same(fixture_runs):
    """fixture-b's records use the older vocabulary (a pack's padding was its unused capacity): the recorded
    figures the page shows agree with the figures recomputed from its plans."""
    run_b = RunDir(fixture_runs / "fixture-b")
    old = json.loads(run_b.batch_stats("pack").read_text())
    assert old["padding_fraction"] > 0 and "fill" not in old  # the older meaning
    lengths, plans = _files(run_b)
    real = sum(int(lengths[b].sum()) for b in plans["pack"])
    shown = packing.recorded_stats(run_b, ["sort", "pack"]).set_index("figure")
    assert shown.loc["padding", "pack"] == "0.0%"
    assert shown.loc["fill", "pack"] == f"{real / (len(plans['pack']) * 16384):.1%}"
    t = packing.method_comparison(run_b, lengths).set_index("method")
    assert t.loc["pack", "padding"] == 0 and shown.loc["positions computed", "pack"] == f"{real:,}"
    # the older records priced attention in n^2, today's in causal pairs: the same figure within rounding
    assert abs(float(shown.loc["attention cost", "sort"].rstrip("×")) - t.loc["sort", "attention cost"]) < 0.02


def test_method_comparison_missing(fixture_runs):
    with pytest.raises(readers.MissingArtifact) as exc:
        packing.method_comparison(RunDir(fixture_runs / "blank"), np.array([1]))
    assert exc.value.key == "batching"


def test_batch_view_on_fixture(run, tokens):
    lengths = tokens["length"].to_numpy()
    plan = readers.load_plan(run, "pack", lengths)
    k = packing.default_batch(plan.batches, lengths)
    view = packing.batch_view(run, "pack", k, "sequence", tokens)
    assert view.packed and len(view.seq_rows) == 1 and view.row_len == int(view.table["length"].sum())
    step = k // 4  # fixture plans: world_size 2 x grad_accum 2
    w = token_weights(plan, tokens["n_target"].to_numpy(), "sequence", 2, 2)
    idx = [i for b in plan.batches[step * 4 : step * 4 + 4] for i in b]
    assert math.isclose(float((w[idx] * tokens["n_target"].to_numpy()[idx]).sum()), 1.0)
    assert view.table["token weight"].tolist() == [w[i] for i in view.table["idx"]]
    naive = packing.batch_view(run, "naive", 0, "token", tokens)
    assert not naive.packed and len(naive.seq_rows) == 4
    fig = packing.fig_attention_mask(naive)
    assert (np.asarray(fig.data[0].z) == -1).any()  # the padding is visible
    with pytest.raises(ValueError, match="out of range"):
        packing.batch_view(run, "pack", 10_000, "sequence", tokens)
    fill = packing.fig_method_fill(run, "pack", lengths, sort=True)
    assert len(fill.data[0].y) == len(plan.batches) and fill.layout.title.text.startswith("Pack fill")


def test_same_sequence_views(run, tokens):
    views = packing.same_sequence_views(run, ["naive", "sort"], 7, "sequence", tokens)
    assert [v.method for v in views] == ["naive", "sort"]
    assert all(7 in v.table["idx"].tolist() and not v.packed for v in views)
