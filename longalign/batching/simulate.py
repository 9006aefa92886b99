"""Training-time simulator: how long an epoch takes under each batching method, and how much of it the
devices sit idle waiting for the slowest one.

Cost of one micro-batch on one device::

    t = per_token * tokens_computed + per_token_sq * attention_computed + per_batch

padded batch of B sequences, longest L:  tokens = B*L,       attention = B*L^2
pack, segment-aware / varlen attention:   tokens = sum n_i,   attention = sum n_i^2
pack, dense block-diagonal mask:          tokens = sum n_i,   attention = (sum n_i)^2

The G devices of a data-parallel group run micro-batch slots side by side; with ``sync="micro"`` (ZeRO-3
gathers parameters layer by layer, so every micro-batch is a synchronisation point) each slot lasts as
long as its slowest device, with ``sync="step"`` each device runs its ``grad_accum`` micro-batches alone
and the step waits for the slowest device. Idle fraction = 1 - busy device-seconds / (G * total seconds).
This is the paper's Fig. 3/5 story: with random batches, a 64k-token sequence on one device keeps the
seven others waiting; sorting and packing even the load out.

The default coefficients model a 7B Llama (fwd+bwd 6*7e9 FLOPs per token, attention 6*hidden*layers
FLOPs per n^2) at an effective 150 TFLOP/s; :func:`fit_cost_model` fits them to measured step times
(non-negative least squares).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from longalign.batching.config import METHODS, SYNC_MODES, SimulateConfig
from longalign.batching.lengths import lengths_for
from longalign.batching.plans import make_plan
from longalign.config import check_choice, deprecated
from longalign.rundir import RunDir, atomic_write_json
from longalign.stage import Summary, as_run_dir, record

ATTENTION_MODES = ("varlen", "dense")


@dataclass(frozen=True)
class CostModel:
    """Seconds per computed token, per unit of attention work (n^2), and per micro-batch."""

    per_token: float = 6 * 7e9 / 150e12
    per_token_sq: float = 6 * 4096 * 32 / 150e12
    per_batch: float = 0.0

    @classmethod
    def for_transformer(
        cls, n_params: float, n_layers: int, hidden: int, flops_per_second: float, per_batch: float = 0.0
    ) -> CostModel:
        """Coefficients from a FLOP count: 6*params per token, 6*hidden*layers per n^2 (fwd+bwd)."""
        return cls(6 * n_params / flops_per_second, 6 * hidden * n_layers / flops_per_second, per_batch)

    def seconds(self, tokens: Any, attention: Any, batches: Any = 1) -> Any:
        return (
            self.per_token * np.asarray(tokens, dtype=np.float64)
            + self.per_token_sq * np.asarray(attention, dtype=np.float64)
            + self.per_batch * np.asarray(batches, dtype=np.float64)
        )

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def micro_batch_work(
    lengths: np.ndarray, flat: np.ndarray, sizes: np.ndarray, packed: bool, attention: str = "varlen"
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens computed, attention computed) per micro-batch of a plan given as (flat, sizes)."""
    check_choice("attention", attention, ATTENTION_MODES)
    if sizes.size == 0:
        return np.zeros(0), np.zeros(0)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    lens = lengths[flat].astype(np.float64)
    if packed:
        tokens = np.add.reduceat(lens, starts)
        attn = tokens**2 if attention == "dense" else np.add.reduceat(lens * lens, starts)
        return tokens, attn
    longest = np.maximum.reduceat(lens, starts)
    return sizes * longest, sizes * longest**2


def step_timeline(costs: np.ndarray, world_size: int, grad_accum: int, sync: str = "micro") -> dict[str, float]:
    """Total time, busy and idle device-seconds for micro-batch costs in plan consumption order."""
    check_choice("sync", sync, SYNC_MODES)
    per_step = world_size * grad_accum
    n = costs.size
    n_steps = -(-n // per_step) if n else 0
    flat_grid = np.zeros(n_steps * per_step)
    flat_grid[:n] = costs
    grid = flat_grid.reshape(n_steps, grad_accum, world_size)  # micro-batch j -> (j // G, j % G)
    if sync == "micro":
        total = float(grid.max(axis=2).sum())
    else:
        total = float(grid.sum(axis=1).max(axis=1).sum())
    busy = float(costs.sum())
    capacity = total * world_size
    return {
        "total_seconds": total,
        "busy_device_seconds": busy,
        "idle_fraction": 1.0 - busy / capacity if capacity else 0.0,
        "n_steps": int(n_steps),
    }


def simulate_plan(
    plan: Any, cost: CostModel | None = None, *, attention: str = "varlen", sync: str = "micro"
) -> dict[str, Any]:
    """Simulated run of one plan: total/idle time, throughput, and the plan's padding and fill
    (:mod:`longalign.batching.figures`)."""
    cost = cost or CostModel()
    flat, sizes = plan.arrays()
    tokens, attn = micro_batch_work(plan.lengths, flat, sizes, plan.method == "pack", attention)
    costs = cost.seconds(tokens, attn)
    out: dict[str, Any] = dict(step_timeline(costs, plan.world_size, plan.grad_accum, sync))
    real = float(plan.stats.get("n_tokens", 0))
    out.update(
        {
            "n_micro_batches": int(sizes.size),
            "real_tokens": int(real),
            "real_tokens_per_second": real / out["total_seconds"] if out["total_seconds"] else 0.0,
            "mean_step_seconds": out["total_seconds"] / out["n_steps"] if out["n_steps"] else 0.0,
            "padding_fraction": plan.stats.get("padding_fraction"),
            "fill": plan.stats.get("fill"),
            "attention": attention if plan.method == "pack" else "padded",
        }
    )
    return out


def simulate(
    lengths: Sequence[int] | np.ndarray,
    methods: Iterable[str] = METHODS,
    *,
    max_len: int,
    world_size: int = 8,
    batch_size: int = 1,
    grad_accum: int = 12,
    algo: str = "ffd",
    pack_grad_accum: int | None = 1,
    seed: int = 0,
    overlong: str = "truncate",
    cost: CostModel | None = None,
    sync: str = "micro",
    dense_pack: bool = True,
    devices: int | None = None,
) -> dict[str, Any]:
    """Simulate each method over the same lengths; returns ``{"config": ..., "methods": {name: {...}}}``.

    Padded methods use ``batch_size`` sequences per device and ``grad_accum`` accumulation steps; packing
    uses one pack per micro-batch and ``pack_grad_accum`` (default ``grad_accum``). With ``dense_pack`` a
    second pack entry (``pack_dense``) prices the dense block-diagonal mask. ``speedup_vs_naive`` compares
    total time when naive is among the methods. ``devices`` is the deprecated name of ``world_size``
    (``config`` still carries a ``devices`` entry for readers of older results).
    """
    if devices is not None:
        deprecated("simulate(devices=...) is deprecated; use world_size=...")
        world_size = devices
    cost = cost or CostModel()
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    for method in methods:
        plan = make_plan(
            lengths,
            method,
            max_len=max_len,
            batch_size=batch_size,
            world_size=world_size,
            grad_accum=(pack_grad_accum or grad_accum) if method == "pack" else grad_accum,
            algo=algo,
            seed=seed,
            overlong=overlong,
        )
        results[method] = simulate_plan(plan, cost, attention="varlen", sync=sync)
        if method == "pack" and dense_pack:
            results["pack_dense"] = simulate_plan(plan, cost, attention="dense", sync=sync)
    if "naive" in results:
        base = results["naive"]["total_seconds"]
        for r in results.values():
            r["speedup_vs_naive"] = base / r["total_seconds"] if r["total_seconds"] else 0.0
    config = {
        "n_sequences": int(np.asarray(lengths).size),
        "max_len": int(max_len),
        "world_size": int(world_size),
        "devices": int(world_size),
        "batch_size": int(batch_size),
        "grad_accum": int(grad_accum),
        "pack_grad_accum": int(pack_grad_accum or grad_accum),
        "algo": algo,
        "seed": int(seed),
        "overlong": overlong,
        "sync": sync,
        "cost": cost.to_dict(),
        "seconds": round(time.perf_counter() - t0, 4),
    }
    return {"config": config, "methods": results}


def measurement(lengths: Sequence[int], seconds: float, *, packed: bool, attention: str = "varlen") -> dict[str, float]:
    """One measured micro-batch as a fit_cost_model record (tokens/attention computed from its lengths)."""
    lens = np.asarray(lengths, dtype=np.int64)
    tokens, attn = micro_batch_work(lens, np.arange(lens.size), np.array([lens.size]), packed, attention)
    return {"tokens": float(tokens[0]), "attention": float(attn[0]), "batches": 1.0, "seconds": float(seconds)}


def fit_cost_model(measurements: Sequence[Mapping[str, float]], *, fit_per_batch: bool = True) -> CostModel:
    """Fit CostModel coefficients (all >= 0) to measured step times by non-negative least squares.

    Each measurement: ``{"tokens", "attention", "seconds"}`` and optionally ``"batches"`` (micro-batches in
    the timed span, default 1). Columns are scaled to unit norm before solving, so seconds-per-token and
    seconds-per-n^2 (10^4 times smaller) are fitted equally well.
    """
    from scipy.optimize import nnls

    if len(measurements) < (3 if fit_per_batch else 2):
        raise ValueError(
            f"fit_cost_model needs at least {3 if fit_per_batch else 2} measurements, got {len(measurements)}"
        )
    for i, m in enumerate(measurements):
        missing = [k for k in ("tokens", "attention", "seconds") if k not in m]
        if missing:
            raise ValueError(f"measurement {i} lacks {missing}; each needs tokens, attention and seconds")
    cols = [[float(m["tokens"]) for m in measurements], [float(m["attention"]) for m in measurements]]
    if fit_per_batch:
        cols.append([float(m.get("batches", 1.0)) for m in measurements])
    a = np.array(cols, dtype=np.float64).T
    y = np.array([float(m["seconds"]) for m in measurements])
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(a / scale, y)
    coef = coef / scale
    return CostModel(
        per_token=float(coef[0]), per_token_sq=float(coef[1]), per_batch=float(coef[2]) if fit_per_batch else 0.0
    )


# ----------------------------------------------------------------------------------------------------------
# The batching.simulate step
# ----------------------------------------------------------------------------------------------------------


@dataclass
class SimulationSummary(Summary):
    """Simulated time per method (the content of ``batching/simulate.json``) and where it was written."""

    config: dict[str, Any]
    methods: dict[str, Any]
    path: Path | None = None

    def lines(self) -> list[str]:
        c = self.config
        out = [
            f"{c['n_sequences']} sequences, {c['world_size']} devices, max_len {c['max_len']}, sync={c['sync']}",
            f"{'method':<12}{'hours':>10}{'idle':>8}{'steps':>8}{'vs naive':>10}",
        ]
        for name, r in self.methods.items():
            speed = r.get("speedup_vs_naive")
            out.append(
                f"{name:<12}{r['total_seconds'] / 3600:>10.2f}{r['idle_fraction']:>8.1%}{r['n_steps']:>8}"
                + (f"{speed:>9.2f}x" if speed is not None else "")
            )
        if self.path is not None:
            out.append(f"wrote {self.path}")
        return out


def simulate_config(cfg: SimulateConfig, lengths: Sequence[int] | np.ndarray | None = None) -> SimulationSummary:
    """:func:`simulate` with the settings of ``cfg`` over ``lengths`` (default: ``cfg.lengths``/``cfg.tokens``),
    without a run directory."""
    if lengths is None:
        lengths = lengths_for(cfg)
    result = simulate(
        lengths,
        cfg.methods,
        max_len=cfg.max_len,
        world_size=cfg.world_size,
        batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        pack_grad_accum=cfg.pack_grad_accum,
        algo=cfg.algo,
        seed=cfg.seed,
        overlong=cfg.overlong,
        cost=CostModel(cfg.per_token, cfg.per_token_sq, cfg.per_batch),
        sync=cfg.sync,
    )
    return SimulationSummary(config=result["config"], methods=result["methods"])


def run(
    cfg: SimulateConfig, run_dir: str | Path | RunDir, lengths: Sequence[int] | np.ndarray | None = None
) -> SimulationSummary:
    """The ``batching.simulate`` step: simulate the run's token lengths (or ``cfg.lengths``/``cfg.tokens``, or
    ``lengths``) into ``batching/simulate.json``, recorded in run.json."""
    run_ = as_run_dir(run_dir)
    summary = simulate_config(cfg, lengths if lengths is not None else lengths_for(cfg, run_))
    atomic_write_json(run_.simulation, {"config": summary.config, "methods": summary.methods})
    summary.path = run_.simulation
    record(run_, "batching.simulate", cfg, summary)
    return summary
