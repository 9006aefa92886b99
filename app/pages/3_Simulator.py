"""Predicted training time and device idle time per batching method, on this run's real lengths."""

import common
import streamlit as st

from longalign.views import readers, simulator
from longalign.views.style import format_seconds

common.page(
    "Simulator",
    "Data-parallel devices wait for the slowest one: a long sequence on one device keeps the "
    "others idle. The simulator replays each method's plan over this run's token lengths with a cost model "
    "(linear in tokens computed, quadratic in attention).",
)
run = common.pick_run()
has_tokens = readers.present(run, "tokens")
has_recorded = readers.present(run, "simulate")
if not has_tokens and not has_recorded:
    common.guard(readers.require, run, "tokens")

recorded_config = {}
if has_recorded:
    recorded_config, recorded = common.guard(simulator.load_simulation, run)

NUMBERS = {
    simulator.TIME: st.column_config.NumberColumn(format="%.2f"),
    simulator.IDLE: st.column_config.NumberColumn(format="percent"),
    simulator.SPEEDUP: st.column_config.NumberColumn(format="%.2f×"),
    "busy device time (s)": st.column_config.NumberColumn(format="%.2f"),
    "seconds per step": st.column_config.NumberColumn(format="%.2f"),
    "tokens per second": st.column_config.NumberColumn(format="%.1f"),
    "tokens": st.column_config.NumberColumn(format="localized"),
    "padding": st.column_config.NumberColumn(format="percent"),
    "fill": st.column_config.NumberColumn(format="percent"),
}

if has_tokens:
    table = common.token_table(run)
    d = simulator.form_defaults(recorded_config, readers.load_token_meta(run), int(table["length"].max()))
    st.subheader("Try a configuration")
    st.caption(
        "Starts from the recorded simulation's settings"
        if recorded_config
        else "Starts from paper-scale settings (8 devices, 12 accumulation steps)"
    )
    with st.form("simulate"):
        c = st.columns(4)
        devices = c[0].number_input("devices", 1, 4096, d["devices"])
        batch_size = c[1].number_input("batch size (naive, sort)", 1, 512, d["batch_size"])
        grad_accum = c[2].number_input("grad accumulation (naive, sort)", 1, 512, d["grad_accum"])
        max_len = c[3].number_input("max length (tokens)", 128, 1 << 20, d["max_len"], step=1024)
        c = st.columns(4)
        pack_accum = c[0].number_input("packs per device per step", 1, 512, d["pack_grad_accum"])
        algo = c[1].selectbox("packing algorithm", d["algos"])
        sync = c[2].selectbox("devices wait", d["syncs"], format_func=simulator.SYNC_LABELS.get)
        c[3].form_submit_button("Simulate", type="primary", width="stretch")
    config, live = common.guard(
        common.simulation,
        tuple(int(x) for x in table["length"]),
        devices=int(devices),
        batch_size=int(batch_size),
        max_len=int(max_len),
        grad_accum=int(grad_accum),
        pack_grad_accum=int(pack_accum),
        algo=algo,
        sync=sync,
        cost=d["cost"],
        seed=d["seed"],
    )
    st.caption(f"Priced with {simulator.cost_text(d['cost'])}.")
    for col, (_, r) in zip(st.columns(len(live)), live.iterrows()):
        idle = f" · idle {r[simulator.IDLE]:.0%}" if int(devices) > 1 else ""
        col.metric(
            f"{r['method']}",
            format_seconds(r[simulator.TIME]),
            delta=f"{r[simulator.SPEEDUP]:.2f}× the slowest{idle}",
            help="speed-up over the slowest method · share of device time spent waiting",
            delta_color="off",
            delta_arrow="off",
        )
    common.chart(simulator.fig_simulation(live, devices=int(devices)), key="sim_live")
    if int(devices) == 1:
        st.caption("With one device nothing waits for a slower device, so there is no idle time to draw.")
    if any(m.startswith("pack, dense") for m in live["method"]):
        st.caption(simulator.METHOD_NOTE)
    with st.expander("Numbers"):
        st.dataframe(live, hide_index=True, column_config=NUMBERS)

st.subheader("Recorded simulation (batching/simulate.json)")
if not has_recorded:
    st.info(str(readers.MissingArtifact(run, "simulate")))
    st.stop()
if recorded.empty:
    st.info("batching/simulate.json lists no methods; run `longalign batch simulate` for this run.")
    st.stop()
recorded_devices = recorded_config.get("world_size") or recorded_config.get("devices")
st.caption(f"Priced with {simulator.cost_text(simulator.cost_of(recorded_config))}.")
common.chart(simulator.fig_simulation(recorded, devices=recorded_devices), key="sim")
st.dataframe(recorded, hide_index=True, column_config=NUMBERS)
with st.expander("Settings of the recorded simulation"):
    st.dataframe(simulator.settings_table(recorded_config), hide_index=True)
