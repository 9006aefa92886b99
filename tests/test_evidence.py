"""The evidence experiment (longalign.recipes.evidence): bootstrap intervals on literal inputs, the separation of
training and evaluation data, the one-pass scorer against real greedy decoding, and the quick run end to end
(resumed, and one arm re-run with the same seed)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from longalign.recipes import evidence
from longalign.recipes.evidence import (
    EvidenceConfig,
    bootstrap_diff,
    bootstrap_mean,
    samples_to_resolve,
    strata_of,
)

# ------------------------------------------------------------------------------------------- intervals


def _binomial_quantile(n: int, p: float, q: float) -> int:
    """Smallest k with P(X <= k) >= q for X ~ Binomial(n, p)."""
    acc = 0.0
    for k in range(n + 1):
        acc += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if acc >= q:
            return k
    return n


def test_bootstrap_mean_of_constant_scores_has_no_width():
    out = bootstrap_mean(np.ones((3, 5)), n_boot=300)
    assert (out["mean"], out["lo"], out["hi"], out["samples"], out["seeds"]) == (1.0, 1.0, 1.0, 5, 3)


def test_bootstrap_mean_matches_the_binomial_percentiles():
    # one seed, ten samples, five correct: a resample's mean is Binomial(10, 1/2) / 10
    scores = [[1, 0, 1, 0, 1, 0, 1, 0, 1, 0]]
    lo_k, hi_k = _binomial_quantile(10, 0.5, 0.025), _binomial_quantile(10, 0.5, 0.975)
    out = bootstrap_mean(scores, n_boot=4000, seed=3)
    assert out["mean"] == 0.5
    assert (out["lo"], out["hi"]) == (lo_k / 10, hi_k / 10) == (0.2, 0.8)


def test_strata_keep_each_task_weight():
    # task a: two samples, both right; task b: four samples, all wrong. Drawn within tasks, every replicate
    # has 2 right of 6; drawn over all six, replicates vary
    scores = [[1, 1, 0, 0, 0, 0]]
    strata = strata_of(["a", "a", "b", "b", "b", "b"])
    assert [list(s) for s in strata] == [[0, 1], [2, 3, 4, 5]]
    out = bootstrap_mean(scores, strata, n_boot=500)
    assert out["lo"] == pytest.approx(1 / 3) and out["hi"] == pytest.approx(1 / 3)
    free = bootstrap_mean(scores, None, n_boot=500)
    assert free["lo"] < 1 / 3 < free["hi"]


def test_paired_difference_of_shifted_scores_is_exact():
    rng = np.random.default_rng(0)
    a = rng.random((3, 8))
    same = bootstrap_diff(a, a, n_boot=300, paired_seeds=True)
    assert (same["diff"], same["lo"], same["hi"], same["resolved"]) == (0.0, 0.0, 0.0, False)
    shifted = bootstrap_diff(a + 0.25, a, n_boot=300, paired_seeds=True)
    assert shifted["diff"] == pytest.approx(0.25)
    assert shifted["lo"] == pytest.approx(0.25) and shifted["hi"] == pytest.approx(0.25) and shifted["resolved"]


def test_difference_to_a_single_base_row_against_exact_enumeration():
    import itertools

    base = [1, 1, 0, 0]
    arm = [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]  # seed means 0.75, 0.5, 1.0 -> diff of the means 0.25
    # every equally likely replicate: 4^4 sample draws (shared by both) x 3^3 seed draws of the arm
    exact = sorted(
        sum(arm[s][i] for s in seeds for i in idx) / 12 - sum(base[i] for i in idx) / 4
        for idx in itertools.product(range(4), repeat=4)
        for seeds in itertools.product(range(3), repeat=3)
    )
    q_lo, q_hi = exact[int(0.025 * len(exact))], exact[int(0.975 * len(exact))]
    out = bootstrap_diff(arm, [base], n_boot=4000, seed=1)
    assert out["diff"] == pytest.approx(0.25)
    assert out["lo"] == pytest.approx(q_lo, abs=0.05) and out["hi"] == pytest.approx(q_hi, abs=0.05)
    with pytest.raises(ValueError, match="same seed count"):
        bootstrap_diff(arm, [base], paired_seeds=True)
    with pytest.raises(ValueError, match="samples"):
        bootstrap_diff(arm, [[1, 0]])


def test_samples_to_resolve():
    assert samples_to_resolve(0.1, -0.1, 0.3, 10) == 40  # half-width 0.2 is twice 0.1: four times the samples
    assert samples_to_resolve(0.5, 0.2, 0.8, 10) == 10  # resolved already
    assert samples_to_resolve(0.0, -0.1, 0.1, 10) is None


def test_config_rejects_bad_ranges():
    with pytest.raises(ValueError, match="swap"):
        EvidenceConfig(train_min=500, train_max=100)
    with pytest.raises(ValueError, match="repeat"):
        EvidenceConfig(seeds=[1, 1])
    with pytest.raises(ValueError):
        EvidenceConfig(arms=["pack+nothing"])
    quick = EvidenceConfig(quick=True).resolved()
    assert quick.seeds == [0] and quick.arms == ["pack+sequence"] and quick.lengths == [512]


def test_command_line_help_and_bad_arm():
    from longalign.cli import main

    for name in ("evidence", "ablation"):
        with pytest.raises(SystemExit) as exc:
            main(["experiment", name, "--help"])
        assert exc.value.code == 0
    assert main(["experiment", "evidence", "--arms", "pack+nothing"]) == 2


# ------------------------------------------------------------------------------------------- separation


@pytest.fixture(scope="module")
def built():
    """Training records and evaluation samples of a small configuration with every default task."""
    from longalign.eval.ruler_tasks import PromptFormat
    from longalign.recipes.evidence.data import (
        eval_documents,
        eval_samples,
        long_records,
        short_split,
        training_documents,
    )
    from longalign.train import cached_tokenizer

    cfg = EvidenceConfig(quick=True).resolved()
    cfg = EvidenceConfig(**{**cfg.__dict__, "tasks": list(evidence.DEFAULT_TASKS), "samples": 3, "train_long": 6})
    tok = cached_tokenizer(cfg.model)
    texts = eval_documents()
    samples = eval_samples(cfg, tok)
    train_short, held = short_split(cfg)
    train = long_records(cfg, PromptFormat(tok), training_documents(texts, cfg.data_seed)) + train_short
    return cfg, texts, samples, train, held


def test_no_evaluation_document_needle_key_or_template_in_training(built):
    from longalign.eval import ruler_tasks as rt

    cfg, texts, samples, train, held = built
    assert {s["task"] for s in samples} == set(cfg.tasks)
    blob = "\n".join(m["content"] for r in train for m in r["messages"])
    low = blob.lower()
    for s in samples:
        for ins in s["inserts"]:
            assert ins.strip() not in blob
        for k in s["keys"]:
            assert k.lower() not in low
        assert s["expected"][0] not in blob
    for piece in (rt.HEADER.strip(), "remember this:", "in the text above", "secret number", "secret code"):
        assert piece.lower() not in low
    # documents: no 80-character stretch of an evaluation document (taken every 400 characters) is trained on
    for t in texts:
        for i in range(0, max(1, len(t) - 80), 400):
            piece = t[i : i + 80]
            if len(piece.strip()) == 80:
                assert piece not in blob, piece
    held_msgs = [json.dumps(h["messages"]) for h in held]
    assert not any(json.dumps(r["messages"]) in held_msgs for r in train)
    assert evidence.separation_problems(train, samples, texts, held) == []


def test_separation_check_names_a_contaminated_record(built):
    _, texts, samples, train, held = built
    leaked = {"messages": [{"role": "user", "content": "x " + samples[0]["inserts"][0]}, *train[0]["messages"][1:]]}
    copied = {"messages": [{"role": "user", "content": texts[3][:400]}, {"role": "assistant", "content": "ok"}]}
    problems = evidence.separation_problems([*train, leaked, copied, held[0]], samples, texts, held)
    n = len(train)
    assert any(p.startswith(f"training record {n}: contains") for p in problems)
    assert any(p.startswith(f"training record {n + 1}: shares") for p in problems)
    assert any(p == f"training record {n + 2}: is a held-out short chat" for p in problems)


def test_training_records_use_their_own_templates(built):
    from longalign.recipes.evidence.config import TRAIN_ANSWER

    cfg, _, _, train, _ = built
    long = [r for r in train if r.get("task_type") == "long"]
    assert len(long) == cfg.train_long
    for r in long:
        assert r["messages"][-1]["content"] == TRAIN_ANSWER.format(key=r["key"], value=r["value"])
        assert f"the access code of {r['key']} is {r['value']}." in r["messages"][0]["content"]


# ------------------------------------------------------------------------------------------- the model


@pytest.mark.slow
def test_one_pass_score_equals_greedy_decoding(built):
    from longalign.eval.ruler_tasks import score_output
    from longalign.models import load_model
    from longalign.recipes.evidence.score import greedy_tokens, score_sample
    from longalign.train import cached_tokenizer

    cfg, _, samples, _, _ = built
    tok = cached_tokenizer(cfg.model)
    model = load_model(cfg.model).eval()
    picked = samples[::2][:4]
    # the right answers, and a wrong one per sample (another sample's value): both sides of the equivalence
    cases = [(s, s["answer_ids"], s["expected"][0]) for s in picked]
    cases += [(s, picked[(i + 1) % len(picked)]["answer_ids"], None) for i, s in enumerate(picked)]
    for s, answer_ids, expected in cases:
        one_pass = score_sample(model, s["prompt_ids"], answer_ids)
        greedy = greedy_tokens(model, s["prompt_ids"], len(answer_ids))
        assert one_pass["correct"] == (greedy == list(answer_ids)), s["key"]
        assert one_pass["predicted"][0] == greedy[0]
        if one_pass["correct"] and expected is not None:
            assert score_output(tok.decode(greedy), [expected]) == 1.0


@pytest.mark.slow
def test_quick_run_resumes_and_reproduces_an_arm(tmp_path):
    out = tmp_path / "run"
    cfg = EvidenceConfig(quick=True, out=str(out))
    summary = evidence.run(cfg)
    result = evidence.load_result(summary.result_path)
    assert set(result["accuracy"]) == {"base", "pack+sequence"}
    assert set(result["differences"]) == {"pack+sequence - base"}
    for fam in result["families"]:
        a = result["accuracy"]["pack+sequence"][fam]
        assert a["lo"] <= a["mean"] <= a["hi"]
    models = out / "models"
    assert sorted(p.name for p in models.iterdir()) == ["base", "pack_sequence_seed0"]
    rows = [json.loads(x) for x in (models / "base" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == len(result["samples"]) and {"key", "correct", "answer_loss"} <= set(rows[0])
    # resumed: nothing is trained or scored again
    stamp = (models / "pack_sequence_seed0" / "result.json").stat().st_mtime_ns
    lines: list[str] = []
    evidence.run(cfg, progress=lines.append)
    assert (models / "pack_sequence_seed0" / "result.json").stat().st_mtime_ns == stamp
    assert sum("done earlier" in x for x in lines) == 2
    # the same arm and seed again from scratch: the same per-sample results and held-out losses
    stored = evidence.read_model_result(models / "pack_sequence_seed0")
    again = evidence.rerun_model(cfg, "pack+sequence", 0, tmp_path / "again")
    assert evidence.same_scores(stored, again) == []
    assert again["train_loss"] == pytest.approx(stored["train_loss"], abs=1e-5)
    assert "| base |" in evidence.markdown(result)


def _fake_eval(model, seed, correct, losses, train_s=10.0, keys=None):
    keys = keys or [f"t{i // 3}/1024/{i % 3}" for i in range(6)]
    rows = [{"key": k, "correct": c, "answer_loss": x} for k, c, x in zip(keys, correct, losses)]
    return {"model": model, "seed": seed, "rows": rows, "short": [{"index": 1, "loss_mean": 2.0}], "train_s": train_s}


def test_analyse_on_literal_records():
    from longalign.recipes.evidence import analyse

    samples = [{"key": f"t{i // 3}/1024/{i % 3}", "task": f"t{i // 3}", "family": "trained"} for i in range(6)]
    evals = {
        "base": [_fake_eval("base", None, [1, 1, 1, 0, 0, 0], [0.1] * 6, 0.0)],
        "pack+pack": [_fake_eval("pp", s, [1, 1, 1, 0, 0, 0], [0.2] * 6) for s in (0, 1)],
        "pack+sequence": [_fake_eval("ps", s, [1, 1, 1, 1, 1, 1], [0.05] * 6, 12.0) for s in (0, 1)],
    }
    out = analyse(samples, evals, ["pack+pack", "pack+sequence"], n_boot=200, reference="pack+pack")
    assert out["families"] == {"t0": 3, "kind:trained": 6, "all": 6, "t1": 3}
    assert out["accuracy"]["base"]["all"]["mean"] == 0.5
    d = out["differences"]["pack+sequence - base"]["accuracy"]
    assert (d["t0"]["diff"], d["t1"]["diff"], d["all"]["diff"]) == (0.0, 1.0, 0.5)
    assert d["t1"]["resolved"] and not d["t0"]["resolved"]
    w = out["differences"]["pack+sequence - pack+pack"]["answer_loss"]["all"]
    assert w["diff"] == pytest.approx(-0.15) and w["hi"] == pytest.approx(-0.15)
    assert out["short_loss"]["differences"]["pack+pack - base"]["diff"] == 0.0
    t = out["time"]["arms"]
    assert [r["to_base_s"] for r in t["pack+pack"]["runs"]] == [10.0, 10.0]
    assert [r["to_reference_s"] for r in t["pack+sequence"]["runs"]] == [12.0, 12.0]
    evals["pack+pack"][0]["rows"] = evals["pack+pack"][0]["rows"][:-1]
    with pytest.raises(ValueError, match="lacks 1 items"):
        analyse(samples, evals, ["pack+pack"], n_boot=100, reference="pack+pack")


def test_several_lengths_add_a_group_per_length_and_per_task_at_each_length():
    from longalign.recipes.evidence import analyse
    from longalign.recipes.evidence.report import family_names

    samples = [
        {"key": f"t{t}/{n}/{i}", "task": f"t{t}", "family": "trained", "length": n}
        for t in (0, 1)
        for n in (1024, 8192)
        for i in range(2)
    ]
    base = [1, 1, 0, 0, 1, 1, 1, 0]  # t0: 1k right, 8k wrong; t1: 1k right, 8k one of two
    tuned = [1, 1, 1, 1, 1, 1, 1, 1]
    keys = [s["key"] for s in samples]
    evals = {
        "base": [_fake_eval("base", None, base, [0.1] * 8, 0.0, keys)],
        "pack+sequence": [_fake_eval("ps", s, tuned, [0.05] * 8, 12.0, keys) for s in (0, 1)],
    }
    out = analyse(samples, evals, ["pack+sequence"], n_boot=200, reference="pack+sequence")
    assert out["families"]["length:8192"] == 4 and out["families"]["t0@8192"] == 2 and out["families"]["all"] == 8
    acc = out["accuracy"]["base"]
    assert (acc["length:1024"]["mean"], acc["length:8192"]["mean"], acc["t1@8192"]["mean"]) == (1.0, 0.25, 0.5)
    assert out["differences"]["pack+sequence - base"]["accuracy"]["t0@8192"]["diff"] == 1.0
    names = family_names({"families": out["families"], "samples": samples})
    assert names == [
        "t0",
        "t1",
        "kind:trained",
        "all",
        "length:1024",
        "length:8192",
        "t0@1024",
        "t0@8192",
        "t1@1024",
        "t1@8192",
    ]
