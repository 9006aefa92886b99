"""The ablation's arms, its fixed texts and file names, and its options (``AblationConfig``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from longalign.config import Options, option

ARMS: dict[str, tuple[str, str]] = {
    "naive+token": ("naive", "token"),
    "sort+sequence": ("sort", "sequence"),
    "pack+pack": ("pack", "pack"),
    "pack+token": ("pack", "token"),
    "pack+sequence": ("pack", "sequence"),
}
KINDS = ("needle", "continuation")
RESULT_FILE = "ablation.json"
FIGURE_FILE = "ablation.html"
FIGURE_PNG = "ablation.png"
SCHEMA_VERSION = 1
NEEDLE_TEMPLATE = "The passcode is {word}."
NEEDLE_QUESTION = "What is the passcode?"
CONTINUE_PROMPT = "Continue this text:\n\n{text}"
SYSTEM = "You are a helpful assistant."
# candidate passcodes; those that the tokenizer keeps as one token after a space are used
WORDS = """apple river falcon copper garden silver planet winter forest marble ocean rocket tiger violet
harbor candle dragon meadow orange pencil thunder castle island mirror velvet anchor bridge cactus dolphin
engine feather glacier hammer jungle kettle lemon magnet needle parrot quartz saddle tunnel walnut yellow
zebra basket cotton desert ember fossil granite honey ivory jacket kernel ladder mango nickel olive pepper
rabbit salmon timber violin wagon""".split()


@dataclass
class AblationConfig(Options):
    """Options of ``longalign experiment ablation`` (``benchmarks/ablation.py``)."""

    out: str = option("benchmarks/results", help="folder of ablation.json, ablation.html (and .png with kaleido)")
    workdir: str | None = option(
        None, help="folder for the data, tokens and training runs (default: a temporary folder, removed after)"
    )
    smoke: bool = option(False, help="the smallest configuration (seconds): for tests and the notebook")
    arms: list[str] = option(
        default_factory=lambda: list(ARMS), choices=tuple(ARMS), help="arms to train (batching+loss_norm)"
    )
    seeds: list[int] = option(default_factory=lambda: [0, 1, 2], help="training seeds (model init and batch order)")
    data_seed: int = option(1234, help="seed of the training and held-out rows (the same for every arm and seed)")
    n_needle: int = option(96, minimum=1, help="training rows with a long input and a short target")
    n_continuation: int = option(96, minimum=1, help="training rows with a short input and a long target")
    eval_needle_per_bucket: int = option(6, minimum=1, help="held-out needle rows per length bucket")
    eval_continuation: int = option(8, minimum=1, help="held-out continuation rows")
    needle_min: int = option(200, minimum=32, help="shortest needle document in tokens")
    needle_max: int = option(800, minimum=32, help="longest needle document in tokens")
    buckets: list[int] = option(
        default_factory=lambda: [200, 400, 600, 800],
        help="edges of the needle length buckets of the held-out set (tokens of the document)",
    )
    prompt_tokens: int = option(32, minimum=4, help="tokens of text a continuation row shows")
    continuation_min: int = option(48, minimum=4, help="fewest target tokens of a continuation row")
    continuation_max: int = option(96, minimum=4, help="most target tokens of a continuation row")
    n_words: int = option(16, minimum=2, help="passcodes drawn from this many one-token words (chance = 1/n)")
    vocab_size: int = option(
        4096,
        minimum=0,
        help="byte-level BPE vocabulary trained on the experiment's own texts, with SmolLM2's chat template "
        "and special tokens (0 = the embedded SmolLM2 tokenizer, 49,152 tokens: ~10x slower on a CPU)",
    )
    hidden: int = option(128, minimum=8, help="model width")
    layers: int = option(3, minimum=1, help="decoder layers")
    heads: int = option(4, minimum=1, help="attention heads")
    batch_size: int = option(2, minimum=1, help="rows per micro-batch of naive and sort")
    grad_accum: int = option(
        2, minimum=1, help="micro-batches (padded batches or packs) per optimizer step; pack differs from token at 2+"
    )
    pack_len: int = option(
        0, minimum=0, help="pack capacity in tokens (0 = batch_size x mean row length, at least the longest row)"
    )
    epochs: float = option(3.0, help="passes over the training rows (the same for every arm)")
    learning_rate: float = option(
        3e-3, help="peak learning rate (cosine schedule, warm-up over the first 5 percent of the steps)"
    )
    evals: int = option(6, minimum=1, help="held-out evaluations per run (plus one before training)")
    threads: int = option(2, minimum=1, help="torch threads")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.needle_max < self.needle_min:
            raise ValueError(f"needle_max={self.needle_max} < needle_min={self.needle_min}; swap them")
        if self.continuation_max < self.continuation_min:
            raise ValueError(
                f"continuation_max={self.continuation_max} < continuation_min={self.continuation_min}; swap them"
            )
        if len(self.buckets) < 2 or sorted(self.buckets) != list(self.buckets):
            raise ValueError(f"buckets must be at least two increasing edges, got {self.buckets}")
        if not self.seeds:
            raise ValueError("seeds is empty; pass at least one seed, e.g. --seeds 0")

    def resolved(self) -> AblationConfig:
        """The config with the smoke preset applied (the smallest end-to-end run)."""
        if not self.smoke:
            return self
        return dataclasses.replace(
            self,
            arms=list(self.arms),
            seeds=list(self.seeds[:1]),
            n_needle=6,
            n_continuation=6,
            eval_needle_per_bucket=1,
            eval_continuation=2,
            needle_min=48,
            needle_max=160,
            buckets=[48, 100, 160],
            prompt_tokens=12,
            continuation_min=24,
            continuation_max=40,
            vocab_size=1024,
            hidden=32,
            layers=1,
            heads=2,
            batch_size=2,
            grad_accum=2,
            epochs=1.0,
            evals=2,
        )
