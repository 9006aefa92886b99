"""The ablation experiment (longalign.recipes.ablation): its smallest configuration end to end, the JSON schema
it writes, and the pieces of analysis on literal inputs."""

from __future__ import annotations

import json

import pytest

from longalign.recipes import ablation
from longalign.recipes.ablation import ARMS, AblationConfig, analyse, spread, time_to_reach

ARM_METRICS = {
    "needle_exact_match",
    "needle_key_phrase_recall",
    "needle_loss",
    "needle_passcode_loss",
    "needle_template_loss",
    "continuation_loss",
    "mixed_loss",
    "train_s",
    "cpu_s",
    "tokens_per_s",
    "tokens_per_cpu_s",
    "steps",
    "padding_fraction",
}
SPREAD_KEYS = {"mean", "std", "median", "min", "max", "n"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation")
    cfg = AblationConfig(smoke=True, out=str(out / "results"), workdir=str(out / "work"))
    summary = ablation.run(cfg)
    return summary, json.loads((out / "results" / ablation.RESULT_FILE).read_text())


def test_smoke_run_writes_result_and_figure(smoke):
    summary, result = smoke
    assert summary.result_path.is_file() and summary.figure_path.is_file()
    html = summary.figure_path.read_text()
    assert "<html>" in html[:200].lower() and "plotly" in html and "pack+sequence" in html
    assert result["schema_version"] == ablation.SCHEMA_VERSION
    assert set(result) >= {"config", "model", "data", "arms", "table", "time_to_quality", "loss_weighting_effect"}
    assert set(result) >= {"simulated", "runs", "versions", "total_s", "date", "paper"}
    assert result["config"]["smoke"] is True and result["config"]["arms"] == list(ARMS)


def test_every_arm_has_every_metric_with_its_spread(smoke):
    _, result = smoke
    assert list(result["table"]) == list(ARMS)
    for arm, metrics in result["table"].items():
        assert ARM_METRICS <= set(metrics), arm
        assert 0 < metrics["needle_weight_share"]["mean"] < 1, arm
        buckets = [k for k in metrics if k.startswith("loss[needle/")]
        assert len(buckets) == len(result["config"]["buckets"]) - 1, arm
        assert "loss[continuation/all]" in metrics
        for name, s in metrics.items():
            assert set(s) == SPREAD_KEYS, (arm, name)
            assert s["n"] == len(result["config"]["seeds"])
        assert 0.0 <= metrics["needle_exact_match"]["mean"] <= 1.0
        assert metrics["needle_loss"]["mean"] > 0 and metrics["tokens_per_s"]["mean"] > 0


def test_runs_share_data_and_budget(smoke):
    _, result = smoke
    runs = result["runs"]
    assert len(runs) == len(ARMS) * len(result["config"]["seeds"])
    # same rows and epochs: every arm trains on the same real and target tokens
    assert len({r["real_tokens"] for r in runs}) == 1 and len({r["target_tokens"] for r in runs}) == 1
    assert {r["attention_backend"] for r in runs if r["method"] == "pack"} <= {"longalign_segment", "longalign_varlen"}
    for r in runs:
        assert r["curve"][0]["step"] == 0 and r["curve"][-1]["step"] == r["steps"]
        assert [p["train_s"] for p in r["curve"]] == sorted(p["train_s"] for p in r["curve"])
        assert r["curve"][-1]["tokens"] == r["real_tokens"]
    kinds = result["data"]["kinds"]
    assert kinds["needle"]["mean_target_tokens"] < kinds["continuation"]["mean_target_tokens"]
    assert kinds["needle"]["mean_length"] > kinds["continuation"]["mean_length"]


def test_simulator_prediction_beside_time_to_quality(smoke):
    _, result = smoke
    for label, sim in result["simulated"].items():
        assert set(sim["speedup_vs_naive"]) == {"naive", "sort", "pack"}, label
        assert sim["speedup_vs_naive"]["naive"] == pytest.approx(1.0)
    assert result["time_to_quality"]["naive+token"]["time_to_quality_speedup"]["mean"] == pytest.approx(1.0)
    effect = result["loss_weighting_effect"]
    assert set(effect) == {"pack+sequence vs pack+pack", "pack+sequence vs pack+token"}


def test_pack_and_token_losses_differ_with_several_packs_per_step(smoke):
    _, result = smoke
    by = {r["arm"]: r for r in result["runs"]}
    assert by["pack+pack"]["train_loss"] != by["pack+token"]["train_loss"]


def test_spread_and_time_to_reach_on_literal_values():
    s = spread([1.0, 3.0, None])
    assert s == {"mean": 2.0, "std": pytest.approx(2**0.5), "median": 2.0, "min": 1.0, "max": 3.0, "n": 2}
    assert spread([None])["mean"] is None
    curve = [
        {"loss_mixed": 4.0, "train_s": 0.0},
        {"loss_mixed": 2.0, "train_s": 10.0},
        {"loss_mixed": 1.0, "train_s": 20.0},
    ]
    assert time_to_reach(curve, 3.0) == pytest.approx(5.0)
    assert time_to_reach(curve, 1.0) == pytest.approx(20.0)
    assert time_to_reach(curve, 0.5) is None


def _run(arm, seed, em, needle, train_s, curve):
    return {
        "arm": arm,
        "seed": seed,
        "train_s": train_s,
        "cpu_s": train_s,
        "tokens_per_s": 1.0,
        "tokens_per_cpu_s": 1.0,
        "steps": 1,
        "real_tokens": 10,
        "padded_tokens": 10,
        "final": {
            "exact_match": em,
            "key_phrase_recall": em,
            "loss": {"needle": needle, "continuation": 1.0},
            "loss_mixed": curve[-1]["loss_mixed"],
            "loss_bucket": {},
        },
        "curve": curve,
    }


def test_analyse_effect_and_time_to_quality():
    def c(t_end, end):
        start = {"loss_mixed": 4.0, "needle_loss": 4.0, "train_s": 0.0, "cpu_s": 0.0}
        return [start, {"loss_mixed": end, "needle_loss": end, "train_s": t_end, "cpu_s": t_end}]

    runs = [
        _run("naive+token", 0, 0.1, 3.0, 20.0, c(20.0, 2.0)),
        _run("pack+pack", 0, 0.2, 2.5, 10.0, c(10.0, 2.0)),
        _run("pack+sequence", 0, 0.5, 1.5, 10.0, c(10.0, 1.0)),
    ]
    out = analyse(runs, ["naive+token", "pack+pack", "pack+sequence"], [0])
    assert out["time_to_quality"]["pack+pack"]["time_to_quality_speedup"]["mean"] == pytest.approx(2.0)
    # pack+sequence reaches naive's final 2.0 at 2/3 of its 10 s
    assert out["time_to_quality"]["pack+sequence"]["time_to_quality_speedup"]["mean"] == pytest.approx(3.0)
    e = out["loss_weighting_effect"]["pack+sequence vs pack+pack"]
    assert e["exact_match_difference"]["mean"] == pytest.approx(0.3)
    assert e["needle_loss_difference"]["mean"] == pytest.approx(-1.0)
    assert e["relative_exact_match_gain"] == pytest.approx(1.5)
    # on the needle loss the target is naive's final 3.0: naive's curve reaches it at 10 s, pack+sequence's at 10/3 s
    needle = out["time_to_quality"]["pack+sequence"]["needle_time_to_quality_speedup_cpu"]
    assert needle["mean"] == pytest.approx(3.0)


def test_config_rejects_bad_ranges():
    with pytest.raises(ValueError, match="needle_max"):
        AblationConfig(needle_min=500, needle_max=100)
    with pytest.raises(ValueError, match="buckets"):
        AblationConfig(buckets=[500, 100])
    with pytest.raises(ValueError):
        AblationConfig(arms=["pack+nothing"])


def test_load_result_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="benchmarks/ablation.py"):
        ablation.load_result(tmp_path / "missing.json")
    (tmp_path / "old.json").write_text(json.dumps({"schema_version": 0}))
    with pytest.raises(ValueError, match="schema_version"):
        ablation.load_result(tmp_path / "old.json")


def test_reanalyse_reproduces_the_analysis(smoke, tmp_path):
    _, result = smoke
    path = tmp_path / "copy.json"
    path.write_text(json.dumps(result))
    again = ablation.reanalyse(path)
    assert again["table"].keys() == result["table"].keys()
    for arm in result["table"]:
        for key, s in result["table"][arm].items():
            assert again["table"][arm][key]["mean"] == pytest.approx(s["mean"]), (arm, key)
    assert json.loads(path.read_text())["time_to_quality"] == again["time_to_quality"]


def test_median_step_time_ignores_the_warm_up_and_busy_spells():
    run = {"step_seconds": [9.0, 1.0, 1.2, 30.0, 1.1], "curve": [{"step": 0}, {"step": 4}]}
    assert ablation.median_step_s(run) == pytest.approx(1.15)
    assert [p["robust_s"] for p in ablation.with_robust_clock(run)] == pytest.approx([0.0, 4.6])


def test_needle_weight_share_per_normalisation():
    # one step of two packs: [needle (2 targets), continuation (8)] and [needle (2)]
    batches, n_target, kinds = [[0, 1], [2]], [2, 8, 2], ["needle", "continuation", "needle"]
    share = {
        norm: ablation.needle_weight_share(batches, n_target, kinds, norm, 2) for norm in ("token", "pack", "sequence")
    }
    assert share["token"] == pytest.approx(4 / 12)
    assert share["pack"] == pytest.approx(0.5 * 2 / 10 + 0.5 * 1.0)
    assert share["sequence"] == pytest.approx(2 / 3)


def test_command_line_help_and_bad_arm():
    from longalign.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["experiment", "ablation", "--help"])
    assert exc.value.code == 0
    assert main(["experiment", "ablation", "--arms", "pack+nothing"]) == 2
