"""Needle in a haystack: retrieval score by context length and needle depth."""

import common
import streamlit as st

from longalign.views import needle, readers

common.page(
    "Needle",
    "A fact (the needle) is placed at a depth of a long filler text; the model is asked "
    "for it and the answer is judged 1–10 and scored by key-phrase recall, word for word and after "
    "normalising case, punctuation and inflection.",
)
run = common.pick_run()
df = common.guard(readers.load_needle, run)
summary = readers.load_needle_summary(run)

figures = needle.headline(df)
for col, (label, value) in zip(st.columns(len(figures)), figures):
    col.metric(label, value)
st.caption(f"model `{summary.get('model', '—')}` · judge `{summary.get('judge', '—')}`")
value = st.radio("colour by", needle.values_in(df), horizontal=True, format_func=needle.VALUE_LABELS.get)
grid = common.guard(needle.needle_grid, df, value)
event = common.chart(needle.fig_needle_heatmap(grid, value), key="needle", on_select="rerun", selection_mode="points")

st.caption("Click a cell (or pick it below) to read the prompt around the needle and the model's answer.")
points = (event or {}).get("selection", {}).get("points", []) if event else []
clicked = needle.clicked_cell(points)
if clicked and clicked != st.session_state.get("_needle_clicked"):  # a newly clicked cell
    st.session_state["_needle_clicked"] = clicked
    st.session_state["needle_len"], st.session_state["needle_depth"] = clicked
c1, c2 = st.columns(2)
length = c1.selectbox(
    "context length", [int(x) for x in grid.columns], key="needle_len", format_func=lambda v: f"{v:,} tokens"
)
depth = c2.selectbox("depth", [float(x) for x in grid.index], key="needle_depth", format_func=lambda v: f"{v:g}%")
cell = common.guard(needle.needle_cell, df, length, depth)

st.markdown(
    f"**Judge score {cell.get('judge_score', '—')} · recall {cell.get('recall', '—')} · normalised recall "
    f"{cell.get('recall_norm', '—')}** — needle at "
    f"token {cell.get('needle_token_pos', '—')} of {cell.get('prompt_tokens', '—')}"
)
left, right = st.columns(2)
with left:
    st.markdown("**Prompt around the needle**")
    marked = needle.highlight(cell.get("window", ""), summary.get("needle"))
    st.markdown(
        f"<div style='font-size:0.9em;line-height:1.5;background:#fafafa;padding:0.8em;border-radius:6px'>"
        f"…{marked}…</div>",
        unsafe_allow_html=True,
    )
with right:
    st.markdown("**Answer**")
    st.info(cell.get("response", "") or "—")
