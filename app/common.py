"""Shared page furniture: the runs folder, the run picker in the sidebar, cached loaders and the guard that
turns a missing artifact into a message. All computing lives in ``longalign.views``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from longalign.rundir import RunDir
from longalign.views import packing, readers, simulator

RUNS_ENV = "LONGALIGN_RUNS"


def runs_root() -> Path:
    """``--runs DIR`` given after ``--`` to ``streamlit run``, else $LONGALIGN_RUNS, else ``runs``."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runs")
    ns, _ = parser.parse_known_args(sys.argv[1:])
    return Path(ns.runs or os.environ.get(RUNS_ENV) or "runs")


def page(title: str, caption: str) -> None:
    st.set_page_config(page_title=f"{title} · LongAlign Workbench", layout="wide")
    st.title(title)
    st.caption(caption)


def _remember(src: str, dst: str) -> None:
    st.session_state[dst] = st.session_state[src]


def pick_run(
    label: str = "Run", state_key: str = "run_name", exclude: RunDir | None = None, allow_none: bool = False
) -> RunDir | None:
    """Run picker in the sidebar (runs nested one folder down, like runs/notebooks/*, by their path); the choice
    survives page changes. Stops the page with a message when the runs folder holds no run."""
    root = runs_root()
    names = [n for n in readers.list_runs(root) if exclude is None or root / n != exclude.root]
    if not names and not allow_none:
        st.info(
            f"No run directories under `{root.resolve()}`. Create one with the pipeline "
            f"(`longalign demo` or the stage commands), or start the app with `longalign app --runs DIR`."
        )
        st.stop()
    options = (["—"] if allow_none else []) + names
    query_run = st.query_params.get("run" if state_key == "run_name" else state_key.replace("_run", ""))
    if state_key not in st.session_state or st.session_state[state_key] not in options:
        st.session_state[state_key] = query_run if query_run in options else options[0]
    widget = f"_{state_key}_picker"
    st.session_state[widget] = st.session_state[state_key]
    st.sidebar.selectbox(label, options, key=widget, on_change=_remember, args=(widget, state_key))
    if state_key == "run_name":
        st.sidebar.caption(f"runs folder: `{root}`")
    choice = st.session_state[state_key]
    return None if choice == "—" else RunDir(root / choice)


def run_name(run: RunDir) -> str:
    """The run's name as the picker lists it (its path under the runs folder)."""
    try:
        return run.root.relative_to(runs_root()).as_posix()
    except ValueError:
        return run.root.name


def guard(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; on a missing artifact or bad input show the message and stop the page."""
    try:
        return fn(*args, **kwargs)
    except readers.MissingArtifact as exc:
        st.info(readers.missing_message(exc, runs_root()))
        st.stop()
    except ValueError as exc:
        st.error(str(exc))
        st.stop()


def _mtime(path: Path) -> float:
    try:
        return max(p.stat().st_mtime for p in [path, *path.glob("*")]) if path.is_dir() else path.stat().st_mtime
    except (FileNotFoundError, ValueError):
        return 0.0


@st.cache_data(show_spinner="Reading tokens/ …", max_entries=8)
def _token_table(root: str, stamp: float) -> pd.DataFrame:
    return readers.load_token_table(RunDir(root))


def token_table(run: RunDir) -> pd.DataFrame:
    """The run's token table (cached until tokens/ changes); stops the page when tokens/ is missing."""
    guard(readers.require, run, "tokens")
    return guard(_token_table, str(run.root), _mtime(run.tokens))


@st.cache_data(show_spinner="Comparing batching plans …", max_entries=8)
def _comparison(root: str, stamp: float, lengths: tuple) -> pd.DataFrame:
    return packing.method_comparison(RunDir(root), np.asarray(lengths))


def method_comparison(run: RunDir, table: pd.DataFrame) -> pd.DataFrame:
    guard(readers.require, run, "batching")
    return guard(_comparison, str(run.root), _mtime(run.batching), tuple(table["length"].tolist()))


def metric_with_change(
    col, label: str, value: str, change: float | None, other: str, help: str | None = None, digits: int = 2
) -> None:
    """A metric with its signed change against run ``other`` (green up when higher, red down when lower); a
    change that rounds to zero reads "same as <other>" with no arrow; no change given, no delta."""
    if change is None or change != change:
        col.metric(label, value, help=help)
        return
    d = round(float(change), digits)
    if d == 0:
        col.metric(label, value, delta=f"same as {other}", delta_color="off", delta_arrow="off", help=help)
    else:
        col.metric(label, value, delta=f"{d:+.{digits}f} vs {other}", help=help)


def chart(fig, key: str | None = None, **kwargs: Any):
    return st.plotly_chart(fig, width="stretch", key=key, config={"displaylogo": False}, **kwargs)


@st.cache_data(show_spinner="Simulating …", max_entries=32)
def simulation(lengths: tuple, **settings: Any):
    return simulator.run_simulation(np.asarray(lengths), **settings)
