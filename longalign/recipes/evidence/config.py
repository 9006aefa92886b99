"""The evidence experiment's arms, tasks, training templates and options (``EvidenceConfig``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from longalign.config import Options, option
from longalign.recipes.ablation import ARMS

BASE = "base"
REFERENCE_ARM = "pack+pack"  # the plain packing baseline (eq. 3): the arm the others are timed against
DEFAULT_ARMS = ("pack+pack", "pack+token", "pack+sequence")
# ladder tasks with one expected value (the answer can be teacher-forced exactly); the family each belongs to
# relative to the training data: "trained" is the kind of task the training records hold (one fact looked up in
# a document), "transfer" a kind never trained on
TASK_FAMILIES = {
    "niah_single_docs": "trained",
    "niah_single_words": "trained",
    "niah_single_noise": "transfer",
    "niah_single_uuid": "trained",
    "niah_multikey": "transfer",
    "niah_multikey_dense": "transfer",
    "niah_multikey_uuid": "transfer",
}
DEFAULT_TASKS = ("niah_single_docs", "niah_multikey")
RESULT_FILE = "evidence.json"
SCHEMA_VERSION = 1

# training templates: none of their wording, keys or values is used by the evaluation ladder
TRAIN_SYSTEM = "You are a helpful assistant."
TRAIN_HEADER = "Here is a document. A question about it comes after the document.\n\n"
TRAIN_FACT = " Note: the access code of {key} is {value}."
TRAIN_QUESTION = "\n\nQuestion: according to the document, what is the access code of {key}?"
TRAIN_ANSWER = "The access code of {key} is {value}."
# syllables of the training keys (made-up proper names such as "Tovarilen")
TRAIN_SYLLABLES = "ka lo mi ru te zo ven dar pel sor tam bix nor qua vel fen gor hul jas wib".split()


@dataclass
class EvidenceConfig(Options):
    """Options of ``longalign experiment evidence``."""

    out: str = option("runs/evidence", help="run directory: data, per-arm results, evidence.json (resumable)")
    quick: bool = option(False, help="the smallest end-to-end run (a few minutes): for tests and the notebook")
    arms: list[str] = option(
        default_factory=lambda: list(DEFAULT_ARMS), choices=tuple(ARMS), help="trained arms (batching+loss_norm)"
    )
    seeds: list[int] = option(default_factory=lambda: [0, 1, 2], help="training seeds (batch order)")
    model: str = option("smollm2", help="start model (the embedded SmolLM2-135M-Instruct)")
    data_seed: int = option(1234, help="seed of the training records and of the short-chat split")
    eval_seed: int = option(42, help="seed of the evaluation ladder's samples")
    tasks: list[str] = option(
        default_factory=lambda: list(DEFAULT_TASKS),
        choices=tuple(TASK_FAMILIES),
        help="ladder tasks evaluated (one expected value each)",
    )
    lengths: list[int] = option(default_factory=lambda: [1024], help="ladder lengths in tokens")
    samples: int = option(6, minimum=1, help="evaluation samples per task and length")
    train_long: int = option(4, minimum=1, help="long training records (a training fact in a training document)")
    train_min: int = option(200, minimum=32, help="fewest document tokens of a long training record")
    train_max: int = option(400, minimum=32, help="most document tokens of a long training record")
    train_short: int = option(8, minimum=0, help="short chats mixed into training")
    heldout_short: int = option(12, minimum=1, help="short chats kept out of training for the held-out loss")
    pack_len: int = option(512, minimum=64, help="pack capacity in tokens (holds the longest training record)")
    grad_accum: int = option(2, minimum=1, help="packs per optimizer step (pack and token differ at 2+)")
    epochs: float = option(1.0, help="passes over the training records (the same for every arm)")
    learning_rate: float = option(1e-4, minimum=0, help="peak learning rate (cosine decay, no warm-up)")
    analyse_only: bool = option(
        False,
        help="write evidence.json from the models finished so far and train nothing (each arm with the seeds it "
        "finished)",
    )
    bootstrap: int = option(2000, minimum=100, help="bootstrap replicates of each interval")
    threads: int = option(2, minimum=1, help="torch threads")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train_max < self.train_min:
            raise ValueError(f"train_max={self.train_max} < train_min={self.train_min}; swap them")
        if not self.seeds:
            raise ValueError("seeds is empty; pass at least one seed, e.g. --seeds 0")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {self.seeds} repeat a seed; give each seed once")
        if not self.tasks or not self.lengths:
            raise ValueError("tasks and lengths must each name at least one value")

    def resolved(self) -> EvidenceConfig:
        """The config with the quick preset applied (one arm, one seed, one task, a few samples)."""
        if not self.quick:
            return self
        return dataclasses.replace(
            self,
            arms=list(self.arms[-1:]),
            seeds=list(self.seeds[:1]),
            tasks=list(self.tasks[:1]),
            lengths=[512],
            samples=3,
            train_long=3,
            train_min=120,
            train_max=260,
            train_short=4,
            heldout_short=3,
            pack_len=384,
            grad_accum=2,
            bootstrap=200,
        )
