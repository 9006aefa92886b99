"""The stage contract, stated once.

Every stage package -- :mod:`longalign.data`, :mod:`longalign.tokenize`, :mod:`longalign.batching`,
:mod:`longalign.train`, :mod:`longalign.eval` -- has the same face::

    summary = stage.run(cfg, run_dir)      # cfg: one of the stage's config dataclasses

``run`` writes the stage's artifacts into the run directory (layout in :mod:`longalign.rundir`), records the
stage in ``run.json`` (its config and ``summary.to_dict()``) and returns a :class:`Summary`. A stage with
several steps (data: corpus / generate / short / mix; batching: plan / simulate; eval: one per benchmark)
dispatches on the type of ``cfg``; each step also has its own ``run`` in its module. The stage's ``cli.py``
only parses flags into the config, calls ``run`` and returns the summary, whose ``lines()`` the ``longalign``
command prints (:func:`longalign.cli.finish`); the recipes, the notebooks and the app call ``run`` too, so no
caller repeats the glue.

The library never prints: progress goes to tqdm (``progress=False`` hides it) and to the ``logging`` module.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from longalign.config import to_dict
from longalign.rundir import RunDir


@dataclasses.dataclass
class Summary:
    """Base of every stage's summary: a dataclass of plain values.

    Subclasses add their fields and override :meth:`lines` with one human-readable line per figure;
    ``exit_code`` is what the command returns (non-zero when part of the work failed and a re-run retries it).
    """

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of the public fields (paths become strings)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name.startswith("_"):
                continue
            out[f.name] = _plain(getattr(self, f.name))
        return out

    def lines(self) -> list[str]:
        """What the command prints; the default is the summary as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, default=str).splitlines()

    @property
    def exit_code(self) -> int:
        return 0


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Summary):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def as_run_dir(run_dir: str | Path | RunDir) -> RunDir:
    return run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)


def record(run: RunDir, stage: str, cfg: Any, summary: Summary | Mapping[str, Any] | None = None, **extra: Any) -> None:
    """Record ``stage`` in ``run.json``: its config and its summary (the one place stages do this)."""
    payload = dict(extra)
    if summary is not None:
        payload["summary"] = summary.to_dict() if isinstance(summary, Summary) else _plain(summary)
    config = to_dict(cfg) if dataclasses.is_dataclass(cfg) else _plain(cfg)
    run.record_stage(stage, config, **payload)


def dispatch(
    steps: Mapping[type, Callable[..., Summary]], stage: str, cfg: Any, run_dir: str | Path | RunDir, **kwargs: Any
) -> Summary:
    """Call the step whose config class ``cfg`` is (a stage package's ``run``)."""
    for cls, fn in steps.items():
        if isinstance(cfg, cls):
            return fn(cfg, run_dir, **kwargs)
    names = ", ".join(c.__name__ for c in steps)
    raise TypeError(f"{stage}.run() takes one of {names}; got {type(cfg).__name__}")
