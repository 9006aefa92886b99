"""Needle in a haystack: retrieval score by context length and depth."""

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
other = common.pick_run("Compare with", state_key="compare_run", exclude=run, allow_none=True)
df = common.guard(readers.load_needle, run)
summary = readers.load_needle_summary(run)
other_df = None
if other is not None:
    try:
        other_df = readers.load_needle(other)
    except readers.MissingArtifact as exc:
        st.warning(f"{other.root.name}: {exc}")

figures = needle.headline(df, other_df)
for col, (label, value, change) in zip(st.columns(len(figures)), figures):
    common.metric_with_change(
        col,
        label,
        value,
        change,
        other.root.name if other is not None else "",
        help=f"{run.root.name} minus {other.root.name}; green when higher" if change is not None else None,
    )
st.text(f"model {summary.get('model', '—')} · judge {summary.get('judge') or 'none'}")
for note in summary.get("notes") or []:
    st.warning(note)
value = st.radio("colour by", needle.values_in(df), horizontal=True, format_func=needle.VALUE_LABELS.get)
grid = common.guard(needle.needle_grid, df, value)
event = common.chart(needle.fig_needle_heatmap(grid, value), key="needle", on_select="rerun", selection_mode="points")
if other_df is not None and value in needle.values_in(other_df):
    st.markdown(f"**{other.root.name}**, the same grid")
    common.chart(needle.fig_needle_heatmap(needle.needle_grid(other_df, value), value), key="needle_other")

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

st.markdown(f"**{needle.score_line(cell)}**")
st.caption(needle.cell_text(cell, summary.get("buffer")))
left, right = st.columns(2)
with left:
    st.markdown("**Prompt around the needle**")
    st.html(needle.window_html(cell.get("window", ""), summary.get("needle")))
with right:
    st.markdown(f"**Answer of {run.root.name}**")
    st.text(cell.get("response", "") or "—")
    if other_df is not None:
        try:
            o = needle.needle_cell(other_df, length, depth)
        except ValueError:
            o = None
        st.markdown(f"**Answer of {other.root.name}**")
        if o is None:
            st.caption("no probe at this cell")
        else:
            st.caption(needle.score_line(o))
            st.text(o.get("response", "") or "—")
