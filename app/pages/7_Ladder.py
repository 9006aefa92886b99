"""Ladder: synthetic long-context tasks by length, the effective context length, and a second run's difference."""

import common
import streamlit as st

from longalign.views import ladder, readers

common.page(
    "Ladder",
    "Synthetic long-context tasks (RULER's definitions: needles, variable tracking, word counts) at growing "
    "lengths, scored without a judge: the share of the expected values found in the answer, × 100, with 95% "
    "intervals. The effective length is the longest length up to which the average of the tasks stays above the "
    "threshold.",
)
run = common.pick_run()
other = common.pick_run("Compare with", state_key="compare_run", exclude=run, allow_none=True)
this, that, warnings = common.guard(ladder.load_ladders, run, other)
for w in warnings:
    st.warning(w)
diff = ladder.difference_cells(this, that) if that is not None else None

for col, (label, value, change, help_text) in zip(st.columns(4), ladder.headline(this, diff)):
    common.metric_with_change(
        col, label, value, change, that.name if that is not None else "", help=help_text, digits=1
    )
st.text(ladder.model_line(this))
for note in this.notes:
    st.caption(note)

event = common.chart(ladder.fig_ladder(this), key="ladder", on_select="rerun", selection_mode="points")
if len(this.tasks) == 1 and len(this.lengths) == 1:
    st.caption("One task at one length: a single cell, so the heatmap shows no trend.")

if that is not None:
    st.subheader(f"{this.name} minus {that.name}")
    st.caption(
        "Samples both runs answered (same seed and settings give the same prompts) are compared pair by pair; "
        "an interval that contains zero means no resolved difference. Coloured where the interval excludes zero: "
        f"green where {this.name} scored higher, red where lower."
    )
    if diff.empty:
        st.info(f"{that.name} has no task at a length this run has, so there is nothing to compare.")
    else:
        st.dataframe(
            ladder.style_difference_table(ladder.difference_table(diff, this.name, that.name), diff),
            hide_index=True,
            column_config={
                "length": st.column_config.TextColumn(width="small", pinned=True),
                "95% interval": st.column_config.TextColumn(width="medium"),
                "verdict": st.column_config.TextColumn(width="medium"),
            },
        )
        note = ladder.difference_note(diff)
        if note:
            st.caption(note)
        else:
            common.chart(ladder.fig_difference(diff, this, that), key="ladder_diff")

st.subheader("A sample")
st.caption("Click a cell of the heatmap (or pick it below) to read a sample's prompt, the answer and its score.")
points = (event or {}).get("selection", {}).get("points", []) if event else []
clicked = ladder.clicked_cell(points, this)
if clicked and clicked != st.session_state.get("_ladder_clicked"):  # a newly clicked cell
    st.session_state["_ladder_clicked"] = clicked
    st.session_state["ladder_task"], st.session_state["ladder_len"] = clicked
c1, c2, c3 = st.columns([3, 2, 1])
task = c1.selectbox("task", this.tasks, key="ladder_task", format_func=ladder.task_label)
length = c2.selectbox("length", this.lengths, key="ladder_len", format_func=lambda x: f"{x:,} tokens")
samples = ladder.cell_samples(this, task, length)
if samples.empty:
    st.info(f"No sample of {ladder.task_label(task)} at {length:,} tokens in {this.name}.")
    st.stop()
index = c3.selectbox("sample", samples["sample"].tolist(), key="ladder_sample")
st.dataframe(
    samples,
    hide_index=True,
    column_config={
        "sample": st.column_config.NumberColumn(width="small"),
        "depth": st.column_config.TextColumn(width="small"),
        "score": st.column_config.NumberColumn(format="%.2f", width="small"),
        "answer": st.column_config.TextColumn(width="large"),
    },
)
rec = common.guard(ladder.sample, this, task, length, index)
st.markdown(f"**{ladder.score_line(rec)}**")
st.caption(ladder.sample_caption(rec))
left, right = st.columns([3, 2])
prompt = readers.load_ruler_prompt(run, rec["key"], rec.get("setup"))
with left:
    st.markdown("**Prompt** (the user turn, as the model read it)")
    if prompt is None:
        st.caption("prompts.jsonl does not hold this sample's prompt.")
    else:
        body, marked = ladder.prompt_html(
            prompt.get("user", ""), prompt.get("answer_prefix", ""), ladder.marks_for(rec)
        )
        st.caption(f"expected values marked yellow, the keys the question names blue ({marked:,} marks)")
        st.html(body)
with right:
    st.markdown(f"**Answer of {this.name}**")
    st.html(
        ladder.answer_html(rec.get("output", ""), rec.get("expected") or [], (prompt or {}).get("answer_prefix", ""))
    )
    st.dataframe(ladder.expected_table(rec), hide_index=True)
    if that is not None:
        st.markdown(f"**Answer of {that.name}**")
        try:
            o = ladder.sample(that, task, length, index)
        except ValueError:
            st.caption(f"{that.name} has no answer to this sample")
        else:
            st.caption(ladder.score_line(o))
            theirs = readers.load_ruler_prompt(other, o["key"], o.get("setup")) or {}
            st.html(ladder.answer_html(o.get("output", ""), o.get("expected") or [], theirs.get("answer_prefix", "")))
