"""The Lengths page: token-length distributions of tokens/ by source, language, task type and long vs short.

Everything here works on the token table of :func:`.readers.load_token_table` (one row of metadata per
sequence, ~200 kB for 10,000 rows; the token columns are never read). The distribution figure splits the axis
like the paper's length figure, 0-8k and 8k-64k tokens by default, because a single linear axis over a
long-tail mix (median ~6k, max 64k) squeezes the short chat data into one bin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from longalign.views.style import KIND_COLORS, OTHER_COLOR, TEMPLATE, colors_for, format_count, format_tokens

LENGTH_GROUPS = ("source", "lang", "task_type", "kind")
GROUP_LABELS = {"source": "source", "lang": "language", "task_type": "task type", "kind": "long vs short"}


def _check_by(df: pd.DataFrame, by: str) -> None:
    if by not in df.columns:
        raise ValueError(f"by={by!r} is not a column; use one of {', '.join(LENGTH_GROUPS)}")


def headline(df: pd.DataFrame, meta: dict) -> list[tuple[str, str, str | None]]:
    """The page's key figures as (label, value, help): sequences, tokens, target tokens, long/short, truncated."""
    return [
        ("sequences", f"{len(df):,}", None),
        ("tokens", _count(df["length"].sum()), None),
        ("target tokens", _count(df["n_target"].sum()), None),
        ("long / short", f"{(df.kind == 'long').sum():,} / {(df.kind == 'short').sum():,}", None),
        (
            "truncated",
            f"{meta.get('n_truncated', '—')}",
            f"max_len {meta.get('max_len', '—')}, truncation {meta.get('truncation', '—')}",
        ),
    ]


def _count(n: float) -> str:
    """Counts in full up to 99,999 (1,224), shortened above (1.64M)."""
    return f"{int(n):,}" if abs(n) < 100_000 else format_count(n)


def length_edges(lo: float, hi: float, nbins: int = 40, log: bool = False) -> np.ndarray:
    """Bin edges over [lo, hi]; geometric when ``log`` (lo is raised to 1)."""
    if hi <= lo:
        hi = lo + 1
    if log:
        return np.geomspace(max(lo, 1.0), hi, nbins + 1)
    return np.linspace(lo, hi, nbins + 1)


def length_histogram(df: pd.DataFrame, by: str, edges: np.ndarray) -> pd.DataFrame:
    """Counts of ``df.length`` per bin and per value of ``by``: columns group, lo, hi, count.
    The last bin is closed on the right; lengths outside [edges[0], edges[-1]] are not counted."""
    rows = []
    for group, sub in df.groupby(by, sort=True):
        counts, _ = np.histogram(sub["length"].to_numpy(), bins=edges)
        rows.extend(
            {"group": str(group), "lo": float(edges[i]), "hi": float(edges[i + 1]), "count": int(c)}
            for i, c in enumerate(counts)
        )
    return pd.DataFrame(rows, columns=["group", "lo", "hi", "count"])


def nice_ceiling(x: float) -> int:
    """The smallest of 1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times a power of ten that is >= ``x`` (an axis end)."""
    if x <= 1:
        return 1
    power = 10 ** math.floor(math.log10(x))
    return int(next(m * power for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10) if m * power >= x))


def length_panels(
    df: pd.DataFrame, split: int = 8192, upper: int | None = None, log_x: bool = False
) -> list[tuple[float, float]]:
    """The x ranges of the length figure: [0, split) and [split, upper] like the paper's figure when some
    sequence reaches ``split``; else one panel that ends just above the longest sequence (no empty panel)."""
    longest = int(df["length"].max()) if len(df) else 0
    shortest = int(df["length"].min()) if len(df) else 1
    low = 10 ** math.floor(math.log10(max(min(shortest, split - 1), 1))) if log_x else 0
    if longest < split:
        return [(low, min(int(upper), nice_ceiling(longest)) if upper else nice_ceiling(longest))]
    top = int(upper) if upper else max(2 * split, 2 ** math.ceil(math.log2(max(longest, 1))))
    return [(low, split), (split, top)]


def panels_text(panels: Sequence[tuple[float, float]]) -> str:
    """'0–8k and 8k–64k tokens' / '0–1.5k tokens': the ranges the figure shows, for its caption."""
    return " and ".join(f"{format_tokens(a)}–{format_tokens(b)}" for a, b in panels) + " tokens"


def fig_length_distribution(
    df: pd.DataFrame,
    by: str = "source",
    log_x: bool = False,
    split: int = 8192,
    upper: int | None = None,
    nbins: int = 32,
) -> go.Figure:
    """Like the paper's length figure, [0, split) and [split, upper] tokens side by side, stacked by ``by``; one
    panel up to just above the longest sequence when none reaches ``split`` (see :func:`length_panels`)."""
    _check_by(df, by)
    panels = length_panels(df, split, upper, log_x)

    def n_in(a: float, b: float, last: bool) -> int:
        return int(((df.length >= a) & ((df.length <= b) if last else (df.length < b))).sum())

    fig = make_subplots(
        rows=1,
        cols=len(panels),
        horizontal_spacing=0.07,
        subplot_titles=[
            f"{format_tokens(a)}–{format_tokens(b)} tokens ({n_in(a, b, i == len(panels) - 1):,} sequences)"
            for i, (a, b) in enumerate(panels)
        ],
    )
    groups = sorted(df[by].astype(str).unique())
    colors = colors_for(groups)
    for col, (lo, hi) in enumerate(panels, 1):
        edges = length_edges(lo, hi, nbins, log_x)
        hist = length_histogram(df.assign(**{by: df[by].astype(str)}), by, edges)
        for g in groups:
            h = hist[hist.group == g]
            if log_x:
                xs = np.r_[h.lo.to_numpy(), h.hi.to_numpy()[-1:]]
                ys = np.r_[h["count"].to_numpy(), h["count"].to_numpy()[-1:]]
                fig.add_trace(
                    go.Scatter(
                        x=xs,
                        y=ys,
                        mode="lines",
                        line_shape="hv",
                        name=g,
                        legendgroup=g,
                        showlegend=col == 1,
                        line=dict(color=colors[g], width=2),
                    ),
                    1,
                    col,
                )
            else:
                fig.add_trace(
                    go.Bar(
                        x=(h.lo + h.hi) / 2,
                        y=h["count"],
                        width=(h.hi - h.lo),
                        name=g,
                        legendgroup=g,
                        showlegend=col == 1,
                        marker_color=colors[g],
                        customdata=np.c_[h.lo, h.hi],
                        hovertemplate=f"{g}<br>%{{customdata[0]:.0f}}–%{{customdata[1]:.0f}} tokens"
                        "<br>%{y} sequences<extra></extra>",
                    ),
                    1,
                    col,
                )
        fig.update_xaxes(type="log" if log_x else "linear", title_text="tokens", row=1, col=col)
    fig.update_yaxes(title_text="sequences", row=1, col=1)
    fig.update_yaxes(rangemode="tozero", tickformat=",d")
    if len(df) <= 10:
        fig.update_yaxes(dtick=1)  # a handful of sequences: whole counts only
    fig.update_layout(
        template=TEMPLATE,
        barmode="stack",
        bargap=0,
        height=380,
        legend_title_text=GROUP_LABELS.get(by, by),
        margin=dict(l=50, r=20, t=50, b=40),
    )
    return fig


def length_summary(df: pd.DataFrame, by: str) -> pd.DataFrame:
    """Per group: sequences, tokens, share of tokens, mean/median/p90/max length, target tokens."""
    _check_by(df, by)
    total = max(int(df["length"].sum()), 1)
    g = df.groupby(by, sort=True)
    out = pd.DataFrame(
        {
            "sequences": g.size(),
            "tokens": g["length"].sum(),
            "token share": g["length"].sum() / total,
            "mean": g["length"].mean().round(1),
            "median": g["length"].median(),
            "p90": g["length"].quantile(0.9).round(0),
            "max": g["length"].max(),
            "target tokens": g["n_target"].sum(),
        }
    )
    return out.sort_values("tokens", ascending=False).reset_index()


def mix_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Long vs short data: sequences, tokens, target tokens and their shares."""
    out = length_summary(df, "kind")[["kind", "sequences", "tokens", "target tokens", "mean", "max"]]
    out.insert(2, "sequence share", out["sequences"] / max(int(out["sequences"].sum()), 1))
    out.insert(4, "token share", out["tokens"] / max(int(out["tokens"].sum()), 1))
    out.insert(6, "target share", out["target tokens"] / max(int(out["target tokens"].sum()), 1))
    return out


def fig_mix(df: pd.DataFrame) -> go.Figure:
    """Share of sequences, tokens and target tokens that are long vs short data."""
    mix = mix_summary(df)
    fig = go.Figure()
    for _, r in mix.iterrows():
        shares = (r["sequence share"], r["token share"], r["target share"])
        fig.add_trace(
            go.Bar(
                y=["sequences", "tokens", "target tokens"],
                x=list(shares),
                name=r["kind"],
                orientation="h",
                marker_color=KIND_COLORS.get(r["kind"], OTHER_COLOR),
                text=[f"{v:.0%}" for v in shares],
                textposition="inside",
            )
        )
    fig.update_layout(
        template=TEMPLATE,
        barmode="stack",
        height=220,
        xaxis_tickformat=".0%",
        margin=dict(l=90, r=20, t=30, b=30),
        legend_title_text="data",
    )
    return fig


# ------------------------------------------------------------------------------------- generation quality
def quality_headline(quality: dict) -> list[tuple[str, str, str | None]]:
    """Key figures of ``data/quality.json`` as (label, value, help); empty when there is none."""
    if not quality:
        return []
    q, a = quality.get("questions", {}), quality.get("answers", {})
    gate = quality.get("gate")

    def share(part: int, whole: int) -> str:
        return f"{part:,} of {whole:,}" + (f" ({part / whole:.0%})" if whole else "")

    return [
        ("records", format_count(int(quality.get("records", 0))), "training records written to long.jsonl"),
        (
            "questions accepted",
            share(int(q.get("accepted", 0)), int(q.get("checked", 0))),
            "questions that passed the format checks and the relevance gate",
        ),
        (
            "answers accepted",
            share(int(a.get("accepted", 0)), int(a.get("checked", 0))),
            "answers that were non-empty, not an echo and grounded in the document or the question",
        ),
        (
            "relevance gate (question / answer)",
            (f"{gate['min_question_overlap']:g} / {gate['min_answer_overlap']:g}" if gate else "off"),
            "minimum share of content words a question shares with its document (q) and an answer with the "
            "document or question (a); set with --min-question-overlap / --min-answer-overlap",
        ),
    ]


def quality_table(quality: dict) -> pd.DataFrame:
    """One row per (stage, reason) of the rejections in ``data/quality.json``, most frequent first, with the
    share of that stage's checked items."""
    rows = []
    for stage in ("questions", "answers"):
        part = (quality or {}).get(stage) or {}
        checked = int(part.get("checked", 0))
        for reason, count in (part.get("rejected") or {}).items():
            rows.append(
                {"stage": stage, "reason": reason, "rejected": int(count), "share": count / checked if checked else 0.0}
            )
    df = pd.DataFrame(rows, columns=["stage", "reason", "rejected", "share"])
    return df.sort_values(["stage", "rejected"], ascending=[False, False], kind="stable").reset_index(drop=True)
