"""Write the stage notebooks under ``notebooks/`` (without outputs) from the cell sources below.

    python scripts/make_notebooks.py            # rewrite every notebook
    python scripts/make_notebooks.py 03         # only notebooks whose name starts with 03

Editing the ``.py`` source here and regenerating keeps the committed notebooks free of outputs and
execution counts; ``tests/test_notebooks_clean.py`` checks that, and that each notebook's first code cell
is tagged ``parameters`` (papermill style: ``papermill notebooks/02_tokenize_and_pack.ipynb out.ipynb -p
max_len 2048`` overrides it).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
NB_DIR = ROOT / "notebooks"

# Shared first lines of the setup cell: find the repository root (the notebook runs in notebooks/ under
# Jupyter and nbmake), make plotly render inline without a browser, and quiet the libraries' logs.
SETUP = '''\
import logging
import os
import warnings
from pathlib import Path

import pandas as pd
import plotly.io as pio
from IPython.display import HTML, Markdown, display

pio.renderers.default = "plotly_mimetype+notebook_connected"  # inline figures; never opens a browser
logging.basicConfig(level=logging.WARNING)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").is_file())
pd.set_option("display.max_colwidth", 120)
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: plain bars
'''


def md(text: str):
    return new_markdown_cell(textwrap.dedent(text).strip("\n"))


def code(text: str, tags: list[str] | None = None):
    cell = new_code_cell(textwrap.dedent(text).strip("\n"))
    if tags:
        cell.metadata["tags"] = tags
    return cell


def setup(text: str):
    """The setup cell: the shared lines above, then the notebook's own imports."""
    return new_code_cell(SETUP + "\n" + textwrap.dedent(text).strip("\n"))


def params(text: str):
    return code(text, tags=["parameters"])


# ==========================================================================================================
# 01 data construction
# ==========================================================================================================

NB01 = [
    md("""
    # 1 · Data construction

    LongAlign's training set has two halves: **long instruction data**, made by asking an LLM for questions
    about long documents and then for the answer to one of them (Self-Instruct over a document), and
    **short chat data** (ShareGPT conversations). This notebook walks the data stage on a toy scale:

    1. a corpus of long documents, measured in the target model's tokens (`longalign.data.corpus`);
    2. the four task types and the prompts that ask for five numbered questions (`longalign.data.selfinstruct`);
    3. how replies are parsed and checked, on example replies of the kinds small models write;
    4. one real Self-Instruct round trip on one short document (the embedded SmolLM2-135M-Instruct, or an
       OpenAI-compatible endpoint when `OPENAI_BASE_URL` is set);
    5. importing short chat data with counts of everything dropped (`longalign.data.short`);
    6. the mix written to `data/mixed.jsonl`, which the tokenize stage reads.

    Everything lands in one run directory (`runs/notebooks/01_data_construction/` by default). The CLI does
    the same with `longalign data corpus|generate|short|mix --run DIR`.
    """),
    params("""
    run_dir = "runs/notebooks/01_data_construction"  # relative to the repository root
    builtin_sources = ["pydoc", "stdlib-code"]        # texts installed on this machine
    min_tokens = 300                                  # corpus length filter (target-model tokens)
    max_tokens = 4000
    n_docs = 8                                        # documents sampled (longer ones upsampled)
    generator = ""             # "" = openai:$OPENAI_MODEL when OPENAI_BASE_URL is set, else local:smollm2
    generate_doc_ids = ["pydoc:dict"]  # corpus documents sent to the generator (missing ids: the shortest)
    task_types = ["extraction", "general"]  # the kinds a 135M generator manages best; all four for a large model
    question_max_tokens = 160  # reply budget of the question request
    answer_max_tokens = 96     # reply budget of the answer request
    max_question_attempts = 2
    max_prompt_tokens = 1024   # the generator sees at most this many tokens of a document
    short_inputs = []          # ShareGPT / messages files; [] = the sample shipped with the package
    n_long = "all"             # long examples in the mix: all, a number, or 0k/5k/10k
    seed = 42
    """),
    setup('''
    from longalign.data.corpus import CorpusConfig, build_corpus, detect_lang
    from longalign.rundir import RunDir, read_jsonl
    from longalign.config import to_dict

    run = RunDir(ROOT / run_dir)
    print("run directory:", run.root)
    '''),
    md("""
    ## 1. The corpus

    `build_corpus` reads documents, drops empty, duplicate and out-of-range ones, counts tokens with the
    **target model's tokenizer** (the paper's 8k–64k range is in those tokens), and samples `n_docs` with
    longer documents weighted up by length bucket. The built-in source needs no download: Python's help
    topics (`pydoc`), large standard-library modules, package descriptions and licence files. A `.jsonl`
    file, a folder of `.txt`/`.md` files or `hf:<dataset>` work the same way.
    """),
    code('''
    corpus_cfg = CorpusConfig(input="builtin", builtin_sources=list(builtin_sources), min_tokens=min_tokens,
                              max_tokens=max_tokens, n_docs=n_docs, seed=seed)
    docs, corpus_summary = build_corpus(corpus_cfg, run.corpus)
    run.record_stage("data.corpus", to_dict(corpus_cfg), summary=corpus_summary)
    display(pd.DataFrame([{"id": d["id"], "source": d["source"], "lang": d["lang"], "n_tokens": d["n_tokens"],
                           "characters": len(d["text"]), "chars/token": round(len(d["text"]) / d["n_tokens"], 2)}
                          for d in docs]))
    pd.Series({k: v for k, v in corpus_summary.items() if not isinstance(v, dict)}, name="corpus").to_frame()
    '''),
    md("""
    What was dropped, and why (every filter is counted — nothing disappears silently):
    """),
    code('''
    display(pd.DataFrame({"dropped": corpus_summary["dropped"]}))
    import plotly.express as px

    fig = px.bar(pd.DataFrame(docs), x="id", y="n_tokens", color="source", title="Sampled documents (tokens)",
                 template="plotly_white", height=330)
    fig.update_layout(xaxis_title="", margin=dict(b=120))
    fig.show()
    '''),
    md("""
    **Language.** Prompts are chosen by the document's language (the paper keeps ~10% Chinese). Detection
    looks at the letters' scripts, weighting one CJK ideograph like a short Latin word, so a Chinese text
    quoting code still counts as Chinese:
    """),
    code('''
    samples = {
        "English prose": "The interpreter reads the module once and caches the compiled code.",
        "Chinese with code": "使用 `open()` 打开文件后，请记得调用 close() 方法来释放资源。",
        "Japanese": "このモジュールはファイルを読み込みます。",
        "Russian": "Модуль читает файл и возвращает строки.",
        "Digits only": "12345 67890",
    }
    pd.DataFrame([{"text": t, "detected": detect_lang(t)} for t in samples.values()], index=list(samples))
    '''),
    md("""
    ## 2. Task types and prompts

    The paper asks for questions of four kinds so that the data covers more than look-up: **general**
    questions, **summary** (integrating several parts), multi-hop **reasoning**, and information
    **extraction**. Each request ends with the same format instruction: five questions, one per line,
    numbered `1:` … `5:`. Our wording, in English and Chinese:
    """),
    code('''
    from longalign.data.selfinstruct import TASK_TYPES, answer_prompt, question_prompt, task_instruction

    for t in TASK_TYPES:
        print(f"--- {t} (en)\\n{task_instruction(t, 'en')}\\n")
    print(f"--- summary (zh)\\n{task_instruction('summary', 'zh')}")
    '''),
    md("""
    The full user message puts the document first and the instruction after it. A retry after a rejected
    attempt appends a note naming what was wrong, so it is a different request (and not a cache hit):
    """),
    code('''
    doc = min(docs, key=lambda d: d["n_tokens"])
    excerpt = doc["text"][:300] + " …"
    print(question_prompt(excerpt, "reasoning", doc["lang"], rejected_reasons=["duplicate", "placeholder"]))
    print("\\n=== answer request ===")
    print(answer_prompt(excerpt, "What does the text say about X?", doc["lang"]))
    '''),
    md("""
    ## 3. Parsing and validating questions

    A small generator does not follow the format reliably: it echoes the placeholder, repeats one question,
    copies the instruction back, or writes two questions and then prose. `parse_questions` accepts the
    numbering variants models actually produce and records (rather than fails on) extra text;
    `validate_questions` rejects placeholders, duplicates, near-duplicates, echoes of the instruction,
    fragments and statements. The replies below are written to show each case:
    """),
    code('''
    from longalign.data.selfinstruct import parse_questions, validate_questions

    replies = {
        "well formed": "1: What problem does the with statement solve?\\n2: Which two methods must a context "
                       "manager define?\\n3: When is __exit__ called if the body raises?\\n4: How can __exit__ "
                       "suppress an exception?\\n5: What does the as clause bind?",
        "placeholder echo": "1: <question>\\n2: <question>\\n3: <question>\\n4: <question>\\n5: <question>",
        "repeated": "1. What is a context manager?\\n2. What is a context manager?\\n3. What is a context "
                    "manager ?\\n4. Why use with?\\n5. What does __enter__ return?",
        "instruction echo": "1: Write five questions about the text above.\\n2: Put each question on its own "
                            "line.\\n3: What does __enter__ return?",
        "two then prose": "**1.** How is __exit__ called?\\n**2)** What happens on an exception?\\nThese "
                          "questions cover the main ideas of the text.",
        "inline, Chinese": "1：上下文管理器需要定义哪些方法？ 2：异常发生时会调用什么？ 3：as 子句绑定的是什么？",
    }
    rows = []
    for name, reply in replies.items():
        lang = "zh" if "Chinese" in name else "en"
        parsed = parse_questions(reply)
        ok, bad = validate_questions(parsed.questions, lang=lang, instruction=task_instruction("general", lang))
        rows.append({"reply": name, "parsed": len(parsed.questions), "accepted": len(ok),
                     "rejected": ", ".join(f"{r['reason']}" for r in bad) or "—",
                     "parse issues": "; ".join(parsed.issues) or "—"})
    pd.DataFrame(rows).set_index("reply")
    '''),
    md("""
    An attempt is accepted when at least `min_questions` (3) questions pass; otherwise the job retries with a
    new seed, and every second retry with another task type. Everything rejected is kept in the record's
    `rejected` list, and a document that never yields usable questions goes to `data/failed.jsonl`.

    ## 4. One real Self-Instruct round trip

    Now the real thing on one short corpus document: a question request, validation, one question chosen
    at random, and the answer request. With no endpoint configured the embedded SmolLM2-135M-Instruct
    generates on the CPU (expect a sample of its quality, and a minute or so; with other documents it often
    writes statements instead of questions, which validation rejects — the failure then shows up below). Set `OPENAI_BASE_URL`
    (and `OPENAI_MODEL`, `OPENAI_API_KEY`) to use any OpenAI-compatible server instead. Requests are cached
    in `data/llm_cache/` and logged in `data/llm_calls.jsonl`, so re-running this cell costs nothing.
    """),
    code('''
    from longalign.data.selfinstruct import GenerateConfig, failed_path, generate_long_data

    spec, base_url = generator, None
    if not spec:
        if os.environ.get("OPENAI_BASE_URL"):
            spec = "openai:" + os.environ.get("OPENAI_MODEL", "gpt-4o-mini")
            base_url = os.environ["OPENAI_BASE_URL"]
        else:
            spec = "local:smollm2"
    by_id = {d["id"]: d for d in docs}
    shortest = [d for d in sorted(docs, key=lambda d: d["n_tokens"]) if d["id"] not in generate_doc_ids]
    gen_docs = [by_id[i] if i in by_id else shortest.pop(0) for i in generate_doc_ids]
    gen_cfg = GenerateConfig(llm=spec, base_url=base_url, task_types=list(task_types),
                             question_max_tokens=question_max_tokens,
                             answer_max_tokens=answer_max_tokens, max_question_attempts=max_question_attempts,
                             max_prompt_tokens=max_prompt_tokens, seed=seed)
    print(f"generator: {spec}; documents: {[d['id'] for d in gen_docs]}")
    gen_summary = generate_long_data(gen_cfg, run, docs=gen_docs, progress=False)
    run.record_stage("data.generate", to_dict(gen_cfg), summary=gen_summary.to_dict())
    pd.Series(gen_summary.to_dict(), name="generate").to_frame()
    '''),
    md("""
    The record written to `data/long.jsonl` (the document itself is shortened here for display), and
    the log of every request:
    """),
    code('''
    ids = {d["id"] for d in gen_docs}
    long_records = read_jsonl(run.long)
    for rec in (r for r in long_records if r["doc_id"] in ids):
        print("doc:", rec["doc_id"], "| task type:", rec["task_type"], "| model:", rec["model"])
        print("questions:", *[f"  {i + 1}: {q}" for i, q in enumerate(rec["questions"])], sep="\\n")
        print("chosen:", rec["question"])
        print("answer:", rec["messages"][1]["content"][:600])
        print("rejected on the way:", [(r["stage"], r["reason"]) for r in rec["rejected"]] or "nothing")
        print("user turn = document + question:", len(rec["messages"][0]["content"]), "characters\\n")
    for rec in (r for r in read_jsonl(failed_path(run)) if r["doc_id"] in ids and r["doc_id"] not in
                {x["doc_id"] for x in long_records}):
        print("FAILED:", rec["doc_id"], rec["reason"], [(r.get("reason")) for r in rec["rejected"]])
    calls = pd.DataFrame(read_jsonl(run.llm_calls))
    calls[[c for c in ("model", "status", "usage", "latency", "cached") if c in calls]]
    '''),
    md("""
    ## 5. Short chat data

    ShareGPT dumps are messy. `load_short_data` maps roles (`human`/`gpt`/… → user/assistant), drops system
    turns by default, removes **empty assistant replies together with the question they answer** (the
    paper's rule), merges consecutive turns of one role, drops trailing questions without a reply and
    duplicates — and counts each change. The package ships a small ShareGPT-format sample:
    """),
    code('''
    from longalign.data.short import ShortConfig, load_short_data, write_jsonl
    from longalign.data.mix import mix_files

    sample = ROOT / "longalign" / "resources" / "short_chat_sample.json"
    short_cfg = ShortConfig(inputs=[str(p) for p in short_inputs] or [str(sample)], seed=seed)
    short_records, short_report = load_short_data(short_cfg)
    write_jsonl(run.short, short_records)
    run.record_stage("data.short", to_dict(short_cfg), summary=short_report.to_dict())
    print(f"read {short_report.read} conversations, kept {short_report.kept}")
    display(pd.DataFrame({"conversations dropped": short_report.dropped_conversations}))
    display(pd.DataFrame({"turns dropped or merged": short_report.dropped_turns}))
    '''),
    md("""
    ## 6. The mix

    `mix` keeps every short conversation and adds `n_long` long examples (the paper's suites: 0k, 5k, 10k),
    shuffled with a seed, into `data/mixed.jsonl` — the input of notebook 2.
    """),
    code('''
    mix_counts = mix_files(run.long, run.short, run.mixed, n_long=n_long if long_records else 0, seed=seed)
    run.record_stage("data.mix", {"n_long": n_long, "seed": seed}, summary=mix_counts)
    display(pd.Series({k: v for k, v in mix_counts.items() if not isinstance(v, dict)}, name="mix").to_frame())
    mixed = pd.DataFrame(read_jsonl(run.mixed))
    mixed["characters"] = [sum(len(m["content"]) for m in ms) for ms in mixed["messages"]]
    fig = px.strip(mixed, x="characters", color="kind", log_x=True, template="plotly_white", height=260,
                   title="Mixed data: long examples vs short chats (characters per example)")
    fig.show()
    '''),
    md("""
    Next: `02_tokenize_and_pack.ipynb` tokenizes this mix with the loss on assistant tokens only and
    compares naive, sorted and packed batching.
    """),
]

# ==========================================================================================================
# 02 tokenize and pack
# ==========================================================================================================

NB02 = [
    md("""
    # 2 · Tokenize and pack

    Long-context SFT data is wildly uneven: a few 10k–64k-token documents among many chats of a few hundred
    tokens. How those sequences are put into batches decides how much of the compute is spent on padding,
    and how long the other GPUs wait for the one holding the longest sequence. This notebook:

    1. tokenizes a small mix with the embedded tokenizer, loss on assistant tokens only (`longalign.tokenize`);
    2. shows the label mask of one example and the length distribution;
    3. plans naive, sorted and packed batches (`longalign.batching.make_plan`) and compares them;
    4. opens one pack: its fill, its block-diagonal attention mask and per-token loss weights;
    5. runs the step-time simulator for an 8-GPU setup.

    Input: `data/mixed.jsonl` of notebook 1's run directory when it exists; otherwise the packaged short
    chat sample plus the long examples found there (none on a fresh checkout).
    """),
    params("""
    run_dir = "runs/notebooks/02_tokenize_and_pack"
    data_run = "runs/notebooks/01_data_construction"   # where mixed.jsonl comes from, if present
    max_len = 1024          # truncation length of a row and capacity of a pack
    batch_size = 4          # sequences per padded micro-batch (naive, sort)
    algo = "ffd"            # packing algorithm: nextfit | ffd | bfd
    sim_sequences = 5000    # simulator: dataset size, resampled from the lengths above
    sim_devices = 8         # simulator: data-parallel GPUs
    sim_grad_accum = 2      # simulator: micro-batches per GPU per step (naive, sort)
    seed = 0
    """),
    setup('''
    import shutil

    import numpy as np

    from longalign import report
    from longalign.rundir import RunDir, read_jsonl

    run = RunDir(ROOT / run_dir)
    source = RunDir(ROOT / data_run)
    run.data.mkdir(parents=True, exist_ok=True)
    if source.mixed.is_file():
        shutil.copyfile(source.mixed, run.mixed)
        print("mix from", source.mixed)
    else:  # no notebook-1 run yet: the packaged short sample alone
        from longalign.data.short import ShortConfig, load_short_data, write_jsonl
        from longalign.data.mix import mix

        shorts, _ = load_short_data(ShortConfig(inputs=[str(ROOT / "longalign/resources/short_chat_sample.json")]))
        write_jsonl(run.short, shorts)
        write_jsonl(run.mixed, mix([], shorts, n_long=0, seed=seed)[0])
        print("no mixed.jsonl in", source.root, "- using the packaged short chat sample")
    if source.short.is_file():
        shutil.copyfile(source.short, run.short)
    print(len(read_jsonl(run.mixed)), "examples in", run.mixed)
    '''),
    md("""
    ## 1. Tokenize

    Each conversation is rendered with the tokenizer's chat template and tokenized as a whole; the tokens of
    assistant replies (and the end-of-turn token that closes each reply, so the model learns to stop) keep
    their ids in `labels`, everything else gets `-100`. Rows are stored ragged in an Arrow dataset — no
    padding on disk.
    """),
    code('''
    from longalign.tokenize import TokenizeConfig, load_tokens, tokenize_file
    from longalign.config import to_dict

    tok_cfg = TokenizeConfig(model="smollm2", max_len=max_len, truncation="right")
    result = tokenize_file(run.mixed, run.tokens, tok_cfg, show_progress=False)
    run.record_stage("tokenize", to_dict(tok_cfg), summary={"n_rows": result.n_rows, "n_tokens": result.n_tokens})
    ds, meta = load_tokens(run.tokens)
    print(f"{result.n_rows} rows, {result.n_tokens} tokens ({result.n_target_tokens} targets), "
          f"{result.n_truncated} truncated, {result.n_boundary_mismatch} boundary mismatches, "
          f"{result.seconds:.2f} s")
    pd.Series(meta).to_frame("tokens/longalign_meta.json")
    '''),
    md("""
    **The label mask of one example.** Grey tokens are context (label `-100`, no loss); green tokens are
    what the model is trained to write. Note the end-of-turn token inside the green span and the
    assistant header outside it.
    """),
    code('''
    from longalign.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2")
    table = report.load_token_table(run)
    multi = [i for i, r in enumerate(read_jsonl(run.mixed)) if len(r["messages"]) > 2]
    row = multi[0] if multi else int(table.sort_values("length").idx.iloc[len(table) // 2])
    ids, labels = ds[row]["input_ids"], ds[row]["labels"]

    def strip_html(ids, labels, limit=400):
        spans = []
        for t, l in list(zip(ids, labels))[:limit]:
            piece = tokenizer.decode([t]).replace("&", "&amp;").replace("<", "&lt;").replace("\\n", "⏎")
            colour = "#C7E9C0" if l != -100 else "#EEEEEE"
            spans.append(f'<span style="background:{colour};border:1px solid #fff;font-family:monospace;'
                         f'font-size:12px">{piece}</span>')
        return "<div style='line-height:1.9'>" + "".join(spans) + "</div>"

    print(f"row {row}: {len(ids)} tokens, {sum(l != -100 for l in labels)} targets")
    display(HTML(strip_html(ids, labels)))
    '''),
    md("""
    **Lengths.** The paper's figure splits the range in two panels; here, short chats and long examples
    (by `kind`), in tokens of the embedded tokenizer:
    """),
    code('''
    display(report.mix_summary(table))
    report.fig_length_distribution(table, by="kind", split=max(64, max_len // 4), upper=max_len).show()
    '''),
    md("""
    ## 2. Three batching plans

    * **naive** — random batches of `batch_size`, each padded to its longest member;
    * **sort** — batches of similar lengths (sorted, then the batch order shuffled), little padding;
    * **pack** — sequences bin-packed into packs of at most `max_len` tokens (first-fit decreasing by
      default), one pack per micro-batch, no padding at all.

    A plan is only lists of row indices, made from the `length` column; the tokens are not touched.
    """),
    code('''
    from longalign.batching import make_plan

    lengths = table["length"].to_numpy()
    plans = {}
    for method in ("naive", "sort", "pack"):
        plans[method] = make_plan(lengths, method, max_len=max_len, batch_size=batch_size, algo=algo, seed=seed)
        plans[method].save(run.batch_stats(method), run.batch_plan(method))
    keys = ["n_sequences", "n_tokens", "n_batches", "lower_bound", "computed_tokens", "efficiency",
            "padding_fraction", "attention_cost_ratio"]
    pd.DataFrame({m: {k: p.stats.get(k) for k in keys} for m, p in plans.items()})
    '''),
    md("""
    The same plans side by side as the dashboard draws them: padding share of the computed tokens, fill of
    the `max_len` capacity, attention work relative to the useful (block-diagonal causal) pairs, and how
    long ranks would sit idle if each micro-batch cost its computed tokens.
    """),
    code('''
    comparison = report.method_comparison(run, lengths)
    display(comparison.set_index("method")[["micro-batches", "mean seqs/batch", "real tokens", "tokens computed",
                                            "padding fraction", "fill", "attention cost ×"]])
    report.fig_method_comparison(comparison).show()
    '''),
    md("""
    **Per-pack fill.** Packing with first-fit decreasing leaves only the last few packs partly empty:
    """),
    code('''
    pack_table = report.batch_table(plans["pack"].batches, np.minimum(lengths, max_len), True, max_len)
    report.fig_batch_fill(pack_table, packed=True, sort=True).show()
    '''),
    md("""
    ## 3. Inside one pack

    A pack is one row. Its attention mask is **block-diagonal and causal**: each sequence sees only its own
    earlier tokens, and `position_ids` restart at 0 for each sequence. The packed collator sets the label at
    each sequence start to `-100`, so no token is predicted from the previous sequence. The token strip
    shows which sequence owns each position, where the loss is taken, and the per-token loss weight under
    the LongAlign *sequence* normalisation (short sequences get larger per-token weights; notebook 3 explains why).
    """),
    code('''
    k = report.default_batch(plans["pack"].batches, lengths)
    view = report.batch_view(run, "pack", k, loss_norm="sequence", token_table=table)
    display(view.table)
    report.fig_attention_mask(view).show()
    report.fig_token_strip(view).show()
    '''),
    md("""
    For contrast, a naive padded batch of the same data: rows padded to the longest member (grey), and a
    causal mask per row whose padded part is still computed by the kernel.
    """),
    code('''
    nv = report.batch_view(run, "naive", report.default_batch(plans["naive"].batches, lengths), token_table=table)
    report.fig_attention_mask(nv).show()
    '''),
    md("""
    The collator turns a pack into model inputs; this is what the trainer feeds the model:
    """),
    code('''
    from longalign.batching import PackedCollator, plan_features, token_weights

    weights = token_weights(plans["pack"], table["n_target"].to_numpy(), "sequence")
    batch = PackedCollator(max_len)(plan_features(ds, plans["pack"].batches[k], weights))
    print({key: (tuple(v.shape) if hasattr(v, "shape") else v) for key, v in batch.items()})
    print("cu_seqlens:", batch["cu_seqlens"].tolist())
    print("position_ids around the first boundary:",
          batch["position_ids"][0, max(0, int(batch["cu_seqlens"][1]) - 3): int(batch["cu_seqlens"][1]) + 3].tolist())
    '''),
    md("""
    ## 4. The simulator: why this matters on 8 GPUs

    The simulator prices each micro-batch as `a·tokens + b·attention + c` (defaults: a 7B Llama at an
    effective 150 TFLOP/s) and lets the devices of a data-parallel group wait for the slowest one at every
    micro-batch, as ZeRO-3 does. With random batches one long sequence on one device stalls the rest; sorting
    and packing even the load out. A few dozen sequences make barely one step on 8 GPUs, so the simulated
    dataset is `sim_sequences` lengths drawn with replacement from ours (same distribution, more steps). On
    toy lengths the absolute seconds are tiny — the ratios are the point.
    """),
    code('''
    from longalign.batching import simulate
    from longalign.rundir import atomic_write_json

    sim_lengths = np.random.default_rng(seed).choice(lengths, size=sim_sequences, replace=True)
    sim = simulate(sim_lengths, ("naive", "sort", "pack"), max_len=max_len, devices=sim_devices, batch_size=batch_size,
                   grad_accum=sim_grad_accum, algo=algo, seed=seed)
    atomic_write_json(run.batching / "simulate.json", sim)
    sim_config, sim_table = report.load_simulation(run)
    display(sim_table.set_index("method")[["total_seconds", "idle_fraction", "n_steps", "efficiency",
                                           "speed-up vs slowest"]])
    report.fig_simulation(sim_table).show()
    '''),
    md("""
    The dashboard (`longalign app`) shows the same figures for any run directory, and the CLI writes the same
    files: `longalign tokenize --run DIR`, `longalign batch plan --run DIR --method pack`,
    `longalign batch simulate --run DIR`. Next: `03_loss_weighting.ipynb`.
    """),
]

# ==========================================================================================================
# 03 loss weighting
# ==========================================================================================================

NB03 = [
    md("""
    # 3 · Loss weighting

    Packing changes *what the loss means*. With sequence i contributing summed token loss $L_i$ over its
    $N_i$ target tokens, and $M$ sequences in an optimizer step, the loss we want treats every sequence
    alike (the paper's eq. 2):

    $$\\mathcal{L}_{seq} = \\frac{1}{M}\\sum_i \\frac{L_i}{N_i}.$$

    Plain packing takes the mean over the target tokens of each pack and then the mean over the $K$ packs
    of the step (eq. 3):

    $$\\mathcal{L}_{pack} = \\frac{1}{K}\\sum_k \\frac{\\sum_{i\\in k} L_i}{\\sum_{i\\in k} N_i},$$

    which favours sequences with many target tokens and packs with few sequences. The fix (eq. 4) scales
    the loss of sequence i by $K/(N_i M)$ inside each pack, which turns eq. 3 back into eq. 2. A third
    choice, the token mean $\\frac{1}{T}\\sum_i L_i$, weighs sequences by their number of targets.

    `longalign.batching.token_weights` gives, per sequence, the weight of **each of its target tokens** in
    the step loss for any of the three normalisations; the collators spread it over the tokens and
    `weighted_causal_lm_loss` sums `weight × cross-entropy`. This notebook checks all of that numerically.
    """),
    params("""
    vocab = 50            # toy vocabulary of the random logits
    prompt_tokens = 8     # context tokens (no loss) at the start of every sequence
    long_targets = 950    # target tokens of the long sequence of section 1
    long_boost = 4.0      # section 2: how much better the model already predicts the long sequence
    seed = 0
    """),
    setup('''
    import numpy as np
    import plotly.graph_objects as go
    import torch

    from longalign import IGNORE_INDEX
    from longalign.batching import (PackedCollator, PaddedCollator, count_targets, make_plan, plan_features,
                                    token_weights, weighted_causal_lm_loss)
    _ = torch.manual_seed(seed)
    '''),
    md("""
    ## 1. A step where the bias shows

    Six sequences, packed into packs of at most 1,024 tokens: one long sequence (950 target tokens) fills a
    pack on its own, five short ones (100 targets each) share the other. One optimizer step = both packs
    (`grad_accum=2`).
    """),
    code('''
    targets = np.array([long_targets, 100, 100, 100, 100, 100])
    lengths = targets + prompt_tokens

    def make_sequence(i, n_tokens):
        """Token ids and labels of a toy sequence: prompt_tokens of context, then targets."""
        g = torch.Generator().manual_seed(seed * 1000 + i)
        ids = torch.randint(0, vocab, (int(n_tokens),), generator=g).tolist()
        labels = [IGNORE_INDEX] * prompt_tokens + ids[prompt_tokens:]
        return {"input_ids": ids, "labels": labels}

    data = [make_sequence(i, n) for i, n in enumerate(lengths)]
    n_target = np.array([count_targets(d["labels"]) for d in data])  # targets the shifted loss sees
    plan = make_plan(lengths, "pack", max_len=1024, grad_accum=2)
    print("packs:", plan.batches, "| targets per sequence:", n_target.tolist())
    '''),
    md("""
    **Effective weight of each sequence** = its per-token weight × its number of target tokens: the share
    of the step loss that this sequence controls. Under the sequence normalisation every sequence gets
    $1/M = 1/6$; under the pack mean the long sequence alone gets half (it is alone in its pack) while each
    short one gets a tenth; under the token mean the long one gets 950/1,450.
    """),
    code('''
    norms = ("sequence", "token", "pack")
    w = {norm: token_weights(plan, n_target, norm) for norm in norms}
    effective = pd.DataFrame({norm: w[norm] * n_target for norm in norms})
    effective.insert(0, "targets", n_target)
    effective.insert(0, "in pack", [next(k for k, b in enumerate(plan.batches) if i in b) for i in range(len(data))])
    display(effective.round(4))
    fig = go.Figure([go.Bar(name=norm, x=[f"seq {i} ({n} targets)" for i, n in enumerate(n_target)],
                            y=effective[norm]) for norm in norms])
    fig.update_layout(barmode="group", template="plotly_white", height=340, yaxis_title="share of the step loss",
                      title="Effective weight per sequence under each normalisation")
    fig.show()
    '''),
    md("""
    The formulas behind the table, checked exactly: sequence $1/(N_i M)$, token $1/T$, pack $1/(N_k K)$.
    And eq. 4: taking the pack mean ($1/K$ over packs) of each pack's *sum* of $L_i$ scaled by $K/(N_i M)$
    leaves every target token of sequence i with weight $1/(N_i M)$, the sequence weight.
    """),
    code('''
    M, T, K = len(data), n_target.sum(), len(plan.batches)
    pack_of = effective["in pack"].to_numpy()
    N_k = np.array([n_target[b].sum() for b in plan.batches])
    assert np.allclose(w["sequence"], 1 / (n_target * M))
    assert np.allclose(w["token"], 1 / T)
    assert np.allclose(w["pack"], 1 / (N_k[pack_of] * K))
    eq4 = (1 / K) * (K / (n_target * M))  # (1/K) * sum over packs of the sum of K/(N_i M) * L_i
    assert np.allclose(eq4, w["sequence"])
    print("all weight formulas hold")
    '''),
    md("""
    ## 2. The weighted loss equals the formulas

    Give every sequence random logits, and make the model already good at the long sequence (its correct
    next-token logits raised by `long_boost`), as after a few epochs on a document it has seen. Collate each
    pack with the weights of one normalisation and sum `weighted_causal_lm_loss` over the packs of the
    step; compare with eq. 2, eq. 3 and the token mean computed directly from the per-sequence losses $L_i$
    (each computed on its sequence alone).
    """),
    code('''
    g = torch.Generator().manual_seed(seed)
    logits_of = [torch.randn(n, vocab, generator=g, dtype=torch.float64) for n in lengths]
    nxt = torch.tensor(data[0]["labels"][1:])
    at = torch.nonzero(nxt != IGNORE_INDEX).squeeze(1)
    logits_of[0][at, nxt[at]] += long_boost  # the long sequence is already predicted well

    def sequence_loss(i):
        """L_i: summed next-token cross-entropy over sequence i's targets, computed on the sequence alone."""
        lab = torch.tensor(data[i]["labels"])
        return float(torch.nn.functional.cross_entropy(logits_of[i][:-1], lab[1:], ignore_index=IGNORE_INDEX,
                                                       reduction="sum"))

    L = np.array([sequence_loss(i) for i in range(len(data))])
    direct = {
        "sequence": (L / n_target).sum() / M,                                              # eq. 2
        "pack": np.mean([L[b].sum() / n_target[b].sum() for b in plan.batches]),            # eq. 3
        "token": L.sum() / T,
    }

    def step_loss(batches, weights, packed=True):
        """Sum of the weighted loss over the given micro-batches."""
        collate = PackedCollator(4096, weights_dtype=torch.float64) if packed else \\
            PaddedCollator(0, weights_dtype=torch.float64)
        total = 0.0
        for b in batches:
            batch = collate(plan_features(data, b, weights))
            if packed:
                logits = torch.cat([logits_of[i] for i in b])[None]
            else:
                width = batch["labels"].shape[1]
                logits = torch.stack([torch.nn.functional.pad(logits_of[i], (0, 0, 0, width - len(logits_of[i])))
                                      for i in b])
            total += float(weighted_causal_lm_loss(logits, batch["labels"], batch["loss_weights"]))
        return total

    library = {norm: step_loss(plan.batches, w[norm]) for norm in norms}
    for norm in norms:
        assert np.isclose(library[norm], direct[norm], rtol=1e-12), (norm, library[norm], direct[norm])
    pd.DataFrame({"direct formula": direct, "token_weights + weighted_causal_lm_loss": library})
    '''),
    md("""
    How big is the bias? Each sequence's own mean token loss $L_i/N_i$, and the three step losses. The
    sequence mean is what the five badly predicted short sequences deserve (five sixths of the weight);
    the pack mean lets the one well-predicted long sequence own half of the step, and the token mean gives
    it two thirds — their gradients would mostly polish what the model already knows.
    """),
    code('''
    per_seq = pd.DataFrame({"L_i / N_i": L / n_target, "targets": n_target})
    display(per_seq.T.round(4))
    names = {"sequence": "sequence (eq. 2)", "token": "token mean", "pack": "pack mean (eq. 3)"}
    fig = go.Figure(go.Bar(x=[names[k] for k in norms], y=[direct[k] for k in norms],
                           marker_color=["#4C78A8", "#F58518", "#E45756"], text=[f"{direct[k]:.3f}" for k in norms],
                           textposition="outside"))
    fig.update_layout(template="plotly_white", height=300, yaxis_title="step loss",
                      title="The same step under three normalisations")
    fig.show()
    '''),
    md("""
    ## 3. The same loss across gradient accumulation × data parallelism

    The weights are computed per **optimizer step**, over all of its micro-batches on all ranks. Each rank
    sums `weight × CE` over its micro-batches; DDP averages gradients over ranks, so the trainer multiplies
    its per-rank sum by `world_size`. The step loss then depends neither on how the step is split over
    ranks and accumulation steps nor on whether its sequences are packed or padded.

    Below: 16 sequences of random lengths planned as one step of 4 micro-batches — 4 packs, or 4 sorted
    padded batches of 4 — split as 1 rank × 4 accumulation steps, 2 × 2 and 4 × 1. Two per-micro-batch
    means are shown for contrast: the pack/token mean per micro-batch (eq. 3, what a plain trainer computes)
    and a sequence mean taken inside each micro-batch (the weights $1/(N_i\\,B_k)$ of a micro-batch of $B_k$
    sequences, divided by `grad_accum` and averaged over ranks). Both move with the composition of the
    micro-batches, so packs and padded batches of the same 16 sequences give different losses.
    """),
    code('''
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 400, size=16) + prompt_tokens
    data = [make_sequence(100 + i, n) for i, n in enumerate(lengths)]
    n_target = np.array([count_targets(d["labels"]) for d in data])
    logits_of = [torch.randn(n, vocab, generator=g, dtype=torch.float64) for n in lengths]
    L = np.array([sequence_loss(i) for i in range(len(data))])
    eq2 = (L / n_target).sum() / len(data)
    # the smallest pack capacity (in steps of 8 tokens) at which first-fit decreasing makes exactly 4 packs
    pack_len = next(m for m in range(int(lengths.max()), int(lengths.sum()) + 8, 8)
                    if len(make_plan(lengths, "pack", max_len=m).batches) == 4)

    def step_on_ranks(plan, weights, packed):
        """DDP view of one step: each rank sums weight x CE over its micro-batches; the trainer scales the
        per-rank sum by world_size and DDP averages over ranks."""
        per_rank = [step_loss(plan.rank_batches(r), weights, packed) for r in range(plan.world_size)]
        return float(np.mean([plan.world_size * s for s in per_rank]))

    rows = []
    for method, max_len in (("pack", pack_len), ("sort", int(lengths.max()))):
        for world, accum in ((1, 4), (2, 2), (4, 1)):
            plan = make_plan(lengths, method, max_len=max_len, batch_size=4, world_size=world, grad_accum=accum,
                             seed=seed)
            assert len(plan.batches) == world * accum  # one optimizer step
            packed = method == "pack"
            in_batch_mean = np.zeros(len(data))
            for b in plan.batches:
                in_batch_mean[b] = 1.0 / (n_target[b] * len(b) * accum)
            rows.append({
                "layout": f"{method}: {world} rank(s) × {accum} accumulation",
                "sequences per micro-batch": [len(b) for b in plan.batches],
                "sequence norm (eq. 2/4)": step_on_ranks(plan, token_weights(plan, n_target, "sequence"), packed),
                "token norm": step_on_ranks(plan, token_weights(plan, n_target, "token"), packed),
                "per-batch token mean (eq. 3)": step_on_ranks(plan, token_weights(plan, n_target, "pack"), packed),
                "per-batch sequence mean": float(np.mean([step_loss(plan.rank_batches(r), in_batch_mean, packed)
                                                          for r in range(world)])),
            })
    split = pd.DataFrame(rows).set_index("layout")
    assert np.allclose(split["sequence norm (eq. 2/4)"], eq2, rtol=1e-12)
    assert np.allclose(split["token norm"], L.sum() / n_target.sum(), rtol=1e-12)
    print(f"eq. 2 computed directly: {eq2:.6f}   token mean: {L.sum() / n_target.sum():.6f}")
    split.round(6)
    '''),
    md("""
    The sequence and token normalisations reproduce their formulas to machine precision in every layout;
    the per-micro-batch means depend on which sequences happen to share a micro-batch. The trainer
    (`longalign.train`) uses exactly these weights (`loss_norm="sequence"` by default, `token` and `pack`
    for comparison), and its tests check 2 ranks × 1 accumulation step against 1 rank × 2 on a real model.
    Next: `04_training.ipynb`.
    """),
]

NB04 = [
    md("""
    # 4 · Training

    `longalign.train` runs full-parameter SFT on transformers' Trainer, with the data order and the loss
    weights decided by the batching stage: naive, sorted or packed batches, and the sequence / token / pack
    loss normalisation. This notebook trains a **tiny randomly initialised Llama** (2 layers, hidden size 64,
    `configs/models/tiny-llama`) for a few steps with each method, so it runs in seconds on a CPU, and plots
    loss curves and throughput from each run's `metrics.jsonl`.

    The same code fine-tunes the embedded SmolLM2-135M (`model="smollm2"`, ~100 tokens/s on two CPU cores)
    or a 7B model under DeepSpeed ZeRO-3 on GPUs (`configs/train/paper_64k_8gpu.yaml`).
    """),
    params("""
    run_dir = "runs/notebooks/04_training"
    data_run = "runs/notebooks/01_data_construction"   # mixed.jsonl from notebook 1, if present
    model = "random:configs/models/tiny-llama"          # relative to the repository root
    max_len = 1024          # long enough to keep the answer of notebook 1's long example
    batch_size = 2          # sequences per padded micro-batch (naive, sort)
    grad_accum = 2
    max_steps = 6
    learning_rate = 2e-3    # large: a random tiny model learns visibly in a few steps
    seed = 0
    """),
    setup('''
    import shutil

    import torch

    from longalign import report
    from longalign.rundir import RunDir, read_jsonl
    from longalign.tokenize import TokenizeConfig, tokenize_file
    from longalign.train import TrainConfig, train

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    run = RunDir(ROOT / run_dir)
    source = RunDir(ROOT / data_run)
    run.data.mkdir(parents=True, exist_ok=True)
    if source.mixed.is_file():
        shutil.copyfile(source.mixed, run.mixed)
    else:
        from longalign.data.short import ShortConfig, load_short_data, write_jsonl
        from longalign.data.mix import mix

        shorts, _ = load_short_data(ShortConfig(inputs=[str(ROOT / "longalign/resources/short_chat_sample.json")]))
        write_jsonl(run.mixed, mix([], shorts, n_long=0, seed=seed)[0])
    result = tokenize_file(run.mixed, run.tokens, TokenizeConfig(model="smollm2", max_len=max_len), show_progress=False)
    print(f"{result.n_rows} rows, {result.n_tokens} tokens, {result.n_target_tokens} target tokens; "
          f"{result.n_truncated} truncated, {result.n_dropped} dropped (no target token left after truncation)")
    # a random: spec with a relative config path is resolved against the repository root
    model_spec = f"random:{ROOT / model[7:]}" if model.startswith("random:") and not Path(model[7:]).is_absolute() \\
        else model
    '''),
    md("""
    ## 1. One run per batching method

    Each call writes `train/<name>/metrics.jsonl` (one line per optimizer step: loss, token-mean loss,
    sequences, packs, real and padded tokens, tokens/s), `run_meta.json` and, here, no checkpoints. Before a
    packed run the trainer checks on a two-sequence probe that the chosen attention backend keeps packed
    sequences apart (packed logits equal separate ones).
    """),
    code('''
    runs = {  # name: (method, loss_norm)
        "naive": ("naive", "sequence"),
        "sort": ("sort", "sequence"),
        "pack": ("pack", "sequence"),
        "pack-pack_norm": ("pack", "pack"),
    }
    results = {}
    for name, (method, loss_norm) in runs.items():
        out = run.train(name)
        if out.exists():
            shutil.rmtree(out)  # a fresh run each time the notebook executes
        cfg = TrainConfig(run=str(run.root), output_dir=str(out), model=model_spec, tokenizer="smollm2",
                          method=method, loss_norm=loss_norm, max_len=max_len, per_device_batch_size=batch_size,
                          grad_accum=grad_accum, max_steps=max_steps, learning_rate=learning_rate,
                          lr_scheduler="constant", warmup_ratio=0.0, precision="fp32", save_steps=0,
                          save_final=False, progress=False, seed=seed)
        results[name] = train(cfg)
        print(f"{name:16s} {results[name].steps} steps, final loss {results[name].final_loss:.4f}, "
              f"attention: {results[name].attention_backend}")
    '''),
    md("""
    ## 2. What the runs recorded

    The summary table and the curves come from `longalign.report`, the same functions the dashboard uses.
    `loss` is each run's own normalisation; `loss_token_mean` is the token mean of the same step for every
    run, so runs with different normalisations can be compared on one scale.
    """),
    code('''
    metrics = report.load_metrics(run)
    display(report.train_summary(run, metrics))
    report.fig_loss(metrics, y="loss").show()
    report.fig_loss(metrics, y="loss_token_mean").show()
    '''),
    md("""
    Throughput: real (non-padding) tokens per second of each step, and the cumulative wall time. Packing
    computes no padding at all; naive batches spend part of every step on it.
    """),
    code('''
    report.fig_throughput(metrics).show()
    totals = metrics.groupby("train", sort=False).agg(
        steps=("step", "max"), sequences=("sequences", "sum"), micro_batches=("packs", "sum"),
        real_tokens=("real_tokens", "sum"), computed_tokens=("padded_tokens", "sum"),
        target_tokens=("target_tokens", "sum"), mean_tokens_per_s=("tokens_per_s", "mean"))
    totals["padding share"] = 1 - totals["real_tokens"] / totals["computed_tokens"]
    totals.round(3)
    '''),
    md("""
    `run_meta.json` records what each run actually used (attention backend, RoPE base, plan statistics, and
    the packing check on packed runs):
    """),
    code('''
    meta = {name: r.run_meta for name, r in results.items()}
    pd.DataFrame({n: {k: m.get(k) for k in ("method", "loss_norm", "attention_backend", "rope_theta", "max_len",
                                             "grad_accum", "steps", "packing_check")} for n, m in meta.items()})
    '''),
    md("""
    On the command line: `longalign train --config configs/train/tiny_test.yaml --run DIR` (this model), or
    `configs/train/cpu_demo.yaml` for the embedded SmolLM2. Next: `05_evaluation.ipynb`.
    """),
]

# ==========================================================================================================
# 05 evaluation
# ==========================================================================================================

NB05 = [
    md("""
    # 5 · Evaluation

    Two long-context checks from the paper, at a size a CPU can run:

    1. **Needle in a haystack** — one sentence hidden at a chosen depth of a long filler text, and the
       question whose answer it is; a grid of context lengths × depths and a heatmap (`longalign.eval.needle`);
    2. **LongBench-Chat** scoring — a judge sees the question, the expert's reference answer, three answers
       with expert scores, and the answer to rate, and replies with `[[rating]]` (`longalign.eval.longbench_chat`,
       `longalign.eval.judge`). A small local model cannot follow that format, so the local judge reads the
       rating from its next-token probabilities instead.
    """),
    params("""
    run_dir = "runs/notebooks/05_evaluation"
    model = "smollm2"              # model under test: smollm2, an HF id, or a folder written by longalign train
    lengths = [600, 1000]          # needle grid: context lengths (tokens)
    depths = [40.0, 80.0]          # needle grid: depths (percent)
    max_new_tokens = 24
    judge = "local:smollm2"        # needle judge: "" = key-phrase recall only, or openai:<model>
    seed = 42
    """),
    setup('''
    import shutil

    import numpy as np
    import plotly.graph_objects as go

    from longalign import report
    from longalign.eval import needle
    from longalign.eval.generate import LocalGenerator
    from longalign.rundir import RunDir

    run = RunDir(ROOT / run_dir)
    if run.eval("needle").exists():
        shutil.rmtree(run.eval("needle"))  # recompute the grid on every execution
    generator = LocalGenerator(model)      # loaded once, shared by the needle grid and the local judge
    tokenizer = generator.tokenizer
    print("model under test:", generator.name)
    '''),
    md("""
    ## 1. Where the needle goes

    The haystack (Python's help topics here) is tokenized once with the **evaluated model's tokenizer**. For
    a context of L tokens the first `L − buffer − len(needle)` haystack tokens are kept, and the needle goes
    in at the last sentence boundary at or before `depth × length` — so it never splits a sentence.
    Sentence ends are found by decoding tokens, not by hard-coded ids.
    """),
    code('''
    hay = needle.Haystack(tokenizer, needle.load_haystack_texts("builtin"), max(lengths))
    needle_ids = needle.needle_ids_for(tokenizer, needle.PAPER_NEEDLE)
    rows = []
    for L in lengths:
        for d in depths:
            ctx = needle.insert_needle(hay, needle_ids, L, d, buffer=200)
            rows.append({"context_length": L, "depth %": d, "target position": ctx.target_pos,
                         "needle position": ctx.needle_token_pos, "moved back (tokens)": ctx.target_pos -
                         ctx.needle_token_pos, "context tokens": len(ctx.ids)})
    display(pd.DataFrame(rows))
    ctx = needle.insert_needle(hay, needle_ids, lengths[0], depths[0], buffer=200)
    a, b = max(0, ctx.needle_token_pos - 60), ctx.needle_token_pos + ctx.needle_len + 40
    window = tokenizer.decode(ctx.ids[a:b])
    display(HTML("<div style='font-family:monospace;white-space:pre-wrap;border:1px solid #ddd;padding:6px'>"
                 + report.highlight(window, needle.PAPER_NEEDLE) + "</div>"))
    '''),
    md("""
    A strip of the whole context: each cell is a block of tokens, the needle's block in red.
    """),
    code('''
    fig = go.Figure()
    for L in lengths:
        for d in depths:
            c = needle.insert_needle(hay, needle_ids, L, d, buffer=200)
            fig.add_trace(go.Scatter(x=[0, len(c.ids)], y=[f"{L} tok, {d:g}%"] * 2, mode="lines",
                                     line=dict(color="#DDDDDD", width=14), showlegend=False, hoverinfo="skip"))
            fig.add_trace(go.Scatter(x=[c.needle_token_pos, c.needle_token_pos + c.needle_len],
                                     y=[f"{L} tok, {d:g}%"] * 2, mode="lines", line=dict(color="#D62728", width=14),
                                     showlegend=False, hovertemplate="needle at token %{x}<extra></extra>"))
    fig.update_layout(template="plotly_white", height=80 + 40 * len(lengths) * len(depths),
                      xaxis_title="token position in the context", margin=dict(l=110, r=20, t=20, b=40))
    fig.show()
    '''),
    md("""
    ## 2. A small needle grid

    Each cell asks the model the paper's question with the context in the prompt (greedy decoding), and
    scores the answer twice: a deterministic **key-phrase recall** (share of the needle's content words in
    the answer) and, when `judge` is set, a 1–10 judge rating with the original harness's rubric. Results
    are appended per cell to `eval/needle/results.jsonl`, so an interrupted grid resumes.
    """),
    code('''
    cfg = needle.NeedleConfig(out=str(run.root), model=model, lengths=list(lengths), depths=list(depths),
                              max_new_tokens=max_new_tokens, judge=judge, seed=seed, progress=False)
    judge_obj = None
    if judge.startswith("local:"):
        from longalign.eval.judge import LocalJudge

        judge_obj = LocalJudge(judge, model=generator.model, tokenizer=tokenizer)  # reuse the loaded weights
    summary = needle.run_needle(cfg, generator=generator, judge=judge_obj)
    results = report.load_needle(run)
    display(results[["context_length", "depth_percent", "prompt_tokens", "response", "recall", "judge_score"]])
    pd.Series({k: summary[k] for k in ("n", "mean_recall", "mean_judge", "model", "judge")}).to_frame("summary")
    '''),
    code('''
    value = "judge_score" if results["judge_score"].notna().any() else "recall"
    report.fig_needle_heatmap(report.needle_grid(results, value), value).show()
    print("self-contained heatmap written to", run.eval("needle") / "heatmap.html")
    '''),
    md("""
    ## 3. The LongBench-Chat judge prompt

    The benchmark's files (`test_cases.json`, `few_shots.json`) are the user's to supply; here a small literal
    case shows how the prompt is assembled. The judge sees the **question, not the document**, the reference
    answer, three scored example answers (their order shuffled per judge run, as in the paper; two runs are
    averaged) and the answer to rate.
    """),
    code('''
    from longalign.eval.judge import JudgeRequest, LocalJudge, parse_rating
    from longalign.eval.longbench_chat import ChatCase, example_orders, judge_messages

    case = ChatCase(
        idx=1, prompt="(the long document and the question)", lang="en",
        query="According to the report, why did the bridge close in 2019, and for how long?",
        answer="It closed for seven months because inspectors found corrosion in two main cables.",
        examples=[{"answer": "Corrosion was found in two main cables, so it closed for seven months.", "score": 10},
                  {"answer": "It closed because of a storm.", "score": 2},
                  {"answer": "It was closed for repairs to its cables, for several months.", "score": 6}])
    prediction = "The bridge was shut for about seven months after corrosion was discovered in its cables."
    orders = example_orders(len(case.examples), n_runs=2, seed=seed, idx=case.idx)
    print("example order per judge run:", orders)
    messages = judge_messages(case, prediction, orders[0])
    for m in messages:
        print(f"===== {m['role']} =====\\n{m['content']}\\n")
    '''),
    md("""
    **Parsing `[[rating]]`.** The score is the number inside the *last* double bracket; full-width brackets
    (common in Chinese replies) are normalised; a bracket without a number, or a number outside 1–10, means
    "no rating" and the endpoint judge asks again (up to 5 times).
    """),
    code('''
    replies = ["The answer matches the reference closely. Rating: [[9]]",
               "Format: [[rating]]. My verdict: [[7.5]]",
               "评分：［［８］］",
               "Rating: [[8/10]]",
               "I would give it [[rating]]",
               "Score: 11 -> [[11]]",
               "Rating: **6**"]
    pd.DataFrame({"reply": replies, "parsed": [parse_rating(r) for r in replies]})
    '''),
    md("""
    ## 4. A local judge from next-token probabilities

    The embedded 135M model never writes `[[N]]` on its own. The local judge therefore forces the reply to
    start with `[[`, scores each rating r by the probability of the tokens `r]]` (a product over tokens, so
    "10" competes fairly with "1"), renormalises over 1–10, and reports the expected value (or the argmax)
    together with the probability mass the model put on valid ratings at all. A 135M judge is weak — treat
    its numbers as a smoke test and use a GPT-4-class endpoint for figures comparable with the paper.
    """),
    code('''
    local = judge_obj if isinstance(judge_obj, LocalJudge) else LocalJudge("local:smollm2", model=generator.model,
                                                                          tokenizer=tokenizer)
    outcome = local.rate(JudgeRequest(messages, 1, 10, seed=seed))
    dist = outcome.extra["distribution"]
    print(f"expected score {outcome.extra['expected']}, argmax {outcome.extra['argmax']}, "
          f"mass on valid ratings {outcome.extra['valid_mass']:.3f}, prompt tokens {outcome.prompt_tokens}")
    fig = go.Figure(go.Bar(x=list(dist), y=list(dist.values()), marker_color="#4C78A8"))
    fig.update_layout(template="plotly_white", height=280, xaxis_title="rating", yaxis_title="probability",
                      title="Local judge: rating distribution after a forced '[['")
    fig.show()
    '''),
    md("""
    The full benchmark runs from the CLI: `longalign eval longbench-chat --data DIR --judge openai:<model>
    --judge-base-url URL --out RUN` (predictions, judgments and a summary in `eval/longbench_chat/`), and
    `longalign eval needle --out RUN` for the paper's 10 × 10 grid. The dashboard's LongBench-Chat and Needle
    pages read those files.
    """),
]

NOTEBOOKS = {
    "01_data_construction.ipynb": NB01,
    "02_tokenize_and_pack.ipynb": NB02,
    "03_loss_weighting.ipynb": NB03,
    "04_training.ipynb": NB04,
    "05_evaluation.ipynb": NB05,
}


def build(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):  # stable ids keep diffs small when the notebooks are regenerated
        cell["id"] = f"cell-{i:02d}"
    return nb


def main(argv: list[str]) -> int:
    NB_DIR.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        if argv and not any(name.startswith(a) for a in argv):
            continue
        nb = build(cells)
        nbformat.validate(nb)
        nbformat.write(nb, NB_DIR / name)
        print("wrote", NB_DIR / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
