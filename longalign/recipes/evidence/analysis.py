"""The evidence experiment's analysis, from the per-sample records alone: accuracies with 95% bootstrap intervals
over samples x seeds, paired differences, the held-out short-chat loss, and training time to a target score.

Bootstrap. A model's scores form a matrix ``seeds x samples`` (the base model is one deterministic row). One
replicate draws the samples with replacement within each task (so every task keeps its weight in a pooled
mean) and the seeds with replacement, and takes the mean of the drawn cells. A difference of two models draws
the same samples for both (every model answers the same samples); two trained arms share their seed draw too
(seed ``s`` of either arm saw the same batch order), a trained arm against the base draws only its own seeds.
The interval is the 2.5 and 97.5 percentiles of the replicates; the point value is the plain mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def strata_of(labels: Sequence[str]) -> list[np.ndarray]:
    """Index arrays of the positions of each distinct label, in order of first appearance."""
    order = list(dict.fromkeys(labels))
    arr = np.asarray(labels, dtype=object)
    return [np.flatnonzero(arr == lab) for lab in order]


def _draw_samples(rng: np.random.Generator, strata: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([rng.choice(s, size=len(s), replace=True) for s in strata])


def bootstrap_mean(
    scores: Any, strata: Sequence[np.ndarray] | None = None, n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Mean of a ``seeds x samples`` matrix with its 95% bootstrap interval (see the module docstring)."""
    m = np.atleast_2d(np.asarray(scores, dtype=float))
    strata = list(strata) if strata is not None else [np.arange(m.shape[1])]
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        s = rng.integers(0, m.shape[0], m.shape[0])
        reps[b] = m[s][:, _draw_samples(rng, strata)].mean()
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return {"mean": float(m.mean()), "lo": float(lo), "hi": float(hi), "samples": m.shape[1], "seeds": m.shape[0]}


def bootstrap_diff(
    a: Any,
    b: Any,
    strata: Sequence[np.ndarray] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    paired_seeds: bool = False,
) -> dict[str, Any]:
    """``mean(a) - mean(b)`` of two ``seeds x samples`` matrices over the same samples, with its 95% bootstrap
    interval: samples drawn once for both; seeds drawn once for both when ``paired_seeds`` (same seed count),
    else each matrix draws its own. ``resolved`` is whether the interval excludes 0."""
    ma = np.atleast_2d(np.asarray(a, dtype=float))
    mb = np.atleast_2d(np.asarray(b, dtype=float))
    if ma.shape[1] != mb.shape[1]:
        raise ValueError(f"the two score matrices cover {ma.shape[1]} and {mb.shape[1]} samples; they must match")
    if paired_seeds and ma.shape[0] != mb.shape[0]:
        raise ValueError(f"paired seeds need the same seed count, got {ma.shape[0]} and {mb.shape[0]}")
    strata = list(strata) if strata is not None else [np.arange(ma.shape[1])]
    rng = np.random.default_rng(seed)
    reps = np.empty(n_boot)
    for b_ in range(n_boot):
        idx = _draw_samples(rng, strata)
        sa = rng.integers(0, ma.shape[0], ma.shape[0])
        sb = sa if paired_seeds else rng.integers(0, mb.shape[0], mb.shape[0])
        reps[b_] = ma[sa][:, idx].mean() - mb[sb][:, idx].mean()
    lo, hi = np.percentile(reps, [2.5, 97.5])
    diff = float(ma.mean() - mb.mean())
    return {
        "diff": diff,
        "lo": float(lo),
        "hi": float(hi),
        "resolved": bool(lo > 0 or hi < 0),
        "samples": ma.shape[1],
        "samples_for_resolution": samples_to_resolve(diff, float(lo), float(hi), ma.shape[1]),
    }


def samples_to_resolve(diff: float, lo: float, hi: float, n: int) -> int | None:
    """Samples per task at which an interval of this width, shrinking as ``1/sqrt(n)``, would just exclude 0 for
    a true difference of ``diff``: ``n * (half-width / |diff|)^2``; None when ``diff`` is 0."""
    if diff == 0:
        return None
    half = (hi - lo) / 2
    return max(n, math.ceil(n * (half / abs(diff)) ** 2))


def model_matrix(
    evals: Sequence[dict[str, Any]], keys: Sequence[str], field: str = "correct", *, rows: str = "rows"
) -> np.ndarray:
    """``seeds x items`` matrix of ``field`` from each evaluation's ``rows`` (items in the order of ``keys``;
    ``keys`` are sample keys for ``rows="rows"``, chat indices for ``rows="short"``)."""
    out = []
    for ev in evals:
        ident = "key" if rows == "rows" else "index"
        by_key = {r[ident]: r for r in ev[rows]}
        missing = [k for k in keys if k not in by_key]
        if missing:
            raise ValueError(f"an evaluation lacks {len(missing)} items (first: {missing[0]}); re-run its arm")
        out.append([float(by_key[k][field]) for k in keys])
    return np.asarray(out, dtype=float)


def comparisons(arms: Sequence[str]) -> list[tuple[str, str, bool]]:
    """(a, b, paired seeds) of the reported differences: every arm - base; pack+sequence - pack+pack and
    pack+sequence - pack+token where those arms ran (paired over the seeds both finished)."""
    out = [(a, "base", False) for a in arms]
    for other in ("pack+pack", "pack+token"):
        if "pack+sequence" in arms and other in arms:
            out.append(("pack+sequence", other, True))
    return out


def families(samples: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    """Sample positions of each task, of each family kind (trained, transfer) and of ``all``; with more than one
    length, also of each length (``length:8192``) and each task at each length (``niah_multikey@8192``)."""
    out: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        for name in (s["task"], f"kind:{s['family']}", "all"):
            out.setdefault(name, []).append(i)
    if len({s.get("length") for s in samples}) > 1:
        for i, s in enumerate(samples):
            out.setdefault(f"length:{s['length']}", []).append(i)
        for i, s in enumerate(samples):
            out.setdefault(f"{s['task']}@{s['length']}", []).append(i)
    return out


def analyse(
    samples: Sequence[dict[str, Any]],
    evals: dict[str, list[dict[str, Any]]],
    arms: Sequence[str],
    n_boot: int,
    reference: str,
) -> dict[str, Any]:
    """The result's analysis: ``accuracy`` and ``answer_loss`` per model and family, ``differences`` (accuracy
    and answer loss) per comparison and family, ``short_loss`` per model and its difference to the base, and
    ``time`` (training seconds to the base's score and to the reference arm's final score)."""
    keys = [s["key"] for s in samples]
    fams = families(samples)
    models = ["base", *arms]
    mats = {m: {f: model_matrix(evals[m], keys, f) for f in ("correct", "answer_loss")} for m in models}
    accuracy: dict[str, dict[str, Any]] = {m: {} for m in models}
    answer_loss: dict[str, dict[str, Any]] = {m: {} for m in models}
    differences: dict[str, dict[str, Any]] = {}
    # (a, b, paired) -> the two matrices, over the seeds both finished when the seeds are paired
    pairs: dict[tuple[str, str, bool], tuple[dict[str, Any], ...]] = {}
    for a, b, paired in comparisons(arms):
        common = sorted({e["seed"] for e in evals[a]} & {e["seed"] for e in evals[b]}) if paired else None
        if common == []:
            continue
        pick = {m: [e for e in evals[m] if common is None or e["seed"] in common] for m in (a, b)}
        pairs[(a, b, paired)] = tuple(
            {f: model_matrix(pick[m], keys, f) for f in ("correct", "answer_loss")} for m in (a, b)
        )
    for j, (fam, pos) in enumerate(fams.items()):
        strata = strata_of([samples[i]["task"] for i in pos])
        for m in models:
            accuracy[m][fam] = bootstrap_mean(mats[m]["correct"][:, pos], strata, n_boot, seed=j)
            answer_loss[m][fam] = bootstrap_mean(mats[m]["answer_loss"][:, pos], strata, n_boot, seed=j)
        for (a, b, paired), (ma, mb) in pairs.items():
            d = differences.setdefault(f"{a} - {b}", {"accuracy": {}, "answer_loss": {}})
            for field, out in (("correct", "accuracy"), ("answer_loss", "answer_loss")):
                d[out][fam] = bootstrap_diff(
                    ma[field][:, pos], mb[field][:, pos], strata, n_boot, seed=j, paired_seeds=paired
                )
    return {
        "families": {f: len(p) for f, p in fams.items()},
        "accuracy": accuracy,
        "answer_loss": answer_loss,
        "differences": differences,
        "short_loss": short_loss(evals, arms, n_boot),
        "time": time_to_targets(evals, arms, reference, keys),
    }


def short_loss(evals: dict[str, list[dict[str, Any]]], arms: Sequence[str], n_boot: int) -> dict[str, Any]:
    """Mean held-out short-chat loss (mean over chats of each chat's mean target cross-entropy) per model with its
    interval over chats x seeds, and each arm's difference to the base."""
    chats = [r["index"] for r in evals["base"][0]["short"]]
    mats = {m: model_matrix(evals[m], chats, "loss_mean", rows="short") for m in ("base", *arms)}
    return {
        "chats": len(chats),
        "models": {m: bootstrap_mean(x, None, n_boot, seed=99) for m, x in mats.items()},
        "differences": {
            f"{a} - base": bootstrap_diff(mats[a], mats["base"], None, n_boot, seed=99) for a in arms if a in mats
        },
    }


def time_to_targets(
    evals: dict[str, list[dict[str, Any]]], arms: Sequence[str], reference: str, keys: Sequence[str]
) -> dict[str, Any]:
    """Per arm and seed: training seconds, overall accuracy, and the training seconds at which the arm had reached
    the base model's accuracy and the reference arm's final accuracy (same seed). Each run is evaluated when its
    training ends, so a target is either reached by then (the run's training seconds) or not (None)."""
    base_acc = float(model_matrix(evals["base"], keys).mean())
    ref = {ev["seed"]: float(model_matrix([ev], keys).mean()) for ev in evals.get(reference, [])}
    out: dict[str, Any] = {"base_accuracy": base_acc, "reference": reference, "arms": {}}
    for arm in arms:
        runs = []
        for ev in evals[arm]:
            acc = float(model_matrix([ev], keys).mean())
            target = ref.get(ev["seed"])
            runs.append(
                {
                    "seed": ev["seed"],
                    "train_s": ev["train_s"],
                    "accuracy": acc,
                    "to_base_s": ev["train_s"] if acc >= base_acc else None,
                    "to_reference_s": ev["train_s"] if target is not None and acc >= target else None,
                }
            )
        secs = [r["train_s"] for r in runs]
        out["arms"][arm] = {"runs": runs, "mean_train_s": sum(secs) / len(secs) if secs else None}
    return out
