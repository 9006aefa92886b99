"""``longalign demo``: the whole LongAlign recipe at small scale, on a CPU, offline, with the embedded model.

Stages, each calling the stage's ``run(cfg, run_dir)`` as the per-stage commands do, all writing into one run
directory (and recording themselves in its run.json)::

    built-in corpus ─► Self-Instruct (embedded SmolLM2) ─► + short chat sample ─► mix ─► tokenize
      ─► plans naive | sort | pack (+ simulator) ─► a short SFT run per method (sequence loss weighting)
      ─► needle grid + a LongBench-Chat-format mini set from held-out documents, judged locally

The trade-off is time: SmolLM2-135M fine-tunes at ~100 tokens/s and reads a 4k-token prompt in ~15-30 s on two
cores. So the full profile generates from a dozen 2k-7k-token documents (the generator sees at most 2,048 tokens
of each, head and tail; the training rows keep the whole document), trains two optimizer steps per method at
4,096 tokens (middle truncation keeps each document's head and the question and answer at its end), and takes
about a quarter of an hour; ``--quick`` (three ~1k-token documents, one step per method, a 2x2 needle grid)
takes two to three minutes.
The numbers it prints are real but small-sample: the demo shows the pipeline, not the paper's results.

Re-running resumes: finished stages are skipped, generation and judging reuse the request cache, training
continues from its last checkpoint. The command is :mod:`longalign.demo_cli`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from longalign import batching, tokenize, train
from longalign.batching import METHODS, BatchPlanConfig, SimulateConfig, read_token_lengths
from longalign.config import Options, option, to_dict
from longalign.data import corpus, mix, selfinstruct, short
from longalign.data.corpus import CorpusConfig, read_corpus
from longalign.data.mix import MixConfig
from longalign.data.selfinstruct import GenerateConfig
from longalign.data.short import ShortConfig
from longalign.eval import longbench_chat, needle
from longalign.eval.longbench_chat import LongBenchChatConfig
from longalign.eval.needle import NeedleConfig
from longalign.rundir import RunDir, append_jsonl, atomic_write_json, read_json, read_jsonl
from longalign.stage import record
from longalign.tokenize import TokenizeConfig, load_tokens
from longalign.train import TrainConfig

log = logging.getLogger(__name__)

SHORT_SAMPLE = Path(__file__).parent / "resources" / "short_chat_sample.json"
MINI_SET_LABEL = "LongBench-Chat-format mini set (held-out built-in documents, generated references)"


@dataclass
class DemoConfig(Options):
    """Options of ``longalign demo``."""

    run: str = option("runs/demo", help="run directory for every artifact of the demo")
    quick: bool = option(
        False, help="the few-minute profile (3 short documents, one step per method, 2x2 needle grid) used in CI"
    )
    model: str = option(
        "smollm2",
        help="model that generates the data, is fine-tuned and judges (default: the embedded SmolLM2-135M-Instruct)",
    )
    seed: int = option(42, help="seed of document sampling, generation, batching and training")
    n_docs: int = option(0, help="training documents (0 = profile default: 12, quick 3)")
    n_eval_docs: int = option(0, help="held-out documents for the mini evaluation set (0 = profile default)")
    max_steps: int = option(0, help="optimizer steps per training method (0 = profile default)")


@dataclass(frozen=True)
class Profile:
    n_docs: int
    n_eval_docs: int
    min_tokens: int
    max_tokens: int
    question_max_tokens: int
    answer_max_tokens: int
    max_prompt_tokens: int
    max_len: int
    truncation: str
    batch_size: int
    max_steps: int
    needle_lengths: tuple[int, ...]
    needle_depths: tuple[float, ...]
    eval_max_new_tokens: int


PROFILES = {
    "full": Profile(
        n_docs=10,
        n_eval_docs=2,
        min_tokens=2000,
        max_tokens=7000,
        question_max_tokens=160,
        answer_max_tokens=160,
        max_prompt_tokens=2048,
        max_len=4096,
        truncation="middle",
        batch_size=2,
        max_steps=2,
        needle_lengths=(1000, 2000, 3500),
        needle_depths=(10.0, 50.0, 90.0),
        eval_max_new_tokens=64,
    ),
    "quick": Profile(
        n_docs=3,
        n_eval_docs=1,
        min_tokens=600,
        max_tokens=1500,
        question_max_tokens=120,
        answer_max_tokens=96,
        max_prompt_tokens=2048,
        max_len=2048,
        truncation="right",
        batch_size=2,
        max_steps=1,
        needle_lengths=(600, 1200),
        needle_depths=(25.0, 75.0),
        eval_max_new_tokens=48,
    ),
}


def profile_for(cfg: DemoConfig) -> Profile:
    prof = PROFILES["quick" if cfg.quick else "full"]
    changes = {k: getattr(cfg, k) for k in ("n_docs", "n_eval_docs", "max_steps") if getattr(cfg, k)}
    return replace(prof, **changes)


# --------------------------------------------------------------------------------------------------- stages


def stage_corpus(run: RunDir, cfg: DemoConfig, prof: Profile) -> dict[str, Any]:
    if run.corpus.is_file():
        docs = read_corpus(run.corpus)
        return {"documents": len(docs), "resumed": True}
    ccfg = CorpusConfig(
        input="builtin",
        tokenizer=cfg.model,
        min_tokens=prof.min_tokens,
        max_tokens=prof.max_tokens,
        n_docs=prof.n_docs + prof.n_eval_docs,
        seed=cfg.seed,
        langs=["en"],
    )
    summary = corpus.run(ccfg, run)
    if summary.written < prof.n_docs + prof.n_eval_docs:
        raise ValueError(
            f"the built-in corpus gave {summary.written} documents of {prof.min_tokens}-"
            f"{prof.max_tokens} tokens; the demo needs {prof.n_docs + prof.n_eval_docs}"
        )
    return {"documents": summary.written, "tokens": summary.tokens}


def split_long_records(run: RunDir, prof: Profile) -> tuple[list[dict], list[dict]]:
    """(train, held out): the last ``n_eval_docs`` generated records in corpus order are held out for the
    mini evaluation set; at least one record always stays for training."""
    order = {d["id"]: k for k, d in enumerate(read_corpus(run.corpus))}
    records = sorted(read_jsonl(run.long), key=lambda r: order.get(r.get("doc_id"), len(order)))
    n_eval = min(prof.n_eval_docs, max(0, len(records) - 1))
    return records[: len(records) - n_eval], records[len(records) - n_eval :]


def stage_generate(run: RunDir, cfg: DemoConfig, prof: Profile) -> dict[str, Any]:
    gcfg = GenerateConfig(
        llm=f"local:{cfg.model}",
        question_max_tokens=prof.question_max_tokens,
        answer_max_tokens=prof.answer_max_tokens,
        max_prompt_tokens=prof.max_prompt_tokens,
        seed=cfg.seed,
        max_in_flight=1,
    )
    summary = selfinstruct.run(gcfg, run)
    return {
        "records": summary.records_total,
        "written_now": summary.written,
        "failed": summary.failed,
        "rejected_questions": summary.rejected_questions,
        "seconds": round(summary.seconds, 1),
    }


def stage_mix(run: RunDir, cfg: DemoConfig, prof: Profile) -> dict[str, Any]:
    report = short.run(ShortConfig(inputs=[str(SHORT_SAMPLE)], source="short-sample"), run)
    train_long, eval_long = split_long_records(run, prof)
    if not train_long:
        raise ValueError(
            f"no long example was generated (see {run.failed}); re-run the demo to retry the failed documents"
        )
    mixed = mix.run(
        MixConfig(n_long="all", seed=cfg.seed, exclude_doc_ids=[str(r.get("doc_id")) for r in eval_long]), run
    )
    write_mini_set(run, eval_long, train_long)
    return {
        "short_kept": report.kept,
        "short_dropped": report.read - report.kept,
        "long_train": mixed.long,
        "long_held_out": len(eval_long),
        "mixed": mixed.total,
    }


def mini_set_path(run: RunDir) -> Path:
    return run.mini_longbench_chat


def write_mini_set(run: RunDir, eval_long: list[dict], train_long: list[dict]) -> None:
    """LongBench-Chat-format cases from held-out documents: prompt = document + question, reference = the
    generated answer. Scored examples are constructed anchors (the reference itself = 10, its first third = 4,
    an answer to another document's question = 1), because no human scores exist for generated data."""
    cases = []
    others = [r["messages"][-1]["content"] for r in train_long] or ["I do not know."]
    for k, rec in enumerate(eval_long, 1):
        reference = rec["messages"][-1]["content"]
        anchors = [
            {"answer": reference, "score": 10},
            {"answer": reference[: max(1, len(reference) // 3)], "score": 4},
            {"answer": others[k % len(others)], "score": 1},
        ]
        cases.append(
            {
                "idx": k,
                "prompt": rec["messages"][0]["content"],
                "query": rec.get("question", ""),
                "answer": reference,
                "lang": rec.get("lang", "en"),
                "few_shots": anchors,
                "doc_id": rec.get("doc_id"),
            }
        )
    path = mini_set_path(run)
    if path.exists():
        path.unlink()
    append_jsonl(path, cases)


def stage_tokenize(run: RunDir, cfg: DemoConfig, prof: Profile) -> dict[str, Any]:
    if run.tokens_meta.is_file() and run.tokens_meta.stat().st_mtime >= run.mixed.stat().st_mtime:
        _, meta = load_tokens(run.tokens)
        return {"rows": meta.get("n_rows"), "resumed": True}
    result = tokenize.run(TokenizeConfig(model=cfg.model, max_len=prof.max_len, truncation=prof.truncation), run)
    return {
        "rows": result.n_rows,
        "tokens": result.n_tokens,
        "target_tokens": result.n_target_tokens,
        "truncated": result.n_truncated,
        "dropped": result.n_dropped,
    }


def stage_batching(run: RunDir, cfg: DemoConfig, prof: Profile) -> dict[str, Any]:
    lengths = read_token_lengths(run.tokens)
    out: dict[str, Any] = {}
    for method in METHODS:
        stats = batching.run(
            BatchPlanConfig(method=method, max_len=prof.max_len, batch_size=prof.batch_size, seed=cfg.seed, algo="ffd"),
            run,
            lengths=lengths,
        ).stats
        out[method] = {"batches": stats["n_batches"], "efficiency": round(stats["efficiency"], 3)}
    sim = batching.run(
        SimulateConfig(
            methods=list(METHODS),
            max_len=prof.max_len,
            world_size=8,
            batch_size=prof.batch_size,
            grad_accum=1,
            pack_grad_accum=1,
            seed=cfg.seed,
        ),
        run,
        lengths=lengths,
    )
    out["simulated_speedup_pack_vs_naive"] = round(sim.methods["pack"].get("speedup_vs_naive", 0.0), 2)
    return out


def stage_train(run: RunDir, cfg: DemoConfig, prof: Profile, method: str) -> dict[str, Any]:
    if (run.final_model(method) / "config.json").is_file():
        meta = read_json(run.train_meta(method), {}) or {}
        return {"steps": meta.get("steps"), "resumed": True, **_train_numbers(run, method)}
    ckpts = run.checkpoints(method)
    resume = ckpts.is_dir() and any(ckpts.glob("checkpoint-*"))
    tcfg = TrainConfig(
        model=cfg.model,
        method=method,
        algo="ffd",
        loss_norm="sequence",
        max_len=prof.max_len,
        per_device_batch_size=prof.batch_size,
        grad_accum=1,
        max_steps=prof.max_steps,
        epochs=1.0,
        warmup_ratio=0.0,
        learning_rate=2e-5,
        precision="fp32",
        save_steps=1,
        save_total_limit=1,
        seed=cfg.seed,
        resume=resume,
    )
    result = train.run(tcfg, run)
    return {
        "steps": result.steps,
        "final_loss": result.final_loss,
        "attention": result.attention_backend,
        **_train_numbers(run, method),
    }


def _train_numbers(run: RunDir, method: str) -> dict[str, Any]:
    rows = read_jsonl(run.metrics(method))
    if not rows:
        return {}
    tokens = sum(r.get("real_tokens", 0) for r in rows)
    wall = sum(r.get("step_s", 0.0) for r in rows)
    return {
        "real_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1) if wall else None,
        "padded_tokens": sum(r.get("padded_tokens", 0) for r in rows),
    }


def trained_model(run: RunDir) -> str:
    final = run.final_model("pack")
    return str(final) if (final / "config.json").is_file() else "smollm2"


def stage_needle(run: RunDir, cfg: DemoConfig, prof: Profile) -> dict[str, Any]:
    ncfg = NeedleConfig(
        model=trained_model(run),
        lengths=list(prof.needle_lengths),
        depths=list(prof.needle_depths),
        max_new_tokens=32,
        judge=f"local:{cfg.model}",
        seed=cfg.seed,
    )
    scores = needle.run(ncfg, run).scores or {}
    return {
        "cells": len(prof.needle_lengths) * len(prof.needle_depths),
        "mean_recall": scores.get("mean_recall"),
        "mean_recall_norm": scores.get("mean_recall_norm"),
        "mean_judge": scores.get("mean_judge"),
    }


def stage_longbench_chat(run: RunDir, cfg: DemoConfig, prof: Profile) -> dict[str, Any]:
    if not read_jsonl(mini_set_path(run)):
        return {"cases": 0, "skipped": "no held-out document produced a record (too few generated examples)"}
    lcfg = LongBenchChatConfig(
        data=str(mini_set_path(run)),
        model=trained_model(run),
        max_len=prof.max_len - prof.eval_max_new_tokens - 64,
        max_new_tokens=prof.eval_max_new_tokens,
        judge=f"local:{cfg.model}",
        judge_runs=2,
        seed=cfg.seed,
        dataset_label=MINI_SET_LABEL,
    )
    scores = longbench_chat.run(lcfg, run).scores or {}
    return {"cases": scores.get("n"), "mean_score": scores.get("mean"), "dataset": MINI_SET_LABEL}


# ------------------------------------------------------------------------------------------------ orchestration


def stages(cfg: DemoConfig, prof: Profile) -> list[tuple[str, Callable[[RunDir, DemoConfig, Profile], dict]]]:
    out: list[tuple[str, Callable]] = [
        ("corpus", stage_corpus),
        ("generate", stage_generate),
        ("mix", stage_mix),
        ("tokenize", stage_tokenize),
        ("batching", stage_batching),
    ]
    for method in METHODS:
        out.append((f"train:{method}", lambda r, c, p, m=method: stage_train(r, c, p, m)))
    out += [("eval:needle", stage_needle), ("eval:longbench-chat", stage_longbench_chat)]
    return out


def run_demo(cfg: DemoConfig, *, on_stage: Callable[[str, str, dict | None], None] | None = None) -> dict[str, Any]:
    """Run (or resume) every stage; returns ``{"stages": {name: numbers}, "seconds": ..., "run": path}``.

    ``on_stage(name, "start"|"done", numbers)`` reports progress. The summary is also written to
    ``<run>/demo_summary.json``.
    """
    run = RunDir(cfg.run)
    run.root.mkdir(parents=True, exist_ok=True)
    prof = profile_for(cfg)
    record(run, "demo", {**to_dict(cfg), "profile": prof.__dict__})
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    for name, fn in stages(cfg, prof):
        if on_stage:
            on_stage(name, "start", None)
        t = time.perf_counter()
        numbers = fn(run, cfg, prof)
        numbers["stage_seconds"] = round(time.perf_counter() - t, 1)
        results[name] = numbers
        if on_stage:
            on_stage(name, "done", numbers)
    summary = {
        "run": str(run.root),
        "profile": "quick" if cfg.quick else "full",
        "seconds": round(time.perf_counter() - t0, 1),
        "stages": results,
    }
    atomic_write_json(run.demo_summary, summary)
    return summary
