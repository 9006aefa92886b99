"""The Training page: loss curves per training folder (method x loss normalisation) and throughput.

Read from ``train/<name>/metrics.jsonl`` (one record per optimizer step, appended as training runs, so the page
follows a live run) and ``train/<name>/run_meta.json``. Loss curves of different normalisations are not on one
scale: ``loss`` is what each run optimised (the pack normalisation weights short answers less), so the page
also offers ``loss_token_mean``, the token mean every trainer logs beside it. Throughput counts real tokens
only, so padding never shows up as speed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from longalign.rundir import RunDir
from longalign.views.readers import load_train_meta
from longalign.views.style import TEMPLATE, colors_for

LOSS_COLUMNS = {"loss": "as optimised", "loss_token_mean": "token mean"}
LOSS_TITLES = {"loss": "loss (each run's own normalisation)", "loss_token_mean": "token-mean loss"}
X_AXES = {"step": "optimizer step", "tokens_seen": "tokens seen", "seconds": "wall time (s)"}
STEP_COLUMNS = {
    "train": "training folder",
    "step": "step",
    "epoch": "epoch",
    "loss": "loss",
    "loss_token_mean": "token-mean loss",
    "loss_norm": "loss normalisation",
    "method": "method",
    "lr": "learning rate",
    "grad_norm": "gradient norm",
    "sequences": "sequences",
    "packs": "micro-batches",
    "micro_batches": "micro-batches per device",
    "real_tokens": "tokens",
    "padded_tokens": "positions computed",
    "target_tokens": "target tokens",
    "tokens_per_s": "tokens per second",
    "step_s": "step time (s)",
    "wall_s": "wall time (s)",
    "tokens_seen": "tokens seen",
    "seconds": "time (s)",
}


def select(metrics: pd.DataFrame, chosen: Sequence[str], y: str) -> tuple[pd.DataFrame, str]:
    """The steps of the ``chosen`` training folders, with the cumulative x axes ``tokens_seen`` and ``seconds``
    per folder, and the loss column to plot (``loss`` when the chosen runs did not log ``y``)."""
    shown = metrics[metrics["train"].isin(list(chosen))].copy()
    order = {name: i for i, name in enumerate(dict.fromkeys(shown["train"]))}  # folders keep their order
    shown = shown.sort_values("step", kind="stable").sort_values("train", key=lambda t: t.map(order), kind="stable")
    if len(shown):
        groups = shown.groupby("train", sort=False)
        shown["tokens_seen"] = groups["real_tokens"].cumsum() if "real_tokens" in shown else np.nan
        shown["seconds"] = pd.concat([step_seconds(g).cumsum() for _, g in groups]) if len(shown) else np.nan
    return shown, y if y in shown and shown[y].notna().any() else "loss"


def x_axes_in(shown: pd.DataFrame) -> list[str]:
    """The x axes of :data:`X_AXES` the selected steps have values for."""
    return [x for x in X_AXES if x in shown and shown[x].notna().any()]


def step_seconds(g: pd.DataFrame) -> pd.Series:
    """Seconds of each optimizer step of one (step-sorted) run: ``step_s``, or the differences of the
    cumulative ``wall_s`` clock when an older file has no ``step_s``."""
    if "step_s" in g:
        return g["step_s"].astype(float)
    if "wall_s" in g:
        wall = g["wall_s"].astype(float)
        return wall.diff().fillna(wall.iloc[0])
    return pd.Series(np.nan, index=g.index)


def train_summary(run: RunDir, metrics: pd.DataFrame, y: str = "loss") -> pd.DataFrame:
    """Per training folder: method, loss normalisation, attention backend, steps, final and lowest value of the
    loss column ``y``, mean tokens per second, total wall time, padding (share of computed positions that hold
    no token)."""
    rows = []
    for name, g in metrics.groupby("train", sort=False):
        meta = load_train_meta(run, name)
        g = g.sort_values("step")
        col = y if y in g and g[y].notna().any() else "loss"
        real = g["real_tokens"].sum() if "real_tokens" in g else np.nan
        padded = g["padded_tokens"].sum() if "padded_tokens" in g else np.nan
        wall = float(step_seconds(g).sum())
        rows.append(
            {
                "training folder": name,
                "final loss": float(g[col].iloc[-1]),
                "lowest loss": float(g[col].min()),
                "tokens per second": float(real / wall)
                if np.isfinite(real) and np.isfinite(wall) and wall > 0
                else float(g["tokens_per_s"].mean())
                if "tokens_per_s" in g
                else np.nan,
                "padding": float(1 - real / padded) if padded and padded > 0 else np.nan,
                "steps": int(g["step"].max()),
                "wall time (s)": float(wall),
                "method": meta.get("method", g["method"].iloc[0] if "method" in g else ""),
                "loss normalisation": meta.get("loss_norm", g["loss_norm"].iloc[0]),
                "attention": meta.get("attention_backend", ""),
            }
        )
    return pd.DataFrame(rows)


def steps_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Every logged step under readable column names (the ``label`` helper column left out)."""
    out = metrics.drop(columns=[c for c in ("label",) if c in metrics])
    return out.rename(columns={k: v for k, v in STEP_COLUMNS.items() if k in out})


def smooth(values: pd.Series, window: int) -> pd.Series:
    """Trailing moving average over ``window`` steps (1 = unchanged)."""
    return values.rolling(max(1, int(window)), min_periods=1).mean()


def fig_loss(metrics: pd.DataFrame, y: str = "loss", window: int = 1, x: str = "step") -> go.Figure:
    """Loss curves overlaid, one line per training folder (dashed = a ``pack`` loss normalisation), against
    optimizer steps, tokens seen or wall time (``x``: one of :data:`X_AXES`; the cumulative ones come from
    :func:`select`)."""
    if y not in metrics:
        raise ValueError(f"y={y!r} is not a metrics column; use one of {', '.join(map(repr, LOSS_COLUMNS))}")
    if x not in metrics:
        raise ValueError(f"x={x!r} is not a column of the selected steps; use one of {', '.join(X_AXES)}")
    fig = go.Figure()
    colors = colors_for(list(dict.fromkeys(metrics["train"])))
    for name, g in metrics.groupby("train", sort=False):
        g = g.sort_values("step")
        dash = "dash" if (g["loss_norm"] == "pack").all() else "solid"
        fig.add_trace(
            go.Scatter(
                x=g[x],
                y=smooth(g[y], window),
                mode="lines+markers" if len(g) <= 30 else "lines",
                name=g["label"].iloc[0],
                line=dict(color=colors[name], dash=dash, width=2),
                hovertemplate=f"{X_AXES.get(x, x)} %{{x:,.4~g}}<br>{LOSS_TITLES.get(y, y)} %{{y:.3f}}<extra>"
                + str(g["label"].iloc[0])
                + "</extra>",
            )
        )
    if x == "step" and len(metrics) and metrics["step"].max() <= 30:
        fig.update_xaxes(dtick=1)  # a handful of steps: whole steps only
    title = {"loss": "Training loss (each run's own normalisation)", "loss_token_mean": "Token-mean loss"}.get(y, y)
    fig.update_layout(
        template=TEMPLATE,
        height=360,
        title=dict(text=title, font_size=14),
        xaxis_title=X_AXES.get(x, x),
        yaxis_title=LOSS_TITLES.get(y, y),
        legend_title_text="training folder · loss normalisation",
        margin=dict(l=50, r=20, t=50, b=40),
    )
    return fig


def fig_throughput(metrics: pd.DataFrame, window: int = 1) -> go.Figure:
    """Tokens/s per step and cumulative wall time per training folder."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=["Tokens per second (real tokens)", "Cumulative wall time (s)"],
        horizontal_spacing=0.1,
    )
    colors = colors_for(list(dict.fromkeys(metrics["train"])))
    for name, g in metrics.groupby("train", sort=False):
        g = g.sort_values("step")
        if "tokens_per_s" in g:
            fig.add_trace(
                go.Scatter(
                    x=g["step"],
                    y=smooth(g["tokens_per_s"], window),
                    mode="lines",
                    name=name,
                    legendgroup=name,
                    line=dict(color=colors[name]),
                ),
                1,
                1,
            )
        if "wall_s" in g or "step_s" in g:
            fig.add_trace(
                go.Scatter(
                    x=g["step"],
                    y=step_seconds(g).cumsum(),
                    mode="lines",
                    name=name,
                    legendgroup=name,
                    showlegend="tokens_per_s" not in g,
                    line=dict(color=colors[name]),
                ),
                1,
                2,
            )
    fig.update_xaxes(
        title_text="optimizer step", **({"dtick": 1} if len(metrics) and metrics["step"].max() <= 30 else {})
    )
    fig.update_layout(template=TEMPLATE, height=340, margin=dict(l=50, r=20, t=50, b=40))
    return fig
