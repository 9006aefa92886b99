"""Token lengths for planning: the rows of a token dataset (tokens/ folder and the like) or a plain lengths file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from longalign.rundir import RunDir


def read_lengths_file(path: str | Path) -> np.ndarray:
    """One integer per line (blank lines and #-comments skipped) or a .npy array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"lengths file {path} does not exist; check --lengths (one token count per line, or a .npy array)"
        )
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{path}: expected a 1-D integer array, got {arr.dtype} of shape {arr.shape}")
        return arr.astype(np.int64)
    values = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                values.append(int(text))
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: {text!r} is not an integer; write one token count per line"
                ) from None
    return np.asarray(values, dtype=np.int64)


def read_token_lengths(tokens: str | Path) -> np.ndarray:
    """Token counts per row of a tokens/ folder or any other token source training accepts
    (:mod:`longalign.tokenize.sources`): the ``length`` column, or ``len(input_ids)`` where it is absent."""
    from longalign.tokenize.sources import read_lengths

    return read_lengths(tokens)


def lengths_for(cfg: Any, run: RunDir | None = None) -> np.ndarray:
    """Lengths named by ``cfg.lengths`` (file) or ``cfg.tokens`` (folder), else ``run``'s tokens/."""
    if cfg.lengths and cfg.tokens:
        raise ValueError("give either --tokens DIR or --lengths FILE, not both")
    if cfg.lengths:
        return read_lengths_file(cfg.lengths)
    if cfg.tokens:
        return read_token_lengths(cfg.tokens)
    if run is not None:
        return read_token_lengths(run.tokens)
    raise ValueError("no lengths: give --tokens DIR, --lengths FILE or --run DIR")
