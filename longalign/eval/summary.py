"""The eval stage's summaries: one per benchmark, each carrying the benchmark's ``summary.json`` content."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longalign.rundir import skipped_lines
from longalign.stage import Summary


@dataclass
class EvalSummary(Summary):
    """A benchmark run: its folder (``<run>/eval/<benchmark>``) and its scores (``summary.json``; None when
    nothing was scored, e.g. predictions without a judge)."""

    benchmark: str
    eval_dir: Path
    scores: dict[str, Any] | None
    summary_path: Path | None = None

    def note_lines(self) -> list[str]:
        return [f"note: {note}" for note in (self.scores or {}).get("notes", [])]


@dataclass
class NeedleSummary(EvalSummary):
    results: Path | None = None
    heatmap: Path | None = None

    def lines(self) -> list[str]:
        s = self.scores or {}
        return [
            f"needle grid {len(s.get('lengths', []))} lengths x {len(s.get('depths', []))} depths, "
            f"{s.get('n')} cells: mean recall {s.get('mean_recall')} (normalised {s.get('mean_recall_norm')}), "
            f"mean judge {s.get('mean_judge')}",
            *self.note_lines(),
            f"results: {self.results}",
            f"heatmap: {self.heatmap}",
        ]


@dataclass
class LongBenchChatSummary(EvalSummary):
    predictions: dict[str, int] = field(default_factory=dict)
    judging: dict[str, Any] | None = None  # runs judged now / before; "stopped": why judging ended early
    predictions_path: Path | None = None
    skipped: dict[str, Any] = field(default_factory=dict)  # bad input records (on_error=skip): BadRecords.to_dict()

    def lines(self) -> list[str]:
        p = self.predictions
        out = skipped_lines(self.skipped)
        out += [
            f"predictions: {p.get('generated')} new, {p.get('done_before')} already done -> {self.predictions_path}"
        ]
        if self.judging is None or self.scores is None:
            return out + ["no --judge given: predictions only"]
        j, s = self.judging, self.scores
        out += [
            f"judge runs: {j['runs_judged']} new, {j['runs_before']} already done",
            f"{s['dataset']}: mean {s['mean']} (1-10) over {s['n_scored']}/{s['n']} cases; by language "
            f"{s['by_lang']}; unparsed {s['unparsed']}; judge tokens {s['tokens']}; cost {s['cost']}",
            *self.note_lines(),
            f"summary: {self.summary_path}",
        ]
        if j.get("stopped"):
            out.append(f"stopped: {j['stopped']}")
        return out

    @property
    def exit_code(self) -> int:
        """1 when judging stopped early (the spending cap, a judge that cannot rate)."""
        return 1 if (self.judging or {}).get("stopped") else 0


@dataclass
class LongBenchSummary(EvalSummary):
    predictions: int = 0
    predictions_path: Path | None = None
    skipped: dict[str, Any] = field(default_factory=dict)  # bad input records (on_error=skip): BadRecords.to_dict()
    stopped: str | None = None  # why judging ended early (the spending cap, a judge that cannot rate)

    def lines(self) -> list[str]:
        out = skipped_lines(self.skipped)
        if self.scores is None:
            return out + [
                f"predictions: {self.predictions} in {self.predictions_path} (no --judge given: nothing judged)"
            ]
        s = self.scores
        out += [f"{t:18s} {v['category']:14s} n={v['n']:4d} score={v['score_0_100']}" for t, v in s["tasks"].items()]
        out += [f"{c:18s} {v['score_0_100']}" for c, v in s["categories"].items()]
        out += [f"overall {s['overall']}", *self.note_lines()]
        return out + ([f"stopped: {self.stopped}"] if self.stopped else [])

    @property
    def exit_code(self) -> int:
        """1 when judging stopped early (the spending cap, a judge that cannot rate)."""
        return 1 if self.stopped else 0


@dataclass
class AgreementSummary(EvalSummary):
    def lines(self) -> list[str]:
        s = self.scores or {}
        out = [
            f"judge {s.get('judge')} on {s.get('n_scored')}/{s.get('n')} human-scored answers: Spearman "
            f"{s.get('spearman')}, Kendall {s.get('kendall')}"
        ]
        out += [
            f"  paper {name}: Spearman {v['spearman']}, Kendall {v['kendall']}"
            for name, v in s.get("paper", {}).items()
        ]
        return out + self.note_lines()
