"""Loss curves per method and loss normalisation, and training throughput."""

import common
import streamlit as st

from longalign.views import readers, training

common.page(
    "Training",
    "One line per training folder train/<name>/; the legend shows the loss normalisation "
    "(sequence = LongAlign loss weighting, token = token mean, pack = per-pack mean).",
)
run = common.pick_run()
metrics = common.guard(readers.load_metrics, run)
names = list(dict.fromkeys(metrics["train"]))

c1, c2, c3 = st.columns([3, 1, 1])
chosen = c1.multiselect("training runs", names, default=names)
y = c2.radio("loss", list(training.LOSS_COLUMNS), horizontal=False, format_func=training.LOSS_COLUMNS.get)
window = c3.slider("smoothing (steps)", 1, 25, 1)
if not chosen:
    st.info("Choose at least one training run.")
    st.stop()
shown, y = training.select(metrics, chosen, y)
summary = training.train_summary(run, shown)
for col, (_, r) in zip(st.columns(len(summary)), summary.iterrows()):
    col.metric(r["train"], f"{r['tokens/s']:,.0f} tok/s", delta=f"final loss {r['final loss']:.3f}", delta_color="off")
common.chart(training.fig_loss(shown, y=y, window=window), key="loss")
common.chart(training.fig_throughput(shown, window=window), key="throughput")
st.dataframe(
    summary,
    hide_index=True,
    column_config={
        "padding share": st.column_config.NumberColumn(format="percent"),
        "tokens/s": st.column_config.NumberColumn(format="%.0f"),
    },
)
with st.expander("All logged steps"):
    st.dataframe(shown.drop(columns=["label"]), hide_index=True)
