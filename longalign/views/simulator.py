"""The Simulator page: predicted training time and device idle time per batching method on a run's lengths.

The live simulation is :func:`longalign.batching.simulate` itself (plans made with ``make_plan``, priced by its
cost model); this module only turns its result, or the recorded ``batching/simulate.json``, into a table and a
figure. Both carry every scalar the simulator returns, plus the speed-up over the slowest method (the
simulator's own ``speedup_vs_naive`` needs naive among the methods). On 2 CPU cores a simulation of 10^4
sequences over the three methods takes well under a second, so the page re-runs it on every submit (cached
per setting).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from longalign.batching import METHODS, simulate
from longalign.batching.config import PACK_ALGOS, SYNC_MODES
from longalign.rundir import RunDir
from longalign.views.readers import read_simulation
from longalign.views.style import TEMPLATE, colors_for

SYNC_LABELS = {"micro": "every micro-batch (ZeRO-3)", "step": "once per step"}


def simulation_table(methods: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Per-method simulation results as a table, with the speed-up over the slowest method."""
    rows = [
        {"method": m, **{k: v for k, v in dict(r).items() if not isinstance(v, (list, dict))}}
        for m, r in methods.items()
    ]
    df = pd.DataFrame(rows)
    if len(df) and "total_seconds" in df:
        df["speed-up vs slowest"] = df["total_seconds"].max() / df["total_seconds"]
    return df


def load_simulation(run: RunDir) -> tuple[dict, pd.DataFrame]:
    """(config, table) from batching/simulate.json; one row per method with every recorded number."""
    data = read_simulation(run)
    return data.get("config", {}) or {}, simulation_table(data.get("methods", {}) or {})


def form_defaults(recorded: Mapping[str, Any], token_meta: Mapping[str, Any], longest: int) -> dict[str, Any]:
    """Starting values of the simulator form: the recorded simulation's settings where it has them, the
    tokenizer's max_len (else the longest sequence) and the paper-scale defaults of 8 devices, batch 1,
    12 accumulation steps and one pack per device per step otherwise; first-fit decreasing is offered first."""
    return {
        "devices": int(recorded.get("devices") or recorded.get("world_size") or 8),
        "batch_size": int(recorded.get("batch_size") or 1),
        "grad_accum": int(recorded.get("grad_accum") or 12),
        "max_len": int(recorded.get("max_len") or token_meta.get("max_len") or longest),
        "pack_grad_accum": int(recorded.get("pack_grad_accum") or 1),
        "algos": ["ffd", *[a for a in PACK_ALGOS if a != "ffd"]],
        "syncs": list(SYNC_MODES),
    }


def run_simulation(
    lengths: Sequence[int] | np.ndarray,
    *,
    devices: int,
    batch_size: int,
    max_len: int,
    grad_accum: int = 1,
    pack_grad_accum: int = 1,
    algo: str = "ffd",
    sync: str = "micro",
    methods: Sequence[str] = METHODS,
) -> tuple[dict, pd.DataFrame]:
    """Simulate every method on ``lengths`` with :func:`longalign.batching.simulate`; (config, table)."""
    out = simulate(
        np.asarray(lengths),
        tuple(methods),
        max_len=int(max_len),
        world_size=int(devices),
        batch_size=int(batch_size),
        grad_accum=int(grad_accum),
        pack_grad_accum=int(pack_grad_accum),
        algo=algo,
        sync=sync,
    )
    return out.get("config", {}), simulation_table(out.get("methods", {}))


def fig_simulation(table: pd.DataFrame) -> go.Figure:
    """Predicted total time and idle fraction per method."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=["Predicted time (s)", "Idle fraction of devices"], horizontal_spacing=0.12
    )
    colors = colors_for(list(table["method"]))
    c = [colors[m] for m in table["method"]]
    fig.add_trace(
        go.Bar(
            x=table["method"],
            y=table["total_seconds"],
            marker_color=c,
            showlegend=False,
            text=[f"{v:,.1f}" for v in table["total_seconds"]],
            textposition="outside",
            cliponaxis=False,
        ),
        1,
        1,
    )
    if "idle_fraction" in table:
        fig.add_trace(
            go.Bar(
                x=table["method"],
                y=table["idle_fraction"],
                marker_color=c,
                showlegend=False,
                text=[f"{v:.0%}" for v in table["idle_fraction"]],
                textposition="outside",
                cliponaxis=False,
            ),
            1,
            2,
        )
        fig.update_yaxes(tickformat=".0%", range=[0, 1], row=1, col=2)
    fig.update_yaxes(range=[0, float(table["total_seconds"].max()) * 1.2], row=1, col=1)
    fig.update_layout(template=TEMPLATE, height=330, margin=dict(l=50, r=20, t=50, b=30))
    return fig
