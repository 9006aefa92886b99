"""Batching methods side by side, and one micro-batch opened up: mask, tokens, labels, loss weights."""

import pandas as pd
import streamlit as st

import common
from longalign import report

common.page("Packing", "Naive batching pads every sequence to the longest in its batch; sorted batching groups "
            "similar lengths; packing concatenates sequences up to max_len with a block-diagonal attention mask "
            "and weights the loss so every sequence counts the same.")
run = common.pick_run()
table = common.token_table(run)
comparison = common.method_comparison(run, table)
if comparison.empty:
    st.info("The batching folder holds statistics but no plan files; run `longalign batch plan` for this run.")
    st.stop()

common.chart(report.fig_method_comparison(comparison), key="methods")
pct = st.column_config.NumberColumn(format="percent")
st.dataframe(comparison, hide_index=True, column_config={
    "padding fraction": pct, "fill": pct, "rank idle fraction": pct,
    "attention cost ×": st.column_config.NumberColumn(format="%.2f ×")})
with st.expander("Statistics as recorded by the batching stage"):
    stats = {m: report.load_batch_stats(run, m) for m in comparison["method"]}
    st.dataframe(pd.DataFrame(stats).astype(str), width="stretch")

methods = list(comparison["method"])
st.subheader("Micro-batch fill")
c1, c2 = st.columns([2, 1])
fill_method = c1.selectbox("method", methods, index=methods.index("pack") if "pack" in methods else 0, key="fill_m")
sort_fill = c2.toggle("sort by fill", value=True)
row = comparison.set_index("method").loc[fill_method]
plan = common.guard(report.load_plan, run, fill_method)
bt = report.batch_table(plan, table["length"].clip(upper=int(row["max_len"])).to_numpy(), row["layout"] == "pack",
                        int(row["max_len"]),
                        int(row["world size"]), int(row["grad accum"]))
common.chart(report.fig_batch_fill(bt, row["layout"] == "pack", sort=sort_fill), key="fill")

st.subheader("Inside one micro-batch")
c1, c2, c3 = st.columns(3)
method = c1.selectbox("method", methods, index=methods.index("pack") if "pack" in methods else 0, key="view_m")
plan = common.guard(report.load_plan, run, method)
start = report.default_batch(plan, table["length"].to_numpy())
batch = int(c2.number_input(f"micro-batch (0–{len(plan) - 1})", 0, len(plan) - 1, start, key=f"batch_{method}"))
norm = c3.selectbox("loss normalisation", list(report.LOSS_NORMS), key="norm",
                    help="sequence: 1/(N_i·M) per target token; token: 1/T; pack: 1/(N_k·K) (the biased baseline)")
view = common.guard(report.batch_view, run, method, batch, norm, table)
left, right = st.columns([1, 1])
with left:
    common.chart(report.fig_attention_mask(view), key="mask")
with right:
    st.markdown(f"**{method} micro-batch {batch}** — {len(view.table)} sequences, "
                f"{int(view.table['length'].sum()):,} real tokens, {view.row_len:,} positions per row")
    st.dataframe(view.table.drop(columns=["lang", "task_type"]), hide_index=True, column_config={
        "token weight": st.column_config.NumberColumn(format="%.3e"),
        "sequence weight (w·N)": st.column_config.NumberColumn(format="%.4f")})
    st.caption("w·N is the share of the optimizer step's loss that a sequence carries. With `sequence` every "
               "sequence of a step carries 1/M; with `pack` a short answer sharing a pack with a long one is drowned out.")
common.chart(report.fig_token_strip(view), key="strip")

padded = [m for m in methods if comparison.set_index("method").loc[m, "layout"] == "padded"]
if padded:
    st.subheader("The same sequences in padded batches")
    first = int(view.table["idx"].iloc[0])
    cols = st.columns(len(padded))
    for col, m in zip(cols, padded):
        p = report.load_plan(run, m)
        k = next((j for j, b in enumerate(p) if first in b), 0)
        with col:
            v = common.guard(report.batch_view, run, m, k, norm, table)
            st.markdown(f"**{m}** batch {k} (holds sequence {first}): "
                        f"{int(v.table['length'].sum()):,} real of {v.row_len * len(v.seq_rows):,} positions")
            common.chart(report.fig_attention_mask(v, cells=150), key=f"mask_{m}")
            common.chart(report.fig_token_strip(v, max_cols=200), key=f"strip_{m}")
