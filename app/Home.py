"""LongAlign Workbench dashboard: start page (runs folder overview and the chosen run's artifacts).

longalign app --runs runs          # or: streamlit run app/Home.py -- --runs runs
"""

import common
import streamlit as st

from longalign.views import home

common.page(
    "LongAlign Workbench",
    "Long-context SFT data, batching (naive, sorted, packed with loss weighting), training and evaluation — "
    "read from run directories.",
)
run = common.pick_run()

st.subheader("Pages")
for page, label, what in (
    ("pages/1_Lengths.py", "Lengths", "token-length distributions by source, language and task type; long vs short."),
    ("pages/2_Packing.py", "Packing", "padding, fill and attention cost per batching method; one pack opened up."),
    ("pages/3_Simulator.py", "Simulator", "predicted training time and device idle time per method."),
    ("pages/4_Training.py", "Training", "loss curves and throughput per method and loss normalisation."),
    ("pages/5_LongBench_Chat.py", "LongBench-Chat", "judged answers per question, side by side for two runs."),
    ("pages/6_Needle.py", "Needle", "retrieval by context length and depth, with the prompt around each needle."),
    ("pages/7_Ladder.py", "Ladder", "synthetic tasks by length, the effective context length, base vs fine-tuned."),
):
    link, text = st.columns([1, 5])
    link.page_link(page, label=label)
    text.text(what)

st.subheader("Runs")
overview = home.runs_overview(common.runs_root())
st.dataframe(
    overview,
    hide_index=True,
    column_config={
        "run": st.column_config.TextColumn(width="medium", pinned=True),
        "stages": st.column_config.TextColumn(width="large"),
        **{
            c: st.column_config.CheckboxColumn(c, width=max(70, 9 * len(c) + 20))
            for c in overview.columns
            if overview[c].dtype == bool
        },
    },
)

demo_summary = home.load_demo_summary(run)
if demo_summary:
    took = f"{demo_summary.get('profile')} profile, {demo_summary.get('seconds', 0):,.0f} s"
    st.subheader(f"What `longalign demo` measured ({took})")
    st.markdown("**Batching methods on the same sequences**")
    st.dataframe(
        home.demo_method_table(demo_summary),
        hide_index=True,
        column_config={
            "training seconds": st.column_config.NumberColumn(format="%.1f s"),
            "tokens": st.column_config.NumberColumn(format="localized"),
            "measured speed-up": st.column_config.NumberColumn(format="%.2f×", help="naive's seconds / this method's"),
            "simulated speed-up": st.column_config.NumberColumn(
                format="%.2f×", help="the simulator's prediction for these lengths on one device"
            ),
        },
    )
    st.markdown(f"**Base vs fine-tuned** (the base model's evaluation is the run `{demo_summary.get('base_run')}`)")
    st.dataframe(
        home.style_eval_table(home.demo_eval_table(demo_summary)),
        hide_index=True,
        column_config={
            "metric": st.column_config.TextColumn(width="large"),
            "change": st.column_config.TextColumn(
                width="small", help="fine-tuned minus base; green = better, red = worse for this metric"
            ),
        },
    )
    for line in demo_summary.get("explained", []):
        st.text("• " + line)

st.subheader(f"Run `{common.run_name(run)}`")
st.dataframe(
    home.artifact_table(run),
    hide_index=True,
    column_config={
        "artifact": st.column_config.TextColumn(width="medium"),
        "present": st.column_config.CheckboxColumn("present", width="small"),
        "page": st.column_config.TextColumn(width=120),
        "path": st.column_config.TextColumn(width="medium"),
        "created by": st.column_config.TextColumn(width="large"),
    },
)
left, right = st.columns([2, 3])
with left:
    st.markdown("**Tokenization** (tokens/longalign_meta.json)")
    meta = home.token_meta_table(run)
    if len(meta):
        st.dataframe(meta, width="stretch")
    else:
        st.info("No tokens/ yet: `longalign tokenize` writes them.")
with right:
    st.markdown("**Stages recorded in run.json**")
    stages = home.run_stages(run)
    if stages.empty:
        st.info("run.json lists no stages yet: every stage command records its configuration there.")
    else:
        st.dataframe(
            stages,
            hide_index=True,
            column_config={
                "stage": st.column_config.TextColumn(width=130),
                "updated": st.column_config.TextColumn(width=150),
                "options": st.column_config.TextColumn(width="large", help="the recorded configuration as options"),
            },
        )
