"""``longalign demo``: the whole LongAlign recipe at small scale, on a CPU, offline, with the embedded model.

Stages, each calling the stage's ``run(cfg, run_dir)`` as the per-stage commands do, all writing into one run
directory (and recording themselves in its run.json)::

    built-in corpus ─► Self-Instruct (embedded SmolLM2) ─► + short chat sample ─► mix ─► tokenize
      ─► plans naive | sort | pack + the simulator's prediction for exactly these sequences
      ─► one epoch per method over the same sequences (sequence loss weighting): measured time per method
      ─► base model vs the pack-trained model: held-out loss, needle grid, LongBench-Chat-format mini set,
         a small synthetic ladder (``longalign eval ruler``) with the difference and its interval

What it can show on two cores. SmolLM2-135M trains at roughly 100-300 tokens/s here, so the training subset is
small (a few long Self-Instruct records and a dozen short chats, 1-2k tokens each) and every method trains on
exactly the same sequences for one epoch: the measured time per method and its speedup over naive batching
stand next to the simulator's prediction for the same lengths. The pack run is the fine-tune: the held-out
loss on held-out conversations (long records of documents never trained on, and short chats) is the number that
moves measurably after a few optimizer steps -- mostly on the short chats, since the long records' answers were
written by the base model itself; the needle grid and the mini LongBench-Chat set (generated references,
judged by the same 135M model) are printed base vs fine-tuned but are too small and too noisy to show an
effect -- the summary says so. The full profile also scores both models on a small synthetic ladder (RULER's
needle and variable-tracking tasks, judged by string match, so no judge model's noise) on the same samples, in
float32 for both (the base model would otherwise decode from int4 on AVX-512 CPUs and its fine-tune in float32,
and the difference would measure the arithmetic), and prints the difference with its paired 95% interval: "no
resolved difference" when the interval contains zero. The quick profile leaves the ladder out. Each stage has a
time budget (the profile's, for a quiet 2-core machine); the progress output shows it and names the stage that
overran.

The base model's evaluation goes to a sibling run directory ``<run>-base`` so the dashboard can compare the two
(the "Compare with" of the LongBench-Chat, Needle and Ladder pages). Re-running resumes: finished stages are
skipped, generation and judging reuse the request cache, a finished training run is kept (an interrupted one, a
minute or two of work, starts again). The command is :mod:`longalign.recipes.demo_cli`.
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
from longalign.data import CorpusConfig, GenerateConfig, MixConfig, ShortConfig, corpus, mix, selfinstruct, short
from longalign.data.corpus import read_corpus
from longalign.data.short import SHORT_SAMPLE
from longalign.eval import (
    HeldOutConfig,
    LongBenchChatConfig,
    NeedleConfig,
    RulerConfig,
    heldout,
    longbench_chat,
    needle,
    ruler,
)
from longalign.eval.intervals import resolved
from longalign.rundir import RunDir, append_jsonl, atomic_write_json, read_json, read_jsonl
from longalign.stage import record
from longalign.tokenize import TokenizeConfig, load_tokens
from longalign.train import TrainConfig

log = logging.getLogger(__name__)

MINI_SET_LABEL = "LongBench-Chat-format mini set (held-out built-in documents, generated references)"


@dataclass
class DemoConfig(Options):
    """Options of ``longalign demo``."""

    run: str = option("runs/demo", help="run directory for every artifact of the demo (base model's eval: <run>-base)")
    quick: bool = option(
        False, help="the few-minute profile (3 short documents, a smaller subset, 1x2 needle grid) used in CI"
    )
    model: str = option(
        "smollm2",
        help="model that generates the data, is fine-tuned and judges (default: the embedded SmolLM2-135M-Instruct)",
    )
    seed: int = option(42, help="seed of document sampling, generation, batching and training")
    n_docs: int = option(0, help="training documents (0 = profile default)")
    n_eval_docs: int = option(0, help="held-out documents for held-out loss and the mini evaluation set (0 = default)")
    n_short: int = option(0, help="short chats in the training subset (0 = profile default)")
    max_steps: int = option(0, help="cap on optimizer steps per training method (0 = one full epoch)")
    precision: str = option(
        "auto",
        choices=("auto", "fp32", "bf16"),
        help="training precision of the three runs: auto = bf16 where the CPU has native bf16 (avx512_bf16 or "
        "amx_bf16; measured on the demo's pack run: 2.08x faster by wall clock, loss per step within 0.23 per cent of "
        "fp32) or the GPU supports it, else fp32",
    )


@dataclass(frozen=True)
class Profile:
    n_docs: int
    n_eval_docs: int
    n_short: int
    n_short_eval: int
    min_tokens: int
    max_tokens: int
    question_max_tokens: int
    answer_max_tokens: int
    max_prompt_tokens: int
    max_len: int
    truncation: str
    batch_size: int
    learning_rate: float
    max_steps: int
    needle_lengths: tuple[int, ...]
    needle_depths: tuple[float, ...]
    eval_max_new_tokens: int
    judge_runs: int
    # the synthetic ladder both models are scored on (no ladder when ladder_samples is 0)
    ladder_tasks: tuple[str, ...] = ()
    ladder_lengths: tuple[int, ...] = ()
    ladder_samples: int = 0
    ladder_max_new_tokens: int = 0  # answer budget of every ladder task (0 = each task's own)
    # seconds each stage should take on a quiet 2-core machine (measured; the progress output names overruns)
    budgets: tuple[tuple[str, float], ...] = ()

    def budget(self, stage: str) -> float | None:
        return dict(self.budgets).get(stage)


PROFILES = {
    "full": Profile(
        n_docs=5,  # with the batched ladder, what fits 5 minutes from a fresh clone (measured: see budgets)
        n_eval_docs=2,
        n_short=12,
        n_short_eval=4,
        min_tokens=700,
        max_tokens=1500,
        question_max_tokens=160,
        answer_max_tokens=160,
        max_prompt_tokens=1536,
        max_len=1536,
        truncation="middle",
        batch_size=2,
        learning_rate=2e-4,
        max_steps=0,
        needle_lengths=(1000, 2000),
        needle_depths=(25.0, 75.0),
        eval_max_new_tokens=64,
        judge_runs=1,
        # chosen by measurement: per model 10,509 prompt tokens prefilled after prefix reuse and 354-480 answer
        # tokens (the 40-token cap bounds the rambling ones): ~53 s a model answering one sample at a time on
        # 2026-12-06's quiet machine, ~25 s with all 12 decoded in one batch (the same 24 outputs; bfloat16
        # decoding saved only 14%, so both stay in float32); 1,024 tokens is inside the fine-tune's 1,536-token
        # window; the one-value needle tasks score 1.0 for both models there
        ladder_tasks=("niah_multivalue", "vt"),
        ladder_lengths=(1024,),
        ladder_samples=6,
        ladder_max_new_tokens=40,
        # a fresh clone's run on a quiet 2-core machine of this kind (2026-12-06 18:11 UTC, load 1.2-2.0, 271 s in
        # all, trainings in bf16, the ladder batched): each stage's seconds plus about a fifth, at least 5 s
        budgets=(
            ("corpus", 5),
            ("generate", 76),
            ("mix", 5),
            ("tokenize", 5),
            ("batching", 5),
            ("train:naive", 46),
            ("train:sort", 29),
            ("train:pack", 23),
            ("eval:heldout", 15),
            ("eval:needle", 44),
            ("eval:longbench-chat", 30),
            ("eval:ladder", 58),
        ),
    ),
    "quick": Profile(
        n_docs=2,
        n_eval_docs=1,
        n_short=3,
        n_short_eval=2,
        min_tokens=500,
        max_tokens=1000,
        question_max_tokens=120,
        answer_max_tokens=80,
        max_prompt_tokens=1024,
        max_len=1024,
        truncation="right",
        batch_size=2,
        learning_rate=2e-4,
        max_steps=0,
        needle_lengths=(600,),
        needle_depths=(25.0, 75.0),
        eval_max_new_tokens=32,
        judge_runs=1,
        budgets=(
            ("corpus", 10),
            ("generate", 60),
            ("mix", 5),
            ("tokenize", 15),
            ("batching", 5),
            ("train:naive", 30),
            ("train:sort", 25),
            ("train:pack", 25),
            ("eval:heldout", 15),
            ("eval:needle", 25),
            ("eval:longbench-chat", 25),
        ),
    ),
}


def profile_for(cfg: DemoConfig) -> Profile:
    prof = PROFILES["quick" if cfg.quick else "full"]
    changes = {k: getattr(cfg, k) for k in ("n_docs", "n_eval_docs", "n_short", "max_steps") if getattr(cfg, k)}
    return replace(prof, **changes)


def base_run_dir(run: RunDir) -> RunDir:
    """Where the base (not fine-tuned) model's evaluation goes: the sibling ``<run>-base``."""
    return RunDir(run.root.parent / f"{run.root.name}-base")


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
    evaluation; at least one record always stays for training."""
    order = {d["id"]: k for k, d in enumerate(read_corpus(run.corpus))}
    records = sorted(read_jsonl(run.long), key=lambda r: order.get(r.get("doc_id"), len(order)))
    n_eval = min(prof.n_eval_docs, max(0, len(records) - 1))
    return records[: len(records) - n_eval], records[len(records) - n_eval :]


def stage_generate(run: RunDir, cfg: DemoConfig, prof: Profile) -> dict[str, Any]:
    from longalign.llm.local_model import release_local_models

    gcfg = GenerateConfig(
        llm=f"local:{cfg.model}",
        question_max_tokens=prof.question_max_tokens,
        answer_max_tokens=prof.answer_max_tokens,
        max_prompt_tokens=prof.max_prompt_tokens,
        seed=cfg.seed,
        max_in_flight=1,
        # the 135M generator rarely writes several on-topic questions at once (the relevance gate rejects most):
        # accept an attempt with one, answer it, try three times
        min_questions=1,
        max_question_attempts=3,
        max_answer_attempts=2,
    )
    summary = selfinstruct.run(gcfg, run)
    release_local_models()  # the generator's copy of the model is not needed by training
    return {
        "records": summary.records_total,
        "written_now": summary.written,
        "failed": summary.failed,
        "rejected_questions": summary.rejected_questions,
        "rejected_by_reason": _rejections(summary.quality),
        "seconds": round(summary.seconds, 1),
    }


def _rejections(quality: dict[str, Any] | None) -> dict[str, int]:
    """Rejection counts by reason from ``data/quality.json`` (questions and answers together)."""
    out: dict[str, int] = {}
    for key in ("questions", "answers"):
        part = (quality or {}).get(key) or {}
        for reason, n in (part.get("rejected") or {}).items():
            out[f"{key[:-1]}:{reason}"] = out.get(f"{key[:-1]}:{reason}", 0) + int(n)
    return out


def short_train_path(run: RunDir) -> Path:
    """The short chats the demo trains on (data/short.jsonl less the held-out ones)."""
    return run.data / "short_train.jsonl"


def stage_mix(run: RunDir, cfg: DemoConfig, prof: Profile) -> dict[str, Any]:
    short.run(
        ShortConfig(
            inputs=[str(SHORT_SAMPLE)],
            source="short-sample",
            max_conversations=prof.n_short + prof.n_short_eval,
            seed=cfg.seed,
        ),
        run,
    )
    shorts = read_jsonl(run.short)
    n_eval_short = min(prof.n_short_eval, max(0, len(shorts) - 1))
    train_short, eval_short = shorts[: len(shorts) - n_eval_short], shorts[len(shorts) - n_eval_short :]
    _rewrite_jsonl(short_train_path(run), train_short)
    train_long, eval_long = split_long_records(run, prof)
    if not train_long:
        raise ValueError(
            f"no long example was generated (see {run.failed}); re-run the demo to retry the failed documents"
        )
    mixed = mix.run(
        MixConfig(
            n_long="all",
            seed=cfg.seed,
            exclude_doc_ids=[str(r.get("doc_id")) for r in eval_long],
            short_path=str(short_train_path(run)),
        ),
        run,
    )
    write_mini_set(run, eval_long, train_long)
    write_heldout(run, eval_long, eval_short)
    return {
        "short_train": len(train_short),
        "short_held_out": len(eval_short),
        "long_train": mixed.long,
        "long_held_out": len(eval_long),
        "mixed": mixed.total,
    }


def _rewrite_jsonl(path: Path, rows: list[dict]) -> None:
    if path.exists():
        path.unlink()
    append_jsonl(path, rows)


def mini_set_path(run: RunDir) -> Path:
    return run.mini_longbench_chat


def write_heldout(run: RunDir, eval_long: list[dict], eval_short: list[dict] = ()) -> None:
    """The held-out conversations (whole, as training would see them) for ``eval heldout``: long Self-Instruct
    records of held-out documents (``kind="long"``: answers the base model wrote itself, so little to learn)
    and held-out short chats (``kind="short"``: replies written by others, whose style the fine-tune learns)."""
    rows = [
        {"messages": r["messages"], "kind": kind, "doc_id": r.get("doc_id"), "source": r.get("source")}
        for kind, group in (("long", eval_long), ("short", eval_short))
        for r in group
    ]
    _rewrite_jsonl(run.heldout, rows)


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


def cost_model_for(model: str) -> dict[str, float]:
    """Simulator coefficients for ``model`` on one device from its config's FLOP count (6 x parameters per
    token, 6 x hidden x layers per n^2). The absolute rate is nominal; the demo compares only ratios."""
    from longalign.batching import CostModel
    from longalign.models import load_model_config

    c = load_model_config(str(model))
    h, layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    heads = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or h // heads
    inter = getattr(c, "intermediate_size", 4 * h)
    per_layer = h * heads * head_dim * 2 + h * kv * head_dim * 2 + 3 * h * inter
    n_params = layers * per_layer + vocab * h
    nominal = CostModel.for_transformer(n_params, layers, h, flops_per_second=1e11)
    return {"per_token": nominal.per_token, "per_token_sq": nominal.per_token_sq, "n_params": float(n_params)}


def stage_batching(run: RunDir, cfg: DemoConfig, prof: Profile) -> dict[str, Any]:
    lengths = read_token_lengths(run.tokens)
    out: dict[str, Any] = {"sequences": int(len(lengths)), "real_tokens": int(sum(lengths))}
    for method in METHODS:
        stats = batching.run(
            BatchPlanConfig(method=method, max_len=prof.max_len, batch_size=prof.batch_size, seed=cfg.seed, algo="ffd"),
            run,
            lengths=lengths,
        ).stats
        out[method] = {
            "batches": stats["n_batches"],
            "padding_fraction": round(stats["padding_fraction"], 3),
            "fill": round(stats["fill"], 3),
        }
    cost = cost_model_for(cfg.model)
    # the same settings as the training runs below: one device, one micro-batch per step
    sim = batching.run(
        SimulateConfig(
            methods=list(METHODS),
            max_len=prof.max_len,
            world_size=1,
            batch_size=prof.batch_size,
            grad_accum=1,
            pack_grad_accum=1,
            seed=cfg.seed,
            per_token=cost["per_token"],
            per_token_sq=cost["per_token_sq"],
        ),
        run,
        lengths=lengths,
    )
    out["simulated_speedup_vs_naive"] = {
        m: round(sim.methods[m].get("speedup_vs_naive") or 1.0, 2) for m in METHODS if m in sim.methods
    }
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
        max_steps=prof.max_steps if prof.max_steps > 0 else -1,
        epochs=1.0,
        warmup_ratio=0.0,
        learning_rate=prof.learning_rate,
        precision=demo_precision(cfg),
        save_steps=0,
        seed=cfg.seed,
        resume=resume,
    )
    result = train.run(tcfg, run)
    return {
        "steps": result.steps,
        "final_loss": result.final_loss,
        "attention": result.attention_backend,
        "precision": result.run_meta.get("precision"),
        **_train_numbers(run, method),
    }


def demo_precision(cfg: DemoConfig) -> str:
    """The trainings' precision: ``cfg.precision``; ``auto`` is bf16 on a CPU with native bf16 (the demo's
    trainings take about half the time; see the option's help for the measurement), else the trainer's own
    ``auto`` (bf16 on a GPU that supports it, fp32 elsewhere)."""
    if cfg.precision != "auto":
        return cfg.precision
    import torch

    from longalign.train.model_setup import cpu_bf16_support

    return "bf16" if not torch.cuda.is_available() and cpu_bf16_support() else "auto"


def _train_numbers(run: RunDir, method: str) -> dict[str, Any]:
    rows = read_jsonl(run.metrics(method))
    if not rows:
        return {}
    tokens = sum(r.get("real_tokens", 0) for r in rows)
    wall = sum(r.get("step_s", 0.0) for r in rows)
    return {
        "real_tokens": tokens,
        "padded_tokens": sum(r.get("padded_tokens", 0) for r in rows),
        "train_seconds": round(wall, 1),
        "tokens_per_s": round(tokens / wall, 1) if wall else None,
    }


def trained_model(run: RunDir) -> str | None:
    final = run.final_model("pack")
    return str(final) if (final / "config.json").is_file() else None


def _models(run: RunDir, cfg: DemoConfig) -> list[tuple[str, str, RunDir]]:
    """(label, model spec, run directory of its evaluation): the base model, then the fine-tuned one."""
    out = [("base", cfg.model, base_run_dir(run))]
    tuned = trained_model(run)
    if tuned is None:
        raise ValueError(f"{run.final_model('pack')}: the pack run saved no model; re-run the demo to train it")
    out.append(("tuned", tuned, run))
    return out


def _pair(numbers: dict[str, dict[str, Any]], key: str) -> dict[str, Any]:
    out = {label: n.get(key) for label, n in numbers.items()}
    if all(isinstance(v, (int, float)) for v in out.values()) and len(out) == 2:
        out["change"] = round(out["tuned"] - out["base"], 4)
    return out


NO_HELD_OUT = "no held-out document produced a record (too few generated examples)"


def _scores_of_both(
    run: RunDir, cfg: DemoConfig, step: Callable[[Any, RunDir], Any], config_for: Callable[[str], Any]
) -> dict[str, dict[str, Any]]:
    """``{"base": scores, "tuned": scores}``: ``step(config_for(model), run_dir)`` for the base model (into the
    sibling run) and the fine-tuned one (into this run)."""
    return {label: step(config_for(model), where).scores or {} for label, model, where in _models(run, cfg)}


def stage_heldout(run: RunDir, cfg: DemoConfig, prof: Profile) -> dict[str, Any]:
    if not read_jsonl(run.heldout):
        return {"skipped": NO_HELD_OUT}
    per = _scores_of_both(
        run,
        cfg,
        heldout.run,
        lambda model: HeldOutConfig(
            data=str(run.heldout), model=model, tokenizer=cfg.model, max_len=prof.max_len, truncation=prof.truncation
        ),
    )
    out = {
        "conversations": per["base"].get("n"),
        "target_tokens": per["base"].get("target_tokens"),
        "sequence_mean_loss": _pair(per, "sequence_mean"),
        "token_mean_loss": _pair(per, "token_mean"),
    }
    for kind in ("long", "short"):
        by_kind = {label: (p.get("by_kind") or {}).get(kind) or {} for label, p in per.items()}
        if by_kind["base"].get("n"):
            out[f"{kind}_conversations"] = by_kind["base"]["n"]
            out[f"{kind}_sequence_mean_loss"] = _pair(by_kind, "sequence_mean")
    return out


def stage_needle(run: RunDir, cfg: DemoConfig, prof: Profile) -> dict[str, Any]:
    per = _scores_of_both(
        run,
        cfg,
        needle.run,
        lambda model: NeedleConfig(
            model=model,
            tokenizer=cfg.model,
            lengths=list(prof.needle_lengths),
            depths=list(prof.needle_depths),
            max_new_tokens=32,
            judge=f"local:{cfg.model}",
            seed=cfg.seed,
        ),
    )
    return {
        "cells": len(prof.needle_lengths) * len(prof.needle_depths),
        "mean_recall": _pair(per, "mean_recall"),
        "mean_recall_norm": _pair(per, "mean_recall_norm"),
        "mean_judge": _pair(per, "mean_judge"),
    }


def stage_longbench_chat(run: RunDir, cfg: DemoConfig, prof: Profile) -> dict[str, Any]:
    if not read_jsonl(mini_set_path(run)):
        return {"cases": 0, "skipped": NO_HELD_OUT}
    per = _scores_of_both(
        run,
        cfg,
        longbench_chat.run,
        lambda model: LongBenchChatConfig(
            data=str(mini_set_path(run)),
            model=model,
            tokenizer=cfg.model,
            max_len=prof.max_len - prof.eval_max_new_tokens - 64,
            max_new_tokens=prof.eval_max_new_tokens,
            judge=f"local:{cfg.model}",
            judge_runs=prof.judge_runs,
            seed=cfg.seed,
            dataset_label=MINI_SET_LABEL,
        ),
    )
    return {"cases": per["base"].get("n"), "mean_score": _pair(per, "mean"), "dataset": MINI_SET_LABEL}


LADDER_DTYPE = "float32"  # both models on one numeric path (int4 decoding applies to the base model only)


def ladder_config(cfg: DemoConfig, prof: Profile, model: str) -> RulerConfig:
    """The demo's ladder for ``model``: the profile's tasks, lengths, samples and answer budget, the demo's seed
    (so both models answer the same prompts and their scores pair up), float32 decoding, all samples decoded in
    one batch."""
    return RulerConfig(
        model=model,
        tasks=list(prof.ladder_tasks),
        lengths=list(prof.ladder_lengths),
        samples=prof.ladder_samples,
        max_new_tokens=prof.ladder_max_new_tokens,
        seed=cfg.seed,
        dtype=LADDER_DTYPE,
        progress=False,
        batch_size=ladder_batch(prof),
    )


def ladder_batch(prof: Profile) -> int:
    """Every ladder sample of a model answered in one batch: the prompts are 1k tokens, so the rows' caches are
    small, and the batch decodes for the longest answer (the profile's budget) once instead of once a sample."""
    return max(1, len(prof.ladder_tasks) * len(prof.ladder_lengths) * prof.ladder_samples)


def stage_ladder(run: RunDir, cfg: DemoConfig, prof: Profile) -> dict[str, Any]:
    """Both models on the profile's ladder; the fine-tuned model minus the base over the samples both answered,
    with the paired 95% interval (x 100)."""
    results, effective = {}, {}
    for label, model, where in _models(run, cfg):
        summary = ruler.run(ladder_config(cfg, prof, model), where)
        results[label] = ruler.summarised_results(where, summary.scores)
        effective[label] = {"effective_length": summary.scores.get("effective_length")}
    d = ruler.compare(results["tuned"], results["base"])["overall"]
    return {
        "tasks": list(prof.ladder_tasks),
        "lengths": list(prof.ladder_lengths),
        "samples": prof.ladder_samples,
        "dtype": LADDER_DTYPE,
        "score": _pair({"base": {"s": d["b"]}, "tuned": {"s": d["a"]}}, "s"),
        "effective_length": _pair(effective, "effective_length"),
        "difference": {
            "diff": d["diff"],
            "lo": d["lo"],
            "hi": d["hi"],
            "pairs": d["n"],
            "paired": d["paired"],
            "resolved": resolved(d),
        },
    }


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
    out += [
        ("eval:heldout", stage_heldout),
        ("eval:needle", stage_needle),
        ("eval:longbench-chat", stage_longbench_chat),
    ]
    if prof.ladder_samples:
        out.append(("eval:ladder", stage_ladder))
    return out


def compare_methods(results: dict[str, Any]) -> dict[str, Any]:
    """Measured seconds per method over the same sequences, the measured speedup vs naive and the simulator's."""
    sim = (results.get("batching") or {}).get("simulated_speedup_vs_naive") or {}
    secs = {m: (results.get(f"train:{m}") or {}).get("train_seconds") for m in METHODS}
    out: dict[str, Any] = {}
    for m in METHODS:
        measured = secs["naive"] / secs[m] if secs.get("naive") and secs.get(m) else None
        out[m] = {
            "seconds": secs[m],
            "measured_speedup_vs_naive": round(measured, 2) if measured else None,
            "simulated_speedup_vs_naive": sim.get(m),
            "real_tokens": (results.get(f"train:{m}") or {}).get("real_tokens"),
        }
    return out


def _precision_note(stages: dict[str, Any]) -> str:
    """`` in bf16`` (or another precision) when the three trainings ran in one recorded precision."""
    found = {(stages.get(f"train:{m}") or {}).get("precision") for m in METHODS}
    return f" in {found.pop()}" if len(found) == 1 and None not in found else ""


def explain(summary: dict[str, Any]) -> list[str]:
    """One line per number the demo reports, saying what it is and what it can (not) show."""
    st = summary["stages"]
    lines = []
    gen = st.get("generate") or {}
    reasons = ", ".join(f"{k} {v}" for k, v in (gen.get("rejected_by_reason") or {}).items()) or "none"
    lines.append(
        f"Self-Instruct: {gen.get('records')} long records from the embedded 135M model "
        f"({gen.get('failed')} documents failed validation; rejected: {reasons}; off_topic / ungrounded come from "
        "the relevance gate, counts in data/quality.json)."
    )
    b = st.get("batching") or {}
    cmp_ = summary.get("methods") or {}
    if cmp_.get("naive", {}).get("seconds"):
        parts = []
        for m in METHODS:
            c = cmp_[m]
            measured, simulated = c["measured_speedup_vs_naive"], c["simulated_speedup_vs_naive"]
            parts.append(f"{m} {c['seconds']:.0f} s (x{measured}, simulated x{simulated})")
        lines.append(
            f"Batching: one epoch over the same {b.get('sequences')} sequences ({b.get('real_tokens')} real tokens) "
            f"per method{_precision_note(st)}: "
            + "; ".join(parts)
            + ". Measured = naive's training seconds / the method's; simulated ="
            " the cost model's prediction for these lengths on one device (padding is the only waste it sees there)."
        )
    h = st.get("eval:heldout") or {}
    loss = h.get("sequence_mean_loss") or {}
    if loss.get("base") is not None:
        lines.append(
            f"Held-out loss (mean over {h.get('conversations')} held-out conversations of each one's token-mean "
            f"loss on the replies): base {loss['base']:.3f} -> fine-tuned {loss['tuned']:.3f} "
            f"({loss['change']:+.3f}); lower = the pack + sequence run learned what the data asks for. "
            "It is exact (no sampling, no judge), so any change is the training's."
        )
        for kind, what in (
            ("long", "long records of held-out documents, whose answers the base model wrote itself"),
            ("short", "short chats not trained on, whose replies others wrote"),
        ):
            pair = h.get(f"{kind}_sequence_mean_loss") or {}
            if pair.get("change") is None:
                continue
            why = (
                "the fine-tune moved towards the training replies' style"
                if pair["change"] < 0
                else "a few steps at a high learning rate fitted the training records' specifics, and the base "
                "model already rated its own answers highly"
            )
            lines.append(
                f"Held-out loss, {kind}: {h.get(f'{kind}_conversations')} {what}: base {pair['base']:.3f} -> "
                f"fine-tuned {pair['tuned']:.3f} ({pair['change']:+.3f}); {why}."
            )
    n = st.get("eval:needle") or {}
    rec = n.get("mean_recall") or {}
    norm = n.get("mean_recall_norm") or {}
    if rec:
        lines.append(
            f"Needle: key-phrase recall base {rec.get('base')} -> fine-tuned {rec.get('tuned')} over {n.get('cells')} "
            f"cells (normalised and stemmed: {norm.get('base')} -> {norm.get('tuned')}); with so few cells one cell "
            "moves the mean by a large step and the contexts are short, so this shows the grid works, not an effect."
        )
    lbc = st.get("eval:longbench-chat") or {}
    sc = lbc.get("mean_score") or {}
    if sc:
        lines.append(
            f"LongBench-Chat-format mini set ({lbc.get('cases')} held-out cases, generated references, judged by the "
            f"same 135M model): base {sc.get('base')} -> fine-tuned {sc.get('tuned')} (1-10); too few cases and too "
            "weak a judge to show an effect."
        )
    ladder = ladder_line(st.get("eval:ladder") or {})
    if ladder:
        lines.append(ladder)
    over = summary.get("overruns") or []
    lines.append(
        "Time budgets: every stage took no longer than planned."
        if not over
        else "Slower than planned: "
        + "; ".join(overrun_text(o["stage"], o["seconds"], o["budget"]) for o in over)
        + ". The plan is the time this stage took on the reference machine; the results are not affected."
    )
    return lines


def ladder_line(numbers: dict[str, Any]) -> str | None:
    """The ladder's difference in words: both scores, the difference with its 95% interval, and "no resolved
    difference" when the interval contains zero (None when the ladder did not run)."""
    sc, d = numbers.get("score") or {}, numbers.get("difference") or {}
    if sc.get("base") is None or d.get("diff") is None:
        return None
    lengths = ", ".join(f"{int(x):,}" for x in numbers.get("lengths") or [])
    pairs = f"{d['pairs']} samples both answered" if d.get("paired") else "different samples"
    if not d.get("resolved"):
        verdict = "no resolved difference (the interval contains zero)"
    else:
        verdict = (
            "the fine-tuned model scores " + ("higher" if d["lo"] > 0 else "lower") + " (the interval excludes zero)"
        )
    return (
        f"Ladder ({', '.join(numbers.get('tasks') or [])} at {lengths} tokens, {numbers.get('samples')} samples "
        f"each, both models in {numbers.get('dtype')}; string-match score 0-100): base {sc['base']:.1f} -> "
        f"fine-tuned {sc['tuned']:.1f}, difference {d['diff']:+.1f} (95% interval {d['lo']:+.1f} to {d['hi']:+.1f}, "
        f"{pairs}): {verdict}."
    )


def overrun_text(stage: str, seconds: float, budget: float) -> str:
    """What a stage's overrun means, in words: 'generate took 84 s, planned 80 s: the machine is slower or busier
    than the reference'."""
    return f"{stage} took {seconds:.0f} s, planned {budget:.0f} s: the machine is slower or busier than the reference"


def run_demo(cfg: DemoConfig, *, on_stage: Callable[[str, str, dict | None], None] | None = None) -> dict[str, Any]:
    """Run (or resume) every stage; returns ``{"stages": {name: numbers}, "methods": ..., "explained": [...],
    "overruns": [...], "seconds": ..., "run": path}``.

    ``on_stage(name, "start"|"done", numbers)`` reports progress (``numbers["budget_s"]`` is the stage's budget
    at both events). The summary is also written to ``<run>/demo_summary.json``.
    """
    run = RunDir(cfg.run)
    run.root.mkdir(parents=True, exist_ok=True)
    prof = profile_for(cfg)
    record(run, "demo", {**to_dict(cfg), "profile": prof.__dict__})
    results: dict[str, Any] = {}
    overruns = []
    t0 = time.perf_counter()
    for name, fn in stages(cfg, prof):
        budget = prof.budget(name)
        if on_stage:
            on_stage(name, "start", {"budget_s": budget})
        t = time.perf_counter()
        numbers = fn(run, cfg, prof)
        numbers["stage_seconds"] = round(time.perf_counter() - t, 1)
        numbers["budget_s"] = budget
        if budget is not None and numbers["stage_seconds"] > budget and not numbers.get("resumed"):
            overruns.append({"stage": name, "seconds": numbers["stage_seconds"], "budget": budget})
            log.debug("%s", overrun_text(name, numbers["stage_seconds"], budget))
        results[name] = numbers
        if on_stage:
            on_stage(name, "done", numbers)
    summary = {
        "run": str(run.root),
        "base_run": str(base_run_dir(run).root),
        "profile": "quick" if cfg.quick else "full",
        "seconds": round(time.perf_counter() - t0, 1),
        "stages": results,
        "methods": compare_methods(results),
        "overruns": overruns,
    }
    summary["explained"] = explain(summary)
    atomic_write_json(run.demo_summary, summary)
    return summary
