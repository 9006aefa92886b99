"""Judge agreement: how well does a judge's rating track the human experts' ratings?

The benchmark's ``few_shots.json`` holds 150 answers (3 per question) with human scores 1-10. Each answer is
rated by the judge with the *other two* answers of its question as scored examples (leave-one-out, so the
judge never sees the answer's own human score), plus the question and reference answer when the user's
``test_cases.json`` is given. Without it the judge sees no question and no reference, and both the prompt
and the summary say so: that setting is harder than the paper's, so its correlations are a lower bound.

The summary reports Spearman's rho and Kendall's tau (scipy, tau-b) over all 150 (judge, human) pairs, next
to the paper's Table 1 figures (GPT-4 + few-shot 0.844/0.716, GPT-4 zero-shot 0.788/0.656, human
inter-annotator 0.817/0.694). For a local judge both the expected-value score and the argmax score are
correlated (the argmax is coarse and ties often). As a reference point the summary also correlates a
"judge" that ignores the answer and repeats the mean human score of the examples it was shown
(``baseline_example_mean``): a judge that merely copies its examples scores no better than that. Ratings
are appended per answer and a re-run resumes.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longalign.config import option, redefault
from longalign.eval.judge import LOCAL_JUDGE_NOTE, JudgeRequest, check_judge_spec, is_local_judge, make_judge
from longalign.eval.longbench_chat import (
    JUDGE_SYSTEM,
    build_judge_user_prompt,
    detect_lang,
    load_few_shots,
    load_longbench_chat,
)
from longalign.eval.options import LOCAL_SCORES, SeededJudgeOptions
from longalign.eval.summary import AgreementSummary
from longalign.rundir import RunDir, append_jsonl, atomic_write_json, read_jsonl
from longalign.stage import as_run_dir, record

log = logging.getLogger(__name__)

PAPER_AGREEMENT = {
    "gpt4_few_shot": {"spearman": 0.844, "kendall": 0.716},
    "gpt4_zero_shot": {"spearman": 0.788, "kendall": 0.656},
    "human_inter_annotator": {"spearman": 0.817, "kendall": 0.694},
}


@dataclass
class AgreementConfig(SeededJudgeOptions):
    """``longalign eval judge-agreement``: correlate a judge with the human scores of few_shots.json."""

    few_shots: str = option("", help="the benchmark's few_shots.json (human-scored answers, 3 per question)")
    test_cases: str = option("", help="test_cases.json, so the judge also sees each question and reference answer")
    limit: int = option(0, minimum=0, help="only the first N questions (0 = all)")
    progress: bool = option(True, help="show a progress bar")
    judge: str = redefault("local:smollm2", note="a judge is required here")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_judge_spec(self.judge)


@dataclass
class AgreementItem:
    qid: int  # 1-based question number (few_shots entry)
    k: int  # which answer of the question (0-based)
    answer: str
    human: float
    examples: list[dict[str, Any]]
    query: str | None
    reference: str | None
    lang: str


def agreement_items(
    few_shots: Sequence[Sequence[dict[str, Any]]], cases: dict[int, Any] | None = None
) -> list[AgreementItem]:
    """Leave-one-out items: every answer with the other answers of its question as examples."""
    items = []
    for q, entry in enumerate(few_shots, 1):
        case = cases.get(q) if cases else None
        for k, ex in enumerate(entry):
            others = [e for j, e in enumerate(entry) if j != k]
            lang = case.lang if case is not None else detect_lang(ex["answer"])
            items.append(
                AgreementItem(
                    q,
                    k,
                    ex["answer"],
                    float(ex["score"]),
                    others,
                    case.query if case is not None else None,
                    case.answer if case is not None else None,
                    lang,
                )
            )
    return items


def correlations(judge: Sequence[float], human: Sequence[float]) -> dict[str, float | None]:
    """Spearman's rho and Kendall's tau-b with their p-values (None when undefined, e.g. constant input)."""
    from scipy import stats

    if len(judge) < 3 or len(set(judge)) < 2 or len(set(human)) < 2:
        return {"spearman": None, "spearman_p": None, "kendall": None, "kendall_p": None}
    rho = stats.spearmanr(judge, human)
    tau = stats.kendalltau(judge, human)
    return {
        "spearman": round(float(rho.statistic), 4),
        "spearman_p": float(rho.pvalue),
        "kendall": round(float(tau.statistic), 4),
        "kendall_p": float(tau.pvalue),
    }


BENCHMARK = "judge_agreement"


def run(cfg: AgreementConfig, run_dir: str | Path | RunDir, *, judge: Any = None) -> AgreementSummary:
    """Rate every leave-one-out item (resuming) into ``<run>/eval/judge_agreement/ratings.jsonl``, then write
    ``summary.json`` with the correlations; recorded in run.json as ``eval_judge_agreement``."""
    from tqdm.auto import tqdm

    if not cfg.few_shots:
        raise ValueError("few_shots is required: give the benchmark's few_shots.json")
    few = load_few_shots(cfg.few_shots)
    cases = None
    if cfg.test_cases:
        cases = {c.idx: c for c in load_longbench_chat(cfg.test_cases, cfg.few_shots)}
    if cfg.limit:
        few = few[: cfg.limit]
    items = agreement_items(few, cases)
    run = as_run_dir(run_dir)
    path = run.agreement_ratings()
    have = {(r["qid"], r["k"]) for r in read_jsonl(path) if r.get("judge") == cfg.judge}
    pending = [it for it in items if (it.qid, it.k) not in have]
    if pending:
        if judge is None:
            judge = make_judge(cfg, cache_dir=run.llm_cache, calls_log=run.llm_calls)
        requests = []
        for it in pending:
            user = build_judge_user_prompt(it.query, it.reference, it.examples, it.answer)
            requests.append(
                JudgeRequest(
                    [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}],
                    1,
                    10,
                    seed=cfg.judge_seed,
                )
            )
        with tqdm(total=len(pending), desc="agreement ratings", disable=not cfg.progress) as bar:
            for j, out in judge.rate_many(requests, progress=bar.update):
                it = pending[j]
                rec = {
                    "qid": it.qid,
                    "k": it.k,
                    "human": it.human,
                    "score": out.score,
                    "lang": it.lang,
                    "judge": cfg.judge,
                    "saw_question": it.query is not None,
                    "reply": out.reply,
                    "prompt_tokens": out.prompt_tokens,
                    "completion_tokens": out.completion_tokens,
                    **{
                        k: v
                        for k, v in out.extra.items()
                        if k in ("expected", "argmax", "distribution", "valid_mass", "prompt_truncated")
                    },
                }
                append_jsonl(path, rec)
    wanted = {(it.qid, it.k) for it in items}
    recs = [r for r in read_jsonl(path) if r.get("judge") == cfg.judge and (r["qid"], r["k"]) in wanted]
    pairs = [(r["score"], r["human"]) for r in recs if r.get("score") is not None]
    summary: dict[str, Any] = {
        "judge": cfg.judge,
        "n": len(recs),
        "n_scored": len(pairs),
        "unparsed": len(recs) - len(pairs),
        "saw_question_and_reference": bool(cases),
        "score": cfg.local_score if is_local_judge(cfg.judge) else "parsed",
        **correlations([p[0] for p in pairs], [p[1] for p in pairs]),
        "paper": PAPER_AGREEMENT,
        "mean_judge": round(statistics.fmean(p[0] for p in pairs), 4) if pairs else None,
        "mean_human": round(statistics.fmean(p[1] for p in pairs), 4) if pairs else None,
        "by_lang": {},
        "notes": [],
    }
    # reference point: a "judge" that ignores the answer and repeats the mean score of the shown examples
    ex_mean = {(it.qid, it.k): statistics.fmean(float(e["score"]) for e in it.examples) for it in items if it.examples}
    base = [(ex_mean[(r["qid"], r["k"])], r["human"]) for r in recs if (r["qid"], r["k"]) in ex_mean]
    c = correlations([b[0] for b in base], [b[1] for b in base])
    summary["baseline_example_mean"] = {"spearman": c["spearman"], "kendall": c["kendall"], "n": len(base)}
    for lang in sorted({r["lang"] for r in recs}):
        sub = [(r["score"], r["human"]) for r in recs if r["lang"] == lang and r.get("score") is not None]
        c = correlations([p[0] for p in sub], [p[1] for p in sub])
        summary["by_lang"][lang] = {"n": len(sub), "spearman": c["spearman"], "kendall": c["kendall"]}
    if is_local_judge(cfg.judge):
        for variant in LOCAL_SCORES:
            sub = [(float(r[variant]), r["human"]) for r in recs if r.get(variant) is not None]
            c = correlations([p[0] for p in sub], [p[1] for p in sub])
            summary[f"local_{variant}"] = {"spearman": c["spearman"], "kendall": c["kendall"], "n": len(sub)}
        summary["notes"].append(LOCAL_JUDGE_NOTE)
    if not cases:
        summary["notes"].append(
            "the judge saw no question and no reference answer (test_cases.json not given): "
            "only the two other scored answers of each question; the paper's judge saw both"
        )
    summary["notes"].append(
        "each answer rated with the other two answers of its question as examples "
        "(leave-one-out); the paper's figures come from GPT-4 on the benchmark's own setup"
    )
    atomic_write_json(run.eval_summary(BENCHMARK), summary)
    result = AgreementSummary(BENCHMARK, run.eval(BENCHMARK), summary, summary_path=run.eval_summary(BENCHMARK))
    record(run, "eval_judge_agreement", cfg, result)
    return result
