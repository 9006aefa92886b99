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
# # 2 · Tokenize and pack
#
# Long-context SFT data is wildly uneven: a few 10k–64k-token documents among many chats of a few hundred
# tokens. How those sequences are put into batches decides how much of the compute is spent on padding,
# and how long the other GPUs wait for the one holding the longest sequence. This notebook:
#
# 1. tokenizes a small mix with the embedded tokenizer, loss on assistant tokens only (`longalign.tokenize`);
# 2. shows the label mask of one example and the length distribution;
# 3. plans naive, sorted and packed batches (`longalign.batching.make_plan`) and compares them;
# 4. opens one pack: its fill, its block-diagonal attention mask and per-token loss weights;
# 5. runs the step-time simulator for an 8-GPU setup.
#
# Input: `data/mixed.jsonl` of notebook 1's run directory when it exists; otherwise the packaged short
# chat sample plus the long examples found there (none on a fresh checkout).

# %% tags=["parameters"]
run_dir = "runs/notebooks/02_tokenize_and_pack"
data_run = "runs/notebooks/01_data_construction"  # where mixed.jsonl comes from, if present
max_len = 1024  # truncation length of a row and capacity of a pack
batch_size = 4  # sequences per padded micro-batch (naive, sort)
algo = "ffd"  # packing algorithm: nextfit | ffd | bfd
sim_sequences = 5000  # simulator: dataset size, resampled from the lengths above
sim_devices = 8  # simulator: data-parallel GPUs
sim_grad_accum = 2  # simulator: micro-batches per GPU per step (naive, sort)
seed = 0

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

import numpy as np

from longalign.data.mix import provide_mix
from longalign.rundir import RunDir, read_jsonl
from longalign.views import lengths as lengths_view
from longalign.views import packing, readers, simulator

run = RunDir(ROOT / run_dir)
source = RunDir(ROOT / data_run)
origin = provide_mix(run, source, seed=seed)  # notebook 1's mix, or (no run of it yet) the packaged short sample
print("mix from", origin)
print(len(read_jsonl(run.mixed)), "examples in", run.mixed)

# %% [markdown]
# ## 1. Tokenize
#
# Each conversation is rendered with the tokenizer's chat template and tokenized as a whole; the tokens of
# assistant replies (and the end-of-turn token that closes each reply, so the model learns to stop) keep
# their ids in `labels`, everything else gets `-100`. Rows are stored ragged in an Arrow dataset — no
# padding on disk.

# %%
from longalign import tokenize
from longalign.tokenize import TokenizeConfig, load_tokens

tok_cfg = TokenizeConfig(model="smollm2", max_len=max_len, truncation="right")
result = tokenize.run(tok_cfg, run, show_progress=False)  # data/mixed.jsonl -> tokens/, recorded in run.json
ds, meta = load_tokens(run.tokens)
print(
    f"{result.n_rows} rows, {result.n_tokens} tokens ({result.n_target_tokens} targets), "
    f"{result.n_truncated} truncated, {result.n_boundary_mismatch} boundary mismatches, "
    f"{result.seconds:.2f} s"
)
pd.Series(meta).to_frame("tokens/longalign_meta.json")

# %% [markdown]
# **The label mask of one example.** Grey tokens are context (label `-100`, no loss); green tokens are
# what the model is trained to write. Note the end-of-turn token inside the green span and the
# assistant header outside it.

# %%
from longalign.models import load_tokenizer
from longalign.tokenize.display import label_strip_html

tokenizer = load_tokenizer("smollm2")
table = readers.load_token_table(run)
multi = [i for i, r in enumerate(read_jsonl(run.mixed)) if len(r["messages"]) > 2]
row = multi[0] if multi else int(table.sort_values("length").idx.iloc[len(table) // 2])
ids, labels = ds[row]["input_ids"], ds[row]["labels"]
print(f"row {row}: {len(ids)} tokens, {sum(t != -100 for t in labels)} targets")
display(HTML(label_strip_html(tokenizer, ids, labels, limit=400)))

# %% [markdown]
# **Lengths.** The paper's figure splits the range in two panels; here, short chats and long examples
# (by `kind`), in tokens of the embedded tokenizer:

# %%
display(lengths_view.mix_summary(table))
lengths_view.fig_length_distribution(table, by="kind", split=max(64, max_len // 4), upper=max_len).show()

# %% [markdown]
# ## 2. Three batching plans
#
# * **naive** — random batches of `batch_size`, each padded to its longest member;
# * **sort** — batches of similar lengths (sorted, then the batch order shuffled), little padding;
# * **pack** — sequences bin-packed into packs of at most `max_len` tokens (first-fit decreasing by
#   default), one pack per micro-batch.
#
# Two figures describe how much of the work is wasted, and they are easy to confuse
# (`longalign.batching.figures` defines them once; the batching stage's JSON, the dashboard and this notebook
# all use them):
#
# * **padding** — share of the *computed positions* that hold no token. A padded batch computes B × its longest
#   sequence; a pack computes only its own tokens (the packed collator is padding-free), so a pack has no
#   padding at all.
# * **fill** — share of the *max_len capacity* used: tokens / (rows × max_len), a row being one pack or one
#   padded sequence. A pack's fill is below 100% when it is not full; fuller packs mean fewer packs, i.e.
#   fewer steps.
#
# **Attention cost** is the causal attention pairs computed per useful pair: 1.00× wastes nothing.
#
# A plan is only lists of row indices, made from the `length` column; the tokens are not touched.

# %%
from longalign import batching
from longalign.batching import BatchPlanConfig

lengths = table["length"].to_numpy()
plans = {}
for method in ("naive", "sort", "pack"):
    plan_cfg = BatchPlanConfig(method=method, max_len=max_len, batch_size=batch_size, algo=algo, seed=seed)
    batching.run(plan_cfg, run)  # batching/<method>.json + .plan.json, recorded in run.json
    plans[method] = readers.load_plan(run, method, lengths)
# the batching stage's records (batching/<method>.json), under the names the dashboard gives them
recorded = packing.recorded_stats(run, list(plans))
display(recorded)

# %% [markdown]
# The same plans side by side as the dashboard's Packing page draws them: padding, fill, attention cost, and
# how long ranks would sit idle if each micro-batch cost its computed positions (none here: one device).

# %%
comparison = packing.method_comparison(run, lengths)
display(
    comparison.set_index("method")[
        [
            "micro-batches",
            "sequences per micro-batch",
            "tokens",
            "positions computed",
            "padding",
            "fill",
            "attention cost",
        ]
    ]
)
fig_methods = packing.fig_method_comparison(comparison)
fig_methods.show()

# %% [markdown]
# **Per-pack fill.** Packing with first-fit decreasing leaves only the last few packs partly empty
# (no pack has padding; fill is the share of its `max_len` it uses):

# %%
pack_table = packing.batch_table(plans["pack"].batches, np.minimum(lengths, max_len), True, max_len)
packing.fig_batch_fill(pack_table, packed=True, sort=True).show()

# %% [markdown]
# ## 3. Inside one pack
#
# A pack is one row. Its attention mask is **block-diagonal and causal**: each sequence sees only its own
# earlier tokens, and `position_ids` restart at 0 for each sequence. The packed collator sets the label at
# each sequence start to `-100`, so no token is predicted from the previous sequence. The token strip
# shows which sequence owns each position, where the loss is taken, and the per-token loss weight under
# the LongAlign *sequence* normalisation (short sequences get larger per-token weights; notebook 3 explains why).

# %%
k = packing.default_batch(plans["pack"].batches, lengths)
view = packing.batch_view(run, "pack", k, loss_norm="sequence", token_table=table)
display(view.table)
packing.fig_attention_mask(view).show()
packing.fig_token_strip(view).show()

# %% [markdown]
# For contrast, a naive padded batch of the same data: rows padded to the longest member (grey), and a
# causal mask per row whose padded part is still computed by the kernel.

# %%
nv = packing.batch_view(run, "naive", packing.default_batch(plans["naive"].batches, lengths), token_table=table)
packing.fig_attention_mask(nv).show()

# %% [markdown]
# The collator turns a pack into model inputs; this is what the trainer feeds the model:

# %%
from longalign.batching import PackedCollator, plan_features, token_weights

weights = token_weights(plans["pack"], table["n_target"].to_numpy(), "sequence")
batch = PackedCollator(max_len)(plan_features(ds, plans["pack"].batches[k], weights))
print({key: (tuple(v.shape) if hasattr(v, "shape") else v) for key, v in batch.items()})
print("cu_seqlens:", batch["cu_seqlens"].tolist())
print(
    "position_ids around the first boundary:",
    batch["position_ids"][0, max(0, int(batch["cu_seqlens"][1]) - 3) : int(batch["cu_seqlens"][1]) + 3].tolist(),
)

# %% [markdown]
# ## 4. The simulator: why this matters on 8 GPUs
#
# The simulator prices each micro-batch as `a·tokens + b·attention + c` (defaults: a 7B Llama at an
# effective 150 TFLOP/s) and lets the devices of a data-parallel group wait for the slowest one at every
# micro-batch, as ZeRO-3 does. With random batches one long sequence on one device stalls the rest; sorting
# and packing even the load out. A few dozen sequences make barely one step on 8 GPUs, so the simulated
# dataset is `sim_sequences` lengths drawn with replacement from ours (same distribution, more steps). On
# toy lengths the absolute seconds are tiny — the ratios are the point.

# %%
from longalign.batching import SimulateConfig

sim_lengths = np.random.default_rng(seed).choice(lengths, size=sim_sequences, replace=True)
sim_cfg = SimulateConfig(
    methods=["naive", "sort", "pack"],
    max_len=max_len,
    world_size=sim_devices,
    batch_size=batch_size,
    grad_accum=sim_grad_accum,
    algo=algo,
    seed=seed,
)
batching.run(sim_cfg, run, lengths=sim_lengths)  # batching/simulate.json
sim_config, sim_table = simulator.load_simulation(run)
display(
    sim_table.set_index("method")[
        [simulator.TIME, simulator.IDLE, "optimizer steps", "padding", "fill", simulator.SPEEDUP]
    ]
)
simulator.fig_simulation(sim_table).show()

# %% [markdown]
# ## What this notebook showed, checked
#
# Every plan holds each row once; its padding and fill, computed here from the plan's row lists and the token
# lengths, are what the batching stage's JSON records and what the comparison chart draws (a pack: no padding);
# the collated pack restarts its positions at each boundary; packing's simulated time beats random batching.

# %%
import json

assert result.n_rows == len(ds) == len(lengths) and int(lengths.max()) <= max_len
assert int(lengths.sum()) == result.n_tokens
shown = list(comparison["method"])
for method, plan in plans.items():
    assert sorted(i for b in plan.batches for i in b) == list(range(len(lengths))), method
    stage_json = json.loads((run.batching / f"{method}.json").read_text())
    real = sum(int(lengths[b].sum()) for b in plan.batches)
    computed = real if method == "pack" else sum(len(b) * int(lengths[b].max()) for b in plan.batches)
    rows_used = len(plan.batches) if method == "pack" else len(lengths)
    assert np.isclose(stage_json["padding_fraction"], 1 - real / computed), method
    assert np.isclose(stage_json["fill"], real / (rows_used * max_len)), method
    assert np.isclose(fig_methods.data[0].y[shown.index(method)], stage_json["padding_fraction"]), method
    assert np.isclose(fig_methods.data[1].y[shown.index(method)], stage_json["fill"]), method
assert all(int(lengths[b].sum()) <= max_len for b in plans["pack"].batches)
assert fig_methods.data[0].y[shown.index("pack")] == 0 < fig_methods.data[0].y[shown.index("naive")]
cu = batch["cu_seqlens"].tolist()
assert cu[: len(plans["pack"].batches[k]) + 1] == [0, *np.cumsum(lengths[plans["pack"].batches[k]]).tolist()]
assert all(int(batch["position_ids"][0, start]) == 0 for start in cu[:-1] if start < batch["position_ids"].shape[1])
simulated = json.loads((run.batching / "simulate.json").read_text())["methods"]
sim = sim_table.set_index("method")
for method in ("naive", "sort", "pack"):
    assert np.isclose(sim.loc[method, simulator.TIME], simulated[method]["total_seconds"]), method
assert simulated["pack"]["total_seconds"] < simulated["naive"]["total_seconds"]
print("checked: plans, stage JSON, charts, the pack's inputs and the simulation")

# %% [markdown]
# The dashboard (`longalign app`) shows the same figures for any run directory (this one is listed there as
# `notebooks/02_tokenize_and_pack`), and the CLI writes the same files: `longalign tokenize --run DIR`,
# `longalign batch plan --run DIR --method pack`, `longalign batch simulate --run DIR`.
#
# **Try this:** set `algo = "nextfit"` in the parameters cell and run the notebook again. Next-fit packs in
# input order and opens a new pack whenever the next sequence does not fit, so the pack count moves above the
# lower bound and the pack fill drops; the pack padding stays 0% (a pack still computes only its own tokens).
# Then set `max_len = 512`: longer sequences are cut to fit (the tokenize line counts them) and packing needs
# more packs, each holding at most 512 tokens, while naive and sorted batching keep their number of batches.
#
# Next: `03_loss_weighting.ipynb`.
