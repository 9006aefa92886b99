"""``longalign eval longbench-v2``: LongBench v2 (Bai et al., arXiv 2412.15204), 503 multiple-choice questions over
contexts of 8k to 2M words, scored exactly, from the user's copy of the released data.

Data: the released layout, a JSON list or one object per line (jsonl), each item with ``_id``, ``domain``,
``sub_domain``, ``difficulty`` (easy/hard), ``length`` (short/medium/long), ``question``, ``choice_A`` ...
``choice_D``, ``answer`` (a letter A-D) and ``context``. A malformed item stops the run with an error naming the
file and the item (its ``_id``, or its index when it has none) and the fix; ``--on-error skip`` leaves such
items out and lists them in the summary. Nothing is bundled or downloaded.

Prompt (our own wording): the context between ``<document>`` tags, the question, the four choices as ``(A)``
... ``(D)`` and the request to reply "The answer is (X)". The context is middle-truncated (its first and last
halves kept, as the benchmark's harness does) so that the rendered prompt plus the answer fits the window:
``--max-len`` tokens, by default the local model's positions (an endpoint needs ``--max-len``).

Two answer modes (``--answer-mode``; ``auto`` picks logprob for a local model and generate for an endpoint):

* ``logprob``: no generation; the assistant turn is forced to start with "The answer is (" and the choice is
  the letter with the highest next-token probability (the four probabilities, renormalised, are stored). A
  local model needs one forward pass over the prompt; an endpoint must continue the assistant message and
  return ``top_logprobs`` (vLLM, llama.cpp's server).
* ``generate``: the model writes its reply (``--max-new-tokens``, greedy by default) and the letter is read from
  it by :func:`extract_choice`; a reply without a readable letter counts as wrong.

Accuracy is reported overall, by difficulty, by length group and by domain, each with a 95% Wilson interval
(:mod:`longalign.eval.intervals`); chance is 25%. Every item is appended to ``results.jsonl`` when answered, and a
re-run with the same model, mode and window skips the items already there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longalign.config import option, redefault
from longalign.eval.intervals import mean_interval
from longalign.eval.options import ModelOptions, SamplingOptions
from longalign.eval.ruler import TokenizedEndpoint
from longalign.eval.summary import EvalSummary
from longalign.options import InputErrorOptions
from longalign.rundir import BadRecords, RunDir, append_jsonl, atomic_write_json, read_jsonl, skipped_lines
from longalign.stage import as_run_dir, record

log = logging.getLogger(__name__)

BENCHMARK = "longbench_v2"
LETTERS = ("A", "B", "C", "D")
FIELDS = (
    "_id",
    "domain",
    "sub_domain",
    "difficulty",
    "length",
    "question",
    "choice_A",
    "choice_B",
    "choice_C",
    "choice_D",
    "answer",
    "context",
)
TEXT_FIELDS = ("question", "choice_A", "choice_B", "choice_C", "choice_D", "context")
ANSWER_MODES = ("auto", "logprob", "generate")
ANSWER_PREFIX = "The answer is ("
PROMPT = (
    "Read the document below, then answer the multiple-choice question that follows it.\n\n"
    "<document>\n{context}\n</document>\n\n"
    "Question: {question}\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
    'Reply in the form "The answer is (X)", where X is the letter of the correct choice.'
)


@dataclass
class LongBenchV2Config(ModelOptions, SamplingOptions, InputErrorOptions):
    """``longalign eval longbench-v2``: LongBench v2 multiple choice, exact scoring."""

    data: str = option(
        "", help="your copy of the LongBench v2 data: a JSON list or a jsonl file in the released layout"
    )
    answer_mode: str = option(
        "auto",
        choices=ANSWER_MODES,
        help="logprob: the letter with the highest next-token probability after 'The answer is (' (no "
        "generation); generate: read the letter from the reply; auto: logprob for local models, generate for "
        "endpoints",
    )
    max_len: int = option(
        0,
        minimum=0,
        help="window in tokens for the prompt (chat template included) plus the answer; the context is "
        "middle-truncated to fit (0 = the local model's positions; an endpoint needs a value)",
    )
    limit: int = option(0, minimum=0, help="only the first N items of the file (0 = all)")
    progress: bool = option(True, help="show progress bars")
    max_new_tokens: int = redefault(128, note="generate mode")


@dataclass
class LBv2Item:
    uid: str
    index: int
    domain: str
    sub_domain: str
    difficulty: str
    length: str
    question: str
    choices: list[str]
    answer: str
    context: str


@dataclass
class LongBenchV2Summary(EvalSummary):
    results: Path | None = None
    answered: int = 0
    done_before: int = 0
    skipped: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        s = self.scores or {}
        out = skipped_lines(self.skipped)
        out.append(
            f"LongBench v2, {s.get('model')} ({s.get('mode')} mode, {s.get('window')}-token window): "
            f"{self.answered} answered now, {self.done_before} before"
        )

        def fmt(name: str, c: dict[str, Any]) -> str:
            if c.get("score") is None:
                return f"  {name:18s} -"
            return f"  {name:18s} {c['score']:5.1f}% [{c['lo']:.1f}-{c['hi']:.1f}] n={c['n']}"

        out.append(fmt("overall", s.get("overall", {})))
        for group in ("difficulty", "length", "domain"):
            for name, c in (s.get(f"by_{group}") or {}).items():
                out.append(fmt(f"{group} {name}", c))
        out.append(f"  no readable choice: {s.get('unanswered', 0)}; chance is 25%")
        out += self.note_lines()
        out.append(f"results: {self.results}")
        return out


# --------------------------------------------------------------------------------------------- reading
def _item(rec: Any, index: int, where: str) -> LBv2Item:
    from longalign.rundir import BadRecord

    if not isinstance(rec, dict):
        raise BadRecord(where, f"expected a JSON object (a LongBench v2 item), got {type(rec).__name__}", "wrong_shape")
    missing = [k for k in FIELDS if k not in rec]
    if missing:
        raise BadRecord(
            where,
            f"missing field(s) {', '.join(missing)}; LongBench v2 items need {', '.join(FIELDS)}",
            "missing_field",
        )
    wrong = [k for k in TEXT_FIELDS if not isinstance(rec[k], str)]
    if wrong:
        raise BadRecord(where, f"field(s) {', '.join(wrong)} must be strings", "wrong_type")
    answer = str(rec["answer"]).strip().strip("()").upper()
    if answer not in LETTERS:
        raise BadRecord(where, f"answer {rec['answer']!r} is not one of A, B, C, D", "bad_answer")
    return LBv2Item(
        uid=str(rec["_id"]),
        index=index,
        domain=str(rec["domain"]),
        sub_domain=str(rec["sub_domain"]),
        difficulty=str(rec["difficulty"]),
        length=str(rec["length"]),
        question=rec["question"],
        choices=[rec[f"choice_{x}"] for x in LETTERS],
        answer=answer,
        context=rec["context"],
    )


def read_longbench_v2(path: str | Path, *, skipped: BadRecords | None = None, limit: int = 0) -> list[LBv2Item]:
    """Items of a LongBench v2 file (a JSON list, or jsonl); see the module docstring for errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"LongBench v2 data {path} does not exist; point --data at your copy of the data file (JSON list or jsonl)"
        )
    bad = skipped if skipped is not None else BadRecords()
    text = path.read_text(encoding="utf-8")
    raw: list[tuple[Any, str]] = []
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix the file or give it as jsonl"
            ) from None
        for i, rec in enumerate(data):
            uid = rec.get("_id") if isinstance(rec, dict) else None
            raw.append((rec, f"{path}: item {i}" + (f" (_id {uid})" if uid is not None else "")))
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                bad.bad(f"{path}:{lineno}", f"not valid JSON ({exc.msg}); fix or remove that line", "invalid_json")
                continue
            uid = rec.get("_id") if isinstance(rec, dict) else None
            raw.append((rec, f"{path}:{lineno}" + (f" (_id {uid})" if uid is not None else "")))
    from longalign.rundir import BadRecord

    items: list[LBv2Item] = []
    seen: dict[str, str] = {}
    for i, (rec, where) in enumerate(raw):
        if limit and len(items) >= limit:
            break
        try:
            item = _item(rec, i, where)
        except BadRecord as err:
            bad.add(err)
            continue
        if item.uid in seen:
            bad.bad(where, f"_id {item.uid} already used by {seen[item.uid]}; ids must be unique", "duplicate_id")
            continue
        seen[item.uid] = where
        items.append(item)
    if not items:
        raise ValueError(f"{path}: no usable items")
    return items


# --------------------------------------------------------------------------------------------- prompts
def build_prompt(item: LBv2Item, context: str) -> str:
    a, b, c, d = item.choices
    return PROMPT.format(
        context=context, question=item.question.strip(), A=a.strip(), B=b.strip(), C=c.strip(), D=d.strip()
    )


_ANSWER_IS = re.compile(r"answer\s*(?:is|:)?\s*:?\s*\(?\s*([ABCD])\b\s*\)?", re.I)
_PAREN = re.compile(r"\(([ABCD])\)")
_LEADING = re.compile(r"^\s*\(?([ABCD])(?:\)|\.|:|\s*$)")


def extract_choice(text: str | None) -> str | None:
    """The letter a reply chooses: the last "answer is (X)" / "answer: X" (the letter upper case); else a reply
    that starts with the letter ("(B)", "B.", "B) ...", "B:", a bare "B"; not "A good ..."); else the single
    "(X)" the reply contains. None when nothing (or several different "(X)") is found."""
    if not text:
        return None
    found = [m.group(1) for m in _ANSWER_IS.finditer(text) if m.group(1).isupper()]
    if found:
        return found[-1]
    m = _LEADING.match(text)
    if m:
        return m.group(1)
    letters = set(_PAREN.findall(text))
    return letters.pop() if len(letters) == 1 else None


@dataclass
class Prepared:
    item: LBv2Item
    user: str
    ids: list[int]
    context_tokens_raw: int
    context_tokens: int
    truncated: bool


def prepare(fmt: Any, item: LBv2Item, window: int, reserve: int, prefix: str) -> Prepared:
    """The item's prompt, its context middle-truncated so the rendered prompt is at most ``window - reserve``
    tokens (``fmt`` is a :class:`~longalign.eval.ruler_tasks.PromptFormat`)."""
    from longalign.eval.generate import middle_truncate

    limit = window - reserve
    ctx_ids = fmt.encode(item.context)
    overhead = fmt.count(build_prompt(item, ""), prefix)
    budget = limit - overhead
    if budget < 16:
        raise ValueError(
            f"item {item.uid}: a {window}-token window leaves {budget} tokens for the context after the question, "
            f"choices and template ({overhead}) and the answer ({reserve}); use a larger --max-len"
        )
    for _ in range(8):
        kept, truncated = middle_truncate(ctx_ids, budget)
        if truncated:
            half = len(kept) // 2
            context = fmt.decode(kept[:half]) + fmt.decode(kept[half:])
        else:
            context = item.context
        user = build_prompt(item, context)
        ids = fmt.encode(fmt.render(user, prefix))
        if len(ids) <= limit:
            return Prepared(item, user, ids, len(ctx_ids), len(kept), truncated)
        budget -= len(ids) - limit
    raise ValueError(f"item {item.uid}: could not fit the prompt into {limit} tokens")


# --------------------------------------------------------------------------------------------- answering
def _letter_distribution(logps: dict[str, float]) -> dict[str, float]:
    top = max(logps.values())
    w = {k: math.exp(v - top) for k, v in logps.items()}
    z = sum(w.values())
    return {k: round(v / z, 6) for k, v in w.items()}


class LocalChooser:
    """A local model: next-token probabilities of A-D (logprob mode) or a greedy reply (generate mode)."""

    kind = "local"

    def __init__(self, spec: str | None, *, model: Any = None, tokenizer: Any = None):
        from longalign.llm.client import local_model_spec
        from longalign.llm.local_model import local_model_for
        from longalign.models import model_display_name

        spec = local_model_spec(spec)
        self.lm = local_model_for(spec, model=model, tokenizer=tokenizer)
        self.name = model_display_name(spec)
        self.max_positions = self.lm.max_positions

    def prompt_format(self) -> Any:
        from longalign.eval.ruler_tasks import PromptFormat

        return PromptFormat(self.lm.tokenizer, self.lm.render)

    def letter_logprobs(self, prompt_text: str, prompt_ids: list[int]) -> dict[str, float]:
        """Log-probability of each letter right after the prompt (which ends with the forced prefix)."""
        import inspect

        import torch

        lm = self.lm
        conts: dict[str, list[int]] = {}
        for x in LETTERS:
            full = lm.encode(prompt_text + x)
            conts[x] = full[len(prompt_ids) :] if full[: len(prompt_ids)] == prompt_ids else lm.encode(x)
        if any(len(c) != 1 for c in conts.values()):  # a letter of several tokens: score whole continuations
            return dict(zip(conts, lm.continuation_logprobs(prompt_ids, list(conts.values()))))
        params = inspect.signature(lm.model.forward).parameters
        keep = {name: 1 for name in ("logits_to_keep", "num_logits_to_keep") if name in params}
        with lm.lock, torch.inference_mode():
            out = lm.model(input_ids=torch.tensor([prompt_ids], device=lm.device), **keep)
            logp = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        return {x: float(logp[c[0]]) for x, c in conts.items()}

    def choose(self, prep: Prepared, mode: str, params: Any, fmt: Any) -> dict[str, Any]:
        if mode == "logprob":
            text = fmt.render(prep.user, ANSWER_PREFIX)
            probs = _letter_distribution(self.letter_logprobs(text, prep.ids))
            return {"pred": max(probs, key=probs.get), "probs": probs, "output": None}
        out = self.lm.generate(
            [prep.ids],
            max_new_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=0,
            seed=params.seed,
        )[0]
        return {
            "pred": extract_choice(out.text),
            "probs": None,
            "output": out.text,
            "completion_tokens": len(out.tokens),
        }


class EndpointChooser(TokenizedEndpoint):
    """An OpenAI-compatible endpoint: a reply (generate mode) or the ``top_logprobs`` of the first token after an
    assistant message "The answer is (" the server continues (logprob mode)."""

    def choose(self, prep: Prepared, mode: str, params: Any, fmt: Any) -> dict[str, Any]:
        from dataclasses import replace

        messages = [{"role": "user", "content": prep.user}]
        if mode == "logprob":
            messages.append({"role": "assistant", "content": ANSWER_PREFIX})
            p = replace(params, max_tokens=1, temperature=0.0, top_logprobs=20, continue_final=True)
            res = self.client.chat(messages, p)
            positions = (res.extra or {}).get("logprobs")
            if not positions:
                raise RuntimeError(
                    f"{self.name} returned no logprobs: its server cannot score the choices; use --answer-mode generate"
                )
            mass: dict[str, float] = {}
            for tok, lp in positions[0].get("top") or []:
                letter = str(tok).strip().lstrip("(").upper()
                if letter in LETTERS and str(tok).strip().lstrip("(") == letter:
                    mass[letter] = mass.get(letter, 0.0) + math.exp(float(lp))
            if not mass:
                return {"pred": None, "probs": None, "output": res.text}
            total = sum(mass.values())
            probs = {x: round(mass.get(x, 0.0) / total, 6) for x in LETTERS}
            return {"pred": max(probs, key=probs.get), "probs": probs, "output": res.text}
        res = self.client.chat(messages, params)
        return {
            "pred": extract_choice(res.text),
            "probs": None,
            "output": res.text,
            "completion_tokens": res.completion_tokens,
        }


# --------------------------------------------------------------------------------------------- runner
def _groups(recs: Sequence[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    names = sorted({str(r.get(key)) for r in recs})
    return {n: mean_interval([float(r["correct"]) for r in recs if str(r.get(key)) == n], 100.0) for n in names}


def summarise(recs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (percent, 95% Wilson interval) overall and by difficulty, length group and domain."""
    return {
        "overall": mean_interval([float(r["correct"]) for r in recs], 100.0),
        "by_difficulty": _groups(recs, "difficulty"),
        "by_length": _groups(recs, "length"),
        "by_domain": _groups(recs, "domain"),
        "unanswered": sum(1 for r in recs if r.get("pred") is None),
    }


def run(cfg: LongBenchV2Config, run_dir: str | Path | RunDir, *, chooser: Any = None) -> LongBenchV2Summary:
    """Answer (resuming per item) and score into ``<run>/eval/longbench_v2/``; recorded in run.json as
    ``eval_longbench_v2``. ``chooser`` replaces the model (``name``, ``kind``, ``max_positions``,
    ``prompt_format()``, ``choose(prepared, mode, params, fmt)``)."""
    from tqdm.auto import tqdm

    from longalign.eval.generate import is_endpoint_spec
    from longalign.llm.base import SamplingParams

    if not cfg.data:
        raise ValueError("data is required: your copy of the LongBench v2 data file (JSON list or jsonl)")
    endpoint = is_endpoint_spec(cfg.model) if chooser is None else getattr(chooser, "kind", "") == "endpoint"
    mode = cfg.answer_mode if cfg.answer_mode != "auto" else ("generate" if endpoint else "logprob")
    if endpoint and not cfg.max_len:
        raise ValueError("an endpoint model needs --max-len: the window (tokens) its prompts are truncated to")
    skipped = BadRecords(cfg.on_error)
    items = read_longbench_v2(cfg.data, skipped=skipped, limit=cfg.limit)
    run_ = as_run_dir(run_dir)
    if chooser is None:
        from longalign.eval.ruler import model_positions

        positions = None if endpoint else model_positions(cfg.model)
    else:
        positions = chooser.max_positions
    if cfg.max_len and positions and cfg.max_len > positions:
        from longalign.models import check_length

        check_length(
            cfg.max_len,
            asked=f"--max-len {cfg.max_len}",
            model=chooser.name if chooser is not None else cfg.model,
            positions=positions,
            shorter="leave --max-len at 0 to fit the model (contexts are middle-truncated to its {positions:,} "
            "positions, as LongBench v2 does) or give at most --max-len {positions}",
        )
    window = min(x for x in (cfg.max_len, positions) if x) if (cfg.max_len or positions) else 0
    if not window:
        raise ValueError("the model's window is unknown: give --max-len")
    reserve = 1 if mode == "logprob" else cfg.max_new_tokens
    name = chooser.name if chooser is not None else _model_name(cfg.model)
    setup = hashlib.sha256(
        json.dumps(
            {"model": name, "mode": mode, "window": window, "reserve": reserve, "t": cfg.temperature, "seed": cfg.seed},
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    res_path = run_.longbench_v2_results()
    done = {r["_id"] for r in read_jsonl(res_path) if r.get("setup") == setup}
    pending = [it for it in items if it.uid not in done]
    answered = 0
    if pending:
        if chooser is None:
            chooser = _make_chooser(cfg, run_, endpoint)
        fmt = chooser.prompt_format()
        prefix = ANSWER_PREFIX if mode == "logprob" else ""
        params = SamplingParams(
            max_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed
        )
        for item in tqdm(pending, desc="longbench v2", disable=not cfg.progress):
            start = time.perf_counter()
            prep = prepare(fmt, item, window, reserve, prefix)
            out = chooser.choose(prep, mode, params, fmt)
            rec = {
                "_id": item.uid,
                "index": item.index,
                "domain": item.domain,
                "sub_domain": item.sub_domain,
                "difficulty": item.difficulty,
                "length": item.length,
                "answer": item.answer,
                "pred": out.get("pred"),
                "correct": out.get("pred") == item.answer,
                "probs": out.get("probs"),
                "output": out.get("output"),
                "completion_tokens": out.get("completion_tokens", 0),
                "mode": mode,
                "prompt_tokens": len(prep.ids),
                "context_tokens_raw": prep.context_tokens_raw,
                "context_tokens": prep.context_tokens,
                "truncated": prep.truncated,
                "window": window,
                "model": name,
                "setup": setup,
                "seconds": round(time.perf_counter() - start, 3),
            }
            append_jsonl(res_path, rec)
            answered += 1
    wanted = {it.uid for it in items}
    recs = list({r["_id"]: r for r in read_jsonl(res_path) if r.get("setup") == setup and r["_id"] in wanted}.values())
    notes = [f"the context is middle-truncated to a {window}-token window (prompt + answer)"]
    if mode == "generate":
        notes.append("a reply without a readable choice counts as wrong")
    scores = {
        "model": name,
        "mode": mode,
        "window": window,
        "n": len(recs),
        "truncated": sum(1 for r in recs if r.get("truncated")),
        **summarise(recs),
        "chance": 25.0,
        "notes": notes,
    }
    atomic_write_json(run_.eval_summary(BENCHMARK), scores)
    summary = LongBenchV2Summary(
        BENCHMARK,
        run_.eval(BENCHMARK),
        scores,
        summary_path=run_.eval_summary(BENCHMARK),
        results=res_path,
        answered=answered,
        done_before=len(items) - len(pending),
        skipped=skipped.to_dict(),
    )
    record(run_, "eval_longbench_v2", cfg, summary)
    return summary


def _model_name(spec: str) -> str:
    from longalign.eval.generate import is_endpoint_spec
    from longalign.llm.client import local_model_spec
    from longalign.models import model_display_name

    return spec if is_endpoint_spec(spec) else model_display_name(local_model_spec(spec))


def _make_chooser(cfg: LongBenchV2Config, run: RunDir, endpoint: bool) -> LocalChooser | EndpointChooser:
    if endpoint:
        return EndpointChooser(
            cfg.model,
            tokenizer_spec=cfg.tokenizer or None,
            cache_dir=run.llm_cache,
            calls_log=run.llm_calls,
            **cfg.model_endpoint().client_kwargs(),
        )
    return LocalChooser(cfg.model)
