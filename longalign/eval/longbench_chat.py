"""LongBench-Chat: answer 50 long-document questions, then have a judge rate each answer 1-10 against the
expert reference with three human-scored example answers.

Data is the user's own copy of the benchmark, read in its original layout (a folder or file path holding
``test_cases.json`` = list of ``{"idx", "prompt", "query", "answer"}`` and ``few_shots.json`` = one list of
three ``{"answer", "score"}`` per case, in ``idx`` order) or as jsonl with the same fields per line plus a
``few_shots`` list. Nothing is bundled or downloaded.

Judging follows the paper rather than the released harness: for each judge run the three scored examples
are shown in a different order (the permutations of a case are shuffled with ``judge_seed`` and run r takes
the r-th, so two runs never see the same order) and the runs' scores are averaged (2 runs by default; the
released script does one run in a fixed order, ``judge_runs=1`` and ``shuffle_examples=false`` reproduce
that). A judge run over all 50 cases costs about 32k prompt tokens per case for a GPT-4-class judge, so
every finished run is appended to ``judge_runs.jsonl`` at once and a re-run never repeats it; requests also
go through the llm request cache.

The judge prompt is our own wording of the benchmark's criteria. ``judge_template=FILE`` uses the
benchmark's prompt file verbatim instead. Substitution scheme (one pass; values are never re-scanned):

* positional ``{}`` slots, filled in order with: question, reference answer, example answer 1, its score,
  example answer 2, its score, example answer 3, its score, the answer to rate (9 slots, the order of the
  benchmark's ``prompt_fs.txt``); ``{0}``..``{8}`` address the same list by number;
* or named slots: ``{question}``, ``{reference}``, ``{answer_1}``, ``{score_1}``, ``{answer_2}``,
  ``{score_2}``, ``{answer_3}``, ``{score_3}``, ``{prediction}`` and ``{examples}`` (all three examples
  already laid out);
* ``{{`` and ``}}`` stand for literal braces.
The system message stays ours; the template file becomes the user message.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longalign.config import option
from longalign.data.corpus import detect_lang as corpus_detect_lang
from longalign.eval.generate import check_prompt_budget
from longalign.eval.judge import (
    LOCAL_JUDGE_NOTE,
    JudgeRequest,
    check_judge_spec,
    fill_template,
    is_local_judge,
    judge_stops,
    load_template,
    make_judge,
    template_slots,
)
from longalign.eval.options import GenerationOptions, ModelOptions, SeededJudgeOptions
from longalign.eval.summary import LongBenchChatSummary
from longalign.llm.budget import cost_of
from longalign.options import InputErrorOptions, PriceOptions
from longalign.rundir import BadRecord, BadRecords, RunDir, append_jsonl, atomic_write_json, iter_jsonl, read_jsonl
from longalign.stage import as_run_dir, record

log = logging.getLogger(__name__)

BENCHMARK_NAME = "LongBench-Chat"
JUDGE_SYSTEM = "You are a careful, impartial grader of answers written by AI assistants."

JUDGE_INSTRUCTIONS = """[Task]
Rate how well an AI assistant answered a user's question about a long document. Correctness matters most; \
after it, helpfulness, accuracy and relevance. Proceed as follows:
1. Compare the assistant's answer with the reference answer written by an expert.
2. Find every mistake in the answer and weigh how much each one harms the answer to the question.
3. Judge how directly the answer gives the user the information that was asked for.
4. Check any extra material the answer adds; take points off when it is wrong or beside the question.
Give one overall integer rating from 1 (worst) to 10 (best), written exactly as [[rating]], e.g. [[6]]."""

NO_CONTEXT_NOTE = (
    "(The question and the reference answer are not available here: judge the answer on its own "
    "merits and by comparison with the rated examples.)"
)


@dataclass
class ChatCase:
    idx: int
    prompt: str
    query: str
    answer: str
    lang: str
    examples: list[dict[str, Any]] = field(default_factory=list)  # [{"answer", "score"}] x 3


def detect_lang(text: str) -> str:
    """The benchmark's language of a case: "zh" or "en" (scripts other than Chinese count as "en" here;
    see :func:`longalign.data.corpus.detect_lang` for the general detector)."""
    return "zh" if corpus_detect_lang(text) == "zh" else "en"


def _check_examples(examples: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(examples, list) or not examples:
        raise BadRecord(
            where, "expected a list of scored example answers [{'answer': str, 'score': int}, ...]", "wrong_shape"
        )
    out = []
    for k, ex in enumerate(examples):
        if not isinstance(ex, dict) or "answer" not in ex or "score" not in ex:
            raise BadRecord(where, f"example {k + 1} needs 'answer' and 'score' fields", "missing_field")
        out.append({"answer": str(ex["answer"]), "score": ex["score"]})
    return out


def load_few_shots(path: str | Path) -> list[list[dict[str, Any]]]:
    """``few_shots.json``: one list of scored answers per case, in ``idx`` order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give the benchmark's few_shots.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list with one list of scored answers per question")
    return [_check_examples(entry, f"{path}, entry {i + 1}") for i, entry in enumerate(data)]


def _case_from(rec: dict[str, Any], where: str, few: list[list[dict]] | None) -> ChatCase:
    """One case; a malformed record raises :class:`~longalign.rundir.BadRecord` naming ``where``."""
    if not isinstance(rec, dict):
        raise BadRecord(
            where, f"expected a JSON object with idx, prompt, query, answer, got {type(rec).__name__}", "wrong_shape"
        )
    missing = [k for k in ("idx", "prompt", "query", "answer") if k not in rec]
    if missing:
        raise BadRecord(
            where, f"missing field(s) {', '.join(missing)}; each case needs idx, prompt, query, answer", "missing_field"
        )
    try:
        idx = int(rec["idx"])
    except (TypeError, ValueError):
        raise BadRecord(where, f"idx must be an integer, got {rec['idx']!r}", "wrong_shape") from None
    if "few_shots" in rec:
        try:
            examples = _check_examples(rec["few_shots"], where)
        except BadRecord as err:
            raise BadRecord(where, f"few_shots: {err.message}", err.reason) from None
    elif few is not None:
        if not 1 <= idx <= len(few):
            raise BadRecord(where, f"idx {idx} has no entry in few_shots.json ({len(few)} entries)", "missing_field")
        examples = few[idx - 1]
    else:
        raise BadRecord(
            where,
            "no scored examples; put few_shots.json next to the cases or add a 'few_shots' list to each line",
            "missing_field",
        )
    lang = rec.get("lang") or rec.get("language") or detect_lang(rec["query"] + rec["answer"])
    return ChatCase(idx, str(rec["prompt"]), str(rec["query"]), str(rec["answer"]), str(lang), examples)


def _cases_file(path: Path) -> Path:
    """The cases file: ``path`` itself, or the ``test_cases.json`` (``.jsonl``) of a folder; it must exist."""
    if path.is_dir():
        for name in ("test_cases.json", "test_cases.jsonl"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path} has no test_cases.json; point --data at the benchmark folder or file")
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; LongBench-Chat is not bundled - point --data at your own copy "
            "(test_cases.json + few_shots.json)"
        )
    return path


def _located_cases(path: Path, bad: BadRecords) -> list[tuple[str, Any]]:
    """``(where, record)`` of every case in a ``.jsonl`` file (bad lines go to ``bad``) or a JSON list (which
    must parse as a whole)."""
    if path.suffix == ".jsonl":
        return [(f"{path}:{lineno}", rec) for lineno, rec in iter_jsonl(path, skipped=bad)]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of cases")
    return [(f"{path}[{i}]", rec) for i, rec in enumerate(data)]


def load_longbench_chat(
    path: str | Path, few_shots: str | Path | None = None, *, skipped: BadRecords | None = None
) -> list[ChatCase]:
    """Load the user's copy: a folder with ``test_cases.json`` (+ ``few_shots.json``), the json file itself,
    or a ``.jsonl`` file with the same fields per line (and ``few_shots`` per line or the json next to it).

    A bad case (invalid JSON line, wrong shape, missing field, repeated idx) raises naming ``file:line``, or
    with ``skipped`` in ``on_error="skip"`` mode is counted there and left out; a file that does not parse as
    a whole (``test_cases.json``, ``few_shots.json``) always raises."""
    bad = skipped if skipped is not None else BadRecords()
    path = _cases_file(Path(path))
    fs_path = Path(few_shots) if few_shots else path.parent / "few_shots.json"
    few = load_few_shots(fs_path) if fs_path.is_file() else None
    if few_shots and few is None:
        raise FileNotFoundError(f"{fs_path} does not exist")
    located = _located_cases(path, bad)
    cases: list[ChatCase] = []
    seen: dict[int, str] = {}
    for where, rec in located:
        try:
            case = _case_from(rec, where, few)
            if case.idx in seen:
                raise BadRecord(
                    where,
                    f"idx {case.idx} already used at {seen[case.idx]}; every case needs its own idx",
                    "duplicate_id",
                )
        except BadRecord as err:
            bad.add(err)
            continue
        seen[case.idx] = where
        cases.append(case)
    return cases


# --------------------------------------------------------------------------------------------- prompts
def example_orders(n_examples: int, n_runs: int, seed: int, idx: Any, shuffle: bool = True) -> list[list[int]]:
    """The order of the scored examples for each judge run of case ``idx``.

    All permutations are shuffled with a generator seeded by ``(seed, idx)``; run r takes the r-th (so runs
    differ while there are permutations left: 6 for three examples). Without shuffling every run uses
    the file order.
    """
    base = list(range(n_examples))
    if not shuffle:
        return [base for _ in range(n_runs)]
    perms = [list(p) for p in itertools.permutations(base)]
    random.Random(f"{seed}:{idx}").shuffle(perms)
    return [perms[r % len(perms)] for r in range(n_runs)]


def _format_score(score: Any) -> str:
    if isinstance(score, float) and score.is_integer():
        return str(int(score))
    return str(score)


def examples_block(examples: Sequence[dict[str, Any]]) -> str:
    parts = []
    for k, ex in enumerate(examples, 1):
        parts.append(
            f"[Example answer {k}]\n{ex['answer']}\n[End of example answer {k}]\n"
            f"Rating: [[{_format_score(ex['score'])}]]"
        )
    return "\n\n".join(parts)


def build_judge_user_prompt(
    query: str | None, reference: str | None, examples: Sequence[dict[str, Any]], prediction: str
) -> str:
    """Our judge prompt: instructions, question, reference, the scored examples (in the given order), then
    the answer to rate. ``query``/``reference`` None means the judge sees neither (and is told so)."""
    parts = [JUDGE_INSTRUCTIONS]
    if query is None and reference is None:
        parts.append(NO_CONTEXT_NOTE)
    else:
        parts.append(f"[Question]\n{query}")
        parts.append(f"[Reference answer]\n{reference}\n[End of reference answer]")
    if examples:
        parts.append(
            f"Here are {len(examples)} other answers to the same question with the ratings that experts "
            f"gave them:\n\n" + examples_block(examples)
        )
    parts.append(
        f"Now rate this answer by the same principles and examples:\n\n[Answer to rate]\n{prediction}\n"
        f"[End of answer to rate]\n\nYour rating, as [[rating]]:"
    )
    return "\n\n".join(parts)


def build_from_template(
    template: str,
    query: str,
    reference: str,
    examples: Sequence[dict[str, Any]],
    prediction: str,
    *,
    source: str = "judge template",
) -> str:
    """Fill a user-supplied judge prompt (see the module docstring for the slots)."""
    n_pos, names = template_slots(template)
    flat: list[Any] = [query, reference]
    named: dict[str, Any] = {
        "question": query,
        "reference": reference,
        "prediction": prediction,
        "examples": examples_block(examples),
    }
    for k, ex in enumerate(examples, 1):
        flat += [ex["answer"], _format_score(ex["score"])]
        named[f"answer_{k}"] = ex["answer"]
        named[f"score_{k}"] = _format_score(ex["score"])
    flat.append(prediction)
    if n_pos and n_pos != len(flat):
        raise ValueError(
            f"{source}: has {n_pos} '{{}}' slots; expected {len(flat)} (question, reference, "
            f"{len(examples)} x (answer, score), answer to rate)"
        )
    return fill_template(template, flat, named, source=source)


def judge_messages(
    case: ChatCase,
    prediction: str,
    order: Sequence[int],
    template: str | None = None,
    template_source: str = "judge template",
) -> list[dict[str, str]]:
    examples = [case.examples[i] for i in order]
    if template is not None:
        user = build_from_template(template, case.query, case.answer, examples, prediction, source=template_source)
    else:
        user = build_judge_user_prompt(case.query, case.answer, examples, prediction)
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


# --------------------------------------------------------------------------------------------- config
@dataclass
class LongBenchChatConfig(ModelOptions, GenerationOptions, SeededJudgeOptions, PriceOptions, InputErrorOptions):
    """``longalign eval longbench-chat``: generate answers, judge them, summarise."""

    data: str = option(
        "",
        help="LongBench-Chat copy: folder or test_cases.json (+ few_shots.json beside it), or jsonl "
        "with idx/prompt/query/answer/few_shots",
    )
    few_shots: str = option("", help="few_shots.json when it is not next to the cases")
    limit: int = option(0, minimum=0, help="only the first N cases (0 = all)")
    judge_runs: int = option(2, minimum=1, help="judge runs per answer, averaged (paper: 2)")
    shuffle_examples: bool = option(True, help="show the scored examples in a different order per run")
    judge_template: str = option("", help="judge prompt file used verbatim (slots: see docs)")
    dataset_label: str = option("", help="name shown in the summary (default: LongBench-Chat for test_cases.json)")
    progress: bool = option(True, help="show progress bars")


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="case")


BENCHMARK = "longbench_chat"


def predict(cfg: LongBenchChatConfig, run: RunDir, cases: Sequence[ChatCase], generator: Any = None) -> dict[str, int]:
    """Generate missing predictions into ``predictions.jsonl``."""
    from longalign.eval.generate import PredictionTask, make_generator, run_predictions
    from longalign.llm.base import SamplingParams

    out = run.predictions(BENCHMARK)
    done = {r.get("idx") for r in read_jsonl(out)}
    tasks = [
        PredictionTask(c.idx, c.prompt, None, {"query": c.query, "lang": c.lang}) for c in cases if c.idx not in done
    ]
    if not tasks:
        return {"done_before": len(done), "generated": 0}
    if generator is None:
        generator = make_generator(
            cfg.model,
            tokenizer_spec=cfg.tokenizer or None,
            client_kwargs=dict(cfg.model_endpoint().client_kwargs(), cache_dir=run.llm_cache, calls_log=run.llm_calls),
        )
    params = SamplingParams(max_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
    with _bar(len(tasks), "answers", cfg.progress) as bar:
        return run_predictions(
            tasks, generator, out, max_length=cfg.max_len, params=params, batch_size=cfg.batch_size, progress=bar.update
        )


def judge_all(cfg: LongBenchChatConfig, run: RunDir, cases: Sequence[ChatCase], judge: Any = None) -> dict[str, Any]:
    """Judge every prediction ``judge_runs`` times; finished runs are never repeated. When judging stops early
    (the spending cap, a judge that cannot rate) the reason is in ``stopped``."""
    check_judge_spec(cfg.judge)
    preds = {r["idx"]: r for r in read_jsonl(run.predictions(BENCHMARK))}
    template = load_template(cfg.judge_template) if cfg.judge_template else None
    book = _JudgeRuns(cfg, run, cases, preds)
    jobs = book.missing(cases)
    book.finish_all()  # runs finished before a crash whose case record was not yet written
    if not jobs:
        return book.stats
    if judge is None:
        judge = make_judge(cfg, cache_dir=run.llm_cache, calls_log=run.llm_calls)
    requests = [
        JudgeRequest(
            judge_messages(c, preds[c.idx]["prediction"], order, template, cfg.judge_template),
            1,
            10,
            seed=cfg.judge_seed * 1000 + r,
        )
        for c, r, order in jobs
    ]
    try:
        with _bar(len(jobs), "judge runs", cfg.progress) as bar:
            for j, outcome in judge.rate_many(requests, progress=bar.update):
                book.add(*jobs[j], outcome)
    except judge_stops() as exc:  # what was judged is on disk; a re-run continues from there
        book.stats["stopped"] = str(exc)
        log.warning("%s", exc)
    return book.stats


_RUN_FIELDS = ("run", "order", "reply", "score", "prompt_tokens", "completion_tokens", "attempts", "replies")


class _JudgeRuns:
    """This judge's runs over the predictions (``judge_runs.jsonl``) and the case records they complete: a case's
    record, with all its runs and their mean score, goes to ``judgments.jsonl`` once its ``judge_runs`` runs are
    in. ``stats`` counts runs found, runs judged and cases finished."""

    def __init__(self, cfg: LongBenchChatConfig, run: RunDir, cases: Sequence[ChatCase], preds: dict[Any, dict]):
        self.cfg = cfg
        self.runs_path, self.judged_path = run.judge_runs(BENCHMARK), run.judgments(BENCHMARK)
        self.preds = preds
        self.by_idx = {c.idx: c for c in cases}
        self.done: dict[Any, dict[int, dict]] = {}
        for rec in read_jsonl(self.runs_path):
            if rec.get("judge") == cfg.judge:
                self.done.setdefault(rec["idx"], {})[int(rec["run"])] = rec
        self.judged = {r["idx"] for r in read_jsonl(self.judged_path) if r.get("judge") == cfg.judge}
        self.stats: dict[str, Any] = {
            "runs_before": sum(len(v) for v in self.done.values()),
            "runs_judged": 0,
            "cases_finished": 0,
        }

    def missing(self, cases: Sequence[ChatCase]) -> list[tuple[ChatCase, int, list[int]]]:
        """``(case, run, example order)`` of every run still to judge, for the cases with a prediction."""
        cfg = self.cfg
        jobs = []
        for c in cases:
            if c.idx not in self.preds:
                continue
            orders = example_orders(len(c.examples), cfg.judge_runs, cfg.judge_seed, c.idx, cfg.shuffle_examples)
            jobs.extend((c, r, orders[r]) for r in range(cfg.judge_runs) if r not in self.done.get(c.idx, {}))
        return jobs

    def add(self, case: ChatCase, r: int, order: list[int], outcome: Any) -> None:
        """Store run ``r`` of ``case`` (a :class:`~longalign.eval.judge.JudgeOutcome`) and finish the case if it
        was its last."""
        rec = {"idx": case.idx, "run": r, "order": order, "judge": self.cfg.judge, **outcome.to_dict()}
        append_jsonl(self.runs_path, rec)
        self.done.setdefault(case.idx, {})[r] = rec
        self.stats["runs_judged"] += 1
        self.finish(case.idx)

    def finish_all(self) -> None:
        for idx in list(self.done):
            if idx in self.by_idx and idx in self.preds:
                self.finish(idx)

    def finish(self, idx: Any) -> None:
        """Write the record of case ``idx`` once all its runs are in (and only once)."""
        have = self.done.get(idx, {})
        n_runs = self.cfg.judge_runs
        if idx in self.judged or any(r not in have for r in range(n_runs)):
            return
        c, p = self.by_idx[idx], self.preds[idx]
        runs = [have[r] for r in range(n_runs)]
        scores = [x["score"] for x in runs if x["score"] is not None]
        rec = {
            "idx": idx,
            "query": c.query,
            "reference": c.answer,
            "prediction": p["prediction"],
            "lang": c.lang,
            "runs": [_run_summary(x) for x in runs],
            "score": round(statistics.fmean(scores), 4) if scores else None,
            "judge": self.cfg.judge,
            "model": p.get("model"),
        }
        append_jsonl(self.judged_path, rec)
        self.judged.add(idx)
        self.stats["cases_finished"] += 1


def _run_summary(x: dict[str, Any]) -> dict[str, Any]:
    """The fields of a judge run kept in its case record (the rating distribution where there is one)."""
    out = {k: x[k] for k in _RUN_FIELDS if k in x}
    if "distribution" in x:
        out["distribution"] = x["distribution"]
    if "expected" in x:
        out.update(expected=x["expected"], argmax=x["argmax"])
    if "scored_by" in x:
        out["scored_by"] = x["scored_by"]
    return out


def summarize(cfg: LongBenchChatConfig, run: RunDir, cases: Sequence[ChatCase] | None = None) -> dict[str, Any]:
    """Write and return ``summary.json`` from ``judgments.jsonl``."""
    recs = [r for r in read_jsonl(run.judgments(BENCHMARK)) if r.get("judge") == cfg.judge]
    preds = read_jsonl(run.predictions(BENCHMARK))
    scored = [r["score"] for r in recs if r.get("score") is not None]
    by_lang: dict[str, float | None] = {}
    for lang in sorted({r.get("lang", "en") for r in recs} | {"en", "zh"}):
        vals = [r["score"] for r in recs if r.get("lang") == lang and r.get("score") is not None]
        by_lang[lang] = round(statistics.fmean(vals), 4) if vals else None
    p_tok = sum(x.get("prompt_tokens", 0) for r in recs for x in r["runs"])
    c_tok = sum(x.get("completion_tokens", 0) for r in recs for x in r["runs"])
    unparsed_runs = sum(1 for r in recs for x in r["runs"] if x.get("score") is None)
    notes = []
    if is_local_judge(cfg.judge):
        notes.append(LOCAL_JUDGE_NOTE)
    if cfg.judge_template:
        notes.append(f"judge prompt from {cfg.judge_template}")
    if cfg.judge_runs != 2 or not cfg.shuffle_examples:
        notes.append(
            f"{cfg.judge_runs} judge run(s), examples {'shuffled' if cfg.shuffle_examples else 'in file order'} "
            "(paper: 2 runs, shuffled)"
        )
    n_trunc = sum(1 for p in preds if p.get("truncated"))
    if n_trunc:
        notes.append(f"{n_trunc} of {len(preds)} prompts middle-truncated to {cfg.max_len} tokens")
    capped = sorted({p["max_length"] for p in preds if p.get("max_length", cfg.max_len) < cfg.max_len})
    if capped:
        notes.append(f"prompts cut to {capped[0]} tokens (not {cfg.max_len}) to fit the model's context window")
    n_cases = len(cases) if cases is not None else None
    if n_cases is not None and len(recs) < n_cases:
        notes.append(f"only {len(recs)} of {n_cases} cases judged so far")
    label = cfg.dataset_label or (
        BENCHMARK_NAME
        if (n_cases == 50 and not str(cfg.data).endswith(".jsonl"))
        else Path(cfg.data).stem or BENCHMARK_NAME
    )
    summary = {
        "mean": round(statistics.fmean(scored), 4) if scored else None,
        "by_lang": by_lang,
        "n": len(recs),
        "n_scored": len(scored),
        "unparsed": len(recs) - len(scored),
        "unparsed_runs": unparsed_runs,
        "judge": cfg.judge,
        "judge_runs": cfg.judge_runs,
        "model": preds[0].get("model") if preds else cfg.model,
        "tokens": {"prompt": p_tok, "completion": c_tok},
        "cost": round(cost_of(p_tok, c_tok, cfg.price_in_per_mtok, cfg.price_out_per_mtok), 6),
        "notes": notes,
        "dataset": label,
        "scale": "1-10",
    }
    atomic_write_json(run.eval_summary(BENCHMARK), summary)
    return summary


def run(
    cfg: LongBenchChatConfig, run_dir: str | Path | RunDir, *, generator: Any = None, judge: Any = None
) -> LongBenchChatSummary:
    """The whole benchmark into ``<run>/eval/longbench_chat/``: load, predict, judge (when ``cfg.judge``),
    summarise; recorded in run.json as ``eval_longbench_chat``."""
    if not cfg.data:
        raise ValueError(
            "data is required: point --data at your LongBench-Chat copy (test_cases.json + few_shots.json)"
        )
    skipped = BadRecords(cfg.on_error)
    cases = load_longbench_chat(cfg.data, cfg.few_shots or None, skipped=skipped)
    if cfg.limit:
        cases = cases[: cfg.limit]
    # before any model is loaded or file written
    check_prompt_budget(cfg.model, cfg.max_len, cfg.max_new_tokens, generator=generator, fit_to_model=cfg.fit_to_model)
    run_ = as_run_dir(run_dir)
    pred_stats = predict(cfg, run_, cases, generator)
    judging = scores = None
    if cfg.judge:
        judging = judge_all(cfg, run_, cases, judge)
        scores = summarize(cfg, run_, cases)
    summary = LongBenchChatSummary(
        BENCHMARK,
        run_.eval(BENCHMARK),
        scores,
        summary_path=run_.eval_summary(BENCHMARK) if scores is not None else None,
        predictions=pred_stats,
        judging=judging,
        predictions_path=run_.predictions(BENCHMARK),
        skipped=skipped.to_dict(),
    )
    record(run_, "eval_longbench_chat", cfg, summary)
    return summary
