"""Reading a generator's reply: numbered questions out of free text, and the checks a usable question or
answer must pass (template echoes, duplicates, echoes of the instruction, implausible lengths)."""

from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from longalign.data.selfinstruct.prompts import N_QUESTIONS, is_zh

# ------------------------------------------------------------------------------------------------- parser

_CN_NUM = {"一": 1, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9, "十": 10}
_ITEM_RE = re.compile(
    r"""^\s*(?:\#{1,6}\s*)?(?:[-*•]\s+)?            # heading marks or a bullet
        (?:\*\*|__)?\s*                              # bold open
        (?:(?P<prefix>Q|Question|问题|问)\s*)?        # optional 'Q' / 'Question' prefix
        [(（\[]?\s*(?P<num>\d{1,2}|[一二三四五六七八九十])\s*[)）\]]?   # the number, maybe in brackets
        \s*(?:\*\*|__)?\s*                           # bold close before the separator
        (?P<sep>[:：]|\.(?!\d)|．|、|\)|）|\s-\s|(?<=[)）\]])|(?<=\*\*)|(?<=__))   # separator
        \s*(?:\*\*|__)?\s*                           # bold close after the separator
        (?P<text>.*)$""",
    re.IGNORECASE | re.VERBOSE,
)
_PREFIX_ONLY_RE = re.compile(
    r"^\s*(?:\*\*|__)?\s*(?:Q|Question|问题)\s*(?P<num>\d{1,2})\s*(?:\*\*|__)?\s+(?P<text>\S.*)$", re.IGNORECASE
)
_INLINE_RE = re.compile(
    r"(?:^|(?<=\s))(?:\*\*)?(?:Q)?(?P<num>\d)\s*(?:\*\*)?\s*[:：.)）]\s*(?:\*\*)?\s*", re.IGNORECASE
)


@dataclass
class ParsedQuestions:
    """Questions found in a reply, in order, plus what did not fit the requested format."""

    questions: list[str]
    numbers: list[int] = field(default_factory=list)
    prose: list[str] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)


def clean_question(text: str) -> str:
    """Strip markdown emphasis, surrounding quotes, a leading 'Question:' label and extra spaces."""
    t = text.strip()
    for _ in range(3):
        before = t
        t = re.sub(r"^(?:\*\*|__|\*|_)(.*?)(?:\*\*|__|\*|_)$", r"\1", t).strip()
        t = re.sub(r"^(?:question|q|问题)\s*[:：]\s*", "", t, flags=re.IGNORECASE).strip()
        if len(t) >= 2 and t[0] in "\"'“‘「" and t[-1] in "\"'”’」":
            t = t[1:-1].strip()
        if t == before:
            break
    t = t.replace("**", "")
    return re.sub(r"\s+", " ", t).strip()


def _match_item(line: str) -> tuple[int, str] | None:
    m = _ITEM_RE.match(line)
    if m is None:
        m = _PREFIX_ONLY_RE.match(line)
        if m is None:
            return None
    num_txt = m.group("num")
    num = int(num_txt) if num_txt.isdigit() else _CN_NUM[num_txt]
    if not 1 <= num <= 20:
        return None
    return num, m.group("text")


def parse_questions(reply: str, expected: int = N_QUESTIONS) -> ParsedQuestions:
    """Numbered questions from a model reply.

    A numbered line starts a question; an unnumbered line right after it (no blank line between) continues
    it while it has not ended with a question mark; any other text is kept as ``prose``. When lines yield
    fewer than two questions, inline numbering ("1: … 2: …" on one line) is tried. More than ``expected``
    questions keep the first ``expected``; fewer are recorded in ``issues``.
    """
    text = reply or ""
    items, prose = _numbered_lines(text)
    issues: list[str] = []
    if len(items) < 2:
        inline = _inline_items(text)
        if inline is not None:
            items, prose = inline
            issues.append("questions written on one line")
    if not items:  # no numbering at all: lines that end with a question mark still count
        asked = [p for p in prose if clean_question(p.strip("`")).endswith(("?", "？"))]
        if asked:
            items = [[k + 1, p.strip("`")] for k, p in enumerate(asked)]
            prose = [p for p in prose if p not in asked]
            issues.append("questions without numbers")
    questions, numbers = _kept_questions(items, expected, issues)
    if prose:
        issues.append(f"{len(prose)} line(s) of extra text")
    return ParsedQuestions(questions=questions, numbers=numbers, prose=prose, issues=issues)


def _numbered_lines(reply: str) -> tuple[list[list[Any]], list[str]]:
    """``[number, text]`` of each numbered line (continued by the unnumbered lines right after it until it ends
    with a question mark), and the other lines as prose."""
    items: list[list[Any]] = []
    prose: list[str] = []
    last_blank = True
    for raw in reply.splitlines():
        line = raw.strip()
        if not line:
            last_blank = True
            continue
        hit = _match_item(line)
        if hit is not None:  # "1:" alone on a line: the question follows on the next line
            items.append([hit[0], hit[1] if hit[1].strip() else ""])
        elif items and not last_blank and not items[-1][1].rstrip().endswith(("?", "？")):
            items[-1][1] = (items[-1][1] + " " + line).strip()
        else:
            prose.append(line)
        last_blank = False
    return items, prose


def _inline_items(reply: str) -> tuple[list[list[Any]], list[str]] | None:
    """Questions numbered 1, 2, ... within running text, and the text before the first as prose; None when
    fewer than two are found."""
    seq = []
    want = 1
    for m in _INLINE_RE.finditer(reply):
        if int(m.group("num")) == want:
            seq.append(m)
            want += 1
    if len(seq) < 2:
        return None
    ends = [m.start() for m in seq[1:]] + [len(reply)]
    items = [[int(m.group("num")), reply[m.end() : end]] for m, end in zip(seq, ends)]
    return items, [p for p in (reply[: seq[0].start()].strip(),) if p]


def _kept_questions(items: list[list[Any]], expected: int, issues: list[str]) -> tuple[list[str], list[int]]:
    """The cleaned, non-empty questions (at most ``expected``) and their numbers; what is wrong with them is
    added to ``issues``."""
    questions = [clean_question(t) for _, t in items]
    kept = [(n, q) for (n, _), q in zip(items, questions) if q]
    if len(kept) < len(questions):
        issues.append(f"{len(questions) - len(kept)} empty numbered item(s)")
    numbers = [n for n, _ in kept]
    questions = [q for _, q in kept]
    if numbers and numbers != list(range(1, len(numbers) + 1)):
        issues.append(f"numbering {numbers} is not 1..{len(numbers)}")
    if len(questions) > expected:
        issues.append(f"{len(questions)} questions, kept the first {expected}")
        questions, numbers = questions[:expected], numbers[:expected]
    if len(questions) < expected:
        issues.append(f"fewer than {expected} questions ({len(questions)})")
    return questions, numbers


# --------------------------------------------------------------------------------------------- validation

_TEMPLATE_RE = re.compile(
    r"<\s*/?\s*(?:question|q|text|your[ _]question|问题)[^<>]{0,20}>|\{\s*question\s*\}|\[\s*question\s*\]"
    r"|^\W*(?:your\s+)?(?:question|q|问题)\s*\d*\W*$|^\W*(?:\.\.\.|…|etc\.?)\W*$",
    re.IGNORECASE,
)
_ECHO_PHRASES = (
    "five questions",
    "5 questions",
    "numbered questions",
    "one per line",
    "五个问题",
    "编号的问题",
    "output only",
    "question 1",
    "每行一个",
)
_EN_STARTS = frozenset(
    """what why how when where which who whom whose is are was were do does did can could should
would will may might must has have had explain describe list summarize summarise compare identify name give
according in based outline discuss find state define provide tell considering if under for from by on after
before during suppose assuming""".split()
)
_ZH_MARKERS = (
    "？",
    "?",
    "什么",
    "为什么",
    "为何",
    "如何",
    "怎样",
    "怎么",
    "哪",
    "谁",
    "是否",
    "多少",
    "几",
    "吗",
    "呢",
    "请",
    "说明",
    "解释",
    "描述",
    "列出",
    "概括",
    "总结",
    "比较",
)


def _normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if ch.isalnum() or ("\u4e00" <= ch <= "\u9fff"))


def _similar(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


@dataclass
class ValidationLimits:
    min_chars: int = 12
    min_words: int = 3
    min_chars_zh: int = 6
    max_chars: int = 400
    near_duplicate: float = 0.9
    echo_similarity: float = 0.75
    require_question_form: bool = True


def question_problem(
    question: str, *, lang: str | None, instruction: str, accepted: list[str], limits: ValidationLimits | None = None
) -> str | None:
    """Why ``question`` is unusable (a reason code), or None when it is fine."""
    lim = limits or ValidationLimits()
    q = question.strip()
    if _TEMPLATE_RE.search(q):
        return "template"
    zh = is_zh(lang) or sum("\u4e00" <= ch <= "\u9fff" for ch in q) > len(q) / 4
    length = _length_problem(q, zh, lim)
    if length:
        return length
    norm = _normalize(q)
    if not norm:
        return "template"
    return (
        _echo_problem(q, norm, instruction, lim)
        or _duplicate_problem(norm, accepted, lim)
        or (_form_problem(q, zh) if lim.require_question_form else None)
    )


def _length_problem(q: str, zh: bool, lim: ValidationLimits) -> str | None:
    if zh:
        if len(re.sub(r"\s", "", q)) < lim.min_chars_zh:
            return "too_short"
    elif len(q) < lim.min_chars or len(q.split()) < lim.min_words:
        return "too_short"
    if len(q) > lim.max_chars:
        return "too_long"
    return None


def _echo_problem(q: str, norm: str, instruction: str, lim: ValidationLimits) -> str | None:
    """``instruction_echo`` when the question repeats the instruction: a phrase of it, the whole question inside
    it, or a sentence of it nearly word for word."""
    low = q.lower()
    if any(p in low for p in _ECHO_PHRASES):
        return "instruction_echo"
    if len(norm) >= 8 and norm in _normalize(instruction):
        return "instruction_echo"
    for sentence in re.split(r"(?<=[.!?。！？:：])\s*", instruction):
        ns = _normalize(sentence)
        if len(ns) >= 8 and _similar(norm, ns) >= lim.echo_similarity:
            return "instruction_echo"
    return None


def _duplicate_problem(norm: str, accepted: list[str], lim: ValidationLimits) -> str | None:
    for prev in accepted:
        pn = _normalize(prev)
        if pn == norm:
            return "duplicate"
        if _similar(pn, norm) >= lim.near_duplicate:
            return "near_duplicate"
    return None


def _form_problem(q: str, zh: bool) -> str | None:
    """``not_a_question``: no question word or mark (Chinese), or neither a question mark nor a question or
    instruction word first (English)."""
    if zh:
        return None if any(m in q for m in _ZH_MARKERS) else "not_a_question"
    words = q.lower().split()
    first = re.sub(r"[^a-z']", "", words[0]) if words else ""
    if not q.rstrip().endswith("?") and first not in _EN_STARTS:
        return "not_a_question"
    return None


def validate_questions(
    questions: list[str], *, lang: str | None, instruction: str, limits: ValidationLimits | None = None
) -> tuple[list[str], list[dict[str, str]]]:
    """Split ``questions`` into accepted ones (in order) and rejected ``{"text", "reason"}`` entries."""
    accepted: list[str] = []
    rejected: list[dict[str, str]] = []
    for q in questions:
        reason = question_problem(q, lang=lang, instruction=instruction, accepted=accepted, limits=limits)
        if reason is None:
            accepted.append(q)
        else:
            rejected.append({"text": q, "reason": reason})
    return accepted, rejected


def answer_problem(answer: str, question: str, *, min_chars: int = 2) -> str | None:
    """Why an answer is unusable ('empty', 'too_short', 'echo', 'template'), or None."""
    a = answer.strip()
    if not a:
        return "empty"
    if len(a) < min_chars:
        return "too_short"
    if re.fullmatch(r"\W*<\s*/?\s*answer[^<>]*>\W*", a, re.IGNORECASE):
        return "template"
    if _normalize(a) == _normalize(question):
        return "echo"
    return None
