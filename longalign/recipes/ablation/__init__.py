"""A controlled ablation of batching and loss weighting that runs on a CPU.

The question is the paper's (LongAlign §3.2 and §4): does packing without loss weighting under-train
sequences with few target tokens, does the LongAlign loss weighting (eq. 4, ``loss_norm="sequence"``) fix it,
and do sorting and packing reach the same quality sooner than naive batching?

One training mix holds the tension on purpose::

    needle        long input, short target   a pydoc passage of 200-800 tokens with one planted sentence
                                             "The passcode is <word>." and the question "What is the
                                             passcode?"; the reply "The passcode is <word>." is ~7 tokens
    continuation  short input, long target   32 tokens of package documentation and "Continue this text:";
                                             the reply is the next 48-96 tokens

A needle row carries about a tenth of a continuation row's target tokens, so how a step normalises its loss
decides how much the needle task is trained at all. Per-token weights of one sequence with N_i targets, for a
step of M sequences in K packs (pack k holding N_k targets), as :func:`longalign.batching.token_weights` sets
them::

    token     1 / sum_i N_i           a needle row weighs N_i / sum N: about a tenth of a continuation row
    pack      1 / (K * N_k)           a needle row packed beside continuations: as little; in a pack of
                                      needles: as much as a whole pack of continuations
    sequence  1 / (M * N_i)           every row weighs 1/M, whatever its length (eq. 4)

Arms (same rows, same epochs, same seeds; ``grad_accum`` micro-batches per optimizer step, and the pack capacity
chosen so that a pack holds about as many rows as a padded batch, so the steps per epoch match; with one pack per
step ``pack`` and ``token`` would be the same loss):
``naive+token``, ``sort+sequence``, ``pack+pack`` (eq. 3), ``pack+token``, ``pack+sequence`` (eq. 4). Every
arm trains through :func:`longalign.train.train` (the real plan, collators, loss weights and attention
backends); nothing here re-implements a loss or a batch.

The model is a small randomly initialised Llama (3 layers, width 128) on a 4,096-token byte-level BPE vocabulary
trained on the experiment's own texts with SmolLM2's chat template and special tokens. The pretrained SmolLM2-135M
fine-tunes at ~100 tokens/s on two cores, hours for 15 runs; with SmolLM2's 49,152-token vocabulary the output
layer would take about half of even the small model's compute (more for a narrower one). With the small vocabulary
a run trains in 10-15 s on a quiet 2-core machine (144 optimizer steps of 4 rows). At this size and budget the
model does not learn the passcode lookup (exact match stays at the 1/16 of a guess); what it learns -- the
reply template and part of the passcode distribution -- is already what the loss normalisation decides, and
the held-out needle loss, split into the passcode token and the template, measures it.

Held-out rows (their own haystack region and documents) are scored during training, outside the training clock:

* loss per kind and per length bucket: the mean over rows of each row's mean target-token cross-entropy;
* needle exact match: greedy decoding would emit the reference reply token for token -- in one teacher-forced
  pass, the argmax at every reply position equals the reference token; key-phrase recall
  (:func:`longalign.eval.needle.key_phrase_recall`) of the passcode in the argmax reply.

Time-to-quality: the training seconds an arm needs to reach the final mixed held-out loss of ``naive+token``
(same seed; linear interpolation between evaluations), as a ratio to naive's time, on the wall clock, on CPU
time, and on a clock that busy spells of other work on the machine cannot stretch (optimizer steps x the run's
median step time); beside it the epoch-time speed-up ``longalign.batching.simulate`` predicts for these lengths,
with FLOP-derived costs and with costs fitted to the measured steps. ``needle_weight_share`` is the part of each
step's loss weight that falls on needle rows, from the weights training uses.

The recipe, phase by phase: :mod:`.config` (arms, texts, options), :mod:`.data` (rows, tokenizer, model config),
:mod:`.evaluate` (held-out scoring during training; torch and transformers at its top, imported when an arm
trains), :mod:`.analysis` (spreads, time-to-quality, the loss-weighting effect, the simulator's prediction),
:mod:`.report` (``ablation.json`` read back, tables, figure, the printed summary) and :mod:`.run` (every arm x
seed end to end). Its command is :mod:`.cli` (``longalign experiment ablation``).
"""

from longalign.recipes.ablation.analysis import (
    analyse,
    loss_weighting_effect,
    median_step_s,
    metric_rows,
    needle_weight_share,
    seed_speedups,
    simulator_prediction,
    spread,
    time_to_quality,
    time_to_reach,
    with_robust_clock,
)
from longalign.recipes.ablation.config import (
    ARMS,
    FIGURE_FILE,
    FIGURE_PNG,
    KINDS,
    RESULT_FILE,
    SCHEMA_VERSION,
    AblationConfig,
)
from longalign.recipes.ablation.data import Prepared, build_rows, encode_held_out, model_config, prepare
from longalign.recipes.ablation.report import (
    TABLE_COLUMNS,
    AblationSummary,
    figure,
    fmt_spread,
    load_result,
    markdown_table,
    speed_rows,
    table_rows,
    write_figure,
)
from longalign.recipes.ablation.run import assemble_result, reanalyse, run, train_arm, train_arms

__all__ = [
    "ARMS",
    "FIGURE_FILE",
    "FIGURE_PNG",
    "KINDS",
    "RESULT_FILE",
    "SCHEMA_VERSION",
    "TABLE_COLUMNS",
    "AblationConfig",
    "AblationSummary",
    "Prepared",
    "analyse",
    "assemble_result",
    "build_rows",
    "encode_held_out",
    "figure",
    "fmt_spread",
    "load_result",
    "loss_weighting_effect",
    "markdown_table",
    "median_step_s",
    "metric_rows",
    "model_config",
    "needle_weight_share",
    "prepare",
    "reanalyse",
    "run",
    "seed_speedups",
    "simulator_prediction",
    "speed_rows",
    "spread",
    "table_rows",
    "time_to_quality",
    "time_to_reach",
    "train_arm",
    "train_arms",
    "with_robust_clock",
    "write_figure",
]
