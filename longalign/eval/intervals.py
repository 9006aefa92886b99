"""95% intervals for scores in 0..1 averaged over samples: the Wilson score interval, and pooled means of
several cells.

Per-sample scores of the synthetic ladder and of multiple-choice accuracy lie in ``[0, 1]`` (1/0 for one
expected value, fractions for several). For a variable in ``[0, 1]`` with mean ``p`` the variance is at most
``p (1 - p)`` (equality for 0/1 scores), so the Wilson interval of the mean with ``n`` samples — exact in form
for 0/1 scores — is a conservative interval for fractional ones. Unlike the normal interval it does not
collapse to zero width when every sample scored 1 (or 0), which is what a small grid on a strong (or weak)
model gives.

A mean of several cells with equal weight (RULER's average over tasks at one length) pools the samples with
weights ``1 / (k n_i)``; its interval is the Wilson interval at the pooled mean with the Kish effective sample
size ``(sum w)^2 / sum w^2`` (``sum n_i`` when all cells have the same size).

Two runs compared (a fine-tuned model against its base):

* on the same samples (same seed and settings give the same prompts), :func:`paired_difference`: the mean of the
  per-sample differences with the interval of Agresti & Min (2005) for matched pairs, extended from 0/1 scores to
  bounded ones: the normal interval of the mean difference after adding two pseudo-pairs, one at each extreme
  difference (``+range`` and ``-range``, half a pair each), and one tie. For 0/1 scores this is exactly their
  interval (0.5 added to each cell of the 2 x 2 table of outcomes). It keeps a width when every pair ties or
  every pair differs the same way, where the plain normal interval has none. Without bounds (losses), the
  Student t interval of the mean difference;
* on different samples, :func:`independent_difference`: the difference of two means with Newcombe's hybrid
  score interval (1998, method 10), built from the two Wilson intervals.

A difference is *resolved* (:func:`resolved`) when its interval excludes zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval ``(lo, hi)`` of a proportion (or a mean of scores in 0..1) ``p`` over ``n`` samples;
    ``(0, 1)`` when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = min(1.0, max(0.0, float(p)))
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(scores: Sequence[float], scale: float = 1.0) -> dict[str, float | int | None]:
    """``{"score", "lo", "hi", "n"}`` of the mean of ``scores`` (each in 0..1), multiplied by ``scale`` (100 for
    percentages) and rounded to 2 decimals; ``score``/``lo``/``hi`` are None for no scores."""
    n = len(scores)
    if not n:
        return {"score": None, "lo": None, "hi": None, "n": 0}
    p = math.fsum(scores) / n
    lo, hi = wilson(p, n)
    return {"score": round(p * scale, 2), "lo": round(lo * scale, 2), "hi": round(hi * scale, 2), "n": n}


def pooled_interval(cells: Sequence[tuple[float, int]], scale: float = 1.0) -> dict[str, float | int | None]:
    """Equal-weight mean of cell means ``[(mean in 0..1, n), ...]`` with its interval (see the module docstring):
    ``{"score", "lo", "hi", "n_eff", "cells"}``; cells with ``n == 0`` are left out."""
    cells = [(float(m), int(n)) for m, n in cells if n > 0]
    if not cells:
        return {"score": None, "lo": None, "hi": None, "n_eff": 0, "cells": 0}
    k = len(cells)
    p = math.fsum(m for m, _ in cells) / k
    n_eff = 1.0 / math.fsum(1.0 / (k * k * n) for _, n in cells)  # (sum w)^2 / sum w^2 with w_i = 1/(k n_i)
    lo, hi = wilson(p, n_eff)
    return {
        "score": round(p * scale, 2),
        "lo": round(lo * scale, 2),
        "hi": round(hi * scale, 2),
        "n_eff": round(n_eff, 2),
        "cells": k,
    }


def paired_difference(
    a: Sequence[float],
    b: Sequence[float],
    scale: float = 1.0,
    *,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> dict[str, Any]:
    """Mean of ``a[i] - b[i]`` over pairs (two runs scored on the same samples, in the same order), multiplied by
    ``scale``, with its 95% interval (see the module docstring): ``{"diff", "lo", "hi", "n", "higher", "lower",
    "ties"}`` (``higher``: pairs where ``a`` scored more). ``bounds`` are the scores' range (``None``: unbounded,
    the t interval); ``diff``/``lo``/``hi`` are None for no pairs. Not rounded."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(d)
    counts = {"higher": sum(v > 0 for v in d), "lower": sum(v < 0 for v in d), "ties": sum(v == 0 for v in d)}
    if not n:
        return {"diff": None, "lo": None, "hi": None, "n": 0, **counts}
    mean = math.fsum(d) / n
    if bounds is None:
        if n < 2:
            lo, hi = -math.inf, math.inf
        else:
            from scipy import stats

            var = math.fsum((v - mean) ** 2 for v in d) / (n - 1)
            half = float(stats.t.ppf(0.975, n - 1)) * math.sqrt(var / n)
            lo, hi = mean - half, mean + half
    else:
        span = float(bounds[1]) - float(bounds[0])
        if span <= 0:
            raise ValueError(f"bounds={bounds!r}: the upper bound must exceed the lower")
        m = n + 2  # the pairs, half a pair at +span, half a pair at -span, one tie
        total = math.fsum(d)
        squares = math.fsum(v * v for v in d) + span * span
        centre = total / m
        var = max(0.0, squares - total * total / m) / (m * m)
        half = Z95 * math.sqrt(var)
        lo, hi = max(-span, centre - half), min(span, centre + half)
    return {"diff": mean * scale, "lo": lo * scale, "hi": hi * scale, "n": n, **counts}


def independent_difference(a: Sequence[float], b: Sequence[float], scale: float = 1.0) -> dict[str, Any]:
    """Mean of ``a`` minus mean of ``b`` (scores in 0..1 on different samples), multiplied by ``scale``, with
    Newcombe's hybrid score interval: ``{"diff", "lo", "hi", "n_a", "n_b"}`` (None values when either is empty).
    Not rounded."""
    na, nb = len(a), len(b)
    if not na or not nb:
        return {"diff": None, "lo": None, "hi": None, "n_a": na, "n_b": nb}
    pa, pb = math.fsum(a) / na, math.fsum(b) / nb
    la, ua = wilson(pa, na)
    lb, ub = wilson(pb, nb)
    diff = pa - pb
    lo = diff - math.sqrt((pa - la) ** 2 + (ub - pb) ** 2)
    hi = diff + math.sqrt((ua - pa) ** 2 + (pb - lb) ** 2)
    return {"diff": diff * scale, "lo": lo * scale, "hi": hi * scale, "n_a": na, "n_b": nb}


def resolved(interval: dict[str, Any]) -> bool:
    """Whether a difference's interval (``lo``, ``hi``) excludes zero."""
    lo, hi = interval.get("lo"), interval.get("hi")
    return lo is not None and hi is not None and (lo > 0 or hi < 0)
