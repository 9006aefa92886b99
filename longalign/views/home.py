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
from longalign.views.style import change_color, signed

OVERVIEW_LABELS = {  # short column names of the runs overview (one column per artifact)
    "tokens": "tokens",
    "batching": "plans",
    "simulate": "simulation",
    "train": "training",
    "longbench_chat": "LongBench-Chat",
    "needle": "needle",
    "ruler": "ladder",
}


def runs_overview(root: str | Path) -> pd.DataFrame:
    """One row per run (nested runs by their path), one boolean column per artifact (short names), and the
    stages recorded in run.json."""
    rows = []
    labels = [OVERVIEW_LABELS.get(k, ARTIFACTS[k].label) for k in ARTIFACTS]
    for name in list_runs(root):
        run = RunDir(Path(root) / name)
        row = {"run": name}
        row.update({label: present(run, k) for label, k in zip(labels, ARTIFACTS)})
        row["stages"] = ", ".join(sorted((read_run_info(run).get("stages") or {}).keys()))
        rows.append(row)
    return pd.DataFrame(rows, columns=["run", *labels, "stages"])


def artifact_table(run: RunDir) -> pd.DataFrame:
    """Which artifacts this run has, which page reads them, where they live and which command makes them."""
    return pd.DataFrame(
        [
            {
                "artifact": a.label,
                "present": present(run, a.key),
                "page": a.page,
                "path": a.where(run),
                "created by": a.command.format(run=run.root),
            }
            for a in ARTIFACTS.values()
        ]
    )


def config_text(config: dict) -> str:
    """A stage's recorded configuration as the command-line options that give it (``--max-len 1024 ...``);
    options left empty are left out."""
    parts = []
    for key, value in config.items():
        if value is None or value == "" or value == [] or value == {}:
            continue
        flag = "--" + str(key).replace("_", "-")
        if value is True:
            parts.append(flag)
        elif value is False:
            continue
        elif isinstance(value, (list, tuple)):
            parts.append(f"{flag} {','.join(map(str, value))}")
        elif isinstance(value, dict):
            parts.append(f"{flag} {json.dumps(value, ensure_ascii=False, default=str)}")
        else:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def run_stages(run: RunDir) -> pd.DataFrame:
    """The stages recorded in run.json with their time stamp and configuration (as command-line options)."""
    rows = [
        {
            "stage": name,
            "updated": str(entry.get("updated", "")).replace("T", " "),
            "options": config_text(entry.get("config", {}) or {}),
        }
        for name, entry in (read_run_info(run).get("stages") or {}).items()
    ]
    return pd.DataFrame(rows, columns=["stage", "updated", "options"])


TOKEN_META_LABELS = {
    "tokenizer": "tokenizer",
    "vocab_size": "vocabulary size",
    "chat_format": "chat format",
    "max_len": "max_len (tokens)",
    "truncation": "truncation side",
    "n_rows": "sequences",
    "n_truncated": "sequences truncated",
    "eos_token_id": "end-of-sequence token id",
    "pad_token_id": "padding token id",
    "n_tokens": "tokens",
    "n_target_tokens": "target tokens",
    "n_boundary_mismatch": "turn boundary mismatches",
}


def token_meta_table(run: RunDir) -> pd.DataFrame:
    """tokens/longalign_meta.json as a one-column table (values as text, numbers with thousands separators,
    known keys under readable names); empty when tokens/ is missing."""
    meta = load_token_meta(run)

    def text(v) -> str:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return str(v)
        return f"{v:,}" if isinstance(v, int) else f"{v:,.4g}"

    return pd.DataFrame({"value": {TOKEN_META_LABELS.get(k, k.replace("_", " ")): text(v) for k, v in meta.items()}})


def load_demo_summary(run: RunDir) -> dict:
    """``demo_summary.json`` of a ``longalign demo`` run, or {} for other runs."""
    from longalign.rundir import read_json

    return read_json(run.demo_summary, default={}) or {}


def demo_method_table(summary: dict) -> pd.DataFrame:
    """Per batching method: training seconds over the same sequences, tokens, and the speed-up over naive that
    was measured and that the simulator predicted (rounded as the demo reports them)."""

    def num(v, digits):
        return round(float(v), digits) if isinstance(v, (int, float)) else None

    rows = [
        {
            "method": m,
            "training seconds": num(c.get("seconds"), 1),
            "tokens": c.get("real_tokens"),
            "measured speed-up": num(c.get("measured_speedup_vs_naive"), 2),
            "simulated speed-up": num(c.get("simulated_speedup_vs_naive"), 2),
        }
        for m, c in (summary.get("methods") or {}).items()
    ]
    return pd.DataFrame(
        rows, columns=["method", "training seconds", "tokens", "measured speed-up", "simulated speed-up"]
    )


# (stage, key, label, digits, which direction is better)
DEMO_EVAL_ROWS = (
    ("eval:heldout", "sequence_mean_loss", "held-out loss (sequence mean)", 3, "lower"),
    ("eval:heldout", "token_mean_loss", "held-out loss (token mean)", 3, "lower"),
    ("eval:heldout", "short_sequence_mean_loss", "held-out loss, short chats", 3, "lower"),
    ("eval:needle", "mean_recall", "needle key-phrase recall (0–1)", 2, "higher"),
    ("eval:needle", "mean_recall_norm", "needle recall, normalised (0–1)", 2, "higher"),
    ("eval:needle", "mean_judge", "needle judge score (1–10)", 2, "higher"),
    ("eval:longbench-chat", "mean_score", "mini LongBench-Chat score (1–10)", 2, "higher"),
    ("eval:ladder", "score", "synthetic ladder score (0–100)", 1, "higher"),
)


def demo_eval_table(summary: dict) -> pd.DataFrame:
    """Base vs fine-tuned model, one row per evaluation number the demo measured: both values rounded, the
    signed change (fine-tuned minus base) as text, and which direction is better for that metric."""
    stages = summary.get("stages") or {}
    rows = []
    for stage, key, label, digits, better in DEMO_EVAL_ROWS:
        pair = (stages.get(stage) or {}).get(key)
        if not isinstance(pair, dict):
            continue
        base, tuned = pair.get("base"), pair.get("tuned")
        both = isinstance(base, (int, float)) and isinstance(tuned, (int, float))
        rows.append(
            {
                "metric": label,
                "base": round(float(base), digits) if isinstance(base, (int, float)) else None,
                "fine-tuned": round(float(tuned), digits) if isinstance(tuned, (int, float)) else None,
                "change": signed(tuned - base, digits) if both else "—",
                "better when": better,
            }
        )
    return pd.DataFrame(rows, columns=["metric", "base", "fine-tuned", "change", "better when"])


def style_eval_table(table: pd.DataFrame):
    """:func:`demo_eval_table` for display: the change coloured green when the fine-tuned model is better, red
    when it is worse (by the metric's direction)."""
    diff = (table["fine-tuned"].astype(float) - table["base"].astype(float)).tolist()
    colors = [change_color(d, b) for d, b in zip(diff, table["better when"])]
    return table.style.apply(lambda col: colors, subset=["change"]).format(precision=3, na_rep="—")
