"""The Packing page: batching methods side by side, and one micro-batch opened up (mask, tokens, loss weights).

Plans are read as :class:`longalign.batching.Plan` objects (:func:`.readers.load_plan`), so the loss weights
shown are :func:`longalign.batching.token_weights` of that plan (world size and gradient accumulation from
its statistics record) and the rank idle share is :func:`longalign.batching.simulate.step_timeline`; nothing
here re-derives a formula of the batching stage.

Trade-offs:

* Batching figures are recomputed from the plan and the token lengths by the batching stage's own statistics
  (:meth:`longalign.batching.Plan.from_batches`), in the words of :mod:`longalign.batching.figures`: padding
  is the share of computed positions that hold no token (0 for a padding-free pack), fill the share of the
  max_len capacity used, attention cost the causal pairs computed per useful pair. The stage's record is shown
  beside them through :func:`longalign.batching.figures.read_figures`, so a record written in the older
  vocabulary reads the same. The rank idle share prices each micro-batch at its positions computed, ranks
  waiting once per optimizer step.
* Attention masks and token strips are downsampled to at most a few hundred cells per axis before they reach
  the browser: a 64k-token pack has 4.3e9 mask entries; the heatmap shows each cell as the fraction of
  allowed (query, key) pairs in its block, which keeps a 200 x 200 figure exact in area.
* Labels are read for the sequences of the opened micro-batch only (a pack holds tens of sequences).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from longalign import IGNORE_INDEX
from longalign.batching import Plan, token_weights
from longalign.batching.figures import BY_KEY, SETTING_LABELS, causal_pairs, format_figure, label, read_figures
from longalign.batching.simulate import step_timeline
from longalign.rundir import RunDir
from longalign.views.readers import (
    list_batch_methods,
    load_batch_stats,
    load_labels,
    load_plan,
    load_token_table,
    require,
)
from longalign.views.style import PALETTE, TEMPLATE, colors_for

# --------------------------------------------------------------------------------------------- methods
PADDING, FILL, ATTENTION = label("padding_fraction"), label("fill"), label("attention_cost")
IDLE = "rank idle"
COMPARISON_HELP = {
    PADDING: BY_KEY["padding_fraction"].meaning,
    FILL: BY_KEY["fill"].meaning,
    ATTENTION: BY_KEY["attention_cost"].meaning,
    IDLE: "share of device time spent waiting for the slowest device of a step (0 with one device)",
    label("computed_tokens"): BY_KEY["computed_tokens"].meaning,
}


def batch_table(
    batches: Sequence[Sequence[int]],
    lengths: np.ndarray,
    packed: bool,
    max_len: int,
    world_size: int = 1,
    grad_accum: int = 1,
) -> pd.DataFrame:
    """One row per micro-batch: step, rank, sequences, tokens, longest, positions computed (B x longest padded,
    the tokens of a pack), padding positions, capacity (max_len per pack, B x max_len padded), fill, attention
    pairs computed and useful (causal)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    per_step = max(1, world_size * grad_accum)
    rows = []
    for k, b in enumerate(batches):
        ls = lengths[list(b)].astype(np.float64) if len(b) else np.zeros(0)
        real = float(ls.sum())
        longest = float(ls.max()) if len(ls) else 0.0
        useful = float(causal_pairs(ls).sum()) if len(ls) else 0.0
        if packed:
            computed, pairs, capacity = real, useful, float(max_len)
        else:
            computed, pairs = len(ls) * longest, len(ls) * causal_pairs(longest)
            capacity = float(max_len) * len(ls)
        rows.append(
            {
                "micro-batch": k,
                "step": k // per_step,
                "rank": (k % per_step) % max(world_size, 1),
                "sequences": len(ls),
                "tokens": int(real),
                "longest": int(longest),
                "positions computed": int(computed),
                "padding positions": int(computed - real),
                "capacity": int(capacity),
                "fill": real / capacity if capacity else 0.0,
                "attention pairs": pairs,
                "useful attention pairs": useful,
            }
        )
    return pd.DataFrame(rows)


def method_comparison(run: RunDir, lengths: np.ndarray | None = None) -> pd.DataFrame:
    """Per batching method with a plan file: micro-batches, steps, tokens, positions computed, padding, fill,
    attention cost (the batching stage's statistics of the saved plan) and the idle share of data-parallel ranks
    when every micro-batch costs its positions computed."""
    require(run, "batching")
    if lengths is None:
        lengths = load_token_table(run)["length"].to_numpy()
    rows = []
    for m in list_batch_methods(run):
        if not run.batch_plan(m).is_file():
            continue
        stats = load_batch_stats(run, m)
        plan = load_plan(run, m, lengths)
        packed = plan.method == "pack"
        f = plan.stats
        t = batch_table(plan.batches, plan.lengths, packed, plan.max_len, plan.world_size, plan.grad_accum)
        idle = (
            step_timeline(
                t["positions computed"].to_numpy(dtype=np.float64), plan.world_size, plan.grad_accum, sync="step"
            )["idle_fraction"]
            if len(t)
            else 0.0
        )
        rows.append(
            {
                "method": m,
                "layout": "pack" if packed else "padded",
                "algorithm": stats.get("algo") or plan.algo or "—",
                label("n_batches"): f["n_batches"],
                label("n_steps"): f["n_steps"],
                label("n_sequences"): f["n_sequences"],
                "sequences per micro-batch": round(f["n_sequences"] / f["n_batches"], 1) if f["n_batches"] else 0.0,
                label("n_tokens"): f["n_tokens"],
                label("computed_tokens"): f["computed_tokens"],
                PADDING: f["padding_fraction"],
                FILL: f["fill"],
                ATTENTION: f["attention_cost"],
                IDLE: float(idle),
                "devices": plan.world_size,
                "accumulation steps": plan.grad_accum,
                "max_len": plan.max_len,
            }
        )
    return pd.DataFrame(rows)


def recorded_stats(run: RunDir, methods: Sequence[str]) -> pd.DataFrame:
    """The batching stage's records side by side, one column per method, in the words of
    :mod:`longalign.batching.figures` (values as text; a record in the older vocabulary converted), then the
    settings that produced them, and a last column saying what each figure means."""
    records = {m: read_figures(load_batch_stats(run, m)) for m in methods}
    rows = []
    for f in BY_KEY.values():
        if any(f.key in r for r in records.values()):
            rows.append(
                {"figure": f.label, **{m: format_figure(f.key, r.get(f.key)) for m, r in records.items()}}
                | {"meaning": f.meaning}
            )
    for key, name in SETTING_LABELS.items():
        if key != "method" and any(r.get(key) is not None for r in records.values()):
            rows.append(
                {"figure": name, **{m: _setting(r.get(key)) for m, r in records.items()}} | {"meaning": "setting"}
            )
    return pd.DataFrame(rows, columns=["figure", *methods, "meaning"])


def _setting(value) -> str:
    if value is None:
        return "—"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def weights_note(plan: Plan) -> str | None:
    """Why two loss normalisations give the same weights for this plan, when they do."""
    if plan.method == "pack" and plan.micro_per_step == 1:
        return (
            "Each optimizer step of this plan holds one pack (one device, no accumulation), so `pack` and `token` "
            "normalisation give the same weights: both divide by the step's target tokens. They differ when a "
            "step holds several packs."
        )
    return None


def default_batch(batches: Sequence[Sequence[int]], lengths: np.ndarray) -> int:
    """A telling micro-batch to open first: the one with the most sequences among those whose longest
    sequence holds 30-85% of its tokens (long and short mixed), else the one with the most sequences."""
    if not batches:
        return 0
    lengths = np.asarray(lengths)

    def score(k: int) -> tuple:
        ls = lengths[list(batches[k])]
        share = ls.max() / max(ls.sum(), 1) if len(ls) else 0
        return (0.3 <= share <= 0.85 and len(ls) > 2, len(ls), -k)

    return max(range(len(batches)), key=score)


def batch_holding(batches: Sequence[Sequence[int]], idx: int) -> int:
    """The first micro-batch that holds sequence ``idx`` (0 when none does)."""
    return next((j for j, b in enumerate(batches) if idx in b), 0)


def fig_method_comparison(table: pd.DataFrame) -> go.Figure:
    """Side-by-side bars: padding, fill, attention cost and (with several devices) rank idle share per method."""
    metrics = [
        (PADDING, "Padding (computed positions with no token)", ".1%"),
        (FILL, "Fill (share of max_len capacity used)", ".1%"),
        (ATTENTION, "Attention cost (pairs computed per useful pair)", ".2f"),
    ]
    if "devices" not in table or int(table["devices"].max()) > 1:
        metrics.append((IDLE, "Rank idle (share of device time waiting)", ".1%"))
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[m[1] for m in metrics], horizontal_spacing=0.07)
    colors = colors_for(list(table["method"]))
    for c, (col, _, fmt) in enumerate(metrics, 1):
        fig.add_trace(
            go.Bar(
                x=table["method"],
                y=table[col],
                marker_color=[colors[m] for m in table["method"]],
                text=[format(v, fmt) + ("×" if not fmt.endswith("%") else "") for v in table[col]],
                textposition="outside",
                showlegend=False,
                cliponaxis=False,
                hovertemplate="%{x}: %{text}<extra>" + col + "</extra>",
            ),
            1,
            c,
        )
        if fmt.endswith("%"):
            fig.update_yaxes(tickformat=".0%", range=[0, max(1.0, float(table[col].max()) * 1.15)], row=1, col=c)
        else:
            fig.update_yaxes(range=[0, float(table[col].max()) * 1.2 + 0.01], ticksuffix="×", row=1, col=c)
    fig.update_layout(template=TEMPLATE, height=330, margin=dict(l=40, r=20, t=60, b=30))
    fig.update_annotations(font_size=12)
    return fig


def fig_batch_fill(t: pd.DataFrame, packed: bool, sort: bool = False) -> go.Figure:
    """Fill of each micro-batch (tokens / max_len capacity), coloured by how many sequences it holds. The x axis
    names each micro-batch by its number (sorted by fill when ``sort``), so a clicked bar opens that one; its
    number is the point's ``customdata[0]``."""
    t = t.sort_values(["fill", "micro-batch"], ascending=[False, True]) if sort else t
    x = [str(k) for k in t["micro-batch"]]
    fig = go.Figure(
        go.Bar(
            x=x,
            y=t["fill"],
            marker=dict(
                color=t["sequences"],
                colorscale="Viridis",
                showscale=True,
                colorbar=dict(title="sequences", thickness=12),
            ),
            customdata=np.c_[t["micro-batch"], t["sequences"], t["tokens"], t["padding positions"]],
            hovertemplate="micro-batch %{customdata[0]}<br>%{customdata[1]} sequences<br>%{customdata[2]:,} tokens"
            "<br>%{customdata[3]:,} padding positions<br>fill %{y:.1%}<extra>click to open</extra>",
        )
    )
    title = f"{'Pack' if packed else 'Batch'} fill (share of max_len used), mean {t['fill'].mean():.1%}"
    fig.update_layout(
        template=TEMPLATE,
        height=280,
        bargap=0.05,
        yaxis=dict(tickformat=".0%", range=[0, 1.02], title="fill"),
        xaxis=dict(
            type="category",
            categoryorder="array",
            categoryarray=x,
            title="micro-batch, sorted by fill (click a bar to open it)" if sort else "micro-batch (click to open)",
        ),
        margin=dict(l=50, r=20, t=30, b=40),
        title=dict(text=title, font_size=14),
    )
    return fig


def clicked_batch(points: Sequence[dict]) -> int | None:
    """The micro-batch number of the first clicked bar of :func:`fig_batch_fill` (None when nothing is)."""
    for p in points or ():
        data = p.get("customdata")
        try:
            return int(data[0]) if data is not None else int(str(p["x"]))
        except (KeyError, TypeError, ValueError, IndexError):
            continue
    return None


def fig_method_fill(run: RunDir, method: str, lengths: np.ndarray, sort: bool = False) -> go.Figure:
    """:func:`fig_batch_fill` of ``method``'s saved plan over the run's token ``lengths``."""
    plan = load_plan(run, method, lengths)
    t = batch_table(plan.batches, plan.lengths, plan.method == "pack", plan.max_len, plan.world_size, plan.grad_accum)
    return fig_batch_fill(t, plan.method == "pack", sort=sort)


# --------------------------------------------------------------------------------------------- one micro-batch
@dataclass
class BatchView:
    """One micro-batch ready to draw: its rows (one per padded sequence, or a single pack row) and, per row,
    the sequences laid out left to right with their labels and per-token loss weights."""

    method: str
    batch: int
    packed: bool
    row_len: int  # columns of the drawn grid (pack length, or longest sequence)
    seq_rows: list[list[int]]  # per row: row indices into tokens/ of its sequences
    labels: dict[int, np.ndarray]
    weights: dict[int, float]  # per sequence: weight of each of its target tokens
    table: pd.DataFrame  # one row per sequence

    def grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sequence slot, target mask, token weight) arrays of shape [rows, row_len]; slot -1 = padding,
        weight NaN on padding and 0 where there is no loss."""
        n = len(self.seq_rows)
        slot = np.full((n, self.row_len), -1, dtype=np.int64)
        target = np.zeros((n, self.row_len), dtype=np.float64)
        weight = np.full((n, self.row_len), np.nan)
        order = {i: s for s, i in enumerate(i for row in self.seq_rows for i in row)}
        for r, row in enumerate(self.seq_rows):
            pos = 0
            for i in row:
                lab = self.labels[i]
                L = len(lab)
                slot[r, pos : pos + L] = order[i]
                t = (lab != IGNORE_INDEX).astype(np.float64)
                target[r, pos : pos + L] = t
                weight[r, pos : pos + L] = t * self.weights.get(i, 0.0)
                pos += L
        return slot, target, weight


def batch_view(
    run: RunDir, method: str, batch: int, loss_norm: str = "sequence", token_table: pd.DataFrame | None = None
) -> BatchView:
    """Everything needed to draw micro-batch ``batch`` of ``method``: sequences, labels and the loss weights
    :func:`longalign.batching.token_weights` gives the saved plan (``n_target`` from the token table)."""
    tt = token_table if token_table is not None else load_token_table(run)
    plan = load_plan(run, method, tt["length"].to_numpy())
    if not 0 <= batch < len(plan.batches):
        raise ValueError(f"batch={batch} is out of range; {method} has micro-batches 0..{len(plan.batches) - 1}")
    w = token_weights(plan, tt["n_target"].to_numpy(), loss_norm)
    members = list(plan.batches[batch])
    labels = {i: lab[: plan.max_len] for i, lab in zip(members, load_labels(run, members))}
    packed = plan.method == "pack"
    rows = [members] if packed else [[i] for i in members]
    row_len = max(sum(len(labels[i]) for i in row) for row in rows) if rows else 0
    tab = tt.loc[members, ["idx", "length", "n_target", "source", "lang", "task_type"]].copy()
    tab["length"] = [len(labels[i]) for i in members]
    tab.insert(0, "slot", np.arange(len(members)))
    tab["token weight"] = [w[i] for i in members]
    tab["step loss share"] = tab["token weight"] * tab["n_target"]
    return BatchView(
        method=method,
        batch=batch,
        packed=packed,
        row_len=max(row_len, 1),
        seq_rows=rows,
        labels=labels,
        weights={i: float(w[i]) for i in members},
        table=tab.reset_index(drop=True),
    )


VIEW_COLUMNS = {  # the key columns first, so they show in a half-width column
    "idx": "sequence",
    "length": "tokens",
    "n_target": "target tokens",
    "step loss share": "share of the step's loss",
    "token weight": "weight per token",
    "slot": "slot",
    "source": "source",
}


def view_table(view: BatchView) -> pd.DataFrame:
    """The opened micro-batch's sequences as the page shows them (friendly column names)."""
    return view.table[list(VIEW_COLUMNS)].rename(columns=VIEW_COLUMNS)


def same_sequence_views(
    run: RunDir, methods: Sequence[str], idx: int, loss_norm: str, token_table: pd.DataFrame
) -> list[BatchView]:
    """For each of ``methods``: the view of its first micro-batch that holds sequence ``idx``."""
    lengths = token_table["length"].to_numpy()
    return [
        batch_view(run, m, batch_holding(load_plan(run, m, lengths).batches, idx), loss_norm, token_table)
        for m in methods
    ]


def downsample_cols(a: np.ndarray, cols: int, how: str) -> np.ndarray:
    """Reduce the last axis to at most ``cols`` bins: 'first' keeps each bin's first value, 'mean' averages
    (ignoring NaN; all-NaN bins stay NaN)."""
    n = a.shape[-1]
    if n <= cols:
        return a
    edges = np.linspace(0, n, cols + 1).astype(int)
    if how == "first":
        return a[..., edges[:-1]]
    out = np.full(a.shape[:-1] + (cols,), np.nan)
    for j in range(cols):
        seg = a[..., edges[j] : edges[j + 1]]
        with np.errstate(invalid="ignore"):
            valid = ~np.isnan(seg)
            cnt = valid.sum(axis=-1)
            s = np.where(valid, seg, 0).sum(axis=-1)
            out[..., j] = np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)
    return out


def _slot_colorscale(n: int) -> list:
    """Discrete colours for slots 0..n-1 and light grey for padding (-1)."""
    colors = ["#E8E8E8"] + [PALETTE[i % len(PALETTE)] for i in range(n)]
    k = len(colors)
    scale = []
    for i, c in enumerate(colors):
        scale += [[i / k, c], [(i + 1) / k, c]]
    return scale


def fig_token_strip(view: BatchView, max_cols: int = 400) -> go.Figure:
    """Token strip: which sequence each position belongs to (grey = padding), where the loss is taken
    (label != -100) and the loss weight of each token, for every row of the micro-batch."""
    slot, target, weight = view.grid()
    n_rows = slot.shape[0]
    with np.errstate(invalid="ignore"):
        weight_t = np.where(target > 0, weight, np.nan)
    s_slot = downsample_cols(slot, max_cols, "first")
    s_target = downsample_cols(np.where(slot < 0, np.nan, target), max_cols, "mean")
    s_weight = downsample_cols(weight_t, max_cols, "mean")
    width = s_slot.shape[-1]
    step = view.row_len / width
    x = (np.arange(width) * step).round().astype(int)
    ylab = [f"row {r}" for r in range(n_rows)] if n_rows > 1 else ["pack"]
    n_seq = sum(len(r) for r in view.seq_rows)
    fig = make_subplots(
        rows=3,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.09,
        subplot_titles=[
            "sequence (grey = padding)",
            "loss mask (share of positions with a label)",
            "loss weight per target token",
        ],
    )
    fig.add_trace(
        go.Heatmap(
            z=s_slot,
            x=x,
            y=ylab,
            colorscale=_slot_colorscale(n_seq),
            zmin=-1.5,
            zmax=n_seq - 0.5,
            showscale=False,
            hovertemplate="position %{x}<br>slot %{z}<extra></extra>",
        ),
        1,
        1,
    )
    fig.add_trace(
        go.Heatmap(
            z=s_target,
            x=x,
            y=ylab,
            colorscale=[[0, "#F2F2F2"], [1, "#2F6B9A"]],
            zmin=0,
            zmax=1,
            showscale=False,
            hovertemplate="position %{x}<br>labelled %{z:.0%}<extra></extra>",
        ),
        2,
        1,
    )
    wmax = float(np.nanmax(s_weight)) if np.isfinite(s_weight).any() else 1.0
    fig.add_trace(
        go.Heatmap(
            z=s_weight,
            x=x,
            y=ylab,
            colorscale="Oranges",
            zmin=0,
            zmax=wmax,
            colorbar=dict(title="w", thickness=10, len=0.3, y=0.12, exponentformat="e"),
            hovertemplate="position %{x}<br>weight %{z:.3e}<extra></extra>",
        ),
        3,
        1,
    )
    row_h = 22 if n_rows > 1 else 34
    fig.update_layout(template=TEMPLATE, height=160 + 3 * row_h * n_rows + 60, margin=dict(l=60, r=20, t=40, b=40))
    fig.update_xaxes(title_text="token position", row=3, col=1)
    fig.update_annotations(font_size=12)
    return fig


def attention_mask_grid(
    row_lens: Sequence[Sequence[int]], cells: int = 200, packed: bool = True, supersample: int = 3
) -> tuple[np.ndarray, int]:
    """Downsampled attention mask of a micro-batch; returns (grid, total positions).

    The micro-batch is drawn as one square: a pack is a single row of length sum(l) whose mask is
    block-diagonal and causal; a padded batch is drawn as its B rows one after another, each a block of
    the longest length whose causal part covers only the row's real tokens (the rest of each block is padding
    the kernel still computes). Cell value = share of (query, key) pairs in the cell that are attended;
    -1 marks the computed-but-masked padding area of padded rows (shown greyed). ``row_lens`` is one list of
    sequence lengths per row."""
    if packed:
        lens = [int(n) for row in row_lens for n in row]
        block = int(sum(lens))
        seq_id = np.repeat(np.arange(len(lens)), lens)
        pos_ok = np.ones(block, dtype=bool)
        total = block
    else:
        longest = max(int(sum(r)) for r in row_lens)
        seq_id = np.repeat(np.arange(len(row_lens)), longest)
        pos_ok = np.concatenate([np.arange(longest) < int(sum(r)) for r in row_lens])
        total = longest * len(row_lens)
    n = min(cells, total)
    m = n * supersample
    p = np.minimum((np.arange(m) + 0.5) * total / m, total - 1).astype(np.int64)
    q, k = p[:, None], p[None, :]
    same = seq_id[q] == seq_id[k]
    allowed = same & (k <= q) & pos_ok[q] & pos_ok[k]
    grid = allowed.reshape(n, supersample, n, supersample).mean(axis=(1, 3))
    if not packed:
        wasted = same & ~(pos_ok[q] & pos_ok[k])
        w = wasted.reshape(n, supersample, n, supersample).mean(axis=(1, 3))
        grid = np.where((grid == 0) & (w > 0.5), -1.0, grid)
    return grid, total


def fig_attention_mask(view: BatchView, cells: int = 200) -> go.Figure:
    """Heatmap of the micro-batch's attention mask (see :func:`attention_mask_grid`)."""
    row_lens = [[len(view.labels[i]) for i in row] for row in view.seq_rows]
    grid, total = attention_mask_grid(row_lens, cells=cells, packed=view.packed)
    axis = np.linspace(0, total, grid.shape[0], endpoint=False).round().astype(int)
    scale = [[0.0, "#D9D9D9"], [0.5, "#D9D9D9"], [0.5, "#FFFFFF"], [0.52, "#DCE9F5"], [1.0, "#1F4E79"]]
    fig = go.Figure(
        go.Heatmap(
            z=grid,
            x=axis,
            y=axis,
            colorscale=scale,
            zmin=-1,
            zmax=1,
            showscale=False,
            hovertemplate="query %{y}<br>key %{x}<br>attended %{z:.0%}<extra></extra>",
        )
    )
    useful = float(sum(causal_pairs(n) for row in row_lens for n in row))
    if view.packed:
        computed = useful
        title = (
            f"Block-diagonal causal mask of pack {view.batch}: {sum(len(r) for r in row_lens)} sequences, "
            f"{total:,} tokens"
        )
    else:
        longest = max(sum(r) for r in row_lens)
        computed = len(row_lens) * causal_pairs(longest)
        title = f"Causal masks of batch {view.batch}: {len(row_lens)} rows padded to {longest:,} (grey = padding)"
    cost = f"{format_figure('attention_cost', computed / useful if useful else 1.0)} the useful pairs"
    fig.update_layout(
        template=TEMPLATE,
        height=460,
        width=480,
        title=dict(text=f"{title}<br><sup>attention cost {cost}</sup>", font_size=13),
        xaxis=dict(title="key position", showgrid=False),
        margin=dict(l=60, r=20, t=70, b=50),
        yaxis=dict(title="query position", autorange="reversed", scaleanchor="x", showgrid=False),
    )
    return fig
