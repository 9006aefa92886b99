"""The demo's own logic (the stages it calls are tested in their modules; CI runs ``longalign demo --quick``)."""

from __future__ import annotations

import json

import pytest

from longalign.eval.longbench_chat import load_longbench_chat
from longalign.recipes import demo
from longalign.rundir import RunDir, append_jsonl, read_jsonl


def _record(doc_id: str, answer: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": f"document {doc_id}\n\nWhat is it?"},
            {"role": "assistant", "content": answer},
        ],
        "doc_id": doc_id,
        "question": "What is it?",
        "lang": "en",
        "source": "pydoc",
    }


@pytest.fixture
def run(tmp_path):
    run = RunDir(tmp_path / "demo")
    append_jsonl(
        run.corpus, [{"id": f"d{i}", "source": "pydoc", "lang": "en", "n_tokens": 10, "text": "x"} for i in range(4)]
    )
    return run


def test_held_out_records_are_the_last_generated_in_corpus_order(run):
    append_jsonl(run.long, [_record("d3", "three"), _record("d0", "zero"), _record("d2", "two")])  # d1 failed
    prof = demo.PROFILES["quick"]
    train, held = demo.split_long_records(run, prof)
    assert [r["doc_id"] for r in train] == ["d0", "d2"]
    assert [r["doc_id"] for r in held] == ["d3"]


def test_one_generated_record_is_kept_for_training(run):
    append_jsonl(run.long, [_record("d1", "one")])
    train, held = demo.split_long_records(run, demo.PROFILES["full"])
    assert [r["doc_id"] for r in train] == ["d1"] and held == []


def test_mini_set_is_loadable_as_longbench_chat_with_labelled_anchor_examples(run):
    demo.write_mini_set(run, [_record("d3", "The answer is a long and careful explanation.")], [_record("d0", "zero")])
    cases = load_longbench_chat(demo.mini_set_path(run))
    assert len(cases) == 1
    case = cases[0]
    assert case.query == "What is it?" and case.answer.startswith("The answer")
    assert [e["score"] for e in case.examples] == [10, 4, 1]
    assert case.examples[2]["answer"] == "zero"
    demo.write_mini_set(run, [], [])  # rewriting replaces, never appends twice
    assert read_jsonl(demo.mini_set_path(run)) == []


def test_profile_overrides():
    cfg = demo.DemoConfig(quick=True, n_docs=5, max_steps=3, n_short=7)
    prof = demo.profile_for(cfg)
    assert (prof.n_docs, prof.max_steps, prof.n_short) == (5, 3, 7)
    assert prof.max_len == demo.PROFILES["quick"].max_len
    assert json.dumps(prof.__dict__)


def test_every_stage_has_a_budget_and_the_planned_budgets_sum_to_at_most_fifteen_and_four_minutes():
    """The configured plan only (the measured demo times are in the README, taken on a quiet machine)."""
    for name, prof in demo.PROFILES.items():
        names = [n for n, _ in demo.stages(demo.DemoConfig(quick=name == "quick"), prof)]
        assert all(prof.budget(n) for n in names), [n for n in names if not prof.budget(n)]
    assert sum(b for _, b in demo.PROFILES["full"].budgets) <= 15 * 60
    assert sum(b for _, b in demo.PROFILES["quick"].budgets) <= 4 * 60


def test_held_out_conversations_are_written_whole(run):
    recs = [_record("d3", "three"), _record("d2", "two")]
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    demo.write_heldout(run, recs, [chat])
    demo.write_heldout(run, recs, [chat])  # rewriting replaces
    rows = read_jsonl(run.heldout)
    assert [r["doc_id"] for r in rows] == ["d3", "d2", None] and rows[0]["messages"] == recs[0]["messages"]
    assert [r["kind"] for r in rows] == ["long", "long", "short"]


def _results(naive=120.0, sort=80.0, pack=60.0):
    out = {
        "batching": {
            "sequences": 9,
            "real_tokens": 5000,
            "simulated_speedup_vs_naive": {"naive": 1.0, "sort": 1.4, "pack": 1.9},
        }
    }
    for m, secs in (("naive", naive), ("sort", sort), ("pack", pack)):
        out[f"train:{m}"] = {"train_seconds": secs, "real_tokens": 5000, "stage_seconds": secs + 5}
    return out


def test_methods_are_compared_on_measured_seconds_beside_the_simulator():
    cmp_ = demo.compare_methods(_results())
    assert cmp_["naive"]["measured_speedup_vs_naive"] == 1.0
    assert cmp_["sort"]["measured_speedup_vs_naive"] == 1.5 and cmp_["sort"]["simulated_speedup_vs_naive"] == 1.4
    assert cmp_["pack"]["measured_speedup_vs_naive"] == 2.0 and cmp_["pack"]["simulated_speedup_vs_naive"] == 1.9
    assert demo.compare_methods({})["pack"]["measured_speedup_vs_naive"] is None


def test_explanation_names_each_number_and_the_overrun():
    results = _results()
    results["eval:heldout"] = {
        "conversations": 2,
        "sequence_mean_loss": {"base": 2.5, "tuned": 2.1, "change": -0.4},
        "short_conversations": 4,
        "short_sequence_mean_loss": {"base": 2.9, "tuned": 2.2, "change": -0.7},
    }
    results["eval:needle"] = {"cells": 2, "mean_recall": {"base": 0.0, "tuned": 0.5, "change": 0.5}}
    summary = {
        "stages": results,
        "methods": demo.compare_methods(results),
        "overruns": [{"stage": "generate", "seconds": 400.0, "budget": 300.0}],
    }
    text = "\n".join(demo.explain(summary))
    assert "pack 60 s (x2.0, simulated x1.9)" in text
    assert "base 2.500 -> fine-tuned 2.100 (-0.400)" in text
    assert "Held-out loss, short: 4 short chats not trained on" in text and "(-0.700); the fine-tune moved" in text
    assert "generate took 400 s, planned 300 s: the machine is slower or busier than the reference" in text
    assert "OVER BUDGET" not in text.upper()
    summary["overruns"] = []
    assert "no longer than planned" in demo.explain(summary)[-1]


def test_trainings_run_in_bf16_only_where_the_cpu_has_native_bf16(monkeypatch):
    import torch

    from longalign.train import model_setup

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(model_setup, "cpu_bf16_support", lambda: "avx512_bf16")
    assert demo.demo_precision(demo.DemoConfig()) == "bf16"
    assert demo.demo_precision(demo.DemoConfig(precision="fp32")) == "fp32"
    monkeypatch.setattr(model_setup, "cpu_bf16_support", lambda: None)
    assert demo.demo_precision(demo.DemoConfig()) == "auto"  # the trainer's auto: fp32 on this CPU
    assert demo.demo_precision(demo.DemoConfig(precision="bf16")) == "bf16"  # the trainer refuses it, with the fix


def test_batching_line_names_the_trainings_precision_when_they_share_one():
    results = _results()
    for m in ("naive", "sort", "pack"):
        results[f"train:{m}"]["precision"] = "bf16"
    summary = {"stages": results, "methods": demo.compare_methods(results), "overruns": []}
    text = "\n".join(demo.explain(summary))
    assert "(5000 real tokens) per method in bf16: naive 120 s" in text
    results["train:pack"]["precision"] = "fp32"
    assert "per method: naive" in "\n".join(demo.explain(summary))


def test_pair_reports_the_change_only_for_two_numbers():
    assert demo._pair({"base": {"x": 1.0}, "tuned": {"x": 1.5}}, "x") == {"base": 1.0, "tuned": 1.5, "change": 0.5}
    assert demo._pair({"base": {"x": None}, "tuned": {"x": 1.5}}, "x") == {"base": None, "tuned": 1.5}


def test_base_evaluation_goes_to_a_sibling_run(tmp_path):
    base = demo.base_run_dir(RunDir(tmp_path / "demo"))
    assert base.root == tmp_path / "demo-base"


def test_cost_model_counts_the_embedded_models_parameters():
    cost = demo.cost_model_for("random:configs/models/tiny-llama")
    # tiny-llama: 2 layers of hidden 64 (4 heads, 2 kv heads of 16), mlp 128, vocab 49,152 (tied)
    per_layer = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128
    assert cost["n_params"] == 2 * per_layer + 49152 * 64
    assert cost["per_token"] > 0 and cost["per_token_sq"] > 0


def test_home_page_tables_read_the_demo_summary(tmp_path):
    from longalign.rundir import atomic_write_json
    from longalign.views import home

    results = _results()
    results["eval:heldout"] = {"sequence_mean_loss": {"base": 2.5, "tuned": 2.1, "change": -0.4}}
    run = RunDir(tmp_path / "demo")
    assert home.load_demo_summary(run) == {}
    atomic_write_json(run.demo_summary, {"stages": results, "methods": demo.compare_methods(results)})
    summary = home.load_demo_summary(run)
    methods = home.demo_method_table(summary)
    assert list(methods["method"]) == ["naive", "sort", "pack"]
    assert list(methods["measured speed-up"]) == [1.0, 1.5, 2.0]
    evals = home.demo_eval_table(summary)
    assert len(evals) == 1 and evals.iloc[0]["base"] == 2.5 and evals.iloc[0]["change"] == "−0.400"


def test_command_line_says_what_an_overrun_means(monkeypatch, capsys, tmp_path):
    """A stage slower than planned prints what that means, not a bare flag; a stage on time prints nothing more."""
    from longalign.cli import main

    def fake_run_demo(cfg, on_stage):
        for name, secs in (("corpus", 4.0), ("generate", 84.0)):
            on_stage(name, "start", {"budget_s": 80.0 if name == "generate" else 10.0})
            on_stage(name, "done", {"stage_seconds": secs, "budget_s": 80.0 if name == "generate" else 10.0})
        return {
            "stages": {"generate": {"stage_seconds": 84.0, "budget_s": 80.0}},
            "explained": [],
            "seconds": 88.0,
            "run": str(tmp_path / "demo"),
            "base_run": str(tmp_path / "demo-base"),
        }

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert main(["demo", "--quick", "--run", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "generate took 84 s, planned 80 s: the machine is slower or busier than the reference" in out
    assert "corpus took" not in out and "OVER BUDGET" not in out


# ---------------------------------------------------------------------------------------------- the ladder
def _load_make_ladder():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent / "fixtures" / "make_ladder.py"
    spec = importlib.util.spec_from_file_location("longalign_fixture_make_ladder", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ladder_stage_pairs_the_two_models_samples_and_says_whether_the_difference_is_resolved(tmp_path, monkeypatch):
    """Scripted answers (the fine-tune names every expected value, the base the first one on even samples): the
    stage's difference is the mean of the paired differences, with the interval of the paired scores."""
    from longalign.eval import ruler
    from longalign.eval.intervals import paired_difference
    from longalign.models import load_tokenizer

    fx = _load_make_ladder()
    tok = load_tokenizer(None)
    run = RunDir(tmp_path / "demo")
    base = demo.base_run_dir(run)
    monkeypatch.setattr(demo, "_models", lambda r, c: [("base", "smollm2", base), ("tuned", "tuned-model", run)])
    real_run = ruler.run
    styles = {base.root: ("base", "first-even"), run.root: ("tuned", "all")}

    def scripted(cfg, where):
        name, style = styles[where.root]
        assert cfg.dtype == "float32" and cfg.seed == 42
        assert cfg.batch_size == 2 * 2 * 3  # every sample of a model in one batch
        return real_run(cfg, where, answerer=fx.ScriptedAnswerer(tok, name, style))

    monkeypatch.setattr(ruler, "run", scripted)
    prof = demo.replace(
        demo.PROFILES["full"], ladder_tasks=("niah_single_noise", "vt"), ladder_lengths=(500, 800), ladder_samples=3
    )
    numbers = demo.stage_ladder(run, demo.DemoConfig(run=str(run.root)), prof)

    def scores(r: RunDir) -> dict[str, float]:
        return {x["key"]: x["score"] for x in read_jsonl(r.ruler_results())}

    tuned, based = scores(run), scores(base)
    assert set(tuned) == set(based) and len(tuned) == 2 * 2 * 3
    keys = sorted(tuned)
    expect = paired_difference([tuned[k] for k in keys], [based[k] for k in keys], 100.0)
    d = numbers["difference"]
    assert d["pairs"] == 12 and d["paired"]
    assert d["diff"] == pytest.approx(100 * sum(tuned[k] - based[k] for k in keys) / 12)
    assert (d["lo"], d["hi"]) == pytest.approx((expect["lo"], expect["hi"]))
    assert numbers["score"]["base"] == pytest.approx(100 * sum(based.values()) / 12)
    line = demo.ladder_line(numbers)
    assert f"difference {d['diff']:+.1f} (95% interval {d['lo']:+.1f} to {d['hi']:+.1f}, 12 samples both answered)" in (
        line
    )
    assert ("the fine-tuned model scores higher" in line) == (expect["lo"] > 0) and d["resolved"] == (expect["lo"] > 0)
    assert "no resolved difference" not in line or not d["resolved"]


def test_ladder_line_says_no_resolved_difference_when_the_interval_contains_zero():
    numbers = {
        "tasks": ["niah_single_noise"],
        "lengths": [1024, 2048],
        "samples": 10,
        "dtype": "float32",
        "score": {"base": 80.0, "tuned": 85.0, "change": 5.0},
        "difference": {"diff": 5.0, "lo": -3.2, "hi": 13.1, "pairs": 20, "paired": True, "resolved": False},
    }
    line = demo.ladder_line(numbers)
    assert "base 80.0 -> fine-tuned 85.0, difference +5.0 (95% interval -3.2 to +13.1, 20 samples both answered)" in (
        line
    )
    assert line.endswith("no resolved difference (the interval contains zero).")
    assert demo.ladder_line({}) is None
    summary = {"stages": {"eval:ladder": numbers}, "methods": {}, "overruns": []}
    assert line in demo.explain(summary)


@pytest.mark.slow
def test_ladder_stage_on_a_tiny_model_decodes_both_in_float32(tmp_path, monkeypatch):
    """The real stage on a random tiny model for both: every answer decoded in float32, identical answers, so
    every pair ties and the line says there is no resolved difference."""
    from pathlib import Path

    tiny = f"random:{Path(__file__).resolve().parents[1] / 'configs' / 'models' / 'tiny-llama'}"
    run = RunDir(tmp_path / "demo")
    monkeypatch.setattr(demo, "_models", lambda r, c: [("base", tiny, demo.base_run_dir(run)), ("tuned", tiny, run)])
    prof = demo.replace(
        demo.PROFILES["full"], ladder_tasks=("niah_single_noise",), ladder_lengths=(400,), ladder_samples=3
    )
    numbers = demo.stage_ladder(run, demo.DemoConfig(run=str(run.root)), prof)
    for r in (run, demo.base_run_dir(run)):
        assert {x["precision"] for x in read_jsonl(r.ruler_results())} == {"float32"}
        assert {x["batch"] for x in read_jsonl(r.ruler_results())} == {3}  # decoded together
    assert numbers["difference"]["diff"] == 0 and numbers["difference"]["pairs"] == 3
    assert "no resolved difference" in demo.ladder_line(numbers)


def test_command_line_prints_the_ladder_difference_with_its_interval():
    from longalign.recipes.demo_cli import _fmt

    numbers = {
        "samples": 6,
        "score": {"base": 40.0, "tuned": 45.0},
        "difference": {"diff": 5.0, "lo": -2.5, "hi": 12.25},
    }
    assert _fmt(numbers) == "samples=6, score=40->45, difference=+5.0 (95% interval -2.5 to +12.2)"
