"""The ablation's result for people: reading ``ablation.json``, the summary the command prints, the README and
notebook tables, and the figure of the held-out curves."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longalign.recipes.ablation.config import FIGURE_FILE, FIGURE_PNG, SCHEMA_VERSION
from longalign.recipes.results import load_versioned_json
from longalign.stage import Summary

log = logging.getLogger(__name__)


def load_result(path: str | Path) -> dict[str, Any]:
    """Read an ``ablation.json``; a clear error when it is missing or of another schema."""
    return load_versioned_json(path, SCHEMA_VERSION, "python benchmarks/ablation.py", "python benchmarks/ablation.py")


TABLE_COLUMNS = (
    ("needle_exact_match", "needle exact match", 3),
    ("needle_key_phrase_recall", "needle key-phrase recall", 3),
    ("needle_loss", "needle loss", 3),
    ("needle_passcode_loss", "passcode-token loss", 3),
    ("needle_template_loss", "template loss", 3),
    ("needle_weight_share", "needle share of the step weight", 3),
    ("continuation_loss", "continuation loss", 3),
    ("mixed_loss", "mixed loss", 3),
    ("train_s", "train s", 1),
    ("robust_train_s", "steps x median step s", 1),
    ("tokens_per_s", "tokens/s", 0),
    ("padding_fraction", "padding", 3),
    ("steps", "steps", 0),
)


def fmt_spread(s: dict[str, Any] | None, digits: int = 3) -> str:
    """``mean ± std`` of a :func:`spread` (``n/a`` when empty)."""
    if not s or s.get("mean") is None:
        return "n/a"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def table_rows(result: dict[str, Any], *, buckets: bool = False) -> list[dict[str, str]]:
    """One row per arm of formatted ``mean ± std`` cells (the README table); ``buckets`` adds the held-out
    loss per length bucket; the time-to-quality speed-up vs naive closes each row."""
    rows = []
    for arm, metrics in result["table"].items():
        row = {"arm": arm}
        for key, label, digits in TABLE_COLUMNS:
            row[label] = fmt_spread(metrics.get(key), digits)
        if buckets:
            for key in sorted(k for k in metrics if k.startswith("loss[")):
                row[key] = fmt_spread(metrics[key])
        ttq = result.get("time_to_quality", {}).get(arm, {})
        row["time-to-quality x naive"] = fmt_spread(ttq.get("time_to_quality_speedup"), 2)
        row["epoch time x naive"] = fmt_spread(ttq.get("epoch_time_speedup"), 2)
        rows.append(row)
    return rows


def speed_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Measured time-to-quality and epoch-time speed-ups vs naive beside the simulator's epoch-time
    prediction for the same lengths (per batching method; the simulator does not model the loss)."""
    sims = result.get("simulated", {})
    rows = []
    for arm, t in result.get("time_to_quality", {}).items():
        method = result["arms"][arm]["method"]
        row: dict[str, Any] = {
            "arm": arm,
            "time-to-quality x naive": fmt_spread(t["time_to_quality_speedup"], 2),
            "reached naive's final loss": f"{t['reached']}/{len(result['config']['seeds'])}",
            "epoch time x naive": fmt_spread(t["epoch_time_speedup"], 2),
            "time-to-quality x naive, steps x median step": fmt_spread(t.get("robust_time_to_quality_speedup"), 2),
            "epoch time x naive, steps x median step": fmt_spread(t.get("robust_epoch_time_speedup"), 2),
            "needle time-to-quality x naive, steps x median step": fmt_spread(
                t.get("robust_needle_time_to_quality_speedup"), 2
            ),
        }
        for label, sim in sims.items():
            row[f"simulated x naive ({label})"] = round(sim["speedup_vs_naive"].get(method, float("nan")), 2)
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub-flavoured markdown table of dict rows (the keys of the first row are the columns)."""
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def figure(result: dict[str, Any]):
    """Plotly figure: needle exact match, needle loss and continuation loss against training seconds, one
    colour per arm, one line per seed."""
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=("needle exact match", "needle held-out loss", "continuation held-out loss"),
        horizontal_spacing=0.07,
    )
    colours = qualitative.Plotly
    arms = result["config"]["arms"]
    for i, arm in enumerate(arms):
        for j, run in enumerate(r for r in result["runs"] if r["arm"] == arm):
            xs = [p["train_s"] for p in run["curve"]]
            series = (
                [p["exact_match"] for p in run["curve"]],
                [p["loss"].get("needle") for p in run["curve"]],
                [p["loss"].get("continuation") for p in run["curve"]],
            )
            for col, ys in enumerate(series, start=1):
                fig.add_scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers",
                    name=arm,
                    legendgroup=arm,
                    showlegend=(j == 0 and col == 1),
                    line={"color": colours[i % len(colours)], "width": 1.5},
                    marker={"size": 4},
                    hovertemplate=f"{arm} seed {run['seed']}<br>%{{x:.1f}} s: %{{y:.3f}}<extra></extra>",
                    row=1,
                    col=col,
                )
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="training seconds (evaluation excluded)", row=1, col=col)
    fig.update_layout(
        title="Batching x loss weighting on a needle / continuation mix (one line per seed)",
        height=430,
        width=1300,
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def write_figure(result: dict[str, Any], out: Path) -> dict[str, str | None]:
    fig = figure(result)
    html = out / FIGURE_FILE
    fig.write_html(str(html), include_plotlyjs=True)
    png = None
    try:
        import kaleido  # noqa: F401

        fig.write_image(str(out / FIGURE_PNG), scale=1)
        png = str(out / FIGURE_PNG)
    except Exception as exc:  # kaleido missing or without a browser: HTML only
        log.info("no PNG of the ablation figure (%s)", exc)
    return {"html": str(html), "png": png}


@dataclass
class AblationSummary(Summary):
    result_path: Path
    figure_path: Path | None
    total_s: float
    table: dict[str, Any] = field(default_factory=dict)
    time_to_quality: dict[str, Any] = field(default_factory=dict)
    loss_weighting_effect: dict[str, Any] = field(default_factory=dict)
    simulated: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        def fmt(s: dict[str, Any], digits: int = 3) -> str:
            return "n/a" if s.get("mean") is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"

        out = [f"{'arm':<15}{'needle EM':>16}{'needle loss':>16}{'contin. loss':>16}{'train s':>14}{'TTQ x':>14}"]
        for arm, m in self.table.items():
            ttq = self.time_to_quality.get(arm, {}).get("time_to_quality_speedup", {})
            out.append(
                f"{arm:<15}{fmt(m['needle_exact_match']):>16}{fmt(m['needle_loss']):>16}"
                f"{fmt(m['continuation_loss']):>16}{fmt(m['train_s'], 1):>14}{fmt(ttq, 2):>14}"
            )
        for name, e in self.loss_weighting_effect.items():
            out.append(
                f"{name}: exact match {fmt(e['exact_match_difference'])}, "
                f"needle loss {fmt(e['needle_loss_difference'])}"
            )
        fitted = self.simulated.get("fitted_to_runs") or self.simulated.get("flop_based") or {}
        if fitted:
            sp = ", ".join(f"{k} {v:.2f}x" for k, v in fitted["speedup_vs_naive"].items())
            out.append(f"simulator (epoch time vs naive): {sp}")
        out.append(f"wrote {self.result_path}" + (f" and {self.figure_path}" if self.figure_path else ""))
        out.append(f"total {self.total_s:.0f} s")
        return out
