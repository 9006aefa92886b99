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
# # 3 · Loss weighting
#
# Packing changes *what the loss means*. With sequence i contributing summed token loss $L_i$ over its
# $N_i$ target tokens, and $M$ sequences in an optimizer step, the loss we want treats every sequence
# alike (the paper's eq. 2):
#
# $$\mathcal{L}_{seq} = \frac{1}{M}\sum_i \frac{L_i}{N_i}.$$
#
# Plain packing takes the mean over the target tokens of each pack and then the mean over the $K$ packs
# of the step (eq. 3):
#
# $$\mathcal{L}_{pack} = \frac{1}{K}\sum_k \frac{\sum_{i\in k} L_i}{\sum_{i\in k} N_i},$$
#
# which favours sequences with many target tokens and packs with few sequences. The fix (eq. 4) scales
# the loss of sequence i by $K/(N_i M)$ inside each pack, which turns eq. 3 back into eq. 2. A third
# choice, the token mean $\frac{1}{T}\sum_i L_i$, weighs sequences by their number of targets.
#
# `longalign.batching.token_weights` gives, per sequence, the weight of **each of its target tokens** in
# the step loss for any of the three normalisations; the collators spread it over the tokens and
# `weighted_causal_lm_loss` sums `weight × cross-entropy`. This notebook checks all of that numerically.

# %% tags=["parameters"]
vocab = 50  # toy vocabulary of the random logits
prompt_tokens = 8  # context tokens (no loss) at the start of every sequence
long_targets = 950  # target tokens of the long sequence of section 1
long_boost = 4.0  # section 2: how much better the model already predicts the long sequence
seed = 0

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

from functools import partial

import numpy as np
import plotly.graph_objects as go
import torch

from longalign.batching import count_targets, make_plan, reference, token_weights

_ = torch.manual_seed(seed)

# %% [markdown]
# ## 1. A step where the bias shows
#
# Six sequences, packed into packs of at most 1,024 tokens: one long sequence (950 target tokens) fills a
# pack on its own, five short ones (100 targets each) share the other. One optimizer step = both packs
# (`grad_accum=2`).

# %%
targets = np.array([long_targets, 100, 100, 100, 100, 100])
lengths = targets + prompt_tokens
data = [
    reference.toy_sequence(n, prompt_tokens=prompt_tokens, vocab=vocab, seed=seed * 1000 + i)
    for i, n in enumerate(lengths)
]
n_target = np.array([count_targets(d["labels"]) for d in data])  # targets the shifted loss sees
plan = make_plan(lengths, "pack", max_len=1024, grad_accum=2)
print("packs:", plan.batches, "| targets per sequence:", n_target.tolist())

# %% [markdown]
# **Effective weight of each sequence** = its per-token weight × its number of target tokens: the share
# of the step loss that this sequence controls. Under the sequence normalisation every sequence gets
# $1/M = 1/6$; under the pack mean the long sequence alone gets half (it is alone in its pack) while each
# short one gets a tenth; under the token mean the long one gets 950/1,450.

# %%
norms = ("sequence", "token", "pack")
w = {norm: token_weights(plan, n_target, norm) for norm in norms}
effective = pd.DataFrame({norm: w[norm] * n_target for norm in norms})
effective.insert(0, "targets", n_target)
effective.insert(0, "in pack", reference.batch_index(plan.batches, len(data)))
display(effective.round(4))
fig_shares = go.Figure(
    [
        go.Bar(name=norm, x=[f"seq {i} ({n} targets)" for i, n in enumerate(n_target)], y=effective[norm])
        for norm in norms
    ]
)
fig_shares.update_layout(
    barmode="group",
    template="plotly_white",
    height=340,
    yaxis_title="share of the step loss",
    title="Effective weight per sequence under each normalisation",
)
fig_shares.show()

# %% [markdown]
# The formulas behind the table, checked exactly: sequence $1/(N_i M)$, token $1/T$, pack $1/(N_k K)$.
# And eq. 4: taking the pack mean ($1/K$ over packs) of each pack's *sum* of $L_i$ scaled by $K/(N_i M)$
# leaves every target token of sequence i with weight $1/(N_i M)$, the sequence weight.

# %%
M, T, K = len(data), n_target.sum(), len(plan.batches)
pack_of = effective["in pack"].to_numpy()
N_k = np.array([n_target[b].sum() for b in plan.batches])
assert np.allclose(w["sequence"], 1 / (n_target * M))
assert np.allclose(w["token"], 1 / T)
assert np.allclose(w["pack"], 1 / (N_k[pack_of] * K))
eq4 = (1 / K) * (K / (n_target * M))  # (1/K) * sum over packs of the sum of K/(N_i M) * L_i
assert np.allclose(eq4, w["sequence"])
print("all weight formulas hold")

# %% [markdown]
# ## 2. The weighted loss equals the formulas
#
# Give every sequence random logits, and make the model already good at the long sequence (its correct
# next-token logits raised by `long_boost`), as after a few epochs on a document it has seen. Collate each
# pack with the weights of one normalisation and sum `weighted_causal_lm_loss` over the packs of the
# step; compare with eq. 2, eq. 3 and the token mean computed directly from the per-sequence losses $L_i$
# (each computed on its sequence alone).

# %%
g = torch.Generator().manual_seed(seed)
logits_of = reference.random_logits(lengths, vocab, g)
reference.boost_targets(logits_of[0], data[0]["labels"], long_boost)  # the long sequence is already predicted well

L = reference.sequence_losses(data, logits_of)  # L_i, each on its sequence alone
direct = reference.formula_step_losses(L, n_target, plan.batches)  # eq. 2, eq. 3 and the token mean
library = {norm: reference.weighted_step_loss(data, logits_of, plan.batches, w[norm]) for norm in norms}
for norm in norms:
    assert np.isclose(library[norm], direct[norm], rtol=1e-12), (norm, library[norm], direct[norm])
pd.DataFrame({"direct formula": direct, "token_weights + weighted_causal_lm_loss": library})

# %% [markdown]
# How big is the bias? Each sequence's own mean token loss $L_i/N_i$, and the three step losses. The
# sequence mean is what the five badly predicted short sequences deserve (five sixths of the weight);
# the pack mean lets the one well-predicted long sequence own half of the step, and the token mean gives
# it two thirds — their gradients would mostly polish what the model already knows.

# %%
per_seq = pd.DataFrame({"L_i / N_i": L / n_target, "targets": n_target})
display(per_seq.T.round(4))
names = {"sequence": "sequence (eq. 2)", "token": "token mean", "pack": "pack mean (eq. 3)"}
fig_steps = go.Figure(
    go.Bar(
        x=[names[k] for k in norms],
        y=[direct[k] for k in norms],
        marker_color=["#4C78A8", "#F58518", "#E45756"],
        text=[f"{direct[k]:.3f}" for k in norms],
        textposition="outside",
    )
)
fig_steps.update_layout(
    template="plotly_white", height=300, yaxis_title="step loss", title="The same step under three normalisations"
)
fig_steps.show()

# %% [markdown]
# ## 3. The same loss across gradient accumulation × data parallelism
#
# The weights are computed per **optimizer step**, over all of its micro-batches on all ranks. Each rank
# sums `weight × CE` over its micro-batches; DDP averages gradients over ranks, so the trainer multiplies
# its per-rank sum by `world_size`. The step loss then depends neither on how the step is split over
# ranks and accumulation steps nor on whether its sequences are packed or padded.
#
# Below: 16 sequences of random lengths planned as one step of 4 micro-batches — 4 packs, or 4 sorted
# padded batches of 4 — split as 1 rank × 4 accumulation steps, 2 × 2 and 4 × 1. Two per-micro-batch
# means are shown for contrast: the pack/token mean per micro-batch (eq. 3, what a plain trainer computes)
# and a sequence mean taken inside each micro-batch (the weights $1/(N_i\,B_k)$ of a micro-batch of $B_k$
# sequences, divided by `grad_accum` and averaged over ranks). Both move with the composition of the
# micro-batches, so packs and padded batches of the same 16 sequences give different losses.

# %%
rng = np.random.default_rng(seed)
lengths = rng.integers(20, 400, size=16) + prompt_tokens
data = [
    reference.toy_sequence(n, prompt_tokens=prompt_tokens, vocab=vocab, seed=seed * 1000 + 100 + i)
    for i, n in enumerate(lengths)
]
n_target = np.array([count_targets(d["labels"]) for d in data])
logits_of = reference.random_logits(lengths, vocab, g)
L = reference.sequence_losses(data, logits_of)
formulas = reference.formula_step_losses(L, n_target, [list(range(len(data)))])  # the 16 sequences, one step
eq2, token_mean = formulas["sequence"], formulas["token"]
# the smallest pack capacity (in steps of 8 tokens) at which first-fit decreasing makes exactly 4 packs
pack_len = reference.capacity_for_packs(lengths, 4, step=8)

rows = []
for method, max_len in (("pack", pack_len), ("sort", int(lengths.max()))):
    for world, accum in ((1, 4), (2, 2), (4, 1)):
        plan = make_plan(lengths, method, max_len=max_len, batch_size=4, world_size=world, grad_accum=accum, seed=seed)
        assert len(plan.batches) == world * accum  # one optimizer step
        step = partial(reference.ddp_step_loss, plan, data, logits_of, packed=method == "pack")
        rows.append(
            {
                "layout": f"{method}: {world} rank(s) × {accum} accumulation",
                "sequences per micro-batch": [len(b) for b in plan.batches],
                "sequence norm (eq. 2/4)": step(token_weights(plan, n_target, "sequence")),
                "token norm": step(token_weights(plan, n_target, "token")),
                "per-batch token mean (eq. 3)": step(token_weights(plan, n_target, "pack")),
                "per-batch sequence mean": step(
                    reference.micro_batch_sequence_weights(plan, n_target), scale_by_world_size=False
                ),
            }
        )
split = pd.DataFrame(rows).set_index("layout")
assert np.allclose(split["sequence norm (eq. 2/4)"], eq2, rtol=1e-12)
assert np.allclose(split["token norm"], token_mean, rtol=1e-12)
print(f"eq. 2 computed directly: {eq2:.6f}   token mean: {token_mean:.6f}")
split.round(6)

# %% [markdown]
# ## What this notebook showed, checked
#
# The two charts draw the weights and step losses computed above; under the sequence normalisation every
# sequence owns the same share of the step, while the pack and token means hand the well-predicted long
# sequence more and so give a lower step loss; the per-micro-batch means move with the layout, the sequence
# and token normalisations do not.

# %%
assert [trace.name for trace in fig_shares.data] == list(norms)  # one bar group per normalisation
for trace in fig_shares.data:  # one bar per sequence of section 1: its share of the step under that normalisation
    assert np.allclose(trace.y, effective[trace.name], rtol=1e-12) and np.isclose(sum(trace.y), 1.0)
assert np.allclose(effective["sequence"], 1 / len(effective))  # every sequence 1/M of the step
assert effective["pack"].iloc[0] > 1 / len(effective) and effective["token"].iloc[0] > 1 / len(effective)
assert len(fig_steps.data) == 1 and np.allclose(fig_steps.data[0].y, [direct[k] for k in norms], rtol=1e-12)
assert np.all(np.isfinite(fig_steps.data[0].y)) and direct["token"] < direct["sequence"]
assert direct["pack"] < direct["sequence"]
assert split["per-batch token mean (eq. 3)"].nunique() > 1 and split["per-batch sequence mean"].nunique() > 1
print("checked: the charts, the bias and the layouts")

# %% [markdown]
# The sequence and token normalisations reproduce their formulas to machine precision in every layout;
# the per-micro-batch means depend on which sequences happen to share a micro-batch. The trainer
# (`longalign.train`) uses exactly these weights (`loss_norm="sequence"` by default, `token` and `pack`
# for comparison), and its tests check 2 ranks × 1 accumulation step against 1 rank × 2 on a real model.
#
# **Try this:** set `long_targets = 500` in the parameters cell and run the notebook again. The long sequence
# now fits into a pack with four short ones and the fifth short sequence sits alone in the second pack. The
# sequence normalisation still gives every sequence 1/6; the pack mean now hands about half of the step to
# that lone *short* sequence: its bias comes from who shares a pack, not from length as such.
#
# Next: `04_training.ipynb`.
