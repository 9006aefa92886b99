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
