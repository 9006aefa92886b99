"""What the dashboard shows, computed from a run directory: pandas tables and plotly figures.

Every function here is a pure function of the files a run directory holds (see :mod:`longalign.rundir`) or of
the tables derived from them, so the Streamlit pages stay thin (inputs -> guard -> one call here -> render) and
each view is unit-tested without a browser. A missing artifact raises :class:`MissingArtifact`, whose message
names the command that creates it; the pages show that message instead of a traceback.

Trade-offs:

* The token table is read with ``select_columns`` so the ragged ``input_ids``/``labels`` columns are never
  materialised (10,000 rows of up to 64k tokens is ~5 GB of int32 on disk; the metadata columns are ~200 kB).
  Labels are read only for the handful of sequences of the micro-batch being inspected.
* Attention masks and token strips are downsampled to at most a few hundred cells per axis before they reach
  the browser: a 64k-token pack has 4.3e9 mask entries, the heatmap shows each cell as the fraction of
  allowed (query, key) pairs in its block, which keeps a 200 x 200 figure exact in area.
* Batching costs are recomputed from the plan and the token lengths (the stage's own statistics dict is shown
  verbatim beside them), so two runs written by different versions of the batching stage compare on one
  definition: tokens computed = B x longest for a padded batch and the real tokens for a pack; attention cost
  = causal (query, key) pairs the kernel evaluates, B x L(L+1)/2 padded vs sum l(l+1)/2 for a block-diagonal
  (varlen) pack.
"""

from __future__ import annotations

import html
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from longalign import IGNORE_INDEX
from longalign.rundir import BATCH_METHODS, RunDir, read_json, read_jsonl

logger = logging.getLogger(__name__)

TEMPLATE = "plotly_white"
PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#EECA3B", "#9D755D",
           "#FF9DA6", "#BAB0AC")
METHOD_COLORS = {"naive": "#E45756", "sort": "#F58518", "pack": "#4C78A8"}
LOSS_NORMS = ("sequence", "token", "pack")
SHORT_SOURCES = ("sharegpt", "short")
TOKEN_META_COLUMNS = ("length", "n_target", "source", "lang", "task_type")
LENGTH_GROUPS = ("source", "lang", "task_type", "kind")


# --------------------------------------------------------------------------------------------- artifacts
@dataclass(frozen=True)
class Artifact:
    key: str
    label: str
    path: str          # relative to the run directory (a glob for several files)
    command: str       # what creates it ({run} = the run directory)
    page: str          # which dashboard page reads it


ARTIFACTS: dict[str, Artifact] = {a.key: a for a in (
    Artifact("tokens", "Tokenized data", "tokens/", "longalign tokenize --run {run}", "Lengths, Packing"),
    Artifact("batching", "Batching plans", "batching/<method>.json + .plan.json",
             "longalign batch plan --run {run} --method pack", "Packing"),
    Artifact("simulate", "Step-time simulation", "batching/simulate.json", "longalign batch simulate --run {run}",
             "Simulator"),
    Artifact("train", "Training metrics", "train/<method>/metrics.jsonl", "longalign train --run {run} --method pack",
             "Training"),
    Artifact("longbench_chat", "LongBench-Chat", "eval/longbench_chat/judgments.jsonl",
             "longalign eval longbench-chat --out {run}", "LongBench-Chat"),
    Artifact("needle", "Needle in a haystack", "eval/needle/results.jsonl", "longalign eval needle --out {run}",
             "Needle"),
)}


class MissingArtifact(FileNotFoundError):
    """An artifact the view needs is not in the run directory; the message says how to create it."""

    def __init__(self, run: RunDir, key: str, detail: str = ""):
        art = ARTIFACTS[key]
        self.key = key
        self.command = art.command.format(run=run.root)
        base = " ".join(self.command.split()[:3 if self.command.split()[1] in ("batch", "eval") else 2])
        msg = (f"{art.label} not found in {run.root / art.path.split(' ')[0]}. "
               f"Create it with `{self.command}` (options: `{base} --help`).")
        if detail:
            msg = f"{msg} {detail}"
        super().__init__(msg)


def present(run: RunDir, key: str) -> bool:
    """Whether artifact ``key`` (one of :data:`ARTIFACTS`) exists in the run."""
    if key == "tokens":
        return (run.tokens / "dataset_info.json").is_file() or (run.tokens / "state.json").is_file()
    if key == "batching":
        return bool(list_batch_methods(run))
    if key == "simulate":
        return (run.batching / "simulate.json").is_file()
    if key == "train":
        return bool(list_train_runs(run))
    if key == "longbench_chat":
        d = run.eval("longbench_chat")
        return (d / "judgments.jsonl").is_file() or (d / "predictions.jsonl").is_file()
    if key == "needle":
        return (run.eval("needle") / "results.jsonl").is_file()
    raise ValueError(f"unknown artifact {key!r}; use one of {', '.join(ARTIFACTS)}")


def require(run: RunDir, key: str) -> None:
    """Raise :class:`MissingArtifact` (with the creating command) when artifact ``key`` is absent."""
    if not present(run, key):
        raise MissingArtifact(run, key)


def list_runs(root: str | Path) -> list[str]:
    """Names of the run directories under ``root`` (every sub-folder not starting with '.'), sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def runs_overview(root: str | Path) -> pd.DataFrame:
    """One row per run, one boolean column per artifact."""
    rows = []
    for name in list_runs(root):
        run = RunDir(Path(root) / name)
        info = read_json(run.run_json, default={}) or {}
        row = {"run": name}
        row.update({ARTIFACTS[k].label: present(run, k) for k in ARTIFACTS})
        row["stages"] = ", ".join(sorted((info.get("stages") or {}).keys()))
        rows.append(row)
    return pd.DataFrame(rows, columns=["run", *[a.label for a in ARTIFACTS.values()], "stages"])


def artifact_table(run: RunDir) -> pd.DataFrame:
    """Which artifacts this run has, where they live and which command makes them."""
    return pd.DataFrame([{"artifact": a.label, "present": present(run, a.key), "path": a.path,
                          "created by": a.command.format(run=run.root), "page": a.page} for a in ARTIFACTS.values()])


def run_stages(run: RunDir) -> pd.DataFrame:
    """The stages recorded in run.json with their time stamp and configuration (as JSON text)."""
    info = read_json(run.run_json, default={}) or {}
    rows = [{"stage": name, "updated": entry.get("updated", ""),
             "config": json.dumps(entry.get("config", {}), ensure_ascii=False, default=str)}
            for name, entry in (info.get("stages") or {}).items()]
    return pd.DataFrame(rows, columns=["stage", "updated", "config"])


# --------------------------------------------------------------------------------------------- tokens
def _load_dataset(run: RunDir):
    require(run, "tokens")
    try:
        from longalign.tokenize import load_tokens  # the tokenize stage's own reader, when present
        ds, _ = load_tokens(run.tokens)
        return ds
    except ImportError:
        import datasets
        return datasets.load_from_disk(str(run.tokens))


def load_token_meta(run: RunDir) -> dict:
    """``tokens/longalign_meta.json`` ({} when the tokenize stage did not write it)."""
    return read_json(run.tokens / "longalign_meta.json", default={}) or {}


def short_sources(run: RunDir, limit: int = 5000) -> set[str]:
    """Sources of the short chat data: those named in data/short.jsonl (first ``limit`` lines) plus the
    conventional names."""
    found = set(SHORT_SOURCES)
    for i, rec in enumerate(read_jsonl(run.short)[:limit]):
        if rec.get("source"):
            found.add(str(rec["source"]))
    return found


def classify_kind(task_type: pd.Series, source: pd.Series, shorts: Iterable[str] = SHORT_SOURCES) -> pd.Series:
    """'short' for chat data (task type "chat" or a short-data source), 'long' otherwise."""
    shorts = {s.lower() for s in shorts}
    is_short = task_type.fillna("").str.lower().eq("chat") | source.fillna("").str.lower().isin(shorts)
    return pd.Series(np.where(is_short, "short", "long"), index=task_type.index)


def load_token_table(run: RunDir) -> pd.DataFrame:
    """One row per tokenized sequence: idx, length, n_target, source, lang, task_type, kind."""
    ds = _load_dataset(run)
    cols = [c for c in TOKEN_META_COLUMNS if c in ds.column_names]
    df = ds.select_columns(cols).to_pandas()
    if "length" not in df:
        df["length"] = [len(x) for x in ds["input_ids"]]
    if "n_target" not in df:
        df["n_target"] = [int((np.asarray(x) != IGNORE_INDEX).sum()) for x in ds["labels"]]
    for c in ("source", "lang", "task_type"):
        if c not in df:
            df[c] = ""
        df[c] = df[c].fillna("").astype(str)
    df["lang"] = df["lang"].replace("", "unknown")
    df["task_type"] = df["task_type"].replace("", "unknown")
    df["kind"] = classify_kind(df["task_type"], df["source"], short_sources(run))
    df.insert(0, "idx", np.arange(len(df)))
    return df


def load_labels(run: RunDir, indices: Sequence[int]) -> list[np.ndarray]:
    """The label arrays of the given rows of tokens/ (in the order given)."""
    ds = _load_dataset(run)
    sub = ds.select_columns(["labels"]).select(list(indices))
    return [np.asarray(x, dtype=np.int64) for x in sub["labels"]]


# --------------------------------------------------------------------------------------------- lengths
def length_edges(lo: float, hi: float, nbins: int = 40, log: bool = False) -> np.ndarray:
    """Bin edges over [lo, hi]; geometric when ``log`` (lo is raised to 1)."""
    if hi <= lo:
        hi = lo + 1
    if log:
        return np.geomspace(max(lo, 1.0), hi, nbins + 1)
    return np.linspace(lo, hi, nbins + 1)


def length_histogram(df: pd.DataFrame, by: str, edges: np.ndarray) -> pd.DataFrame:
    """Counts of ``df.length`` per bin and per value of ``by``: columns group, lo, hi, count.
    The last bin is closed on the right; lengths outside [edges[0], edges[-1]] are not counted."""
    rows = []
    for group, sub in df.groupby(by, sort=True):
        counts, _ = np.histogram(sub["length"].to_numpy(), bins=edges)
        rows.extend({"group": str(group), "lo": float(edges[i]), "hi": float(edges[i + 1]), "count": int(c)}
                    for i, c in enumerate(counts))
    return pd.DataFrame(rows, columns=["group", "lo", "hi", "count"])


def _colors_for(groups: Sequence[str]) -> dict[str, str]:
    """Method names keep their colour; every other group takes the next palette colour not yet used."""
    out = {g: METHOD_COLORS[g] for g in groups if g in METHOD_COLORS}
    free = [c for c in PALETTE if c not in out.values()]
    for i, g in enumerate(g for g in groups if g not in out):
        out[g] = free[i % len(free)]
    return out


def fig_length_distribution(df: pd.DataFrame, by: str = "source", log_x: bool = False, split: int = 8192,
                            upper: int | None = None, nbins: int = 32) -> go.Figure:
    """Two panels like the paper's length figure: [0, split) and [split, upper] tokens, stacked by ``by``."""
    if by not in df.columns:
        raise ValueError(f"by={by!r} is not a column; use one of {', '.join(LENGTH_GROUPS)}")
    longest = int(df["length"].max()) if len(df) else 0
    top = int(upper) if upper else max(2 * split, 2 ** math.ceil(math.log2(max(longest, 1))))
    shortest = int(df["length"].min()) if len(df) else 1
    low = 10 ** math.floor(math.log10(max(min(shortest, split - 1), 1))) if log_x else 0
    panels = [(low, split), (split, top)]
    def n_in(a: float, b: float, last: bool) -> int:
        return int(((df.length >= a) & ((df.length <= b) if last else (df.length < b))).sum())

    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.07,
                        subplot_titles=[f"{_k(a)}–{_k(b)} tokens (n={n_in(a, b, i == 1)})"
                                        for i, (a, b) in enumerate(panels)])
    groups = sorted(df[by].astype(str).unique())
    colors = _colors_for(groups)
    for col, (lo, hi) in enumerate(panels, 1):
        edges = length_edges(lo, hi, nbins, log_x)
        hist = length_histogram(df.assign(**{by: df[by].astype(str)}), by, edges)
        for g in groups:
            h = hist[hist.group == g]
            if log_x:
                xs = np.r_[h.lo.to_numpy(), h.hi.to_numpy()[-1:]]
                ys = np.r_[h["count"].to_numpy(), h["count"].to_numpy()[-1:]]
                fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line_shape="hv", name=g, legendgroup=g,
                                         showlegend=col == 1, line=dict(color=colors[g], width=2)), 1, col)
            else:
                fig.add_trace(go.Bar(x=(h.lo + h.hi) / 2, y=h["count"], width=(h.hi - h.lo), name=g,
                                     legendgroup=g, showlegend=col == 1, marker_color=colors[g],
                                     customdata=np.c_[h.lo, h.hi],
                                     hovertemplate=f"{g}<br>%{{customdata[0]:.0f}}–%{{customdata[1]:.0f}} tokens"
                                                   "<br>%{y} sequences<extra></extra>"), 1, col)
        fig.update_xaxes(type="log" if log_x else "linear", title_text="tokens", row=1, col=col)
    fig.update_yaxes(title_text="sequences", row=1, col=1)
    fig.update_layout(template=TEMPLATE, barmode="stack", bargap=0, height=380, legend_title_text=by,
                      margin=dict(l=50, r=20, t=50, b=40))
    return fig


def _k(n: float) -> str:
    return f"{n / 1024:g}k" if n >= 1024 else f"{n:g}"


def length_summary(df: pd.DataFrame, by: str) -> pd.DataFrame:
    """Per group: sequences, tokens, share of tokens, mean/median/p90/max length, target tokens."""
    if by not in df.columns:
        raise ValueError(f"by={by!r} is not a column; use one of {', '.join(LENGTH_GROUPS)}")
    total = max(int(df["length"].sum()), 1)
    g = df.groupby(by, sort=True)
    out = pd.DataFrame({
        "sequences": g.size(),
        "tokens": g["length"].sum(),
        "token share": g["length"].sum() / total,
        "mean": g["length"].mean().round(1),
        "median": g["length"].median(),
        "p90": g["length"].quantile(0.9).round(0),
        "max": g["length"].max(),
        "target tokens": g["n_target"].sum(),
    })
    return out.sort_values("tokens", ascending=False).reset_index()


def mix_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Long vs short data: sequences, tokens, target tokens and their shares."""
    out = length_summary(df, "kind")[["kind", "sequences", "tokens", "target tokens", "mean", "max"]]
    out.insert(2, "sequence share", out["sequences"] / max(int(out["sequences"].sum()), 1))
    out.insert(4, "token share", out["tokens"] / max(int(out["tokens"].sum()), 1))
    out.insert(6, "target share", out["target tokens"] / max(int(out["target tokens"].sum()), 1))
    return out


def fig_mix(df: pd.DataFrame) -> go.Figure:
    """Share of sequences, tokens and target tokens that are long vs short data."""
    mix = mix_summary(df)
    fig = go.Figure()
    colors = {"long": "#4C78A8", "short": "#72B7B2"}
    for _, r in mix.iterrows():
        fig.add_trace(go.Bar(y=["sequences", "tokens", "target tokens"],
                             x=[r["sequence share"], r["token share"], r["target share"]], name=r["kind"],
                             orientation="h", marker_color=colors.get(r["kind"], "#BAB0AC"),
                             text=[f"{v:.0%}" for v in (r["sequence share"], r["token share"], r["target share"])],
                             textposition="inside"))
    fig.update_layout(template=TEMPLATE, barmode="stack", height=220, xaxis_tickformat=".0%",
                      margin=dict(l=90, r=20, t=30, b=30), legend_title_text="data")
    return fig


# --------------------------------------------------------------------------------------------- batching
def list_batch_methods(run: RunDir) -> list[str]:
    """Methods with a plan (``batching/<m>.plan.json``) or statistics file, standard methods first."""
    if not run.batching.is_dir():
        return []
    names = {p.name[:-len(".plan.json")] for p in run.batching.glob("*.plan.json")}
    names |= {p.stem for p in run.batching.glob("*.json") if not p.name.endswith(".plan.json")
              and p.stem != "simulate" and not p.name.startswith(".")}
    return sorted(names, key=lambda m: (BATCH_METHODS.index(m) if m in BATCH_METHODS else len(BATCH_METHODS), m))


def load_batch_stats(run: RunDir, method: str) -> dict:
    """The batching stage's statistics dict for ``method`` ({} when only the plan exists)."""
    return read_json(run.batch_stats(method), default={}) or {}


def load_plan(run: RunDir, method: str) -> list[list[int]]:
    """Micro-batches (lists of row indices into tokens/) of ``method``'s plan."""
    path = run.batch_plan(method)
    plan = read_json(path)
    if plan is None:
        raise MissingArtifact(run, "batching", f"(no plan file {path.name} for method {method!r})")
    batches = plan.get("batches") if isinstance(plan, dict) else None
    if not isinstance(batches, list):
        raise ValueError(f"{path}: expected an object with a 'batches' list of index lists; re-run the batching stage")
    return [[int(i) for i in b] for b in batches]


def method_kind(method: str, stats: Mapping[str, Any] | None = None) -> str:
    """'pack' when the micro-batches are packs, else 'padded'."""
    m = str((stats or {}).get("method") or method)
    return "pack" if m.startswith("pack") else "padded"


def batch_table(batches: Sequence[Sequence[int]], lengths: np.ndarray, packed: bool, max_len: int,
                world_size: int = 1, grad_accum: int = 1) -> pd.DataFrame:
    """One row per micro-batch: step, rank, sequences, real tokens, longest, tokens computed (B x longest
    padded, real for a pack), padding, fill of the capacity (max_len per pack row, B x max_len padded),
    attention pairs computed and useful (causal)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    per_step = max(1, world_size * grad_accum)
    rows = []
    for k, b in enumerate(batches):
        ls = lengths[list(b)].astype(np.float64) if len(b) else np.zeros(0)
        real = float(ls.sum())
        longest = float(ls.max()) if len(ls) else 0.0
        useful = float((ls * (ls + 1) / 2).sum())
        if packed:
            computed, pairs, capacity = real, useful, float(max_len)
        else:
            computed, pairs, capacity = len(ls) * longest, len(ls) * longest * (longest + 1) / 2, float(max_len) * len(ls)
        rows.append({"batch": k, "step": k // per_step, "rank": (k % per_step) % max(world_size, 1),
                     "sequences": len(ls), "real tokens": int(real), "longest": int(longest),
                     "tokens computed": int(computed), "padding": int(computed - real), "capacity": int(capacity),
                     "fill": real / capacity if capacity else 0.0,
                     "attention pairs": pairs, "useful attention pairs": useful})
    return pd.DataFrame(rows)


def method_comparison(run: RunDir, lengths: np.ndarray | None = None) -> pd.DataFrame:
    """Per batching method: micro-batches, steps, tokens computed, padding fraction, fill, attention cost
    relative to the useful (block-diagonal causal) pairs, and the idle fraction of data-parallel ranks when
    every micro-batch costs its tokens computed."""
    require(run, "batching")
    if lengths is None:
        lengths = load_token_table(run)["length"].to_numpy()
    rows = []
    for m in list_batch_methods(run):
        stats = load_batch_stats(run, m)
        if not run.batch_plan(m).is_file():
            continue
        batches = load_plan(run, m)
        packed = method_kind(m, stats) == "pack"
        max_len = int(stats.get("max_len") or int(np.max(lengths)))
        ws, ga = int(stats.get("world_size") or 1), int(stats.get("grad_accum") or 1)
        t = batch_table(batches, np.minimum(lengths, max_len), packed, max_len, ws, ga)
        real, computed = int(t["real tokens"].sum()), int(t["tokens computed"].sum())
        per_rank = t.groupby(["step", "rank"])["tokens computed"].sum().unstack(fill_value=0)
        busy, wall = float(per_rank.to_numpy().sum()), float(per_rank.max(axis=1).sum()) * per_rank.shape[1]
        rows.append({
            "method": m, "algo": stats.get("algo") or ("—" if not packed else ""), "layout": "pack" if packed else "padded",
            "micro-batches": len(batches), "steps": int(t["step"].max() + 1) if len(t) else 0,
            "sequences": int(t["sequences"].sum()), "mean seqs/batch": round(float(t["sequences"].mean()), 2) if len(t) else 0.0,
            "real tokens": real, "tokens computed": computed,
            "padding fraction": 1 - real / computed if computed else 0.0,
            "fill": real / int(t["capacity"].sum()) if len(t) and t["capacity"].sum() else 0.0,
            "attention cost ×": float(t["attention pairs"].sum() / max(t["useful attention pairs"].sum(), 1.0)),
            "rank idle fraction": 1 - busy / wall if wall else 0.0,
            "world size": ws, "grad accum": ga, "max_len": max_len,
        })
    return pd.DataFrame(rows)


def default_batch(batches: Sequence[Sequence[int]], lengths: np.ndarray) -> int:
    """A telling micro-batch to open first: the one with the most sequences among those whose longest
    sequence holds 30-85% of its tokens (long and short mixed), else the one with the most sequences."""
    if not batches:
        return 0
    lengths = np.asarray(lengths)

    def score(k: int) -> tuple:
        ls = lengths[list(batches[k])]
        share = ls.max() / max(ls.sum(), 1) if len(ls) else 0
        return (0.3 <= share <= 0.85 and len(ls) > 2, len(ls), -k)

    return max(range(len(batches)), key=score)


def fig_method_comparison(table: pd.DataFrame) -> go.Figure:
    """Side-by-side bars: padding fraction, fill, attention cost and rank idle fraction per method."""
    metrics = [("padding fraction", "Padding (share of computed tokens)", ".0%"),
               ("fill", "Fill of max_len capacity", ".0%"),
               ("attention cost ×", "Attention pairs / useful pairs", ".2f"),
               ("rank idle fraction", "Idle share of rank time", ".0%")]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[m[1] for m in metrics], horizontal_spacing=0.06)
    colors = _colors_for(list(table["method"]))
    for c, (col, _, fmt) in enumerate(metrics, 1):
        fig.add_trace(go.Bar(x=table["method"], y=table[col], marker_color=[colors[m] for m in table["method"]],
                             text=[format(v, fmt) for v in table[col]], textposition="outside", showlegend=False,
                             cliponaxis=False, hovertemplate="%{x}: %{text}<extra>" + col + "</extra>"), 1, c)
        if fmt.endswith("%"):
            fig.update_yaxes(tickformat=".0%", range=[0, max(1.0, float(table[col].max()) * 1.15)], row=1, col=c)
        else:
            fig.update_yaxes(range=[0, float(table[col].max()) * 1.2 + 0.01], row=1, col=c)
    fig.update_layout(template=TEMPLATE, height=330, margin=dict(l=40, r=20, t=60, b=30))
    fig.update_annotations(font_size=12)
    return fig


def fig_batch_fill(t: pd.DataFrame, packed: bool, sort: bool = False) -> go.Figure:
    """Fill of each micro-batch (real tokens / capacity), coloured by how many sequences it holds."""
    t = t.sort_values("fill", ascending=False) if sort else t
    x = np.arange(len(t)) if sort else t["batch"]
    fig = go.Figure(go.Bar(
        x=x, y=t["fill"], marker=dict(color=t["sequences"], colorscale="Viridis", showscale=True,
                                      colorbar=dict(title="seqs", thickness=12)),
        customdata=np.c_[t["batch"], t["sequences"], t["real tokens"], t["padding"]],
        hovertemplate="batch %{customdata[0]}<br>%{customdata[1]} sequences<br>%{customdata[2]} real tokens"
                      "<br>%{customdata[3]} padding<br>fill %{y:.1%}<extra></extra>"))
    fig.update_layout(template=TEMPLATE, height=280, bargap=0.05, yaxis=dict(tickformat=".0%", range=[0, 1.02],
                      title="fill"), xaxis_title=("micro-batches sorted by fill" if sort else "micro-batch (plan order)"),
                      margin=dict(l=50, r=20, t=30, b=40),
                      title=dict(text=f"{'Pack' if packed else 'Batch'} fill, mean {t['fill'].mean():.1%}", font_size=14))
    return fig


# --------------------------------------------------------------------------------------------- loss weights
def _steps(batches: Sequence[Sequence[int]], world_size: int, grad_accum: int) -> list[Sequence[Sequence[int]]]:
    per = max(1, int(world_size) * int(grad_accum))
    return [batches[s:s + per] for s in range(0, len(batches), per)]


def compute_token_weights(batches: Sequence[Sequence[int]], n_target: np.ndarray, loss_norm: str,
                          world_size: int = 1, grad_accum: int = 1) -> np.ndarray:
    """Weight of each target token of every sequence in its optimizer step (index = row of tokens/).

    sequence: 1/(N_i·M), M = sequences in the step; token: 1/T, T = target tokens in the step;
    pack: 1/(N_k·K), N_k = target tokens of the micro-batch, K = micro-batches in the step.
    A sequence with no target tokens (or not in the plan) gets weight 0 and is not counted in M; a
    micro-batch without targets is not counted in K."""
    if loss_norm not in LOSS_NORMS:
        raise ValueError(f"loss_norm={loss_norm!r} is not accepted; use one of {', '.join(LOSS_NORMS)}")
    n_target = np.asarray(n_target, dtype=np.float64)
    w = np.zeros(len(n_target), dtype=np.float64)
    for step in _steps(batches, world_size, grad_accum):
        idx = [i for b in step for i in b]
        if loss_norm == "sequence":
            m = int((n_target[idx] > 0).sum())
            for i in idx:
                w[i] = 1.0 / (n_target[i] * m) if n_target[i] > 0 else 0.0
        elif loss_norm == "token":
            t = n_target[idx].sum()
            for i in idx:
                w[i] = 1.0 / t if t > 0 and n_target[i] > 0 else 0.0
        else:
            k = sum(1 for b in step if n_target[list(b)].sum() > 0)
            for b in step:
                nk = n_target[list(b)].sum()
                for i in b:
                    w[i] = 1.0 / (nk * k) if nk > 0 and n_target[i] > 0 else 0.0
    return w


def sequence_weights(batches: Sequence[Sequence[int]], n_target: np.ndarray, loss_norm: str,
                     world_size: int = 1, grad_accum: int = 1) -> np.ndarray:
    """Per-sequence token weights from ``longalign.batching.token_weights`` when the batching stage provides
    it, else from :func:`compute_token_weights` (the same formula)."""
    try:
        from types import SimpleNamespace

        from longalign.batching import token_weights  # type: ignore[attr-defined]
        plan = SimpleNamespace(batches=[list(b) for b in batches], lengths=np.zeros(len(n_target)),
                               world_size=world_size, grad_accum=grad_accum)
        out = np.asarray(token_weights(plan, np.asarray(n_target), loss_norm, world_size, grad_accum), dtype=np.float64)
        if out.shape == (len(n_target),):
            return out
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        logger.debug("longalign.batching.token_weights not usable here (%s); computing weights locally", exc)
    return compute_token_weights(batches, n_target, loss_norm, world_size, grad_accum)


# --------------------------------------------------------------------------------------------- one micro-batch
@dataclass
class BatchView:
    """One micro-batch ready to draw: its rows (one per padded sequence, or a single pack row) and, per row,
    the sequences laid out left to right with their labels and per-token loss weights."""

    method: str
    batch: int
    packed: bool
    row_len: int                      # columns of the drawn grid (pack length, or longest sequence)
    seq_rows: list[list[int]]         # per row: row indices into tokens/ of its sequences
    labels: dict[int, np.ndarray]
    weights: dict[int, float]         # per sequence: weight of each of its target tokens
    table: pd.DataFrame               # one row per sequence

    def grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sequence slot, target mask, token weight) arrays of shape [rows, row_len]; slot -1 = padding,
        weight NaN on padding and 0 where there is no loss."""
        n = len(self.seq_rows)
        slot = np.full((n, self.row_len), -1, dtype=np.int64)
        target = np.zeros((n, self.row_len), dtype=np.float64)
        weight = np.full((n, self.row_len), np.nan)
        order = {i: s for s, i in enumerate(i for row in self.seq_rows for i in row)}
        for r, row in enumerate(self.seq_rows):
            pos = 0
            for i in row:
                lab = self.labels[i]
                L = len(lab)
                slot[r, pos:pos + L] = order[i]
                t = (lab != IGNORE_INDEX).astype(np.float64)
                target[r, pos:pos + L] = t
                weight[r, pos:pos + L] = t * self.weights.get(i, 0.0)
                pos += L
        return slot, target, weight


def batch_view(run: RunDir, method: str, batch: int, loss_norm: str = "sequence",
               token_table: pd.DataFrame | None = None) -> BatchView:
    """Everything needed to draw micro-batch ``batch`` of ``method``: sequences, labels and loss weights
    (weights use the plan's world size and gradient accumulation from its statistics)."""
    batches = load_plan(run, method)
    if not 0 <= batch < len(batches):
        raise ValueError(f"batch={batch} is out of range; {method} has micro-batches 0..{len(batches) - 1}")
    stats = load_batch_stats(run, method)
    tt = token_table if token_table is not None else load_token_table(run)
    ws, ga = int(stats.get("world_size") or 1), int(stats.get("grad_accum") or 1)
    w = sequence_weights(batches, tt["n_target"].to_numpy(), loss_norm, ws, ga)
    members = list(batches[batch])
    max_len = int(stats.get("max_len") or 0)
    labels = {i: (lab[:max_len] if max_len else lab) for i, lab in zip(members, load_labels(run, members))}
    packed = method_kind(method, stats) == "pack"
    rows = [members] if packed else [[i] for i in members]
    row_len = max(sum(len(labels[i]) for i in row) for row in rows) if rows else 0
    tab = tt.loc[members, ["idx", "length", "n_target", "source", "lang", "task_type"]].copy()
    tab["length"] = [len(labels[i]) for i in members]
    tab.insert(0, "slot", np.arange(len(members)))
    tab["token weight"] = [w[i] for i in members]
    tab["sequence weight (w·N)"] = tab["token weight"] * tab["n_target"]
    return BatchView(method=method, batch=batch, packed=packed, row_len=max(row_len, 1), seq_rows=rows,
                     labels=labels, weights={i: float(w[i]) for i in members}, table=tab.reset_index(drop=True))


def _downsample_cols(a: np.ndarray, cols: int, how: str) -> np.ndarray:
    """Reduce the last axis to at most ``cols`` bins: 'first' keeps each bin's first value, 'mean' averages
    (ignoring NaN; all-NaN bins stay NaN)."""
    n = a.shape[-1]
    if n <= cols:
        return a
    edges = np.linspace(0, n, cols + 1).astype(int)
    if how == "first":
        return a[..., edges[:-1]]
    out = np.full(a.shape[:-1] + (cols,), np.nan)
    for j in range(cols):
        seg = a[..., edges[j]:edges[j + 1]]
        with np.errstate(invalid="ignore"):
            valid = ~np.isnan(seg)
            cnt = valid.sum(axis=-1)
            s = np.where(valid, seg, 0).sum(axis=-1)
            out[..., j] = np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan)
    return out


def _slot_colorscale(n: int) -> list:
    """Discrete colours for slots 0..n-1 and light grey for padding (-1)."""
    colors = ["#E8E8E8"] + [PALETTE[i % len(PALETTE)] for i in range(n)]
    k = len(colors)
    scale = []
    for i, c in enumerate(colors):
        scale += [[i / k, c], [(i + 1) / k, c]]
    return scale


def fig_token_strip(view: BatchView, max_cols: int = 400) -> go.Figure:
    """Token strip: which sequence each position belongs to (grey = padding), where the loss is taken
    (label != -100) and the loss weight of each token, for every row of the micro-batch."""
    slot, target, weight = view.grid()
    n_rows = slot.shape[0]
    with np.errstate(invalid="ignore"):
        weight_t = np.where(target > 0, weight, np.nan)
    s_slot = _downsample_cols(slot, max_cols, "first")
    s_target = _downsample_cols(np.where(slot < 0, np.nan, target), max_cols, "mean")
    s_weight = _downsample_cols(weight_t, max_cols, "mean")
    width = s_slot.shape[-1]
    step = view.row_len / width
    x = (np.arange(width) * step).round().astype(int)
    ylab = [f"row {r}" for r in range(n_rows)] if n_rows > 1 else ["pack"]
    n_seq = sum(len(r) for r in view.seq_rows)
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.09,
                        subplot_titles=["sequence (grey = padding)", "loss mask (share of positions with a label)",
                                        "loss weight per target token"])
    fig.add_trace(go.Heatmap(z=s_slot, x=x, y=ylab, colorscale=_slot_colorscale(n_seq), zmin=-1.5, zmax=n_seq - 0.5,
                             showscale=False, hovertemplate="position %{x}<br>slot %{z}<extra></extra>"), 1, 1)
    fig.add_trace(go.Heatmap(z=s_target, x=x, y=ylab, colorscale=[[0, "#F2F2F2"], [1, "#2F6B9A"]], zmin=0, zmax=1,
                             showscale=False, hovertemplate="position %{x}<br>labelled %{z:.0%}<extra></extra>"), 2, 1)
    wmax = float(np.nanmax(s_weight)) if np.isfinite(s_weight).any() else 1.0
    fig.add_trace(go.Heatmap(z=s_weight, x=x, y=ylab, colorscale="Oranges", zmin=0, zmax=wmax,
                             colorbar=dict(title="w", thickness=10, len=0.3, y=0.12, exponentformat="e"),
                             hovertemplate="position %{x}<br>weight %{z:.3e}<extra></extra>"), 3, 1)
    row_h = 22 if n_rows > 1 else 34
    fig.update_layout(template=TEMPLATE, height=160 + 3 * row_h * n_rows + 60, margin=dict(l=60, r=20, t=40, b=40))
    fig.update_xaxes(title_text="token position", row=3, col=1)
    fig.update_annotations(font_size=12)
    return fig


def attention_mask_grid(row_lens: Sequence[Sequence[int]], cells: int = 200, packed: bool = True,
                        supersample: int = 3) -> tuple[np.ndarray, int]:
    """Downsampled attention mask of a micro-batch; returns (grid, total positions).

    The micro-batch is drawn as one square: a pack is a single row of length sum(l) whose mask is
    block-diagonal and causal; a padded batch is drawn as its B rows one after another, each a block of
    the longest length whose causal part covers only the row's real tokens (the rest of each block is padding
    the kernel still computes). Cell value = share of (query, key) pairs in the cell that are attended;
    -1 marks the computed-but-masked padding area of padded rows (shown greyed). ``row_lens`` is one list of
    sequence lengths per row."""
    if packed:
        lens = [int(l) for row in row_lens for l in row]
        block = int(sum(lens))
        seq_id = np.repeat(np.arange(len(lens)), lens)
        pos_ok = np.ones(block, dtype=bool)
        total = block
    else:
        longest = max(int(sum(r)) for r in row_lens)
        seq_id = np.repeat(np.arange(len(row_lens)), longest)
        pos_ok = np.concatenate([np.arange(longest) < int(sum(r)) for r in row_lens])
        total = longest * len(row_lens)
    n = min(cells, total)
    m = n * supersample
    p = np.minimum((np.arange(m) + 0.5) * total / m, total - 1).astype(np.int64)
    q, k = p[:, None], p[None, :]
    same = seq_id[q] == seq_id[k]
    allowed = same & (k <= q) & pos_ok[q] & pos_ok[k]
    grid = allowed.reshape(n, supersample, n, supersample).mean(axis=(1, 3))
    if not packed:
        wasted = same & ~(pos_ok[q] & pos_ok[k])
        w = wasted.reshape(n, supersample, n, supersample).mean(axis=(1, 3))
        grid = np.where((grid == 0) & (w > 0.5), -1.0, grid)
    return grid, total


def fig_attention_mask(view: BatchView, cells: int = 200) -> go.Figure:
    """Heatmap of the micro-batch's attention mask (see :func:`attention_mask_grid`)."""
    row_lens = [[len(view.labels[i]) for i in row] for row in view.seq_rows]
    grid, total = attention_mask_grid(row_lens, cells=cells, packed=view.packed)
    axis = np.linspace(0, total, grid.shape[0], endpoint=False).round().astype(int)
    scale = [[0.0, "#D9D9D9"], [0.5, "#D9D9D9"], [0.5, "#FFFFFF"], [0.52, "#DCE9F5"], [1.0, "#1F4E79"]]
    fig = go.Figure(go.Heatmap(z=grid, x=axis, y=axis, colorscale=scale, zmin=-1, zmax=1, showscale=False,
                               hovertemplate="query %{y}<br>key %{x}<br>attended %{z:.0%}<extra></extra>"))
    useful = sum(l * (l + 1) / 2 for row in row_lens for l in row)
    if view.packed:
        computed = useful
        title = f"Block-diagonal causal mask of pack {view.batch}: {sum(len(r) for r in row_lens)} sequences, {total} tokens"
    else:
        longest = max(sum(r) for r in row_lens)
        computed = len(row_lens) * longest * (longest + 1) / 2
        title = f"Causal masks of batch {view.batch}: {len(row_lens)} rows padded to {longest} (grey = padding)"
    fig.update_layout(template=TEMPLATE, height=460, width=480, title=dict(text=title, font_size=13),
                      xaxis=dict(title="key position", showgrid=False), margin=dict(l=60, r=20, t=50, b=50),
                      yaxis=dict(title="query position", autorange="reversed", scaleanchor="x", showgrid=False),
                      annotations=[dict(text=f"useful / computed pairs: {useful / computed:.0%}", showarrow=False,
                                        xref="paper", yref="paper", x=1, y=0.02, xanchor="right",
                                        font=dict(size=12, color="#444"))])
    return fig


# --------------------------------------------------------------------------------------------- simulator
def load_simulation(run: RunDir) -> tuple[dict, pd.DataFrame]:
    """(config, table) from batching/simulate.json; one row per method with every recorded number."""
    require(run, "simulate")
    data = read_json(run.batching / "simulate.json", default={}) or {}
    return data.get("config", {}) or {}, simulation_table(data.get("methods", {}) or {})


def simulation_table(methods: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Per-method simulation results as a table, with the speed-up over the slowest method."""
    rows = [{"method": m, **{k: v for k, v in dict(r).items() if not isinstance(v, (list, dict))}}
            for m, r in methods.items()]
    df = pd.DataFrame(rows)
    if len(df) and "total_seconds" in df:
        df["speed-up vs slowest"] = df["total_seconds"].max() / df["total_seconds"]
    return df


def fig_simulation(table: pd.DataFrame) -> go.Figure:
    """Predicted total time and idle fraction per method."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["Predicted time (s)", "Idle fraction of devices"],
                        horizontal_spacing=0.12)
    colors = _colors_for(list(table["method"]))
    c = [colors[m] for m in table["method"]]
    fig.add_trace(go.Bar(x=table["method"], y=table["total_seconds"], marker_color=c, showlegend=False,
                         text=[f"{v:,.1f}" for v in table["total_seconds"]], textposition="outside", cliponaxis=False), 1, 1)
    if "idle_fraction" in table:
        fig.add_trace(go.Bar(x=table["method"], y=table["idle_fraction"], marker_color=c, showlegend=False,
                             text=[f"{v:.0%}" for v in table["idle_fraction"]], textposition="outside",
                             cliponaxis=False), 1, 2)
        fig.update_yaxes(tickformat=".0%", range=[0, 1], row=1, col=2)
    fig.update_yaxes(range=[0, float(table["total_seconds"].max()) * 1.2], row=1, col=1)
    fig.update_layout(template=TEMPLATE, height=330, margin=dict(l=50, r=20, t=50, b=30))
    return fig


def simulate_api():
    """``longalign.batching.simulate`` when the batching stage provides it, else None."""
    try:
        from longalign.batching import simulate  # type: ignore[attr-defined]
    except ImportError:
        return None
    return simulate if callable(simulate) else None


def run_simulation(lengths: Sequence[int] | np.ndarray, *, devices: int, batch_size: int, max_len: int,
                   grad_accum: int = 1, pack_grad_accum: int = 1, algo: str = "ffd", sync: str = "micro",
                   methods: Sequence[str] = BATCH_METHODS) -> tuple[dict, pd.DataFrame]:
    """Simulate every method on ``lengths`` with :func:`longalign.batching.simulate`; (config, table)."""
    simulate = simulate_api()
    if simulate is None:
        raise ValueError("longalign.batching.simulate is not available in this installation; "
                         "the page shows batching/simulate.json instead")
    out = simulate(np.asarray(lengths), tuple(methods), max_len=int(max_len), devices=int(devices),
                   batch_size=int(batch_size), grad_accum=int(grad_accum), pack_grad_accum=int(pack_grad_accum),
                   algo=algo, sync=sync)
    return out.get("config", {}), simulation_table(out.get("methods", {}))


# --------------------------------------------------------------------------------------------- training
def list_train_runs(run: RunDir) -> list[str]:
    """Sub-folders of train/ that hold a metrics.jsonl, standard methods first."""
    base = run.root / "train"
    if not base.is_dir():
        return []
    names = [p.name for p in base.iterdir() if (p / "metrics.jsonl").is_file()]
    return sorted(names, key=lambda m: (BATCH_METHODS.index(m) if m in BATCH_METHODS else len(BATCH_METHODS), m))


def load_metrics(run: RunDir) -> pd.DataFrame:
    """All training metrics of the run, one row per optimizer step, with a ``train`` column (folder name)
    and a ``label`` column "<folder> · <loss_norm>"."""
    require(run, "train")
    frames = []
    for name in list_train_runs(run):
        recs = read_jsonl(run.metrics(name))
        if not recs:
            continue
        df = pd.DataFrame(recs)
        df.insert(0, "train", name)
        frames.append(df)
    if not frames:
        raise MissingArtifact(run, "train", "(metrics files exist but hold no steps yet)")
    df = pd.concat(frames, ignore_index=True)
    if "loss_norm" not in df:
        df["loss_norm"] = ""
    df["loss_norm"] = df["loss_norm"].fillna("")
    df["label"] = df["train"] + np.where(df["loss_norm"] != "", " · " + df["loss_norm"].astype(str), "")
    return df


def step_seconds(g: pd.DataFrame) -> pd.Series:
    """Seconds of each optimizer step of one (step-sorted) run: ``step_s``, or the differences of the
    cumulative ``wall_s`` clock when an older file has no ``step_s``."""
    if "step_s" in g:
        return g["step_s"].astype(float)
    if "wall_s" in g:
        wall = g["wall_s"].astype(float)
        return wall.diff().fillna(wall.iloc[0])
    return pd.Series(np.nan, index=g.index)


def train_summary(run: RunDir, metrics: pd.DataFrame) -> pd.DataFrame:
    """Per training folder: method, loss normalisation, attention backend, steps, final/min loss, mean
    tokens/s, total wall time, padding share."""
    rows = []
    for name, g in metrics.groupby("train", sort=False):
        meta = read_json(run.train(name) / "run_meta.json", default={}) or {}
        g = g.sort_values("step")
        real = g["real_tokens"].sum() if "real_tokens" in g else np.nan
        padded = g["padded_tokens"].sum() if "padded_tokens" in g else np.nan
        wall = float(step_seconds(g).sum())
        rows.append({
            "train": name, "method": meta.get("method", g["method"].iloc[0] if "method" in g else ""),
            "loss norm": meta.get("loss_norm", g["loss_norm"].iloc[0]),
            "attention": meta.get("attention_backend", ""),
            "steps": int(g["step"].max()), "final loss": float(g["loss"].iloc[-1]),
            "min loss": float(g["loss"].min()),
            "tokens/s": float(real / wall) if np.isfinite(real) and np.isfinite(wall) and wall > 0
            else float(g["tokens_per_s"].mean()) if "tokens_per_s" in g else np.nan,
            "wall s": float(wall), "padding share": float(1 - real / padded) if padded and padded > 0 else np.nan,
        })
    return pd.DataFrame(rows)


def smooth(values: pd.Series, window: int) -> pd.Series:
    """Trailing moving average over ``window`` steps (1 = unchanged)."""
    return values.rolling(max(1, int(window)), min_periods=1).mean()


def fig_loss(metrics: pd.DataFrame, y: str = "loss", window: int = 1, x: str = "step") -> go.Figure:
    """Loss curves overlaid, one line per training folder (dashed = a ``pack`` loss normalisation)."""
    if y not in metrics:
        raise ValueError(f"y={y!r} is not a metrics column; use 'loss' or 'loss_token_mean'")
    fig = go.Figure()
    colors = _colors_for(list(dict.fromkeys(metrics["train"])))
    for name, g in metrics.groupby("train", sort=False):
        g = g.sort_values("step")
        dash = "dash" if (g["loss_norm"] == "pack").all() else "solid"
        fig.add_trace(go.Scatter(x=g[x], y=smooth(g[y], window), mode="lines", name=g["label"].iloc[0],
                                 line=dict(color=colors[name], dash=dash, width=2)))
    title = {"loss": "Training loss (each run's own normalisation)", "loss_token_mean": "Token-mean loss"}.get(y, y)
    fig.update_layout(template=TEMPLATE, height=360, title=dict(text=title, font_size=14), xaxis_title=x,
                      yaxis_title=y, legend_title_text="train · loss norm", margin=dict(l=50, r=20, t=50, b=40))
    return fig


def fig_throughput(metrics: pd.DataFrame, window: int = 1) -> go.Figure:
    """Tokens/s per step and cumulative wall time per training folder."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["Tokens per second (real tokens)", "Cumulative wall time (s)"],
                        horizontal_spacing=0.1)
    colors = _colors_for(list(dict.fromkeys(metrics["train"])))
    for name, g in metrics.groupby("train", sort=False):
        g = g.sort_values("step")
        if "tokens_per_s" in g:
            fig.add_trace(go.Scatter(x=g["step"], y=smooth(g["tokens_per_s"], window), mode="lines", name=name,
                                     legendgroup=name, line=dict(color=colors[name])), 1, 1)
        if "wall_s" in g or "step_s" in g:
            fig.add_trace(go.Scatter(x=g["step"], y=step_seconds(g).cumsum(), mode="lines", name=name, legendgroup=name,
                                     showlegend="tokens_per_s" not in g, line=dict(color=colors[name])), 1, 2)
    fig.update_xaxes(title_text="step")
    fig.update_layout(template=TEMPLATE, height=340, margin=dict(l=50, r=20, t=50, b=40))
    return fig


# --------------------------------------------------------------------------------------------- LongBench-Chat
def load_longbench_chat(run: RunDir) -> pd.DataFrame:
    """One row per question: idx, lang, query, reference, prediction, score (mean of judge runs), runs (list),
    judge, prompt_tokens, truncated. Predictions without judgments get score NaN."""
    require(run, "longbench_chat")
    d = run.eval("longbench_chat")
    judg = {int(r["idx"]): r for r in read_jsonl(d / "judgments.jsonl") if "idx" in r}
    preds = {int(r["idx"]): r for r in read_jsonl(d / "predictions.jsonl") if "idx" in r}
    rows = []
    for idx in sorted(set(judg) | set(preds)):
        j, p = judg.get(idx, {}), preds.get(idx, {})
        score = j.get("score")
        rows.append({"idx": idx, "lang": j.get("lang") or p.get("lang") or "", "query": j.get("query") or p.get("query", ""),
                     "reference": j.get("reference", ""), "prediction": j.get("prediction") or p.get("prediction", ""),
                     "score": float(score) if score is not None else np.nan, "runs": j.get("runs", []),
                     "judge": j.get("judge", ""), "prompt_tokens": p.get("prompt_tokens"),
                     "truncated": p.get("truncated")})
    return pd.DataFrame(rows, columns=["idx", "lang", "query", "reference", "prediction", "score", "runs", "judge",
                                       "prompt_tokens", "truncated"])


def load_longbench_chat_summary(run: RunDir) -> dict:
    return read_json(run.eval("longbench_chat") / "summary.json", default={}) or {}


def filter_questions(df: pd.DataFrame, langs: Sequence[str] | None = None, score_range: tuple[float, float] = (1, 10),
                     include_unscored: bool = True, score_col: str = "score") -> pd.DataFrame:
    """Rows whose language is in ``langs`` (all when None/empty) and whose score lies in ``score_range``."""
    out = df
    if langs:
        out = out[out["lang"].isin(list(langs))]
    s = out[score_col]
    keep = s.between(score_range[0], score_range[1]) | (s.isna() & include_unscored)
    return out[keep]


def compare_longbench_chat(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Questions × runs: idx, lang, query and one score column per run (plus Δ when there are two)."""
    base = None
    for name, df in frames.items():
        part = df[["idx", "lang", "query", "score"]].rename(columns={"score": name})
        base = part if base is None else base.merge(part, on=["idx"], how="outer", suffixes=("", "_r")).assign(
            lang=lambda t: t["lang"].fillna(t.get("lang_r")), query=lambda t: t["query"].fillna(t.get("query_r"))
        ).drop(columns=["lang_r", "query_r"])
    if base is None:
        return pd.DataFrame(columns=["idx", "lang", "query"])
    names = list(frames)
    if len(names) == 2:
        base["Δ"] = base[names[1]] - base[names[0]]
    return base.sort_values("idx").reset_index(drop=True)


def longbench_chat_by_lang(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Mean score per language and overall for each run (NaN scores left out), plus unscored counts."""
    rows = []
    for name, df in frames.items():
        row = {"run": name, "overall": df["score"].mean(), "n": int(len(df)), "unscored": int(df["score"].isna().sum())}
        for lang, g in df.groupby("lang"):
            row[lang or "unknown"] = g["score"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def fig_score_distribution(frames: Mapping[str, pd.DataFrame]) -> go.Figure:
    """How many questions got each score (rounded to the nearest integer), one bar group per run."""
    fig = go.Figure()
    colors = _colors_for(list(frames))
    for name, df in frames.items():
        counts = df["score"].dropna().round().astype(int).value_counts().reindex(range(1, 11), fill_value=0)
        fig.add_trace(go.Bar(x=list(counts.index), y=counts.values, name=name, marker_color=colors[name]))
    fig.update_layout(template=TEMPLATE, barmode="group", height=280, xaxis=dict(title="score", dtick=1),
                      yaxis_title="questions", margin=dict(l=50, r=20, t=30, b=40), legend_title_text="run")
    return fig


def question_detail(df: pd.DataFrame, idx: int) -> dict:
    """The row of question ``idx`` as a dict (with its judge runs)."""
    hit = df[df["idx"] == int(idx)]
    if hit.empty:
        raise ValueError(f"question idx={idx} is not in this run; available: {', '.join(map(str, df['idx']))}")
    return hit.iloc[0].to_dict()


# --------------------------------------------------------------------------------------------- needle
def load_needle(run: RunDir) -> pd.DataFrame:
    """Needle results, one row per (context length, depth) probe."""
    require(run, "needle")
    df = pd.DataFrame(read_jsonl(run.eval("needle") / "results.jsonl"))
    if df.empty:
        raise MissingArtifact(run, "needle", "(results.jsonl holds no probes yet)")
    return df


def load_needle_summary(run: RunDir) -> dict:
    return read_json(run.eval("needle") / "summary.json", default={}) or {}


def needle_grid(df: pd.DataFrame, value: str = "judge_score") -> pd.DataFrame:
    """Mean ``value`` per (depth_percent row, context_length column), both sorted ascending."""
    if value not in df:
        raise ValueError(f"value={value!r} is not a needle column; use 'judge_score' or 'recall'")
    return df.pivot_table(index="depth_percent", columns="context_length", values=value, aggfunc="mean").sort_index()


def fig_needle_heatmap(grid: pd.DataFrame, value: str = "judge_score") -> go.Figure:
    """Score by context length (x) and needle depth (y), red (missed) to green (found)."""
    zmin, zmax = (1, 10) if value == "judge_score" else (0, 1)
    fmt = ".0f" if value == "judge_score" else ".2f"
    text = [[("" if pd.isna(v) else format(v, fmt)) for v in row] for row in grid.to_numpy()]
    fig = go.Figure(go.Heatmap(
        z=grid.to_numpy(), x=[f"{int(c):,}" for c in grid.columns], y=[f"{d:g}%" for d in grid.index],
        colorscale=[[0, "#D7191C"], [0.5, "#FDD835"], [1, "#1A9641"]], zmin=zmin, zmax=zmax, text=text,
        texttemplate="%{text}", xgap=2, ygap=2,
        colorbar=dict(title="judge" if value == "judge_score" else "recall", thickness=12),
        hovertemplate="length %{x} tokens<br>depth %{y}<br>" + value + " %{z}<extra></extra>"))
    # one invisible marker per cell carries the hover text and makes a click select the cell (Streamlit reads
    # point selections from scatter traces; a heatmap emits none)
    xs, ys = np.meshgrid([f"{int(c):,}" for c in grid.columns], [f"{d:g}%" for d in grid.index])
    fig.data[0].hoverinfo = "skip"
    fig.add_trace(go.Scatter(x=xs.ravel(), y=ys.ravel(), mode="markers", showlegend=False,
                             customdata=np.asarray(text, dtype=object).ravel(),
                             hovertemplate="length %{x} tokens<br>depth %{y}<br>" + value + " %{customdata}"
                                           "<br>click to open<extra></extra>",
                             marker=dict(size=30, opacity=0.01, color="#000000"),
                             selected=dict(marker=dict(opacity=0.01)), unselected=dict(marker=dict(opacity=0.01))))
    fig.update_layout(template=TEMPLATE, height=400, xaxis_title="context length (tokens)",
                      yaxis=dict(title="needle depth", autorange="reversed"), margin=dict(l=60, r=20, t=30, b=50))
    return fig


def needle_cell(df: pd.DataFrame, context_length: int, depth_percent: float) -> dict:
    """The probe at one (length, depth) cell (the first when repeated)."""
    hit = df[(df["context_length"] == context_length) & (np.isclose(df["depth_percent"].astype(float), float(depth_percent)))]
    if hit.empty:
        raise ValueError(f"no needle probe at context_length={context_length}, depth_percent={depth_percent}")
    return hit.iloc[0].to_dict()


def highlight(text: str, needle: str | None) -> str:
    """HTML of ``text`` with ``needle`` marked (escaped; no mark when absent or not found)."""
    text = text or ""
    if needle and needle in text:
        a, b = text.split(needle, 1)
        return f"{html.escape(a)}<mark><b>{html.escape(needle)}</b></mark>{html.escape(b)}"
    return html.escape(text)


def format_count(n: float) -> str:
    """1234567 -> '1.23M'; 12345 -> '12.3k'."""
    n = float(n)
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:g}" if not math.isnan(n) else "—"
