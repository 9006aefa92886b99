"""LLM judges: ``[[rating]]`` parsing, prompt templates, and two judge kinds behind one interface.

* :class:`EndpointJudge` (``openai:<model>`` + base URL): asks the model through ``longalign.llm`` (request
  cache, retries on HTTP errors, calls log) and parses the number inside the LAST ``[[...]]`` of the reply.
  When nothing parses it asks again, up to ``max_attempts`` (5) in all; a retry changes the seed (and, if
  the judge runs at temperature 0, samples at ``retry_temperature``) so it is a new request and not the
  cached reply again. Every reply is kept.
* Endpoint logprob scoring (``logprobs="fallback"``, the default, or ``"first"``): when a reply has no
  ``[[N]]`` (or, with ``"first"``, before any free-text reply) the judge sends the prompt again with the
  assistant turn prefilled with ``[[`` and ``logprobs``/``top_logprobs`` requested, and reads the rating
  from the distribution of the first generated token, as :class:`LocalJudge` does from the model: every
  top token that is an allowed rating gets its probability; a digit that may start a two-digit rating
  ("1" of "10") is split by the next position's alternatives when the server's greedy path went through
  it; the rest is renormalised over the allowed ratings (:func:`rating_from_logprobs`). vLLM needs
  ``continue_final_message`` for the prefill (sent); llama.cpp's server prefills a final assistant message
  by default. ``prefill="completions"`` instead renders the prompt here with the judge's chat template (the
  tokenizer of ``tokenizer``, default the embedded model's) ending in ``[[`` and sends it to
  ``/v1/completions`` (``logprobs=k``), for servers that do not continue an assistant message
  (llama-cpp-python's). A server that ignores the prefill and starts a new reply still gives a score when
  that reply writes ``[[`` itself or begins with a bare rating (``7]]``); one that sends no logprobs at all
  is asked once and then left to text parsing.
* Giving up: when none of the first ``give_up_after`` cases gets a rating, by text or logprobs, the judge
  raises :class:`JudgeCannotRate` with what to change, instead of paying ``max_attempts`` requests for
  every remaining case; the ratings finished before are yielded (and stored by the caller) first.
* :class:`LocalJudge` (``local:<model spec>``): small local models do not follow the ``[[N]]`` format (the
  embedded 135M model never wrote it in 13 tries), so the reply is forced to start with ``[[`` and the
  rating is read from the model's probabilities: for every allowed rating r the probability of the token
  sequence ``"r]]"`` after the prompt (a product over its tokens, so a two-token "10" is scored properly
  and cannot steal mass from "1"), renormalised over the allowed ratings. The score is the expected value
  (or the argmax, ``local_score="argmax"``); both are stored, together with the share of probability the
  model put on valid ratings at all. It always yields a score, but a 135M judge is a weak one: the
  agreement command measures how weak.

Cost of the local scoring: one forward pass over the prompt (its KV cache kept) plus one short pass per
rating (2-3 tokens each, the cache cropped back in between), about 1.1x a single forward of the prompt.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longalign.config import check_choice, validate
from longalign.eval.generate import truncate_text
from longalign.eval.options import LOCAL_SCORES, JudgeOptions, check_judge_spec
from longalign.llm.base import LLMBudgetExceeded, LLMRequestError, SamplingParams
from longalign.llm.client import local_model_spec, make_client, parse_spec

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]

_BRACKETS = re.compile(r"\[\[(.*?)\]\]", re.S)
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


# --------------------------------------------------------------------------------------------- parsing
def parse_rating(reply: str | None, lo: float = 1, hi: float = 10) -> float | None:
    """The number inside the LAST ``[[...]]`` of ``reply``, or None.

    Full-width brackets and digits (``［［８］］``, common in Chinese replies) are normalised first (NFKC).
    Decimals are accepted (``[[7.5]]``); the first number inside the brackets counts (``[[8/10]]`` -> 8);
    a last bracket without a number (``[[rating]]``) or a number outside ``lo..hi`` gives None, so the caller
    asks again rather than trusting an echo of the instructions.
    """
    if not reply:
        return None
    text = unicodedata.normalize("NFKC", reply)
    found = _BRACKETS.findall(text)
    if not found:
        return None
    m = _NUMBER.search(found[-1])
    if not m:
        return None
    value = float(m.group(0))
    if not (lo <= value <= hi) or math.isnan(value):
        return None
    return value


_RATING_TOKEN = re.compile(r"\s*(\d+)\s*(\]*)\s*")
_CONTINUED = re.compile(r"\s*\d+\s*(\]|$)")  # a fresh reply such as "1. The answer ..." does not match


def _rating_start(tokens: Sequence[str]) -> int | None:
    """Index of the generated token where the rating begins: 0 when the server continued the forced ``[[``
    (the text starts with a digit), else the token after the reply's own first ``[[``; None if neither."""
    text = "".join(tokens)
    if _CONTINUED.match(text):  # "8]]", "10]]", " 7": the forced "[[" was continued
        return next(i for i, t in enumerate(tokens) if t.strip())
    acc = ""
    for i, t in enumerate(tokens):
        acc += t
        if acc.rstrip().endswith("[[") and i + 1 < len(tokens):
            return i + 1
    return None


def rating_from_logprobs(
    positions: Sequence[dict[str, Any]] | None, lo: int = 1, hi: int = 10, *, continued: bool = False
) -> tuple[dict[int, float], float, int] | None:
    """The rating distribution in a reply's per-token log-probabilities, or None when there is none.

    ``positions`` is ``[{"token", "logprob", "top": [[token, logprob], ...]}]`` (what
    :func:`longalign.llm.openai_backend.token_logprobs` reads from the server). ``continued=True`` says the
    reply certainly continues the forced ``[[`` (a completions request), so the first position is read
    whatever the model then wrote; otherwise the start is found by :func:`_rating_start`. Returns the
    normalised probability of each allowed rating seen, the unnormalised mass on them, and the position used."""
    if not positions:
        return None
    tokens = [str(p.get("token", "")) for p in positions]
    start = 0 if continued else _rating_start(tokens)
    if start is None:
        return None
    chosen = tokens[start]
    nxt = (positions[start + 1].get("top") or []) if start + 1 < len(positions) else None
    mass: dict[int, float] = {}
    for tok, lp in positions[start].get("top") or []:
        m = _RATING_TOKEN.fullmatch(str(tok))
        if not m:
            continue
        digits, closed = m.group(1), bool(m.group(2))
        p = math.exp(float(lp))
        longer = [int(digits + str(d)) for d in range(10) if lo <= int(digits + str(d)) <= hi]
        if longer and not closed and nxt is not None and tok == chosen:
            # the greedy path went through this digit: the next position says whether the rating ends here
            p = _split_longer_ratings(digits, p, nxt, lo, hi, mass)
        if lo <= int(digits) <= hi:
            mass[int(digits)] = mass.get(int(digits), 0.0) + p
    total = sum(mass.values())
    if total <= 0:
        return None
    return {r: v / total for r, v in sorted(mass.items())}, total, start


def _split_longer_ratings(
    digits: str, p: float, nxt: Sequence[Sequence[Any]], lo: int, hi: int, mass: dict[int, float]
) -> float:
    """Share the probability ``p`` of a rating token ``digits`` that may start a longer rating ("1" of "10")
    by the next position's alternatives ``nxt``: each digit there continues it (its allowed results are added
    to ``mass``); returns what is left for ``digits`` as a rating on its own."""
    more = 0.0
    for tok2, lp2 in nxt:
        m2 = re.fullmatch(r"(\d+)", str(tok2).strip())
        if m2:
            more += math.exp(float(lp2))
            value = int(digits + m2.group(1))
            if lo <= value <= hi:
                mass[value] = mass.get(value, 0.0) + p * math.exp(float(lp2))
    return p * max(0.0, 1.0 - more)


class JudgeCannotRate(RuntimeError):
    """A judge gave no rating for any of the first cases; raised to stop paying for a judge that cannot rate."""


def judge_stops() -> tuple[type[BaseException], ...]:
    """The exceptions that end judging early at a clean point (the spending cap, a judge that cannot rate):
    the benchmarks catch them, keep what was judged and report why they stopped."""
    return (LLMBudgetExceeded, JudgeCannotRate)


def distribution_extra(dist: dict[int, float], mass: float, score_mode: str) -> tuple[float, dict[str, Any]]:
    """The score of a rating distribution (expected value or argmax) and the fields stored with it."""
    expected = sum(r * p for r, p in dist.items())
    argmax = max(dist, key=lambda r: dist[r])
    score = round(expected, 4) if score_mode == "expected" else float(argmax)
    return score, {
        "distribution": {str(r): round(p, 6) for r, p in dist.items()},
        "expected": round(expected, 4),
        "argmax": argmax,
        "valid_mass": mass,
        "score_mode": score_mode,
    }


# --------------------------------------------------------------------------------------------- templates
_SLOT = re.compile(r"\{\{|\}\}|\{([A-Za-z_0-9]*)\}")


def fill_template(
    template: str, positional: Sequence[Any] = (), named: dict[str, Any] | None = None, *, source: str = "template"
) -> str:
    """Substitute ``{}`` (in order) and ``{name}`` slots in one pass; ``{{``/``}}`` are literal braces.

    Unlike ``str.format`` it never looks at braces inside the substituted values and names the template
    file in its errors (too few values for the ``{}`` slots, unknown ``{name}``).
    """
    named = named or {}
    pos = iter(positional)
    counter = {"n": 0}

    def sub(m: re.Match) -> str:
        tok = m.group(0)
        if tok == "{{":
            return "{"
        if tok == "}}":
            return "}"
        name = m.group(1)
        if name == "":
            counter["n"] += 1
            try:
                return str(next(pos))
            except StopIteration:
                raise ValueError(
                    f"{source}: has more '{{}}' slots than the {len(positional)} values it is "
                    f"filled with; see the slot list in the docs"
                ) from None
        if name.isdigit():
            idx = int(name)
            if idx >= len(positional):
                raise ValueError(f"{source}: slot {{{name}}} but only {len(positional)} values")
            return str(positional[idx])
        if name not in named:
            raise ValueError(f"{source}: unknown slot {{{name}}}; known: " + ", ".join("{" + k + "}" for k in named))
        return str(named[name])

    return _SLOT.sub(sub, template)


def template_slots(template: str) -> tuple[int, set[str]]:
    """Number of positional ``{}`` slots and the set of named slots in ``template``."""
    n, names = 0, set()
    for m in _SLOT.finditer(template):
        if m.group(0) in ("{{", "}}"):
            continue
        if m.group(1) == "":
            n += 1
        else:
            names.add(m.group(1))
    return n, names


def load_template(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"judge template {path} does not exist")
    return path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------- outcomes
@dataclass
class JudgeOutcome:
    """One rating: the final reply and score plus everything spent to get it."""

    reply: str
    score: float | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1
    replies: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reply": self.reply,
            "score": self.score,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "attempts": self.attempts,
            "replies": self.replies,
            **self.extra,
        }


@dataclass
class JudgeRequest:
    messages: Messages
    lo: int = 1
    hi: int = 10
    seed: int = 0


def is_local_judge(spec: str | None) -> bool:
    """True for ``local:<model spec>``; False for ``openai:<model>`` and for no judge (empty)."""
    return bool(spec) and parse_spec(spec, require_prefix=True)[0] == "local"


# --------------------------------------------------------------------------------------------- endpoint judge
def _finished(i: int, out: JudgeOutcome, progress: Callable[[int], None] | None) -> tuple[int, JudgeOutcome]:
    """``(i, out)`` for a rating that is done, counted on ``progress``."""
    if progress:
        progress(1)
    return i, out


class EndpointJudge:
    """A judge behind an OpenAI-compatible endpoint: the free-text reply parsed with :func:`parse_rating`, and
    the rating distribution read from ``top_logprobs`` after a forced ``[[`` where parsing gives nothing
    (see the module docstring)."""

    kind = "endpoint"

    def __init__(
        self,
        client: Any,
        options: JudgeOptions | None = None,
        *,
        tokenizer: Any = None,
        top_p: float = 1.0,
        retry_temperature: float = 0.7,
        prefix: str = "[[",
    ):
        """``options``: the judge's option group, usually the stage config itself (its ``judge_*`` and
        ``local_score`` fields are read); None = the group's defaults. ``tokenizer`` (loaded) replaces
        ``options.judge_tokenizer`` for ``--judge-prefill completions``."""
        self.options = validate(options if options is not None else JudgeOptions())
        self.client = client
        self.name = self.options.judge or getattr(client, "model", "judge")
        self.top_p = top_p
        self.retry_temperature = retry_temperature
        self.prefix = prefix
        # renders the completions prompt (a tokenizer, a model spec, or None = the embedded model's)
        self._tokenizer = tokenizer if tokenizer is not None else (self.options.judge_tokenizer or None)
        self.logprobs_unavailable: str | None = None  # why logprob scoring was switched off, once it was

    def _params(self, seed: int, attempt: int) -> SamplingParams:
        temp = self.options.judge_temperature
        if attempt > 0:
            temp = max(temp, self.retry_temperature)
        return SamplingParams(
            max_tokens=self.options.judge_max_tokens,
            temperature=temp,
            top_p=self.top_p,
            seed=int(seed) + 1000 * attempt,
        )

    @property
    def tokenizer(self) -> Any:
        """The tokenizer whose chat template renders the completions prompt (the embedded model's by default)."""
        if self._tokenizer is None or isinstance(self._tokenizer, str):
            from longalign.models import load_tokenizer

            self._tokenizer = load_tokenizer(self._tokenizer or None)
        return self._tokenizer

    def logprob_request(self, req: JudgeRequest) -> tuple[Messages, SamplingParams]:
        """The prompt with the assistant turn prefilled with ``[[``, asking for the top log-probabilities: an
        assistant message to continue (``prefill="chat"``), or the prompt rendered here with the judge's chat
        template and sent to the completions API (``prefill="completions"``)."""
        from longalign.llm.local_model import render_chat

        chat = self.options.judge_prefill == "chat"
        if chat:
            messages = list(req.messages) + [{"role": "assistant", "content": self.prefix}]
        else:
            messages = [{"role": "user", "content": render_chat(self.tokenizer, list(req.messages), self.prefix)}]
        params = SamplingParams(
            max_tokens=8,
            temperature=0.0,
            top_p=1.0,
            seed=int(req.seed),
            top_logprobs=self.options.judge_top_logprobs,
            continue_final=chat,
            raw_prompt=not chat,
        )
        return messages, params

    def _plan(self) -> list[str]:
        """The kinds of request one rating may use, in order ("text" or "logprobs")."""
        text = ["text"] * self.options.judge_max_attempts
        if self.options.judge_logprobs == "first":
            return ["logprobs"] + text
        if self.options.judge_logprobs == "fallback":
            return text[:1] + ["logprobs"] + text[1:]
        return text

    def rate(self, req: JudgeRequest) -> JudgeOutcome:
        return next(iter(self.rate_many([req])))[1]

    def rate_many(
        self, requests: Sequence[JudgeRequest], *, progress: Callable[[int], None] | None = None
    ) -> Iterator[tuple[int, JudgeOutcome]]:
        """Rate every request; each finished rating is yielded as soon as it has a score or has used all its
        attempts. Attempts run in rounds through ``client.chat_many`` (several requests in flight). The first
        ``give_up_after`` requests are rated before the others; if none of them gets a rating,
        :class:`JudgeCannotRate` is raised after yielding them."""
        order = list(range(len(requests)))
        probe = order[: self.options.judge_give_up_after] if self.options.judge_give_up_after else []
        rest = order[len(probe) :]
        if probe:
            finished = []
            for i, out in self._rate(requests, probe, progress):
                finished.append(out)
                yield i, out
            if rest and not any(o.score is not None for o in finished):
                raise JudgeCannotRate(self._cannot_rate(finished))
        if rest:
            yield from self._rate(requests, rest, progress)

    def _cannot_rate(self, outs: Sequence[JudgeOutcome]) -> str:
        n_req = sum(o.attempts for o in outs)
        if self.options.judge_logprobs == "off":
            why = "logprob scoring is off (--judge-logprobs off)"
        elif self.logprobs_unavailable:
            why = f"logprob scoring is unavailable: {self.logprobs_unavailable}"
        else:
            why = (
                f"no allowed rating was among the top {self.options.judge_top_logprobs} tokens after a forced "
                f"'{self.prefix}' (or the server did not continue the prefilled '{self.prefix}')"
            )
        return (
            f"judge {self.name} gave no rating for any of the first {len(outs)} case(s) in {n_req} request(s): "
            f"its replies contain no [[rating]] and {why}. Stopped rather than paying up to "
            f"{len(self._plan())} requests for each remaining case. Use a judge model that writes [[rating]], "
            "serve the judge where chat completions return logprobs and continue a prefilled assistant turn "
            "(vLLM, llama.cpp's llama-server) with --judge-logprobs fallback or first, use --judge-prefill "
            "completions (with --judge-tokenizer naming the judge's model) for a server that starts a new turn "
            "instead (llama-cpp-python's), or pass --judge-give-up-after 0 to judge every case anyway"
        )

    def _rate(
        self, requests: Sequence[JudgeRequest], idxs: Sequence[int], progress: Callable[[int], None] | None
    ) -> Iterator[tuple[int, JudgeOutcome]]:
        """Rate ``requests[i]`` for ``i`` in ``idxs``: rounds of one request per unfinished rating, each the next
        step of the plan (:meth:`_plan`); a rating is yielded once it has a score or no step is left."""
        plan = self._plan()
        outcomes = {i: JudgeOutcome(reply="", score=None, attempts=0) for i in idxs}
        step = dict.fromkeys(idxs, 0)  # position in the plan
        text_tries = dict.fromkeys(idxs, 0)
        pending = list(idxs)
        while pending:
            for i in [i for i in pending if not self._steps_left(plan, step, i)]:
                pending.remove(i)  # its last planned request was a logprob one, switched off meanwhile
                yield _finished(i, outcomes[i], progress)
            if not pending:
                break
            kinds = {i: plan[step[i]] for i in pending}
            batch = [self._request(requests[i], kinds[i], text_tries[i]) for i in pending]
            still = []
            for j, res in self.client.chat_many(batch):
                i = pending[j]
                step[i] += 1
                if kinds[i] == "text":
                    text_tries[i] += 1
                self._feed(outcomes[i], kinds[i], res, requests[i])
                if outcomes[i].score is None and self._steps_left(plan, step, i):
                    still.append(i)
                else:
                    yield _finished(i, outcomes[i], progress)
            pending = sorted(still)

    def _steps_left(self, plan: list[str], step: dict[int, int], i: int) -> bool:
        """Move rating ``i`` past logprob steps once logprob scoring is off; False when its plan is used up."""
        while step[i] < len(plan) and plan[step[i]] == "logprobs" and self.logprobs_unavailable:
            step[i] += 1
        return step[i] < len(plan)

    def _request(self, req: JudgeRequest, kind: str, text_try: int) -> tuple[Messages, SamplingParams]:
        """The request of one plan step: a logprob request, or free text (attempt ``text_try`` of it)."""
        if kind == "logprobs":
            return self.logprob_request(req)
        return req.messages, self._params(req.seed, text_try)

    def _feed(self, out: JudgeOutcome, kind: str, res: Any, req: JudgeRequest) -> None:
        """Add one answer (or the error of a failed request) of a ``kind`` step to its rating."""
        out.attempts += 1
        if isinstance(res, Exception):
            log.warning("judge %s request failed: %s", kind, res)
            out.replies.append(f"<error: {res}>")
            out.extra.setdefault("errors", []).append(str(res))
            if kind == "logprobs" and isinstance(res, LLMRequestError) and not self.logprobs_unavailable:
                self.logprobs_unavailable = f"the endpoint refused the request ({res})"
                log.warning("logprob scoring switched off: %s", self.logprobs_unavailable)
            return
        out.prompt_tokens += int(res.prompt_tokens or 0)
        out.completion_tokens += int(res.completion_tokens or 0)
        if kind == "logprobs":
            self._feed_logprobs(out, res, req)
            return
        out.reply = res.text
        out.replies.append(res.text)
        out.score = parse_rating(res.text, req.lo, req.hi)
        if out.score is not None:
            out.extra["scored_by"] = "text"

    def _feed_logprobs(self, out: JudgeOutcome, res: Any, req: JudgeRequest) -> None:
        positions = (res.extra or {}).get("logprobs")
        text = self.prefix + res.text
        out.replies.append(text)
        if positions is None:
            if not self.logprobs_unavailable:
                self.logprobs_unavailable = "the endpoint returned no logprobs"
                log.warning("logprob scoring switched off: %s", self.logprobs_unavailable)
            return
        found = rating_from_logprobs(positions, req.lo, req.hi, continued=self.options.judge_prefill == "completions")
        if found is None:
            out.extra.setdefault("logprob_misses", []).append(text[:200])
            return
        dist, mass, _ = found
        out.score, extra = distribution_extra(dist, mass, self.options.local_score)
        out.reply = text
        out.extra.update(extra, scored_by="logprobs")


# --------------------------------------------------------------------------------------------- local judge
class LocalJudge:
    """Scores from next-token probabilities after a forced ``[[`` (see module docstring)."""

    kind = "local"

    def __init__(
        self,
        model_spec: str | None = None,
        *,
        score_mode: str = "expected",
        prefix: str = "[[",
        suffix: str = "]]",
        max_length: int | None = None,
        device: str | None = None,
        model: Any = None,
        tokenizer: Any = None,
    ):
        from longalign.llm.local_model import local_model_for
        from longalign.models import model_display_name

        check_choice("local_score", score_mode, LOCAL_SCORES)
        spec = local_model_spec(model_spec)
        if spec is None:
            raise ValueError(
                f"judge={model_spec!r} is an endpoint, not a local model; use make_judge, which builds "
                "an EndpointJudge for openai:<model>"
            )
        self.spec = spec
        self.name = "local:" + model_display_name(spec)
        self.score_mode = score_mode
        self.prefix = prefix
        self.suffix = suffix
        self.lm = local_model_for(spec, device=device, model=model, tokenizer=tokenizer)
        self.model = self.lm.model
        self.tokenizer = self.lm.tokenizer
        self.device = self.lm.device
        limit = self.lm.max_positions or 8192
        self.max_length = min(max_length or limit, limit) - 8

    def prompt_ids(self, messages: Messages) -> tuple[str, list[int], bool]:
        """The templated prompt ending in the forced prefix; the user turn is middle-truncated to fit."""
        text = self.lm.render(messages, self.prefix)
        ids = self.lm.encode(text)
        if len(ids) <= self.max_length:
            return text, ids, False
        over = len(ids) - self.max_length
        msgs = [dict(m) for m in messages]
        user = msgs[-1]
        n_user = len(self.lm.encode(user["content"]))
        user["content"] = truncate_text(self.tokenizer, user["content"], max(16, n_user - over - 4)).text
        text = self.lm.render(msgs, self.prefix)
        return text, self.lm.encode(text), True

    def rating_distribution(
        self, messages: Messages, ratings: Sequence[int]
    ) -> tuple[dict[int, float], float, int, bool]:
        """Normalised probability of each rating, the unnormalised mass on valid ratings, prompt tokens, and
        whether the prompt was truncated."""
        text, prefix_ids, truncated = self.prompt_ids(messages)
        conts: dict[int, list[int]] = {}
        for r in ratings:
            full = self.lm.encode(text + f"{r}{self.suffix}")
            if full[: len(prefix_ids)] == prefix_ids and len(full) > len(prefix_ids):
                conts[r] = full[len(prefix_ids) :]
            else:  # the rating merged with the prefix's last token: score it on its own
                conts[r] = self.lm.encode(f"{r}{self.suffix}")
        logp = dict(zip(conts, self.lm.continuation_logprobs(prefix_ids, list(conts.values()))))
        top = max(logp.values())
        weights = {r: math.exp(v - top) for r, v in logp.items()}
        z = sum(weights.values())
        mass = sum(math.exp(v) for v in logp.values())
        return {r: w / z for r, w in weights.items()}, mass, len(prefix_ids), truncated

    def rate(self, req: JudgeRequest) -> JudgeOutcome:
        ratings = list(range(int(req.lo), int(req.hi) + 1))
        dist, mass, n_prompt, truncated = self.rating_distribution(req.messages, ratings)
        score, extra = distribution_extra(dist, mass, self.score_mode)
        reply = f"{self.prefix}{extra['argmax']}{self.suffix}"
        extra["prompt_truncated"] = truncated
        return JudgeOutcome(
            reply=reply,
            score=score,
            prompt_tokens=n_prompt,
            completion_tokens=0,
            attempts=1,
            replies=[reply],
            extra=extra,
        )

    def rate_many(
        self, requests: Sequence[JudgeRequest], *, progress: Callable[[int], None] | None = None
    ) -> Iterator[tuple[int, JudgeOutcome]]:
        for i, req in enumerate(requests):
            out = self.rate(req)
            if progress:
                progress(1)
            yield i, out


LOCAL_JUDGE_NOTE = (
    "scores come from a small local judge (next-token probabilities of the rating after a forced "
    "'[['); such a judge agrees only weakly with human ratings - treat the numbers as a smoke "
    "test, and use a GPT-4-class judge (openai:<model>) for figures comparable with the paper"
)


def make_judge(
    options: JudgeOptions,
    *,
    cache_dir: str | Path | None = None,
    calls_log: str | Path | None = None,
    device: str | None = None,
) -> EndpointJudge | LocalJudge:
    """The judge that ``options`` (a stage config with the judge group) names: ``openai:<model>`` ->
    :class:`EndpointJudge` through ``longalign.llm.make_client`` at :meth:`JudgeOptions.judge_endpoint`;
    ``local:<spec>`` -> :class:`LocalJudge`."""
    check_judge_spec(options.judge)
    if is_local_judge(options.judge):
        return LocalJudge(options.judge, score_mode=options.local_score, device=device)
    client = make_client(
        options.judge, cache_dir=cache_dir, calls_log=calls_log, **options.judge_endpoint().client_kwargs()
    )
    return EndpointJudge(client, options)
