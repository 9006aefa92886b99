"""The LongBench-Chat page: judged answers per question, for one run or two side by side.

A question's score is the mean over the judge's runs that the eval stage recorded in judgments.jsonl (it leaves
an unparsed judge reply out); a question without a score, judged or not, stays NaN and is counted apart
instead of as 0. The run's figure is the mean over scored questions; with the benchmark's 50 questions one
question moves it by 0.02-0.18.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from longalign.rundir import RunDir
from longalign.views.readers import MissingArtifact, load_longbench_chat
from longalign.views.style import TEMPLATE, colors_for


def load_frames(run: RunDir, other: RunDir | None = None) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """({run name: questions}, warnings): ``run``'s questions (a missing artifact raises) and ``other``'s when
    it has any (else a warning naming what is missing)."""
    frames = {run.root.name: load_longbench_chat(run)}
    warnings = []
    if other is not None:
        try:
            frames[other.root.name] = load_longbench_chat(other)
        except MissingArtifact as exc:
            warnings.append(f"{other.root.name}: {exc}")
    return frames, warnings


def caption(df: pd.DataFrame, summary: Mapping) -> str:
    """Model, judge, dataset and the summary's notes on one line."""
    judge = summary.get("judge") or (df["judge"].iloc[0] if len(df) else "—")
    return f"model {summary.get('model', '—')} · judge {judge} · dataset {summary.get('dataset', '—')}" + "".join(
        f" · {n}" for n in summary.get("notes", [])
    )


def score_text(score: float) -> str:
    """'unscored' for NaN, else one decimal."""
    return "unscored" if score != score else f"{score:.1f}"


def filter_questions(
    df: pd.DataFrame,
    langs: Sequence[str] | None = None,
    score_range: tuple[float, float] = (1, 10),
    include_unscored: bool = True,
    score_col: str = "score",
) -> pd.DataFrame:
    """Rows whose language is in ``langs`` (all when None/empty) and whose score lies in ``score_range``."""
    out = df
    if langs:
        out = out[out["lang"].isin(list(langs))]
    s = out[score_col]
    keep = s.between(score_range[0], score_range[1]) | (s.isna() & include_unscored)
    return out[keep]


CHANGE = "change"


def compare_longbench_chat(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Questions × runs: idx, lang, query and one score column per run, plus, when there are two, ``change``:
    the first run's score minus the second's (positive = the first run did better)."""
    base = None
    for name, df in frames.items():
        part = df[["idx", "lang", "query", "score"]].rename(columns={"score": name})
        base = (
            part
            if base is None
            else base.merge(part, on=["idx"], how="outer", suffixes=("", "_r"))
            .assign(
                lang=lambda t: t["lang"].fillna(t.get("lang_r")), query=lambda t: t["query"].fillna(t.get("query_r"))
            )
            .drop(columns=["lang_r", "query_r"])
        )
    if base is None:
        return pd.DataFrame(columns=["idx", "lang", "query"])
    names = list(frames)
    if len(names) == 2:
        base[CHANGE] = base[names[0]] - base[names[1]]
    return base.sort_values("idx").reset_index(drop=True)


def style_comparison(table: pd.DataFrame):
    """The question table for display: scores with one decimal, the change signed with two and coloured green
    where the first run scored higher, red where lower."""
    from longalign.views.style import change_color, signed

    styler = table.style.format(precision=1, na_rep="—")
    if CHANGE in table:
        styler = styler.format(lambda v: signed(v, 1), subset=[CHANGE]).map(
            lambda v: change_color(v, "higher"), subset=[CHANGE]
        )
    return styler


def answer_note(row: Mapping) -> str:
    """How the answer was produced: prompt tokens (and whether the prompt was cut to fit), answer tokens, and
    whether the answer stopped at max_new_tokens."""
    parts = []
    if row.get("prompt_tokens") is not None:
        parts.append(f"prompt {int(row['prompt_tokens']):,} tokens" + (" (cut to fit)" if row.get("truncated") else ""))
    if row.get("completion_tokens") is not None and row.get("completion_tokens") == row.get("completion_tokens"):
        parts.append(f"answer {int(row['completion_tokens']):,} tokens")
    if row.get("cut"):
        limit = row.get("max_new_tokens")
        parts.append(
            "the answer was cut off at the token limit"
            + (f" (max_new_tokens {int(limit):,})" if limit is not None and limit == limit else "")
        )
    return " · ".join(parts) or "—"


def judge_run_view(r: Mapping) -> tuple[str, str, pd.DataFrame | None]:
    """(title, note, distribution) of one judge run: the score it gave; for a judge scored by its rating
    probabilities, what the score is (the expected rating) and the probabilities behind it."""
    score = r.get("score")
    head = f"judge run {r.get('run', '?')}: " + (f"score {float(score):.2f}" if score is not None else "no score")
    tokens = (
        f"{r.get('prompt_tokens'):,} prompt / {r.get('completion_tokens'):,} reply tokens"
        if isinstance(r.get("prompt_tokens"), int) and isinstance(r.get("completion_tokens"), int)
        else ""
    )
    dist = r.get("distribution")
    if isinstance(dist, Mapping) and dist:
        table = pd.DataFrame(
            sorted(((int(k), float(v)) for k, v in dist.items()), key=lambda kv: kv[0]),
            columns=["rating", "probability"],
        )
        most = r.get("argmax", int(table.loc[table["probability"].idxmax(), "rating"]))
        note = (
            f"The score is the expected rating under the judge's probabilities for each rating (most likely: "
            f"{most}); the reply below is the rating the judge wrote."
        )
        return head, " · ".join(x for x in (note, tokens) if x), table
    if score is None:
        return head, " · ".join(x for x in ("the judge's reply held no rating", tokens) if x), None
    return head, tokens, None


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
    colors = colors_for(list(frames))
    top = 0
    for name, df in frames.items():
        counts = df["score"].dropna().round().astype(int).value_counts().reindex(range(1, 11), fill_value=0)
        top = max(top, int(counts.max()))
        fig.add_trace(go.Bar(x=list(counts.index), y=counts.values, name=name, marker_color=colors[name]))
    fig.update_layout(
        template=TEMPLATE,
        barmode="group",
        height=280,
        xaxis=dict(title="score", dtick=1),
        yaxis=dict(title="questions", rangemode="tozero", tickformat=",d", dtick=1 if top <= 10 else None),
        margin=dict(l=50, r=20, t=30, b=40),
        legend_title_text="run",
    )
    return fig


def question_detail(df: pd.DataFrame, idx: int) -> dict:
    """The row of question ``idx`` as a dict (with its judge runs)."""
    hit = df[df["idx"] == int(idx)]
    if hit.empty:
        raise ValueError(f"question idx={idx} is not in this run; available: {', '.join(map(str, df['idx']))}")
    return hit.iloc[0].to_dict()


def mean_score(df: pd.DataFrame) -> float:
    """Mean over scored questions (NaN when none is scored)."""
    s = df["score"]
    return float(s.mean()) if s.notna().any() else np.nan
