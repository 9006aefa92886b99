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
# # 1 · Data construction
#
# LongAlign's training set has two halves: **long instruction data**, made by asking an LLM for questions
# about long documents and then for the answer to one of them (Self-Instruct over a document), and
# **short chat data** (ShareGPT conversations). This notebook walks the data stage on a toy scale:
#
# 1. a corpus of long documents, measured in the target model's tokens (`longalign.data.corpus`);
# 2. the four task types and the prompts that ask for five numbered questions (`longalign.data.selfinstruct`);
# 3. how replies are parsed and checked, on example replies of the kinds small models write;
# 4. one real Self-Instruct round trip on one short document (the embedded SmolLM2-135M-Instruct, or an
#    OpenAI-compatible endpoint when `OPENAI_BASE_URL` is set);
# 5. importing short chat data with counts of everything dropped (`longalign.data.short`);
# 6. the mix written to `data/mixed.jsonl`, which the tokenize stage reads.
#
# Everything lands in one run directory (`runs/notebooks/01_data_construction/` by default). The CLI does
# the same with `longalign data corpus|generate|short|mix --run DIR`.

# %% tags=["parameters"]
run_dir = "runs/notebooks/01_data_construction"  # relative to the repository root
builtin_sources = ["pydoc", "stdlib-code"]  # texts installed on this machine
min_tokens = 300  # corpus length filter (target-model tokens)
max_tokens = 4000
n_docs = 8  # documents sampled (longer ones upsampled)
generator = ""  # "" = openai:$OPENAI_MODEL when OPENAI_BASE_URL is set, else local:smollm2
generate_doc_ids = ["pydoc:dict"]  # corpus documents sent to the generator (missing ids: the shortest)
task_types = ["extraction", "general"]  # the kinds a 135M generator manages best; all four for a large model
question_max_tokens = 160  # reply budget of the question request
answer_max_tokens = 96  # reply budget of the answer request
max_question_attempts = 2
max_prompt_tokens = 1024  # the generator sees at most this many tokens of a document
short_inputs = []  # ShareGPT / messages files; [] = the sample shipped with the package
n_long = "all"  # long examples in the mix: all, a number, or 0k/5k/10k
seed = 42

# %%
import logging
import os
import warnings
from pathlib import Path

import pandas as pd
import plotly.io as pio
from IPython.display import display

# inline figures that never open a browser; "notebook" writes plotly.js itself into the first figure's output,
# so an HTML export of the executed notebook draws its figures offline (no script loaded from a CDN)
pio.renderers.default = "plotly_mimetype+notebook"
logging.basicConfig(level=logging.WARNING)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").is_file())
pd.set_option("display.max_colwidth", 120)
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: plain bars

from longalign import data
from longalign.data.corpus import CorpusConfig, detect_lang, read_corpus
from longalign.rundir import RunDir, read_jsonl

run = RunDir(ROOT / run_dir)
print("run directory:", run.root)

# %% [markdown]
# ## 1. The corpus
#
# `build_corpus` reads documents, drops empty, duplicate and out-of-range ones, counts tokens with the
# **target model's tokenizer** (the paper's 8k–64k range is in those tokens), and samples `n_docs` with
# longer documents weighted up by length bucket. The built-in source needs no download: Python's help
# topics (`pydoc`), large standard-library modules, package descriptions and licence files. A `.jsonl`
# file, a folder of `.txt`/`.md` files or `hf:<dataset>` work the same way.

# %%
corpus_cfg = CorpusConfig(
    input="builtin",
    builtin_sources=list(builtin_sources),
    min_tokens=min_tokens,
    max_tokens=max_tokens,
    n_docs=n_docs,
    seed=seed,
)
corpus_summary = data.run(corpus_cfg, run)  # writes data/corpus.jsonl and records the step in run.json
docs = read_corpus(run.corpus)
display(
    pd.DataFrame(
        [
            {
                "id": d["id"],
                "source": d["source"],
                "lang": d["lang"],
                "n_tokens": d["n_tokens"],
                "characters": len(d["text"]),
                "chars/token": round(len(d["text"]) / d["n_tokens"], 2),
            }
            for d in docs
        ]
    )
)
pd.Series({k: v for k, v in corpus_summary.to_dict().items() if not isinstance(v, dict)}, name="corpus").to_frame()

# %% [markdown]
# What was dropped, and why (every filter is counted — nothing disappears silently):

# %%
display(pd.DataFrame({"dropped": corpus_summary.dropped}))
import plotly.express as px

fig_docs = px.bar(
    pd.DataFrame(docs),
    x="id",
    y="n_tokens",
    color="source",
    title="Sampled documents (tokens)",
    template="plotly_white",
    height=330,
)
fig_docs.update_layout(xaxis_title="", margin=dict(b=120))
fig_docs.show()

# %% [markdown]
# **Language.** Prompts are chosen by the document's language (the paper keeps ~10% Chinese). Detection
# looks at the letters' scripts, weighting one CJK ideograph like a short Latin word, so a Chinese text
# quoting code still counts as Chinese:

# %%
samples = {
    "English prose": "The interpreter reads the module once and caches the compiled code.",
    "Chinese with code": "使用 `open()` 打开文件后，请记得调用 close() 方法来释放资源。",
    "Japanese": "このモジュールはファイルを読み込みます。",
    "Russian": "Модуль читает файл и возвращает строки.",
    "Digits only": "12345 67890",
}
pd.DataFrame([{"text": t, "detected": detect_lang(t)} for t in samples.values()], index=list(samples))

# %% [markdown]
# ## 2. Task types and prompts
#
# The paper asks for questions of four kinds so that the data covers more than look-up: **general**
# questions, **summary** (integrating several parts), multi-hop **reasoning**, and information
# **extraction**. Each request ends with the same format instruction: five questions, one per line,
# numbered `1:` … `5:`. Our wording, in English and Chinese:

# %%
from longalign.data.selfinstruct import TASK_TYPES, answer_prompt, question_prompt, task_instruction

for t in TASK_TYPES:
    print(f"--- {t} (en)\n{task_instruction(t, 'en')}\n")
print(f"--- summary (zh)\n{task_instruction('summary', 'zh')}")

# %% [markdown]
# The full user message puts the document first and the instruction after it. A retry after a rejected
# attempt appends a note naming what was wrong, so it is a different request (and not a cache hit):

# %%
doc = min(docs, key=lambda d: d["n_tokens"])
excerpt = doc["text"][:300] + " …"
print(question_prompt(excerpt, "reasoning", doc["lang"], rejected_reasons=["duplicate", "placeholder"]))
print("\n=== answer request ===")
print(answer_prompt(excerpt, "What does the text say about X?", doc["lang"]))

# %% [markdown]
# ## 3. Parsing and validating questions
#
# A small generator does not follow the format reliably: it echoes the placeholder, repeats one question,
# copies the instruction back, or writes two questions and then prose. `parse_questions` accepts the
# numbering variants models actually produce and records (rather than fails on) extra text;
# `validate_questions` rejects placeholders, duplicates, near-duplicates, echoes of the instruction,
# fragments and statements. The replies below are written to show each case:

# %%
from longalign.data.selfinstruct import parse_questions, validate_questions

replies = {
    "well formed": "1: What problem does the with statement solve?\n2: Which two methods must a context "
    "manager define?\n3: When is __exit__ called if the body raises?\n4: How can __exit__ "
    "suppress an exception?\n5: What does the as clause bind?",
    "placeholder echo": "1: <question>\n2: <question>\n3: <question>\n4: <question>\n5: <question>",
    "repeated": "1. What is a context manager?\n2. What is a context manager?\n3. What is a context "
    "manager ?\n4. Why use with?\n5. What does __enter__ return?",
    "instruction echo": "1: Write five questions about the text above.\n2: Put each question on its own "
    "line.\n3: What does __enter__ return?",
    "two then prose": "**1.** How is __exit__ called?\n**2)** What happens on an exception?\nThese "
    "questions cover the main ideas of the text.",
    "inline, Chinese": "1：上下文管理器需要定义哪些方法？ 2：异常发生时会调用什么？ 3：as 子句绑定的是什么？",
}
rows = []
for name, reply in replies.items():
    lang = "zh" if "Chinese" in name else "en"
    parsed = parse_questions(reply)
    ok, bad = validate_questions(parsed.questions, lang=lang, instruction=task_instruction("general", lang))
    rows.append(
        {
            "reply": name,
            "parsed": len(parsed.questions),
            "accepted": len(ok),
            "rejected": ", ".join(f"{r['reason']}" for r in bad) or "—",
            "parse issues": "; ".join(parsed.issues) or "—",
        }
    )
pd.DataFrame(rows).set_index("reply")

# %% [markdown]
# An attempt is accepted when at least `min_questions` (3) questions pass; otherwise the job retries with a
# new seed, and every second retry with another task type. Everything rejected is kept in the record's
# `rejected` list, and a document that never yields usable questions goes to `data/failed.jsonl`.
#
# ## 4. One real Self-Instruct round trip
#
# Now the real thing on one short corpus document: a question request, validation, one question chosen
# at random, and the answer request. With no endpoint configured the embedded SmolLM2-135M-Instruct
# generates on the CPU (expect a sample of its quality, and a minute or so; with other documents it often
# writes statements instead of questions, which validation rejects — the failure then shows up below).
# Set `OPENAI_BASE_URL` (and `OPENAI_MODEL`, `OPENAI_API_KEY`) to use any OpenAI-compatible server instead.
# Requests are cached
# in `data/llm_cache/` and logged in `data/llm_calls.jsonl`, so re-running this cell costs nothing.

# %%
from longalign.data.corpus import select_documents
from longalign.data.selfinstruct import GenerateConfig, failed_path, generator_from_env

spec, base_url = (generator, None) if generator else generator_from_env()
gen_docs = select_documents(docs, generate_doc_ids)  # a missing id: the shortest document not asked for
gen_cfg = GenerateConfig(
    llm=spec,
    base_url=base_url,
    task_types=list(task_types),
    question_max_tokens=question_max_tokens,
    answer_max_tokens=answer_max_tokens,
    max_question_attempts=max_question_attempts,
    max_prompt_tokens=max_prompt_tokens,
    seed=seed,
)
print(f"generator: {spec}; documents: {[d['id'] for d in gen_docs]}")
gen_summary = data.run(gen_cfg, run, docs=gen_docs, progress=False)
pd.Series(gen_summary.to_dict(), name="generate").to_frame()

# %% [markdown]
# The record written to `data/long.jsonl` (the document itself is shortened here for display), and
# the log of every request:

# %%
ids = {d["id"] for d in gen_docs}
long_records = read_jsonl(run.long)
for rec in (r for r in long_records if r["doc_id"] in ids):
    print("doc:", rec["doc_id"], "| task type:", rec["task_type"], "| model:", rec["model"])
    print("questions:", *[f"  {i + 1}: {q}" for i, q in enumerate(rec["questions"])], sep="\n")
    print("chosen:", rec["question"])
    print("answer:", rec["messages"][1]["content"][:600])
    print("rejected on the way:", [(r["stage"], r["reason"]) for r in rec["rejected"]] or "nothing")
    print("user turn = document + question:", len(rec["messages"][0]["content"]), "characters\n")
for rec in (
    r
    for r in read_jsonl(failed_path(run))
    if r["doc_id"] in ids and r["doc_id"] not in {x["doc_id"] for x in long_records}
):
    print("FAILED:", rec["doc_id"], rec["reason"], [(r.get("reason")) for r in rec["rejected"]])
calls = pd.DataFrame(read_jsonl(run.llm_calls))
calls[[c for c in ("model", "status", "usage", "latency", "cached") if c in calls]]

# %% [markdown]
# ## 5. Short chat data
#
# ShareGPT dumps are messy. `load_short_data` maps roles (`human`/`gpt`/… → user/assistant), drops system
# turns by default, removes **empty assistant replies together with the question they answer** (the
# paper's rule), merges consecutive turns of one role, drops trailing questions without a reply and
# duplicates — and counts each change. The package ships a small ShareGPT-format sample:

# %%
from longalign.data.mix import MixConfig
from longalign.data.short import SHORT_SAMPLE, ShortConfig

short_cfg = ShortConfig(inputs=[str(p) for p in short_inputs] or [str(SHORT_SAMPLE)], seed=seed)
short_report = data.run(short_cfg, run)  # writes data/short.jsonl
print(f"read {short_report.read} conversations, kept {short_report.kept}")
display(pd.DataFrame({"conversations dropped": short_report.dropped_conversations}))
display(pd.DataFrame({"turns dropped or merged": short_report.dropped_turns}))

# %% [markdown]
# ## 6. The mix
#
# `mix` keeps every short conversation and adds `n_long` long examples (the paper's suites: 0k, 5k, 10k),
# shuffled with a seed, into `data/mixed.jsonl` — the input of notebook 2.

# %%
mix_summary = data.run(MixConfig(n_long=str(n_long) if long_records else "0", seed=seed), run)
print("\n".join(mix_summary.lines()))
mixed = pd.DataFrame(read_jsonl(run.mixed))
mixed["characters"] = [sum(len(m["content"]) for m in ms) for ms in mixed["messages"]]
fig_mix = px.strip(
    mixed,
    x="characters",
    color="kind",
    log_x=True,
    template="plotly_white",
    height=260,
    title="Mixed data: long examples vs short chats (characters per example)",
)
fig_mix.show()

# %% [markdown]
# ## What this notebook showed, checked
#
# The figures above draw what the stages wrote and recorded in `run.json`; the parsing table shows what
# validation accepts and rejects; the mix holds every kept short chat and the long examples asked for.

# %%
import json

stages = json.loads(run.run_json.read_text())["stages"]
corpus_json, mix_json = stages["data.corpus"]["summary"], stages["data.mix"]["summary"]
# the corpus: every sampled document inside the token range, the bar chart draws exactly their token counts
assert docs and len(docs) == corpus_json["written"] <= n_docs
assert all(min_tokens <= d["n_tokens"] <= max_tokens for d in docs)
drawn = {x: y for trace in fig_docs.data for x, y in zip(trace.x, trace.y)}
assert drawn == {d["id"]: d["n_tokens"] for d in docs}, drawn
assert sum(drawn.values()) == corpus_json["tokens"]
# parsing: the well-formed reply gives five accepted questions, the placeholder echo none
table = pd.DataFrame(rows).set_index("reply")
assert (table.loc["well formed", "parsed"], table.loc["well formed", "accepted"]) == (5, 5)
assert table.loc["placeholder echo", "accepted"] == 0 and table.loc["repeated", "accepted"] < 5
# the mix: every kept short chat, the long examples available, and the strip chart draws one point per example
kinds = mixed["kind"].value_counts().to_dict()
assert kinds.get("short", 0) == short_report.kept == mix_json["short"] > 0
assert kinds.get("long", 0) == mix_json["long"] == (len(long_records) if n_long == "all" else mix_json["long"])
assert len(mixed) == mix_json["total"] == sum(len(t.x) for t in fig_mix.data)
print("checked: corpus", len(docs), "documents; mix", kinds)

# %% [markdown]
# **Try this:** set `max_prompt_tokens = 256` in the parameters cell and run the notebook again. The generator
# then sees only the head and tail of each document, 256 tokens in all (instructions included), so generation
# is quicker and the questions can only be about those parts; the training record's user turn still carries
# the whole document (the printed character count of the user turn does not change).
#
# Next: `02_tokenize_and_pack.ipynb` tokenizes this mix with the loss on assistant tokens only and
# compares naive, sorted and packed batching.
