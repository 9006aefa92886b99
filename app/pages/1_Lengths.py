"""Token-length distributions of the tokenized training data, by source, language and task type."""

import streamlit as st

import common
from longalign import report

common.page("Lengths", "How long the training sequences are (tokens of the target tokenizer), split like the "
            "paper's length figure: 0–8k and 8k–64k.")
run = common.pick_run()
table = common.token_table(run)
meta = report.load_token_meta(run)

c = st.columns(5)
c[0].metric("sequences", f"{len(table):,}")
c[1].metric("tokens", report.format_count(table["length"].sum()))
c[2].metric("target tokens", report.format_count(table["n_target"].sum()))
c[3].metric("long / short", f"{(table.kind == 'long').sum():,} / {(table.kind == 'short').sum():,}")
c[4].metric("truncated", f"{meta.get('n_truncated', '—')}", help=f"max_len {meta.get('max_len', '—')}, "
            f"truncation {meta.get('truncation', '—')}")

left, mid, right = st.columns([3, 1, 1])
by = left.radio("Group by", list(report.LENGTH_GROUPS), horizontal=True,
                format_func={"source": "source", "lang": "language", "task_type": "task type",
                             "kind": "long vs short"}.get)
log_x = mid.toggle("log x axis")
split = right.number_input("split at (tokens)", min_value=256, max_value=262144, value=8192, step=1024)
common.chart(common.guard(report.fig_length_distribution, table, by, log_x=log_x, split=int(split)), key="lengths")

st.subheader("Long vs short data")
st.caption("Short = chat data (task type `chat` or a short-data source such as ShareGPT); long = the generated "
           "long-document instructions.")
common.chart(report.fig_mix(table), key="mix")
st.dataframe(report.mix_summary(table), hide_index=True, column_config={
    k: st.column_config.NumberColumn(format="percent") for k in ("sequence share", "token share", "target share")})

st.subheader(f"Per {by}")
st.dataframe(report.length_summary(table, by), hide_index=True,
             column_config={"token share": st.column_config.NumberColumn(format="percent")})
