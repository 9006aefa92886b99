"""Training stage: full-parameter SFT with naive, sorted or packed batching and exact loss weighting.

Public API: :class:`TrainConfig`, :func:`train` (returns :class:`TrainResult`), :func:`apply_context_extension`,
:func:`rope_base`. Heavy imports (torch, transformers) happen when :func:`train` runs.
"""

from .config import LOSS_NORMS, METHODS, TrainConfig

__all__ = ["TrainConfig", "TrainResult", "train", "apply_context_extension", "rope_base", "METHODS", "LOSS_NORMS"]


def __getattr__(name):
    if name in ("train", "TrainResult", "apply_context_extension", "rope_base"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
