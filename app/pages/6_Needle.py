"""Needle in a haystack: retrieval score by context length and needle depth."""

import streamlit as st

import common
from longalign import report

common.page("Needle", "A fact (the needle) is placed at a depth of a long filler text; the model is asked "
            "for it and the answer is judged 1–10.")
run = common.pick_run()
df = common.guard(report.load_needle, run)
summary = report.load_needle_summary(run)

cols = st.columns(3)
cols[0].metric("mean judge score", f"{df['judge_score'].mean():.2f}" if "judge_score" in df else "—")
cols[1].metric("mean recall", f"{df['recall'].mean():.2f}" if "recall" in df else "—")
cols[2].metric("probes", f"{len(df)}")
st.caption(f"model `{summary.get('model', '—')}` · judge `{summary.get('judge', '—')}`")
value = st.radio("colour by", [c for c in ("judge_score", "recall") if c in df], horizontal=True,
                 format_func={"judge_score": "judge score (1–10)", "recall": "recall (0–1)"}.get)
grid = common.guard(report.needle_grid, df, value)
event = common.chart(report.fig_needle_heatmap(grid, value), key="needle", on_select="rerun",
                     selection_mode="points")

st.caption("Click a cell (or pick it below) to read the prompt around the needle and the model's answer.")
lengths = [int(x) for x in grid.columns]
depths = [float(x) for x in grid.index]
points = (event or {}).get("selection", {}).get("points", []) if event else []
clicked = (points[0].get("x"), points[0].get("y")) if points else None
if clicked and clicked != st.session_state.get("_needle_clicked"):  # a newly clicked cell
    st.session_state["_needle_clicked"] = clicked
    p = points[0]
    try:
        st.session_state["needle_len"] = int(str(p["x"]).replace(",", ""))
        st.session_state["needle_depth"] = float(str(p["y"]).rstrip("%"))
    except (KeyError, ValueError):
        pass
c1, c2 = st.columns(2)
length = c1.selectbox("context length", lengths, key="needle_len", format_func=lambda v: f"{v:,} tokens")
depth = c2.selectbox("depth", depths, key="needle_depth", format_func=lambda v: f"{v:g}%")
cell = common.guard(report.needle_cell, df, length, depth)

st.markdown(f"**Judge score {cell.get('judge_score', '—')} · recall {cell.get('recall', '—')}** — needle at token "
            f"{cell.get('needle_token_pos', '—')} of {cell.get('prompt_tokens', '—')}")
left, right = st.columns(2)
with left:
    st.markdown("**Prompt around the needle**")
    st.markdown(f"<div style='font-size:0.9em;line-height:1.5;background:#fafafa;padding:0.8em;border-radius:6px'>"
                f"…{report.highlight(cell.get('window', ''), summary.get('needle'))}…</div>", unsafe_allow_html=True)
with right:
    st.markdown("**Answer**")
    st.info(cell.get("response", "") or "—")
