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
other = common.pick_run("Compare with", state_key="compare_run", exclude=run.root.name, allow_none=True)
frames, warnings = common.guard(lbc.load_frames, run, other)
for w in warnings:
    st.warning(w)
df = frames[run.root.name]

summary = readers.load_longbench_chat_summary(run)
by_lang = lbc.longbench_chat_by_lang(frames)
cols = st.columns(4)
mean = lbc.mean_score(df)
cols[0].metric("mean score", f"{mean:.2f}" if mean == mean else "—", help=f"summary.json: {summary.get('mean', '—')}")
cols[1].metric("questions", f"{len(df)}", delta=f"{int(df['score'].isna().sum())} unscored", delta_color="off")
cols[2].metric("judge cost", f"${summary['cost']:.2f}" if isinstance(summary.get("cost"), (int, float)) else "—")
if other is not None and other.root.name in frames:
    b = frames[other.root.name]["score"]
    cols[3].metric(
        f"{other.root.name} mean score",
        f"{b.mean():.2f}",
        delta=f"{b.mean() - df['score'].mean():+.2f}",
        help=f"difference to {run.root.name}",
    )
st.caption(lbc.caption(df, summary))
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
lo, hi = f2.slider(f"score of {run.root.name}", 1.0, 10.0, (1.0, 10.0), step=0.5)
unscored = f3.checkbox("include unscored", value=True)
table = lbc.filter_questions(lbc.compare_longbench_chat(frames), picked, (lo, hi), unscored, score_col=run.root.name)
st.dataframe(
    table,
    hide_index=True,
    column_config={
        "query": st.column_config.TextColumn(width="medium"),
        **{n: st.column_config.ProgressColumn(n, min_value=0, max_value=10, format="%.1f") for n in frames},
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
st.markdown(f"**Query** ({first['lang']}): {first['query']}")
with st.expander("Reference answer", expanded=True):
    st.write(first["reference"] or "—")
for col, (name, frame) in zip(st.columns(len(frames)), frames.items()):
    with col:
        try:
            d = lbc.question_detail(frame, idx)
        except ValueError as exc:
            st.warning(str(exc))
            continue
        st.markdown(f"#### {name} · score {lbc.score_text(d['score'])}")
        trunc = " (truncated to max_length)" if d.get("truncated") else ""
        st.caption(f"prompt tokens: {d.get('prompt_tokens') or '—'}{trunc}")
        st.markdown("**Prediction**")
        st.write(d["prediction"] or "—")
        for r in d["runs"] or []:
            s = r.get("score")
            with st.expander(f"judge run {r.get('run', '?')}: score {s if s is not None else 'unparsed'}"):
                st.caption(
                    f"example order {r.get('order')}, {r.get('prompt_tokens')} prompt / "
                    f"{r.get('completion_tokens')} completion tokens"
                )
                st.write(r.get("reply", ""))
