"""Training stage: full-parameter SFT with naive, sorted or packed batching and exact loss weighting.

Public API: :class:`TrainConfig`, :func:`run` (the stage: ``run(cfg, run_dir) -> TrainResult``, recorded in
run.json), :func:`train` (the same on the paths of ``cfg``, or of a ``run_dir=``), :class:`TrainResult`,
:func:`apply_context_extension`, :func:`rope_base`, :func:`cached_tokenizer` (a tokenizer loaded once per
process) and :func:`preload_tokenizer` (a tokenizer built in memory, handed to training). Heavy imports
(torch, transformers) happen when training starts; importing this package costs only the config.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from longalign.rundir import RunDir
from longalign.train.config import LOSS_NORMS, METHODS, TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from longalign.train.trainer import TrainResult

__all__ = [
    "TrainConfig",
    "TrainResult",
    "run",
    "train",
    "apply_context_extension",
    "rope_base",
    "cached_tokenizer",
    "preload_tokenizer",
    "METHODS",
    "LOSS_NORMS",
]


def run(cfg: TrainConfig, run_dir: str | Path | RunDir, *, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train on ``<run>/tokens`` into ``<run>/train/<method>``; see :func:`longalign.train.trainer.run`."""
    from longalign.train import trainer

    return trainer.run(cfg, run_dir, callbacks=callbacks)


def preload_tokenizer(spec: str, tokenizer: Any) -> None:
    """Make training use ``tokenizer``, already loaded, wherever it would load the tokenizer of ``spec`` (a
    tokenizer or model spec): for a tokenizer an experiment builds in memory, so no run loads it again."""
    from longalign.train import model_setup

    model_setup._TOKENIZERS[str(spec)] = tokenizer


def __getattr__(name):
    if name in ("train", "TrainResult"):
        from longalign.train import trainer

        return getattr(trainer, name)
    if name in ("apply_context_extension", "rope_base", "cached_tokenizer"):
        from longalign.train import model_setup

        return getattr(model_setup, name)
    raise AttributeError(name)
