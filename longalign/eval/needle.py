"""Needle-in-a-Haystack: hide one sentence in a long filler text and ask the model for it, over a grid of
context lengths x needle depths.

Context construction, per (length L, depth d), in the evaluated model's own tokens:

1. the haystack (files of a folder, or the built-in ``pydoc`` help topics) is tokenized once, without
   special tokens, and repeated until it covers the longest context;
2. the context keeps the first ``L - buffer - len(needle)`` haystack tokens (``buffer`` = 200 leaves room
   for the chat template, the question and the answer, as in the original harness);
3. the target position is ``int(len(context) * d / 100)``; the needle goes in at the last sentence
   boundary at or before it: walking back until the token before the cut ends a sentence (its decoded
   text, trailing spaces removed, ends with ``. ! ?`` or a CJK full stop). Sentence-final tokens are found
   by decoding, never by hard-coded token ids, so any tokenizer works; a depth of 100 appends the needle.

The needle is wrapped in newlines. The records keep its token position, the prompt length and a window of
text around it (``window_tokens`` either side) for the dashboard.

Scoring keeps two numbers per cell: a judge's 1-10 rating with the original harness's rubric (1 unrelated,
3 minor relevance, 5 moderate relevance with inaccuracies, 7 aligned with minor omissions, 10 fully
correct; the judge is optional) and a deterministic key-phrase recall in 0..1 (the share of key phrases,
by default the needle's content words that the question does not already contain, found in the answer).
Recall is stored twice: ``recall`` matches the phrases word for word (case-insensitive); ``recall_norm``
first normalises both sides (Unicode NFKC, case folded, punctuation and possessive 's dropped) and reduces
every word with a light suffix stemmer (plural -s/-es/-ies, -ing, -ed, a final silent e, a doubled final
consonant), so "eating a sandwich and sitting in Dolores Park" counts the needle's "eat" and "sit" (irregular
forms such as "sat" still miss). Recall costs nothing and never varies; the judge sees paraphrases that both
recalls miss. Older results without ``recall_norm`` get it computed from their stored response when read.
Results are appended per cell, so an interrupted grid resumes at the next missing cell. Cost: the paper's
10 x 10 grid at 1k-60k tokens is ~3M prompt tokens; on 2 CPU cores the 135M model answers a 1k-token cell
in a few seconds, which is why tests use 3 x 3 cells of 500-1500 tokens.
"""

from __future__ import annotations

import logging
import re
import statistics
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longalign.config import option, redefault
from longalign.eval.judge import LOCAL_JUDGE_NOTE, JudgeRequest, is_local_judge, make_judge
from longalign.eval.options import JudgeOptions, ModelOptions, SamplingOptions
from longalign.eval.summary import NeedleSummary
from longalign.rundir import RunDir, append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from longalign.stage import as_run_dir, record

log = logging.getLogger(__name__)

PAPER_NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
PAPER_QUESTION = "What is the best thing to do in San Francisco?"
SYSTEM_PROMPT = "You are a helpful assistant. Answer the user's question briefly and directly."
SENTENCE_END = (".", "!", "?", "\u3002", "\uff01", "\uff1f")
STOPWORDS = frozenset(
    """a an the and or but of in on at to for from by with without is are was were be been being it
its this that these those as into onto over under about than then there their they them he she his her we our you
your i me my do does did so such not no yes can could would should will shall may might must very just also""".split()
)

NEEDLE_JUDGE_TEMPLATE = """[Instruction]
You are an impartial judge. Rate how well the AI assistant's response below answers the user's question, \
using the ground truth as the correct answer. Score by this rubric:
Score 1: the response has nothing to do with the ground truth.
Score 3: the response is slightly relevant but does not match the ground truth.
Score 5: the response is fairly relevant but contains inaccuracies.
Score 7: the response matches the ground truth with minor omissions.
Score 10: the response is fully accurate and matches the ground truth.
Reply with the rating only, written exactly as [[rating]], e.g. [[7]].

[Ground truth]
{reference}

[Question]
{question}

[Assistant's response]
{response}
[End of response]"""


@dataclass
class NeedleConfig(ModelOptions, SamplingOptions, JudgeOptions):
    """``longalign eval needle``: needle-in-a-haystack grid."""

    haystack: str = option(
        "builtin", help="'builtin' (pydoc help topics), a folder of .txt/.md/.py files, or a corpus .jsonl"
    )
    needle: str = option(PAPER_NEEDLE, help="the sentence hidden in the haystack")
    question: str = option(PAPER_QUESTION, help="the question whose answer is the needle")
    key_phrases: list[str] = option(
        default_factory=list,
        help="phrases the answer must contain for recall (default: "
        "the needle's content words absent from the question)",
    )
    lengths: list[int] = option(default_factory=list, help="explicit context lengths in tokens (overrides min/max/num)")
    length_min: int = option(1000, minimum=1, help="shortest context (tokens)")
    length_max: int = option(60000, minimum=1, help="longest context (tokens)")
    length_num: int = option(10, minimum=1, help="number of lengths, linearly spaced")
    depths: list[float] = option(default_factory=list, help="explicit needle depths in percent (overrides min/max/num)")
    depth_min: float = option(10, minimum=0, maximum=100, help="smallest depth percent")
    depth_max: float = option(90, minimum=0, maximum=100, help="largest depth percent")
    depth_num: int = option(10, minimum=1, help="number of depths, linearly spaced")
    buffer: int = option(200, minimum=0, help="tokens left free for the template, question and answer")
    window_tokens: int = option(80, minimum=0, help="tokens of haystack kept either side of the needle in results")
    progress: bool = option(True, help="show progress bars")
    past_positions: bool = option(
        False,
        help="run context lengths beyond the model's positions anyway (refused otherwise): the model then reads "
        "positions it was never trained on, so recall there measures how it breaks down, and memory grows with "
        "the length",
    )
    max_new_tokens: int = redefault(64)
    judge_max_tokens: int = redefault(64)

    def __post_init__(self) -> None:
        super().__post_init__()
        grid_of(self)


# --------------------------------------------------------------------------------------------- grid
def linear_grid(lo: float, hi: float, num: int, *, integer: bool = True) -> list:
    """``num`` linearly spaced values from lo to hi inclusive, rounded to integers when ``integer``."""
    if num < 1:
        raise ValueError(f"num={num} must be at least 1")
    if num == 1:
        vals = [float(lo)]
    else:
        vals = [lo + (hi - lo) * i / (num - 1) for i in range(num)]
    return [int(round(v)) for v in vals] if integer else [round(v, 3) for v in vals]


def grid_of(cfg: NeedleConfig) -> tuple[list[int], list[float]]:
    lengths = [int(x) for x in cfg.lengths] or linear_grid(cfg.length_min, cfg.length_max, cfg.length_num)
    depths = [float(x) for x in cfg.depths] or [
        float(x) for x in linear_grid(cfg.depth_min, cfg.depth_max, cfg.depth_num)
    ]
    for d in depths:
        if not 0 <= d <= 100:
            raise ValueError(f"depth {d} is outside 0..100 percent")
    for L in lengths:
        if L <= cfg.buffer:
            raise ValueError(f"context length {L} must exceed the buffer of {cfg.buffer} tokens")
    return lengths, depths


# --------------------------------------------------------------------------------------------- haystack
def load_haystack_texts(spec: str) -> list[str]:
    """Texts of the haystack, in a fixed order (sorted file paths / topic names)."""
    from longalign.data import corpus

    if spec in ("", "builtin"):
        docs = corpus.builtin_documents(["pydoc"])
        if not docs:
            raise FileNotFoundError("this Python has no pydoc_data topics; pass --haystack FOLDER of text files")
    else:
        path = Path(spec)
        if path.is_dir():
            docs = corpus.read_folder_documents(path, (".txt", ".md", ".py", ".rst"))
        elif path.is_file() and path.suffix == ".jsonl":
            docs = corpus.read_jsonl_documents(path)
        else:
            raise FileNotFoundError(
                f"haystack {spec!r} is neither 'builtin', a folder of text files nor a .jsonl file; pass --haystack "
                "builtin, a folder or a corpus .jsonl"
            )
    return [d["text"] for d in docs if d["text"].strip()]


class Haystack:
    """Token ids of the haystack (repeated to ``min_tokens``) and sentence-boundary detection by decoding."""

    def __init__(self, tokenizer: Any, texts: Sequence[str], min_tokens: int):
        self.tokenizer = tokenizer
        ids: list[int] = []
        pieces = [tokenizer.encode(t.strip() + "\n\n", add_special_tokens=False) for t in texts]
        if not any(pieces):
            raise ValueError("the haystack is empty")
        while len(ids) < min_tokens:
            for p in pieces:
                ids.extend(p)
                if len(ids) >= min_tokens:
                    break
        self.ids = ids
        self._ends: dict[int, bool] = {}

    def ends_sentence(self, token_id: int) -> bool:
        hit = self._ends.get(token_id)
        if hit is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=True).rstrip()
            hit = text.endswith(SENTENCE_END)
            self._ends[token_id] = hit
        return hit

    def sentence_start(self, ids: Sequence[int], pos: int) -> int:
        """The last sentence boundary of ``ids`` at or before ``pos`` (0 when there is none)."""
        while pos > 0 and not self.ends_sentence(ids[pos - 1]):
            pos -= 1
        return pos


@dataclass
class NeedleContext:
    context_length: int
    depth_percent: float
    ids: list[int]  # context tokens with the needle inside
    needle_token_pos: int  # index in ids where the needle's tokens start
    needle_len: int
    target_pos: int  # int(len(haystack part) * depth / 100), before moving to a boundary
    text: str = ""


def insert_needle(
    hay: Haystack, needle_ids: Sequence[int], context_length: int, depth_percent: float, buffer: int = 200
) -> NeedleContext:
    """Build the token ids of one cell (see the module docstring for the rule)."""
    budget = context_length - buffer - len(needle_ids)
    if budget <= 0:
        raise ValueError(
            f"context length {context_length} leaves no room for the haystack after the "
            f"{buffer}-token buffer and the {len(needle_ids)}-token needle"
        )
    base = hay.ids[:budget]
    if depth_percent >= 100:
        pos = target = len(base)
    else:
        target = int(len(base) * (depth_percent / 100))
        pos = hay.sentence_start(base, target)
    ids = base[:pos] + list(needle_ids) + base[pos:]
    return NeedleContext(context_length, depth_percent, ids, pos, len(needle_ids), target)


def needle_ids_for(tokenizer: Any, needle: str) -> list[int]:
    return tokenizer.encode("\n" + needle.strip() + "\n", add_special_tokens=False)


def build_user_prompt(context_text: str, question: str) -> str:
    return f"{context_text}\n\nUsing only the document above, answer this question: {question}"


# --------------------------------------------------------------------------------------------- scoring
_WORD = re.compile(r"[\w']+", re.UNICODE)


def _norm_words(text: str) -> list[str]:
    return [w.lower().strip("'") for w in _WORD.findall(text)]


def default_key_phrases(needle: str, question: str) -> list[str]:
    """Content words of the needle that the question does not contain (stopwords dropped), in order."""
    qwords = set(_norm_words(question))
    out: list[str] = []
    for w in _norm_words(needle):
        if w and w not in qwords and w not in STOPWORDS and w not in out:
            out.append(w)
    return out


def key_phrase_recall(response: str, phrases: Sequence[str]) -> float:
    """Share of ``phrases`` found in ``response`` (case-insensitive, as whole words; a multi-word phrase must
    appear as consecutive words)."""
    return _phrase_recall(response, phrases, _norm_words)


def _phrase_recall(response: str, phrases: Sequence[str], words_of: Any) -> float:
    """Share of ``phrases`` whose words (``words_of``) appear consecutively among the response's."""
    if not phrases:
        return 0.0
    joined = " " + " ".join(words_of(response)) + " "
    hits = 0
    for p in phrases:
        pw = words_of(p)
        if pw and (" " + " ".join(pw) + " ") in joined:
            hits += 1
    return round(hits / len(phrases), 4)


_DOUBLE_KEEP = frozenset("lsz")  # fall/falling, pass/passing, buzz/buzzing keep their double letter
_VOWELS = frozenset("aeiouy")


def stem(word: str) -> str:
    """A light English suffix stemmer: eating -> eat, sitting -> sit, days -> day, sandwiches -> sandwich,
    cities -> city, parked -> park; make and making both -> mak. Both sides of a comparison must be stemmed:
    stems are keys, not words. Words of 3 letters or fewer and words without letters are left alone."""
    w = word
    if len(w) <= 3 or not w.isalpha():
        return w
    if w.endswith("ies") and len(w) > 4:
        w = w[:-3] + "y"
    elif w.endswith("sses"):
        w = w[:-2]
    elif w.endswith(("ches", "shes", "xes", "zes")):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    for suffix, least in (("ing", 2), ("ed", 3)):
        base = w[: -len(suffix)]
        if w.endswith(suffix) and len(base) >= least and any(c in _VOWELS for c in base):
            w = base
            if len(w) >= 3 and w[-1] == w[-2] and w[-1] not in _VOWELS and w[-1] not in _DOUBLE_KEEP:
                w = w[:-1]  # sitting -> sitt -> sit
            break
    if len(w) > 3 and w.endswith("e") and not w.endswith("ee"):
        w = w[:-1]
    return w


def normalised_words(text: str) -> list[str]:
    """The stemmed words of ``text``: NFKC, case folded, punctuation as space, possessive 's dropped."""
    text = unicodedata.normalize("NFKC", text or "").casefold().replace("\u2019", "'")
    text = re.sub(r"'s\b", "", text)
    return [stem(w) for w in re.findall(r"[^\W_]+", text)]


def normalised_recall(response: str, phrases: Sequence[str]) -> float:
    """:func:`key_phrase_recall` after normalising and stemming the response and every phrase, so inflection,
    case and punctuation do not count against an answer."""
    return _phrase_recall(response, phrases, normalised_words)


def with_normalised_recall(results: Sequence[dict[str, Any]], phrases: Sequence[str]) -> list[dict[str, Any]]:
    """``results`` with ``recall_norm`` filled in from the stored response where an older file lacks it."""
    out = []
    for r in results:
        if r.get("recall_norm") is None and isinstance(r.get("response"), str):
            r = {**r, "recall_norm": normalised_recall(r["response"], phrases)}
        out.append(r)
    return out


def needle_judge_messages(question: str, reference: str, response: str) -> list[dict[str, str]]:
    user = NEEDLE_JUDGE_TEMPLATE.format(reference=reference, question=question, response=response)
    return [{"role": "system", "content": "You are a careful, impartial grader."}, {"role": "user", "content": user}]


# --------------------------------------------------------------------------------------------- heatmap
HEATMAP_VALUES = {  # result field -> (panel title, colour bar title, zmin, zmax, cell text format)
    "judge_score": ("judge score (1-10)", "judge", 1, 10, ".1f"),
    "recall": ("key-phrase recall (0-1)", "recall", 0, 1, ".2f"),
    "recall_norm": ("normalised key-phrase recall (0-1)", "recall<br>(norm.)", 0, 1, ".2f"),
}
HEATMAP_COLORSCALE = [[0, "#D7191C"], [0.5, "#FDD835"], [1, "#1A9641"]]  # missed -> found


def heatmap_grid(
    results: Sequence[dict[str, Any]], value: str = "judge_score"
) -> tuple[list[int], list[float], list[list[float | None]]]:
    """(lengths, depths, z) of ``value``: z[depth][length] is the mean over the probes of that cell (a resumed
    grid can hold repeats), None where no probe has a value; lengths and depths ascending."""
    if value not in HEATMAP_VALUES:
        raise ValueError(f"value={value!r} is not a needle score; use one of {', '.join(map(repr, HEATMAP_VALUES))}")
    cells: dict[tuple[int, float], list[float]] = {}
    for r in results:
        v = r.get(value)
        key = (int(r["context_length"]), float(r["depth_percent"]))
        bucket = cells.setdefault(key, [])
        if v is not None and v == v:  # None and NaN are missing
            bucket.append(float(v))
    lengths = sorted({k[0] for k in cells})
    depths = sorted({k[1] for k in cells})
    z = [[statistics.fmean(cells[(L, d)]) if cells.get((L, d)) else None for L in lengths] for d in depths]
    return lengths, depths, z


def heatmap_figure(
    lengths: Sequence[int],
    depths: Sequence[float],
    panels: dict[str, Any],
    *,
    title: str = "",
    selectable: bool = False,
    template: str = "plotly_white",
):
    """The needle heatmap as a plotly figure: one panel per entry of ``panels`` (result field -> z rows by depth,
    columns by length, None/NaN = no probe), context length on x, depth on y (shallow on top), red (missed) to
    green (found) on the field's fixed range (judge 1-10, recall 0-1), each cell labelled with its value.

    ``selectable`` lays one invisible marker over every cell that carries the hover text, so a click selects
    the cell (Streamlit reads point selections from scatter traces; a heatmap emits none). :func:`write_heatmap`
    saves this figure as heatmap.html; the dashboard shows it with ``selectable=True``.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    unknown = [k for k in panels if k not in HEATMAP_VALUES]
    if unknown or not panels:
        raise ValueError(
            f"heatmap panels {unknown or '(none)'}: use one or more of {', '.join(map(repr, HEATMAP_VALUES))}"
        )
    xs = [f"{int(L):,}" for L in lengths]
    ys = [f"{float(d):g}%" for d in depths]
    n = len(panels)
    fig = make_subplots(
        rows=n, cols=1, vertical_spacing=0.12, subplot_titles=[HEATMAP_VALUES[k][0] for k in panels] if n > 1 else None
    )
    for row, (key, z) in enumerate(panels.items(), 1):
        name, bar, zmin, zmax, fmt = HEATMAP_VALUES[key]
        name = name.split(" (")[0]
        z = [[None if v is None or v != v else float(v) for v in zr] for zr in z]
        text = [["" if v is None else format(v, fmt) for v in zr] for zr in z]
        exact = [["no probe" if v is None else f"{v:.2f}" for v in zr] for zr in z]
        bar_pos = dict(len=1 / n, y=1 - (row - 0.5) / n) if n > 1 else {}
        hover = "length %{x} tokens<br>depth %{y}<br>" + name + " %{z:.2f}<extra></extra>"
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=xs,
                y=ys,
                colorscale=HEATMAP_COLORSCALE,
                zmin=zmin,
                zmax=zmax,
                text=text,
                texttemplate="%{text}",
                xgap=2,
                ygap=2,
                colorbar=dict(title=bar, thickness=12, **bar_pos),
                hoverinfo="skip" if selectable else None,
                hovertemplate=hover,
            ),
            row=row,
            col=1,
        )
        if selectable:
            gx = [x for _ in ys for x in xs]
            gy = [y for y in ys for _ in xs]
            fig.add_trace(
                go.Scatter(
                    x=gx,
                    y=gy,
                    mode="markers",
                    showlegend=False,
                    customdata=[t for tr in exact for t in tr],
                    hovertemplate="length %{x} tokens<br>depth %{y}<br>" + name + " %{customdata}"
                    "<br>click to open<extra></extra>",
                    marker=dict(size=30, opacity=0.01, color="#000000"),
                    selected=dict(marker=dict(opacity=0.01)),
                    unselected=dict(marker=dict(opacity=0.01)),
                ),
                row=row,
                col=1,
            )
        fig.update_xaxes(title_text="context length (tokens)", row=row, col=1)
        fig.update_yaxes(title_text="needle depth", autorange="reversed", row=row, col=1)
    fig.update_layout(
        template=template,
        height=400 * n + (40 if title else 0),
        margin=dict(l=60, r=20, t=30 + (50 if title or n > 1 else 0), b=50),
    )
    if title:
        fig.update_layout(title=title)
    return fig


def write_heatmap(results: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """:func:`heatmap_figure` of the judge score (when any probe was judged), the key-phrase recall and the
    normalised recall (when the results hold it), as a self-contained html file (plotly.js inline, works
    offline)."""
    keys = [k for k in HEATMAP_VALUES if k == "recall" or any(r.get(k) is not None for r in results)]
    grids = {k: heatmap_grid(results, k) for k in keys}
    lengths, depths, _ = grids[keys[0]]
    fig = heatmap_figure(lengths, depths, {k: g[2] for k, g in grids.items()}, title=title or "Needle in a haystack")
    return atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))


# --------------------------------------------------------------------------------------------- runner
def run(cfg: NeedleConfig, run_dir: str | Path | RunDir, *, generator: Any = None, judge: Any = None) -> NeedleSummary:
    """Run (or resume) the grid into ``<run>/eval/needle/`` (results.jsonl, summary.json, heatmap.html),
    recorded in run.json as ``eval_needle``."""
    from tqdm.auto import tqdm

    from longalign.eval.generate import make_generator
    from longalign.llm.base import SamplingParams

    lengths, depths = grid_of(cfg)
    _check_lengths(cfg, lengths, generator)
    run_ = as_run_dir(run_dir)
    res_path = run_.needle_results()
    done = {
        (int(r["context_length"]), float(r["depth_percent"]))
        for r in read_jsonl(res_path)
        if (r.get("judge") or "") == cfg.judge
    }
    cells = [(L, d) for L in lengths for d in depths if (L, float(d)) not in done]
    phrases = list(cfg.key_phrases) or default_key_phrases(cfg.needle, cfg.question)
    if cells:
        texts = load_haystack_texts(cfg.haystack)  # a wrong --haystack is refused before the model loads
        if generator is None:
            generator = make_generator(
                cfg.model,
                tokenizer_spec=cfg.tokenizer or None,
                client_kwargs=dict(
                    cfg.model_endpoint().client_kwargs(), cache_dir=run_.llm_cache, calls_log=run_.llm_calls
                ),
            )
        if judge is None and cfg.judge:
            judge = make_judge(cfg, cache_dir=run_.llm_cache, calls_log=run_.llm_calls)
        tok = generator.tokenizer
        limit = getattr(generator, "max_positions", None)
        if limit and max(lengths) > limit:
            log.warning("context lengths up to %d exceed the model's %d positions", max(lengths), limit)
        hay = Haystack(tok, texts, max(lengths))
        needle_ids = needle_ids_for(tok, cfg.needle)
        params = SamplingParams(
            max_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed
        )
        for L, d in tqdm(cells, desc="needle cells", disable=not cfg.progress):
            ctx = insert_needle(hay, needle_ids, L, d, cfg.buffer)
            append_jsonl(res_path, _answer_cell(cfg, generator, judge, ctx, L, d, params, phrases))
    results = [
        r
        for r in with_normalised_recall(read_jsonl(res_path), phrases)
        if (r.get("judge") or "") == cfg.judge
        and int(r["context_length"]) in lengths
        and float(r["depth_percent"]) in depths
    ]
    scores = _grid_scores(cfg, results, lengths, depths, phrases)
    if results:
        write_heatmap(results, run_.needle_heatmap(), title=f"Needle in a haystack: {scores['model']}")
    atomic_write_json(run_.eval_summary("needle"), scores)
    summary = NeedleSummary(
        "needle",
        run_.eval("needle"),
        scores,
        summary_path=run_.eval_summary("needle"),
        results=res_path,
        heatmap=run_.needle_heatmap() if results else None,
    )
    record(run_, "eval_needle", cfg, summary)
    return summary


def _check_lengths(cfg: NeedleConfig, lengths: Sequence[int], generator: Any) -> None:
    """Refuse context lengths past the model's positions before any work, unless ``--past-positions``."""
    from longalign.eval.generate import model_limit
    from longalign.models import check_length

    if cfg.past_positions:
        return
    flag = "--lengths" if cfg.lengths else "--length-max"
    check_length(
        max(lengths),
        asked=f"{flag} {max(lengths)}",
        model=cfg.model,
        positions=model_limit(cfg.model, generator),
        shorter="ask for context lengths up to {positions:,} (--lengths, or --length-max {positions})",
        opt_in="pass --past-positions true to run them anyway (positions the model was never trained on)",
    )


def _answer_cell(
    cfg: NeedleConfig,
    generator: Any,
    judge: Any,
    ctx: Any,
    length: int,
    depth: float,
    params: Any,
    phrases: Sequence[str],
) -> dict[str, Any]:
    """One cell of the grid: the model's answer to the question over the haystack ``ctx``, its recalls, the
    text window around the needle and, with a judge, its rating."""
    from longalign.eval.generate import build_messages

    tok = generator.tokenizer
    text = tok.decode(ctx.ids, skip_special_tokens=True)
    w0 = max(0, ctx.needle_token_pos - cfg.window_tokens)
    w1 = ctx.needle_token_pos + ctx.needle_len + cfg.window_tokens
    msgs = build_messages(build_user_prompt(text, cfg.question), SYSTEM_PROMPT)
    gen = generator.generate([msgs], params)[0]
    rec: dict[str, Any] = {
        "context_length": length,
        "depth_percent": float(depth),
        "needle_token_pos": ctx.needle_token_pos,
        "target_token_pos": ctx.target_pos,
        "needle_tokens": ctx.needle_len,
        "context_tokens": len(ctx.ids),
        "prompt_tokens": gen.prompt_tokens,
        "response": gen.text,
        "recall": key_phrase_recall(gen.text, phrases),
        "recall_norm": normalised_recall(gen.text, phrases),
        "judge_score": None,
        "window": tok.decode(ctx.ids[w0:w1], skip_special_tokens=True),
        "model": generator.name,
        "judge": cfg.judge or "",
    }
    if judge is not None:
        out = judge.rate(JudgeRequest(needle_judge_messages(cfg.question, cfg.needle, gen.text), 1, 10, seed=cfg.seed))
        rec["judge_score"] = out.score
        rec["judge_reply"] = out.reply
        rec["judge_detail"] = {k: v for k, v in out.to_dict().items() if k not in ("reply", "score")}
    return rec


def _grid_scores(
    cfg: NeedleConfig,
    results: list[dict[str, Any]],
    lengths: Sequence[int],
    depths: Sequence[float],
    phrases: Sequence[str],
) -> dict[str, Any]:
    """``summary.json`` of the grid: means of the judge scores and both recalls over the cells asked for."""
    judged = [r["judge_score"] for r in results if r.get("judge_score") is not None]
    norm = [r["recall_norm"] for r in results if r.get("recall_norm") is not None]
    notes = []
    if is_local_judge(cfg.judge):
        notes.append(LOCAL_JUDGE_NOTE)
    if not cfg.judge:
        notes.append("no judge: only the key-phrase recall was computed")
    return {
        "lengths": lengths,
        "depths": depths,
        "n": len(results),
        "mean_judge": round(statistics.fmean(judged), 4) if judged else None,
        "mean_recall": round(statistics.fmean(r["recall"] for r in results), 4) if results else None,
        "mean_recall_norm": round(statistics.fmean(norm), 4) if norm else None,
        "model": results[0]["model"] if results else cfg.model,
        "judge": cfg.judge or None,
        "key_phrases": phrases,
        "needle": cfg.needle,
        "question": cfg.question,
        "haystack": cfg.haystack,
        "buffer": cfg.buffer,
        "notes": notes,
    }
