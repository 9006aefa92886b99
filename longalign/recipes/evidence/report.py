"""The evidence result for people: reading ``evidence.json``, the summary the command prints and the markdown
tables of the README and the notebook."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longalign.recipes.evidence.config import SCHEMA_VERSION
from longalign.recipes.results import load_versioned_json
from longalign.stage import Summary


def load_result(path: str | Path) -> dict[str, Any]:
    """Read an ``evidence.json``; a clear error when it is missing or of another schema."""
    return load_versioned_json(
        path, SCHEMA_VERSION, "longalign experiment evidence --out DIR", "longalign experiment evidence"
    )


def pct(x: dict[str, Any] | None, key: str = "mean") -> str:
    """``mean [lo, hi]`` in percent (points for a difference)."""
    if not x:
        return "n/a"
    return f"{100 * x[key]:.1f} [{100 * x['lo']:.1f}, {100 * x['hi']:.1f}]"


def num(x: dict[str, Any] | None, key: str = "mean", digits: int = 3) -> str:
    if not x:
        return "n/a"
    return f"{x[key]:.{digits}f} [{x['lo']:.{digits}f}, {x['hi']:.{digits}f}]"


def family_names(result: dict[str, Any]) -> list[str]:
    """The tasks, then the family kinds that pool more than one task, then ``all``; with several lengths, then
    each length and each task at each length."""
    fams = list(result["families"])
    tasks_of: dict[str, set[str]] = {}
    for s in result["samples"]:
        tasks_of.setdefault(f"kind:{s['family']}", set()).add(s["task"])
    kinds = [f for f in fams if f.startswith("kind:") and len(tasks_of.get(f, ())) > 1]
    tasks = [f for f in fams if ":" not in f and "@" not in f and f != "all"]
    lengths = [f for f in fams if f.startswith("length:")]
    return tasks + kinds + ["all"] + lengths + [f for f in fams if "@" in f]


def accuracy_table(result: dict[str, Any]) -> list[str]:
    """Markdown: one row per model and family: accuracy, its difference to the base (points), answer loss."""
    base_diffs = {k.split(" - ")[0]: v for k, v in result["differences"].items() if k.endswith(" - base")}
    out = [
        "| model | task family | n | accuracy % [95% CI] | minus base, points [95% CI] | answer loss [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for model, fams in result["accuracy"].items():
        for fam in family_names(result):
            a = fams[fam]
            d = base_diffs.get(model, {}).get("accuracy", {}).get(fam)
            n = f"{a['samples']} x {a['seeds']}"
            diff = pct(d, "diff") + (" *" if d and d["resolved"] else "") if d else "-"
            out.append(f"| {model} | {fam} | {n} | {pct(a)} | {diff} | {num(result['answer_loss'][model][fam])} |")
    return out


def weighting_table(result: dict[str, Any]) -> list[str]:
    """Markdown: the loss-weighting differences (accuracy points and answer loss) per family."""
    names = [k for k in result["differences"] if not k.endswith(" - base")]
    out = [
        "| difference | task family | accuracy, points [95% CI] | answer loss [95% CI] |",
        "|---|---|---|---|",
    ]
    for name in names:
        d = result["differences"][name]
        for fam in family_names(result):
            acc = d["accuracy"][fam]
            out.append(
                f"| {name} | {fam} | {pct(acc, 'diff')}{' *' if acc['resolved'] else ''} | "
                f"{num(d['answer_loss'][fam], 'diff')} |"
            )
    return out


def short_table(result: dict[str, Any]) -> list[str]:
    """Markdown: held-out short-chat loss per model and its difference to the base."""
    s = result["short_loss"]
    out = ["| model | short-chat loss [95% CI] | minus base [95% CI] |", "|---|---|---|"]
    for model, x in s["models"].items():
        d = s["differences"].get(f"{model} - base")
        out.append(f"| {model} | {num(x)} | {num(d, 'diff') + (' *' if d['resolved'] else '') if d else '-'} |")
    return out


def time_table(result: dict[str, Any]) -> list[str]:
    """Markdown: per arm, mean training seconds and the seeds that reached the base's and the reference's score."""
    t = result["time"]
    out = [
        f"| arm | train s (mean of seeds) | reached base accuracy ({100 * t['base_accuracy']:.1f}%) at s | "
        f"reached {t['reference']}'s final accuracy (same seed) at s |",
        "|---|---|---|---|",
    ]

    def cell(runs: list[dict[str, Any]], key: str) -> str:
        return ", ".join("not reached" if r[key] is None else f"{r[key]:.0f}" for r in runs)

    for arm, a in t["arms"].items():
        base, ref = cell(a["runs"], "to_base_s"), cell(a["runs"], "to_reference_s")
        out.append(f"| {arm} | {a['mean_train_s']:.0f} | {base} | {ref} |")
    return out


def markdown(result: dict[str, Any]) -> str:
    """Every table of the result, as the README shows them."""
    parts = [accuracy_table(result), weighting_table(result), short_table(result), time_table(result)]
    return "\n\n".join("\n".join(p) for p in parts) + "\n"


@dataclass
class EvidenceSummary(Summary):
    result_path: Path
    total_s: float
    accuracy: dict[str, Any] = field(default_factory=dict)
    differences: dict[str, Any] = field(default_factory=dict)
    short_loss: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_result(cls, path: Path, result: dict[str, Any]) -> EvidenceSummary:
        return cls(
            path, result["seconds"]["total_this_call"], result["accuracy"], result["differences"], result["short_loss"]
        )

    def lines(self) -> list[str]:
        out = [f"{'model':<16}{'all tasks: accuracy % [95% CI]':>34}{'short-chat loss [95% CI]':>30}"]
        for model, fams in self.accuracy.items():
            out.append(f"{model:<16}{pct(fams['all']):>34}{num(self.short_loss['models'][model]):>30}")
        for name, d in self.differences.items():
            acc = d["accuracy"]["all"]
            out.append(
                f"{name}: accuracy {pct(acc, 'diff')} points{' (resolved)' if acc['resolved'] else ''}, "
                f"answer loss {num(d['answer_loss']['all'], 'diff')}"
            )
        out.append(f"result: {self.result_path} ({self.total_s:.0f} s this call)")
        return out
