"""Reading a recipe's result file: one JSON document with a ``schema_version``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_versioned_json(path: str | Path, schema_version: int, create: str, rerun: str) -> dict[str, Any]:
    """Read ``path``; a clear error naming ``create`` (the command that writes it) when it is missing and ``rerun``
    when it holds another schema."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; create it with `{create}`")
    data = json.loads(path.read_text())
    if data.get("schema_version") != schema_version:
        raise ValueError(
            f"{path} has schema_version {data.get('schema_version')!r}, expected {schema_version}; re-run `{rerun}`"
        )
    return data
