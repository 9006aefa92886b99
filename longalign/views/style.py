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
    """Axis-style token counts: multiples of 1024 in binary thousands (8192 -> '8k'), others in full with
    separators (1500 -> '1,500', 500 -> '500')."""
    if n >= 1024 and float(n) % 1024 == 0:
        return f"{n / 1024:g}k"
    return f"{n:,.0f}" if float(n).is_integer() else f"{n:,g}"


BETTER_COLOR = "#1A7F37"  # a change for the better
WORSE_COLOR = "#CF222E"  # a change for the worse
BETTER_BACKGROUND = "#E3F4E8"
WORSE_BACKGROUND = "#FDE7E9"
MINUS = "\u2212"


def signed(value: float, digits: int = 2) -> str:
    """A difference with its sign always written: +0.20, −0.40 (a true minus sign), 0.00; '—' for NaN/None."""
    if value is None or value != value:
        return "—"
    text = f"{abs(float(value)):.{digits}f}"
    if float(text) == 0:
        return text
    return ("+" if value > 0 else MINUS) + text


def change_color(value: float, better: str | None) -> str:
    """CSS colour of a difference: green when it is a change for the better (``better`` is 'higher' or 'lower'),
    red when for the worse, none when there is no direction or no change."""
    if better not in ("higher", "lower") or value is None or value != value or value == 0:
        return ""
    good = value > 0 if better == "higher" else value < 0
    if good:
        return f"color: {BETTER_COLOR}; background-color: {BETTER_BACKGROUND}"
    return f"color: {WORSE_COLOR}; background-color: {WORSE_BACKGROUND}"


def format_seconds(seconds: float) -> str:
    """Seconds rounded for a reader: '0.42 s', '3.6 s', '101 s', '1,530 s', '2.5 h' from 10 hours on."""
    if seconds is None or seconds != seconds:
        return "—"
    s = float(seconds)
    if abs(s) >= 36000:
        return f"{s / 3600:,.1f} h"
    if abs(s) >= 100:
        return f"{s:,.0f} s"
    if abs(s) >= 10:
        return f"{s:.1f} s"
    if abs(s) >= 0.01 or s == 0:
        return f"{s:.2f} s"
    return f"{s:.1e} s"
