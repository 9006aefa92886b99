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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
