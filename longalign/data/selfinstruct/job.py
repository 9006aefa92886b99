"""Self-Instruct for long documents: ask an LLM for five questions about a document, validate them, pick one,
ask for its answer, and write a training record ``{"messages": [user: doc + question, assistant: answer]}``.

The recipe follows LongAlign (§3.3): four task types (general, summary/integration across parts, multi-hop
reasoning, information extraction), five questions numbered ``1: `` … ``5: ``, one chosen at random and
answered with the document in the prompt. The prompt wording here is our own, in English and Chinese
(picked by the document's language).

Why validation: a small generator does not follow the format reliably. With the embedded 135M model we
have seen the template slot echoed back (``1: <question>``), one question repeated five times, the instruction
itself returned
as a question, and two questions followed by prose. :func:`parse_questions` accepts the numbering variants
models actually write (``1:``, ``1.``, ``1)``, ``Q1:``, ``**1.**``, ``问题1：``) and records, rather than
raises on, extra prose or a short list; :func:`validate_questions` rejects template echoes, duplicates,
echoes of the instruction and implausible lengths. A rejected attempt is retried with a new sampling seed
(and a note naming what was wrong, so the request differs), every second retry with another task type;
everything rejected is stored in the record's ``rejected`` list. Questions that pass these format checks then
meet the relevance gate (:mod:`.relevance`: ``off_topic`` when they share too few content words with the
document, ``duplicate_across_records`` when they repeat the question of a record already written), and an
answer must be grounded in the document or its question (``ungrounded``); ``data/quality.json`` counts every
rejection by reason, and the summary prints them. A document that still fails after
``max_question_attempts`` goes to ``data/failed.jsonl`` and the job moves on (exit code 1).

Long documents: the generator sees at most ``max_prompt_tokens`` tokens (head and tail of the document
with a ``[...]`` marker in between) so a small-context generator can still be used; the stored training
record always keeps the full document.

The job (:func:`generate_long_data`) keeps up to ``window`` documents active and sends the next request of
each through ``client.chat_many`` (``max_in_flight`` HTTP requests at once; one at a time for a local
model), so a round costs about as long as its slowest request. A local model works on one document at a
time (window 1), so its answer request directly follows its question request and starts from the KV cache of
their shared document prefix (``prefix_reuse``). Every record is appended as one complete
line once its answer arrives; re-running skips the ``doc_id``s already in ``long.jsonl``, and the client's
request cache (``data/llm_cache``) replays every answered request, so a crash costs no paid call twice.
Per-document seeds are derived from ``seed`` and the ``doc_id``, which makes the replay deterministic.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longalign.config import option
from longalign.data.selfinstruct.parse import ValidationLimits, answer_problem, parse_questions, validate_questions
from longalign.data.selfinstruct.prompts import (
    N_QUESTIONS,
    TASK_TYPES,
    answer_prompt,
    fit_document,
    instruction_overhead,
    question_prompt,
    task_instruction,
    training_prompt,
)
from longalign.data.selfinstruct.relevance import (
    DEFAULT_MIN_ANSWER_OVERLAP,
    DEFAULT_MIN_QUESTION_OVERLAP,
    RelevanceGate,
    document_terms,
    quality_lines,
    quality_report,
)
from longalign.options import EndpointOptions
from longalign.rundir import RunDir, append_jsonl, atomic_write_json, read_jsonl
from longalign.stage import Summary, as_run_dir, record

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------- config


@dataclass
class GenerateConfig(EndpointOptions):
    """Options of ``longalign data generate``."""

    llm: str = option(
        "local:smollm2",
        help="question/answer generator: openai:<model> (any OpenAI-compatible "
        "endpoint, see base_url) or local:<model spec> (default: the embedded "
        "SmolLM2-135M-Instruct)",
    )
    n_docs: int = option(0, minimum=0, help="documents to use from corpus.jsonl, in file order (0 = all)")
    task_types: list[str] = option(
        default_factory=lambda: list(TASK_TYPES),
        choices=TASK_TYPES,
        help="task types to draw from: " + ", ".join(TASK_TYPES),
    )
    question_max_tokens: int = option(320, minimum=1, help="max new tokens of the question-generation reply")
    answer_max_tokens: int = option(1024, minimum=1, help="max new tokens of the answer")
    temperature: float = option(0.7, minimum=0, help="sampling temperature for questions and answers")
    top_p: float = option(0.95, minimum=0, maximum=1, help="nucleus sampling threshold")
    max_prompt_tokens: int = option(
        6000,
        minimum=0,
        help="longest prompt the generator gets: longer documents are "
        "cut to their head and tail for the generator (0 = never "
        "cut); the training record keeps the full document",
    )
    prompt_tokenizer: str | None = option(
        None,
        help="model spec whose tokenizer measures max_prompt_tokens "
        "(default: the local model, or the embedded one for openai:)",
    )
    min_questions: int = option(
        3,
        minimum=1,
        maximum=N_QUESTIONS,
        help="an attempt is accepted when at least this many of its questions are valid",
    )
    max_question_attempts: int = option(
        4, minimum=1, help="question-generation attempts per document before it is failed"
    )
    max_answer_attempts: int = option(3, minimum=1, help="answer attempts per document (each may use another question)")
    max_request_failures: int = option(
        2,
        minimum=0,
        help="times a request that finally failed (after retries) is sent again before the document is failed",
    )
    max_question_chars: int = option(400, minimum=1, help="longer questions are rejected")
    window: int = option(
        0,
        minimum=0,
        help="documents worked on at once (0 = 4 x max_in_flight, or 1 for a local model, which runs one "
        "request at a time: a document's answer then follows its questions and reuses their prefix cache)",
    )
    prefix_reuse: bool = option(
        True,
        help="local model: keep the KV cache of the document prefix so the answer request over a document only "
        "prefills what differs from its question request (outputs are unchanged)",
    )
    local_batch_size: int = option(
        1,
        minimum=1,
        help="local model: requests of up to this many documents generated together in one batch (1 = off). "
        "A batch decodes until its longest reply ends, so it gains little here: 1.04x docs/s over prefix reuse "
        "alone with int4 decoding, 0.91x in float32 (benchmarks/selfinstruct_throughput.py); a batch samples from "
        "one random stream, so sampled outputs then depend on which requests shared a batch; greedy outputs do not",
    )
    relevance_gate: bool = option(
        True,
        help="reject questions that share too few content words with their document, answers grounded in "
        "neither the document nor the question, and questions repeating an earlier record's (false = off)",
    )
    min_question_overlap: float = option(
        DEFAULT_MIN_QUESTION_OVERLAP,
        minimum=0,
        maximum=1,
        help="share of a question's content words (character pairs for zh) found in its document below which "
        "it is rejected as off_topic (0 = no check)",
    )
    min_answer_overlap: float = option(
        DEFAULT_MIN_ANSWER_OVERLAP,
        minimum=0,
        maximum=1,
        help="share of an answer's content words found in the document or the question below which it is "
        "rejected as ungrounded (0 = no check)",
    )
    seed: int = option(
        42, help="base seed: task types, sampling seeds and the chosen question derive from it and the doc_id"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.task_types:
            raise ValueError("task_types is empty; give at least one of " + ", ".join(TASK_TYPES))


# ------------------------------------------------------------------------------------------ per-document job


def _doc_seed(seed: int, doc_id: str) -> int:
    return int(hashlib.sha256(f"{seed}:{doc_id}".encode()).hexdigest()[:8], 16) % (2**31 - 10_000)


class DocumentJob:
    """State machine of one document: question attempts, then answer attempts.

    ``next_request()`` gives the messages and sampling params to send; ``feed(result_or_error)`` advances.
    ``status`` becomes 'done' (``record()`` is the training example) or 'failed' (``failure()``).
    """

    def __init__(
        self,
        doc: dict[str, Any],
        cfg: GenerateConfig,
        *,
        model: str,
        prompt_doc: str,
        prompt_truncated: bool,
        gate: RelevanceGate | None = None,
        earlier_questions: list[str] | None = None,
    ):
        from longalign.llm import SamplingParams

        self._SamplingParams = SamplingParams
        self.doc = doc
        self.cfg = cfg
        self.model = model
        self.doc_id = str(doc["id"])
        self.lang = doc.get("lang") or "en"
        self.prompt_doc = prompt_doc
        self.prompt_truncated = prompt_truncated
        self.base_seed = _doc_seed(cfg.seed, self.doc_id)
        self.rng = random.Random(self.base_seed)
        types = list(cfg.task_types)
        first = self.rng.randrange(len(types))
        self.type_order = types[first:] + types[:first]
        self.stage = "questions"
        self.status = "active"
        self.q_attempt = 0
        self.a_attempt = 0
        self.request_failures = 0
        self.rejected: list[dict[str, Any]] = []
        self.last_reasons: list[str] = []
        self.questions: list[str] = []
        self.raw_questions: list[str] = []
        self.parse_issues: list[str] = []
        self.task_type = self.type_order[0]
        self.remaining: list[str] = []
        self.question: str | None = None
        self.answer: str | None = None
        self.answer_finish: str | None = None
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "cached_responses": 0}
        self.error: str | None = None
        self._pending: tuple[list[dict[str, str]], Any] | None = None
        self.gate = gate
        self.earlier_questions = earlier_questions if earlier_questions is not None else []
        self._doc_terms: set[str] | None = None

    @property
    def doc_terms(self) -> set[str]:
        """Terms of the whole document (the relevance gate's reference), computed once."""
        if self._doc_terms is None:
            self._doc_terms = document_terms(self.doc["text"])
        return self._doc_terms

    # requests ----------------------------------------------------------------------------------------
    def _task_for_attempt(self, attempt: int) -> str:
        return self.type_order[(attempt // 2) % len(self.type_order)]

    def next_request(self) -> tuple[list[dict[str, str]], Any]:
        if self._pending is not None:  # the previous send failed: resend exactly the same request
            return self._pending
        cfg = self.cfg
        if self.stage == "questions":
            self.task_type = self._task_for_attempt(self.q_attempt)
            content = question_prompt(
                self.prompt_doc, self.task_type, self.lang, self.last_reasons if self.q_attempt else ()
            )
            params = self._SamplingParams(
                max_tokens=cfg.question_max_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                seed=self.base_seed + self.q_attempt,
            )
        else:
            if self.question is None:
                self.question = self.remaining.pop(self.rng.randrange(len(self.remaining)))
            content = answer_prompt(self.prompt_doc, self.question, self.lang)
            params = self._SamplingParams(
                max_tokens=cfg.answer_max_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                seed=self.base_seed + 1000 + self.a_attempt,
            )
        self._pending = ([{"role": "user", "content": content}], params)
        return self._pending

    # results -----------------------------------------------------------------------------------------
    def feed(self, result: Any) -> None:
        from longalign.llm import LLMRequestError

        if isinstance(result, BaseException):
            self.request_failures += 1
            msg = f"{type(result).__name__}: {result}"
            log.debug("%s: request failed (%s)", self.doc_id, msg)
            if isinstance(result, LLMRequestError) or self.request_failures > self.cfg.max_request_failures:
                self._fail(f"request failed: {msg}")
            return  # keep self._pending: the same request is sent again
        self._pending = None
        self.usage["prompt_tokens"] += int(result.prompt_tokens or 0)
        self.usage["completion_tokens"] += int(result.completion_tokens or 0)
        self.usage["cached_responses"] += int(bool(result.cached))
        if self.stage == "questions":
            self._feed_questions(result.text)
        else:
            self._feed_answer(result.text, result.finish_reason)

    def _feed_questions(self, text: str) -> None:
        attempt = self.q_attempt
        self.q_attempt += 1
        parsed = parse_questions(text)
        instruction = task_instruction(self.task_type, self.lang)
        limits = ValidationLimits(max_chars=self.cfg.max_question_chars)
        accepted, rejected = validate_questions(
            parsed.questions, lang=self.lang, instruction=instruction, limits=limits
        )
        if self.gate is not None:
            kept = []
            for q in accepted:
                reason = self.gate.question_problem(q, self.doc_terms) or self.gate.duplicate_problem(
                    q, self.earlier_questions
                )
                if reason is None:
                    kept.append(q)
                else:
                    rejected.append({"text": q, "reason": reason})
            accepted = kept
        for r in rejected:
            self.rejected.append(
                {"stage": "questions", "level": "question", "attempt": attempt, "task_type": self.task_type, **r}
            )
        reasons = [r["reason"] for r in rejected]
        if len(accepted) >= self.cfg.min_questions:
            self.questions = accepted
            self.raw_questions = parsed.questions
            self.parse_issues = parsed.issues
            self.remaining = list(accepted)
            self.stage = "answer"
            return
        if len(parsed.questions) < N_QUESTIONS:
            reasons.append("too_few")
        self.rejected.append(
            {
                "stage": "questions",
                "level": "attempt",
                "attempt": attempt,
                "task_type": self.task_type,
                "text": text[:2000],
                "reason": f"attempt rejected: {len(accepted)} valid question(s), need {self.cfg.min_questions}",
                "issues": parsed.issues,
            }
        )
        self.last_reasons = sorted(set(reasons)) or ["too_few"]
        if self.q_attempt >= self.cfg.max_question_attempts:
            self._fail(f"no usable questions after {self.q_attempt} attempts")

    def _feed_answer(self, text: str, finish_reason: str | None) -> None:
        attempt = self.a_attempt
        self.a_attempt += 1
        answer = text.strip()
        problem = answer_problem(answer, self.question or "")
        if problem is None and self.gate is not None:
            problem = self.gate.answer_problem(answer, self.question or "", self.doc_terms)
        if problem is None:
            self.answer = answer
            self.answer_finish = finish_reason
            self.status = "done"
            return
        self.rejected.append(
            {"stage": "answer", "attempt": attempt, "question": self.question, "text": text[:2000], "reason": problem}
        )
        if self.a_attempt >= self.cfg.max_answer_attempts:
            self._fail(f"no usable answer after {self.a_attempt} attempts")
        elif self.remaining:
            self.question = None  # try another of the accepted questions
        # else: same question again, new seed (next_request derives it from a_attempt)

    def _fail(self, reason: str) -> None:
        self.status = "failed"
        self.error = reason
        self._pending = None

    # outputs -----------------------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        assert self.status == "done" and self.question is not None and self.answer is not None
        return {
            "messages": [
                {"role": "user", "content": training_prompt(self.doc["text"], self.question)},
                {"role": "assistant", "content": self.answer},
            ],
            "doc_id": self.doc_id,
            "source": self.doc.get("source", ""),
            "lang": self.lang,
            "task_type": self.task_type,
            "questions": self.questions,
            "question": self.question,
            "model": self.model,
            "rejected": self.rejected,
            "n_tokens_doc": self.doc.get("n_tokens"),
            "generation": {
                "question_attempts": self.q_attempt,
                "answer_attempts": self.a_attempt,
                "parse_issues": self.parse_issues,
                "prompt_truncated": self.prompt_truncated,
                "answer_finish_reason": self.answer_finish,
                "seed": self.base_seed,
                **self.usage,
            },
        }

    def failure(self) -> dict[str, Any]:
        return {
            "doc_id": self.doc_id,
            "source": self.doc.get("source", ""),
            "lang": self.lang,
            "reason": self.error,
            "stage": self.stage,
            "rejected": self.rejected,
            "model": self.model,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }


# ----------------------------------------------------------------------------------------------------- job


@dataclass
class GenerateSummary(Summary):
    """What ``data generate`` did: documents done now / before / failed, tokens, cost and time."""

    documents: int
    already_done: int
    written: int
    failed: int
    records_total: int
    usage: dict[str, Any]
    seconds: float
    failed_ids: list[str]
    rejected_questions: int
    model: str
    records_file: Path | None = None
    failed_file: Path | None = None
    stopped: str | None = None  # why the job stopped early (the spending cap), None when it ran to the end
    quality: dict[str, Any] | None = None
    quality_file: Path | None = None

    def lines(self) -> list[str]:
        usage = self.usage or {}
        cost = usage.get("cost")
        out = [
            f"{self.records_total} records in {self.records_file} ({self.written} new, {self.already_done} "
            f"already there, {self.failed} failed) in {self.seconds:.1f} s",
            f"tokens: {usage.get('prompt_tokens', 0)} prompt + {usage.get('completion_tokens', 0)} completion "
            f"in {usage.get('requests', 0)} paid requests, {usage.get('cached', 0)} from cache, "
            f"{usage.get('retries', 0)} retries; cost: "
            + (f"{cost:.4f} (in the unit of the prices)" if cost is not None else "n/a (no prices given)"),
        ]
        out += quality_lines(self.quality)
        if self.quality_file is not None:
            out.append(f"rejection counts by reason in {self.quality_file}")
        if self.failed:
            out.append(
                f"{self.failed} document(s) failed, listed in {self.failed_file}; re-run the same command to retry them"
            )
        if self.stopped:
            out.append(self.stopped)
        return out

    @property
    def exit_code(self) -> int:
        """1 when documents failed or the spending cap stopped the job (a re-run continues)."""
        return 1 if self.failed or self.stopped else 0


def failed_path(run: RunDir) -> Path:
    return run.failed


def generator_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """(llm spec, base_url) of the generator to use when none is named: ``openai:$OPENAI_MODEL`` (default
    model ``gpt-4o-mini``) at ``$OPENAI_BASE_URL`` when that variable is set, else the embedded
    ``local:smollm2`` (no base URL). ``environ`` defaults to ``os.environ``."""
    env = os.environ if environ is None else environ
    base_url = env.get("OPENAI_BASE_URL")
    if base_url:
        return "openai:" + (env.get("OPENAI_MODEL") or "gpt-4o-mini"), base_url
    return "local:smollm2", None


def make_generator_client(cfg: GenerateConfig, run: RunDir):
    """The LLM client for ``cfg`` with its request cache and calls log inside ``run``."""
    from longalign.llm import make_client

    return make_client(
        cfg.llm,
        cache_dir=run.llm_cache,
        calls_log=run.llm_calls,
        prefix_reuse=cfg.prefix_reuse,
        local_batch_size=cfg.local_batch_size,
        **cfg.client_kwargs(),
    )


def gate_of(cfg: GenerateConfig) -> RelevanceGate | None:
    """The relevance gate ``cfg`` asks for (None when ``relevance_gate`` is off)."""
    if not cfg.relevance_gate:
        return None
    return RelevanceGate(min_question_overlap=cfg.min_question_overlap, min_answer_overlap=cfg.min_answer_overlap)


def check_generate_config(cfg: GenerateConfig) -> None:
    """The checks :class:`GenerateConfig` runs when built, again (for a config changed after it was built)."""
    cfg.__post_init__()


class _PromptFitter:
    """Cuts documents to ``max_prompt_tokens`` for the generator (:func:`fit_document`). The tokenizer is loaded
    at the first document that may need cutting: one whose UTF-8 bytes fit the budget cannot (a token covers at
    least one byte), so a corpus of short documents never loads it, and an unreachable endpoint is reported
    without waiting for it."""

    def __init__(self, cfg: GenerateConfig, tokenizer: Any = None):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.budget: int | None = None

    def fit(self, text: str) -> tuple[str, bool]:
        limit = self.cfg.max_prompt_tokens
        if limit <= 0 or len(text.encode("utf-8")) <= max(64, limit - instruction_overhead(None)):
            return text, False
        if self.tokenizer is None:
            from longalign.llm import local_model_spec
            from longalign.models import load_tokenizer

            self.tokenizer = load_tokenizer(self.cfg.prompt_tokenizer or local_model_spec(self.cfg.llm))
        if self.budget is None:
            self.budget = max(64, limit - instruction_overhead(self.tokenizer))
        return fit_document(text, self.tokenizer, self.budget)


def generate_long_data(
    cfg: GenerateConfig,
    run: RunDir | str | Path,
    *,
    client: Any = None,
    docs: list[dict[str, Any]] | None = None,
    prompt_tokenizer: Any = None,
    progress: bool = True,
) -> GenerateSummary:
    """Generate one long instruction example per document of ``run/data/corpus.jsonl`` into ``long.jsonl``.

    Resumable: documents whose ``doc_id`` is already in ``long.jsonl`` are skipped. Documents that fail are
    appended to ``data/failed.jsonl`` and retried on the next run.
    """
    from tqdm.auto import tqdm

    from longalign.llm import LLMBudgetExceeded

    check_generate_config(cfg)
    run = RunDir(run) if not isinstance(run, RunDir) else run
    start = time.monotonic()
    docs, pending_docs = _documents_to_generate(cfg, run, docs)
    already = len(docs) - len(pending_docs)
    log.info("%d documents, %d already in %s, %d to generate", len(docs), already, run.long, len(pending_docs))

    # chosen questions of the records already written: a new record must not repeat one of them
    out = _JobOutcomes(run, [str(r["question"]) for r in read_jsonl(run.long) if r.get("question")])
    own_client = client is None
    if own_client:
        client = make_generator_client(cfg, run)
    model_name = getattr(client, "spec", None) or getattr(client, "model", "") or cfg.llm
    try:
        fitter = _PromptFitter(cfg, prompt_tokenizer)
        gate = gate_of(cfg)

        def new_job(doc: dict[str, Any]) -> DocumentJob:
            text, cut = fitter.fit(doc["text"])
            return DocumentJob(
                doc,
                cfg,
                model=model_name,
                prompt_doc=text,
                prompt_truncated=cut,
                gate=gate,
                earlier_questions=out.earlier,
            )

        concurrency = getattr(client, "concurrency", cfg.max_in_flight)
        window = cfg.window or (1 if concurrency == 1 else 4 * cfg.max_in_flight)
        bar = tqdm(total=len(docs), initial=already, desc="long data", unit="doc", disable=not progress)
        try:
            _run_jobs(client, pending_docs, new_job, window, out, bar)
        except LLMBudgetExceeded as exc:  # the spending cap: unfinished documents are left for a re-run
            out.stopped = str(exc)
            log.warning("%s", exc)
        finally:
            bar.close()
        usage = client.usage() if hasattr(client, "usage") else {}
    finally:
        if own_client:
            client.close()
    return _generate_summary(cfg, run, docs, already, out, usage, model_name, start)


def _documents_to_generate(
    cfg: GenerateConfig, run: RunDir, docs: list[dict[str, Any]] | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The documents of this job (``docs``, else the run's corpus; the first ``n_docs``) and those of them not
    in ``long.jsonl`` yet; document ids must be unique."""
    from longalign.data.corpus import read_corpus

    if docs is None:
        docs = read_corpus(run.corpus)
    if cfg.n_docs > 0:
        docs = docs[: cfg.n_docs]
    ids = [str(d["id"]) for d in docs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"document id {dup!r} appears more than once in the corpus; ids must be unique")
    done_ids = {str(r.get("doc_id")) for r in read_jsonl(run.long)}
    return docs, [d for d in docs if str(d["id"]) not in done_ids]


@dataclass
class _JobOutcomes:
    """What one :func:`generate_long_data` call finished: records written to ``long.jsonl`` (their questions
    join ``earlier``, which every job checks new questions against), documents failed into ``failed.jsonl``,
    and why the job stopped early, if it did."""

    run: RunDir
    earlier: list[str]
    written: int = 0
    failed: int = 0
    rejected_questions: int = 0
    failed_ids: list[str] = field(default_factory=list)
    stopped: str | None = None

    def finish(self, job: DocumentJob) -> bool:
        """Store a finished job's record or failure; False while the job is still active."""
        if job.status == "done":
            rec = job.record()
            append_jsonl(self.run.long, rec)
            self.earlier.append(str(rec["question"]))
            self.written += 1
            self.rejected_questions += sum(1 for r in job.rejected if r.get("level") == "question")
            return True
        if job.status == "failed":
            append_jsonl(failed_path(self.run), job.failure())
            self.failed += 1
            self.failed_ids.append(job.doc_id)
            log.warning("document %s failed: %s", job.doc_id, job.error)
            return True
        return False


def _run_jobs(
    client: Any,
    pending_docs: list[dict[str, Any]],
    new_job: Callable[[dict[str, Any]], DocumentJob],
    window: int,
    out: _JobOutcomes,
    bar: Any,
) -> None:
    """Work on up to ``window`` documents at once, in input order: each round sends the next request of every
    active job through ``client.chat_many`` and feeds the answers back; finished jobs go to ``out``."""
    queue = list(reversed(pending_docs))
    active: list[DocumentJob] = []
    while queue or active:
        while queue and len(active) < window:
            active.append(new_job(queue.pop()))
        requests = [job.next_request() for job in active]
        for i, res in client.chat_many(requests):
            job = active[i]
            job.feed(res)
            if out.finish(job):
                bar.update(1)
        active = [j for j in active if j.status == "active"]
        bar.set_postfix(failed=out.failed)


def _generate_summary(
    cfg: GenerateConfig,
    run: RunDir,
    docs: list[dict[str, Any]],
    already: int,
    out: _JobOutcomes,
    usage: dict[str, Any],
    model_name: str,
    start: float,
) -> GenerateSummary:
    """The job's summary, with the quality report of every record and failure so far (written to
    ``quality.json``); ``start`` is the job's start on ``time.monotonic``."""
    records = read_jsonl(run.long)
    records_total = len({str(r.get("doc_id")) for r in records})
    quality = quality_report(records, read_jsonl(failed_path(run)), gate=gate_of(cfg))
    atomic_write_json(run.quality, quality)
    summary = GenerateSummary(
        documents=len(docs),
        already_done=already,
        written=out.written,
        failed=out.failed,
        records_total=records_total,
        usage=usage,
        seconds=round(time.monotonic() - start, 2),
        failed_ids=out.failed_ids,
        rejected_questions=out.rejected_questions,
        model=model_name,
        records_file=run.long,
        failed_file=failed_path(run),
        stopped=out.stopped,
        quality=quality,
        quality_file=run.quality,
    )
    log.info("generated %d records (%d failed) in %.1f s", out.written, out.failed, summary.seconds)
    return summary


def run(
    cfg: GenerateConfig,
    run_dir: str | Path | RunDir,
    *,
    client: Any = None,
    docs: list[dict[str, Any]] | None = None,
    progress: bool = True,
) -> GenerateSummary:
    """The ``data.generate`` step: :func:`generate_long_data` over ``<run>/data/corpus.jsonl`` (or over ``docs``,
    a selection of its documents), recorded in run.json.

    The summary's ``exit_code`` is 1 when some documents failed (listed in ``data/failed.jsonl``; a re-run
    retries them).
    """
    run_ = as_run_dir(run_dir)
    summary = generate_long_data(cfg, run_, client=client, docs=docs, progress=progress)
    record(run_, "data.generate", cfg, summary)
    return summary
