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
# # 6 · Ablation: batching × loss weighting
#
# Does the recipe work, and by how much? `benchmarks/ablation.py` (`longalign experiment ablation`) trains
# five arms on the same rows, with the same epochs and seeds, through `longalign.train`:
#
# | arm | batching | loss normalisation |
# |---|---|---|
# | naive+token | random padded batches | mean over the step's target tokens |
# | sort+sequence | length-sorted padded batches | every sequence weighs the same (eq. 4) |
# | pack+pack | packs | mean per pack, then over packs (eq. 3, the biased baseline) |
# | pack+token | packs | mean over the step's target tokens |
# | pack+sequence | packs | every sequence weighs the same (eq. 4, LongAlign) |
#
# The mix has the paper's tension built in: **needle** rows (a 200-800-token pydoc passage with one planted
# sentence "The passcode is <word>.", the question, and an ~8-token reply) beside **continuation** rows (32
# tokens of text and a 48-96-token continuation). A needle row has about a tenth of a continuation row's target
# tokens, so under token or pack normalisation it weighs about a tenth as much in the step.
#
# This notebook reads `benchmarks/results/ablation.json`. It never trains the full experiment: when that file is
# missing it runs the smallest configuration (`--smoke`, seconds) into its own run directory, whose numbers only
# show the shape of the result.

# %% tags=["parameters"]
result_path = "benchmarks/results/ablation.json"  # relative to the repository root
smoke_dir = "runs/notebooks/06_ablation"  # used only when result_path does not exist
evidence_path = "runs/evidence/evidence.json"  # `longalign experiment evidence --out runs/evidence`
evidence_quick_dir = "runs/notebooks/06_evidence"  # used only when evidence_path does not exist
# the same experiment at 1k-8k tokens (read when it exists; the notebook never runs it):
# `longalign experiment evidence --config configs/experiments/evidence_long.yaml`
evidence_long_path = "runs/evidence-long/evidence.json"

# %%
import logging
import os
from pathlib import Path

import pandas as pd
import plotly.io as pio
from IPython.display import Markdown, display

# inline figures that never open a browser; "notebook" writes plotly.js itself into the first figure's output,
# so an HTML export of the executed notebook draws its figures offline (no script loaded from a CDN)
pio.renderers.default = "plotly_mimetype+notebook"
logging.basicConfig(level=logging.WARNING)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pyproject.toml").is_file())
pd.set_option("display.max_colwidth", 60)

from longalign.recipes import ablation

path = ROOT / result_path
if not path.is_file():
    out = ROOT / smoke_dir
    ablation.run(ablation.AblationConfig(smoke=True, out=str(out / "results"), workdir=str(out / "work")))
    path = out / "results" / ablation.RESULT_FILE
result = ablation.load_result(path)
print(
    f"{path.relative_to(ROOT)}: {result['date']}, smoke={result['config']['smoke']}, seeds {result['config']['seeds']}"
)

# %% [markdown]
# ## The data and the model
#
# The rows every arm trains on, per kind: how long they are and what share of the target tokens they hold. The
# needle rows are most of the tokens but a small share of the targets, the situation LongAlign's loss weighting
# is for.

# %%
data = result["data"]
display(pd.DataFrame(data["kinds"]).T)
print(
    f"pack capacity {data['pack_len']} tokens; passcodes from {len(data['words'])} words "
    f"(chance exact match {data['chance_exact_match']:.3f})"
)
print(
    "model:", {k: result["model"][k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")}
)

# %% [markdown]
# ## Results per arm (mean ± standard deviation over seeds)
#
# Held-out metrics after the last step. Exact match is greedy decoding reproducing the whole reference reply; the
# key-phrase recall looks for the passcode in the argmax reply. Training seconds exclude the held-out evaluation.

# %%
display(pd.DataFrame(ablation.table_rows(result)).set_index("arm"))

# %% [markdown]
# The held-out loss per length bucket (needle rows by document length; continuation rows form one bucket):

# %%
rows = ablation.table_rows(result, buckets=True)
display(pd.DataFrame(rows).set_index("arm")[[k for k in rows[0] if k.startswith("loss[")]])

# %% [markdown]
# ## Curves against wall-clock training time
#
# One colour per arm, one line per seed.

# %%
ablation.figure(result)

# %% [markdown]
# ## The loss-weighting effect
#
# Paired by seed: pack+sequence minus the other packed arms on the needle set. A positive exact-match difference
# and a negative loss difference mean the weighting helps the short-answer long-input task. The paper reports
# about +10% on LongBench-Chat for loss weighting over plain packing (6.8 vs 6.2 for LongAlign-7B-64k).

# %%
effect = pd.DataFrame(
    {
        name: {
            "exact match difference": ablation.fmt_spread(e["exact_match_difference"]),
            "needle loss difference": ablation.fmt_spread(e["needle_loss_difference"]),
            "relative exact-match gain": e["relative_exact_match_gain"],
        }
        for name, e in result["loss_weighting_effect"].items()
    }
).T
display(effect)

# %% [markdown]
# ## Time to quality vs the simulator
#
# Time-to-quality: the training seconds each arm needs to reach naive+token's final mixed held-out loss (same
# seed), as a speed-up over naive. Epoch time: naive's training seconds over the arm's. On a machine shared with
# other work a busy spell can stretch one run several-fold, so each is also given on a clock that such spells
# cannot stretch: optimizer steps x the run's median step time. The simulator
# (`longalign.batching.simulate`) predicts the epoch-time speed-up from the lengths alone, with FLOP-based cost
# coefficients and with coefficients fitted to the measured steps; it knows nothing of the loss, so the gap between
# its number and the time-to-quality column is what the loss normalisation adds or costs.

# %%
display(pd.DataFrame(ablation.speed_rows(result)).set_index("arm"))
display(Markdown(f"Total wall time of the experiment: {result['total_s'] / 60:.1f} min."))

# %% [markdown]
# **Try this:** set `result_path = "benchmarks/results/not-measured.json"` in the parameters cell and run the
# notebook again. With no recorded result it runs the smallest configuration itself (`--smoke`, seconds) into
# `smoke_dir` and shows the same tables for that run: the same arms, rows and columns, but with so few steps the
# differences between the arms are noise. The full experiment is `python benchmarks/ablation.py`.

# %% [markdown]
# # Evidence on the pretrained model: does the recipe move what it can do on long inputs?
#
# The ablation above trains a random-init model that never learns to read its document, so it can only show the
# recipe's direction on loss. `longalign experiment evidence` asks the question on the embedded
# SmolLM2-135M-Instruct, which can already look facts up at 1k tokens: fine-tune it with the recipe
# (pack+pack, pack+token, pack+sequence; three seeds each; the same records and tokens) and score the held-out
# ladder tasks of `longalign eval ruler` and the loss of held-out short chats, against the base model.
#
# * **Training records** come only from training documents (the installed packages' documentation) and training
#   templates ("Note: the access code of Tovarilen is QF-482.", its own question and reply), mixed with short
#   chats. The ladder's documents, needles, keys and templates never appear in them (checked before training
#   and by `tests/test_evidence.py`).
# * **Evaluation**: `niah_single_docs` is the trained kind of task (one fact looked up in a document) on other
#   documents, wording and values; `niah_multikey` (distractor facts under other keys) is a transfer task.
#   Each sample is scored in one teacher-forced forward pass: correct iff the argmax at every answer position is
#   the expected token, which is exactly "greedy decoding emits the expected value first" (a lower bound of the
#   ladder's string match). The answer's cross-entropy is the finer measure beside it.
#
# This part reads `evidence_path`; without it, it runs the quick configuration (one arm, one seed, a few samples,
# a few minutes) into `evidence_quick_dir`, whose numbers only show the shape of the result.

# %%
from longalign.recipes import evidence

evidence_file = ROOT / evidence_path
if not evidence_file.is_file():
    quick_out = ROOT / evidence_quick_dir
    evidence.run(evidence.EvidenceConfig(quick=True, out=str(quick_out)))
    evidence_file = quick_out / evidence.RESULT_FILE
ev = evidence.load_result(evidence_file)
cfg = ev["config"]
print(f"{evidence_file}: {ev['date']}, quick={cfg['quick']}, arms {cfg['arms']}, seeds {cfg['seeds']}")
print(f"lengths {cfg['lengths']}, {cfg['samples']} samples per task, learning rate {cfg['learning_rate']}")

# %% [markdown]
# ## What every arm trains on, and what every model is scored on

# %%
display(pd.DataFrame(ev["data"]["by_kind"]).T)
samples = pd.DataFrame(ev["samples"])
display(samples.groupby(["task", "family", "length"]).size().rename("samples").to_frame())

# %% [markdown]
# ## Accuracy per model and task family
#
# 95% bootstrap intervals over samples x seeds (the base model is one deterministic row). "minus base" is the
# paired difference (the same samples for both); a `*` marks an interval that excludes 0. `kind:trained` pools
# the tasks of the trained kind, `kind:transfer` those never trained on.

# %%
display(Markdown("\n".join(evidence.accuracy_table(ev))))

# %% [markdown]
# ## The loss-weighting comparisons
#
# pack+sequence (eq. 4) against pack+pack (eq. 3) and pack+token, paired by seed and sample.

# %%
display(Markdown("\n".join(evidence.weighting_table(ev))))

# %% [markdown]
# ## Short chats kept out of training, and training time
#
# The held-out short-chat loss is the paper's "keeps short proficiency" check. Each run is scored when its
# training ends, so a target accuracy is either reached by then (the run's training seconds) or not.

# %%
display(Markdown("\n".join(evidence.short_table(ev))))
display(Markdown("\n".join(evidence.time_table(ev))))
secs = ev["seconds"]
display(
    Markdown(
        f"Training {secs['train'] / 60:.1f} min, scoring {secs['eval'] / 60:.1f} min, all models "
        f"{secs['wall_of_models'] / 60:.1f} min of wall time ({secs['cpu_of_models'] / 60:.1f} CPU min); load "
        f"average at the end {ev['machine']['load_avg_at_end']} on {ev['machine']['cpus']} cores."
    )
)

# %% [markdown]
# ## One sample at a time
#
# Each model's per-sample results are in `models/<name>/samples.jsonl` beside `evidence.json`: the base model's
# and one trained arm's answers side by side.

# %%
models_dir = evidence_file.parent / "models"
arm_dir = next((p for p in sorted(models_dir.glob("*")) if p.name != "base"), None)
if arm_dir is not None and (models_dir / "base" / "samples.jsonl").is_file():
    base_rows = pd.read_json(models_dir / "base" / "samples.jsonl", lines=True).set_index("key")
    arm_rows = pd.read_json(arm_dir / "samples.jsonl", lines=True).set_index("key")
    side = base_rows[["correct", "answer_loss", "predicted"]].join(
        arm_rows[["correct", "answer_loss", "predicted"]], rsuffix=f" ({arm_dir.name})"
    )
    display(side.head(12))

# %% [markdown]
# ## At 1k-8k tokens: where the base model's retrieval falls off
#
# At 1,024 tokens the base model already answers every lookup, so accuracy cannot rise there.
# `configs/experiments/evidence_long.yaml` runs the same experiment with longer training records (1,000-3,000
# document tokens in 4,096-token packs) and scores the ladder at 1,024, 2,048, 4,096 and 8,192 tokens, where the
# base model starts to miss, for the recipe's arm (pack + sequence weighting) against the base, three seeds.
# With several lengths the result has a group per length (`length:8192`) and per task and length
# (`niah_multikey@8192`). It takes about 40 minutes on two cores, so this cell only reads its result.

# %%
long_file = ROOT / evidence_long_path
if long_file.is_file():
    ev_long = evidence.load_result(long_file)
    print(f"{long_file}: {ev_long['date']}, arms {ev_long['config']['arms']}, seeds {ev_long['config']['seeds']}")
    display(Markdown("\n".join(evidence.accuracy_table(ev_long))))
    display(Markdown("\n".join(evidence.short_table(ev_long))))
else:
    print(f"{long_file} does not exist; to make it (about 40 minutes on two cores):")
    print("longalign experiment evidence --config configs/experiments/evidence_long.yaml")
