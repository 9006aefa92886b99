"""Sample generators of the synthetic ladder (``longalign eval ruler``), following the task definitions of RULER
(Hsieh et al., arXiv 2404.06654); the templates, word lists and generators are this project's own.

Every sample is one chat prompt of an exact size in the evaluated model's tokens::

    <chat template> HEADER <context> <task question> <end of user turn> <assistant turn> <answer prefix>

A ladder length ``L`` counts the whole window a sample occupies, as RULER counts it: the prompt above
(chat template and answer prefix included) is exactly ``L - max_new_tokens`` tokens and the answer may take the
remaining ``max_new_tokens``, so ``--lengths 8192`` fits a model with 8,192 positions. The context is a token
stream (filler text, real documents, distractor needles, a word list...) cut at the token that makes the
rendered prompt exactly that size (:func:`fit_prompt`: the prompt is rendered with the model's own chat
template and counted with its own tokenizer; the cut is searched, so merges at the joins cannot make it
miss; where whitespace runs make a size unreachable the question moves one newline up, or a free-text context
starts up to three tokens later), with the task's inserts (needles, assignments, passages) placed at sentence,
line or passage boundaries: each at the last one at or before its depth. Depth is the share of the context
stream before an insert, in percent.

Shared prefix. The header comes first and every task's question last, so samples whose context starts with
the same stream (the document haystack of the ``niah_*_docs``-style tasks, the filler of
``niah_single_noise`` and ``vt``, a dense task's distractor needles) share their prompt tokens up to their
first insert, across tasks and lengths: a local model prefills that part once (the runner orders prompts so
each one follows the one it shares most with). Where the context itself is drawn per sample (``cwe``,
``fwe``: the word list is the sample), nothing beyond the header is shared.

Samples are seeded by ``(seed, task, index)``: sample ``i`` of a task has the same keys, values and depths at
every length (the list tasks also draw by length: their list grows with it). Depths of the first insert follow
the base-2 van der Corput sequence shifted by a seeded offset, so the first ``n`` samples of any cell cover
0-100% evenly whatever ``n`` is; further inserts are uniform.

Tasks (RULER's name in brackets):

* ``niah_single_noise`` [S-NIAH-1]: one needle with a 7-digit number in a repeated filler text;
* ``niah_single_docs`` [S-NIAH-2]: the same in real documents (the built-in corpus or ``--haystack``);
* ``niah_single_uuid`` [S-NIAH-3]: real documents, the value is a UUID;
* ``niah_single_words``: real documents, the value is a word;
* ``niah_multikey`` [MK-NIAH-1]: real documents with three distractor needles under other keys;
* ``niah_multikey_dense`` [MK-NIAH-2]: the whole context is distractor needles, one of them asked for;
* ``niah_multikey_uuid`` [MK-NIAH-3]: as dense, with UUID keys and values;
* ``niah_multivalue`` [MV-NIAH]: four needles give four values for one key, all asked for;
* ``niah_multiquery`` [MQ-NIAH]: four needles under four keys, all four asked for;
* ``vt`` [VT]: one chain of five variables (one value, four hops: "Set B to the value of A") in the filler;
  every variable holding the value must be named;
* ``cwe`` [CWE]: a numbered word list in which ten words occur 30 times (fewer when the length cannot hold
  that, see :func:`build_cwe`) and the others 3 times; the ten are asked for;
* ``fwe`` [FWE]: coded words drawn with Zipf frequencies (exponent 2); the three most frequent are asked for;
* ``qa_squad`` / ``qa_hotpot`` [QA-1 / QA-2]: a question's gold paragraph(s) among distractor paragraphs from
  the other questions of a user-supplied SQuAD or HotpotQA file (:func:`read_squad`, :func:`read_hotpot`).

Scoring (:func:`score_output`) is RULER's string match: the share of the expected values that occur in the output
(case-insensitive substrings); for QA, 1 when any reference answer occurs. Word pools avoid words that are
substrings of other pool words or of the templates, so an echoed key or instruction cannot score.
"""

from __future__ import annotations

import json
import math
import random
import string
import uuid
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longalign.rundir import BadRecords

GENERATOR_VERSION = 1  # bump when a template or generator changes, so old results are not mixed with new ones

HEADER = "Read the text below carefully; a question about it follows the text.\n\n"
FILLER = (
    "The afternoon was calm and the road was empty. A few clouds drifted slowly across the sky. "
    "Somewhere far away a dog barked once and then fell silent."
)
SENTENCE_END = (".", "!", "?", "\u3002", "\uff01", "\uff1f")

VALUE_NOUNS = {"numbers": "secret number", "words": "secret word", "uuids": "secret code"}
NEEDLE = " Remember this: a {noun} for {key} is {value}."
Q_ONE = "\n\nWhat is the {noun} for {key} in the text above?"
P_ONE = "The {noun} for {key} is"
Q_VALUES = "\n\nThe text above gives several {noun}s for {key}. What are all of them?"
P_VALUES = "The {noun}s for {key} are:"
Q_QUERIES = "\n\nWhat are the {noun}s for {keys} in the text above?"
P_QUERIES = "The {noun}s for {keys} are:"
VT_FIRST = " Set {var} to {value}."
VT_NEXT = " Set {var} to the value of {prev}."
Q_VT = (
    "\n\nAfter all the assignments in the text above, which variables hold the value {value}? Name every one of them."
)
P_VT = "The variables that hold the value {value} are:"
Q_CWE = (
    "\n\nThe text above is a numbered list of words; some words occur much more often than the others. "
    "Which {k} words occur most often in the list?"
)
P_CWE = "The {k} words that occur most often in the list are:"
Q_FWE = (
    "\n\nThe text above is a sequence of coded words separated by spaces. Which three coded words occur "
    "most often in it?"
)
P_FWE = "The three coded words that occur most often are:"
PASSAGE = "Document: {title}\n{text}\n\n"
Q_QA = "\n\nAnswer the question using the documents above. Question: {question}"
P_QA = "Answer:"

VT_HOPS = 4
CWE_COMMON = 10
CWE_COMMON_FREQ = 30
CWE_UNCOMMON_FREQ = 3
FWE_ALPHA = 2.0
FWE_TOP = 3
NIAH_NUMBER_RANGE = (1_000_000, 9_999_999)
VT_VALUE_RANGE = (10_000, 99_999)

_NOUNS = """
acorn almond anchor apple arrow avocado badge bakery balcony ballot bamboo banana banner barrel basket beacon
beetle bicycle biscuit blanket blossom bottle bracelet bramble bridge bucket buffalo butter cabbage cabin cactus
camera candle canoe canyon carpet carrot castle cathedral cellar cherry chimney cinnamon circus cliff closet
cobra coconut compass cottage crayon cricket crystal cucumber curtain cushion dagger daisy desert diamond dolphin
donkey dragon drawer eagle elbow engine falcon feather ferry fiddle flamingo forest fountain fridge galaxy garden
garlic gazelle ginger giraffe glacier goblet gondola gorilla granite guitar hammer hamster harbor harvest
hazelnut hedgehog helmet highway honey horizon iceberg island jacket jaguar jasmine jungle kayak kettle kitten
koala ladder lagoon lantern lemon library lighthouse lizard lobster locket lotus magnet mammoth mango meadow
meteor mirror monkey mountain muffin mustard napkin nectar notebook nutmeg oasis octopus olive orchard orchid
otter oyster paddle palace pancake panther papaya parrot peach peanut pebble pelican pencil penguin pepper piano
pillow pinecone pirate planet pocket porcupine potato pretzel pumpkin puzzle quarry quartz quilt rabbit radio
raisin raven reindeer rhubarb ribbon rocket saddle saffron sailor salmon sapphire satchel scarf scooter seahorse
sequoia shovel skunk sloth snail sparrow spider spinach spoon squirrel stable starfish statue strawberry subway
suitcase summit sunflower sweater tadpole teapot temple thistle tiger toffee tomato toucan tractor truffle
trumpet tulip tunnel turnip turtle umbrella valley vanilla vase village violin volcano waffle wagon walnut walrus
wardrobe weasel whistle willow wizard yacht yogurt zebra
""".split()
_ADJECTIVES = """
agile amber ancient azure bitter bold brave breezy bright brisk bumpy careful cheerful chilly clever cloudy clumsy
cozy crimson crispy curious daring dusty eager elegant fancy fierce fluffy foggy fragile frosty gentle giant
gloomy golden graceful grumpy happy hasty humble jolly juicy lazy lively lonely lucky mellow merry misty modest
muddy narrow nervous noble noisy patient peaceful playful polite proud purple rapid restless rough royal rusty
sandy scarlet shaggy shiny sleepy smoky smooth sneaky snowy spicy steady stormy sturdy sunny swift tender
thirsty tidy tiny tough tranquil vivid wandering windy witty wooden zealous
""".split()


def _template_text() -> str:
    parts = [HEADER, FILLER, NEEDLE, Q_ONE, P_ONE, Q_VALUES, P_VALUES, Q_QUERIES, P_QUERIES, VT_FIRST, VT_NEXT]
    parts += [Q_VT, P_VT, Q_CWE, P_CWE, Q_FWE, P_FWE, PASSAGE, Q_QA, P_QA, *VALUE_NOUNS.values()]
    return " ".join(parts).lower()


def _clean_pool(words: Sequence[str], others: Sequence[str] = ()) -> tuple[str, ...]:
    """``words`` without repeats, without words inside another word of ``words``/``others`` and without words
    found in the templates (an echoed key or instruction must not count as an expected word)."""
    template = _template_text()
    everything = sorted(set(words) | set(others))
    out = []
    for w in dict.fromkeys(words):
        if w in template or any(w != o and w in o for o in everything):
            continue
        out.append(w)
    return tuple(out)


NOUNS = _clean_pool(_NOUNS, _ADJECTIVES)
ADJECTIVES = _clean_pool(_ADJECTIVES, _NOUNS)
WORDS = NOUNS + ADJECTIVES  # the common-words list of cwe


# --------------------------------------------------------------------------------------------- scoring
def score_output(output: str, expected: Sequence[str], metric: str = "all") -> float:
    """RULER's string match: the share of ``expected`` values found in ``output`` (case-insensitive substrings);
    ``metric="any"`` (QA, where the values are alternative answers) gives 1.0 when any one is found."""
    if not expected:
        raise ValueError("a sample needs at least one expected value")
    out = (output or "").lower()
    hits = [str(e).lower() in out for e in expected]
    if metric == "any":
        return 1.0 if any(hits) else 0.0
    if metric != "all":
        raise ValueError(f"metric={metric!r}: use 'all' or 'any'")
    return sum(hits) / len(hits)


# --------------------------------------------------------------------------------------------- draws
def van_der_corput(i: int, base: int = 2) -> float:
    """The ``i``-th element (``i >= 1``) of the van der Corput sequence: 1/2, 1/4, 3/4, 1/8, 5/8, ..."""
    q, denom = 0.0, 1.0
    while i:
        i, r = divmod(i, base)
        denom *= base
        q += r / denom
    return q


def first_depth(seed: int, task: str, index: int) -> float:
    """Depth (percent) of sample ``index``'s first insert: a seeded shift of the van der Corput sequence."""
    shift = random.Random(f"ruler-depth|{seed}|{task}").random()
    return round(100 * ((van_der_corput(index + 1) + shift) % 1.0), 2)


def coded_word(rng: random.Random, length: int = 5) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(length))


def word_key(rng: random.Random) -> str:
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def uuid_value(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def draw_value(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(*NIAH_NUMBER_RANGE))
    if kind == "words":
        return rng.choice(NOUNS)
    if kind == "uuids":
        return uuid_value(rng)
    raise ValueError(f"value kind {kind!r}: use numbers, words or uuids")


def _distinct(rng: random.Random, draw: Callable[[random.Random], str], n: int, avoid: Sequence[str] = ()) -> list[str]:
    """``n`` draws of which none equals, contains or is contained in another or one of ``avoid``."""
    out: list[str] = []
    for _ in range(100_000):
        if len(out) == n:
            return out
        v = draw(rng)
        if any(v in o or o in v for o in (*out, *avoid)):
            continue
        out.append(v)
    raise RuntimeError(f"could not draw {n} distinct values")


def join_keys(keys: Sequence[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]


# --------------------------------------------------------------------------------------------- prompts
class PromptFormat:
    """How a user text becomes the model's prompt: the chat template of ``tokenizer`` (or ``render``) with the
    generation prompt and the answer prefix, counted with ``tokenizer`` (no special tokens added: the template
    has its own)."""

    def __init__(self, tokenizer: Any, render: Callable[[list[dict[str, str]], str], str] | None = None):
        self.tokenizer = tokenizer
        self._render = render

    def render(self, user: str, prefix: str = "") -> str:
        messages = [{"role": "user", "content": user}]
        if self._render is not None:
            return self._render(messages, prefix)
        from longalign.llm.local_model import render_chat

        return render_chat(self.tokenizer, messages, prefix)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def count(self, user: str, prefix: str = "") -> int:
        return len(self.encode(self.render(user, prefix)))


class TokenStream:
    """Token ids of a context filler, cut at any token; inserts go at its boundaries: the given ``starts``
    (sorted token offsets, e.g. passage starts), or else where a sentence or a line ends (documents with code
    blocks have long stretches without a full stop)."""

    def __init__(self, fmt: PromptFormat, ids: Sequence[int] = (), starts: Sequence[int] | None = None):
        self.fmt = fmt
        self.ids: list[int] = list(ids)
        self.starts: list[int] | None = list(starts) if starts is not None else None
        self._texts: dict[int, str] = {}

    def ensure(self, n: int) -> None:
        """Make at least ``n`` tokens available (a fixed stream raises when it has fewer)."""
        if len(self.ids) < n:
            raise ValueError(f"the context stream has {len(self.ids)} tokens, {n} needed")

    def _text(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self.fmt.decode([token_id])
        return text

    def ends_line(self, pos: int) -> bool:
        """Whether ``pos`` starts a line (the token before ends with a newline, or it is the stream's start)."""
        return pos <= 0 or self._text(self.ids[pos - 1]).endswith("\n")

    def ends_sentence(self, pos: int) -> bool:
        """Whether a sentence ends right before ``pos``: the token before ends with a full stop, question or
        exclamation mark and the next one starts with white space (so "3.14" is not cut)."""
        if pos <= 0 or not self._text(self.ids[pos - 1]).endswith(SENTENCE_END):
            return False
        return pos >= len(self.ids) or self._text(self.ids[pos])[:1].isspace()

    def boundary(self, pos: int) -> int:
        """The last boundary at or before ``pos`` (0 when there is none)."""
        pos = max(0, min(int(pos), len(self.ids)))
        if self.starts is not None:
            k = bisect_right(self.starts, pos) - 1
            return self.starts[k] if k >= 0 else 0
        while pos > 0 and not (self.ends_line(pos) or self.ends_sentence(pos)):
            pos -= 1
        return pos


class CyclingStream(TokenStream):
    """Texts tokenized one at a time as more tokens are needed, starting over after the last one; pieces after
    the first are preceded by ``joiner``."""

    def __init__(self, fmt: PromptFormat, texts: Sequence[str], joiner: str = "\n\n"):
        super().__init__(fmt)
        self.texts = [t.strip() for t in texts if t and t.strip()]
        if not self.texts:
            raise ValueError("the haystack has no text")
        self.joiner = joiner
        self._next = 0

    def ensure(self, n: int) -> None:
        while len(self.ids) < n:
            text = self.texts[self._next % len(self.texts)]
            piece = text if self._next == 0 else self.joiner + text
            self.ids.extend(self.fmt.encode(piece))
            self._next += 1


class NeedleStream(TokenStream):
    """Distractor needles one per line (a dense haystack), drawn from one seeded stream so that every
    sample of the task shares them; inserts go at needle starts. ``keys`` holds each needle's key in order."""

    def __init__(self, fmt: PromptFormat, rng: random.Random, noun: str, key_kind: str, value_kind: str):
        super().__init__(fmt, starts=[])
        self.rng, self.noun, self.key_kind, self.value_kind = rng, noun, key_kind, value_kind
        self.keys: list[str] = []
        self._seen: set[str] = set()

    def ensure(self, n: int) -> None:
        assert self.starts is not None
        while len(self.ids) < n:
            key = word_key(self.rng) if self.key_kind == "words" else uuid_value(self.rng)
            if key in self._seen:
                continue
            self._seen.add(key)
            value = draw_value(self.rng, self.value_kind)
            self.starts.append(len(self.ids))
            self.ids.extend(self.fmt.encode(NEEDLE.format(noun=self.noun, key=key, value=value)[1:] + "\n"))
            self.keys.append(key)

    def keys_within(self, n: int) -> list[str]:
        """Keys of the needles that start in the first ``n`` tokens."""
        self.ensure(n)
        assert self.starts is not None
        return self.keys[: bisect_right(self.starts, n)]


@dataclass
class Insert:
    """Text placed into the stream: ``depth`` is asked for (percent of the context), ``pos`` is the boundary it
    went to and ``actual_depth`` that position as a share of the final context stream."""

    text: str
    depth: float
    ids: list[int] = field(default_factory=list)
    pos: int = 0
    actual_depth: float = 0.0
    line_ids: list[int] = field(default_factory=list)
    at_line_start: bool = False

    @property
    def line_form(self) -> str:
        """The text as its own line, for a boundary at the start of a line: an insert written to follow a
        sentence (" Remember this: ...") loses its leading space and ends with a newline instead."""
        return self.text[1:] + "\n" if self.text.startswith(" ") else self.text

    @property
    def placed(self) -> str:
        return self.line_form if self.at_line_start else self.text


class LengthError(ValueError):
    """A length that cannot hold a task's fixed parts (template, question, inserts, answer budget)."""


@dataclass
class Fitted:
    user: str  # the user turn: HEADER + context + question
    ids: list[int]  # the rendered prompt's token ids (exactly the target)
    stream_tokens: int  # stream tokens kept (inserts excluded)
    inserts: list[Insert]
    skip: int = 0  # stream tokens left out at the start
    question: str = ""  # the question as written (one newline less where that made the size reachable)


def _context_ids(stream: TokenStream, n: int, inserts: Sequence[Insert], skip: int = 0) -> list[int]:
    """Stream tokens ``skip..n`` with the inserts at their positions (as lines where a line starts there)."""
    out: list[int] = []
    prev = skip
    for ins in sorted(inserts, key=lambda x: x.pos):  # stable: inserts at one boundary keep their order
        pos = max(skip, min(ins.pos, n))
        out.extend(stream.ids[prev:pos])
        ins.at_line_start = pos == skip or stream.ends_line(pos)
        out.extend(ins.line_ids if ins.at_line_start else ins.ids)
        prev = pos
    out.extend(stream.ids[prev:n])
    return out


def fit_prompt(
    fmt: PromptFormat,
    target: int,
    stream: TokenStream,
    inserts: Sequence[Insert],
    question: str,
    prefix: str,
    *,
    min_stream: int = 0,
    what: str = "",
) -> Fitted:
    """The prompt of exactly ``target`` tokens: HEADER, stream tokens ``skip..n`` (``skip`` is normally 0) with
    each insert at the last boundary at or before ``skip + int((n - skip) * depth / 100)``, the question, rendered
    with the answer ``prefix``; ``n >= min_stream``. Raises :class:`LengthError` when even ``n = min_stream`` is
    too long, ValueError when no cut gives exactly ``target`` tokens."""
    for ins in inserts:
        if not ins.ids:
            ins.ids = fmt.encode(ins.text)
        if not ins.line_ids:
            ins.line_ids = fmt.encode(ins.line_form) if ins.line_form != ins.text else ins.ids
    state = {"skip": 0}

    def attempt(n: int, tail: str) -> tuple[str, list[int]] | None:
        context = fmt.decode(_context_ids(stream, n, inserts, state["skip"]))
        if context.endswith("\ufffd"):  # the cut split a character: not a usable cut
            return None
        user = HEADER + context + tail
        return user, fmt.encode(fmt.render(user, prefix))

    def place(n: int, skip: int) -> list[int]:
        return [max(skip, min_stream, stream.boundary(skip + int((n - skip) * ins.depth / 100))) for ins in inserts]

    stream.ensure(min_stream)
    for ins in inserts:  # provisional: the size of the fixed parts does not depend on where inserts go
        ins.pos = min_stream
    first = attempt(min_stream, question)
    fixed = len(first[1]) if first else None
    if fixed is None or fixed > target:
        raise LengthError(
            f"{what or 'this task'}: a {target}-token prompt cannot hold its fixed parts "
            f"({fixed if fixed is not None else 'more'} tokens: chat template, question"
            f"{', inserted text' if inserts else ''}{', word list' if min_stream else ''}); use a longer length"
        )
    n = min_stream + (target - fixed)
    stream.ensure(n + 64)
    found = fallback = None
    # a cut adds one token at a time except over whitespace runs (newlines are tokens of their own and merge with
    # the question's), so some sizes are reachable only with the question one newline closer, or with the
    # context starting a token or a few later (free-text streams only: a word list must stay whole)
    for skip in (0, 1, 2, 3) if not min_stream else (0,):
        state["skip"] = skip
        for variant in _question_variants(question):
            guess = n + skip
            for _ in range(4):  # place the inserts for the cut found, until the cut no longer moves them
                for ins, pos in zip(inserts, place(guess, skip)):
                    ins.pos = pos
                hit = _search(attempt, stream, target, guess, max(min_stream, skip), variant)
                if hit is None or place(hit[0], skip) == [ins.pos for ins in inserts]:
                    break
                if fallback is None:  # exact, with the inserts placed for a cut a few tokens off
                    fallback = (hit, skip, variant, [ins.pos for ins in inserts])
                guess = hit[0]
            if hit is not None and place(hit[0], skip) == [ins.pos for ins in inserts]:
                found = (hit, skip, variant)
                break
        if found is not None:
            break
    if found is None and fallback is not None:
        found = fallback[:3]
        for ins, pos in zip(inserts, fallback[3]):
            ins.pos = pos
    if found is None:
        raise ValueError(f"{what}: no cut of the context gives a prompt of exactly {target} tokens")
    (n, (user, ids)), skip, variant = found
    _context_ids(stream, n, inserts, skip)  # the line form of each insert, as in the prompt found
    for ins in inserts:
        ins.actual_depth = round(100 * (ins.pos - skip) / (n - skip), 2) if n > skip else 0.0
    return Fitted(user, ids, n - skip, list(inserts), skip, variant)


def _question_variants(question: str) -> list[str]:
    """The question, then the same with one newline less before it."""
    if not question.startswith("\n\n"):
        return [question]
    return [question, question[1:]]


def _search(
    attempt: Callable[..., tuple[str, list[int]] | None],
    stream: TokenStream,
    target: int,
    n: int,
    min_stream: int,
    question: str,
) -> tuple[int, tuple[str, list[int]]] | None:
    """A stream cut ``n`` whose prompt has exactly ``target`` tokens: Newton steps from the estimate, then the
    neighbours of the last guess."""
    tried: set[int] = set()
    for _ in range(16):
        out = attempt(n, question)
        tried.add(n)
        if out and len(out[1]) == target:
            return n, out
        nxt = n + ((target - len(out[1])) if out else -1)
        if nxt in tried or nxt < min_stream:
            break
        stream.ensure(nxt + 64)
        n = nxt
    for d in sorted(range(-12, 13), key=abs):
        m = n + d
        if m < min_stream or m in tried:
            continue
        stream.ensure(m + 64)
        out = attempt(m, question)
        if out and len(out[1]) == target:
            return m, out
    return None


# --------------------------------------------------------------------------------------------- samples
@dataclass
class RulerSample:
    task: str
    length: int  # the ladder length: prompt tokens + answer budget
    index: int
    user: str  # the user turn
    answer_prefix: str  # forced start of the answer ("" when answer prefixes are off)
    expected: list[str]
    metric: str  # "all" (share of expected values found) or "any" (QA: any reference answer)
    max_new_tokens: int
    prompt_tokens: int  # exact, chat template and answer prefix included
    question: str  # the end of the user turn after the context
    depths: list[float] = field(default_factory=list)  # actual depth of every insert, in context order
    inserts: list[str] = field(default_factory=list)  # the inserted texts, in context order
    info: dict[str, Any] = field(default_factory=dict)
    prompt_ids: list[int] | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return f"{self.task}/{self.length}/{self.index}"


@dataclass(frozen=True)
class Task:
    name: str
    category: str  # retrieval, tracing, aggregation, qa
    description: str
    max_new_tokens: int  # RULER's answer budget for the task
    metric: str
    context: str  # noise, docs, needles, list, coded, passages
    build: Callable[..., RulerSample]
    params: tuple[tuple[str, Any], ...] = ()

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)


class TaskContext:
    """What the generators share: the prompt format, the seed, the haystack documents, the QA files and the
    token streams built so far (each built once per run)."""

    def __init__(
        self,
        fmt: PromptFormat,
        *,
        seed: int = 42,
        haystack: str = "builtin",
        qa_squad: str = "",
        qa_hotpot: str = "",
        answer_prefix: bool = True,
        max_new_tokens: int = 0,
        on_error: str = "raise",
    ):
        self.fmt = fmt
        self.seed = int(seed)
        self.haystack = haystack
        self.qa_files = {"squad": qa_squad, "hotpot": qa_hotpot}
        self.answer_prefix = answer_prefix
        self.max_new_tokens = int(max_new_tokens)
        self.skipped = BadRecords(on_error)
        self._streams: dict[str, TokenStream] = {}
        self._qa: dict[str, QAData] = {}
        self._passage_ids: dict[tuple[str, int], list[int]] = {}

    def rng(self, task: str, *parts: Any) -> random.Random:
        return random.Random("|".join(["ruler", str(self.seed), task, *map(str, parts)]))

    def budget(self, task: Task) -> int:
        return self.max_new_tokens or task.max_new_tokens

    def prefix(self, text: str) -> str:
        return text if self.answer_prefix else ""

    def stream(self, name: str) -> TokenStream:
        """The shared stream ``noise`` or ``docs`` (the ``haystack`` documents)."""
        if name not in self._streams:
            if name == "noise":
                self._streams[name] = CyclingStream(self.fmt, [FILLER], joiner=" ")
            elif name == "docs":
                from longalign.eval.needle import load_haystack_texts

                self._streams[name] = CyclingStream(self.fmt, load_haystack_texts(self.haystack), joiner="\n\n")
            else:
                raise ValueError(f"unknown stream {name!r}")
        return self._streams[name]

    def needle_stream(self, task: Task, noun: str, key_kind: str, value_kind: str) -> NeedleStream:
        name = f"needles:{task.name}"
        if name not in self._streams:
            self._streams[name] = NeedleStream(self.fmt, self.rng(task.name, "haystack"), noun, key_kind, value_kind)
        stream = self._streams[name]
        assert isinstance(stream, NeedleStream)
        return stream

    def qa(self, source: str) -> QAData:
        if source not in self._qa:
            path = self.qa_files.get(source) or ""
            if not path:
                flag = "--qa-squad" if source == "squad" else "--qa-hotpot"
                raise ValueError(
                    f"task qa_{source} needs {flag} FILE: a {'SQuAD' if source == 'squad' else 'HotpotQA'}-layout "
                    "JSON file of your own (none is bundled)"
                )
            reader = read_squad if source == "squad" else read_hotpot
            self._qa[source] = reader(path, skipped=self.skipped)
        return self._qa[source]

    def passage_ids(self, source: str, i: int) -> list[int]:
        key = (source, i)
        if key not in self._passage_ids:
            p = self.qa(source).passages[i]
            self._passage_ids[key] = self.fmt.encode(PASSAGE.format(title=p.title, text=p.text))
        return self._passage_ids[key]

    def build(self, task: str | Task, length: int, index: int) -> RulerSample:
        spec = TASKS[task] if isinstance(task, str) else task
        budget = self.budget(spec)
        if length - budget <= 0:
            raise LengthError(f"{spec.name} at length {length}: the {budget}-token answer budget takes it all")
        return spec.build(self, spec, int(length), int(index))


def _sample(
    ctx: TaskContext,
    task: Task,
    length: int,
    index: int,
    fitted: Fitted,
    prefix: str,
    expected: list[str],
    info: dict[str, Any],
) -> RulerSample:
    ordered = sorted(fitted.inserts, key=lambda x: x.pos)
    return RulerSample(
        task=task.name,
        length=length,
        index=index,
        user=fitted.user,
        answer_prefix=prefix,
        expected=expected,
        metric=task.metric,
        max_new_tokens=ctx.budget(task),
        prompt_tokens=len(fitted.ids),
        question=fitted.question,
        depths=[i.actual_depth for i in ordered],
        inserts=[i.placed for i in ordered],
        info={"stream_tokens": fitted.stream_tokens, "stream_skip": fitted.skip, **info},
        prompt_ids=fitted.ids,
    )


# --------------------------------------------------------------------------------------------- retrieval
def build_niah(ctx: TaskContext, task: Task, length: int, index: int) -> RulerSample:
    """Needles ``NEEDLE`` (key -> value) in the task's haystack: ``keys`` keys of which ``queries`` are asked
    for; the first key has ``values`` values (multi-value), the others one each (distractors)."""
    rng = ctx.rng(task.name, index)
    value_kind = task.param("value", "numbers")
    key_kind = task.param("key", "words")
    n_keys, n_values, n_queries = task.param("keys", 1), task.param("values", 1), task.param("queries", 1)
    noun = VALUE_NOUNS[value_kind]
    target = length - ctx.budget(task)
    if task.context == "needles":
        stream: TokenStream = ctx.needle_stream(task, noun, key_kind, value_kind)
        avoid = stream.keys_within(target)  # type: ignore[attr-defined]
    else:
        stream = ctx.stream(task.context)
        avoid = []
    key_draw = word_key if key_kind == "words" else uuid_value
    keys = _distinct(rng, key_draw, n_keys, avoid)
    values = _distinct(rng, lambda r: draw_value(r, value_kind), n_values + n_keys - 1, keys)
    pairs = [(keys[0], v) for v in values[:n_values]] + list(zip(keys[1:], values[n_values:]))
    depths = [first_depth(ctx.seed, task.name, index)] + [round(rng.uniform(0, 100), 2) for _ in pairs[1:]]
    inserts = [Insert(NEEDLE.format(noun=noun, key=k, value=v), d) for (k, v), d in zip(pairs, depths)]
    asked = keys[:n_queries]
    if n_values > 1:
        question, prefix = Q_VALUES.format(noun=noun, key=asked[0]), P_VALUES.format(noun=noun, key=asked[0])
        expected = values[:n_values]
    elif n_queries > 1:
        joined = join_keys(asked)
        question, prefix = Q_QUERIES.format(noun=noun, keys=joined), P_QUERIES.format(noun=noun, keys=joined)
        expected = [v for k, v in pairs if k in asked]
    else:
        question, prefix = Q_ONE.format(noun=noun, key=asked[0]), P_ONE.format(noun=noun, key=asked[0])
        expected = [values[0]]
    prefix = ctx.prefix(prefix)
    fitted = fit_prompt(ctx.fmt, target, stream, inserts, question, prefix, what=f"{task.name} at length {length}")
    info = {"keys": keys, "queried": asked, "pairs": [list(p) for p in pairs]}
    return _sample(ctx, task, length, index, fitted, prefix, expected, info)


# --------------------------------------------------------------------------------------------- tracing
def build_vt(ctx: TaskContext, task: Task, length: int, index: int) -> RulerSample:
    """One chain ``Set A to V``, ``Set B to the value of A``, ... (``VT_HOPS`` hops) in the filler, in chain order
    at sorted uniform depths; every variable of the chain is expected."""
    rng = ctx.rng(task.name, index)
    value = str(rng.randint(*VT_VALUE_RANGE))
    names = _distinct(rng, lambda r: "".join(r.choice(string.ascii_uppercase) for _ in range(5)), VT_HOPS + 1)
    texts = [VT_FIRST.format(var=names[0], value=value)]
    texts += [VT_NEXT.format(var=names[i], prev=names[i - 1]) for i in range(1, VT_HOPS + 1)]
    depths = sorted(round(rng.uniform(0, 100), 2) for _ in texts)
    inserts = [Insert(t, d) for t, d in zip(texts, depths)]
    prefix = ctx.prefix(P_VT.format(value=value))
    fitted = fit_prompt(
        ctx.fmt,
        length - ctx.budget(task),
        ctx.stream("noise"),
        inserts,
        Q_VT.format(value=value),
        prefix,
        what=f"{task.name} at length {length}",
    )
    return _sample(ctx, task, length, index, fitted, prefix, names, {"value": value, "chain": names})


# --------------------------------------------------------------------------------------------- aggregation
def _largest(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest ``k`` in ``[lo, hi]`` with ``fits(k)`` (``fits`` monotone: true up to some k), else ``lo - 1``."""
    if not fits(lo):
        return lo - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


PAD_TOKENS = 24  # the list tasks leave this much for the token-exact cut of one-off pad words


def _fresh_words(rng: random.Random, n: int, avoid: set[str], length: int) -> list[str]:
    """``n`` coded words of ``length`` letters, none in ``avoid``, none containing a word of ``avoid`` or another."""
    out: list[str] = []
    seen = set(avoid)
    long_avoid = [a for a in avoid if len(a) <= length]
    while len(out) < n:
        w = coded_word(rng, length)
        if w in seen or any(a in w for a in long_avoid):
            continue
        seen.add(w)
        out.append(w)
    return out


def build_cwe(ctx: TaskContext, task: Task, length: int, index: int) -> RulerSample:
    """A numbered word list: ``CWE_COMMON`` common words ``f`` times each and as many uncommon words
    ``CWE_UNCOMMON_FREQ`` times each as the length holds, shuffled; then one-off pad words up to the exact size.
    ``f`` is ``CWE_COMMON_FREQ`` (30), or less when the common words would take more than half the list (at 1k
    tokens: about 6); a length whose list cannot give the common words at least ``CWE_UNCOMMON_FREQ + 2``
    occurrences is refused."""
    rng = ctx.rng(task.name, index, length)
    fmt = ctx.fmt
    k = CWE_COMMON
    question, prefix = Q_CWE.format(k=k), ctx.prefix(P_CWE.format(k=k))
    target = length - ctx.budget(task)
    what = f"{task.name} at length {length}"
    fixed = fmt.count(HEADER + question, prefix)
    room = target - fixed - PAD_TOKENS
    pool = list(WORDS)
    rng.shuffle(pool)
    common, rest = pool[:k], pool[k:]
    per_entry = max(1.0, len(fmt.encode("\n".join(f"{i + 500}. {w}" for i, w in enumerate(rest[:50])))) / 50)
    capacity = int(room / per_entry)
    freq = min(CWE_COMMON_FREQ, capacity // (2 * k))
    if freq < CWE_UNCOMMON_FREQ + 2:
        raise LengthError(f"{what}: the list has room for about {max(0, capacity)} entries; use a longer length")
    n_uncommon_max = max(0, (capacity - freq * k) // CWE_UNCOMMON_FREQ) * 2 + 8
    if n_uncommon_max > len(rest):  # beyond the word pool: coded words as further uncommon words
        rest = rest + _fresh_words(rng, n_uncommon_max - len(rest), set(pool), 7)

    def body(u: int) -> str:
        entries = common * freq + rest[:u] * CWE_UNCOMMON_FREQ
        random.Random(f"ruler-cwe|{ctx.seed}|{index}|{length}|{u}").shuffle(entries)
        return "\n".join(f"{i}. {w}" for i, w in enumerate(entries, 1))

    u = _largest(lambda m: fmt.count(HEADER + body(m) + question, prefix) <= target - PAD_TOKENS, 0, len(rest))
    if u < 0:
        raise LengthError(f"{what}: the common words alone overflow the prompt; use a longer length")
    text = body(u)
    n_entries = freq * k + u * CWE_UNCOMMON_FREQ
    pad_words = _fresh_words(rng, 2 * PAD_TOKENS, set(pool) | set(rest), 7)
    pad = "".join(f"\n{n_entries + j}. {w}" for j, w in enumerate(pad_words, 1))
    body_ids = fmt.encode(text)
    stream = TokenStream(fmt, body_ids + fmt.encode(pad))
    fitted = fit_prompt(fmt, target, stream, [], question, prefix, min_stream=len(body_ids), what=what)
    info = {"common_frequency": freq, "uncommon_frequency": CWE_UNCOMMON_FREQ, "uncommon_words": u}
    return _sample(ctx, task, length, index, fitted, prefix, list(common), info)


def zipf_counts(n_words: int, alpha: float = FWE_ALPHA) -> list[int]:
    """Counts by rank of ``n_words`` words drawn with Zipf frequencies ``k^-alpha``: ``floor(n p_k)`` for the
    ``floor(sqrt(n))`` (at least 4) ranks, at least 1 each."""
    v = max(4, int(math.isqrt(max(1, n_words))))
    weights = [k**-alpha for k in range(1, v + 1)]
    total = math.fsum(weights)
    return [max(1, int(n_words * w / total)) for w in weights]


def build_fwe(ctx: TaskContext, task: Task, length: int, index: int) -> RulerSample:
    """Coded words (five random letters) with Zipf counts (:func:`zipf_counts`) in random order, as many as the
    length holds, then one-off pad words up to the exact size; the ``FWE_TOP`` most frequent are expected."""
    rng = ctx.rng(task.name, index, length)
    fmt = ctx.fmt
    question, prefix = Q_FWE, ctx.prefix(P_FWE)
    target = length - ctx.budget(task)
    what = f"{task.name} at length {length}"
    room = target - fmt.count(HEADER + question, prefix) - PAD_TOKENS
    if room <= 0:
        raise LengthError(f"{what}: no room for the coded text; use a longer length")
    probe = _fresh_words(random.Random(f"ruler-fwe-probe|{ctx.seed}"), 50, set(), 5)
    per_word = max(1.0, len(fmt.encode(" ".join(probe))) / 50)
    n_max = int(room / per_word * 2) + 16
    vocab = _fresh_words(rng, max(4, math.isqrt(n_max)) + 1, set(), 5)

    def words(n: int) -> list[str]:
        counts = zipf_counts(n)
        seq = [w for w, c in zip(vocab, counts) for _ in range(c)]
        random.Random(f"ruler-fwe|{ctx.seed}|{index}|{length}|{n}").shuffle(seq)
        return seq

    n = _largest(lambda m: fmt.count(HEADER + " ".join(words(m)) + question, prefix) <= target - PAD_TOKENS, 8, n_max)
    counts = zipf_counts(max(n, 8))
    if n < 8 or not counts[0] > counts[1] > counts[2] > counts[3]:
        raise LengthError(f"{what}: too few words for distinct top frequencies; use a longer length")
    text = " ".join(words(n))
    pad = " " + " ".join(_fresh_words(rng, 2 * PAD_TOKENS, set(vocab), 5))
    body_ids = fmt.encode(text)
    stream = TokenStream(fmt, body_ids + fmt.encode(pad))
    fitted = fit_prompt(fmt, target, stream, [], question, prefix, min_stream=len(body_ids), what=what)
    info = {"counts": dict(zip(vocab, counts)), "words": sum(counts)}
    return _sample(ctx, task, length, index, fitted, prefix, vocab[:FWE_TOP], info)


# --------------------------------------------------------------------------------------------- QA
@dataclass(frozen=True)
class Passage:
    title: str
    text: str


@dataclass
class QAItem:
    qid: str
    question: str
    answers: list[str]
    gold: list[int]  # indices into QAData.passages


@dataclass
class QAData:
    path: str
    items: list[QAItem]
    passages: list[Passage]


def _passage_index(passages: list[Passage], index: dict[Passage, int], p: Passage) -> int:
    if p not in index:
        index[p] = len(passages)
        passages.append(p)
    return index[p]


def _load_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"QA file {path} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); give the file as released"
        ) from None


def read_squad(path: str | Path, *, skipped: BadRecords | None = None) -> QAData:
    """Questions of a SQuAD-layout file (``{"data": [{"title", "paragraphs": [{"context", "qas": [{"id",
    "question", "answers": [{"text"}]}]}]}]}``; v2's unanswerable questions are left out). A malformed question
    raises naming ``file: data[i].paragraphs[j].qas[k]`` and its id, or is counted in ``skipped`` (skip mode)."""
    bad = skipped if skipped is not None else BadRecords()
    raw = _load_json(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise ValueError(f"{path}: expected the SQuAD layout, an object with a 'data' list of articles")
    passages: list[Passage] = []
    index: dict[Passage, int] = {}
    items: list[QAItem] = []
    for a, art in enumerate(raw["data"]):
        where = f"{path}: data[{a}]"
        if not isinstance(art, dict) or not isinstance(art.get("paragraphs"), list):
            bad.bad(where, "an article needs a 'paragraphs' list", "wrong_shape")
            continue
        title = str(art.get("title") or f"article {a}").replace("_", " ")
        for p, par in enumerate(art["paragraphs"]):
            pwhere = f"{where}.paragraphs[{p}]"
            if (
                not isinstance(par, dict)
                or not isinstance(par.get("context"), str)
                or not isinstance(par.get("qas"), list)
            ):
                bad.bad(pwhere, "a paragraph needs a 'context' string and a 'qas' list", "missing_field")
                continue
            pi = _passage_index(passages, index, Passage(title, par["context"].strip()))
            for q, qa in enumerate(par["qas"]):
                qwhere = f"{pwhere}.qas[{q}]"
                if isinstance(qa, dict) and qa.get("id") is not None:
                    qwhere += f" (id {qa['id']})"
                if not isinstance(qa, dict) or not isinstance(qa.get("question"), str):
                    bad.bad(qwhere, "a question needs a 'question' string", "missing_field")
                    continue
                if qa.get("is_impossible"):
                    continue
                answers = qa.get("answers")
                if not isinstance(answers, list) or not all(isinstance(x, dict) and "text" in x for x in answers):
                    bad.bad(qwhere, "'answers' must be a list of {'text': ...} objects", "missing_field")
                    continue
                texts = list(dict.fromkeys(str(x["text"]).strip() for x in answers if str(x["text"]).strip()))
                if not texts:
                    bad.bad(qwhere, "no answer text", "missing_field")
                    continue
                items.append(QAItem(str(qa.get("id", f"{a}.{p}.{q}")), qa["question"].strip(), texts, [pi]))
    if not items:
        raise ValueError(f"{path}: no answerable questions found")
    return QAData(str(path), items, passages)


YES_NO = frozenset({"yes", "no"})


def read_hotpot(path: str | Path, *, skipped: BadRecords | None = None) -> QAData:
    """Questions of a HotpotQA-layout file (a JSON list of ``{"_id", "question", "answer", "context": [[title,
    [sentences]]], "supporting_facts": [[title, sentence index]]}``). The gold passages are the question's
    paragraphs named by ``supporting_facts`` (all its paragraphs when there are none). Questions answered
    yes/no are left out (a substring match cannot score them). A malformed item raises naming ``file[i]`` and
    its ``_id``, or is counted in ``skipped`` (skip mode)."""
    bad = skipped if skipped is not None else BadRecords()
    raw = _load_json(path)
    if not isinstance(raw, list):
        raise ValueError(f"{path}: expected the HotpotQA layout, a JSON list of questions")
    passages: list[Passage] = []
    index: dict[Passage, int] = {}
    items: list[QAItem] = []
    for i, rec in enumerate(raw):
        where = f"{path}[{i}]"
        if isinstance(rec, dict) and rec.get("_id") is not None:
            where += f" (_id {rec['_id']})"
        if not isinstance(rec, dict):
            bad.bad(where, "expected an object", "wrong_shape")
            continue
        missing = [k for k in ("question", "answer", "context") if k not in rec]
        if missing:
            bad.bad(where, f"missing field(s) {', '.join(missing)}", "missing_field")
            continue
        ctx = rec["context"]
        ok = isinstance(ctx, list) and all(
            isinstance(c, list) and len(c) == 2 and isinstance(c[0], str) and isinstance(c[1], list) for c in ctx
        )
        if not ok:
            bad.bad(where, "'context' must be a list of [title, [sentences]] pairs", "wrong_shape")
            continue
        answer = str(rec["answer"]).strip()
        if not answer or answer.lower() in YES_NO:
            continue
        support = {str(f[0]) for f in rec.get("supporting_facts") or [] if isinstance(f, list) and f}
        own = [Passage(t, "".join(str(s) for s in sents).strip()) for t, sents in ctx]
        gold = [p for p in own if p.title in support] or own
        ids = [_passage_index(passages, index, p) for p in own]
        gold_ids = [ids[own.index(p)] for p in gold]
        items.append(QAItem(str(rec.get("_id", i)), str(rec["question"]).strip(), [answer], gold_ids))
    if not items:
        raise ValueError(f"{path}: no usable questions found (yes/no questions are left out)")
    return QAData(str(path), items, passages)


def build_qa(ctx: TaskContext, task: Task, length: int, index: int) -> RulerSample:
    """Question ``index`` of a seeded order of the file's questions (the same question at every length); its
    gold passages at their depths among distractor passages (the file's other paragraphs, in a seeded order
    shared by every sample, without this question's gold ones); the answers are alternatives (metric "any")."""
    source = task.param("source")
    data = ctx.qa(source)
    order = list(range(len(data.items)))
    random.Random(f"ruler-qa|{ctx.seed}|{task.name}").shuffle(order)
    if index >= len(order):
        raise ValueError(f"{data.path}: {len(order)} usable questions, sample {index} asked for; lower --samples")
    item = data.items[order[index]]
    rng = ctx.rng(task.name, index)
    target = length - ctx.budget(task)
    passage_order = list(range(len(data.passages)))
    random.Random(f"ruler-qa-passages|{ctx.seed}|{task.name}").shuffle(passage_order)
    gold = set(item.gold)
    ids: list[int] = []
    starts: list[int] = []
    for pi in passage_order:
        if pi in gold:
            continue
        starts.append(len(ids))
        ids.extend(ctx.passage_ids(source, pi))
        if len(ids) >= target + 64:
            break
    gold_tokens = sum(len(ctx.passage_ids(source, g)) for g in item.gold)
    if len(ids) + gold_tokens < target:
        raise LengthError(
            f"{task.name} at length {length}: the other paragraphs of {data.path} give {len(ids)} tokens of "
            f"distractors, about {target - gold_tokens} are needed; use a file with more questions or shorter lengths"
        )
    depths = [first_depth(ctx.seed, task.name, index)] + [round(rng.uniform(0, 100), 2) for _ in item.gold[1:]]
    inserts = [
        Insert(
            PASSAGE.format(title=data.passages[g].title, text=data.passages[g].text),
            d,
            list(ctx.passage_ids(source, g)),
        )
        for g, d in zip(item.gold, depths)
    ]
    prefix = ctx.prefix(P_QA)
    stream = TokenStream(ctx.fmt, ids, starts)
    fitted = fit_prompt(
        ctx.fmt,
        target,
        stream,
        inserts,
        Q_QA.format(question=item.question),
        prefix,
        what=f"{task.name} at length {length}",
    )
    info = {"question_id": item.qid, "question": item.question}
    return _sample(ctx, task, length, index, fitted, prefix, list(item.answers), info)


# --------------------------------------------------------------------------------------------- registry
def _task(name: str, category: str, description: str, budget: int, metric: str, context: str, build, **params) -> Task:
    return Task(name, category, description, budget, metric, context, build, tuple(sorted(params.items())))


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        _task(
            "niah_single_noise", "retrieval", "one 7-digit number in a repeated filler", 128, "all", "noise", build_niah
        ),
        _task("niah_single_docs", "retrieval", "one 7-digit number in real documents", 128, "all", "docs", build_niah),
        _task(
            "niah_single_uuid", "retrieval", "one UUID in real documents", 128, "all", "docs", build_niah, value="uuids"
        ),
        _task(
            "niah_single_words",
            "retrieval",
            "one word in real documents",
            128,
            "all",
            "docs",
            build_niah,
            value="words",
        ),
        _task(
            "niah_multikey",
            "retrieval",
            "one of four keys asked for, in real documents",
            128,
            "all",
            "docs",
            build_niah,
            keys=4,
        ),
        _task(
            "niah_multikey_dense",
            "retrieval",
            "one key asked for in a context of distractor needles",
            128,
            "all",
            "needles",
            build_niah,
        ),
        _task(
            "niah_multikey_uuid",
            "retrieval",
            "one UUID key asked for among distractor needles with UUIDs",
            128,
            "all",
            "needles",
            build_niah,
            key="uuids",
            value="uuids",
        ),
        _task(
            "niah_multivalue",
            "retrieval",
            "all four values of one key, in real documents",
            128,
            "all",
            "docs",
            build_niah,
            values=4,
        ),
        _task(
            "niah_multiquery",
            "retrieval",
            "the values of four keys at once, in real documents",
            128,
            "all",
            "docs",
            build_niah,
            keys=4,
            queries=4,
        ),
        _task("vt", "tracing", "every variable of a five-variable assignment chain", 30, "all", "noise", build_vt),
        _task("cwe", "aggregation", "the ten most common words of a word list", 120, "all", "list", build_cwe),
        _task(
            "fwe",
            "aggregation",
            "the three most frequent coded words of a Zipf-distributed text",
            50,
            "all",
            "coded",
            build_fwe,
        ),
        _task(
            "qa_squad",
            "qa",
            "a SQuAD question among distractor paragraphs (needs --qa-squad)",
            32,
            "any",
            "passages",
            build_qa,
            source="squad",
        ),
        _task(
            "qa_hotpot",
            "qa",
            "a HotpotQA question among distractor paragraphs (needs --qa-hotpot)",
            32,
            "any",
            "passages",
            build_qa,
            source="hotpot",
        ),
    )
}
ALL_TASKS = tuple(TASKS)
SYNTHETIC_TASKS = tuple(t for t, spec in TASKS.items() if spec.category != "qa")
