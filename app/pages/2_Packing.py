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
pct = st.column_config.NumberColumn(format="percent")
st.dataframe(
    comparison,
    hide_index=True,
    column_config={
        "padding fraction": pct,
        "fill": pct,
        "rank idle fraction": pct,
        "attention cost ×": st.column_config.NumberColumn(format="%.2f ×"),
    },
)
with st.expander("Statistics as recorded by the batching stage"):
    st.dataframe(packing.recorded_stats(run, comparison["method"]), width="stretch")

methods = list(comparison["method"])
first_pick = methods.index("pack") if "pack" in methods else 0
st.subheader("Micro-batch fill")
c1, c2 = st.columns([2, 1])
fill_method = c1.selectbox("method", methods, index=first_pick, key="fill_m")
sort_fill = c2.toggle("sort by fill", value=True)
common.chart(common.guard(packing.fig_method_fill, run, fill_method, lengths, sort=sort_fill), key="fill")

st.subheader("Inside one micro-batch")
c1, c2, c3 = st.columns(3)
method = c1.selectbox("method", methods, index=first_pick, key="view_m")
plan = common.guard(readers.load_plan, run, method, lengths)
start = packing.default_batch(plan.batches, lengths)
last = len(plan.batches) - 1
batch = int(c2.number_input(f"micro-batch (0–{last})", 0, last, start, key=f"batch_{method}"))
norm = c3.selectbox(
    "loss normalisation",
    list(LOSS_NORMS),
    key="norm",
    help="sequence: 1/(N_i·M) per target token; token: 1/T; pack: 1/(N_k·K) (the biased baseline)",
)
view = common.guard(packing.batch_view, run, method, batch, norm, table)
left, right = st.columns([1, 1])
with left:
    common.chart(packing.fig_attention_mask(view), key="mask")
with right:
    st.markdown(
        f"**{method} micro-batch {batch}** — {len(view.table)} sequences, "
        f"{int(view.table['length'].sum()):,} real tokens, {view.row_len:,} positions per row"
    )
    st.dataframe(
        view.table.drop(columns=["lang", "task_type"]),
        hide_index=True,
        column_config={
            "token weight": st.column_config.NumberColumn(format="%.3e"),
            "sequence weight (w·N)": st.column_config.NumberColumn(format="%.4f"),
        },
    )
    st.caption(
        "w·N is the share of the optimizer step's loss that a sequence carries. With `sequence` every "
        "sequence of a step carries 1/M; with `pack` a short answer sharing a pack with a long one is "
        "drowned out."
    )
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
                f"{int(v.table['length'].sum()):,} real of {v.row_len * len(v.seq_rows):,} positions"
            )
            common.chart(packing.fig_attention_mask(v, cells=150), key=f"mask_{v.method}")
            common.chart(packing.fig_token_strip(v, max_cols=200), key=f"strip_{v.method}")
