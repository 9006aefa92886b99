"""Relevance gate for generated questions and answers: cheap, model-free checks that a record is about its document.

Format validation (:mod:`.parse`) cannot see that a well-formed question is about something else. The embedded
135M generator, given CPython's ``compileall.py``, has asked "How to check if a list is empty in Python?" and
answered it with a paragraph about ``while`` loops. Three checks catch that kind of record:

* **off_topic** (questions): the share of the question's distinctive terms that occur in its document is
  below ``min_question_overlap``. Content terms are lower-cased words of three or more letters without stop
  words and without words that fit any document ("text", "purpose", "mentioned", ...), split at ``_`` and
  cut to a crude stem (plural and verb endings off, at most six letters), so "compiling" meets "compile"; for
  Chinese, pairs of adjacent CJK characters. Distinctive terms are content terms without the 200 found in at
  least a fifth of the built-in texts of this machine (``resources/common_terms.txt``: "python", "check",
  "list", "file", "return", ...): sharing those shows nothing. A question whose content terms are all common
  ("How to add two numbers in Python?") scores 0; one with no content term at all ("What is the main idea of
  the text?") is about the text as a whole and passes.
* **ungrounded** (answers): the share of the answer's distinctive terms found in the document or the question
  is below ``min_answer_overlap`` (an answer without distinctive terms passes).
* **duplicate_across_records** (questions): the question nearly repeats (similarity of the normalised texts at
  least ``near_duplicate``) the question of a record already written, so the data set does not teach one
  question many times.

How the defaults were chosen: the embedded SmolLM2-135M generated questions and answers, at the job's
temperature 0.7 and the demo's limits (2,048-token prompt, 160 new tokens; 120/96 for the 3 documents of a
quick demo run), for 14 built-in documents (11 of a random draw of 6-30 kB English stdlib files with
``compileall.py`` first, and the demo's 3); 10 gave records,
47 questions and 10 answers in all, each read by hand against its document. Questions about the document
(encoding tables, ``install_egg_info``, SQL statements of ``sqlite3/dump.py``) scored 0.67-1.0; the off-topic
ones (list, prime-number and "this tool" questions; the quoted ``compileall.py`` one) 0-0.33. ``0.4`` splits
the two; it still accepts "How to remove duplicates from a list?" on ``compileall.py`` (its one distinctive
word, "duplicates", is in the file: one-word questions score 0 or 1) and rejects three vague but related
"How to get the file names?" questions on ``importlib/resources/simple.py``. Answers scored 0.40-1.0 when they
used the document (two of them about nonsense questions, which the question check rejects) and 0-0.18 when they
talked about something else (the ``while``-loop answer, ``range()`` on an encoding table, Base64 "encryption"
for ``secrets.py``); ``0.35`` splits those. This is one small model on one corpus: another generator or
another domain may want other values (``--min-question-overlap``, ``--min-answer-overlap``; 0 or
``--relevance-gate false`` switches a check off).
"""

from __future__ import annotations

import difflib
import functools
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MIN_QUESTION_OVERLAP = 0.4
DEFAULT_MIN_ANSWER_OVERLAP = 0.35
DEFAULT_NEAR_DUPLICATE = 0.9

QUESTION_REASONS = ("off_topic", "duplicate_across_records")
ANSWER_REASONS = ("ungrounded",)

_STOP_EN = frozenset(
    """
a about above after again against all also an and any are aren as at be because been before being below
between both but by can cannot could did didn do does doesn doing don down during each either else etc ever
every few for from further had has have having he her here hers him his how however i if in into is isn it its
itself just let like may me might more most much must my no nor not now of off often on once one only or other
our ours out over own per rather same shall she should so some such than that the their theirs them then there
these they this those though through thus to too under until up upon us very via was wasn we were weren what
when where whether which while who whom whose why will with within without would yes yet you your yours
""".split()
)
# words a question about any document may use: they say nothing about which document it is about
_GENERIC_EN = frozenset(
    """
according answer answered ask asked author based briefly can chapter content contents context define
defined definition describe described description detail details discuss discussed document documents
example examples explain explained explanation find give given here idea ideas important information key kind
list listed main mean meaning meant mention mentioned name named overall part parts passage point points
provide provided purpose question questions read reader role section sections specific state stated summarise
summarize summary tell text texts thing things topic type types understand use used uses using way ways work
works write written
""".split()
)
_GENERIC_ZH = frozenset(
    """
什么 为什 么是 如何 怎样 怎么 哪些 哪个 是否 多少 文本 文章 本文 这篇 篇文 问题
主要 内容 根据 作者 描述 说明 提到 可以 一个 这个 那个 哪里 为何 的是 是什 请问
介绍 解释 总结 概括 列出 以及 其中 之间 有哪 哪几 些方 方面
""".split()
)
_WORD_RE = re.compile(r"[a-z0-9]+")
_CJK_RUN_RE = re.compile(r"[\u4e00-\u9fff]+")
_SUFFIXES = ("ations", "ation", "ings", "ing", "ies", "ied", "es", "ed", "ly", "s")


def _stem(word: str) -> str:
    """A crude stem: one ending off (``directories`` -> ``director``), a final ``e`` or ``y`` off
    (``cache``/``caches``/``caching`` -> ``cach``, ``file``/``files`` -> ``fil``), at most six letters
    (``directory`` and ``directories`` -> ``direct``)."""
    for suf in _SUFFIXES:
        if word.endswith(suf) and len(word) - len(suf) >= 3:
            word = word[: -len(suf)]
            break
    if word.endswith(("e", "y")) and len(word) >= 4:
        word = word[:-1]
    return word[:6]


def content_terms(text: str, *, generic: bool = False) -> set[str]:
    """Content terms of ``text``: stems of English words (3+ letters, no stop words and, unless ``generic``, no
    words that fit any document) and pairs of adjacent CJK characters (without the generic ones)."""
    norm = unicodedata.normalize("NFKC", text or "").lower()
    terms: set[str] = set()
    for w in _WORD_RE.findall(norm.replace("_", " ")):
        if len(w) < 3 or w.isdigit() or w in _STOP_EN or (not generic and w in _GENERIC_EN):
            continue
        terms.add(_stem(w))
    for run in _CJK_RUN_RE.findall(norm):
        for i in range(len(run) - 1):
            pair = run[i : i + 2]
            if generic or pair not in _GENERIC_ZH:
                terms.add(pair)
    return terms


COMMON_TERMS_FILE = Path(__file__).resolve().parents[2] / "resources" / "common_terms.txt"


@functools.cache
def common_terms() -> frozenset[str]:
    """Terms found in at least a fifth of the built-in texts (``resources/common_terms.txt``, written by
    ``scripts/common_terms.py``): shared with a document, they show nothing, so overlaps leave them out."""
    if not COMMON_TERMS_FILE.exists():
        return frozenset()
    lines = COMMON_TERMS_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(t.strip() for t in lines if t.strip() and not t.startswith("#"))


def distinctive_terms(text: str) -> set[str]:
    """:func:`content_terms` without the :func:`common_terms`: what can tell one document from another."""
    return content_terms(text) - common_terms()


def document_terms(text: str) -> set[str]:
    """Every term of a document (generic words included: a question may not count them, a document may have them)."""
    return content_terms(text, generic=True)


def overlap(terms: set[str], reference: set[str]) -> float | None:
    """Share of ``terms`` found in ``reference``; None when ``terms`` is empty (nothing to judge)."""
    if not terms:
        return None
    return sum(t in reference for t in terms) / len(terms)


def question_overlap(question: str, doc_terms: set[str]) -> float | None:
    """Share of the question's distinctive terms that occur in the document: 0 for a question whose content
    terms are all common ones ("How to add two numbers in Python?" names nothing of any one document), None
    for one without content terms ("What is the main idea of the text?": it is about the text as a whole)."""
    terms = content_terms(question)
    if not terms:
        return None
    return overlap(terms - common_terms(), doc_terms) or 0.0


def answer_overlap(answer: str, question: str, doc_terms: set[str]) -> float | None:
    """Share of the answer's content terms found in the document or the question (None: it has none)."""
    return overlap(distinctive_terms(answer), doc_terms | document_terms(question))


def _normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if ch.isalnum() or ("\u4e00" <= ch <= "\u9fff"))


@dataclass
class RelevanceGate:
    """The three checks with their thresholds; a threshold of 0 switches its check off."""

    min_question_overlap: float = DEFAULT_MIN_QUESTION_OVERLAP
    min_answer_overlap: float = DEFAULT_MIN_ANSWER_OVERLAP
    near_duplicate: float = DEFAULT_NEAR_DUPLICATE

    def __post_init__(self) -> None:
        for name in ("min_question_overlap", "min_answer_overlap", "near_duplicate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name}={value!r}: it must be between 0 and 1 (0 switches the check off)")

    def question_problem(self, question: str, doc_terms: set[str]) -> str | None:
        """``'off_topic'`` when the question shares too few content terms with the document, else None."""
        if self.min_question_overlap <= 0:
            return None
        score = question_overlap(question, doc_terms)
        return "off_topic" if score is not None and score < self.min_question_overlap else None

    def answer_problem(self, answer: str, question: str, doc_terms: set[str]) -> str | None:
        """``'ungrounded'`` when too few of the answer's content terms are in the document or question."""
        if self.min_answer_overlap <= 0:
            return None
        score = answer_overlap(answer, question, doc_terms)
        return "ungrounded" if score is not None and score < self.min_answer_overlap else None

    def duplicate_problem(self, question: str, earlier: Iterable[str]) -> str | None:
        """``'duplicate_across_records'`` when ``question`` nearly repeats one of ``earlier``, else None."""
        if self.near_duplicate <= 0:
            return None
        norm = _normalize(question)
        for prev in earlier:
            pn = _normalize(prev)
            if pn == norm or difflib.SequenceMatcher(None, pn, norm, autojunk=False).ratio() >= self.near_duplicate:
                return "duplicate_across_records"
        return None

    def settings(self) -> dict[str, float]:
        return {
            "min_question_overlap": self.min_question_overlap,
            "min_answer_overlap": self.min_answer_overlap,
            "near_duplicate": self.near_duplicate,
        }


def quality_report(
    records: list[dict[str, Any]], failures: list[dict[str, Any]], *, gate: RelevanceGate | None
) -> dict[str, Any]:
    """Counts of what was generated and rejected, by reason, over ``long.jsonl`` records and the documents of
    ``failed.jsonl`` that still have no record (the latest failure of each): the content of ``data/quality.json``.

    Question rejections are the per-question ones (format checks of :mod:`.parse` and the gate's); rejected
    attempts (too few valid questions in one reply) are counted apart; answer rejections by reason.
    """
    done = {str(r.get("doc_id")) for r in records}
    latest: dict[str, dict[str, Any]] = {}
    for f in failures:
        if str(f.get("doc_id")) not in done:
            latest[str(f.get("doc_id"))] = f
    q_rej: Counter[str] = Counter()
    a_rej: Counter[str] = Counter()
    attempts_rejected = 0
    for item in [*records, *latest.values()]:
        for r in item.get("rejected") or ():
            if r.get("stage") == "answer":
                a_rej[str(r.get("reason"))] += 1
            elif r.get("level") == "question":
                q_rej[str(r.get("reason"))] += 1
            elif r.get("level") == "attempt":
                attempts_rejected += 1
    q_ok = sum(len(r.get("questions") or ()) for r in records)
    a_ok = len(records)
    return {
        "records": len(records),
        "failed_documents": len(latest),
        "gate": gate.settings() if gate is not None else None,
        "questions": {
            "checked": q_ok + sum(q_rej.values()),
            "accepted": q_ok,
            "rejected": dict(sorted(q_rej.items())),
            "attempts_rejected": attempts_rejected,
        },
        "answers": {"checked": a_ok + sum(a_rej.values()), "accepted": a_ok, "rejected": dict(sorted(a_rej.items()))},
    }


def quality_lines(quality: dict[str, Any] | None) -> list[str]:
    """Printed lines for a :func:`quality_report`."""
    if not quality:
        return []
    q, a = quality["questions"], quality["answers"]

    def reasons(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"

    gate = quality.get("gate")
    gate_txt = (
        f"gate: question overlap >= {gate['min_question_overlap']}, answer overlap >= {gate['min_answer_overlap']}"
        if gate
        else "relevance gate off"
    )
    return [
        f"questions: {q['accepted']} of {q['checked']} accepted; rejected: {reasons(q['rejected'])} ({gate_txt})",
        f"answers: {a['accepted']} of {a['checked']} accepted; rejected: {reasons(a['rejected'])}",
    ]
