"""One look for every dashboard figure: the plotly template, the palette and a fixed colour per batching method.

A method keeps its colour on every page (naive red, sort orange, pack blue), so a reader who learnt it on the
Packing page reads the Simulator and Training pages without a legend; every other group (sources, languages,
run names) takes the next palette colour not already held by a method present in the same figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

TEMPLATE = "plotly_white"
PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#EECA3B", "#9D755D", "#FF9DA6", "#BAB0AC")
METHOD_COLORS = {"naive": "#E45756", "sort": "#F58518", "pack": "#4C78A8"}
KIND_COLORS = {"long": "#4C78A8", "short": "#72B7B2"}
OTHER_COLOR = "#BAB0AC"


def colors_for(groups: Sequence[str]) -> dict[str, str]:
    """Method names keep their colour; every other group takes the next palette colour not yet used."""
    out = {g: METHOD_COLORS[g] for g in groups if g in METHOD_COLORS}
    free = [c for c in PALETTE if c not in out.values()]
    for i, g in enumerate(g for g in groups if g not in out):
        out[g] = free[i % len(free)]
    return out


def format_count(n: float) -> str:
    """1234567 -> '1.23M'; 12345 -> '12.3k'; NaN -> '—'."""
    n = float(n)
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:g}" if not math.isnan(n) else "—"


def format_tokens(n: float) -> str:
    """Axis-style token counts in binary thousands: 8192 -> '8k', 500 -> '500'."""
    return f"{n / 1024:g}k" if n >= 1024 else f"{n:g}"
