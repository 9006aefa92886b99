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
from longalign.batching.simulate import CostModel
from longalign.rundir import RunDir
from longalign.views.readers import read_simulation
from longalign.views.style import TEMPLATE, colors_for, format_seconds

SYNC_LABELS = {"micro": "every micro-batch (ZeRO-3)", "step": "once per step"}
METHOD_LABELS = {"pack_dense": "pack, dense mask"}
METHOD_NOTE = (
    "pack, dense mask: the same packs run with one dense block-diagonal attention mask per pack instead of "
    "segment-aware attention, so each pack pays attention over all its tokens, (Σn)², instead of Σn²."
)
TIME, IDLE, SPEEDUP = "predicted time (s)", "idle share", "speed-up vs slowest"
# the simulator's keys (and those of older files) -> the names the page shows
COLUMNS = {
    "total_seconds": TIME,
    "idle_fraction": IDLE,
    "busy_device_seconds": "busy device time (s)",
    "busy_seconds": "busy device time (s)",
    "n_steps": "optimizer steps",
    "steps": "optimizer steps",
    "n_micro_batches": "micro-batches",
    "real_tokens": "tokens",
    "real_tokens_per_second": "tokens per second",
    "mean_step_seconds": "seconds per step",
    "padding_fraction": "padding",
    "fill": "fill",
    "attention": "attention",
}
DEFAULT_COST = CostModel()


def simulation_table(methods: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Per-method simulation results under the names the page shows (:data:`COLUMNS`; the simulator's
    ``speedup_vs_naive`` is replaced by the speed-up over the slowest method, which needs no naive run), with
    ``pack_dense`` named "pack, dense mask". An older file's ``efficiency`` is read as padding = 1 - efficiency."""
    rows = []
    for m, r in methods.items():
        r = {k: v for k, v in dict(r).items() if not isinstance(v, (list, dict))}
        if "efficiency" in r and "padding_fraction" not in r and r["efficiency"] is not None:
            r["padding_fraction"] = 1.0 - float(r["efficiency"])
        row = {"method": METHOD_LABELS.get(m, m)}
        row.update({COLUMNS[k]: v for k, v in r.items() if k in COLUMNS})
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df) and TIME in df:
        df.insert(df.columns.get_loc(TIME) + 1, SPEEDUP, df[TIME].max() / df[TIME])
    order = ["method", TIME, SPEEDUP, IDLE, "optimizer steps", "micro-batches", "padding", "fill"]
    return df[[c for c in order if c in df] + [c for c in df if c not in order]]


def load_simulation(run: RunDir) -> tuple[dict, pd.DataFrame]:
    """(config, table) from batching/simulate.json; one row per method with every recorded number."""
    data = read_simulation(run)
    return data.get("config", {}) or {}, simulation_table(data.get("methods", {}) or {})


def cost_of(config: Mapping[str, Any]) -> dict[str, float] | None:
    """The cost model a simulation's config recorded ({per_token, per_token_sq, per_batch}), or None."""
    cost = config.get("cost")
    if isinstance(cost, Mapping) and {"per_token", "per_token_sq"} <= set(cost):
        return {k: float(cost.get(k, 0.0)) for k in ("per_token", "per_token_sq", "per_batch")}
    return None


def cost_text(cost: Mapping[str, float] | None) -> str:
    """Which cost model a simulation priced micro-batches with, in words."""
    if cost is None or CostModel(**cost) == DEFAULT_COST:
        return "the default cost model (a 7B Llama at an effective 150 TFLOP/s)"
    return (
        f"the recorded simulation's cost model: {cost['per_token']:.3g} s per computed token, "
        f"{cost['per_token_sq']:.3g} s per unit of attention (n²)"
        + (f", {cost['per_batch']:.3g} s per micro-batch" if cost.get("per_batch") else "")
    )


def settings_table(config: Mapping[str, Any]) -> pd.DataFrame:
    """A recorded simulation's settings as (setting, value) rows with readable names and values."""
    names = {
        "n_sequences": "sequences",
        "max_len": "max_len (tokens)",
        "world_size": "devices",
        "batch_size": "batch size (naive, sort)",
        "grad_accum": "accumulation steps (naive, sort)",
        "pack_grad_accum": "packs per device per step",
        "algo": "packing algorithm",
        "seed": "seed",
        "overlong": "overlong sequences",
        "sync": "devices wait",
    }
    rows = []
    for key, name in names.items():
        if key in config:
            v = config[key]
            v = SYNC_LABELS.get(v, v) if key == "sync" else v
            rows.append({"setting": name, "value": f"{v:,}" if isinstance(v, int) else str(v)})
    rows.append({"setting": "cost model", "value": cost_text(cost_of(config))})
    return pd.DataFrame(rows, columns=["setting", "value"])


def form_defaults(recorded: Mapping[str, Any], token_meta: Mapping[str, Any], longest: int) -> dict[str, Any]:
    """Starting values of the simulator form: the recorded simulation's settings and cost model where it has
    them, the tokenizer's max_len (else the longest sequence) and the paper-scale defaults of 8 devices, batch 1,
    12 accumulation steps and one pack per device per step otherwise; first-fit decreasing is offered first
    (the recorded algorithm when there is one)."""
    algo = recorded.get("algo")
    return {
        "devices": int(recorded.get("devices") or recorded.get("world_size") or 8),
        "batch_size": int(recorded.get("batch_size") or 1),
        "grad_accum": int(recorded.get("grad_accum") or 12),
        "max_len": int(recorded.get("max_len") or token_meta.get("max_len") or longest),
        "pack_grad_accum": int(recorded.get("pack_grad_accum") or 1),
        "algos": list(dict.fromkeys(a for a in (algo, "ffd", *PACK_ALGOS) if a in PACK_ALGOS)),
        "syncs": list(dict.fromkeys(s for s in (recorded.get("sync"), *SYNC_MODES) if s in SYNC_MODES)),
        "cost": cost_of(recorded),
        "seed": int(recorded.get("seed") or 0),
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
    cost: Mapping[str, float] | None = None,
    seed: int = 0,
) -> tuple[dict, pd.DataFrame]:
    """Simulate every method on ``lengths`` with :func:`longalign.batching.simulate` (priced by ``cost``, a
    recorded cost model, else the default one; plans shuffled with ``seed``); (config, table)."""
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
        seed=int(seed),
        cost=CostModel(**cost) if cost else None,
    )
    return out.get("config", {}), simulation_table(out.get("methods", {}))


def fig_simulation(table: pd.DataFrame, devices: int | None = None) -> go.Figure:
    """Predicted total time per method and, with more than one device, the share of device time spent idle
    (with one device nothing waits, so that panel is left out)."""
    show_idle = IDLE in table and (devices is None or int(devices) > 1)
    fig = make_subplots(
        rows=1,
        cols=2 if show_idle else 1,
        subplot_titles=["Predicted time"] + (["Idle share of device time"] if show_idle else []),
        horizontal_spacing=0.12,
    )
    colors = colors_for([m if m in METHODS else m.split(",")[0] for m in table["method"]])
    c = [colors[m if m in METHODS else m.split(",")[0]] for m in table["method"]]
    fig.add_trace(
        go.Bar(
            x=table["method"],
            y=table[TIME],
            marker_color=c,
            showlegend=False,
            text=[format_seconds(v) for v in table[TIME]],
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{x}: %{text}<extra></extra>",
        ),
        1,
        1,
    )
    if show_idle:
        fig.add_trace(
            go.Bar(
                x=table["method"],
                y=table[IDLE],
                marker_color=c,
                showlegend=False,
                text=[f"{v:.0%}" for v in table[IDLE]],
                textposition="outside",
                cliponaxis=False,
                hovertemplate="%{x}: idle %{text}<extra></extra>",
            ),
            1,
            2,
        )
        fig.update_yaxes(tickformat=".0%", range=[0, 1], row=1, col=2)
    fig.update_yaxes(range=[0, float(table[TIME].max()) * 1.2], title_text="seconds", row=1, col=1)
    fig.update_layout(template=TEMPLATE, height=330, margin=dict(l=50, r=20, t=50, b=30))
    return fig
