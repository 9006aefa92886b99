"""Evidence on a pretrained model: does the recipe's training change what the embedded SmolLM2-135M-Instruct can
do on long inputs it was not trained on, by how much, and with what certainty?

Start: the embedded SmolLM2-135M-Instruct (8,192 positions). Arms: ``base`` (no training, scored once: it is
deterministic) and, by default, ``pack+pack`` (eq. 3), ``pack+token`` and ``pack+sequence`` (eq. 4), each with
three seeds, all on the same training records for one epoch (the same tokens) and scored on one shared
evaluation set. ``naive+token`` is left out by default: per optimizer step it minimises the same token-mean loss
as ``pack+token`` (only the rows sharing a step differ), so its ability after the same tokens is pack+token's
question; its speed is what the ablation measures. It can be added with ``--arms``.

Training records (:mod:`.data`): ``train_long`` long records, each a stretch of the installed packages'
documentation with one training fact ("Note: the access code of Tovarilen is QF-482.") at a random depth, the
training question and the fact restated as the reply; mixed with short chats of the bundled sample, shuffled.
Nothing of the evaluation is in them (:func:`.data.separation_problems`, checked before training and by a test).

Evaluation: the ladder's (``longalign eval ruler``) single-answer tasks on held-out documents (pydoc topics, the
filler, needle-only contexts) at ``lengths``: ``niah_single_docs`` is the trained kind of task (one fact
looked up in a document; other documents, sentence, question, keys and values), ``niah_multikey`` (three
distractor facts under other keys) and ``niah_multikey_dense`` (a context made only of facts) are transfer:
never trained. Each sample is scored in one teacher-forced forward pass (:mod:`.score`): correct iff the argmax
at every answer position is the expected token, which is exactly "greedy decoding emits the expected value
first". The answer's mean cross-entropy is kept as a finer measure. The held-out short chats' loss
(:func:`longalign.eval.heldout.score_conversations`) is the "keeps short proficiency" check.

Analysis (:mod:`.analysis`): accuracy per model and task family with 95% bootstrap intervals over samples x seeds;
paired differences (each arm - base; pack+sequence - pack+pack; pack+sequence - pack+token) with intervals and,
where an interval includes 0, the samples per task at which an interval of that width would exclude the observed
difference; the held-out chat loss; training seconds to the base's accuracy and to the reference arm's
(``pack+pack``) final accuracy.

Outputs in ``--out``: ``data/`` (training records, tokens, evaluation samples), ``models/<name>/result.json`` and
``samples.jsonl`` (one row per evaluation sample) per model, written as each model finishes (a stopped run
resumes), and ``evidence.json``. Its command is :mod:`.cli` (``longalign experiment evidence``).
"""

from longalign.recipes.evidence.analysis import (
    analyse,
    bootstrap_diff,
    bootstrap_mean,
    samples_to_resolve,
    strata_of,
)
from longalign.recipes.evidence.config import (
    BASE,
    DEFAULT_ARMS,
    DEFAULT_TASKS,
    REFERENCE_ARM,
    RESULT_FILE,
    SCHEMA_VERSION,
    TASK_FAMILIES,
    EvidenceConfig,
)
from longalign.recipes.evidence.data import Prepared, eval_documents, prepare, separation_problems
from longalign.recipes.evidence.report import (
    EvidenceSummary,
    accuracy_table,
    load_result,
    markdown,
    short_table,
    time_table,
    weighting_table,
)
from longalign.recipes.evidence.run import read_model_result, rerun_model, run, same_scores

__all__ = [
    "BASE",
    "DEFAULT_ARMS",
    "DEFAULT_TASKS",
    "REFERENCE_ARM",
    "RESULT_FILE",
    "SCHEMA_VERSION",
    "TASK_FAMILIES",
    "EvidenceConfig",
    "EvidenceSummary",
    "Prepared",
    "accuracy_table",
    "analyse",
    "bootstrap_diff",
    "bootstrap_mean",
    "eval_documents",
    "load_result",
    "markdown",
    "prepare",
    "read_model_result",
    "rerun_model",
    "run",
    "same_scores",
    "samples_to_resolve",
    "separation_problems",
    "short_table",
    "strata_of",
    "time_table",
    "weighting_table",
]
