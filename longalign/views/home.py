"""The start page: which runs a runs folder holds, which artifacts one run has, and what its stages recorded.

Presence is decided by :func:`.readers.present` (the file a page needs exists), never by run.json: a stage
that crashed before recording itself still shows its artifacts, and a recorded stage whose files were
deleted shows as missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from longalign.rundir import RunDir
from longalign.views.readers import ARTIFACTS, list_runs, load_token_meta, present, read_run_info


def runs_overview(root: str | Path) -> pd.DataFrame:
    """One row per run, one boolean column per artifact, and the stages recorded in run.json."""
    rows = []
    for name in list_runs(root):
        run = RunDir(Path(root) / name)
        row = {"run": name}
        row.update({ARTIFACTS[k].label: present(run, k) for k in ARTIFACTS})
        row["stages"] = ", ".join(sorted((read_run_info(run).get("stages") or {}).keys()))
        rows.append(row)
    return pd.DataFrame(rows, columns=["run", *[a.label for a in ARTIFACTS.values()], "stages"])


def artifact_table(run: RunDir) -> pd.DataFrame:
    """Which artifacts this run has, where they live and which command makes them."""
    return pd.DataFrame(
        [
            {
                "artifact": a.label,
                "present": present(run, a.key),
                "path": a.where(run),
                "created by": a.command.format(run=run.root),
                "page": a.page,
            }
            for a in ARTIFACTS.values()
        ]
    )


def run_stages(run: RunDir) -> pd.DataFrame:
    """The stages recorded in run.json with their time stamp and configuration (as JSON text)."""
    rows = [
        {
            "stage": name,
            "updated": entry.get("updated", ""),
            "config": json.dumps(entry.get("config", {}), ensure_ascii=False, default=str),
        }
        for name, entry in (read_run_info(run).get("stages") or {}).items()
    ]
    return pd.DataFrame(rows, columns=["stage", "updated", "config"])


def token_meta_table(run: RunDir) -> pd.DataFrame:
    """tokens/longalign_meta.json as a one-column table (values as text); empty when tokens/ is missing."""
    meta = load_token_meta(run)
    return pd.DataFrame({"value": {k: str(v) for k, v in meta.items()}}, dtype=object)


def load_demo_summary(run: RunDir) -> dict:
    """``demo_summary.json`` of a ``longalign demo`` run, or {} for other runs."""
    from longalign.rundir import read_json

    return read_json(run.demo_summary, default={}) or {}


def demo_method_table(summary: dict) -> pd.DataFrame:
    """Per batching method: training seconds over the same sequences, measured and simulated speedup."""
    rows = [
        {
            "method": m,
            "seconds": c.get("seconds"),
            "tokens": c.get("real_tokens"),
            "measured ×naive": c.get("measured_speedup_vs_naive"),
            "simulated ×naive": c.get("simulated_speedup_vs_naive"),
        }
        for m, c in (summary.get("methods") or {}).items()
    ]
    return pd.DataFrame(
        rows,
        columns=[
            "method",
            "seconds",
            "tokens",
            "measured ×naive",
            "simulated ×naive",
        ],
    )


DEMO_EVAL_ROWS = (
    ("eval:heldout", "sequence_mean_loss", "held-out loss (sequence mean, lower is better)"),
    ("eval:heldout", "token_mean_loss", "held-out loss (token mean)"),
    ("eval:needle", "mean_recall", "needle key-phrase recall (0-1)"),
    ("eval:needle", "mean_recall_norm", "needle recall, normalised and stemmed (0-1)"),
    ("eval:needle", "mean_judge", "needle judge score (1-10)"),
    ("eval:longbench-chat", "mean_score", "mini LongBench-Chat score (1-10)"),
)


def demo_eval_table(summary: dict) -> pd.DataFrame:
    """Base vs fine-tuned model, one row per evaluation number the demo measured."""
    stages = summary.get("stages") or {}
    rows = []
    for stage, key, label in DEMO_EVAL_ROWS:
        pair = (stages.get(stage) or {}).get(key)
        if isinstance(pair, dict):
            rows.append(
                {
                    "metric": label,
                    "base": pair.get("base"),
                    "fine-tuned": pair.get("tuned"),
                    "change": pair.get("change"),
                }
            )
    return pd.DataFrame(rows, columns=["metric", "base", "fine-tuned", "change"])
