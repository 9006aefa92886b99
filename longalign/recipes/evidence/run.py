"""The evidence experiment end to end: :func:`run` builds the data, scores the base model once, trains every
arm x seed through :func:`longalign.train.train` and scores it when its training ends, then writes the analysed
result. Every model's scores go to ``<out>/models/<name>/`` as they are made, so a stopped run resumes where it
stopped (finished models are read back, not redone)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from longalign.recipes.ablation import ARMS
from longalign.recipes.evidence.analysis import analyse
from longalign.recipes.evidence.config import BASE, REFERENCE_ARM, RESULT_FILE, SCHEMA_VERSION, EvidenceConfig
from longalign.recipes.evidence.data import Prepared, prepare
from longalign.recipes.evidence.report import EvidenceSummary

log = logging.getLogger(__name__)

MODEL_RESULT = "result.json"
MODEL_SAMPLES = "samples.jsonl"


def model_name(arm: str, seed: int | None) -> str:
    return BASE if arm == BASE else f"{arm.replace('+', '_')}_seed{seed}"


def _load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - platforms without a load average
        return None


def write_model_result(folder: Path, result: dict[str, Any]) -> None:
    """The per-sample rows to ``samples.jsonl``, then everything to ``result.json`` (written last: its presence
    marks the model done)."""
    from longalign.rundir import atomic_write_json, atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / MODEL_SAMPLES, "".join(json.dumps(r) + "\n" for r in result["rows"]))
    atomic_write_json(folder / MODEL_RESULT, result)


def read_model_result(folder: Path) -> dict[str, Any] | None:
    path = folder / MODEL_RESULT
    return json.loads(path.read_text()) if path.is_file() else None


def evaluate_base(cfg: EvidenceConfig, data: Prepared, tokenizer: Any, say: Callable[[str], None]) -> dict[str, Any]:
    """Score the start model (deterministic: evaluated once)."""
    from longalign.models import load_model
    from longalign.recipes.evidence.score import evaluate_model

    t0, c0 = time.perf_counter(), time.process_time()
    model = load_model(cfg.model)
    rows, short = evaluate_model(model, tokenizer, data.samples, data.held_short, say)
    return {
        "model": BASE,
        "arm": BASE,
        "seed": None,
        "rows": rows,
        "short": short,
        "train_s": 0.0,
        "eval_s": time.perf_counter() - t0,
        "cpu_s": time.process_time() - c0,
        "load_avg_after": _load_avg(),
    }


def train_and_evaluate(
    cfg: EvidenceConfig, data: Prepared, tokenizer: Any, arm: str, seed: int, folder: Path, say: Callable[[str], None]
) -> dict[str, Any]:
    """Train ``arm`` with ``seed`` from the start model on the training tokens and score it when training ends
    (off the training clock: ``train_s`` is the sum of the optimizer steps' times)."""
    from transformers import TrainerCallback

    from longalign.rundir import read_jsonl
    from longalign.train import TrainConfig, train

    method, loss_norm = ARMS[arm]
    scored: dict[str, Any] = {}

    class ScoreAtEnd(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            from longalign.recipes.evidence.score import evaluate_model

            t0 = time.perf_counter()
            scored["rows"], scored["short"] = evaluate_model(model, tokenizer, data.samples, data.held_short, say)
            scored["eval_s"] = time.perf_counter() - t0

    tcfg = TrainConfig(
        tokens=str(data.tokens_dir),
        output_dir=str(folder / "train"),
        model=cfg.model,
        method=method,
        loss_norm=loss_norm,
        max_len=cfg.pack_len,
        per_device_batch_size=1,
        grad_accum=cfg.grad_accum,
        epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        lr_scheduler="cosine",
        warmup_ratio=0.0,
        save_steps=0,
        save_final=False,
        progress=False,
        seed=seed,
        precision="fp32",
        report_to="none",
    )
    wall0, cpu0 = time.perf_counter(), time.process_time()
    res = train(tcfg, callbacks=[ScoreAtEnd()])
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    recs = read_jsonl(res.metrics_path)
    if "rows" not in scored:
        raise RuntimeError(f"{arm} seed {seed}: training ended without the evaluation at its end")
    return {
        "model": model_name(arm, seed),
        "arm": arm,
        "method": method,
        "loss_norm": loss_norm,
        "seed": seed,
        "rows": scored["rows"],
        "short": scored["short"],
        "steps": len(recs),
        "real_tokens": sum(int(r["real_tokens"]) for r in recs),
        "target_tokens": sum(int(r["target_tokens"]) for r in recs),
        "train_loss": [r["loss"] for r in recs],
        "step_seconds": [r["step_s"] for r in recs],
        "train_s": sum(float(r["step_s"]) for r in recs),
        "eval_s": scored["eval_s"],
        "wall_s": wall,
        "cpu_s": cpu,
        "load_avg_after": _load_avg(),
    }


def _accuracy(result: dict[str, Any]) -> float:
    rows = result["rows"]
    return sum(r["correct"] for r in rows) / max(1, len(rows))


def run_models(
    cfg: EvidenceConfig, data: Prepared, tokenizer: Any, out: Path, say: Callable[[str], None]
) -> dict[str, list[dict[str, Any]]]:
    """The base model, then every seed x arm (seeds outside: a busy spell on the machine hits every arm);
    finished models are read back from ``<out>/models``."""
    evals: dict[str, list[dict[str, Any]]] = {BASE: [], **{a: [] for a in cfg.arms}}
    jobs: list[tuple[str, int | None]] = [(BASE, None)] + [(a, s) for s in cfg.seeds for a in cfg.arms]
    for arm, seed in jobs:
        folder = out / "models" / model_name(arm, seed)
        result = read_model_result(folder)
        if result is not None:
            say(f"{model_name(arm, seed)}: done earlier (accuracy {_accuracy(result):.3f})")
        elif cfg.analyse_only and arm != BASE:
            say(f"{model_name(arm, seed)}: not finished, left out")
            continue
        else:
            say(f"{model_name(arm, seed)}: {'scoring' if arm == BASE else 'training'} ...")
            if arm == BASE:
                result = evaluate_base(cfg, data, tokenizer, say)
            else:
                assert seed is not None
                result = train_and_evaluate(cfg, data, tokenizer, arm, seed, folder, say)
            write_model_result(folder, result)
            say(
                f"{model_name(arm, seed)}: accuracy {_accuracy(result):.3f}, train {result['train_s']:.0f} s, "
                f"eval {result['eval_s']:.0f} s"
            )
        evals[arm].append(result)
    return evals


def assemble_result(
    cfg: EvidenceConfig, data: Prepared, evals: dict[str, list[dict[str, Any]]], total_s: float
) -> dict[str, Any]:
    """The content of ``evidence.json``."""
    import torch
    import transformers

    reference = REFERENCE_ARM if REFERENCE_ARM in cfg.arms else cfg.arms[0]
    analysis = analyse(data.samples, evals, cfg.arms, cfg.bootstrap, reference)
    models = {
        m["model"]: {k: v for k, v in m.items() if k not in ("rows", "short")} for ms in evals.values() for m in ms
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": dataclasses.asdict(cfg),
        "data": data.description,
        "samples": [
            {k: s[k] for k in ("key", "task", "family", "length", "index", "answer", "depths")} for s in data.samples
        ],
        **analysis,
        "models": models,
        "seconds": {
            "total_this_call": total_s,
            "train": sum(m["train_s"] for m in models.values()),
            "eval": sum(m["eval_s"] for m in models.values()),
            "wall_of_models": sum(m.get("wall_s", m["eval_s"]) for m in models.values()),
            "cpu_of_models": sum(m.get("cpu_s", 0.0) for m in models.values()),
        },
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": cfg.threads,
            "cpus": os.cpu_count(),
            "load_avg_at_end": _load_avg(),
        },
    }


def run(cfg: EvidenceConfig, *, progress: Callable[[str], None] | None = None) -> EvidenceSummary:
    """Run the experiment into ``cfg.out`` (resuming a stopped run) and write ``evidence.json`` there."""
    import torch

    from longalign.rundir import atomic_write_json
    from longalign.train import cached_tokenizer

    cfg = cfg.resolved()
    say = progress or (lambda msg: log.info("%s", msg))
    t0 = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = cached_tokenizer(cfg.model)
    data = prepare(cfg, out, tokenizer)
    d = data.description
    say(
        f"{d['train_rows']} training records ({d['train_tokens']} tokens), {len(data.samples)} evaluation samples, "
        f"{len(data.held_short)} held-out chats"
    )
    evals = run_models(cfg, data, tokenizer, out, say)
    complete = all(len(evals[a]) == len(cfg.seeds) for a in cfg.arms)
    if not complete:
        arms = [a for a in cfg.arms if evals[a]]
        if not arms:
            raise ValueError(f"{out}: no trained arm has finished; run without --analyse-only first")
        say("finished seeds per arm: " + ", ".join(f"{a} {[e['seed'] for e in evals[a]]}" for a in cfg.arms))
        evals = {k: v for k, v in evals.items() if k == BASE or k in arms}
        cfg = dataclasses.replace(cfg, arms=arms)
    result = assemble_result(cfg, data, evals, time.perf_counter() - t0)
    result["complete"] = complete
    result["seeds_by_arm"] = {a: [e["seed"] for e in evals[a]] for a in cfg.arms}
    path = out / RESULT_FILE
    atomic_write_json(path, result)
    return EvidenceSummary.from_result(path, result)


def rerun_model(cfg: EvidenceConfig, arm: str, seed: int, folder: str | Path) -> dict[str, Any]:
    """Train and score one arm x seed again into ``folder`` (on the data of ``cfg.out``): for checking that a
    same-seed run reproduces the stored one."""
    from longalign.train import cached_tokenizer

    cfg = cfg.resolved()
    tokenizer = cached_tokenizer(cfg.model)
    data = prepare(cfg, Path(cfg.out), tokenizer)
    return train_and_evaluate(cfg, data, tokenizer, arm, seed, Path(folder), lambda msg: log.info("%s", msg))


def same_scores(a: dict[str, Any], b: dict[str, Any], tol: float = 1e-4) -> list[str]:
    """Where two results of the same model differ: per-sample correctness, answer loss (beyond ``tol``), held-out
    chat loss. Empty when they agree."""
    out = []
    for ra, rb in zip(a["rows"], b["rows"]):
        if ra["key"] != rb["key"] or ra["correct"] != rb["correct"] or abs(ra["answer_loss"] - rb["answer_loss"]) > tol:
            out.append(f"{ra['key']}: {ra['correct']}/{ra['answer_loss']} vs {rb['correct']}/{rb['answer_loss']}")
    for ca, cb in zip(a["short"], b["short"]):
        if abs(ca["loss_mean"] - cb["loss_mean"]) > tol:
            out.append(f"chat {ca['index']}: {ca['loss_mean']} vs {cb['loss_mean']}")
    if len(a["rows"]) != len(b["rows"]) or len(a["short"]) != len(b["short"]):
        out.append("different numbers of samples or chats")
    return out


def arms_of(result: dict[str, Any]) -> Sequence[str]:
    return list(result["config"]["arms"])
