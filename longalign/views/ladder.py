"""The Ladder page: the synthetic ladder of ``longalign eval ruler`` (tasks x lengths) of one run, its effective
context length, the difference to a second run with intervals, and one sample opened up.

Scores are the stage's own: :func:`longalign.eval.ruler.summarise` over the samples its summary.json summarises
(:func:`~longalign.views.readers.load_ruler`), so a cell here is the cell ``eval ruler`` printed. Two runs are
compared sample by sample where both answered the same samples (same key, expected values, depths, prompt size
and seed: the same seed and settings build the same prompts), with :func:`longalign.eval.intervals.
paired_difference`; a cell whose samples differ falls back to the difference of two independent means
(:func:`~longalign.eval.intervals.independent_difference`). A length's average and the overall difference pool
the pairs of every task (each sample weighs the same; with the usual equal number of samples per cell that is
the stage's equal weight per task).

A sample opens as plain text (HTML-escaped, never Markdown), with the expected values and the asked-for keys
marked, beside the model's answer with the expected values it contains marked, and the score.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from longalign.eval.intervals import pooled_interval, resolved
from longalign.eval.needle import HEATMAP_COLORSCALE
from longalign.eval.ruler import RULER_THRESHOLD, compare, summarise
from longalign.eval.ruler_tasks import TASKS
from longalign.rundir import RunDir
from longalign.views.readers import MissingArtifact, load_ruler, load_ruler_summary
from longalign.views.style import BETTER_COLOR, TEMPLATE, WORSE_COLOR, change_color, format_tokens, signed

TASK_LABELS = {
    "niah_single_noise": "one number in filler text",
    "niah_single_docs": "one number in documents",
    "niah_single_uuid": "one UUID in documents",
    "niah_single_words": "one word in documents",
    "niah_multikey": "one of four keys",
    "niah_multikey_dense": "one key among many needles",
    "niah_multikey_uuid": "one UUID key among many",
    "niah_multivalue": "all four values of a key",
    "niah_multiquery": "four keys at once",
    "vt": "variable tracking",
    "cwe": "common words",
    "fwe": "frequent words",
    "qa_squad": "QA (SQuAD file)",
    "qa_hotpot": "QA (HotpotQA file)",
}
AVERAGE = "average of the tasks"
ALL_LENGTHS = "all lengths"
DIFF_COLORSCALE = [[0, WORSE_COLOR], [0.5, "#F7F7F7"], [1, BETTER_COLOR]]


def task_label(task: str) -> str:
    """A task's name for a reader (the ``--tasks`` name for tasks this page does not know)."""
    return TASK_LABELS.get(task, task)


def length_label(length: int) -> str:
    """1024 -> '1k', 1536 -> '1,536'."""
    return format_tokens(int(length))


# --------------------------------------------------------------------------------------------- one run
@dataclass
class Ladder:
    """One run's ladder: its samples, its summary.json, and the stage's cells over them."""

    name: str
    df: pd.DataFrame
    summary: dict
    tasks: list[str]
    lengths: list[int]
    scores: dict  # longalign.eval.ruler.summarise: cells, by_length, effective_length, threshold
    notes: list[str] = field(default_factory=list)

    @property
    def effective_length(self) -> int | None:
        return self.scores.get("effective_length")

    @property
    def threshold(self) -> float:
        return float(self.scores.get("threshold") or RULER_THRESHOLD)


def ladder_of(run: RunDir, name: str | None = None) -> Ladder:
    """The ladder of ``run`` (a missing artifact raises :class:`MissingArtifact`): the summary's tasks and lengths,
    the cells recomputed by the stage's :func:`~longalign.eval.ruler.summarise` from the samples it summarises."""
    df = load_ruler(run)
    summary = load_ruler_summary(run)
    present = set(df["task"])
    order = {t: i for i, t in enumerate(TASKS)}
    tasks = list(summary.get("tasks") or []) or sorted(present, key=lambda t: (order.get(t, len(order)), t))
    lengths = sorted({int(x) for x in summary.get("lengths") or []} or set(df["length"]))
    threshold = float(summary.get("threshold") or RULER_THRESHOLD)
    scores = summarise(df.to_dict("records"), tasks, lengths, threshold)
    return Ladder(name or run.root.name, df, summary, tasks, lengths, scores, list(summary.get("notes") or []))


def overall(ladder: Ladder) -> dict[str, Any]:
    """The ladder's score over every cell (equal weight per task x length) with its interval (x 100)."""
    parts = [
        (c["score"] / 100.0, c["n"]) for by_len in ladder.scores["cells"].values() for c in by_len.values() if c["n"]
    ]
    return pooled_interval(parts, 100.0)


def interval_text(lo: float | None, hi: float | None, digits: int = 0, sign: bool = False) -> str:
    """'62–97' (or '−3 to +12' for differences); '—' when unknown."""
    if lo is None or hi is None:
        return "—"
    if sign:
        return f"{signed(lo, digits)} to {signed(hi, digits)}"
    return f"{lo:.{digits}f}–{hi:.{digits}f}"


def _cell_text(c: dict | None) -> str:
    if not c or c.get("score") is None:
        return "—"
    return f"{c['score']:.0f} [{interval_text(c['lo'], c['hi'])}]"


def effective_text(ladder: Ladder) -> str:
    """The effective context length in words, with the threshold."""
    eff, thr = ladder.effective_length, ladder.threshold
    if eff is None:
        first = (ladder.scores.get("by_length") or {}).get(str(ladder.lengths[0])) if ladder.lengths else None
        at = f" (the average at {length_label(ladder.lengths[0])} tokens is {first['score']:.1f})" if first else ""
        if first and not first.get("complete", True):
            at = f" (the tasks at {length_label(ladder.lengths[0])} tokens are not all answered yet)"
        return f"no effective length: the average is not above {thr:g} at the shortest length{at}"
    more = "; every length tested holds" if eff == max(ladder.lengths) else ""
    return f"effective length {length_label(eff)} tokens: the average stays above {thr:g} up to there{more}"


def fig_ladder(ladder: Ladder, title: str = "") -> go.Figure:
    """Task x length heatmap of the scores (0–100) with their 95% intervals, the average of the tasks as the last
    row, and the effective length marked by a dashed line after its column; each task cell is clickable (an
    invisible marker carries the selection, as on the Needle page)."""
    xs = [length_label(x) for x in ladder.lengths]
    rows = [*ladder.tasks, AVERAGE]
    ys = [task_label(t) if t != AVERAGE else AVERAGE for t in rows]
    cells = ladder.scores["cells"]
    by_length = ladder.scores["by_length"]
    z, text, hover = [], [], []
    for t in rows:
        row = [by_length.get(str(x)) if t == AVERAGE else cells.get(t, {}).get(str(x)) for x in ladder.lengths]
        z.append([c["score"] if c and c.get("score") is not None else None for c in row])
        text.append([_cell_text(c) for c in row])
        hover.append(
            [
                "no sample"
                if not c or c.get("score") is None
                else f"score {c['score']:.1f}, 95% interval {interval_text(c['lo'], c['hi'], 1)}, "
                + (f"{c['n']} samples" if "n" in c else f"{c.get('cells', 0)} tasks")
                for c in row
            ]
        )
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=xs,
            y=ys,
            colorscale=HEATMAP_COLORSCALE,
            zmin=0,
            zmax=100,
            text=text,
            texttemplate="%{text}",
            xgap=2,
            ygap=2,
            colorbar=dict(title="score", thickness=12),
            hoverinfo="skip",
        )
    )
    gx = [x for t in ladder.tasks for x in xs]
    gy = [task_label(t) for t in ladder.tasks for _ in xs]
    fig.add_trace(
        go.Scatter(
            x=gx,
            y=gy,
            mode="markers",
            showlegend=False,
            customdata=[h for row in hover[:-1] for h in row],
            hovertemplate="%{y} at %{x} tokens<br>%{customdata}<br>click to open a sample<extra></extra>",
            marker=dict(size=28, opacity=0.01, color="#000000"),
        )
    )
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=[AVERAGE] * len(xs),
            mode="markers",
            showlegend=False,
            customdata=hover[-1],
            hovertemplate="average at %{x} tokens<br>%{customdata}<extra></extra>",
            marker=dict(size=28, opacity=0.01, color="#000000"),
        )
    )
    eff = ladder.effective_length
    if eff is not None:
        i = ladder.lengths.index(eff)
        fig.add_shape(
            type="line",
            xref="x",
            yref="paper",
            x0=i + 0.5,
            x1=i + 0.5,
            y0=0,
            y1=1,
            line=dict(color="#222222", width=2, dash="dash"),
        )
    fig.add_annotation(
        xref="paper" if eff is None else "x",
        x=0 if eff is None else ladder.lengths.index(eff) + 0.5,
        xanchor="left" if eff is None else ("right" if eff == max(ladder.lengths) else "center"),
        yref="paper",
        y=1.0,
        yanchor="bottom",
        showarrow=False,
        text=effective_text(ladder),
        font=dict(size=12),
    )
    fig.update_layout(
        template=TEMPLATE,
        title=title or None,
        height=120 + 38 * len(rows),
        xaxis=dict(title="length in tokens (prompt + answer budget)", type="category"),
        yaxis=dict(autorange="reversed", type="category"),
        margin=dict(l=10, r=10, t=60 if title else 40, b=50),
    )
    return fig


def clicked_cell(points: Sequence[dict[str, Any]], ladder: Ladder) -> tuple[str, int] | None:
    """(task, length) of the first selected point of :func:`fig_ladder` (labels mapped back), None when nothing
    or the average row is selected."""
    if not points:
        return None
    tasks = {task_label(t): t for t in ladder.tasks}
    lengths = {length_label(x): x for x in ladder.lengths}
    p = points[0]
    task, length = tasks.get(str(p.get("y"))), lengths.get(str(p.get("x")))
    return (task, length) if task is not None and length is not None else None


def headline(ladder: Ladder, diff: pd.DataFrame | None = None) -> list[tuple[str, str, float | None, str]]:
    """(label, value, change, help) of the page's key figures; ``change`` (this run minus the other, over every
    compared sample) only on the ladder score and only with a comparison."""
    o = overall(ladder)
    change = None
    help_score = "mean over every task x length cell (x 100), 95% interval " + interval_text(o["lo"], o["hi"], 1)
    if diff is not None and not diff.empty:
        row = diff[(diff["task"] == AVERAGE) & (diff["length"] == ALL_LENGTHS)]
        if len(row) and row.iloc[0]["diff"] is not None:
            r = row.iloc[0]
            change = float(r["diff"])
            help_score += (
                f"; difference over {int(r['pairs'])} compared samples {signed(change, 1)}, 95% interval "
                f"{interval_text(r['lo'], r['hi'], 1, sign=True)}"
            )
    eff = ladder.effective_length
    return [
        (
            "effective length",
            f"{length_label(eff)} tokens" if eff is not None else "none",
            None,
            f"longest length up to which the average of the tasks stays above {ladder.threshold:g}",
        ),
        ("ladder score", f"{o['score']:.1f}" if o["score"] is not None else "—", change, help_score),
        ("samples", f"{len(ladder.df):,}", None, "answered samples summarised here"),
        ("tasks × lengths", f"{len(ladder.tasks)} × {len(ladder.lengths)}", None, None),
    ]


def model_line(ladder: Ladder) -> str:
    """Model, seed, numeric path and samples per cell on one line."""
    s = ladder.summary
    parts = [f"model {s.get('model') or (ladder.df['model'].iloc[0] if len(ladder.df) else '—')}"]
    if s.get("seed") is not None:
        parts.append(f"seed {s['seed']}")
    if s.get("samples"):
        parts.append(f"{s['samples']} samples per cell")
    if s.get("precision"):
        parts.append(f"decoded in {s['precision']}")
    return " · ".join(parts)


# --------------------------------------------------------------------------------------------- two runs
def load_ladders(run: RunDir, other: RunDir | None = None) -> tuple[Ladder, Ladder | None, list[str]]:
    """(this run's ladder, the other's or None, warnings): a missing artifact of ``run`` raises, one of ``other``
    becomes a warning; runs decoded on different numeric paths are warned about."""
    a = ladder_of(run)
    b = None
    warnings = []
    if other is not None:
        try:
            b = ladder_of(other)
        except MissingArtifact as exc:
            warnings.append(f"{other.root.name}: {exc}")
    if b is not None:
        w = path_warning(a, b)
        if w:
            warnings.append(w)
    return a, b, warnings


def path_warning(a: Ladder, b: Ladder) -> str | None:
    """A warning when the two runs' answers were decoded on different numeric paths (int4 decoding against
    float32): their difference then mixes the models with arithmetic."""
    pa, pb = a.summary.get("precision"), b.summary.get("precision")
    if not pa or not pb or pa == pb:
        return None
    return (
        f"{a.name} was decoded in {pa} and {b.name} in {pb}: their difference mixes the models with the arithmetic. "
        "Run both with `longalign eval ruler --dtype float32` to compare the models alone."
    )


DIFF_COLUMNS = ["task", "length", "pairs", "a", "b", "diff", "lo", "hi", "paired", "resolved"]


def difference_cells(a: Ladder, b: Ladder) -> pd.DataFrame:
    """This run minus the other, x 100 (the stage's :func:`longalign.eval.ruler.compare`): one row per task x
    length both runs hold, one per length for the average of the tasks (``task`` = :data:`AVERAGE`), and one over
    everything (``length`` = :data:`ALL_LENGTHS`); with ``pairs`` (samples compared pair by pair; 0 when the
    samples differ and the two means are compared), the means of both runs over them, the difference, its 95%
    interval and whether the interval excludes zero."""
    cmp_ = compare(a.df.to_dict("records"), b.df.to_dict("records"))

    def row(task: str, length: Any, d: dict[str, Any]) -> dict[str, Any]:
        return {
            "task": task,
            "length": length,
            "pairs": int(d.get("n") or 0),
            "a": d.get("a"),
            "b": d.get("b"),
            "diff": d.get("diff"),
            "lo": d.get("lo"),
            "hi": d.get("hi"),
            "paired": bool(d.get("paired")),
            "resolved": resolved(d),
        }

    rows = [row(t, int(x), d) for t, by_len in cmp_["cells"].items() for x, d in by_len.items()]
    rows += [row(AVERAGE, int(x), d) for x, d in cmp_["by_length"].items()]
    if cmp_["by_length"]:
        rows.append(row(AVERAGE, ALL_LENGTHS, cmp_["overall"]))
    return pd.DataFrame([r for r in rows if r["diff"] is not None], columns=DIFF_COLUMNS)


def verdict(row: Any, a_name: str, b_name: str) -> str:
    """'no resolved difference' when the interval contains zero, else which run scored higher."""
    if row["diff"] is None or row["lo"] is None:
        return "—"
    if not row["resolved"]:
        return "no resolved difference"
    return f"{a_name} higher" if row["lo"] > 0 else f"{a_name} lower"


def difference_table(diff: pd.DataFrame, a_name: str, b_name: str) -> pd.DataFrame:
    """The average of the tasks per length and over all lengths, for display: compared samples, both runs'
    scores (one decimal), the signed difference, its 95% interval and the verdict."""
    avg = diff[diff["task"] == AVERAGE]
    rows = [
        {
            "length": (f"{length_label(r['length'])} tokens" if r["length"] != ALL_LENGTHS else ALL_LENGTHS),
            "samples compared": int(r["pairs"]) if r["paired"] else "different samples",
            a_name: round(float(r["a"]), 1),
            b_name: round(float(r["b"]), 1),
            "difference": signed(r["diff"], 1),
            "95% interval": interval_text(r["lo"], r["hi"], 1, sign=True),
            "verdict": verdict(r, a_name, b_name),
        }
        for _, r in avg.iterrows()
    ]
    return pd.DataFrame(
        rows, columns=["length", "samples compared", a_name, b_name, "difference", "95% interval", "verdict"]
    )


def style_difference_table(table: pd.DataFrame, diff: pd.DataFrame):
    """:func:`difference_table` with the difference coloured green (this run higher) or red (lower) where its
    interval excludes zero."""
    avg = diff[diff["task"] == AVERAGE].reset_index(drop=True)
    colors = [change_color(float(r["diff"]), "higher") if r["resolved"] else "" for _, r in avg.iterrows()]
    return table.style.apply(lambda col: colors, subset=["difference"]).format(precision=1, na_rep="—")


def fig_difference(diff: pd.DataFrame, a: Ladder, b: Ladder) -> go.Figure:
    """Task x length heatmap of this run minus the other (x 100), green where this run scored higher and red where
    lower, each cell labelled with the difference and its 95% interval; bold where the interval excludes zero."""
    cells = diff[diff["length"] != ALL_LENGTHS]
    tasks = [t for t in a.tasks if t in set(cells["task"])] + [AVERAGE]
    lengths = [x for x in a.lengths if x in set(cells["length"])]
    xs = [length_label(x) for x in lengths]
    ys = [task_label(t) if t != AVERAGE else AVERAGE for t in tasks]
    look = {(r["task"], r["length"]): r for _, r in cells.iterrows()}
    z, text, hover = [], [], []
    for t in tasks:
        zr, tr, hr = [], [], []
        for x in lengths:
            r = look.get((t, x))
            if r is None or r["diff"] is None:
                zr.append(None)
                tr.append("—")
                hr.append("not in both runs")
                continue
            zr.append(float(r["diff"]))
            label = f"{signed(r['diff'], 0)} [{interval_text(r['lo'], r['hi'], 0, sign=True)}]"
            tr.append(f"<b>{label}</b>" if r["resolved"] else label)
            how = f"{int(r['pairs'])} samples compared pair by pair" if r["paired"] else "different samples"
            hr.append(
                f"{a.name} {r['a']:.1f}, {b.name} {r['b']:.1f}: difference {signed(r['diff'], 1)}, 95% interval "
                f"{interval_text(r['lo'], r['hi'], 1, sign=True)} ({how})"
            )
        z.append(zr)
        text.append(tr)
        hover.append(hr)
    span = max([10.0] + [abs(v) for row in z for v in row if v is not None])
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=xs,
            y=ys,
            colorscale=DIFF_COLORSCALE,
            zmin=-span,
            zmax=span,
            zmid=0,
            text=text,
            texttemplate="%{text}",
            customdata=hover,
            hovertemplate="%{y} at %{x} tokens<br>%{customdata}<extra></extra>",
            xgap=2,
            ygap=2,
            colorbar=dict(title="difference", thickness=12),
        )
    )
    fig.update_layout(
        template=TEMPLATE,
        height=100 + 38 * len(tasks),
        xaxis=dict(title="length in tokens (prompt + answer budget)", type="category"),
        yaxis=dict(autorange="reversed", type="category"),
        margin=dict(l=10, r=10, t=30, b=50),
    )
    return fig


def difference_note(diff: pd.DataFrame) -> str | None:
    """Why the difference heatmap is not drawn, or None when it is worth drawing: no common cell, or every
    compared sample scored the same in both runs."""
    cells = diff[diff["length"] != ALL_LENGTHS]
    if cells.empty:
        return "The two runs share no task at any length, so there is nothing to compare."
    if cells["paired"].all() and (cells["diff"].astype(float) == 0).all():
        n = int(diff[(diff["task"] == AVERAGE) & (diff["length"] == ALL_LENGTHS)]["pairs"].sum())
        return (
            f"Every one of the {n:,} compared samples scored the same in both runs, so the difference is zero in "
            "every cell; the table gives its interval."
        )
    return None


# --------------------------------------------------------------------------------------------- one sample
def cell_samples(ladder: Ladder, task: str, length: int) -> pd.DataFrame:
    """The samples of one cell: sample index, where the inserts went (depth %), score and the answer's start."""
    sel = ladder.df[(ladder.df["task"] == task) & (ladder.df["length"] == int(length))]
    return pd.DataFrame(
        {
            "sample": sel["index"].astype(int).tolist(),
            "depth": [depth_text(d) for d in sel["depths"]],
            "score": [round(float(s), 2) for s in sel["score"]],
            "answer": [(o or "").strip().replace("\n", " ")[:90] for o in sel["output"]],
        }
    )


def depth_text(depths: Any) -> str:
    """'37%' or '12%, 58%, 90%'; '—' for none (the list tasks)."""
    ds = [float(d) for d in depths or []]
    return ", ".join(f"{d:.0f}%" for d in ds) if ds else "—"


def sample(ladder: Ladder, task: str, length: int, index: int) -> dict:
    """The record of one sample (ValueError when the run has none there)."""
    df = ladder.df
    hit = df[(df["task"] == task) & (df["length"] == int(length)) & (df["index"] == int(index))]
    if hit.empty:
        raise ValueError(f"{ladder.name} has no sample {index} of {task} at length {length}")
    return hit.iloc[0].to_dict()


def sample_caption(rec: dict) -> str:
    """Where the sample's inserts went, its token counts and how the answer ended, in words."""
    parts = [f"{task_label(rec['task'])} (--tasks {rec['task']}), sample {int(rec['index'])}"]
    depths = depth_text(rec.get("depths"))
    if depths != "—":
        parts.append(f"inserted at depth {depths}")
    if rec.get("prompt_tokens") is not None and rec.get("max_new_tokens") is not None:
        parts.append(f"prompt {int(rec['prompt_tokens']):,} tokens + {int(rec['max_new_tokens']):,} for the answer")
    n = rec.get("completion_tokens")
    if n is not None and n == n:
        ended = " (cut at the answer budget)" if rec.get("finish_reason") == "length" else ""
        parts.append(f"answer {int(n):,} tokens{ended}")
    return " · ".join(parts)


def marks_for(rec: dict) -> list[tuple[str, str]]:
    """The strings to mark in a sample's prompt: (text, "expected") for every expected value and (text, "key")
    for what the question names (the asked-for keys of a needle task, the value of a tracing chain)."""
    info = rec.get("info") or {}
    out = [(str(v), "expected") for v in rec.get("expected") or [] if str(v)]
    keys = list(info.get("queried") or [])
    if info.get("value") is not None and rec.get("task") == "vt":
        keys.append(str(info["value"]))
    out += [(str(k), "key") for k in keys if str(k) and str(k) not in {t for t, _ in out}]
    return out


MARK_STYLE = {
    "expected": "background:#FFE082;font-weight:600;border-radius:3px;padding:0 2px",
    "key": "background:#BBDEFB;border-radius:3px;padding:0 2px",
}


def highlight_html(text: str, marks: Sequence[tuple[str, str]], *, ignore_case: bool = False) -> tuple[str, int]:
    """(HTML of ``text`` with every whole-word occurrence of each mark wrapped in a coloured <mark>, escaped
    everywhere, how many marks were placed). Longer marks win where marks overlap."""
    text = text or ""
    marks = sorted({(t, k) for t, k in marks if t}, key=lambda m: -len(m[0]))
    if not marks:
        return html.escape(text), 0
    kinds = {}
    for t, k in marks:
        kinds.setdefault(t.lower() if ignore_case else t, k)
    pattern = re.compile(
        "|".join(rf"(?<![A-Za-z0-9]){re.escape(t)}(?![A-Za-z0-9])" for t, _ in marks),
        re.IGNORECASE if ignore_case else 0,
    )
    out, last, count = [], 0, 0
    for m in pattern.finditer(text):
        out.append(html.escape(text[last : m.start()]))
        kind = kinds.get(m.group(0).lower() if ignore_case else m.group(0), "expected")
        out.append(f"<mark style='{MARK_STYLE[kind]}'>{html.escape(m.group(0))}</mark>")
        last = m.end()
        count += 1
    out.append(html.escape(text[last:]))
    return "".join(out), count


BOX = (
    "white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:0.82em;line-height:1.45;background:#fafafa;"
    "padding:0.8em;border-radius:6px;border:1px solid #e6e6e6;overflow-y:auto;max-height:{h}px"
)


def prompt_html(user: str, answer_prefix: str, marks: Sequence[tuple[str, str]]) -> tuple[str, int]:
    """(the user turn and the answer prefix as one block of plain text, marked; marks placed)."""
    body, count = highlight_html(user, marks)
    prefix = (
        f"\n\n<span style='color:#666'>[answer starts with] {html.escape(answer_prefix)}</span>"
        if answer_prefix
        else ""
    )
    return f"<div style='{BOX.format(h=520)}'>{body}{prefix}</div>", count


def answer_html(output: str, expected: Sequence[str], answer_prefix: str = "") -> str:
    """The answer as plain text after its (greyed) prefix, with the expected values it contains marked (as the
    scorer finds them: case-insensitive)."""
    body, _ = highlight_html(output or "", [(str(e), "expected") for e in expected], ignore_case=True)
    prefix = f"<span style='color:#666'>{html.escape(answer_prefix)}</span>" if answer_prefix else ""
    return f"<div style='{BOX.format(h=260)}'>{prefix}{body or '—'}</div>"


def expected_table(rec: dict) -> pd.DataFrame:
    """Each expected value and whether the answer holds it (the scorer's case-insensitive substring test)."""
    out = (rec.get("output") or "").lower()
    values = [str(v) for v in rec.get("expected") or []]
    return pd.DataFrame({"expected value": values, "in the answer": [v.lower() in out for v in values]})


def score_line(rec: dict) -> str:
    """'score 0.75: 3 of 4 expected values in the answer' (QA: any of the reference answers)."""
    values = rec.get("expected") or []
    out = (rec.get("output") or "").lower()
    found = sum(str(v).lower() in out for v in values)
    if rec.get("metric") == "any":
        what = "a reference answer is in the answer" if found else "no reference answer is in the answer"
    else:
        what = f"{found} of {len(values)} expected value{'s' if len(values) != 1 else ''} in the answer"
    return f"score {float(rec['score']):.2f}: {what}"
