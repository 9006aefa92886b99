"""Options of the batching stage: a batch plan (``longalign batch plan``) and the training-time simulator
(``longalign batch simulate``), with the choices they accept (the planner and the simulator check the same
tuples). Nothing here imports torch, transformers or datasets: the CLI builds these for ``--help``."""

from __future__ import annotations

from dataclasses import dataclass

from longalign.config import Options, option, redefault

METHODS = ("naive", "sort", "pack")
PACK_ALGOS = ("nextfit", "ffd", "bfd")
OVERLONG = ("truncate", "drop", "error")
SYNC_MODES = ("micro", "step")


@dataclass
class LengthsOptions(Options):
    """Token lengths (default: the run directory's tokens/)."""

    tokens: str | None = option(
        None,
        help="token ids: a tokens/ folder, a datasets.save_to_disk folder, a .parquet/.jsonl file or hf:NAME",
    )
    lengths: str | None = option(None, help="token lengths: one integer per line, or a .npy array")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokens and self.lengths:
            raise ValueError("give either --tokens DIR or --lengths FILE, not both")


@dataclass
class PlanningOptions(LengthsOptions):
    """Batching."""

    algo: str = option(
        "ffd",
        choices=PACK_ALGOS,
        help="packing algorithm (method pack): nextfit (input order), "
        "ffd (first-fit decreasing), bfd (best-fit decreasing)",
    )
    max_len: int = option(65536, minimum=1, help="longest padded sequence / largest pack, in tokens")
    batch_size: int = option(1, minimum=1, help="sequences per micro-batch per device (naive, sort)")
    world_size: int = option(1, minimum=1, help="data-parallel ranks (devices)")
    grad_accum: int = option(1, minimum=1, help="micro-batches per rank per optimizer step")
    seed: int = option(0, help="seed for shuffling batches / groups / packs")
    overlong: str = option("truncate", choices=OVERLONG, help="sequences longer than max-len: truncate, drop, or error")


@dataclass
class BatchPlanConfig(PlanningOptions):
    """Options of ``longalign batch plan``."""

    method: str = option(
        "pack",
        choices=METHODS,
        help="naive: random padded batches; sort: length-sorted batches; pack: bin-packed sequences",
    )
    plan_out: str | None = option(None, help='also write {"batches": [[i, ...], ...]} to this file')


@dataclass
class SimulateConfig(PlanningOptions):
    """Options of ``longalign batch simulate``."""

    methods: list[str] = option(
        default_factory=lambda: list(METHODS), choices=METHODS, help="methods to simulate (comma separated)"
    )
    world_size: int = redefault(8)
    grad_accum: int = redefault(12, note="naive, sort")
    pack_grad_accum: int = option(1, minimum=1, help="packs per device per step (pack)")
    sync: str = option(
        "micro",
        choices=SYNC_MODES,
        help="micro: devices wait for each other every micro-batch (ZeRO-3); step: once per optimizer step",
    )
    per_token: float = option(2.8e-4, minimum=0, help="seconds per computed token (fwd+bwd, linear layers)")
    per_token_sq: float = option(5.24288e-9, minimum=0, help="seconds per unit of attention work (n^2)")
    per_batch: float = option(0.0, minimum=0, help="fixed seconds per micro-batch")
