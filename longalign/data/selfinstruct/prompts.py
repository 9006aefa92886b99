"""Self-Instruct prompts: the wording sent to the generator, in English and Chinese.

Four task types (LongAlign §3.3): general, summary/integration across parts, multi-hop reasoning, information
extraction. The question request puts the document first and the instruction after it, and the answer request
does the same, so both requests over one document share the document as their token prefix (a local backend
reuses that prefix's attention cache). The wording is our own.

Long documents are cut for the generator only (:func:`fit_document`: head and tail around a ``[...]``
marker); the stored training record keeps the whole document.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from longalign.config import check_choice

TASK_TYPES = ("general", "summary", "reasoning", "extraction")
N_QUESTIONS = 5

# ------------------------------------------------------------------------------------------------ prompts

_TASK_EN = {
    "general": "Ask the kind of questions a reader who wants to understand this text would ask: about its "
    "purpose, its main ideas, and how its parts are meant to be used.",
    "summary": "Ask questions whose answers require summarising or combining information from several "
    "different parts of the text, not just one sentence of it.",
    "reasoning": "Ask questions that need several steps of reasoning: a good answer has to connect two or more "
    "facts found in different places of the text and draw a conclusion from them.",
    "extraction": "Ask questions that request specific information stated in the text, such as names, numbers, "
    "definitions, conditions, steps or settings.",
}
_TASK_ZH = {
    "general": "请从一位想要读懂这篇文本的读者的角度提问：关于它的目的、主要内容，以及各部分的用途。",
    "summary": "请提出需要概括或整合文本中多个不同部分的信息才能回答的问题，而不是只靠其中一句话就能回答的问题。",
    "reasoning": "请提出需要多步推理的问题：好的回答必须把文本中不同位置的两个或更多事实联系起来，并由此得出结论。",
    "extraction": "请提出要求找出文本中明确写出的具体信息的问题，例如名称、数字、定义、条件、步骤或设置。",
}
_FORMAT_EN = (
    "Now write five questions about the text above. Each question must be answerable from the text, "
    "make sense on its own, and differ from the others. Put each question on its own line and start "
    "the lines with 1: 2: 3: 4: 5: in order. Write only the five questions."
)
_FORMAT_ZH = (
    "现在请针对上面的文本写出五个问题。每个问题都必须能根据文本回答、单独读也能看懂，并且互不相同。"
    "每个问题单独占一行，行首依次写 1: 2: 3: 4: 5:。只写这五个问题。"
)
_RETRY_EN = "A previous attempt was not usable ({reasons}). Write five new, different, real questions about the text."
_RETRY_ZH = "上一次的结果不可用（{reasons}）。请针对文本重新写出五个互不相同的真实问题。"
_ANSWER_EN = (
    "Answer the question below using the text above. Be accurate and complete, and base the answer on "
    "what the text says.\n\nQuestion: {question}"
)
_ANSWER_ZH = "请根据上面的文本回答下面的问题。回答要准确、完整，并以文本内容为依据。\n\n问题：{question}"
_LEAD_EN = "Read the following text carefully.\n\n"
_LEAD_ZH = "请仔细阅读下面的文本。\n\n"
_CUT_MARKER = "\n\n[...]\n\n"
_SEPARATOR = "\n\n---\n"

_REASON_WORDS_EN = {
    "template": "template slots instead of questions",
    "duplicate": "repeated questions",
    "near_duplicate": "repeated questions",
    "instruction_echo": "the instruction copied back",
    "too_short": "fragments too short to be questions",
    "too_long": "overlong text",
    "not_a_question": "statements instead of questions",
    "too_few": "fewer than five questions",
    "off_topic": "questions about something other than the text",
    "duplicate_across_records": "questions already asked about other texts",
}
_REASON_WORDS_ZH = {
    "template": "输出了模板占位符",
    "duplicate": "问题重复",
    "near_duplicate": "问题重复",
    "instruction_echo": "照抄了指令",
    "too_short": "问题过短",
    "too_long": "内容过长",
    "not_a_question": "写的不是问题",
    "too_few": "问题不足五个",
    "off_topic": "问题与文本无关",
    "duplicate_across_records": "问题与其他文本的问题重复",
}


def is_zh(lang: str | None) -> bool:
    return (lang or "").lower().startswith("zh")


def task_instruction(task_type: str, lang: str | None = "en") -> str:
    """The instruction that follows the document in a question-generation prompt."""
    check_choice("task_type", task_type, TASK_TYPES)
    if is_zh(lang):
        return _TASK_ZH[task_type] + "\n" + _FORMAT_ZH
    return _TASK_EN[task_type] + "\n" + _FORMAT_EN


def question_prompt(
    document: str, task_type: str, lang: str | None = "en", rejected_reasons: Iterable[str] = ()
) -> str:
    """User message asking for five numbered questions about ``document``."""
    lead = _LEAD_ZH if is_zh(lang) else _LEAD_EN
    text = lead + document + _SEPARATOR + task_instruction(task_type, lang)
    reasons = sorted(set(rejected_reasons))
    if reasons:
        words = _REASON_WORDS_ZH if is_zh(lang) else _REASON_WORDS_EN
        named = sorted({words.get(r, r) for r in reasons})
        note = (_RETRY_ZH if is_zh(lang) else _RETRY_EN).format(reasons=("、" if is_zh(lang) else ", ").join(named))
        text += "\n" + note
    return text


def answer_prompt(document: str, question: str, lang: str | None = "en") -> str:
    """User message asking the generator to answer ``question`` from ``document``."""
    lead = _LEAD_ZH if is_zh(lang) else _LEAD_EN
    return lead + document + _SEPARATOR + (_ANSWER_ZH if is_zh(lang) else _ANSWER_EN).format(question=question)


def training_prompt(document: str, question: str) -> str:
    """User turn of the stored training example: the full document, a blank line, the question."""
    return document + "\n\n" + question


# -------------------------------------------------------------------------------------------- document cut


def fit_document(text: str, tokenizer: Any, max_tokens: int) -> tuple[str, bool]:
    """``text`` unchanged when it has at most ``max_tokens`` tokens, else its head and tail (60/40) joined by
    a ``[...]`` marker, within ``max_tokens``. Returns ``(text, was_cut)``."""
    if max_tokens <= 0 or len(text.encode("utf-8")) <= max_tokens:  # a token covers at least one byte
        return text, False
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text, False
    budget = max(2, max_tokens - 8)
    head = int(budget * 0.6)
    tail = budget - head
    return (tokenizer.decode(ids[:head]).rstrip() + _CUT_MARKER + tokenizer.decode(ids[-tail:]).lstrip()), True


def instruction_overhead(tokenizer: Any | None) -> int:
    """Tokens of the longest question prompt around an empty document, plus 32 for the chat template; with no
    tokenizer, an upper bound of it in UTF-8 bytes (a token covers at least one byte)."""
    longest = 0
    for t in TASK_TYPES:
        for lang in ("en", "zh"):
            prompt = question_prompt("", t, lang, ["template", "duplicate", "instruction_echo", "too_few"])
            n = (
                len(prompt.encode("utf-8"))
                if tokenizer is None
                else len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            )
            longest = max(longest, n)
    return longest + 32  # chat-template tokens
