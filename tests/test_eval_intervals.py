"""Differences between two runs (:mod:`longalign.eval.intervals`): the paired interval against a hand computation
on the 2 x 2 table of outcomes, the same for fractional scores, the t interval for unbounded values, Newcombe's
interval against the paper's worked example, and the resolved/unresolved verdict."""

from __future__ import annotations

import math

import pytest

from longalign.eval.intervals import independent_difference, paired_difference, resolved

Z = 1.959963984540054


def agresti_min(b: int, c: int, n: int) -> tuple[float, float]:
    """Agresti & Min (2005) by hand on the 2 x 2 table: add 0.5 to each cell, then the Wald interval of the
    difference of the matched proportions (b* - c*) / n* with variance ((b* + c*) - (b* - c*)^2 / n*) / n*^2."""
    bs, cs, ns = b + 0.5, c + 0.5, n + 2
    d = (bs - cs) / ns
    se = math.sqrt((bs + cs) - (bs - cs) ** 2 / ns) / ns
    return d - Z * se, d + Z * se


def table(b: int, c: int, both: int, neither: int) -> tuple[list[int], list[int]]:
    """0/1 scores of two runs: b pairs where only the first scored, c where only the second, then the ties."""
    a = [1] * b + [0] * c + [1] * both + [0] * neither
    o = [0] * b + [1] * c + [1] * both + [0] * neither
    return a, o


@pytest.mark.parametrize("b,c,both,neither", [(6, 1, 7, 6), (8, 1, 7, 4), (0, 0, 12, 8), (3, 5, 40, 2)])
def test_paired_binary_scores_give_agresti_and_mins_interval(b, c, both, neither):
    a, o = table(b, c, both, neither)
    n = len(a)
    out = paired_difference(a, o)
    lo, hi = agresti_min(b, c, n)
    assert out["diff"] == pytest.approx((b - c) / n)
    assert out["lo"] == pytest.approx(max(-1.0, lo)) and out["hi"] == pytest.approx(min(1.0, hi))
    assert (out["n"], out["higher"], out["lower"], out["ties"]) == (n, b, c, both + neither)


def test_paired_literal_numbers_and_verdicts():
    a, o = table(6, 1, 7, 6)  # 6 wins, 1 loss in 20: the interval still reaches below zero
    out = paired_difference(a, o, 100.0)
    assert out["diff"] == pytest.approx(25.0)
    assert (round(out["lo"], 2), round(out["hi"], 2)) == (-0.61, 46.07)
    assert not resolved(out)
    a, o = table(8, 1, 7, 4)
    assert (round(paired_difference(a, o)["lo"], 4), resolved(paired_difference(a, o))) == (0.0698, True)
    # every pair tied: the interval keeps a width of +-z/(n+2) instead of collapsing to zero
    ties = paired_difference([0.5] * 20, [0.5] * 20)
    assert ties["diff"] == 0 and ties["hi"] == pytest.approx(Z / 22) and ties["lo"] == pytest.approx(-Z / 22)
    assert not resolved(ties)
    assert paired_difference([], []) == {"diff": None, "lo": None, "hi": None, "n": 0, "higher": 0, "lower": 0,
                                         "ties": 0}  # fmt: skip
    assert not resolved(paired_difference([], []))
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1, 0], [1])


def test_paired_fractional_scores():
    """Scores such as 0.25 (one of four values found): pseudo-pairs at +1 and -1 (half each) and one tie."""
    a = [1.0, 0.75, 0.5, 0.25, 1.0, 0.0]
    o = [0.5, 0.75, 0.25, 0.5, 1.0, 0.0]
    d = [0.5, 0.0, 0.25, -0.25, 0.0, 0.0]
    m = len(d) + 2
    centre = sum(d) / m
    var = (sum(x * x for x in d) + 1.0 - sum(d) ** 2 / m) / m**2
    out = paired_difference(a, o)
    assert out["diff"] == pytest.approx(sum(d) / len(d))
    assert out["lo"] == pytest.approx(centre - Z * math.sqrt(var)) and out["hi"] == pytest.approx(
        centre + Z * math.sqrt(var)
    )
    # bounds other than 0..1 scale the pseudo-pairs: scores out of 10 give the same interval x 10
    ten = paired_difference([10 * x for x in a], [10 * x for x in o], bounds=(0, 10))
    assert ten["lo"] == pytest.approx(10 * out["lo"]) and ten["hi"] == pytest.approx(10 * out["hi"])


def test_unbounded_values_get_the_t_interval():
    out = paired_difference([1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0], bounds=None)
    sd = math.sqrt(sum((x - 2.5) ** 2 for x in (1, 2, 3, 4)) / 3)
    half = 3.182446305284263 * sd / 2  # t quantile 0.975 with 3 degrees of freedom
    assert out["diff"] == 2.5 and out["lo"] == pytest.approx(2.5 - half) and out["hi"] == pytest.approx(2.5 + half)
    one = paired_difference([1.0], [0.0], bounds=None)
    assert one["lo"] == -math.inf and one["hi"] == math.inf and not resolved(one)


def test_independent_difference_matches_newcombes_example():
    """Newcombe (1998), method 10 on 56/70 vs 48/80: difference 0.2000 with interval 0.0524 to 0.3339."""
    out = independent_difference([1] * 56 + [0] * 14, [1] * 48 + [0] * 32)
    assert out["diff"] == pytest.approx(0.2)
    assert (round(out["lo"], 4), round(out["hi"], 4)) == (0.0524, 0.3339)
    assert independent_difference([], [1])["diff"] is None
