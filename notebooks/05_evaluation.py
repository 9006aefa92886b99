# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5 · Evaluation
#
# Two long-context checks from the paper, at a size a CPU can run:
#
# 1. **Needle in a haystack** — one sentence hidden at a chosen depth of a long filler text, and the
#    question whose answer it is; a grid of context lengths × depths and a heatmap (`longalign.eval.needle`);
# 2. **LongBench-Chat** scoring — a judge sees the question, the expert's reference answer, three answers
#    with expert scores, and the answer to rate, and replies with `[[rating]]` (`longalign.eval.longbench_chat`,
#    `longalign.eval.judge`). A small local model cannot follow that format, so the local judge reads the
#    rating from its next-token probabilities instead.
#
# and, beyond the paper, one task of the **synthetic ladder** (`longalign.eval.ruler`, after RULER): how a
# sample is built to an exact length, where its needles go, and how an answer is scored.

# %% tags=["parameters"]
run_dir = "runs/notebooks/05_evaluation"
model = "smollm2"  # model under test: smollm2, an HF id, or a folder written by longalign train
lengths = [600, 1000]  # needle grid: context lengths (tokens)
depths = [40.0, 80.0]  # needle grid: depths (percent)
max_new_tokens = 24
judge = "local:smollm2"  # needle judge: "" = key-phrase recall only, or openai:<model>
ladder_task = "niah_multivalue"  # section 5: one task of the synthetic ladder (longalign eval ruler --tasks)
ladder_length = 1024  # section 5: its length in tokens, prompt + answer budget
seed = 42

# %%
import logging
import os
import warnings
from pathlib import Path

import pandas as pd
import plotly.io as pio
from IPython.display import HTML, display

# inline figures that never open a browser; "notebook" writes plotly.js itself into the first figure's output,
# so an HTML export of the executed notebook draws its figures offline (no script loaded from a CDN)
pio.renderers.default = "plotly_mimetype+notebook"
logging.basicConfig(level=logging.WARNING)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").is_file())
pd.set_option("display.max_colwidth", 120)
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: plain bars

import shutil

import plotly.graph_objects as go

from longalign.eval import needle
from longalign.eval.generate import LocalGenerator
from longalign.rundir import RunDir
from longalign.views import needle as needle_view
from longalign.views import readers

run = RunDir(ROOT / run_dir)
if run.eval("needle").exists():
    shutil.rmtree(run.eval("needle"))  # recompute the grid on every execution
generator = LocalGenerator(model)  # loaded once, shared by the needle grid and the local judge
tokenizer = generator.tokenizer
print("model under test:", generator.name)

# %% [markdown]
# ## 1. Where the needle goes
#
# The haystack (Python's help topics here) is tokenized once with the **evaluated model's tokenizer**. For
# a context of L tokens the first `L − buffer − len(needle)` haystack tokens are kept, and the needle goes
# in at the last sentence boundary at or before `depth × length` — so it never splits a sentence.
# Sentence ends are found by decoding tokens, not by hard-coded ids.

# %%
hay = needle.Haystack(tokenizer, needle.load_haystack_texts("builtin"), max(lengths))
needle_ids = needle.needle_ids_for(tokenizer, needle.PAPER_NEEDLE)
rows = []
for L in lengths:
    for d in depths:
        ctx = needle.insert_needle(hay, needle_ids, L, d, buffer=200)
        rows.append(
            {
                "context_length": L,
                "depth %": d,
                "target position": ctx.target_pos,
                "needle position": ctx.needle_token_pos,
                "moved back (tokens)": ctx.target_pos - ctx.needle_token_pos,
                "context tokens": len(ctx.ids),
            }
        )
display(pd.DataFrame(rows))
ctx = needle.insert_needle(hay, needle_ids, lengths[0], depths[0], buffer=200)
a, b = max(0, ctx.needle_token_pos - 60), ctx.needle_token_pos + ctx.needle_len + 40
window = tokenizer.decode(ctx.ids[a:b])
display(
    HTML(
        "<div style='font-family:monospace;white-space:pre-wrap;border:1px solid #ddd;padding:6px'>"
        + needle_view.highlight(window, needle.PAPER_NEEDLE)
        + "</div>"
    )
)

# %% [markdown]
# A strip of the whole context: each cell is a block of tokens, the needle's block in red.

# %%
fig = go.Figure()
for L in lengths:
    for d in depths:
        c = needle.insert_needle(hay, needle_ids, L, d, buffer=200)
        fig.add_trace(
            go.Scatter(
                x=[0, len(c.ids)],
                y=[f"{L} tok, {d:g}%"] * 2,
                mode="lines",
                line=dict(color="#DDDDDD", width=14),
                showlegend=False,
                hoverinfo="skip",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[c.needle_token_pos, c.needle_token_pos + c.needle_len],
                y=[f"{L} tok, {d:g}%"] * 2,
                mode="lines",
                line=dict(color="#D62728", width=14),
                showlegend=False,
                hovertemplate="needle at token %{x}<extra></extra>",
            )
        )
fig.update_layout(
    template="plotly_white",
    height=80 + 40 * len(lengths) * len(depths),
    xaxis_title="token position in the context",
    margin=dict(l=110, r=20, t=20, b=40),
)
fig.show()

# %% [markdown]
# ## 2. A small needle grid
#
# Each cell asks the model the paper's question with the context in the prompt (greedy decoding), and
# scores the answer three ways: a deterministic **key-phrase recall** (share of the needle's content words in
# the answer, word for word), the same recall after normalising case, punctuation and inflection
# (`recall_norm`: "eating ... sitting" counts for the needle's "eat ... sit"), and, when `judge` is set, a
# 1–10 judge rating with the original harness's rubric. Results
# are appended per cell to `eval/needle/results.jsonl`, so an interrupted grid resumes.

# %%
cfg = needle.NeedleConfig(
    model=model,
    lengths=list(lengths),
    depths=list(depths),
    max_new_tokens=max_new_tokens,
    judge=judge,
    seed=seed,
    progress=False,
)
judge_obj = None
if judge.startswith("local:"):
    from longalign.eval.judge import LocalJudge

    judge_obj = LocalJudge(judge, model=generator.model, tokenizer=tokenizer)  # reuse the loaded weights
summary = needle.run(cfg, run, generator=generator, judge=judge_obj)
print("\n".join(summary.lines()))
results = readers.load_needle(run)
display(
    results[["context_length", "depth_percent", "prompt_tokens", "response", "recall", "recall_norm", "judge_score"]]
)

# %%
value = "judge_score" if results["judge_score"].notna().any() else "recall"
needle_view.fig_needle_heatmap(needle_view.needle_grid(results, value), value).show()
print("self-contained heatmap written to", summary.heatmap)

# %% [markdown]
# ## 3. The LongBench-Chat judge prompt
#
# The benchmark's files (`test_cases.json`, `few_shots.json`) are the user's to supply; here a small literal
# case shows how the prompt is assembled. The judge sees the **question, not the document**, the reference
# answer, three scored example answers (their order shuffled per judge run, as in the paper; two runs are
# averaged) and the answer to rate.

# %%
from longalign.eval.judge import JudgeRequest, LocalJudge, parse_rating
from longalign.eval.longbench_chat import ChatCase, example_orders, judge_messages

case = ChatCase(
    idx=1,
    prompt="(the long document and the question)",
    lang="en",
    query="According to the report, why did the bridge close in 2019, and for how long?",
    answer="It closed for seven months because inspectors found corrosion in two main cables.",
    examples=[
        {"answer": "Corrosion was found in two main cables, so it closed for seven months.", "score": 10},
        {"answer": "It closed because of a storm.", "score": 2},
        {"answer": "It was closed for repairs to its cables, for several months.", "score": 6},
    ],
)
prediction = "The bridge was shut for about seven months after corrosion was discovered in its cables."
orders = example_orders(len(case.examples), n_runs=2, seed=seed, idx=case.idx)
print("example order per judge run:", orders)
messages = judge_messages(case, prediction, orders[0])
for m in messages:
    print(f"===== {m['role']} =====\n{m['content']}\n")

# %% [markdown]
# **Parsing `[[rating]]`.** The score is the number inside the *last* double bracket; full-width brackets
# (common in Chinese replies) are normalised; a bracket without a number, or a number outside 1–10, means
# "no rating" and the endpoint judge asks again (up to 5 times).

# %%
replies = [
    "The answer matches the reference closely. Rating: [[9]]",
    "Format: [[rating]]. My verdict: [[7.5]]",
    "评分：［［８］］",
    "Rating: [[8/10]]",
    "I would give it [[rating]]",
    "Score: 11 -> [[11]]",
    "Rating: **6**",
]
pd.DataFrame({"reply": replies, "parsed": [parse_rating(r) for r in replies]})

# %% [markdown]
# ## 4. A local judge from next-token probabilities
#
# The embedded 135M model never writes `[[N]]` on its own. The local judge therefore forces the reply to
# start with `[[`, scores each rating r by the probability of the tokens `r]]` (a product over tokens, so
# "10" competes fairly with "1"), renormalises over 1–10, and reports the expected value (or the argmax)
# together with the probability mass the model put on valid ratings at all. A 135M judge is weak — treat
# its numbers as a smoke test and use a GPT-4-class endpoint for figures comparable with the paper.

# %%
local = (
    judge_obj
    if isinstance(judge_obj, LocalJudge)
    else LocalJudge("local:smollm2", model=generator.model, tokenizer=tokenizer)
)
outcome = local.rate(JudgeRequest(messages, 1, 10, seed=seed))
dist = outcome.extra["distribution"]
print(
    f"expected score {outcome.extra['expected']}, argmax {outcome.extra['argmax']}, "
    f"mass on valid ratings {outcome.extra['valid_mass']:.3f}, prompt tokens {outcome.prompt_tokens}"
)
fig = go.Figure(go.Bar(x=list(dist), y=list(dist.values()), marker_color="#4C78A8"))
fig.update_layout(
    template="plotly_white",
    height=280,
    xaxis_title="rating",
    yaxis_title="probability",
    title="Local judge: rating distribution after a forced '[['",
)
fig.show()

# %% [markdown]
# ## 5. One task of the synthetic ladder, and how it is scored
#
# `longalign eval ruler` follows the task definitions of RULER (Hsieh et al., 2024): needles with distractors,
# several values per key, variable tracking, word counts. Every task is built to an **exact length in the
# evaluated model's tokens**, chat template and answer prefix included: the prompt takes `length − budget`
# tokens and the answer may take the task's budget, so a ladder of lengths 1k, 2k, 4k… really measures those
# lengths. Scoring needs no judge: it is the share of the expected values found in the answer.
#
# Here one sample of `niah_multivalue`: one key, four sentences that each give it a value, spread over real
# documents (the built-in corpus); the question asks for every value of the key, so all four are expected.

# %%
from longalign.eval import ruler
from longalign.eval.ruler_tasks import TASKS, TaskContext, score_output
from longalign.llm.base import SamplingParams
from longalign.views import ladder as ladder_view

answerer = ruler.LocalAnswerer(model, model=generator.model, tokenizer=tokenizer)  # the weights loaded above
fmt = answerer.prompt_format()
ctx = TaskContext(fmt, seed=seed)
sample = ctx.build(ladder_task, ladder_length, 0)
print(f"{ladder_task}: {TASKS[ladder_task].description}")
print(
    f"prompt {sample.prompt_tokens} tokens + answer budget {sample.max_new_tokens} = {ladder_length}; "
    f"counted again here: {fmt.count(sample.user, sample.answer_prefix)}"
)
print("question:", sample.question)
print("expected:", sample.expected)
pd.DataFrame({"inserted sentence": sample.inserts, "depth (%)": sample.depths})

# %% [markdown]
# The inserts go at sentence ends at or before their depth, in context order. Below the whole prompt as the
# model reads it (the user turn, then the forced start of the answer), with the expected values marked yellow
# and the asked-for key blue — as the dashboard's Ladder page shows a sample.

# %%
record = {"task": ladder_task, "expected": sample.expected, "info": sample.info}
body, marks = ladder_view.prompt_html(sample.user, sample.answer_prefix, ladder_view.marks_for(record))
print(f"{marks} marks placed")
display(HTML(body))

# %% [markdown]
# The scorer is RULER's string match: each expected value counts when it appears in the answer, ignoring case,
# and the score is the share found. Literal answers show what that does and does not reward — including that a
# value found inside a longer number still counts (a substring test, as in RULER), and that naming values
# nobody asked for costs nothing.

# %%
e = sample.expected
literal = {
    "all four, in a sentence": f"The values are {e[0]}, {e[1]}, {e[2]} and {e[3]}.",
    "two of them": f"{e[2]} and {e[0]}",
    "one, inside a longer number": f"9{e[1]}9",
    "all four and an invented one": f"{', '.join(e)}, 1234567",
    "none": "I could not find the key in the text.",
}
scored = pd.DataFrame(
    {"answer": list(literal.values()), "score": [score_output(a, e, "all") for a in literal.values()]},
    index=list(literal),
)
display(scored)

# %%
answer = answerer.answer(sample, SamplingParams(max_tokens=1, temperature=0.0, top_p=1.0, seed=seed))
model_score = score_output(answer.text, sample.expected, "all")
print(f"{answerer.name} answered {answer.completion_tokens} tokens: {answer.text.strip()[:200]!r}")
print(ladder_view.score_line({**record, "output": answer.text, "score": model_score}))

# %% [markdown]
# What this section shows, checked: the prompt has exactly the promised number of tokens; every expected value
# sits in the prompt once, inside its inserted sentence, and the depths rise through the context; the score is
# the share of expected values found, whatever else the answer says.

# %%
assert sample.prompt_tokens == fmt.count(sample.user, sample.answer_prefix) == ladder_length - sample.max_new_tokens
assert all(sample.user.count(v) == 1 for v in sample.expected)
assert all(any(v in text for text in sample.inserts) for v in sample.expected)
assert sample.depths == sorted(sample.depths) and all(0 <= d <= 100 for d in sample.depths)
assert marks >= len(sample.expected)
assert scored["score"].tolist() == [1.0, 0.5, 0.25, 1.0, 0.0]
assert 0.0 <= model_score <= 1.0

# %% [markdown]
# The full benchmark runs from the CLI: `longalign eval longbench-chat --data DIR --judge openai:<model>
# --judge-base-url URL --out RUN` (predictions, judgments and a summary in `eval/longbench_chat/`), and
# `longalign eval needle --out RUN` for the paper's 10 × 10 grid, and `longalign eval ruler --run RUN` for the
# ladder (`--tasks`, `--lengths 1024,2048,4096`, `--samples`; `--dtype float32` when two models are compared).
# The dashboard's LongBench-Chat, Needle and Ladder pages read those files.
#
# **Try this:** set `judge = ""` in the parameters cell and run the notebook again. The needle cells are then
# scored by key-phrase recall only: the heatmap is coloured by recall instead of the judge score, the
# `judge_score` column stays empty, the summary notes that no judge ran, and the needle section is quicker,
# since no judge request follows each answer.
