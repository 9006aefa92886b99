"""The ablation's analysis, from the runs' records alone: per-arm spreads, time-to-quality against naive
batching, the loss-weighting effect, the share of the step's loss weight on needle rows, and the simulator's
epoch-time prediction for the same lengths."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from longalign.recipes.ablation.config import AblationConfig


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation, median, min, max and n of the values that are not None."""
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return {"mean": None, "std": None, "median": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.fmean(xs),
        "median": statistics.median(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
    }


def needle_weight_share(
    batches: Sequence[Sequence[int]],
    n_target: Sequence[int],
    kinds: Sequence[str],
    loss_norm: str,
    grad_accum: int,
) -> float:
    """The share of an optimizer step's loss weight that falls on needle rows, averaged over the first epoch's
    steps, with the weights training uses (:func:`longalign.batching.token_weights`; each step's weights sum
    to 1 over its target tokens)."""
    import types

    import numpy as np

    from longalign.batching import token_weights

    n = np.asarray(n_target, dtype=np.int64)
    plan = types.SimpleNamespace(batches=[list(b) for b in batches], lengths=n, world_size=1, grad_accum=grad_accum)
    w = token_weights(plan, n, loss_norm, 1, grad_accum)
    needle = np.asarray([k == "needle" for k in kinds])
    steps = math.ceil(len(batches) / grad_accum)
    return float((w * n)[needle].sum() / steps) if steps else 0.0


def median_step_s(run: dict[str, Any]) -> float | None:
    """The median optimizer-step time of a run, the first (warm-up) step left out. On a machine shared with other
    work a busy spell stretches a few steps a lot; ``steps x median`` is the run's time without those spells."""
    secs = [float(x) for x in run.get("step_seconds", [])[1:] if x is not None]
    return statistics.median(secs) if secs else None


def with_robust_clock(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's curve with ``robust_s`` = step x median step time added to each point."""
    med = median_step_s(run) or 0.0
    return [{**p, "robust_s": p["step"] * med} for p in run["curve"]]


def time_to_reach(curve: Sequence[dict], target: float, key: str = "loss_mixed", clock: str = "train_s"):
    """First training time at which ``curve[key]`` falls to ``target`` (linear between evaluations), or None."""
    prev = None
    for p in curve:
        v = p[key]
        if v <= target:
            if prev is None or prev[key] == v:
                return p[clock]
            frac = (prev[key] - target) / (prev[key] - v)
            return prev[clock] + frac * (p[clock] - prev[clock])
        prev = p
    return None


def metric_rows(run: dict[str, Any]) -> dict[str, float | None]:
    f = run["final"]
    out = {
        "needle_exact_match": f["exact_match"],
        "needle_key_phrase_recall": f["key_phrase_recall"],
        "needle_loss": f["loss"].get("needle"),
        "needle_passcode_loss": f.get("passcode_loss"),
        "needle_template_loss": f.get("template_loss"),
        "continuation_loss": f["loss"].get("continuation"),
        "mixed_loss": f["loss_mixed"],
        "train_s": run["train_s"],
        "cpu_s": run["cpu_s"],
        "tokens_per_s": run["tokens_per_s"],
        "tokens_per_cpu_s": run["tokens_per_cpu_s"],
        "steps": run["steps"],
        "padding_fraction": 1 - run["real_tokens"] / run["padded_tokens"] if run["padded_tokens"] else 0.0,
        "robust_train_s": (median_step_s(run) or 0.0) * run["steps"] if run.get("step_seconds") else None,
        "needle_weight_share": run.get("needle_weight_share"),
    }
    for k, v in f["loss_bucket"].items():
        out[f"loss[{k}]"] = v
    return out


def _ratio(base: float | None, arm: float | None) -> float | None:
    return base / arm if base and arm else None


def seed_speedups(base: dict[str, Any], run: dict[str, Any]) -> dict[str, float | None]:
    """One seed's speed-ups of ``run`` over naive batching (``base``): time to reach naive's final mixed loss
    (wall and CPU clock), to reach its final needle loss (CPU clock), the epoch time, and, when both runs have
    step times, the same on the steps x median step clock."""
    target = base["final"]["loss_mixed"]
    n_target = base["final"]["loss"]["needle"]
    out = {
        "time_to_quality_speedup": _ratio(time_to_reach(base["curve"], target), time_to_reach(run["curve"], target)),
        "time_to_quality_speedup_cpu": _ratio(
            time_to_reach(base["curve"], target, clock="cpu_s"), time_to_reach(run["curve"], target, clock="cpu_s")
        ),
        "epoch_time_speedup": base["train_s"] / run["train_s"] if run["train_s"] else None,
        "needle_time_to_quality_speedup_cpu": _ratio(
            time_to_reach(base["curve"], n_target, key="needle_loss", clock="cpu_s"),
            time_to_reach(run["curve"], n_target, key="needle_loss", clock="cpu_s"),
        ),
    }
    if base.get("step_seconds") and run.get("step_seconds"):
        cb, ca = with_robust_clock(base), with_robust_clock(run)
        for name, key, tgt in (
            ("robust_time_to_quality_speedup", "loss_mixed", target),
            ("robust_needle_time_to_quality_speedup", "needle_loss", n_target),
        ):
            out[name] = _ratio(
                time_to_reach(cb, tgt, key=key, clock="robust_s"), time_to_reach(ca, tgt, key=key, clock="robust_s")
            )
        rb, ra = cb[-1]["robust_s"], ca[-1]["robust_s"]
        out["robust_epoch_time_speedup"] = rb / ra if ra else None
    return out


def _column(per_seed: Sequence[dict[str, float | None]], name: str) -> dict[str, Any]:
    """The spread of one speed-up over the seeds that have it."""
    return spread([sp[name] for sp in per_seed if name in sp])


def time_to_quality(by: dict[tuple[str, int], dict[str, Any]], arms: Sequence[str], seeds: Sequence[int]) -> dict:
    """Per arm, the spread over seeds of each :func:`seed_speedups` (empty without a ``naive+token`` arm)."""
    ttq: dict[str, Any] = {}
    if "naive+token" not in arms:
        return ttq
    for arm in arms:
        per_seed = [
            seed_speedups(by[("naive+token", s)], by[(arm, s)])
            for s in seeds
            if ("naive+token", s) in by and (arm, s) in by
        ]
        ratios = [sp["time_to_quality_speedup"] for sp in per_seed]
        ttq[arm] = {
            "time_to_quality_speedup": spread(ratios),
            "time_to_quality_speedup_cpu": _column(per_seed, "time_to_quality_speedup_cpu"),
            "reached": sum(r is not None for r in ratios),
            "epoch_time_speedup": _column(per_seed, "epoch_time_speedup"),
            "needle_time_to_quality_speedup_cpu": _column(per_seed, "needle_time_to_quality_speedup_cpu"),
            "robust_time_to_quality_speedup": _column(per_seed, "robust_time_to_quality_speedup"),
            "robust_needle_time_to_quality_speedup": _column(per_seed, "robust_needle_time_to_quality_speedup"),
            "robust_epoch_time_speedup": _column(per_seed, "robust_epoch_time_speedup"),
        }
    return ttq


def loss_weighting_effect(
    by: dict[tuple[str, int], dict[str, Any]], table: dict[str, Any], arms: Sequence[str], seeds: Sequence[int]
) -> dict[str, Any]:
    """``pack+sequence`` against ``pack+pack`` and ``pack+token``, seed by seed: the differences in needle exact
    match and needle loss, and the relative exact-match gain of the means."""
    effect: dict[str, Any] = {}
    if "pack+sequence" not in arms:
        return effect
    for other in ("pack+pack", "pack+token"):
        if other not in arms:
            continue
        pairs = [
            (by[("pack+sequence", s)], by[(other, s)]) for s in seeds if ("pack+sequence", s) in by and (other, s) in by
        ]
        d_em = [a["final"]["exact_match"] - b["final"]["exact_match"] for a, b in pairs]
        d_loss = [a["final"]["loss"]["needle"] - b["final"]["loss"]["needle"] for a, b in pairs]
        base_em = table[other]["needle_exact_match"]["mean"]
        gain = table["pack+sequence"]["needle_exact_match"]["mean"]
        effect[f"pack+sequence vs {other}"] = {
            "exact_match_difference": spread(d_em),
            "needle_loss_difference": spread(d_loss),
            "relative_exact_match_gain": (gain / base_em - 1) if base_em else None,
        }
    return effect


def analyse(runs: Sequence[dict[str, Any]], arms: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Per-arm mean and spread of every metric, the loss-weighting effect and time-to-quality vs naive."""
    by = {(r["arm"], r["seed"]): r for r in runs}
    table: dict[str, dict[str, Any]] = {}
    for arm in arms:
        rows = [metric_rows(by[(arm, s)]) for s in seeds if (arm, s) in by]
        keys = sorted({k for r in rows for k in r})
        table[arm] = {k: spread([r.get(k) for r in rows]) for k in keys}
    return {
        "table": table,
        "time_to_quality": time_to_quality(by, arms, seeds),
        "loss_weighting_effect": loss_weighting_effect(by, table, arms, seeds),
    }


def simulator_prediction(
    lengths: Sequence[int],
    runs: Sequence[dict[str, Any]],
    cfg: AblationConfig,
    pack_len: int,
    model: dict,
    n_target: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Epoch-time speed-ups vs naive that ``longalign.batching.simulate`` predicts for the training lengths:
    with FLOP-derived coefficients and with coefficients fitted to every measured step of these runs."""
    import numpy as np

    from longalign.batching import CostModel, fit_cost_model, simulate
    from longalign.batching.simulate import measurement

    lens = np.asarray(lengths)
    h, layers = model["hidden_size"], model["num_hidden_layers"]
    # the output layer runs on target rows only (the chunked loss): count it at the share of targets
    share = float(sum(n_target)) / max(1, int(lens.sum())) if n_target is not None else 1.0
    n_params = layers * (4 * h * h + 3 * h * model["intermediate_size"]) + model["vocab_size"] * h * share
    models = {"flop_based": CostModel.for_transformer(n_params, layers, h, flops_per_second=20e9)}
    records = []
    g = cfg.grad_accum
    for r in runs:  # one record per optimizer step of the first epoch (the plan's order), the first step left out
        packed = r["method"] == "pack"
        steps = [r["batches"][i : i + g] for i in range(0, len(r["batches"]), g)]
        for batches, secs in list(zip(steps, r["step_seconds"]))[1:]:
            parts = [measurement(lens[b], 0.0, packed=packed, attention="varlen") for b in batches]
            records.append(
                {
                    "tokens": sum(p["tokens"] for p in parts),
                    "attention": sum(p["attention"] for p in parts),
                    "batches": float(len(parts)),
                    "seconds": float(secs),
                }
            )
    if len(records) >= 3:
        models["fitted_to_runs"] = fit_cost_model(records)
    out: dict[str, Any] = {}
    for label, cost in models.items():
        sim = simulate(
            lens,
            ("naive", "sort", "pack"),
            max_len=pack_len,
            world_size=1,
            batch_size=cfg.batch_size,
            grad_accum=cfg.grad_accum,
            pack_grad_accum=cfg.grad_accum,
            seed=cfg.data_seed,
            cost=cost,
            dense_pack=False,
        )
        out[label] = {
            "cost": cost.to_dict(),
            "speedup_vs_naive": {m: v["speedup_vs_naive"] for m, v in sim["methods"].items()},
            "seconds": {m: v["total_seconds"] for m, v in sim["methods"].items()},
        }
    return out
