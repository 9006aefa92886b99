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
# # 4 · Training
#
# `longalign.train` runs full-parameter SFT on transformers' Trainer, with the data order and the loss
# weights decided by the batching stage: naive, sorted or packed batches, and the sequence / token / pack
# loss normalisation. This notebook trains a **tiny randomly initialised Llama** (2 layers, hidden size 64,
# `configs/models/tiny-llama`) for a few steps with each method, so it runs in seconds on a CPU, and plots
# loss curves and throughput from each run's `metrics.jsonl`.
#
# The same code fine-tunes the embedded SmolLM2-135M (`model="smollm2"`, ~100 tokens/s on two CPU cores)
# or a 7B model under DeepSpeed ZeRO-3 on GPUs (`configs/train/paper_64k_8gpu.yaml`).

# %% tags=["parameters"]
run_dir = "runs/notebooks/04_training"
data_run = "runs/notebooks/01_data_construction"  # mixed.jsonl from notebook 1, if present
model = "random:configs/models/tiny-llama"  # relative to the repository root
max_len = 1024  # long enough to keep the answer of notebook 1's long example
batch_size = 2  # sequences per padded micro-batch (naive, sort)
grad_accum = 2
max_steps = 6
learning_rate = 2e-3  # large: a random tiny model learns visibly in a few steps
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

import shutil

import torch

from longalign import tokenize, train
from longalign.data.mix import provide_mix
from longalign.models import random_config_path
from longalign.rundir import RunDir
from longalign.tokenize import TokenizeConfig
from longalign.train import TrainConfig
from longalign.views import readers, training

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
run = RunDir(ROOT / run_dir)
print("mix from", provide_mix(run, RunDir(ROOT / data_run), seed=seed))  # or the packaged short sample
result = tokenize.run(TokenizeConfig(model="smollm2", max_len=max_len), run, show_progress=False)
print(
    f"{result.n_rows} rows, {result.n_tokens} tokens, {result.n_target_tokens} target tokens; "
    f"{result.n_truncated} truncated, {result.n_dropped} dropped (no target token left after truncation)"
)
# a random: spec with a relative config path is resolved against the repository root
config_path = random_config_path(model)
model_spec = (
    f"random:{ROOT / config_path}" if config_path is not None and not Path(config_path).is_absolute() else model
)

# %% [markdown]
# ## 1. One run per batching method
#
# Each call writes `train/<name>/metrics.jsonl` (one line per optimizer step: loss, token-mean loss,
# sequences, packs, real and padded tokens, tokens/s), `run_meta.json` and, here, no checkpoints. Before a
# packed run the trainer checks on a two-sequence probe that the chosen attention backend keeps packed
# sequences apart (packed logits equal separate ones).

# %%
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
    cfg = TrainConfig(
        output_dir=str(out),
        model=model_spec,
        tokenizer="smollm2",
        method=method,
        loss_norm=loss_norm,
        max_len=max_len,
        per_device_batch_size=batch_size,
        grad_accum=grad_accum,
        max_steps=max_steps,
        learning_rate=learning_rate,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        precision="fp32",
        save_steps=0,
        save_final=False,
        progress=False,
        seed=seed,
    )
    results[name] = train.run(cfg, run)  # writes train/<name>/, recorded in run.json
    print(
        f"{name:16s} {results[name].steps} steps, final loss {results[name].final_loss:.4f}, "
        f"attention: {results[name].attention_backend}"
    )

# %% [markdown]
# ## 2. What the runs recorded
#
# The summary table and the curves come from `longalign.views`, the same functions the dashboard uses.
# `loss` is each run's own normalisation; `loss_token_mean` is the token mean of the same step for every
# run, so runs with different normalisations can be compared on one scale.

# %%
metrics = readers.load_metrics(run)
display(training.train_summary(run, metrics))
fig_loss = training.fig_loss(metrics, y="loss")
fig_loss.show()
training.fig_loss(metrics, y="loss_token_mean").show()

# %% [markdown]
# Throughput: real (non-padding) tokens per second of each step, and the cumulative wall time. Packing
# computes no padding at all; naive batches spend part of every step on it.

# %%
fig_throughput = training.fig_throughput(metrics)
fig_throughput.show()
totals = metrics.groupby("train", sort=False).agg(
    **{
        "steps": ("step", "max"),
        "sequences": ("sequences", "sum"),
        "micro-batches": ("packs", "sum"),
        "tokens": ("real_tokens", "sum"),
        "positions computed": ("padded_tokens", "sum"),
        "target tokens": ("target_tokens", "sum"),
        "tokens per second": ("tokens_per_s", "mean"),
    }
)
# padding in the words of longalign.batching.figures: the share of computed positions that hold no token
totals["padding"] = 1 - totals["tokens"] / totals["positions computed"]
totals.round(3)

# %% [markdown]
# `run_meta.json` records what each run actually used (attention backend, RoPE base, plan statistics, and
# the packing check on packed runs):

# %%
meta = {name: r.run_meta for name, r in results.items()}
pd.DataFrame(
    {
        n: {
            k: m.get(k)
            for k in (
                "method",
                "loss_norm",
                "attention_backend",
                "rope_theta",
                "max_len",
                "grad_accum",
                "steps",
                "packing_check",
            )
        }
        for n, m in meta.items()
    }
)

# %% [markdown]
# ## What this notebook showed, checked
#
# Every run trained for `max_steps` steps with finite losses that fell; the loss curves and the throughput
# chart draw each run's own `metrics.jsonl`, and its `run_meta.json` records those steps; packing computed no
# padding and naive batching did.

# %%
import json

import numpy as np

curves = {t.name: t for t in fig_loss.data}
per_step = {t.name: t for t in fig_throughput.data if t.xaxis in (None, "x")}
for name in runs:
    recs = [json.loads(x) for x in run.metrics(name).read_text().splitlines()]
    losses = [r["loss"] for r in recs]
    assert [r["step"] for r in recs] == list(range(1, max_steps + 1)), name
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], (name, losses)
    assert json.loads((run.train(name) / "run_meta.json").read_text())["steps"] == max_steps
    label = next(k for k in curves if k.startswith(name))
    assert list(curves[label].y) == losses, name
    assert list(per_step[name].y) == [r["tokens_per_s"] for r in recs], name
    assert totals.loc[name, "tokens"] == sum(r["real_tokens"] for r in recs)
assert totals.loc["pack", "padding"] == 0 < totals.loc["naive", "padding"]
print("checked: steps, finite falling losses, the curves and the throughput chart")

# %% [markdown]
# On the command line: `longalign train --config configs/train/tiny_test.yaml --run DIR` (this model), or
# `configs/train/cpu_demo.yaml` for the embedded SmolLM2.
#
# **Try this:** set `batch_size = 4` in the parameters cell and run the notebook again. Naive batches then
# put four random sequences side by side, so one long sequence pads three short ones: naive's padding in the
# table above rises, sorted batching's stays small, and packing's stays 0% (it computes only its tokens). Each
# run also takes fewer optimizer steps per epoch.
#
# Next: `05_evaluation.ipynb`.
