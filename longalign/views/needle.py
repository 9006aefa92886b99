"""The Needle page: retrieval score by context length and needle depth, and the prompt around each needle.

The heatmap is the eval stage's own figure, :func:`longalign.eval.needle.heatmap_figure` (the one it saves as
heatmap.html), over the stage's cell aggregation :func:`longalign.eval.needle.heatmap_grid`; this module adds
only the dashboard's single-panel, clickable form of it and the reading of a clicked cell. A cell opens the
probe's window of haystack text around the needle (``window_tokens`` either side, stored by the stage, so no
prompt of up to 60k tokens is rebuilt here).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from longalign.eval.needle import HEATMAP_VALUES, heatmap_figure, heatmap_grid
from longalign.views.style import TEMPLATE

VALUE_LABELS = {
    "judge_score": "judge score (1–10)",
    "recall": "recall (0–1)",
    "recall_norm": "normalised recall (0–1)",
}


def values_in(df: pd.DataFrame) -> list[str]:
    """The score columns the results hold (with at least one value), judge score first."""
    return [c for c in HEATMAP_VALUES if c in df and df[c].notna().any()]


def needle_grid(df: pd.DataFrame, value: str = "judge_score") -> pd.DataFrame:
    """Mean ``value`` per (depth_percent row, context_length column), both sorted ascending."""
    if value not in df:
        raise ValueError(f"value={value!r} is not a needle column; use one of {', '.join(map(repr, values_in(df)))}")
    lengths, depths, z = heatmap_grid(df.to_dict("records"), value)
    grid = pd.DataFrame(np.array(z, dtype=np.float64).reshape(len(depths), len(lengths)), index=depths, columns=lengths)
    grid.index.name, grid.columns.name = "depth_percent", "context_length"
    return grid


def fig_needle_heatmap(grid: pd.DataFrame, value: str = "judge_score") -> go.Figure:
    """The stage's heatmap of ``grid`` (from :func:`needle_grid`), one panel, each cell clickable."""
    return heatmap_figure(
        [int(c) for c in grid.columns],
        [float(d) for d in grid.index],
        {value: grid.to_numpy()},
        selectable=True,
        template=TEMPLATE,
    )


def clicked_cell(points: Sequence[dict[str, Any]]) -> tuple[int, float] | None:
    """(context length, depth percent) of the first selected point of the heatmap ("1,000", "10%" labels),
    None when nothing is selected or the point is not a cell."""
    if not points:
        return None
    try:
        return int(str(points[0]["x"]).replace(",", "")), float(str(points[0]["y"]).rstrip("%"))
    except (KeyError, ValueError):
        return None


def needle_cell(df: pd.DataFrame, context_length: int, depth_percent: float) -> dict:
    """The probe at one (length, depth) cell (the first when repeated)."""
    hit = df[
        (df["context_length"] == context_length) & (np.isclose(df["depth_percent"].astype(float), float(depth_percent)))
    ]
    if hit.empty:
        raise ValueError(f"no needle probe at context_length={context_length}, depth_percent={depth_percent}")
    return hit.iloc[0].to_dict()


def highlight(text: str, needle: str | None) -> str:
    """HTML of ``text`` with ``needle`` marked (escaped; no mark when absent or not found)."""
    text = text or ""
    if needle and needle in text:
        a, b = text.split(needle, 1)
        return f"{html.escape(a)}<mark><b>{html.escape(needle)}</b></mark>{html.escape(b)}"
    return html.escape(text)


def window_html(text: str, needle: str | None) -> str:
    """The prompt window as a block of plain text (HTML-escaped, line breaks and spaces kept, never read as
    Markdown) with the needle marked."""
    return (
        "<div style='white-space:pre-wrap;font-size:0.9em;line-height:1.5;background:#fafafa;padding:0.8em;"
        f"border-radius:6px'>…{highlight(text, needle)}…</div>"
    )


def cell_text(cell: dict, buffer: int | None = None) -> str:
    """Where the needle sits, in words: its token position in the haystack context the cell built, the cell's
    nominal length (and the tokens kept free for the question), and the whole prompt's length."""
    pos, ctx, length = cell.get("needle_token_pos"), cell.get("context_tokens"), cell.get("context_length")
    parts = []
    if pos is not None:
        where = f"needle at token {int(pos):,}"
        if ctx is not None:
            where += f" of the {int(ctx):,}-token context"
        target = cell.get("target_token_pos")
        if target is not None and int(target) != int(pos):
            where += f" (the depth aims at token {int(target):,}; the needle goes to the start of the sentence there)"
        parts.append(where)
    if length is not None:
        kept = f", {int(buffer):,} of them kept free for the question and answer" if buffer else ""
        parts.append(f"cell of {int(length):,} tokens{kept}")
    if cell.get("prompt_tokens") is not None:
        parts.append(f"whole prompt {int(cell['prompt_tokens']):,} tokens")
    return " · ".join(parts)


def score_line(cell: dict) -> str:
    """The cell's judge score and recalls, rounded."""

    def num(key: str, digits: int) -> str:
        v = cell.get(key)
        return "—" if v is None or v != v else f"{float(v):.{digits}f}"

    return (
        f"judge score {num('judge_score', 1)} · recall {num('recall', 2)} · normalised recall {num('recall_norm', 2)}"
    )


HEADLINE = (("judge_score", "mean judge score"), ("recall", "mean recall"), ("recall_norm", "mean normalised recall"))


def headline(df: pd.DataFrame, other: pd.DataFrame | None = None) -> list[tuple[str, str, float | None]]:
    """(label, value, change) of the page's key figures: mean judge score, mean recall (strict and normalised),
    probes; ``change`` is this run's mean minus ``other``'s (None without ``other``)."""

    def mean(frame: pd.DataFrame | None, col: str) -> float:
        return float(frame[col].mean()) if frame is not None and col in frame and frame[col].notna().any() else np.nan

    out = []
    for col, label in HEADLINE:
        a, b = mean(df, col), mean(other, col)
        out.append((label, f"{a:.2f}" if a == a else "—", a - b if other is not None and a == a and b == b else None))
    out.append(("probes", f"{len(df)}", None))
    return out
