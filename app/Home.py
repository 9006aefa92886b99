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

st.subheader("Runs")
overview = home.runs_overview(common.runs_root())
st.dataframe(
    overview,
    hide_index=True,
    column_config={c: st.column_config.CheckboxColumn(c) for c in overview.columns if overview[c].dtype == bool},
)

demo_summary = home.load_demo_summary(run)
if demo_summary:
    took = f"{demo_summary.get('profile')} profile, {demo_summary.get('seconds', 0):.0f} s"
    st.subheader(f"What `longalign demo` measured ({took})")
    left, right = st.columns(2)
    with left:
        st.markdown("**Batching methods on the same sequences**")
        st.dataframe(home.demo_method_table(demo_summary), hide_index=True)
    with right:
        st.markdown(f"**Base vs fine-tuned** (base model's evaluation: `{demo_summary.get('base_run')}`)")
        st.dataframe(home.demo_eval_table(demo_summary), hide_index=True)
    st.markdown("\n".join(f"- {line}" for line in demo_summary.get("explained", [])))

st.subheader(f"Run `{run.root.name}`")
st.dataframe(
    home.artifact_table(run), hide_index=True, column_config={"present": st.column_config.CheckboxColumn("present")}
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
        st.dataframe(stages, hide_index=True, column_config={"config": st.column_config.TextColumn(width="large")})

st.markdown("""
**Pages**
1. **Lengths** — token-length distributions by source, language and task type; long vs short mix.
2. **Packing** — padding, fill and attention cost per batching method; one pack's mask, tokens and loss weights.
3. **Simulator** — predicted training time and device idle time per method on this run's lengths.
4. **Training** — loss curves and throughput per method and loss normalisation.
5. **LongBench-Chat** — judged answers per question, side by side for two runs.
6. **Needle** — retrieval score by context length and depth, with the prompt around each needle.
""")
