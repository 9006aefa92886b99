"""LongBench with a judge (paper appendix C.2): single-document QA, multi-document QA and summarization,
answers rated by an LLM instead of F1/ROUGE, which reward wording overlap rather than correctness.

Data: the user's local copy in LongBench's jsonl format (one record per line with ``input``, ``context``,
``answers``, ``length``, ``dataset``, ``language``, ``_id``): a folder holding ``<task>.jsonl`` files (the
layout of LongBench's ``data/`` folder) or one jsonl file mixing tasks (``dataset`` says which). With
``data=hf`` the tasks are read through ``datasets`` (``THUDM/LongBench``), which needs the network or a
populated HF cache.

Prompts are our own wording per category; ``prompts=FILE`` takes a JSON mapping task -> template with
``{context}`` and ``{input}`` slots instead (LongBench's ``dataset2prompt.json`` has that form).
Judging: QA answers are rated 1-3 (1 wrong or irrelevant, 2 partly correct, 3 correct and complete) and
summaries 1-5, in ``[[rating]]`` form, against all reference answers. A task's score is the mean rating
mapped linearly onto 0-100 (lowest rating 0, highest 100: ``(r - 1) / (top - 1) * 100``), so QA and
summary tasks share one scale; a category's score is the mean of its tasks. Both steps resume: predictions
and ratings are appended per sample.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longalign.config import check_choice, option, redefault
from longalign.eval.judge import LOCAL_JUDGE_NOTE, JudgeRequest, is_local_judge, judge_stops, make_judge
from longalign.eval.options import GenerationOptions, JudgeOptions, ModelOptions
from longalign.eval.summary import LongBenchSummary
from longalign.llm.budget import cost_of
from longalign.options import InputErrorOptions, PriceOptions
from longalign.rundir import BadRecord, BadRecords, RunDir, append_jsonl, atomic_write_json, iter_jsonl, read_jsonl
from longalign.stage import as_run_dir, record

log = logging.getLogger(__name__)

CATEGORIES = {
    "single_doc_qa": ("narrativeqa", "qasper", "multifieldqa_en", "multifieldqa_zh"),
    "multi_doc_qa": ("hotpotqa", "2wikimqa", "musique", "dureader"),
    "summarization": ("gov_report", "qmsum", "multi_news", "vcsum"),
}
TASK_CATEGORY = {t: c for c, ts in CATEGORIES.items() for t in ts}
ALL_TASKS = tuple(TASK_CATEGORY)
# answer budgets of the LongBench harness (tokens)
TASK_MAX_NEW_TOKENS = {
    "narrativeqa": 128,
    "qasper": 128,
    "multifieldqa_en": 64,
    "multifieldqa_zh": 64,
    "hotpotqa": 32,
    "2wikimqa": 32,
    "musique": 32,
    "dureader": 128,
    "gov_report": 512,
    "qmsum": 512,
    "multi_news": 512,
    "vcsum": 512,
}
BENCHMARK = "longbench"
RATING_TOP = {"single_doc_qa": 3, "multi_doc_qa": 3, "summarization": 5}

PROMPTS = {
    "single_doc_qa": "Read the document below and answer the question that follows it. Answer as briefly as the "
    "question allows.\n\n{context}\n\nQuestion: {input}\nAnswer:",
    "multi_doc_qa": "Several passages follow. Use them to answer the question after them; give only the "
    "answer.\n\n{context}\n\nQuestion: {input}\nAnswer:",
    "summarization": "Read the material below and write a summary of it.\n\n{context}\n\n{input}\nSummary:",
}
PROMPTS_ZH = {
    "single_doc_qa": "阅读下面的文章并回答后面的问题，回答尽量简洁。\n\n{context}\n\n问题：{input}\n回答：",
    "multi_doc_qa": "下面有若干段文字，请根据它们回答最后的问题，只给出答案。\n\n{context}\n\n问题：{input}\n回答：",
    "summarization": "阅读下面的材料并写出摘要。\n\n{context}\n\n{input}\n摘要：",
}

QA_JUDGE = """[Task]
You are an impartial judge. Rate the AI assistant's answer to a question about a long text, comparing it \
with the reference answer(s). Use this scale:
1: the answer is wrong or does not address the question.
2: the answer is partly correct: it contains part of the reference answer or is imprecise.
3: the answer is correct and complete, consistent with the reference answer.
Reply with the rating only, written exactly as [[rating]], e.g. [[2]].

[Question]
{question}

[Reference answer(s)]
{references}

[Assistant's answer]
{prediction}
[End of answer]"""

SUMMARY_JUDGE = """[Task]
You are an impartial judge. Rate the AI assistant's summary of a long text, comparing it with the \
reference summary. Consider whether it covers the main points, whether it is faithful (no invented or \
wrong facts) and whether it is concise and coherent. Use this scale:
1: unrelated to the reference or mostly wrong.
2: captures a few points but misses most of them or contains serious errors.
3: captures about half of the main points, with some errors or padding.
4: captures most main points with minor omissions or errors.
5: covers the main points faithfully and concisely.
Reply with the rating only, written exactly as [[rating]], e.g. [[4]].
{question_block}
[Reference summary]
{references}

[Assistant's summary]
{prediction}
[End of summary]"""


@dataclass
class LongBenchConfig(ModelOptions, GenerationOptions, JudgeOptions, PriceOptions, InputErrorOptions):
    """``longalign eval longbench``: judged single-doc QA, multi-doc QA and summarization."""

    data: str = option(
        "",
        help="folder of <task>.jsonl files in LongBench's format, one jsonl file, or 'hf' "
        "(datasets: THUDM/LongBench, needs the network or a cache)",
    )
    tasks: list[str] = option(
        default_factory=lambda: list(ALL_TASKS), choices=ALL_TASKS, help="tasks to run: " + ", ".join(ALL_TASKS)
    )
    limit_per_task: int = option(0, minimum=0, help="only the first N samples of each task (0 = all)")
    prompts: str = option("", help="JSON file task -> prompt template with {context} and {input}")
    progress: bool = option(True, help="show progress bars")
    max_len: int = redefault(31500)
    max_new_tokens: int = redefault(0, note="0 = LongBench's per-task budget")
    judge_max_tokens: int = redefault(64)


@dataclass
class LBSample:
    task: str
    uid: str
    input: str
    context: str
    answers: list[str]
    language: str
    length: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.task}:{self.uid}"

    @property
    def category(self) -> str:
        return TASK_CATEGORY[self.task]


def _sample(rec: dict[str, Any], where: str, task: str | None) -> LBSample:
    """One sample; a malformed record raises :class:`~longalign.rundir.BadRecord` naming ``where``."""
    if not isinstance(rec, dict):
        raise BadRecord(where, f"expected a JSON object (a LongBench record), got {type(rec).__name__}", "wrong_shape")
    name = task or rec.get("dataset")
    if not name:
        raise BadRecord(where, "no 'dataset' field and the file name is not a task name", "missing_field")
    name = str(name).removesuffix("_e")
    if name not in TASK_CATEGORY:
        raise BadRecord(where, f"task {name!r} is not one of the judged tasks ({', '.join(ALL_TASKS)})", "unknown_task")
    for k in ("input", "context", "answers"):
        if k not in rec:
            raise BadRecord(
                where,
                f"missing field {k!r}; LongBench records need input, context, answers, length, dataset, language, _id",
                "missing_field",
            )
    answers = rec["answers"] if isinstance(rec["answers"], list) else [rec["answers"]]
    uid = str(rec.get("_id") or where)
    return LBSample(
        name,
        uid,
        str(rec["input"] or ""),
        str(rec["context"] or ""),
        [str(a) for a in answers],
        str(rec.get("language") or "en"),
        rec.get("length"),
    )


def load_longbench(
    data: str, tasks: Sequence[str], limit_per_task: int = 0, *, skipped: BadRecords | None = None
) -> list[LBSample]:
    """Samples of ``tasks`` from a folder, a jsonl file or ``hf``.

    A bad record (invalid JSON line, wrong shape, missing field, unknown task) raises naming ``file:line``, or
    with ``skipped`` in ``on_error="skip"`` mode is counted there and left out (it does not count towards
    ``limit_per_task``)."""
    for t in tasks:
        check_choice("tasks", t, ALL_TASKS)
    bad = skipped if skipped is not None else BadRecords()
    if data == "hf":
        return [s for t in tasks for s in _first_samples(_hf_records(t), t, limit_per_task, bad)]
    path = Path(data)
    if path.is_dir():
        out = [s for t in tasks for s in _task_file_samples(path, t, limit_per_task, bad)]
    elif path.is_file():
        out = _mixed_file_samples(path, tasks, limit_per_task, bad)
    else:
        raise FileNotFoundError(
            f"LongBench data {data!r} not found: give a folder of <task>.jsonl files, a jsonl file, or 'hf'"
        )
    if not out:
        raise ValueError(
            f"{data}: no samples for tasks {', '.join(tasks)}; point --data at LongBench's data folder "
            f"({tasks[0]}.jsonl, ...) or a jsonl file whose records name their task in 'dataset', or pick --tasks "
            "that are there"
        )
    return out


def _sample_or_none(rec: Any, where: str, task: str | None, bad: BadRecords) -> LBSample | None:
    """:func:`_sample`, or None when the record is bad (``bad`` raises or counts it, by its ``on_error``)."""
    try:
        return _sample(rec, where, task)
    except BadRecord as err:
        bad.add(err)
        return None


def _first_samples(records: Iterable[tuple[str, Any]], task: str, limit: int, bad: BadRecords) -> list[LBSample]:
    """The first ``limit`` good samples (all when 0) of one task's ``(where, record)`` pairs; reading stops there."""
    out: list[LBSample] = []
    for where, rec in records:
        if limit and len(out) >= limit:
            break
        s = _sample_or_none(rec, where, task, bad)
        if s is not None:
            out.append(s)
    return out


def _hf_records(task: str) -> Iterator[tuple[str, Any]]:
    import datasets

    ds = datasets.load_dataset("THUDM/LongBench", task, split="test")
    for i, rec in enumerate(ds):
        yield f"THUDM/LongBench/{task}#{i}", dict(rec)


def _task_file_samples(folder: Path, task: str, limit: int, bad: BadRecords) -> list[LBSample]:
    """Samples of ``folder/<task>.jsonl`` (none, with a warning, when the folder has no such file)."""
    f = folder / f"{task}.jsonl"
    if not f.is_file():
        log.warning("%s: no %s.jsonl, task skipped", folder, task)
        return []
    return _first_samples(((f"{f}:{lineno}", rec) for lineno, rec in iter_jsonl(f, skipped=bad)), task, limit, bad)


def _mixed_file_samples(path: Path, tasks: Sequence[str], limit: int, bad: BadRecords) -> list[LBSample]:
    """Samples of ``tasks`` from one jsonl file of several tasks (each record names its ``dataset``), at most
    ``limit`` per task (0 = all)."""
    out: list[LBSample] = []
    counts: dict[str, int] = {}
    for lineno, rec in iter_jsonl(path, skipped=bad):
        s = _sample_or_none(rec, f"{path}:{lineno}", None, bad)
        if s is None or s.task not in tasks:
            continue
        counts[s.task] = counts.get(s.task, 0) + 1
        if limit and counts[s.task] > limit:
            continue
        out.append(s)
    return out


def build_prompt(s: LBSample, templates: dict[str, str] | None = None) -> str:
    tpl = (templates or {}).get(s.task)
    if tpl is None:
        table = PROMPTS_ZH if s.language == "zh" else PROMPTS
        tpl = table[s.category]
    return tpl.replace("{context}", s.context).replace("{input}", s.input)


def rating_top(category: str) -> int:
    return RATING_TOP[category]


def judge_messages(s: LBSample, prediction: str) -> list[dict[str, str]]:
    refs = "\n".join(f"- {a}" for a in s.answers) if len(s.answers) > 1 else (s.answers[0] if s.answers else "")
    if s.category == "summarization":
        qb = f"\n[Instruction given with the text]\n{s.input}\n" if s.input.strip() else ""
        user = SUMMARY_JUDGE.format(question_block=qb, references=refs, prediction=prediction)
    else:
        user = QA_JUDGE.format(question=s.input, references=refs, prediction=prediction)
    return [{"role": "system", "content": "You are a careful, impartial grader."}, {"role": "user", "content": user}]


def to_0_100(rating: float, top: int) -> float:
    """Map a rating in 1..top linearly onto 0..100."""
    return (rating - 1) / (top - 1) * 100


def run(
    cfg: LongBenchConfig, run_dir: str | Path | RunDir, *, generator: Any = None, judge: Any = None
) -> LongBenchSummary:
    """Predict, judge and summarise (each step resumes) into ``<run>/eval/longbench/``; recorded in run.json as
    ``eval_longbench``."""
    from tqdm.auto import tqdm

    from longalign.eval.generate import PredictionTask, check_prompt_budget, make_generator, run_predictions
    from longalign.llm.base import SamplingParams

    if not cfg.data:
        raise ValueError("data is required: a folder of LongBench <task>.jsonl files, a jsonl file, or 'hf'")

    def check_lengths() -> None:  # before any model is loaded or file written
        budget = cfg.max_new_tokens or max(TASK_MAX_NEW_TOKENS[t] for t in cfg.tasks)
        check_prompt_budget(cfg.model, cfg.max_len, budget, generator=generator, fit_to_model=cfg.fit_to_model)

    if cfg.data == "hf":
        check_lengths()  # before a download
    skipped = BadRecords(cfg.on_error)
    samples = load_longbench(cfg.data, cfg.tasks, cfg.limit_per_task, skipped=skipped)
    check_lengths()
    templates = json.loads(Path(cfg.prompts).read_text(encoding="utf-8")) if cfg.prompts else None
    run = as_run_dir(run_dir)
    pred_path = run.predictions(BENCHMARK)
    done = {r["idx"] for r in read_jsonl(pred_path)}
    by_budget: dict[int, list[PredictionTask]] = {}
    for s in samples:
        if s.key in done:
            continue
        budget = cfg.max_new_tokens or TASK_MAX_NEW_TOKENS[s.task]
        by_budget.setdefault(budget, []).append(
            PredictionTask(
                s.key,
                build_prompt(s, templates),
                None,
                {"dataset": s.task, "category": s.category, "lang": s.language, "_id": s.uid},
            )
        )
    if by_budget:
        if generator is None:
            generator = make_generator(
                cfg.model,
                tokenizer_spec=cfg.tokenizer or None,
                client_kwargs=dict(
                    cfg.model_endpoint().client_kwargs(), cache_dir=run.llm_cache, calls_log=run.llm_calls
                ),
            )
        with tqdm(total=sum(len(v) for v in by_budget.values()), desc="answers", disable=not cfg.progress) as bar:
            for budget, tasks in sorted(by_budget.items()):
                params = SamplingParams(max_tokens=budget, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
                run_predictions(
                    tasks,
                    generator,
                    pred_path,
                    max_length=cfg.max_len,
                    params=params,
                    batch_size=cfg.batch_size,
                    progress=bar.update,
                )
    n_pred = len(read_jsonl(pred_path))
    summary = LongBenchSummary(
        BENCHMARK,
        run.eval(BENCHMARK),
        None,
        predictions=n_pred,
        predictions_path=pred_path,
        skipped=skipped.to_dict(),
    )
    if not cfg.judge:
        record(run, "eval_longbench", cfg, summary)
        return summary
    preds = {r["idx"]: r for r in read_jsonl(pred_path)}
    jpath = run.judgments(BENCHMARK)
    judged = {r["idx"] for r in read_jsonl(jpath) if r.get("judge") == cfg.judge}
    pending = [s for s in samples if s.key in preds and s.key not in judged]
    if pending:
        if judge is None:
            judge = make_judge(cfg, cache_dir=run.llm_cache, calls_log=run.llm_calls)
        reqs = [
            JudgeRequest(judge_messages(s, preds[s.key]["prediction"]), 1, rating_top(s.category), seed=cfg.seed)
            for s in pending
        ]
        try:
            with tqdm(total=len(pending), desc="judge", disable=not cfg.progress) as bar:
                for j, out in judge.rate_many(reqs, progress=bar.update):
                    s = pending[j]
                    top = rating_top(s.category)
                    rec = {
                        "idx": s.key,
                        "dataset": s.task,
                        "category": s.category,
                        "_id": s.uid,
                        "lang": s.language,
                        "input": s.input,
                        "answers": s.answers,
                        "prediction": preds[s.key]["prediction"],
                        "score": out.score,
                        "scale": f"1-{top}",
                        "score_0_100": round(to_0_100(out.score, top), 4) if out.score is not None else None,
                        "judge": cfg.judge,
                        "model": preds[s.key].get("model"),
                        **out.to_dict(),
                    }
                    append_jsonl(jpath, rec)
        except judge_stops() as exc:  # what was judged is on disk; a re-run continues from there
            summary.stopped = str(exc)
            log.warning("%s", exc)
    summary.scores = summarize_longbench(cfg, run, samples)
    summary.summary_path = run.eval_summary(BENCHMARK)
    record(run, "eval_longbench", cfg, summary)
    return summary


def summarize_longbench(cfg: LongBenchConfig, run: RunDir, samples: Sequence[LBSample]) -> dict[str, Any]:
    """Write and return ``summary.json`` from ``judgments.jsonl``."""
    keys = {s.key for s in samples}
    recs = [r for r in read_jsonl(run.judgments(BENCHMARK)) if r.get("judge") == cfg.judge and r["idx"] in keys]
    tasks: dict[str, Any] = {}
    for t in sorted({r["dataset"] for r in recs}, key=ALL_TASKS.index):
        rs = [r for r in recs if r["dataset"] == t]
        vals = [r["score_0_100"] for r in rs if r.get("score_0_100") is not None]
        raw = [r["score"] for r in rs if r.get("score") is not None]
        tasks[t] = {
            "score_0_100": round(statistics.fmean(vals), 2) if vals else None,
            "n": len(rs),
            "unparsed": len(rs) - len(vals),
            "category": TASK_CATEGORY[t],
            "mean_rating": round(statistics.fmean(raw), 4) if raw else None,
            "scale": f"1-{rating_top(TASK_CATEGORY[t])}",
        }
    cats: dict[str, Any] = {}
    for c, members in CATEGORIES.items():
        vals = [tasks[t]["score_0_100"] for t in members if t in tasks and tasks[t]["score_0_100"] is not None]
        if vals:
            cats[c] = {"score_0_100": round(statistics.fmean(vals), 2), "tasks": [t for t in members if t in tasks]}
    p_tok = sum(int(r.get("prompt_tokens") or 0) for r in recs)
    c_tok = sum(int(r.get("completion_tokens") or 0) for r in recs)
    notes = [
        "scores: mean judge rating mapped linearly to 0-100 per task ((r-1)/(top-1)*100); categories average "
        "their tasks"
    ]
    if is_local_judge(cfg.judge):
        notes.append(LOCAL_JUDGE_NOTE)
    summary = {
        "tasks": tasks,
        "categories": cats,
        "overall": round(statistics.fmean(c["score_0_100"] for c in cats.values()), 2) if cats else None,
        "n": len(recs),
        "judge": cfg.judge,
        "model": recs[0].get("model") if recs and recs[0].get("model") else cfg.model,
        "tokens": {"prompt": p_tok, "completion": c_tok},
        "cost": round(cost_of(p_tok, c_tok, cfg.price_in_per_mtok, cfg.price_out_per_mtok), 6),
        "notes": notes,
    }
    atomic_write_json(run.eval_summary(BENCHMARK), summary)
    return summary
