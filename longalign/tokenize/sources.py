"""Token datasets from any source, checked against the tokens contract training relies on.

Training and batch planning need only token ids; what ``longalign tokenize`` writes is one source of them.
:func:`open_token_data` opens any of

* a ``longalign tokenize`` folder (Arrow dataset plus ``longalign_meta.json``),
* a ``datasets.save_to_disk`` folder (a ``Dataset``, or a ``DatasetDict`` with a ``train`` split),
* a folder of ``.parquet`` files, a ``.parquet`` file, or a ``.jsonl`` file with one object per line,
* ``hf:NAME``, ``hf:NAME:SPLIT`` or ``hf:NAME:CONFIG:SPLIT``: a dataset on the Hugging Face hub,

and returns a ``datasets.Dataset`` with at least ``input_ids``, ``labels`` and ``length``:

* ``labels`` absent: every token is a target (``labels`` = ``input_ids``);
* ``length`` absent: computed as ``len(input_ids)``;
* metadata columns (``source``, ``lang``, ``task_type``, ...) are kept when present and never required.

The contract, checked row by row with a message naming the file, the row (the line of a jsonl file) and the
fix: ``input_ids`` are lists of non-negative integers; ``labels`` has one entry per input id and holds either
the input id itself (a target; not shifted, the trainer shifts) or -100 (no loss), as the tokenize stage
writes them; ``length`` equals ``len(input_ids)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from longalign import IGNORE_INDEX
from longalign.rundir import TOKENS_META

HF_PREFIX = "hf:"
FORMATS_HELP = (
    "a `longalign tokenize` folder, a datasets.save_to_disk folder, a .parquet or .jsonl file of token ids, "
    "or hf:NAME[:SPLIT] for a hub dataset"
)
CONTRACT_HELP = (
    "training needs an input_ids column of token ids, optionally labels (the input id on target tokens, -100 "
    "elsewhere); create it from chat records with `longalign tokenize`"
)


@dataclass
class TokenData:
    """A token dataset ready for training: ``ds`` has input_ids, labels and length (plus any metadata)."""

    ds: Any
    meta: dict[str, Any] = field(default_factory=dict)
    kind: str = "tokenize"  # tokenize | disk | parquet | jsonl | hub
    where: str = ""
    added: tuple[str, ...] = ()  # columns computed here: "labels" (all targets), "length"


def open_token_data(spec: str | Path, *, check: bool = True) -> TokenData:
    """Open training tokens from ``spec`` (see the module docstring); ``check=False`` skips the row checks
    (lengths only, for planning)."""
    spec_s = str(spec)
    if spec_s.startswith(HF_PREFIX):
        table, meta, kind, where = _from_hub(spec_s), {}, "hub", spec_s
    else:
        path = Path(spec_s)
        if not path.exists():
            raise FileNotFoundError(
                f"tokens {path} does not exist; give {FORMATS_HELP} (create a tokens folder with `longalign tokenize`)"
            )
        where = str(path)
        if path.is_dir() and (path / TOKENS_META).is_file():
            table, meta, kind = _from_tokenize_folder(path)
        elif path.is_dir():
            table, meta, kind = _from_plain_folder(path)
        elif path.suffix == ".parquet":
            table, meta, kind = _read_parquet([path]), {}, "parquet"
        elif path.suffix in (".jsonl", ".json"):
            table, meta, kind = _read_jsonl(path), {}, "jsonl"
        else:
            raise ValueError(f"{path}: unknown tokens file type {path.suffix!r}; give {FORMATS_HELP}")
    table, added, biggest = _normalise(table, where, kind, check=check)
    meta = dict(meta)
    meta.setdefault("source_kind", kind)
    if biggest is not None:
        meta["max_token_id"] = biggest
    return TokenData(ds=_dataset(table), meta=meta, kind=kind, where=where, added=added)


def read_lengths(spec: str | Path) -> np.ndarray:
    """Token counts per row of any token source (the ``length`` column, or computed from ``input_ids``)."""
    data = open_token_data(spec, check=False)
    return np.asarray(data.ds.data.column("length").to_numpy(), dtype=np.int64)


# ----------------------------------------------------------------------------------------------- readers


def _dataset(table: Any) -> Any:
    from datasets import Dataset
    from datasets.table import InMemoryTable

    return Dataset(InMemoryTable(table))


def _from_tokenize_folder(path: Path):
    from datasets import load_from_disk

    meta_path = path / TOKENS_META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta_path} is not valid JSON ({exc.msg}); re-run `longalign tokenize`") from None
    if meta.get("n_rows") == 0:  # datasets cannot reopen a saved dataset without rows
        import pyarrow as pa

        return pa.table({"input_ids": pa.array([], pa.list_(pa.int32()))}), meta, "tokenize"
    return _flat_table(load_from_disk(str(path))), meta, "tokenize"


def _from_plain_folder(path: Path):
    from datasets import DatasetDict, load_from_disk

    parquet = sorted(path.glob("*.parquet"))
    if parquet and not (path / "dataset_info.json").is_file() and not (path / "dataset_dict.json").is_file():
        return _read_parquet(parquet), {}, "parquet"
    try:
        ds = load_from_disk(str(path))
    except FileNotFoundError:
        raise ValueError(
            f"{path} is a folder but neither a `longalign tokenize` folder (no {TOKENS_META}) nor a "
            f"datasets.save_to_disk folder nor a folder of .parquet files; give {FORMATS_HELP}"
        ) from None
    if isinstance(ds, DatasetDict):
        splits = list(ds.keys())
        if "train" in ds:
            ds = ds["train"]
        elif len(splits) == 1:
            ds = ds[splits[0]]
        else:
            raise ValueError(
                f"{path} holds the splits {', '.join(splits)} and none is 'train'; pass the split's own folder "
                f"({path / splits[0]})"
            )
    return _flat_table(ds), {}, "disk"


def _flat_table(ds: Any):
    """The dataset's Arrow table with any select()/shuffle() indices applied."""
    return ds.with_format("arrow")[:] if ds._indices is not None else ds.data.table


def _from_hub(spec: str):
    from datasets import load_dataset

    parts = spec[len(HF_PREFIX) :].split(":")
    if not parts[0] or len(parts) > 3:
        raise ValueError(f"{spec!r}: write hf:NAME, hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT (e.g. hf:user/data:train)")
    name = parts[0]
    config = parts[1] if len(parts) == 3 else None
    split = parts[-1] if len(parts) >= 2 else "train"
    ds = load_dataset(name, config, split=split)
    return _flat_table(ds)


def _read_parquet(paths: list[Path]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for p in paths:
        try:
            tables.append(pq.read_table(p))
        except (OSError, pa.ArrowInvalid) as exc:
            raise ValueError(f"{p}: not a readable parquet file ({exc})") from None
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{paths[0].parent}: the parquet files have different columns ({exc})") from None


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)


def _read_jsonl(path: Path):
    """input_ids / labels / length of a jsonl file, with errors naming the line."""
    import pyarrow as pa

    ids: list[list[int]] = []
    labels: list[list[int]] = []
    lengths: list[int] = []
    lines: list[int] = []
    has_labels: bool | None = None
    has_length: bool | None = None
    with path.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc.msg}); write one JSON object per line") from None
            if not isinstance(rec, dict):
                raise ValueError(
                    f"{where}: expected a JSON object with input_ids, got {type(rec).__name__}; write one object "
                    "per line (jsonl), not a JSON array"
                )
            if "input_ids" not in rec:
                raise ValueError(f"{where}: no input_ids (keys: {', '.join(sorted(rec)) or 'none'}); {CONTRACT_HELP}")
            if not _int_list(rec["input_ids"]):
                raise ValueError(
                    f"{where}: input_ids must be a list of integer token ids, got {_describe(rec['input_ids'])}; "
                    "write the ids as JSON integers"
                )
            if has_labels is None:
                has_labels, has_length = "labels" in rec, "length" in rec
            if ("labels" in rec) != has_labels:
                state = (
                    "no labels, while the first row has labels"
                    if has_labels
                    else "labels, while the first row has none"
                )
                raise ValueError(
                    f"{where}: {state}; give labels on every line or on none (none: every token is a target)"
                )
            if has_labels and not _int_list(rec["labels"]):
                raise ValueError(
                    f"{where}: labels must be a list of integers (the input id, or -100 for no loss), got "
                    f"{_describe(rec['labels'])}"
                )
            if has_length and not (isinstance(rec.get("length"), int) and not isinstance(rec.get("length"), bool)):
                raise ValueError(
                    f"{where}: length must be an integer (the number of input ids) on every line, or absent on all"
                )
            ids.append(rec["input_ids"])
            if has_labels:
                labels.append(rec["labels"])
            if has_length:
                lengths.append(rec["length"])
            lines.append(lineno)
    cols: dict[str, Any] = {"input_ids": pa.array(ids, pa.list_(pa.int64()))}
    if has_labels:
        cols["labels"] = pa.array(labels, pa.list_(pa.int64()))
    if has_length:
        cols["length"] = pa.array(lengths, pa.int64())
    cols["line"] = pa.array(lines, pa.int64())
    return pa.table(cols)


def _describe(value: Any) -> str:
    if isinstance(value, list):
        bad = next((x for x in value if not isinstance(x, int) or isinstance(x, bool)), None)
        return f"a list holding {bad!r} ({type(bad).__name__})"
    return f"{type(value).__name__} {str(value)[:40]!r}"


# ----------------------------------------------------------------------------------------------- checks


def _row_name(table: Any, row: int, where: str, kind: str) -> str:
    """``file:line`` for jsonl rows (the line column), ``where: row N`` otherwise."""
    if kind == "jsonl":
        return f"{where}:{table.column('line')[row].as_py()}"
    return f"{where}: row {row}"


def _is_int_lists(column: Any) -> bool:
    import pyarrow as pa

    t = column.type
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type)


def _first_null(column: Any) -> int:
    import pyarrow.compute as pc

    return int(np.flatnonzero(pc.is_null(column).to_numpy(zero_copy_only=False))[0])


def _normalise(table: Any, where: str, kind: str, *, check: bool):
    import pyarrow as pa
    import pyarrow.compute as pc

    names = table.column_names
    if "input_ids" not in names:
        raise ValueError(f"{where}: no input_ids column (columns: {', '.join(names) or 'none'}); {CONTRACT_HELP}")
    added: list[str] = []
    ids = table.column("input_ids")
    if not _is_int_lists(ids):
        raise ValueError(
            f"{where}: input_ids holds {ids.type}, not lists of integer token ids; store the ids as integers "
            "(e.g. datasets' Sequence(Value('int32'))) or tokenize text with `longalign tokenize`"
        )
    if ids.null_count:
        row = _first_null(ids)
        raise ValueError(f"{_row_name(table, row, where, kind)}: input_ids is empty (null); drop the row or fill it")
    n_ids = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)

    if "labels" not in names:
        table = table.append_column("labels", ids)
        added.append("labels")
    labels = table.column("labels")
    if not _is_int_lists(labels):
        raise ValueError(
            f"{where}: labels holds {labels.type}, not lists of integers; labels are the input id on target tokens "
            "and -100 elsewhere (or drop the column to train on every token)"
        )
    if labels.null_count:
        row = _first_null(labels)
        raise ValueError(
            f"{_row_name(table, row, where, kind)}: labels is null; give labels on every row or drop the column"
        )

    if "length" in names:
        given = table.column("length")
        if not pa.types.is_integer(given.type):
            raise ValueError(f"{where}: length holds {given.type}, not integers; drop the column (it is computed)")
        bad = np.flatnonzero(given.to_numpy(zero_copy_only=False).astype(np.int64) != n_ids) if check else []
        if len(bad):
            row = int(bad[0])
            raise ValueError(
                f"{_row_name(table, row, where, kind)}: length is {given[row].as_py()} but input_ids has "
                f"{n_ids[row]} ids; drop the length column (it is computed) or fix it"
            )
    else:
        table = table.append_column("length", pa.array(n_ids, pa.int64()))
        added.append("length")
    if "n_target" in names and kind != "tokenize":  # counted by training itself for data from elsewhere
        table = table.drop_columns(["n_target"])

    biggest = _check_values(table, n_ids, where, kind) if check else None
    return table, tuple(added), biggest


CHECK_ROWS = 256  # rows checked at a time, so the check of a large dataset holds one slice of it in memory


def _check_values(table: Any, n_ids: np.ndarray, where: str, kind: str) -> int | None:
    """Check labels against input_ids row by row (in slices of ``CHECK_ROWS``); the largest input id."""
    import pyarrow.compute as pc

    n_lab = pc.list_value_length(table.column("labels")).to_numpy(zero_copy_only=False).astype(np.int64)
    bad = np.flatnonzero(n_lab != n_ids)
    if len(bad):
        row = int(bad[0])
        raise ValueError(
            f"{_row_name(table, row, where, kind)}: labels has {n_lab[row]} entries but input_ids has {n_ids[row]}; "
            "labels must align with input_ids token for token (the input id, or -100 for no loss)"
        )
    biggest: int | None = None
    first_row = 0
    for batch in table.select(["input_ids", "labels"]).to_batches(max_chunksize=CHECK_ROWS):
        ids = pc.list_flatten(batch.column(0)).to_numpy(zero_copy_only=False).astype(np.int64)
        lab = pc.list_flatten(batch.column(1)).to_numpy(zero_copy_only=False).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(n_ids[first_row : first_row + batch.num_rows])])

        def locate(flat: int, starts: np.ndarray = starts, first: int = first_row) -> tuple[str, int]:
            row = int(np.searchsorted(starts, flat, side="right") - 1)
            return _row_name(table, first + row, where, kind), int(flat - starts[row])

        neg = np.flatnonzero(ids < 0)
        if neg.size:
            name, pos = locate(int(neg[0]))
            raise ValueError(f"{name}: input id {ids[neg[0]]} at position {pos} is negative; token ids are >= 0")
        wrong = np.flatnonzero((lab != IGNORE_INDEX) & (lab != ids))
        if wrong.size:
            flat = int(wrong[0])
            name, pos = locate(flat)
            if lab[flat] < 0:
                raise ValueError(
                    f"{name}: label {lab[flat]} at position {pos}; only {IGNORE_INDEX} marks tokens without loss "
                    f"(as `longalign tokenize` writes); replace {lab[flat]} with {IGNORE_INDEX}"
                )
            raise ValueError(
                f"{name}: label {lab[flat]} at position {pos} differs from the input id {ids[flat]}; labels hold "
                f"the input id itself on target tokens (not shifted: training shifts them) and {IGNORE_INDEX} "
                "elsewhere"
            )
        if ids.size:
            biggest = max(biggest or 0, int(ids.max()))
        first_row += batch.num_rows
    return biggest
