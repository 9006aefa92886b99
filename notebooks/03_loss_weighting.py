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
vocab = 50            # toy vocabulary of the random logits
prompt_tokens = 8     # context tokens (no loss) at the start of every sequence
long_targets = 950    # target tokens of the long sequence of section 1
long_boost = 4.0      # section 2: how much better the model already predicts the long sequence
seed = 0

# %%
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

import numpy as np
import plotly.graph_objects as go
import torch

from longalign import IGNORE_INDEX
from longalign.batching import (PackedCollator, PaddedCollator, count_targets, make_plan, plan_features,
                                token_weights, weighted_causal_lm_loss)
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
effective.insert(0, "in pack", [next(k for k, b in enumerate(plan.batches) if i in b) for i in range(len(data))])
display(effective.round(4))
fig = go.Figure([go.Bar(name=norm, x=[f"seq {i} ({n} targets)" for i, n in enumerate(n_target)],
                        y=effective[norm]) for norm in norms])
fig.update_layout(barmode="group", template="plotly_white", height=340, yaxis_title="share of the step loss",
                  title="Effective weight per sequence under each normalisation")
fig.show()

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
    collate = PackedCollator(4096, weights_dtype=torch.float64) if packed else \
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

# %% [markdown]
# How big is the bias? Each sequence's own mean token loss $L_i/N_i$, and the three step losses. The
# sequence mean is what the five badly predicted short sequences deserve (five sixths of the weight);
# the pack mean lets the one well-predicted long sequence own half of the step, and the token mean gives
# it two thirds — their gradients would mostly polish what the model already knows.

# %%
per_seq = pd.DataFrame({"L_i / N_i": L / n_target, "targets": n_target})
display(per_seq.T.round(4))
names = {"sequence": "sequence (eq. 2)", "token": "token mean", "pack": "pack mean (eq. 3)"}
fig = go.Figure(go.Bar(x=[names[k] for k in norms], y=[direct[k] for k in norms],
                       marker_color=["#4C78A8", "#F58518", "#E45756"], text=[f"{direct[k]:.3f}" for k in norms],
                       textposition="outside"))
fig.update_layout(template="plotly_white", height=300, yaxis_title="step loss",
                  title="The same step under three normalisations")
fig.show()

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

# %% [markdown]
# The sequence and token normalisations reproduce their formulas to machine precision in every layout;
# the per-micro-batch means depend on which sequences happen to share a micro-batch. The trainer
# (`longalign.train`) uses exactly these weights (`loss_norm="sequence"` by default, `token` and `pack`
# for comparison), and its tests check 2 ranks × 1 accumulation step against 1 rank × 2 on a real model.
# Next: `04_training.ipynb`.
