"""Needle-in-a-haystack: exact insertion positions with the embedded tokenizer, scoring helpers, a grid
against the fake HTTP server (resume per cell), and a slow 3 x 3 grid with the embedded model."""

from __future__ import annotations

import json

import pytest

from longalign.eval import needle
from longalign.eval.generate import load_counting_tokenizer
from longalign.eval.needle import (
    PAPER_NEEDLE,
    PAPER_QUESTION,
    Haystack,
    NeedleConfig,
    default_key_phrases,
    grid_of,
    insert_needle,
    key_phrase_recall,
    linear_grid,
    needle_ids_for,
)
from longalign.rundir import read_jsonl

# "Sentence number k is about topic k." -> 11 tokens for k=1 ('Sent','ence',...), 10 for k=2..9, 12 for
# k=10..99 (two digit tokens twice), so sentence k ends at token 11 + 10(k-1) for k<=9 and 91 + 12(k-9) after.
SENTENCES = " ".join(f"Sentence number {k} is about topic {k}." for k in range(1, 60))


@pytest.fixture(scope="module")
def tok():
    return load_counting_tokenizer(None)  # the embedded model's tokenizer.json


@pytest.fixture(scope="module")
def hay(tok):
    return Haystack(tok, [SENTENCES], 1000)


class TestInsertion:
    @pytest.mark.parametrize(
        "depth, target, pos, before",
        [
            (0, 0, 0, ""),
            (10, 37, 31, "topic 3."),  # 600 - 200 - 25 = 375 haystack tokens; int(375 * 0.1) = 37 -> end of k=3
            (25, 93, 91, "topic 9."),
            (50, 187, 187, "topic 17."),  # the target already follows a full stop
            (90, 337, 331, "topic 29."),
        ],
    )
    def test_exact_positions(self, tok, hay, depth, target, pos, before):
        nid = needle_ids_for(tok, PAPER_NEEDLE)
        assert len(nid) == 25
        ctx = insert_needle(hay, nid, 600, depth, buffer=200)
        assert len(ctx.ids) == 600 - 200  # haystack + needle = L - buffer
        assert (ctx.target_pos, ctx.needle_token_pos) == (target, pos)
        assert ctx.ids[pos : pos + 25] == nid
        assert tok.decode(ctx.ids[:pos]).endswith(before)
        assert tok.decode(ctx.ids[pos : pos + 25]) == "\n" + PAPER_NEEDLE + "\n"
        assert ctx.ids[:pos] + ctx.ids[pos + 25 :] == hay.ids[:375]  # haystack otherwise untouched
        # no sentence ends strictly between the boundary and the target
        assert not any(hay.ends_sentence(t) for t in hay.ids[pos:target])

    def test_depth_100_appends(self, tok, hay):
        nid = needle_ids_for(tok, PAPER_NEEDLE)
        ctx = insert_needle(hay, nid, 600, 100, buffer=200)
        assert ctx.needle_token_pos == 375 and ctx.ids[-25:] == nid

    def test_too_short(self, tok, hay):
        with pytest.raises(ValueError, match="no room"):
            insert_needle(hay, needle_ids_for(tok, PAPER_NEEDLE), 220, 50, buffer=200)

    def test_haystack_repeats_to_length(self, tok):
        h = Haystack(tok, ["One short sentence."], 50)
        assert len(h.ids) >= 50 and tok.decode(h.ids[:8]).startswith("One short sentence.")


class TestScoring:
    def test_key_phrases(self):
        assert default_key_phrases(PAPER_NEEDLE, PAPER_QUESTION) == [
            "eat",
            "sandwich",
            "sit",
            "dolores",
            "park",
            "sunny",
            "day",
        ]
        phrases = ["sandwich", "Dolores Park", "sunny day"]
        assert key_phrase_recall("Eat a sandwich in Dolores Park on a sunny day!", phrases) == 1.0
        assert key_phrase_recall("Have a sandwich at the park.", phrases) == pytest.approx(1 / 3, abs=1e-4)
        assert key_phrase_recall("Dolores went to the park", phrases) == 0.0  # phrase words must be consecutive
        assert key_phrase_recall("anything", []) == 0.0

    def test_grid(self):
        assert linear_grid(1000, 60000, 10) == [1000, 7556, 14111, 20667, 27222, 33778, 40333, 46889, 53444, 60000]
        assert linear_grid(10, 90, 10) == [10, 19, 28, 37, 46, 54, 63, 72, 81, 90]
        assert grid_of(NeedleConfig(lengths=[500, 900], depths=[10, 50])) == ([500, 900], [10.0, 50.0])
        with pytest.raises(ValueError, match="outside"):
            grid_of(NeedleConfig(depths=[120]))


def test_grid_with_fake_server_resumes(fake_llm, tmp_path):
    def responder(req):
        user = req["messages"][-1]["content"]
        if req["model"].startswith("judge"):
            return "[[10]]" if "Dolores Park" in user.split("[Assistant's response]")[1] else "[[1]]"
        return "Eat a sandwich and sit in Dolores Park." if "Dolores Park" in user else "I do not know."

    fake_llm.set_responder(responder)
    cfg = NeedleConfig(
        model="openai:m",
        model_base_url=fake_llm.base_url,
        judge="openai:judge",
        judge_base_url=fake_llm.base_url,
        lengths=[400, 700],
        depths=[20, 80],
        progress=False,
    )
    s = needle.run(cfg, tmp_path / "run").scores
    edir = tmp_path / "run" / "eval" / "needle"
    recs = read_jsonl(edir / "results.jsonl")
    assert sorted((r["context_length"], r["depth_percent"]) for r in recs) == [
        (400, 20.0),
        (400, 80.0),
        (700, 20.0),
        (700, 80.0),
    ]
    for r in recs:
        assert r["judge_score"] == 10.0 and r["recall"] == pytest.approx(5 / 7, abs=1e-4)
        assert PAPER_NEEDLE in r["window"] and r["needle_token_pos"] <= r["target_token_pos"]
        assert r["context_tokens"] == r["context_length"] - 200
    assert (s["mean_judge"], s["lengths"], s["depths"]) == (10.0, [400, 700], [20.0, 80.0])
    assert json.loads((edir / "summary.json").read_text())["mean_recall"] == s["mean_recall"]
    html = (edir / "heatmap.html").read_text()
    assert "plotly" in html.lower() and "judge score" in html and "key-phrase recall" in html
    models = [r["model"] for r in fake_llm.requests]
    assert models.count("m") == 4 and models.count("judge") == 1  # identical judge prompts: cached
    cfg.lengths = [400, 700, 1000]
    s2 = needle.run(cfg, tmp_path / "run").scores  # only the new cells are asked
    models = [r["model"] for r in fake_llm.requests]
    assert models.count("m") == 6 and models.count("judge") == 1 and s2["n"] == 6


@pytest.mark.slow
def test_embedded_model_3x3_grid(tmp_path):
    """The embedded 135M model on 500-1500-token contexts, judged by itself locally; heatmap written."""
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from longalign.eval.generate import LocalGenerator
    from longalign.eval.judge import LocalJudge

    gen = LocalGenerator(None, device="cpu")
    judge = LocalJudge(None, model=gen.model, tokenizer=gen.tokenizer, device="cpu")
    cfg = NeedleConfig(
        lengths=[500, 1000, 1500], depths=[10, 50, 90], max_new_tokens=32, judge="local:smollm2", progress=False
    )
    s = needle.run(cfg, tmp_path / "run", generator=gen, judge=judge).scores
    recs = read_jsonl(tmp_path / "run" / "eval" / "needle" / "results.jsonl")
    assert len(recs) == 9 and s["n"] == 9
    for r in recs:
        assert 1 <= r["judge_score"] <= 10 and 0 <= r["recall"] <= 1 and PAPER_NEEDLE in r["window"]
        assert r["prompt_tokens"] <= r["context_length"]  # template + question fit in the buffer
    assert (tmp_path / "run" / "eval" / "needle" / "heatmap.html").stat().st_size > 100_000
    print(
        json.dumps(
            {
                "mean_recall": s["mean_recall"],
                "mean_judge": s["mean_judge"],
                "cells": [
                    (r["context_length"], r["depth_percent"], r["recall"], r["judge_score"], r["response"][:60])
                    for r in recs
                ],
            },
            indent=1,
        )
    )


def test_heatmap_grid_and_figure():
    from longalign.eval.needle import heatmap_figure, heatmap_grid

    recs = [
        {"context_length": 2000, "depth_percent": 50, "judge_score": 4, "recall": 0.5},
        {"context_length": 1000, "depth_percent": 50, "judge_score": None, "recall": 1.0},
        {"context_length": 2000, "depth_percent": 50, "judge_score": 8, "recall": 0.0},  # a resumed repeat
        {"context_length": 1000, "depth_percent": 10, "judge_score": 10, "recall": 1.0},
    ]
    assert heatmap_grid(recs, "judge_score") == ([1000, 2000], [10.0, 50.0], [[10.0, None], [None, 6.0]])
    lengths, depths, z = heatmap_grid(recs, "recall")
    fig = heatmap_figure(lengths, depths, {"judge_score": heatmap_grid(recs)[2], "recall": z}, title="t")
    assert [a.text for a in fig.layout.annotations] == ["judge score (1-10)", "key-phrase recall (0-1)"]
    assert (fig.data[0].zmin, fig.data[0].zmax, fig.data[1].zmin, fig.data[1].zmax) == (1, 10, 0, 1)
    assert [list(r) for r in fig.data[1].text] == [["1.00", ""], ["1.00", "0.25"]]
    one = heatmap_figure(lengths, depths, {"recall": z}, selectable=True)
    assert len(one.data) == 2 and one.data[0].hoverinfo == "skip" and list(one.data[1].x) == ["1,000", "2,000"] * 2
    with pytest.raises(ValueError, match="'judge_score', 'recall'"):
        heatmap_figure(lengths, depths, {"score": z})


# ---------------------------------------------------------------------------------------------- normalised recall
PARAPHRASE = "eating a sandwich and sitting in Dolores Park on a sunny day"


@pytest.mark.parametrize(
    "word, stemmed",
    [
        ("eating", "eat"),
        ("sitting", "sit"),
        ("days", "day"),
        ("sandwiches", "sandwich"),
        ("cities", "city"),
        ("parked", "park"),
        ("running", "run"),
        ("falling", "fall"),
        ("thing", "thing"),  # no vowel before -ing: not a suffix
        ("need", "need"),
        ("sun", "sun"),
    ],
)
def test_stemmer(word, stemmed):
    assert needle.stem(word) == stemmed


def test_normalised_recall_forgives_inflection_case_and_punctuation():
    phrases = default_key_phrases(PAPER_NEEDLE, PAPER_QUESTION)
    assert key_phrase_recall(PARAPHRASE, phrases) == pytest.approx(5 / 7, abs=1e-4)  # strict: eat, sit missed
    assert needle.normalised_recall(PARAPHRASE, phrases) == 1.0
    assert needle.normalised_recall("EAT, a sandwich; sit in Dolores' park... Sunny days!", phrases) == 1.0
    assert needle.normalised_recall("make and making", ["makes"]) == 1.0  # both sides stemmed alike
    assert needle.normalised_recall("I do not know.", phrases) == 0.0
    assert needle.normalised_recall("Dolores went to the parks", ["Dolores Park"]) == 0.0  # still consecutive
    assert needle.normalised_recall("anything", []) == 0.0
    assert needle.normalised_words("The park's benches, sunnier!") == ["the", "park", "bench", "sunnier"]


def test_grid_stores_both_recalls_and_reads_older_results(fake_llm, tmp_path):
    fake_llm.set_responder(lambda req: PARAPHRASE.capitalize() + ".")
    cfg = NeedleConfig(
        model="openai:m", model_base_url=fake_llm.base_url, lengths=[400], depths=[20, 80], progress=False
    )
    s = needle.run(cfg, tmp_path / "run").scores
    edir = tmp_path / "run" / "eval" / "needle"
    recs = read_jsonl(edir / "results.jsonl")
    assert [(r["recall"], r["recall_norm"]) for r in recs] == [(0.7143, 1.0), (0.7143, 1.0)]
    assert (s["mean_recall"], s["mean_recall_norm"]) == (0.7143, 1.0)
    saved = json.loads((edir / "summary.json").read_text())
    assert saved["mean_recall_norm"] == 1.0 and saved["mean_recall"] == 0.7143
    assert "normalised key-phrase recall" in (edir / "heatmap.html").read_text()

    # a results file written before recall_norm existed: the summary and the views compute it from the response
    old = [{k: v for k, v in r.items() if k != "recall_norm"} for r in recs]
    (edir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    s_old = needle.run(cfg, tmp_path / "run").scores  # every cell is done: nothing is asked again
    assert s_old["mean_recall_norm"] == 1.0 and len(fake_llm.requests) == 2
    assert all("recall_norm" not in r for r in read_jsonl(edir / "results.jsonl"))  # the file is left as it was

    from longalign.rundir import RunDir
    from longalign.views import needle as needle_view
    from longalign.views import readers

    df = readers.load_needle(RunDir(tmp_path / "run"))
    assert df["recall_norm"].tolist() == [1.0, 1.0]
    assert needle_view.values_in(df) == ["recall", "recall_norm"]  # no judge: its column holds no value
    assert {label: value for label, value, _ in needle_view.headline(df)}["mean normalised recall"] == "1.00"
    assert needle_view.needle_grid(df, "recall_norm").to_numpy().tolist() == [[1.0], [1.0]]
