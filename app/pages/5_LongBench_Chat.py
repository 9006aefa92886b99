"""LongBench-Chat: judged answers per question, for one run or two side by side."""

import common
import streamlit as st

from longalign.views import longbench_chat as lbc
from longalign.views import readers

common.page(
    "LongBench-Chat",
    "Each answer is scored 1–10 by the judge against the expert reference "
    "(mean over judge runs); the benchmark figure is the mean over questions.",
)
run = common.pick_run()
other = common.pick_run("Compare with", state_key="compare_run", exclude=run, allow_none=True)
frames, warnings = common.guard(lbc.load_frames, run, other)
for w in warnings:
    st.warning(w)
name = run.root.name
df = frames[name]
other_name = other.root.name if other is not None and other.root.name in frames else None

summary = readers.load_longbench_chat_summary(run)
by_lang = lbc.longbench_chat_by_lang(frames)
cols = st.columns(4)
mean = lbc.mean_score(df)
if other_name:
    other_mean = lbc.mean_score(frames[other_name])
    common.metric_with_change(
        cols[0],
        f"mean score of {name}",
        f"{mean:.2f}" if mean == mean else "—",
        mean - other_mean if mean == mean and other_mean == other_mean else None,
        other_name,
        help=f"{name} minus {other_name}: green when {name} scored higher",
    )
    cols[1].metric(f"mean score of {other_name}", f"{other_mean:.2f}" if other_mean == other_mean else "—")
else:
    cols[0].metric("mean score", f"{mean:.2f}" if mean == mean else "—")
unscored = int(df["score"].isna().sum())
cols[2].metric("questions", f"{len(df)}", help=f"{unscored} without a score" if unscored else None)
cols[3].metric("judge cost", f"${summary['cost']:.2f}" if isinstance(summary.get("cost"), (int, float)) else "—")
if unscored:
    st.caption(f"{unscored} of {len(df)} questions have no score (the judge's reply held no rating).")
st.text(lbc.caption(df, summary))
st.dataframe(
    by_lang,
    hide_index=True,
    column_config={
        c: st.column_config.NumberColumn(format="%.2f") for c in by_lang.columns if c not in ("run", "n", "unscored")
    },
)
common.chart(lbc.fig_score_distribution(frames), key="dist")

st.subheader("Questions")
f1, f2, f3 = st.columns([2, 2, 1])
langs = sorted(df["lang"].dropna().unique())
picked = f1.multiselect("language", langs, default=langs)
lo, hi = f2.slider(f"score of {name}", 1.0, 10.0, (1.0, 10.0), step=0.5)
with_unscored = f3.checkbox("include unscored", value=True)
table = lbc.filter_questions(lbc.compare_longbench_chat(frames), picked, (lo, hi), with_unscored, score_col=name)
st.dataframe(
    lbc.style_comparison(table),
    hide_index=True,
    column_config={
        "idx": st.column_config.NumberColumn("question", width="small"),
        "lang": st.column_config.TextColumn("language", width="small"),
        "query": st.column_config.TextColumn(width="medium"),
        **{
            n: st.column_config.ProgressColumn(n, min_value=0, max_value=10, format="%.1f", width="small")
            for n in frames
        },
        lbc.CHANGE: st.column_config.TextColumn(
            "change",
            width="small",
            help=f"{name} minus {other_name}: green where {name} scored higher, red where lower",
        ),
    },
)
if table.empty:
    st.info("No question matches these filters.")
    st.stop()

st.subheader("Question detail")
idx = st.selectbox(
    "question", list(table["idx"]), format_func=lambda i: f"#{i} — {table.set_index('idx').loc[i, 'query'][:90]}"
)
first = lbc.question_detail(df, idx)
st.markdown(f"**Query** ({first['lang']})")
st.text(first["query"])
prompts = readers.load_longbench_chat_prompts(run)
with st.expander(
    "The whole prompt: long context and question"
    + (f" ({first['prompt_tokens']:,} tokens)" if isinstance(first.get("prompt_tokens"), int) else "")
):
    if idx in prompts:
        st.text(prompts[idx])
    else:
        st.caption("The data file this evaluation read is not recorded in run.json or no longer exists.")
with st.expander("Reference answer", expanded=True):
    st.text(first["reference"] or "—")
for col, (run_name, frame) in zip(st.columns(len(frames)), frames.items()):
    with col:
        try:
            d = lbc.question_detail(frame, idx)
        except ValueError as exc:
            st.warning(str(exc))
            continue
        st.markdown(f"#### {run_name} · score {lbc.score_text(d['score'])}")
        st.caption(lbc.answer_note(d))
        st.markdown("**Answer**")
        st.text(d["prediction"] or "—")
        for r in d["runs"] or []:
            title, note, dist = lbc.judge_run_view(r)
            with st.expander(title):
                if note:
                    st.caption(note)
                if dist is not None:
                    st.dataframe(
                        dist,
                        hide_index=True,
                        column_config={
                            "probability": st.column_config.ProgressColumn(
                                format="percent", min_value=0.0, max_value=1.0
                            )
                        },
                    )
                st.text(r.get("reply", ""))
