"""The data stage: long documents (:mod:`.corpus`), Self-Instruct over them (:mod:`.selfinstruct`), short chat
data (:mod:`.short`) and the mix of both (:mod:`.mix`), all written into ``<run>/data/``.

``run(cfg, run_dir)`` runs the step whose config ``cfg`` is (:class:`CorpusConfig`, :class:`GenerateConfig`,
:class:`ShortConfig`, :class:`MixConfig`); each step module has its own ``run`` as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from longalign import stage
from longalign.data import corpus, mix, selfinstruct, short
from longalign.data.corpus import CorpusConfig, CorpusSummary
from longalign.data.mix import MixConfig, MixSummary
from longalign.data.selfinstruct import GenerateConfig, GenerateSummary
from longalign.data.short import ShortConfig, ShortReport
from longalign.rundir import RunDir

STEPS = {CorpusConfig: corpus.run, GenerateConfig: selfinstruct.run, ShortConfig: short.run, MixConfig: mix.run}


def run(
    cfg: CorpusConfig | GenerateConfig | ShortConfig | MixConfig, run_dir: str | Path | RunDir, **kwargs: Any
) -> stage.Summary:
    """Run the data step of ``cfg``'s type into ``run_dir`` (keyword arguments go to that step's ``run``)."""
    return stage.dispatch(STEPS, "longalign.data", cfg, run_dir, **kwargs)


__all__ = [
    "run",
    "STEPS",
    "CorpusConfig",
    "CorpusSummary",
    "GenerateConfig",
    "GenerateSummary",
    "ShortConfig",
    "ShortReport",
    "MixConfig",
    "MixSummary",
    "corpus",
    "selfinstruct",
    "short",
    "mix",
]
