"""The ablation end to end: :func:`run` prepares the data, trains every arm x seed through
:func:`longalign.train.train`, and writes the analysed result and its figure; :func:`reanalyse` recomputes the
analysis of a written result."""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from longalign.recipes.ablation.analysis import analyse, needle_weight_share, simulator_prediction
from longalign.recipes.ablation.config import ARMS, RESULT_FILE, SCHEMA_VERSION, AblationConfig
from longalign.recipes.ablation.data import Prepared, prepare
from longalign.recipes.ablation.report import AblationSummary, load_result, write_figure

log = logging.getLogger(__name__)


def train_arm(
    arm: str,
    seed: int,
    cfg: AblationConfig,
    tokens_dir: Path,
    model_dir: Path,
    out_dir: Path,
    held: Sequence[dict],
    tokenizer: Any,
    pack_len: int,
    tokenizer_dir: Path | None = None,
) -> dict[str, Any]:
    """Train one arm with one seed through :func:`longalign.train.train`; its curve and final metrics."""
    from longalign.rundir import read_jsonl
    from longalign.train import TrainConfig, train

    method, loss_norm = ARMS[arm]
    tcfg = TrainConfig(
        tokens=str(tokens_dir),
        output_dir=str(out_dir),
        model=f"random:{model_dir}",
        tokenizer=str(tokenizer_dir) if tokenizer_dir else None,
        method=method,
        loss_norm=loss_norm,
        max_len=pack_len,
        per_device_batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        lr_scheduler="cosine",
        warmup_ratio=0.05,
        save_steps=0,
        save_final=False,
        progress=False,
        seed=seed,
        precision="fp32",
    )
    from longalign.recipes.ablation.evaluate import HeldOutEval

    cb = HeldOutEval(held, tokenizer, cfg.evals)
    wall0 = time.perf_counter()
    res = train(tcfg, callbacks=[cb])
    call_s = time.perf_counter() - wall0
    recs = read_jsonl(res.metrics_path)
    # the held-out evaluation after step s is counted in step s+1's step_s of metrics.jsonl: take it out
    step_s = [r["step_s"] - cb.eval_after_step.get(int(r["step"]) - 1, 0.0) for r in recs]
    cum_tokens = [0]
    for r in recs:
        cum_tokens.append(cum_tokens[-1] + int(r["real_tokens"]))
    for p in cb.points:
        p["tokens"] = cum_tokens[min(p["step"], len(recs))]
    final = cb.points[-1]
    train_s = final["train_s"]
    real = cum_tokens[-1]
    plan = json.loads((out_dir / "plan.json").read_text())["batches"]
    return {
        "arm": arm,
        "method": method,
        "loss_norm": loss_norm,
        "seed": seed,
        "attention_backend": res.attention_backend,
        "steps": len(recs),
        "real_tokens": real,
        "padded_tokens": sum(int(r["padded_tokens"]) for r in recs),
        "target_tokens": sum(int(r["target_tokens"]) for r in recs),
        "train_s": train_s,
        "cpu_s": final["cpu_s"],
        "tokens_per_s": real / train_s if train_s > 0 else None,
        "tokens_per_cpu_s": real / final["cpu_s"] if final["cpu_s"] > 0 else None,
        "call_s": call_s,
        "final": {
            k: final.get(k)
            for k in (
                "loss",
                "loss_mixed",
                "loss_bucket",
                "exact_match",
                "key_phrase_recall",
                "passcode_loss",
                "template_loss",
            )
        },
        "curve": cb.points,
        "step_seconds": step_s,
        "train_loss": [r["loss"] for r in recs],
        "batches": plan,
    }


def assemble_result(
    cfg: AblationConfig, data: Prepared, runs: list[dict[str, Any]], seeds: list[int], t_start: float
) -> dict[str, Any]:
    """The content of ``ablation.json`` for the runs of ``seeds`` (all of ``cfg.seeds`` once complete)."""
    import torch
    import transformers

    analysis = analyse(runs, cfg.arms, seeds)
    return {
        "schema_version": SCHEMA_VERSION,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "complete": seeds == list(cfg.seeds),
        "config": {**dataclasses.asdict(cfg), "arms": list(cfg.arms), "seeds": seeds},
        "model": data.model,
        "data": data.description,
        "arms": {a: {"method": ARMS[a][0], "loss_norm": ARMS[a][1]} for a in cfg.arms},
        **analysis,
        "simulated": simulator_prediction(data.lengths, runs, cfg, data.pack_len, data.model, data.n_target),
        "paper": {
            "loss_weighting": "LongAlign-7B-64k: packing + loss weighting 6.8 vs packing 6.2 on "
            "LongBench-Chat (about +10%)",
            "speed": "packing and sorted batching >= 2.2x faster than naive batching (8xA800, 64k)",
        },
        "runs": runs,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": cfg.threads,
        },
        "total_s": time.perf_counter() - t_start,
    }


def train_arms(
    cfg: AblationConfig, data: Prepared, work: Path, path: Path, t_start: float, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Train every arm x seed, seeds outside and arms inside (a busy spell on the machine hits every arm);
    after each seed but the last, the result so far is written to ``path``, in case the run is stopped."""
    from longalign.rundir import atomic_write_json

    runs: list[dict[str, Any]] = []
    done_seeds: list[int] = []
    for seed in cfg.seeds:
        for arm in cfg.arms:
            out_dir = work / "runs" / f"seed{seed}" / arm.replace("+", "_")
            r = train_arm(
                arm,
                seed,
                cfg,
                data.tokens_dir,
                data.model_dir,
                out_dir,
                data.held,
                data.tokenizer,
                data.pack_len,
                data.tokenizer_dir,
            )
            r["needle_weight_share"] = needle_weight_share(
                r["batches"], data.n_target, data.kinds, r["loss_norm"], cfg.grad_accum
            )
            runs.append(r)
            f = r["final"]
            say(
                f"seed {seed} {arm:<14} EM {f['exact_match']:.3f} needle {f['loss']['needle']:.3f} "
                f"contin. {f['loss']['continuation']:.3f} train {r['train_s']:.1f}s "
                f"({r['tokens_per_s']:.0f} tok/s, {r['steps']} steps)"
            )
        done_seeds.append(seed)
        if done_seeds != list(cfg.seeds):
            atomic_write_json(path, assemble_result(cfg, data, runs, list(done_seeds), t_start))
    return runs


def run(
    cfg: AblationConfig, run_dir: str | Path | None = None, *, progress: Callable[[str], None] | None = None
) -> AblationSummary:
    """Run the ablation: build the rows, tokenize them, train every arm x seed, score and write the JSON and
    the figure to ``cfg.out`` (``run_dir``, when given, holds the data and training runs instead of
    ``cfg.workdir``)."""
    import shutil
    import tempfile

    import torch

    from longalign.rundir import atomic_write_json

    cfg = cfg.resolved()
    say = progress or (lambda msg: log.info("%s", msg))
    t_start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    work_root = run_dir or cfg.workdir
    tmp = None
    if work_root is None:
        tmp = tempfile.mkdtemp(prefix="ablation_")
        work_root = tmp
    work = Path(work_root)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        data = prepare(cfg, work)
        say(
            f"{len(data.lengths)} training rows ({sum(data.lengths)} tokens, {sum(data.n_target)} targets), "
            f"{len(data.held)} held-out rows, pack_len {data.pack_len}"
        )
        path = out / RESULT_FILE
        runs = train_arms(cfg, data, work, path, t_start, say)
        result = assemble_result(cfg, data, runs, list(cfg.seeds), t_start)
        atomic_write_json(path, result)
        fig = write_figure(result, out)
        return AblationSummary(
            result_path=path,
            figure_path=Path(fig["html"]),
            total_s=result["total_s"],
            table=result["table"],
            time_to_quality=result["time_to_quality"],
            loss_weighting_effect=result["loss_weighting_effect"],
            simulated=result["simulated"],
        )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def reanalyse(path: str | Path, workdir: str | Path | None = None) -> dict[str, Any]:
    """Recompute the analysis of an ``ablation.json`` from its runs (no training) and write it back: for results
    written by an earlier version of the analysis. ``workdir`` (the run's ``--workdir``) supplies the batch plans
    and tokens the simulator needs when the JSON lacks them; without it the simulator block is kept."""
    path = Path(path)
    result = load_result(path)
    seeds = sorted({r["seed"] for r in result["runs"]}, key=list(result["config"]["seeds"]).index)
    for r in result["runs"]:
        if "needle_loss" not in r["curve"][0]:
            for p in r["curve"]:
                p["needle_loss"] = p["loss"].get("needle")
    if workdir is not None:
        import datasets

        work = Path(workdir)
        ds = datasets.load_from_disk(str(work / "tokens"))
        for r in result["runs"]:
            if "batches" not in r:
                plan = work / "runs" / f"seed{r['seed']}" / r["arm"].replace("+", "_") / "plan.json"
                r["batches"] = json.loads(plan.read_text())["batches"]
            if r.get("needle_weight_share") is None:
                r["needle_weight_share"] = needle_weight_share(
                    r["batches"],
                    [int(x) for x in ds["n_target"]],
                    list(ds["task_type"]),
                    r["loss_norm"],
                    int(result["config"]["grad_accum"]),
                )
    result.update(analyse(result["runs"], result["config"]["arms"], seeds))
    if workdir is not None:
        fields = {f.name for f in dataclasses.fields(AblationConfig)}
        cfg = AblationConfig(**{k: v for k, v in result["config"].items() if k in fields})
        result["simulated"] = simulator_prediction(
            [int(x) for x in ds["length"]],
            result["runs"],
            cfg,
            result["data"]["pack_len"],
            result["model"],
            [int(x) for x in ds["n_target"]],
        )
    from longalign.rundir import atomic_write_json

    atomic_write_json(path, result)
    return result
