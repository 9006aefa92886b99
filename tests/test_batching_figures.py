"""longalign.batching.figures: one meaning per name (padding vs fill, one direction of attention cost), the stage's
JSON written in those words, and records of the older vocabulary read into them."""

from __future__ import annotations

import json

import pytest

from longalign import batching
from longalign.batching import BatchPlanConfig, figures
from longalign.rundir import RunDir

# Two packs [6, 4] and [5, 3] under max_len 12, and padded batches [6, 4] and [5, 3] of the same sequences.
LENGTHS = [6, 4, 5, 3]
USEFUL = 21 + 10 + 15 + 6  # causal pairs n(n+1)/2


def test_padding_and_fill_are_different_figures():
    pack = figures.plan_figures([6, 4, 5, 3], [2, 2], packed=True, max_len=12)
    assert pack["computed_tokens"] == 18 and pack["padding_fraction"] == 0.0  # a pack computes its own tokens
    assert pack["capacity_tokens"] == 24 and pack["fill"] == pytest.approx(18 / 24)
    assert pack["attention_cost"] == 1.0
    assert pack["attention_cost_dense"] == pytest.approx((10 * 11 / 2 + 8 * 9 / 2) / USEFUL)
    padded = figures.plan_figures([6, 4, 5, 3], [2, 2], packed=False, max_len=12)
    assert padded["computed_tokens"] == 2 * 6 + 2 * 5 and padded["padding_fraction"] == pytest.approx(1 - 18 / 22)
    assert padded["capacity_tokens"] == 4 * 12 and padded["fill"] == pytest.approx(18 / 48)
    assert padded["attention_cost"] == pytest.approx((2 * 21 + 2 * 15) / USEFUL) and padded["attention_cost"] > 1


def test_batch_list_form_matches():
    assert figures.batch_list_figures([[6, 4], [5, 3]], True, 12) == figures.plan_figures(LENGTHS, [2, 2], True, 12)


def test_stage_json_uses_the_vocabulary(tmp_path):
    run = RunDir(tmp_path / "r")
    summary = batching.run(BatchPlanConfig(method="pack", max_len=12, algo="ffd"), run, lengths=LENGTHS)
    record = json.loads(run.batch_stats("pack").read_text())
    for key in ("padding_fraction", "fill", "attention_cost", "computed_tokens", "capacity_tokens"):
        assert key in record, key
    assert record["padding_fraction"] == 0.0 and record["fill"] == pytest.approx(18 / 24)
    assert not {"efficiency", "attention_cost_ratio", "computed_tokens_padding_free"} & set(record)
    text = "\n".join(summary.lines())
    assert "padding 0.0% of the positions computed" in text and "fill 75.0% of the max_len capacity" in text
    assert "attention cost 1.00× the useful pairs" in text


def test_older_records_are_read_in_todays_words():
    """A pack record of the older vocabulary: computed_tokens counted max_len slots, padding_fraction was the
    unused capacity, attention_cost_ratio the inverse of today's attention cost."""
    old_pack = {
        "method": "pack",
        "max_len": 12,
        "n_sequences": 4,
        "n_tokens": 18,
        "n_batches": 2,
        "computed_tokens": 24,
        "computed_tokens_padding_free": 18,
        "efficiency": 0.75,
        "padding_fraction": 0.25,
        "attention_cost_ratio": 1.0,
        "attention_cost_ratio_dense": 0.5,
    }
    r = figures.read_figures(old_pack)
    assert r["computed_tokens"] == 18 and r["padding_fraction"] == 0.0
    assert r["capacity_tokens"] == 24 and r["fill"] == 0.75
    assert r["attention_cost"] == 1.0 and r["attention_cost_dense"] == 2.0
    assert "efficiency" not in r and "attention_cost_ratio" not in r
    old_sort = {
        "method": "sort",
        "max_len": 12,
        "batch_size": 2,
        "n_sequences": 4,
        "n_tokens": 18,
        "n_batches": 2,
        "computed_tokens": 22,
        "efficiency": 18 / 22,
        "padding_fraction": 4 / 22,
        "attention_cost_ratio": 0.8,
    }
    r = figures.read_figures(old_sort)
    assert r["padding_fraction"] == pytest.approx(4 / 22) and r["fill"] == pytest.approx(18 / 48)
    assert r["attention_cost"] == pytest.approx(1.25)
    new = figures.plan_figures(LENGTHS, [2, 2], True, 12)
    assert figures.read_figures(new) == new


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("padding_fraction", 0.10785590277777779, "10.8%"),
        ("fill", 1.0, "100.0%"),
        ("attention_cost", 1.3947, "1.39×"),
        ("computed_tokens", 9216, "9,216"),
        ("attention_cost", None, "—"),
    ],
)
def test_format(key, value, text):
    assert figures.format_figure(key, value) == text


def test_every_figure_has_a_label_and_a_meaning():
    for f in figures.FIGURES:
        assert f.label and f.meaning and f.kind in ("count", "share", "times"), f
        assert f.label != f.key or "_" not in f.key, f  # never a raw key as the label
    rows = figures.figure_rows(figures.plan_figures(LENGTHS, [2, 2], True, 12))
    assert ("padding", "0.0%", figures.BY_KEY["padding_fraction"].meaning) in rows
