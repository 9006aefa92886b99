"""longalign.report: literal inputs with exact expectations, then the loaders against a fixture run directory."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from longalign import report
from longalign.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, make_fixture_run) -> Path:
    root = tmp_path_factory.mktemp("runs")
    make_run = make_fixture_run
    make_run(root, "fixture", 0)
    make_run(root, "fixture-b", 1, model="other-model", skill=5.0)
    (root / "blank").mkdir()
    (root / ".hidden").mkdir()
    return root


@pytest.fixture(scope="module")
def run(runs) -> RunDir:
    return RunDir(runs / "fixture")


@pytest.fixture(scope="module")
def tokens(run) -> pd.DataFrame:
    return report.load_token_table(run)


# ------------------------------------------------------------------------------------------ loss weights
class TestComputeTokenWeights:
    batches = [[0, 1], [2]]
    n_target = np.array([2, 3, 5])

    def test_sequence(self):
        w = report.compute_token_weights(self.batches, self.n_target, "sequence", world_size=1, grad_accum=2)
        np.testing.assert_allclose(w, [1 / 6, 1 / 9, 1 / 15])

    def test_token(self):
        w = report.compute_token_weights(self.batches, self.n_target, "token", world_size=2, grad_accum=1)
        np.testing.assert_allclose(w, [0.1, 0.1, 0.1])

    def test_pack(self):
        w = report.compute_token_weights(self.batches, self.n_target, "pack", world_size=1, grad_accum=2)
        np.testing.assert_allclose(w, [0.1, 0.1, 0.1])

    def test_separate_steps(self):
        w = report.compute_token_weights(self.batches, self.n_target, "sequence", world_size=1, grad_accum=1)
        np.testing.assert_allclose(w, [1 / 4, 1 / 6, 1 / 5])

    @pytest.mark.parametrize("norm", report.LOSS_NORMS)
    def test_each_step_sums_to_one(self, norm):
        rng = np.random.default_rng(3)
        n_target = rng.integers(0, 50, size=40)
        batches = [list(range(i, min(i + 3, 40))) for i in range(0, 40, 3)]
        w = report.compute_token_weights(batches, n_target, norm, world_size=2, grad_accum=2)
        for s in range(0, len(batches), 4):
            idx = [i for b in batches[s:s + 4] for i in b]
            if n_target[idx].sum():
                assert math.isclose(float((w[idx] * n_target[idx]).sum()), 1.0, rel_tol=1e-12)
        assert (w[n_target == 0] == 0).all()

    def test_sequences_without_targets_do_not_count(self):
        w = report.compute_token_weights([[0, 1]], np.array([0, 4]), "sequence")
        np.testing.assert_allclose(w, [0.0, 0.25])

    def test_bad_norm(self):
        with pytest.raises(ValueError, match="'sequence', 'token', 'pack'|sequence, token, pack"):
            report.compute_token_weights([[0]], np.array([1]), "mean")

    @pytest.mark.parametrize("norm", report.LOSS_NORMS)
    def test_matches_batching_stage(self, norm):
        batching = pytest.importorskip("longalign.batching")
        if not hasattr(batching, "make_plan"):
            pytest.skip("longalign.batching.make_plan not available")
        rng = np.random.default_rng(0)
        lengths = rng.integers(10, 500, size=60)
        n_target = rng.integers(0, 40, size=60)
        plan = batching.make_plan(lengths, "pack", max_len=1000, world_size=2, grad_accum=2)
        ours = report.compute_token_weights(plan.batches, n_target, norm, 2, 2)
        np.testing.assert_allclose(ours, batching.token_weights(plan, n_target, norm, 2, 2))
        np.testing.assert_allclose(report.sequence_weights(plan.batches, n_target, norm, 2, 2), ours)


# ------------------------------------------------------------------------------------------ masks and grids
class TestAttentionMaskGrid:
    def test_pack_is_block_diagonal_causal(self):
        grid, total = report.attention_mask_grid([[2, 1]], cells=3, packed=True, supersample=1)
        assert total == 3
        np.testing.assert_array_equal(grid, [[1, 0, 0], [1, 1, 0], [0, 0, 1]])

    def test_padded_rows_mark_padding(self):
        grid, total = report.attention_mask_grid([[2], [1]], cells=4, packed=False, supersample=1)
        assert total == 4
        np.testing.assert_array_equal(grid, [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, -1], [0, 0, -1, -1]])

    def test_downsampled_area_matches_useful_pairs(self):
        grid, total = report.attention_mask_grid([[120, 60, 20]], cells=50, packed=True, supersample=4)
        useful = sum(n * (n + 1) / 2 for n in (120, 60, 20))
        assert grid.shape == (50, 50)
        assert abs(grid.clip(0).sum() * (total / 50) ** 2 - useful) / useful < 0.03

    def test_never_attends_across_sequences(self):
        grid, _ = report.attention_mask_grid([[4, 4]], cells=8, packed=True, supersample=1)
        assert (grid[4:, :4] == 0).all() and (grid[:4, 4:] == 0).all()


def test_downsample_cols():
    a = np.array([[0, 0, 1, 1, 2, 2]], dtype=float)
    np.testing.assert_array_equal(report._downsample_cols(a, 3, "first"), [[0, 1, 2]])
    b = np.array([[1.0, np.nan, np.nan, np.nan, 2.0, 4.0]])
    out = report._downsample_cols(b, 3, "mean")
    assert out[0, 0] == 1.0 and np.isnan(out[0, 1]) and out[0, 2] == 3.0


def test_batch_view_grid():
    view = report.BatchView(method="pack", batch=0, packed=True, row_len=5, seq_rows=[[7, 3]],
                            labels={7: np.array([-100, 5, 6]), 3: np.array([-100, 9])},
                            weights={7: 0.25, 3: 0.5}, table=pd.DataFrame())
    slot, target, weight = view.grid()
    np.testing.assert_array_equal(slot, [[0, 0, 0, 1, 1]])
    np.testing.assert_array_equal(target, [[0, 1, 1, 0, 1]])
    np.testing.assert_array_equal(weight, [[0, 0.25, 0.25, 0, 0.5]])
    padded = report.BatchView(method="naive", batch=0, packed=False, row_len=3, seq_rows=[[7], [3]],
                              labels=view.labels, weights=view.weights, table=pd.DataFrame())
    slot, _, weight = padded.grid()
    np.testing.assert_array_equal(slot, [[0, 0, 0], [1, 1, -1]])
    assert np.isnan(weight[1, 2])
    fig = report.fig_token_strip(padded)
    assert len(fig.data) == 3 and all(isinstance(t, go.Heatmap) for t in fig.data)


# ------------------------------------------------------------------------------------------ tables
class TestBatchTable:
    lengths = np.array([4, 2, 3])

    def test_padded(self):
        t = report.batch_table([[0, 1], [2]], self.lengths, packed=False, max_len=8)
        assert t.loc[0, ["sequences", "real tokens", "longest", "tokens computed", "padding", "capacity"]].tolist() == \
            [2, 6, 4, 8, 2, 16]
        assert t.loc[0, "fill"] == 6 / 16
        assert t.loc[0, "attention pairs"] == 2 * 4 * 5 / 2 and t.loc[0, "useful attention pairs"] == 10 + 3
        assert t.loc[1, "padding"] == 0

    def test_packed(self):
        t = report.batch_table([[0, 1, 2]], self.lengths, packed=True, max_len=10)
        assert t.loc[0, ["tokens computed", "padding", "capacity"]].tolist() == [9, 0, 10]
        assert t.loc[0, "fill"] == 0.9
        assert t.loc[0, "attention pairs"] == t.loc[0, "useful attention pairs"] == 10 + 3 + 6

    def test_steps_and_ranks(self):
        t = report.batch_table([[0], [1], [2], [0], [1]], self.lengths, packed=True, max_len=10, world_size=2,
                               grad_accum=2)
        assert t["step"].tolist() == [0, 0, 0, 0, 1] and t["rank"].tolist() == [0, 1, 0, 1, 0]


def test_default_batch_prefers_mixed_packs():
    lengths = np.array([100, 10, 10, 10, 10, 10, 10, 50, 40])
    assert report.default_batch([[1, 2, 3, 4, 5, 6], [0], [7, 8, 1]], lengths) == 2
    assert report.default_batch([[0], [1, 2]], lengths) == 1


def test_length_histogram_and_edges():
    df = pd.DataFrame({"length": [1, 5, 10, 11], "source": ["a", "a", "b", "a"]})
    h = report.length_histogram(df, "source", np.array([0, 5, 10]))
    assert h[h.group == "a"]["count"].tolist() == [1, 1]
    assert h[h.group == "b"]["count"].tolist() == [0, 1]
    e = report.length_edges(1, 1000, 3, log=True)
    np.testing.assert_allclose(e, [1, 10, 100, 1000])


def test_classify_kind():
    kind = report.classify_kind(pd.Series(["chat", "summary", "", "general"]),
                                pd.Series(["x", "books", "ShareGPT", "mydata"]), shorts={"sharegpt", "mydata"})
    assert kind.tolist() == ["short", "long", "short", "short"]


def test_length_and_mix_summary():
    df = pd.DataFrame({"length": [100, 300, 10], "n_target": [10, 30, 5], "source": ["a", "a", "s"],
                       "kind": ["long", "long", "short"]})
    s = report.length_summary(df, "source")
    assert s["source"].tolist() == ["a", "s"] and s["tokens"].tolist() == [400, 10]
    assert s["max"].tolist() == [300, 10]
    m = report.mix_summary(df)
    assert m["sequences"].tolist() == [2, 1]
    assert m["token share"].tolist() == [400 / 410, 10 / 410]
    with pytest.raises(ValueError, match="source, lang, task_type, kind"):
        report.length_summary(df, "colour")


def test_needle_grid_cell_and_highlight():
    df = pd.DataFrame({"context_length": [1000, 1000, 2000, 2000], "depth_percent": [10.0, 50.0, 10.0, 50.0],
                       "judge_score": [10, 1, 7, 3], "recall": [1, 0, 0.5, 0.25], "window": ["w"] * 4})
    g = report.needle_grid(df, "judge_score")
    assert g.index.tolist() == [10.0, 50.0] and g.columns.tolist() == [1000, 2000]
    assert g.to_numpy().tolist() == [[10, 7], [1, 3]]
    assert report.needle_cell(df, 2000, 50)["recall"] == 0.25
    with pytest.raises(ValueError, match="no needle probe"):
        report.needle_cell(df, 3000, 50)
    assert report.highlight("a <b> NEEDLE c", "NEEDLE") == "a &lt;b&gt; <mark><b>NEEDLE</b></mark> c"
    assert report.highlight("a <b>", None) == "a &lt;b&gt;"
    fig = report.fig_needle_heatmap(g)
    assert fig.data[0].zmin == 1 and fig.data[0].zmax == 10
    assert list(fig.data[1].x) == ["1,000", "2,000", "1,000", "2,000"] and list(fig.data[1].y) == ["10%", "10%", "50%", "50%"]
    assert list(fig.data[1].customdata) == ["10", "7", "1", "3"]  # the clickable overlay carries each cell's score


def test_longbench_chat_tables():
    a = pd.DataFrame({"idx": [1, 2, 3], "lang": ["en", "zh", "en"], "query": ["q1", "q2", "q3"],
                      "score": [8.0, 4.0, np.nan]})
    b = pd.DataFrame({"idx": [1, 2, 3], "lang": ["en", "zh", "en"], "query": ["q1", "q2", "q3"],
                      "score": [6.0, 5.0, 9.0]})
    t = report.compare_longbench_chat({"A": a, "B": b})
    assert t.columns.tolist() == ["idx", "lang", "query", "A", "B", "Δ"]
    assert t["Δ"].tolist()[:2] == [-2.0, 1.0]
    assert report.filter_questions(t, ["en"], (1, 10), True, "A")["idx"].tolist() == [1, 3]
    assert report.filter_questions(t, ["en"], (1, 10), False, "A")["idx"].tolist() == [1]
    assert report.filter_questions(t, None, (5, 10), False, "B")["idx"].tolist() == [1, 2, 3]
    by = report.longbench_chat_by_lang({"A": a, "B": b})
    assert by.set_index("run").loc["A", "overall"] == 6.0 and by.set_index("run").loc["A", "unscored"] == 1
    assert by.set_index("run").loc["B", "en"] == 7.5
    assert report.question_detail(a, 2)["query"] == "q2"
    with pytest.raises(ValueError, match="available: 1, 2, 3"):
        report.question_detail(a, 9)


def test_format_count():
    assert [report.format_count(x) for x in (999, 12345, 1_636_644, 2.5e9)] == ["999", "12.3k", "1.64M", "2.5B"]


def test_colors_are_distinct():
    c = report._colors_for(["naive", "pack", "pack-loss-pack", "x", "sort"])
    assert c["naive"] == report.METHOD_COLORS["naive"] and len(set(c.values())) == 5


# ------------------------------------------------------------------------------------------ fixture run
def test_runs_listing(runs):
    assert report.list_runs(runs) == ["blank", "fixture", "fixture-b"]
    ov = report.runs_overview(runs).set_index("run")
    assert ov.loc["fixture"].drop("stages").all() and not ov.loc["blank"].drop("stages").any()
    assert report.list_runs(runs / "nowhere") == []


def test_token_table(run, tokens):
    assert len(tokens) == 300
    assert tokens.columns.tolist() == ["idx", "length", "n_target", "source", "lang", "task_type", "kind"]
    assert (tokens["kind"] == "short").sum() == 100 and (tokens[tokens.kind == "short"].task_type == "chat").all()
    assert tokens["length"].max() <= report.load_token_meta(run)["max_len"]
    labels = report.load_labels(run, [5, 0])
    assert [len(x) for x in labels] == tokens.loc[[5, 0], "length"].tolist()
    assert [int((x != -100).sum()) for x in labels] == tokens.loc[[5, 0], "n_target"].tolist()


def test_length_figure(tokens):
    fig = report.fig_length_distribution(tokens, "source")
    assert len(fig.data) == 2 * tokens["source"].nunique()
    assert sum(int(np.sum(t.y)) for t in fig.data) == len(tokens)  # every sequence in exactly one panel bin
    assert fig.layout.annotations[1].text.startswith("8k–16k")
    log = report.fig_length_distribution(tokens, "lang", log_x=True)
    assert log.layout.xaxis.type == "log" and all(isinstance(t, go.Scatter) for t in log.data)


def test_method_comparison(run, tokens):
    t = report.method_comparison(run, tokens["length"].to_numpy()).set_index("method")
    assert t.index.tolist() == ["naive", "sort", "pack"]
    assert (t["sequences"] == 300).all() and t["real tokens"].nunique() == 1
    assert t.loc["pack", "padding fraction"] == 0 and t.loc["pack", "attention cost ×"] == 1.0
    assert t.loc["naive", "padding fraction"] > t.loc["sort", "padding fraction"] > 0
    assert t.loc["pack", "fill"] > 0.9 > t.loc["naive", "fill"]
    recorded = report.load_batch_stats(run, "naive")
    assert t.loc["naive", "tokens computed"] == recorded["computed_tokens"]
    assert len(report.fig_method_comparison(t.reset_index()).data) == 4


def test_batch_view_on_fixture(run, tokens):
    plan = report.load_plan(run, "pack")
    k = report.default_batch(plan, tokens["length"].to_numpy())
    view = report.batch_view(run, "pack", k, "sequence", tokens)
    assert view.packed and len(view.seq_rows) == 1 and view.row_len == int(view.table["length"].sum())
    step = k // 4  # fixture plans: world_size 2 x grad_accum 2
    w = report.sequence_weights(plan, tokens["n_target"].to_numpy(), "sequence", 2, 2)
    idx = [i for b in plan[step * 4:step * 4 + 4] for i in b]
    assert math.isclose(float((w[idx] * tokens["n_target"].to_numpy()[idx]).sum()), 1.0)
    assert view.table["token weight"].tolist() == [w[i] for i in view.table["idx"]]
    naive = report.batch_view(run, "naive", 0, "token", tokens)
    assert not naive.packed and len(naive.seq_rows) == 4
    fig = report.fig_attention_mask(naive)
    assert (np.asarray(fig.data[0].z) == -1).any()  # the padding is visible
    with pytest.raises(ValueError, match="out of range"):
        report.batch_view(run, "pack", 10_000, "sequence", tokens)


def test_simulation(run, tokens):
    config, table = report.load_simulation(run)
    assert config["world_size"] == 8 and table["method"].tolist() == ["naive", "sort", "pack"]
    assert table["speed-up vs slowest"].min() == 1.0
    if report.simulate_api() is None:
        pytest.skip("longalign.batching.simulate not available")
    cfg, live = report.run_simulation(tokens["length"].to_numpy(), devices=4, batch_size=2, max_len=16384,
                                      grad_accum=2)
    live = live.set_index("method")
    assert {"naive", "sort", "pack"} <= set(live.index)
    assert live.loc["pack", "total_seconds"] < live.loc["naive", "total_seconds"]
    assert ((live["idle_fraction"] >= 0) & (live["idle_fraction"] < 1)).all()


def test_metrics(run):
    m = report.load_metrics(run)
    assert report.list_train_runs(run) == ["naive", "sort", "pack", "pack-loss-pack"]
    s = report.train_summary(run, m).set_index("train")
    assert s.loc["pack", "steps"] == 26 and s.loc["naive", "steps"] == 19
    assert s.loc["pack-loss-pack", "loss norm"] == "pack" and s.loc["pack", "padding share"] == 0
    assert s.loc["pack", "tokens/s"] > s.loc["naive", "tokens/s"]
    fig = report.fig_loss(m, window=3)
    assert len(fig.data) == 4 and fig.data[3].line.dash == "dash"
    assert len(report.fig_throughput(m).data) == 8
    assert report.smooth(pd.Series([1.0, 3.0, 5.0]), 2).tolist() == [1.0, 2.0, 4.0]


def test_longbench_chat_fixture(runs, run):
    a = report.load_longbench_chat(run)
    b = report.load_longbench_chat(RunDir(runs / "fixture-b"))
    summary = report.load_longbench_chat_summary(run)
    assert len(a) == summary["n"] == 12
    assert math.isclose(a["score"].mean(), summary["mean"], abs_tol=1e-4)
    assert set(a["lang"]) == {"en", "zh"} and a["prompt_tokens"].notna().all()
    t = report.compare_longbench_chat({"fixture": a, "fixture-b": b})
    assert len(t) == 12 and "Δ" in t
    d = report.question_detail(a, 5)
    assert len(d["runs"]) == 2 and d["runs"][1]["score"] is None  # the fixture's unparsed judge reply


def test_needle_fixture(run):
    df = report.load_needle(run)
    g = report.needle_grid(df)
    assert g.shape == (5, 6)
    assert math.isclose(df["judge_score"].mean(), report.load_needle_summary(run)["mean_judge"], abs_tol=1e-4)
    cell = report.needle_cell(df, 16000, 50.0)
    assert report.load_needle_summary(run)["needle"] in cell["window"]


@pytest.mark.parametrize("key,fn", [
    ("tokens", report.load_token_table), ("simulate", report.load_simulation), ("train", report.load_metrics),
    ("longbench_chat", report.load_longbench_chat), ("needle", report.load_needle),
    ("batching", lambda r: report.method_comparison(r, np.array([1]))),
])
def test_missing_artifacts_name_the_command(runs, key, fn):
    blank = RunDir(runs / "blank")
    with pytest.raises(report.MissingArtifact) as exc:
        fn(blank)
    assert exc.value.key == key
    assert f"`{report.ARTIFACTS[key].command.format(run=blank.root)}`" in str(exc.value)
    assert isinstance(exc.value, FileNotFoundError)


def test_artifact_table_and_stages(runs, run):
    t = report.artifact_table(run)
    assert t["present"].all() and t["created by"].str.startswith("longalign ").all()
    assert set(report.run_stages(run)["stage"]) == {"tokenize", "batch", "train", "eval"}
    assert report.run_stages(RunDir(runs / "blank")).empty
