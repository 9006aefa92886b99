"""Batching methods side by side, and one micro-batch opened up: mask, tokens, labels, loss weights."""

import common
import streamlit as st

from longalign.batching import LOSS_NORMS
from longalign.views import packing, readers

common.page(
    "Packing",
    "Naive batching pads every sequence to the longest in its batch; sorted batching groups "
    "similar lengths; packing concatenates sequences up to max_len with a block-diagonal attention mask "
    "and weights the loss so every sequence counts the same.",
)
run = common.pick_run()
table = common.token_table(run)
lengths = table["length"].to_numpy()
comparison = common.method_comparison(run, table)
if comparison.empty:
    st.info("The batching folder holds statistics but no plan files; run `longalign batch plan` for this run.")
    st.stop()

common.chart(packing.fig_method_comparison(comparison), key="methods")
st.caption(
    "**Padding**: share of the computed positions that hold no token (a pack computes only its own tokens). "
    "**Fill**: share of the max_len capacity used (what packing optimises: fuller packs, fewer steps). "
    "**Attention cost**: causal attention pairs computed per useful pair; 1.00× wastes none."
    + (
        ""
        if int(comparison["devices"].max()) > 1
        else " Rank idle time is not drawn: with one device nothing waits for a slower device."
    )
)
pct = st.column_config.NumberColumn
shown_columns = [
    "method",
    packing.PADDING,
    packing.FILL,
    packing.ATTENTION,
    *([packing.IDLE] if int(comparison["devices"].max()) > 1 else []),
    "micro-batches",
    "optimizer steps",
    "positions computed",
    "tokens",
    "sequences",
    "algorithm",
    "devices",
    "accumulation steps",
    "max_len",
]
st.dataframe(
    comparison,
    hide_index=True,
    column_order=shown_columns,
    column_config={
        "method": st.column_config.TextColumn(width=80, pinned=True),
        packing.PADDING: pct(format="percent", help=packing.COMPARISON_HELP[packing.PADDING], width=90),
        packing.FILL: pct(format="percent", help=packing.COMPARISON_HELP[packing.FILL], width=90),
        packing.IDLE: pct(format="percent", help=packing.COMPARISON_HELP[packing.IDLE], width=90),
        packing.ATTENTION: pct(format="%.2f×", help=packing.COMPARISON_HELP[packing.ATTENTION], width=125),
        "positions computed": pct(format="localized", help=packing.COMPARISON_HELP["positions computed"]),
        "tokens": pct(format="localized"),
    },
)
with st.expander("Figures as recorded by the batching stage (batching/<method>.json)"):
    st.dataframe(
        packing.recorded_stats(run, comparison["method"]),
        hide_index=True,
        column_config={"meaning": st.column_config.TextColumn(width="large")},
    )

methods = list(comparison["method"])
first_pick = methods.index("pack") if "pack" in methods else 0
st.subheader("Micro-batch fill")
c1, c2 = st.columns([2, 1])
fill_method = c1.selectbox("method", methods, index=first_pick, key="fill_m")
sort_fill = c2.toggle("sort by fill", value=True)
event = common.chart(
    common.guard(packing.fig_method_fill, run, fill_method, lengths, sort=sort_fill),
    key=f"fill_{fill_method}_{sort_fill}",
    on_select="rerun",
    selection_mode="points",
)
clicked = packing.clicked_batch(((event or {}).get("selection") or {}).get("points", []) if event else [])
if clicked is not None and (fill_method, clicked) != st.session_state.get("_fill_clicked"):
    st.session_state["_fill_clicked"] = (fill_method, clicked)
    st.session_state["view_m"] = fill_method
    st.session_state[f"batch_{fill_method}"] = clicked

st.subheader("Inside one micro-batch")
c1, c2, c3 = st.columns(3)
if st.session_state.get("view_m") not in methods:
    st.session_state["view_m"] = methods[first_pick]
method = c1.selectbox("method", methods, key="view_m")
plan = common.guard(readers.load_plan, run, method, lengths)
last = len(plan.batches) - 1
if f"batch_{method}" not in st.session_state:
    st.session_state[f"batch_{method}"] = packing.default_batch(plan.batches, lengths)
batch = int(c2.number_input(f"micro-batch (0–{last})", 0, last, key=f"batch_{method}"))
norm = c3.selectbox(
    "loss normalisation",
    list(LOSS_NORMS),
    key="norm",
    help="sequence: 1/(N_i·M) per target token; token: 1/T; pack: 1/(N_k·K) (the biased baseline)",
)
view = common.guard(packing.batch_view, run, method, batch, norm, table)
left, right = st.columns([5, 6])
with left:
    common.chart(packing.fig_attention_mask(view), key="mask")
with right:
    st.markdown(
        f"**{method} micro-batch {batch}** — {len(view.table)} sequences, "
        f"{int(view.table['length'].sum()):,} tokens, {view.row_len:,} positions per row"
    )
    st.dataframe(
        packing.view_table(view),
        hide_index=True,
        column_config={
            "sequence": st.column_config.NumberColumn(width=75),
            "tokens": st.column_config.NumberColumn(width=60),
            "target tokens": st.column_config.NumberColumn(width=100),
            "share of the step's loss": st.column_config.NumberColumn(
                format="percent", width=150, help="token weight × target tokens (w·N)"
            ),
            "weight per token": st.column_config.NumberColumn(
                format="%.2e", width=120, help="loss weight of each target token of the sequence"
            ),
            "slot": st.column_config.NumberColumn(width="small", help="colour of the sequence in the strip below"),
        },
    )
    st.caption(
        "The share of the step's loss is what a sequence carries of its optimizer step (w·N). With `sequence` "
        "every sequence of a step carries the same share; with `pack` a short answer sharing a pack with a long "
        "one is drowned out."
    )
    note = packing.weights_note(plan)
    if note:
        st.caption(note)
common.chart(packing.fig_token_strip(view), key="strip")

padded = list(comparison.loc[comparison["layout"] == "padded", "method"])
if padded:
    st.subheader("The same sequences in padded batches")
    first = int(view.table["idx"].iloc[0])
    views = common.guard(packing.same_sequence_views, run, padded, first, norm, table)
    for col, v in zip(st.columns(len(padded)), views):
        with col:
            st.markdown(
                f"**{v.method}** batch {v.batch} (holds sequence {first}): "
                f"{int(v.table['length'].sum()):,} tokens in {v.row_len * len(v.seq_rows):,} positions"
            )
            common.chart(packing.fig_attention_mask(v, cells=150), key=f"mask_{v.method}")
            common.chart(packing.fig_token_strip(v, max_cols=200), key=f"strip_{v.method}")
