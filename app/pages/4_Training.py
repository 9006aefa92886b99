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

c1, c2, c3, c4 = st.columns([3, 1, 1, 1])
chosen = c1.multiselect("training runs", names, default=names)
y = c2.radio("loss", list(training.LOSS_COLUMNS), format_func=training.LOSS_COLUMNS.get)
window = c4.slider("smoothing (steps)", 1, 25, 1)
if not chosen:
    st.info("Choose at least one training run.")
    st.stop()
shown, y = training.select(metrics, chosen, y)
x = c3.radio("against", training.x_axes_in(shown), format_func=training.X_AXES.get)
summary = training.train_summary(run, shown, y=y)
loss_name = training.LOSS_COLUMNS[y]
for col, (_, r) in zip(st.columns(len(summary)), summary.iterrows()):
    col.metric(
        r["training folder"],
        f"{r['final loss']:.3f}",
        delta=f"{r['tokens per second']:,.0f} tokens/s",
        delta_color="off",
        delta_arrow="off",
        help=f"final loss ({loss_name}) after {r['steps']} steps; real tokens per second of training",
    )
common.chart(training.fig_loss(shown, y=y, window=window, x=x), key="loss")
common.chart(training.fig_throughput(shown, window=window), key="throughput")
st.dataframe(
    summary,
    hide_index=True,
    column_config={
        "padding": st.column_config.NumberColumn(format="percent", help="share of computed positions with no token"),
        "tokens per second": st.column_config.NumberColumn(format="%.0f"),
        "final loss": st.column_config.NumberColumn(f"final loss ({loss_name})", format="%.3f"),
        "lowest loss": st.column_config.NumberColumn(f"lowest loss ({loss_name})", format="%.3f"),
        "wall time (s)": st.column_config.NumberColumn(format="%.1f"),
    },
)
with st.expander("All logged steps"):
    st.dataframe(
        training.steps_table(shown),
        hide_index=True,
        column_config={
            c: st.column_config.NumberColumn(format="%.4g")
            for c in ("loss", "token-mean loss", "learning rate", "gradient norm", "tokens per second", "epoch")
        }
        | {c: st.column_config.NumberColumn(format="%.2f") for c in ("step time (s)", "wall time (s)", "time (s)")},
    )
