"""The long/short mix: every short conversation plus K long examples, shuffled with a seed.

The paper's data suites differ only in how many long examples join ShareGPT: 0k, 5k or 10k.
"""

from __future__ import annotations

import random
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longalign.config import Options, option
from longalign.data.short import SHORT_SAMPLE, ShortConfig, load_short_data, write_jsonl
from longalign.rundir import RunDir, read_jsonl
from longalign.stage import Summary, as_run_dir, record


@dataclass
class MixConfig(Options):
    """Options of ``longalign data mix``."""

    n_long: str = option("all", help="long examples to mix in: 'all', a number, or a paper suite such as 0k, 5k, 10k")
    seed: int = option(42, help="seed for choosing long examples and shuffling")
    long_path: str | None = option(None, help="long examples (default: <run>/data/long.jsonl)")
    short_path: str | None = option(None, help="short conversations (default: <run>/data/short.jsonl when it exists)")
    exclude_doc_ids: list[str] = option(
        default_factory=list, help="long examples of these documents are left out (held out for evaluation, say)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_n_long(self.n_long)


@dataclass
class MixSummary(Summary):
    """What ``data mix`` wrote: long and short examples, by source and task type."""

    long: int
    short: int
    total: int
    long_available: int
    by_source: dict[str, int]
    by_task_type: dict[str, int]
    seed: int
    n_long: str
    excluded: int = 0
    path: Path | None = None

    def lines(self) -> list[str]:
        return [f"wrote {self.total} examples ({self.long} long, {self.short} short) to {self.path}", *super().lines()]


def parse_n_long(value: str | int | None) -> int | None:
    """'all' → None (every long example); '5k' → 5000; '250' → 250."""
    if value is None:
        return None
    if isinstance(value, int):
        n = value
    else:
        text = str(value).strip().lower()
        if text in ("all", ""):
            return None
        try:
            n = int(float(text[:-1]) * 1000) if text.endswith("k") else int(text)
        except ValueError:
            raise ValueError(
                f"n_long={value!r} is not accepted; use 'all', a number such as 500, or 0k/5k/10k"
            ) from None
    if n < 0:
        raise ValueError(f"n_long must not be negative, got {value!r}")
    return n


def mix(
    long_records: list[dict[str, Any]],
    short_records: list[dict[str, Any]],
    *,
    n_long: str | int | None = "all",
    seed: int = 42,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All short records plus ``n_long`` long ones (seeded choice), shuffled with ``seed``."""
    k = parse_n_long(n_long)
    available = len(long_records)
    if k is None:
        k = available
    if k > available:
        raise ValueError(
            f"n_long={n_long!r} asks for {k} long examples but only {available} exist; "
            f"use --n-long all or a number up to {available} (generate more with longalign data generate)"
        )
    rng = random.Random(seed)
    chosen = [long_records[i] for i in sorted(rng.sample(range(available), k))] if k < available else list(long_records)
    out: list[dict[str, Any]] = []
    for r in chosen:
        rec = {
            "messages": r["messages"],
            "source": r.get("source", "long"),
            "lang": r.get("lang"),
            "task_type": r.get("task_type", ""),
            "kind": "long",
        }
        if r.get("doc_id") is not None:
            rec["doc_id"] = r["doc_id"]
        out.append(rec)
    for r in short_records:
        out.append({**r, "task_type": r.get("task_type") or "chat", "kind": "short"})
    rng.shuffle(out)
    counts = {
        "long": len(chosen),
        "short": len(short_records),
        "total": len(out),
        "long_available": available,
        "by_source": dict(sorted(Counter(r["source"] for r in out).items())),
        "by_task_type": dict(sorted(Counter(r["task_type"] for r in out).items())),
        "seed": seed,
        "n_long": str(n_long),
    }
    return out, counts


def mix_files(
    long_path: str | Path,
    short_path: str | Path | None,
    out_path: str | Path,
    *,
    n_long: str | int | None = "all",
    seed: int = 42,
    exclude_doc_ids: Iterable[str] = (),
) -> dict[str, Any]:
    """:func:`mix` on files; a missing short file is an error unless ``short_path`` is None. Long records whose
    ``doc_id`` is in ``exclude_doc_ids`` are left out (``excluded`` in the counts)."""
    long_path = Path(long_path)
    if not long_path.is_file() and parse_n_long(n_long) != 0:
        raise FileNotFoundError(
            f"{long_path} does not exist; generate long data first (longalign data generate) or mix with --n-long 0"
        )
    long_records = read_jsonl(long_path, strict=True)
    for i, r in enumerate(long_records):
        if not isinstance(r.get("messages"), list):
            raise ValueError(f"{long_path}: record {i + 1} has no 'messages' list")
    excluded = {str(i) for i in exclude_doc_ids}
    n_before = len(long_records)
    if excluded:
        long_records = [r for r in long_records if str(r.get("doc_id")) not in excluded]
    short_records: list[dict[str, Any]] = []
    if short_path is not None:
        short_path = Path(short_path)
        if not short_path.is_file():
            raise FileNotFoundError(f"{short_path} does not exist; import short data first (longalign data short)")
        short_records = read_jsonl(short_path, strict=True)
    records, counts = mix(long_records, short_records, n_long=n_long, seed=seed)
    write_jsonl(out_path, records)
    return {**counts, "excluded": n_before - len(long_records)}


def run(cfg: MixConfig, run_dir: str | Path | RunDir) -> MixSummary:
    """The ``data.mix`` step: ``long_path`` (default ``<run>/data/long.jsonl``) and ``short_path`` (default
    ``<run>/data/short.jsonl`` when it exists) into ``<run>/data/mixed.jsonl``, recorded in run.json."""
    run_ = as_run_dir(run_dir)
    short = cfg.short_path or (run_.short if run_.short.is_file() else None)
    counts = mix_files(
        cfg.long_path or run_.long,
        short,
        run_.mixed,
        n_long=cfg.n_long,
        seed=cfg.seed,
        exclude_doc_ids=cfg.exclude_doc_ids,
    )
    summary = MixSummary(**counts, path=run_.mixed)
    record(run_, "data.mix", cfg, summary)
    return summary


def provide_mix(run: RunDir, source: RunDir | None = None, *, seed: int = 42) -> Path:
    """Give ``run`` a ``data/mixed.jsonl`` (and ``data/short.jsonl``) for the stages after the data stage.

    When ``source`` has a mix, both files are copied from it (a later stage then works on exactly what the
    data stage wrote); otherwise the packaged ShareGPT sample (:data:`~longalign.data.short.SHORT_SAMPLE`)
    is imported with the default policies and mixed with no long examples, which needs no generator and
    takes well under a second. Returns the file the mix came from.
    """
    run.data.mkdir(parents=True, exist_ok=True)
    if source is not None and source.mixed.is_file():
        shutil.copyfile(source.mixed, run.mixed)
        if source.short.is_file():
            shutil.copyfile(source.short, run.short)
        return source.mixed
    shorts, _ = load_short_data(ShortConfig(inputs=[str(SHORT_SAMPLE)]))
    write_jsonl(run.short, shorts)
    write_jsonl(run.mixed, mix([], shorts, n_long=0, seed=seed)[0])
    return SHORT_SAMPLE
