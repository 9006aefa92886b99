"""``longalign eval ruler``: a ladder of synthetic long-context tasks (RULER, Hsieh et al., arXiv 2404.06654) over
context lengths, scored without a judge, with the *effective context length* of the model.

Tasks and how each sample is built: :mod:`longalign.eval.ruler_tasks`. A length counts the whole window a
sample occupies in the evaluated model's own tokens: the prompt (chat template and answer prefix included) is
exactly ``length - max_new_tokens`` tokens and the answer may take the remaining ``max_new_tokens`` (each task's
RULER budget: 128 for the needle tasks, 30 for ``vt``, 120 for ``cwe``, 50 for ``fwe``, 32 for QA; or
``--max-new-tokens``). So ``--lengths 8192`` fits a model with 8,192 positions exactly, and a length beyond the
model's positions is refused before anything is loaded, with the fix (a model extended with ``longalign train
--rope-scale``, or shorter lengths). For an endpoint the prompt is counted with ``--tokenizer`` (the embedded
model's by default), an approximation of the served model's count, and ``--max-positions`` gives the window to
check against.

Answers are greedy by default (``--temperature 0``), start after the task's answer prefix (``--answer-prefix
false`` lets the model start its own reply; an endpoint gets the prefix as an assistant message to continue,
which vLLM and llama.cpp's server do) and are scored by RULER's string match: the share of expected values in
the output (QA: any reference answer). A cell (task x length) reports the mean score x 100 with a 95% Wilson
interval (:mod:`longalign.eval.intervals`); a length reports the mean of its tasks' scores and its interval; the
effective context length is the longest length up to which every length's average stays above ``--threshold``
(RULER's 85.6, Llama-2-7B's score at 4k).

Numeric path. A local model decodes on the path ``--dtype`` names (default: ``$LONGALIGN_LOCAL_DTYPE``, else int4
decoding on an AVX-512 CPU, :mod:`longalign.llm.int4_decode`): int4 decoding reads the layers whose weights lie on
the 4-bit grid of the embedded model's release, which a fine-tuned model's weights have left, so with the
default the base model decodes from int4 and its fine-tune in float32. A comparison of two models therefore runs
both with ``--dtype float32``. Every result records the path its answer was decoded on (``precision``: int4 only
where layers actually decode from int4), the path asked for is part of the setup (results of another path are
neither skipped nor summarised) and ``summary.json`` names it.

Local models reuse shared prompt prefixes (``--prefix-reuse``, :class:`~longalign.llm.local_model.PrefixCache`):
all pending samples are built first and answered in the lexicographic order of their token ids, so each prompt
follows the one it shares the longest prefix with and only the rest is prefilled (the header and the haystack
up to the first insert are shared by the samples of a stream, across tasks and lengths). Outputs are the same
with and without (``benchmarks/ladder_throughput.py`` checks it).

Files: ``<run>/eval/ruler/results.jsonl`` (one line per sample: task, length, index, depths, expected, output,
score, token counts), ``prompts.jsonl`` (the user turn and answer prefix of every sample, for reading a sample
back) and ``summary.json``. Every answered sample is appended at once; a re-run with the same settings (model,
seed, haystack or QA file, answer budget and prefix, sampling) skips every sample already in results.jsonl.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longalign.config import option, redefault
from longalign.eval.intervals import independent_difference, mean_interval, paired_difference, pooled_interval, resolved
from longalign.eval.options import ModelOptions, SamplingOptions
from longalign.eval.ruler_tasks import (
    ALL_TASKS,
    GENERATOR_VERSION,
    SYNTHETIC_TASKS,
    TASKS,
    PromptFormat,
    RulerSample,
    TaskContext,
    score_output,
)
from longalign.eval.summary import EvalSummary
from longalign.options import InputErrorOptions
from longalign.rundir import RunDir, append_jsonl, atomic_write_json, read_json, read_jsonl, skipped_lines
from longalign.stage import as_run_dir, record

log = logging.getLogger(__name__)

BENCHMARK = "ruler"
RULER_THRESHOLD = 85.6  # RULER's bar: Llama-2-7B's average at 4k tokens
DEFAULT_LENGTHS = (1024, 2048, 4096, 8192)
LENGTH_COUNTING = (
    "a length is the whole window of a sample: prompt tokens (chat template and answer prefix included, "
    "exact in the evaluated model's tokenizer) + the task's answer budget (max_new_tokens)"
)


@dataclass
class RulerConfig(ModelOptions, SamplingOptions, InputErrorOptions):
    """``longalign eval ruler``: synthetic long-context ladder (RULER tasks x lengths)."""

    tasks: list[str] = option(
        default_factory=lambda: list(SYNTHETIC_TASKS),
        choices=ALL_TASKS,
        help="tasks to run: " + ", ".join(ALL_TASKS) + " (qa_* need --qa-squad / --qa-hotpot)",
    )
    lengths: list[int] = option(
        default_factory=lambda: list(DEFAULT_LENGTHS),
        help="ladder lengths in the model's tokens: prompt (chat template included) + the answer budget",
    )
    samples: int = option(10, minimum=1, help="samples per task x length")
    haystack: str = option(
        "builtin",
        help="documents of the *_docs-style needle tasks: 'builtin' (pydoc help topics), a folder of "
        ".txt/.md/.py files, or a corpus .jsonl",
    )
    qa_squad: str = option("", help="SQuAD-layout JSON file for qa_squad (yours; none is bundled)")
    qa_hotpot: str = option("", help="HotpotQA-layout JSON file for qa_hotpot (yours; none is bundled)")
    threshold: float = option(
        RULER_THRESHOLD, minimum=0, maximum=100, help="average score a length must exceed to count as effective"
    )
    answer_prefix: bool = option(True, help="start every answer with the task's answer prefix")
    prefix_reuse: bool = option(True, help="local models: prefill prompt prefixes shared by samples once")
    batch_size: int = option(
        1,
        minimum=1,
        help="local models: answer up to this many samples together (each prompt prefilled alone, the answers "
        "decoded as one batch, which costs little more per step than one answer on a CPU); greedy answers equal "
        "one-by-one's up to the rounding of batched products",
    )
    max_positions: int = option(
        0,
        minimum=0,
        help="the model's context window, to refuse longer lengths (0 = from a local model's config; an endpoint "
        "is then not checked)",
    )
    dtype: str = option(
        "",
        help="local models: float32 (exact), bfloat16, or int4 (decoding from int4 where weights lie on the "
        "4-bit grid; a fine-tuned model's do not); empty = $LONGALIGN_LOCAL_DTYPE, else int4 on AVX-512 CPUs. "
        "Compare two models on one path: float32",
    )
    progress: bool = option(True, help="show progress bars")
    compare: str = option(
        "",
        help="another run directory with a ladder on the same samples (same tasks, lengths and seed; e.g. the base "
        "model's): this run minus that one per task x length with paired 95%% intervals, printed and written to "
        "<run>/eval/ruler/compare.json",
    )
    max_new_tokens: int = redefault(0, note="0 = each task's own budget")
    seed: int = redefault(42, note="also draws the samples")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.tasks:
            raise ValueError(f"tasks is empty; choose from {', '.join(ALL_TASKS)}")
        if not self.lengths:
            raise ValueError("lengths is empty; give e.g. --lengths 1024,2048,4096")
        for length in self.lengths:
            if length < 64:
                raise ValueError(f"length {length} is too short for any task; use 256 tokens or more")
        if "qa_squad" in self.tasks and not self.qa_squad:
            raise ValueError("task qa_squad needs --qa-squad FILE (a SQuAD-layout JSON file of your own)")
        if "qa_hotpot" in self.tasks and not self.qa_hotpot:
            raise ValueError("task qa_hotpot needs --qa-hotpot FILE (a HotpotQA-layout JSON file of your own)")


@dataclass
class RulerSummary(EvalSummary):
    results: Path | None = None
    answered: int = 0  # samples answered by this call
    done_before: int = 0  # samples found in results.jsonl
    skipped: dict[str, Any] | None = None  # bad QA records skipped (on_error=skip)
    comparison: dict[str, Any] | None = None  # compare.json's content (with --compare)

    def lines(self) -> list[str]:
        s = self.scores or {}
        out = skipped_lines(self.skipped)
        out.append(
            f"RULER ladder of {s.get('model')}: {s.get('samples')} samples per task x length, "
            f"{self.answered} answered now, {self.done_before} before (score 0-100 [95% interval])"
        )
        out += ladder_table(s)
        eff = s.get("effective_length")
        thr = s.get("threshold")
        if eff is None:
            out.append(f"effective context length: none (the average is not above {thr} at {s['lengths'][0]})")
        else:
            more = " (every length tested)" if eff == max(s.get("lengths") or [0]) else ""
            out.append(f"effective context length: {eff} (average above {thr} up to there){more}")
        out += self.note_lines()
        out.append(f"results: {self.results}")
        if self.comparison:
            out += comparison_lines(self.comparison)
        return out


def comparison_lines(c: dict[str, Any]) -> list[str]:
    """The text of a ladder comparison (:func:`compare_runs`): this run minus the other per task x length and per
    length, each with its paired 95% interval and whether it is resolved (the interval excludes zero)."""

    def fmt(d: dict[str, Any] | None) -> str:
        if not d or d.get("diff") is None:
            return "-"
        mark = "*" if resolved(d) else " "
        return f"{d['diff']:+.1f} [{d['lo']:+.0f},{d['hi']:+.0f}]{mark}"

    lengths = list(c["by_length"])
    width = max([len("average")] + [len(t) for t in c["cells"]]) + 2
    out = [
        f"difference to {c['other']} ({c['other_model']}), points [paired 95% interval], * = resolved "
        "(the interval excludes 0):",
        "".ljust(width) + "".join(f"{x:>20}" for x in lengths),
    ]
    for task, by_len in c["cells"].items():
        out.append(task.ljust(width) + "".join(f"{fmt(by_len.get(x)):>20}" for x in lengths))
    out.append("average".ljust(width) + "".join(f"{fmt(c['by_length'].get(x)):>20}" for x in lengths))
    o = c["overall"]
    verdict = "resolved" if resolved(o) else "no resolved difference (the interval contains 0)"
    out.append(f"overall {fmt(o).strip().rstrip('*')} over {o.get('n')} paired samples: {verdict}")
    out.append(f"comparison: {c['path']}")
    return out


def ladder_table(scores: dict[str, Any]) -> list[str]:
    """The task x length table of a ruler summary as text lines."""
    lengths = [str(x) for x in scores.get("lengths", [])]
    cells = scores.get("cells", {})

    def fmt(c: dict[str, Any] | None) -> str:
        if not c or c.get("score") is None:
            return "-"
        return f"{c['score']:.1f} [{c['lo']:.0f}-{c['hi']:.0f}]"

    width = max([len("average")] + [len(t) for t in cells]) + 2
    out = ["".ljust(width) + "".join(f"{x:>18}" for x in lengths)]
    for task, by_len in cells.items():
        out.append(task.ljust(width) + "".join(f"{fmt(by_len.get(x)):>18}" for x in lengths))
    avg = scores.get("by_length", {})
    out.append("average".ljust(width) + "".join(f"{fmt(avg.get(x)):>18}" for x in lengths))
    return out


# --------------------------------------------------------------------------------------------- lengths
def model_positions(spec: str | None) -> int | None:
    """``max_position_embeddings`` of a local model spec, read from its config without loading the weights (None
    for an endpoint, or when the config does not say): :func:`longalign.eval.generate.model_limit`."""
    from longalign.eval.generate import model_limit

    return model_limit(spec) or None


def check_lengths(lengths: Sequence[int], positions: int | None, model: str, *, from_flag: bool = False) -> None:
    """Refuse lengths beyond the model's positions, naming the fix (:func:`longalign.models.check_length`, the
    check every long-input command shares)."""
    from longalign.models import check_length

    over = [x for x in lengths if positions and x > positions]
    if over:
        check_length(
            max(over),
            asked="--lengths " + ",".join(map(str, over)),
            model=model,
            positions=positions,
            shorter=f"use lengths up to {positions} ({LENGTH_COUNTING})",
            extend="evaluate a model extended for longer inputs (longalign train ... --rope-scale 200 "
            "--max-position-embeddings {length}, as the paper does before fine-tuning)",
            source="--max-positions" if from_flag else "max_position_embeddings={positions}",
        )


# --------------------------------------------------------------------------------------------- answering
@dataclass
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    reused_prompt_tokens: int = 0


class LocalAnswerer:
    """A local causal LM answering from the exact prompt ids, with the model's :class:`PrefixCache` when
    ``prefix_reuse``."""

    kind = "local"

    def __init__(
        self,
        spec: str | None,
        *,
        prefix_reuse: bool = True,
        dtype: Any = None,
        model: Any = None,
        tokenizer: Any = None,
    ):
        from longalign.llm.client import local_model_spec
        from longalign.llm.local_model import local_model_for
        from longalign.models import model_display_name

        spec = local_model_spec(spec)
        self.lm = local_model_for(spec, dtype=dtype or None, model=model, tokenizer=tokenizer)
        self.name = model_display_name(spec)
        self.tokenizer = self.lm.tokenizer
        self.max_positions = self.lm.max_positions
        self.prefix_reuse = prefix_reuse
        self.requested_precision = str(getattr(self.lm, "precision", "") or "") or None  # part of the setup
        self.precision = decoding_precision(self.lm)  # the path answers are actually decoded on

    def prompt_format(self) -> PromptFormat:
        return PromptFormat(self.tokenizer, self.lm.render)

    def answer(self, sample: RulerSample, params: Any) -> Answer:
        lm = self.lm
        ids = sample.prompt_ids or lm.encode(
            lm.render([{"role": "user", "content": sample.user}], sample.answer_prefix)
        )
        before = lm.prefix_cache.reused_tokens
        out = lm.generate(
            [ids],
            max_new_tokens=sample.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=0,
            seed=params.seed,
            reuse_prefix=self.prefix_reuse,
        )[0]
        reused = lm.prefix_cache.reused_tokens - before
        return Answer(out.text, out.prompt_tokens, out.content_tokens, out.finish_reason, reused)

    def answer_batch(self, samples: Sequence[RulerSample], params: Any) -> list[Answer]:
        """Answers to ``samples`` (one answer budget), decoded together in one batched ``generate``."""
        if len(samples) == 1:
            return [self.answer(samples[0], params)]
        budgets = {s.max_new_tokens for s in samples}
        if len(budgets) != 1:
            raise ValueError(f"a batch of ladder samples needs one answer budget, got {sorted(budgets)}")
        lm = self.lm
        ids = [
            s.prompt_ids or lm.encode(lm.render([{"role": "user", "content": s.user}], s.answer_prefix))
            for s in samples
        ]
        outs = lm.generate(
            ids,
            max_new_tokens=budgets.pop(),
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=0,
            seed=params.seed,
            reuse_prefix=self.prefix_reuse,
        )
        reused = list(lm.last_reused) if len(lm.last_reused) == len(samples) else [0] * len(samples)
        return [Answer(o.text, o.prompt_tokens, o.content_tokens, o.finish_reason, r) for o, r in zip(outs, reused)]


class TokenizedEndpoint:
    """An OpenAI-compatible endpoint (request cache, retries) whose prompts are counted with a local tokenizer and
    its chat template; its window is unknown (``max_positions`` None)."""

    kind = "endpoint"

    def __init__(self, spec: str, *, tokenizer: Any = None, tokenizer_spec: str | None = None, **client_kwargs: Any):
        from longalign.llm import make_client
        from longalign.models import load_tokenizer

        self.client = make_client(spec, **client_kwargs)
        self.name = spec
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(tokenizer_spec or None)
        self.max_positions = None

    def prompt_format(self) -> PromptFormat:
        return PromptFormat(self.tokenizer)


class EndpointAnswerer(TokenizedEndpoint):
    """A ladder answerer on an endpoint: the answer prefix goes as an assistant message to continue."""

    def answer(self, sample: RulerSample, params: Any) -> Answer:
        from dataclasses import replace

        messages = [{"role": "user", "content": sample.user}]
        if sample.answer_prefix:
            messages.append({"role": "assistant", "content": sample.answer_prefix})
        p = replace(params, max_tokens=sample.max_new_tokens, continue_final=bool(sample.answer_prefix))
        res = self.client.chat(messages, p)
        return Answer(res.text, res.prompt_tokens, res.completion_tokens, res.finish_reason)


def make_answerer(cfg: RulerConfig, run: RunDir) -> LocalAnswerer | EndpointAnswerer:
    from longalign.eval.generate import is_endpoint_spec

    if is_endpoint_spec(cfg.model):
        return EndpointAnswerer(
            cfg.model,
            tokenizer_spec=cfg.tokenizer or None,
            cache_dir=run.llm_cache,
            calls_log=run.llm_calls,
            **cfg.model_endpoint().client_kwargs(),
        )
    return LocalAnswerer(cfg.model, prefix_reuse=cfg.prefix_reuse, dtype=cfg.dtype or None)


def requested_precision(cfg: RulerConfig) -> str | None:
    """The numeric path ``cfg`` asks a local model to decode on (``cfg.dtype`` or the local default, resolved
    without loading anything: ``int4``, ``float32``, ``bfloat16``...); None for an endpoint."""
    from longalign.eval.generate import is_endpoint_spec
    from longalign.llm.local_model import INT4_DECODE, resolve_device, resolve_precision

    if is_endpoint_spec(cfg.model):
        return None
    device = resolve_device(None)
    dtype, int4 = resolve_precision(cfg.dtype or None, device)
    return INT4_DECODE if int4 else str(dtype).removeprefix("torch.")


def decoding_precision(lm: Any) -> str:
    """The path a loaded local model's answers are decoded on: ``int4`` only when some of its layers decode from
    int4 (a fine-tuned model asked for int4 has none on the grid and decodes in float32), else its dtype."""
    from longalign.llm.local_model import INT4_DECODE

    precision = str(getattr(lm, "precision", "") or "")
    if precision == INT4_DECODE:
        from longalign.llm.int4_decode import Int4Linear, Int8GridLinear

        if not any(isinstance(m, (Int4Linear, Int8GridLinear)) for m in lm.model.modules()):
            return str(getattr(lm.model, "dtype", "float32")).removeprefix("torch.")
    return precision


# --------------------------------------------------------------------------------------------- results
def setup_of(cfg: RulerConfig, task: str, model_name: str, precision: str | None = None) -> str:
    """A short hash of everything that makes a sample of ``task`` what it is, the numeric path a local model
    decodes on included (results with another setup are neither skipped nor summarised)."""
    spec = TASKS[task]
    parts: dict[str, Any] = {
        "version": GENERATOR_VERSION,
        "model": model_name,
        "seed": cfg.seed,
        "max_new_tokens": cfg.max_new_tokens or spec.max_new_tokens,
        "answer_prefix": cfg.answer_prefix,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
    }
    if precision:
        parts["precision"] = precision
    if spec.context == "docs":
        parts["haystack"] = cfg.haystack
    if spec.context == "passages":
        parts["qa"] = cfg.qa_squad if spec.param("source") == "squad" else cfg.qa_hotpot
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _model_name(cfg: RulerConfig) -> str:
    from longalign.eval.generate import is_endpoint_spec
    from longalign.llm.client import local_model_spec
    from longalign.models import model_display_name

    return cfg.model if is_endpoint_spec(cfg.model) else model_display_name(local_model_spec(cfg.model))


def effective_length(by_length: dict[int, float | None], threshold: float) -> int | None:
    """The longest length up to which every length's average is above ``threshold`` (None when the shortest is
    not)."""
    best = None
    for length in sorted(by_length):
        avg = by_length[length]
        if avg is None or avg <= threshold:
            break
        best = length
    return best


def summarise(
    results: Sequence[dict[str, Any]], tasks: Sequence[str], lengths: Sequence[int], threshold: float
) -> dict[str, Any]:
    """Cells (task x length: mean score x 100 with its 95% interval), the average per length (equal weight per
    task, pooled interval) and the effective context length."""
    cells: dict[str, dict[str, Any]] = {}
    by_length: dict[str, Any] = {}
    for task in tasks:
        cells[task] = {}
        for length in lengths:
            scores = [float(r["score"]) for r in results if r["task"] == task and int(r["length"]) == length]
            cells[task][str(length)] = mean_interval(scores, 100.0)
    averages: dict[int, float | None] = {}
    for length in lengths:
        here = [cells[t][str(length)] for t in tasks]
        parts = [(c["score"] / 100.0, c["n"]) for c in here if c["n"]]
        pooled = pooled_interval(parts, 100.0)
        complete = len(parts) == len(tasks)
        by_length[str(length)] = {**pooled, "complete": complete}
        averages[length] = pooled["score"] if complete else None
    return {
        "cells": cells,
        "by_length": by_length,
        "effective_length": effective_length(averages, threshold),
        "threshold": threshold,
    }


def summarised_results(run_dir: str | Path | RunDir, summary: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The samples ``summary.json`` summarises (``summary``: that file's content, read when not given), one per key
    (its last answer): the summary's setup per task, its lengths and its first ``samples`` indices. Every sample of
    results.jsonl when there is no summary."""
    from longalign.rundir import read_json

    run_ = as_run_dir(run_dir)
    if summary is None:
        summary = read_json(run_.eval_summary(BENCHMARK), default={}) or {}
    records = read_jsonl(run_.ruler_results())
    if summary:
        tasks = set(summary.get("tasks") or [])
        lengths = {int(x) for x in summary.get("lengths") or []}
        samples = int(summary.get("samples") or 0)
        setups = summary.get("setups") or {}

        def keep(r: dict[str, Any]) -> bool:
            if r.get("task") not in tasks or int(r.get("length", -1)) not in lengths:
                return False
            if samples and int(r.get("index", 0)) >= samples:
                return False
            if setups:
                return r.get("setup") == setups.get(r["task"])
            return r.get("model") == summary.get("model") and r.get("seed") == summary.get("seed")

        records = [r for r in records if keep(r)]
    return list({r["key"]: r for r in records if "key" in r and "score" in r}.values())


def same_sample(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two results are answers to the same sample: same key, expected values, depths, prompt size and
    seed (the same seed and settings build the same prompt, so two models' scores on it pair up)."""

    def norm(x: Any) -> str:
        return json.dumps(x, sort_keys=True, default=str)

    return (
        a.get("key") == b.get("key")
        and norm(a.get("expected")) == norm(b.get("expected"))
        and norm(a.get("depths")) == norm(b.get("depths"))
        and a.get("prompt_tokens") == b.get("prompt_tokens")
        and a.get("seed") == b.get("seed")
    )


def compare(results_a: Sequence[dict[str, Any]], results_b: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Run a minus run b (scores x 100) over the tasks and lengths both answered: ``{"cells": {task: {length: d}},
    "by_length": {length: d}, "overall": d}``. Each ``d`` is :func:`~longalign.eval.intervals.paired_difference`
    over the samples that pair up (:func:`same_sample`), with ``a`` and ``b`` (both runs' means over them) and
    ``paired`` True; where none pairs up, :func:`~longalign.eval.intervals.independent_difference` over both runs'
    samples (``n`` 0, ``paired`` False). A length's average and the overall difference pool the pairs of every
    task (each weighs the same: equal weight per task when, as usual, every cell has as many samples)."""
    tasks = [t for t in dict.fromkeys(r["task"] for r in results_a) if t in {r["task"] for r in results_b}]
    lengths = sorted({int(r["length"]) for r in results_a} & {int(r["length"]) for r in results_b})
    a_in = [r for r in results_a if r["task"] in tasks and int(r["length"]) in lengths]
    b_in = [r for r in results_b if r["task"] in tasks and int(r["length"]) in lengths]
    by_key = {r["key"]: r for r in b_in}
    pairs = [(r, by_key[r["key"]]) for r in a_in if r["key"] in by_key and same_sample(r, by_key[r["key"]])]

    def mean(v: list[float]) -> float | None:
        return 100.0 * math.fsum(v) / len(v) if v else None

    def diff(where: Any) -> dict[str, Any]:
        sel = [(x, y) for x, y in pairs if where(x)]
        if sel:
            sa, sb = [float(x["score"]) for x, _ in sel], [float(y["score"]) for _, y in sel]
            return {**paired_difference(sa, sb, 100.0), "a": mean(sa), "b": mean(sb), "paired": True}
        sa = [float(r["score"]) for r in a_in if where(r)]
        sb = [float(r["score"]) for r in b_in if where(r)]
        out = independent_difference(sa, sb, 100.0)
        return {**out, "n": 0, "a": mean(sa), "b": mean(sb), "paired": False}

    cells = {
        t: {str(x): diff(lambda r, t=t, x=x: r["task"] == t and int(r["length"]) == x) for x in lengths} for t in tasks
    }
    by_length = {str(x): diff(lambda r, x=x: int(r["length"]) == x) for x in lengths}
    return {"cells": cells, "by_length": by_length, "overall": diff(lambda r: True)}


# --------------------------------------------------------------------------------------------- runner
def run(
    cfg: RulerConfig, run_dir: str | Path | RunDir, *, answerer: Any = None, progress_cb: Any = None
) -> RulerSummary:
    """Build, answer and score the ladder (resuming per sample) into ``<run>/eval/ruler/``; recorded in run.json
    as ``eval_ruler``. ``answerer`` replaces the model (anything with ``name``, ``max_positions``,
    ``prompt_format()`` and ``answer(sample, params)``)."""
    from tqdm.auto import tqdm

    from longalign.llm.base import SamplingParams

    run_ = as_run_dir(run_dir)
    lengths = sorted({int(x) for x in cfg.lengths})
    tasks = list(dict.fromkeys(cfg.tasks))
    positions = cfg.max_positions or (answerer.max_positions if answerer is not None else model_positions(cfg.model))
    check_lengths(lengths, positions, cfg.model, from_flag=bool(cfg.max_positions))  # before any model is loaded
    if cfg.compare and not as_run_dir(cfg.compare).eval_summary(BENCHMARK).is_file():
        raise FileNotFoundError(
            f"--compare {cfg.compare}: {as_run_dir(cfg.compare).eval_summary(BENCHMARK)} does not exist; run "
            f"`longalign eval ruler --run {cfg.compare}` with the same tasks, lengths and seed first"
        )
    name = answerer.name if answerer is not None else _model_name(cfg)
    asked = requested_precision(cfg) if answerer is None else getattr(answerer, "requested_precision", None)
    setups = {t: setup_of(cfg, t, name, asked) for t in tasks}
    res_path = run_.ruler_results()
    done = {r["key"] for r in read_jsonl(res_path) if r.get("setup") == setups.get(r.get("task"))}
    wanted = [(t, length, i) for t in tasks for length in lengths for i in range(cfg.samples)]
    pending = [w for w in wanted if f"{w[0]}/{w[1]}/{w[2]}" not in done]
    answered = 0
    ctx = None
    if pending:
        if answerer is None:
            answerer = make_answerer(cfg, run_)
        ctx = TaskContext(
            answerer.prompt_format(),
            seed=cfg.seed,
            haystack=cfg.haystack,
            qa_squad=cfg.qa_squad,
            qa_hotpot=cfg.qa_hotpot,
            answer_prefix=cfg.answer_prefix,
            max_new_tokens=cfg.max_new_tokens,
            on_error=cfg.on_error,
        )
        samples = [
            ctx.build(t, length, i) for t, length, i in tqdm(pending, desc="ruler prompts", disable=not cfg.progress)
        ]
        samples.sort(key=lambda s: s.prompt_ids or [])  # each prompt right after the one it shares most with
        params = SamplingParams(max_tokens=1, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
        batch = cfg.batch_size if hasattr(answerer, "answer_batch") else 1
        bar = tqdm(total=len(samples), desc="ruler samples", disable=not cfg.progress)
        for group in answer_groups(samples, batch):
            start = time.perf_counter()
            answers = answerer.answer_batch(group, params) if len(group) > 1 else [answerer.answer(group[0], params)]
            seconds = (time.perf_counter() - start) / len(group)  # a batch's time, shared by its samples
            for s, ans in zip(group, answers):
                append_jsonl(
                    run_.ruler_prompts(),
                    {"key": s.key, "setup": setups[s.task], "user": s.user, "answer_prefix": s.answer_prefix},
                    fsync=False,
                )
                rec = _record(s, TASKS[s.task].category, ans, seconds, setups[s.task], name, cfg.seed)
                rec["precision"] = getattr(answerer, "precision", None)
                if len(group) > 1:
                    rec["batch"] = len(group)
                append_jsonl(res_path, rec)
                answered += 1
                bar.update(1)
                if progress_cb is not None:
                    progress_cb(answered, len(samples))
        bar.close()
    results = [
        r
        for r in read_jsonl(res_path)
        if r.get("setup") == setups.get(r.get("task")) and int(r["length"]) in lengths and int(r["index"]) < cfg.samples
    ]
    latest = {r["key"]: r for r in results}  # a sample answered twice (two processes) counts once
    scores = {
        "model": name,
        "tasks": tasks,
        "lengths": lengths,
        "samples": cfg.samples,
        "seed": cfg.seed,
        "n": len(latest),
        "length_counting": LENGTH_COUNTING,
        "answer_prefix": cfg.answer_prefix,
        "categories": {t: TASKS[t].category for t in tasks},
        "precision": _precisions(latest.values()),
        "setups": setups,  # per task: the setup hash of the results summarised here
        **summarise(list(latest.values()), tasks, lengths, cfg.threshold),
        "notes": _notes(cfg, answerer),
    }
    atomic_write_json(run_.eval_summary(BENCHMARK), scores)
    summary = RulerSummary(
        BENCHMARK,
        run_.eval(BENCHMARK),
        scores,
        summary_path=run_.eval_summary(BENCHMARK),
        results=res_path,
        answered=answered,
        done_before=len(wanted) - len(pending),
        skipped=ctx.skipped.to_dict() if ctx is not None else None,
    )
    if cfg.compare:
        summary.comparison = compare_runs(run_, scores, cfg.compare)
    record(run_, "eval_ruler", cfg, summary)
    return summary


def answer_groups(samples: Sequence[RulerSample], batch_size: int) -> list[list[RulerSample]]:
    """``samples`` in their order, cut into groups of at most ``batch_size`` consecutive samples with one answer
    budget (a batch decodes with one budget)."""
    groups: list[list[RulerSample]] = []
    for s in samples:
        if groups and len(groups[-1]) < max(1, batch_size) and groups[-1][0].max_new_tokens == s.max_new_tokens:
            groups[-1].append(s)
        else:
            groups.append([s])
    return groups


def compare_runs(run_: RunDir, scores: dict[str, Any], other: str | Path) -> dict[str, Any]:
    """This run's ladder (``scores``: its summary) minus the ladder in run directory ``other``
    (:func:`compare`), written to ``<run>/eval/ruler/compare.json``; refused when ``other`` has no ladder or no
    sample pairs up with this run's."""
    other_run = as_run_dir(other)
    other_summary = read_json(other_run.eval_summary(BENCHMARK), default=None)
    if not other_summary:
        raise FileNotFoundError(
            f"{other_run.eval_summary(BENCHMARK)}: no ladder to compare with; run `longalign eval ruler --run {other}` "
            "with the same tasks, lengths and seed first"
        )
    mine, theirs = summarised_results(run_, scores), summarised_results(other_run, other_summary)
    c = compare(mine, theirs)
    if not c["overall"].get("paired"):
        raise ValueError(
            f"no sample of {run_.root} pairs up with one of {other_run.root} (tasks, lengths, seed or answer budget "
            "differ); run both with the same --tasks, --lengths, --samples and --seed"
        )
    path = run_.eval(BENCHMARK) / "compare.json"
    out = {
        "this": str(run_.root),
        "model": scores.get("model"),
        "other": str(other_run.root),
        "other_model": other_summary.get("model"),
        "path": str(path),
        **c,
    }
    atomic_write_json(path, out)
    return out


def _record(
    s: RulerSample, category: str, ans: Answer, seconds: float, setup: str, model: str, seed: int
) -> dict[str, Any]:
    return {
        "key": s.key,
        "task": s.task,
        "category": category,
        "length": s.length,
        "index": s.index,
        "depths": s.depths,
        "expected": s.expected,
        "metric": s.metric,
        "output": ans.text,
        "score": score_output(ans.text, s.expected, s.metric),
        "prompt_tokens": s.prompt_tokens,
        "prompt_tokens_reported": ans.prompt_tokens,
        "max_new_tokens": s.max_new_tokens,
        "completion_tokens": ans.completion_tokens,
        "finish_reason": ans.finish_reason,
        "reused_prompt_tokens": ans.reused_prompt_tokens,
        "seconds": round(seconds, 3),
        "info": s.info,
        "model": model,
        "seed": seed,
        "setup": setup,
    }


def _precisions(results: Any) -> str | None:
    """The numeric path(s) the summarised answers were decoded on: one name, several joined by '+', or None
    (endpoints, or results written before the path was recorded)."""
    found = sorted({str(r["precision"]) for r in results if r.get("precision")})
    return "+".join(found) if found else None


def _notes(cfg: RulerConfig, answerer: Any) -> list[str]:
    notes = [
        "scores: RULER's string match (share of expected values in the output; QA: any reference answer) x 100, "
        "95% Wilson intervals; a length's average weights its tasks equally",
    ]
    from longalign.eval.generate import is_endpoint_spec

    if getattr(answerer, "kind", "") == "endpoint" or (answerer is None and is_endpoint_spec(cfg.model)):
        notes.append("prompt lengths counted with a local tokenizer, not the served model's")
    if cfg.samples < 10:
        notes.append(f"{cfg.samples} samples per cell: intervals are wide")
    return notes
