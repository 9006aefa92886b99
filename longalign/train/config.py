"""Options of the training stage (``longalign train``), with the paper's recipe as defaults.

The optimisation defaults follow LongAlign (arXiv 2401.18058, §4 and appendix B): AdamW with
betas (0.9, 0.95), weight decay 0, learning rate 2e-5 on a cosine schedule with 3% warm-up, two epochs,
bf16 and gradient checkpointing on GPUs, DeepSpeed ZeRO-3 with CPU offload on 8 GPUs. The batching
defaults differ by design: ``method`` is ``pack`` with ``loss_norm=sequence`` (the paper's packing plus
loss weighting), because that is the combination that is both fast (>= 2.2x naive batching in the
paper's Table 4) and unbiased (eq. 4).
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass

from ..batching.config import METHODS, OVERLONG, PACK_ALGOS
from ..batching.loss import LOSS_IMPLS, LOSS_NORMS
from ..config import Options, deprecated, option
from .allocator import CHOICES as CPU_ALLOCATORS

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_min_lr", "polynomial")

__all__ = ["TrainConfig", "METHODS", "LOSS_NORMS", "OVERLONG", "PACK_ALGOS", "PRECISIONS", "SCHEDULERS"]


@dataclass
class TrainConfig(Options):
    """Options of ``longalign train``.

    The run directory is not an option: pass it to :func:`longalign.train.run` (``--run`` on the command line,
    ``run:`` in a config file). ``TrainConfig(run=...)`` still works for one release with a deprecation note; the
    value is kept as the attribute ``run`` (not a field: not in ``to_dict``, ``fields`` or ``--help``).
    """

    # ---------------------------------------------------------------- where things are
    run: InitVar[str | None] = None
    tokens: str | None = option(
        None,
        help="token ids to train on: a `longalign tokenize` folder, a datasets.save_to_disk folder, a "
        ".parquet/.jsonl file or hf:NAME[:SPLIT]; needs input_ids, labels (-100 = no loss) default to every "
        "token, length is computed, other columns are optional",
    )
    output_dir: str | None = option(
        None,
        help="where metrics.jsonl, run_meta.json, plan.json, checkpoints/ and final/ go (default RUN/train/<method>)",
    )
    model: str = option(
        "smollm2",
        help="model to fine-tune: 'smollm2' (the embedded SmolLM2-135M-Instruct), "
        "an HF hub id, a local folder, or random:<config.json|folder> for a "
        "randomly initialised model",
    )
    tokenizer: str | None = option(
        None,
        help="tokenizer to save with the model and to check the tokens folder "
        "against (default: the model's own; the embedded one for random:)",
    )
    # ---------------------------------------------------------------- batching and loss
    method: str = option(
        "pack",
        help="batching: naive (random batches padded to the longest), sort (batches "
        "of similar lengths, shuffled), pack (sequences packed up to max_len, "
        "one pack per micro-batch)",
        choices=METHODS,
    )
    algo: str = option(
        "ffd",
        choices=PACK_ALGOS,
        help="packing algorithm passed to longalign.batching.make_plan; ignored by naive and sort",
    )
    loss_norm: str = option(
        "sequence",
        help="loss normalisation of one optimizer step: sequence (every "
        "sequence weighs the same, the LongAlign loss weighting), token "
        "(mean over all target tokens of the step), pack (mean per "
        "micro-batch, then over micro-batches: the biased baseline)",
        choices=LOSS_NORMS,
    )
    loss_impl: str = option(
        "chunked",
        help="how the loss is computed: chunked (from the decoder's hidden states, "
        "the output layer and cross-entropy over chunks of target rows with "
        "the logits recomputed in the backward: extra memory O(chunk x vocab), "
        "independent of max_len) or full (the model's [L, vocab] logits, kept "
        "for comparison)",
        choices=LOSS_IMPLS,
    )
    loss_chunk_rows: int = option(
        0,
        minimum=0,
        help="target rows per chunk of the chunked loss (0 = 2**25 / vocab, i.e. 128 MB of float32 logits per chunk)",
    )
    max_len: int = option(
        0,
        minimum=0,
        help="longest sequence and pack capacity in tokens (0 = the max_len the tokens folder was made with)",
    )
    plan: str | None = option(
        None,
        help='use this batch plan ({"batches": [[row, ...], ...]}, e.g. '
        "RUN/batching/pack.plan.json from `longalign batch plan`) instead of "
        "planning here; it must have been made for the same data-parallel world size "
        "(world / sp_size) x grad_accum grouping",
    )
    overlong: str = option("truncate", help="what to do with a sequence longer than max_len", choices=OVERLONG)
    per_device_batch_size: int = option(
        1, minimum=1, help="sequences per micro-batch for naive/sort (pack always feeds one pack per micro-batch)"
    )
    grad_accum: int = option(1, minimum=1, help="micro-batches accumulated per rank before each optimizer step")
    limit: int = option(0, minimum=0, help="train on the first N rows of the tokens folder only (0 = all)")
    # ---------------------------------------------------------------- optimisation
    learning_rate: float = option(2e-5, minimum=0, help="peak learning rate (paper: 2e-5)")
    lr_scheduler: str = option("cosine", help="learning-rate schedule after warm-up", choices=SCHEDULERS)
    warmup_ratio: float = option(
        0.03, minimum=0, maximum=1, help="fraction of the optimizer steps spent warming up (paper: 0.03)"
    )
    adam_beta1: float = option(0.9, minimum=0, maximum=1, help="AdamW beta1 (paper: 0.9)")
    adam_beta2: float = option(0.95, minimum=0, maximum=1, help="AdamW beta2 (paper: 0.95)")
    weight_decay: float = option(0.0, minimum=0, help="AdamW weight decay (paper: 0)")
    max_grad_norm: float = option(1.0, minimum=0, help="gradient clipping norm (0 disables clipping)")
    epochs: float = option(2.0, minimum=0, help="passes over the data (paper: 2)")
    max_steps: int = option(-1, help="stop after this many optimizer steps (-1 = run all epochs)")
    seed: int = option(42, help="seed of model initialisation (random:), batch order and dropout")
    # ---------------------------------------------------------------- hardware
    precision: str = option(
        "auto",
        help="auto = bf16 on a GPU that supports it, else fp32; bf16 also trains on a CPU with native bf16 "
        "(AVX-512 BF16 or AMX: autocast, float32 master weights and optimizer)",
        choices=PRECISIONS,
    )
    gradient_checkpointing: bool = option(
        False, help="recompute activations in the backward pass (paper: on); saves memory at about a third more compute"
    )
    cpu_allocator: str = option(
        "auto",
        choices=CPU_ALLOCATORS,
        help="memory allocator of CPU training: auto (tcmalloc when installed and no GPU is visible, else glibc), "
        "tcmalloc, glibc, lean (glibc returning every freed block of 1 MiB or more to the system at once: the "
        "lowest peak, slower), jemalloc; tcmalloc/jemalloc are preloaded, so `longalign train` starts itself "
        "again with LD_PRELOAD (also: $LONGALIGN_CPU_ALLOCATOR)",
    )
    deepspeed: str | None = option(
        None,
        help="DeepSpeed JSON config (configs/deepspeed/zero2.json, zero3.json, "
        "zero3_offload.json); launch with `deepspeed`, `torchrun` or "
        "`accelerate launch`",
    )
    attn_implementation: str = option(
        "auto",
        help="attention backend; auto picks flash-attn varlen on CUDA "
        "when installed, then torch flex/varlen, then sdpa or the "
        "segment-aware CPU kernel (see longalign.batching.attention)",
    )
    check_packing: bool = option(
        True,
        help="before a packed run, check on a two-sequence probe that the chosen "
        "attention backend gives packed logits equal to separate ones",
    )
    sp_size: int = option(
        1,
        minimum=1,
        help="sequence-parallel ranks per pack (Ulysses all-to-all attention): world = data-parallel x "
        "sp_size ranks, the plan is dealt over the data-parallel ranks and each pack is cut into sp_size "
        "equal shards; needs --method pack and a boundary-aware attention backend",
    )
    dataloader_num_workers: int = option(0, minimum=0, help="worker processes that collate micro-batches")
    # ---------------------------------------------------------------- context extension
    rope_scale: float = option(
        1.0,
        minimum=0,
        help="multiply the RoPE base by this before training (paper: 200, "
        "10,000 -> 2,000,000); 1 leaves the model unchanged",
    )
    max_position_embeddings: int = option(
        0, help="raise the model's max_position_embeddings to this (0 = to max_len when rope_scale != 1)"
    )
    # ---------------------------------------------------------------- checkpoints and logging
    save_steps: int = option(500, help="write a resumable checkpoint every N optimizer steps (0 = none)")
    save_total_limit: int = option(2, help="keep at most this many checkpoints")
    save_final: bool = option(True, help="save the trained model and tokenizer to OUTPUT/final")
    resume: bool = option(
        False,
        help="continue from the newest checkpoint in OUTPUT/checkpoints with the same "
        "data order, optimizer and scheduler state",
    )
    report_to: str = option(
        "none",
        help="passed to transformers' TrainingArguments.report_to (none, tensorboard, wandb, ...; comma-separated)",
    )
    logging_steps: int = option(
        1, help="log to report_to every N optimizer steps (metrics.jsonl always gets every step)"
    )
    progress: bool = option(True, help="show a progress bar with tokens/s")

    def __post_init__(self, run: str | None = None) -> None:
        super().__post_init__()
        if run is not None:
            deprecated(
                "the train option 'run' is deprecated; pass the run directory to longalign.train.run(cfg, run_dir) "
                "(on the command line: --run DIR)",
                stacklevel=4,
            )
            self.run = str(run)
