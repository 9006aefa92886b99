"""The run directory: the one interface between the library, the CLI, the notebooks and the app.

Layout (every path below is produced by exactly one stage; readers never trust a half-written file)::

    runs/<name>/
      run.json                        {"stages": {<stage>: {"config": ..., "started": ..., "finished": ...}},
                                       "versions": {...}}
      data/corpus.jsonl               {"id", "source", "lang", "n_tokens", "text"}
      data/long.jsonl                 {"messages": [...], "doc_id", "source", "lang", "task_type", "questions", ...}
      data/failed.jsonl               documents Self-Instruct could not turn into a record (retried on re-run)
      data/quality.json               counts of generated questions/answers rejected, by reason
      data/llm_calls.jsonl            append-only log: {"key", "model", "status", "usage", "latency", "cached"}
      data/llm_cache/                 request cache (see longalign.llm.cache)
      data/short.jsonl                {"messages": [...], "source"}
      data/mixed.jsonl                {"messages": [...], "source", ...}
      data/mini_longbench_chat.jsonl  the demo's LongBench-Chat-format set from held-out documents
      data/heldout.jsonl              the demo's held-out long conversations (for eval/heldout)
      tokens/                         datasets.save_to_disk: input_ids, labels, length, n_target, source
      tokens/longalign_meta.json      tokenizer, chat format, max_len and counts of the tokenize run
      batching/<method>.json          plan statistics;  batching/<method>.plan.json  {"batches": [[i, ...], ...]}
      batching/simulate.json          simulated step times per method
      train/<name>/metrics.jsonl      one JSON object per optimizer step (TrainDir: everything under train/<name>/)
      train/<name>/run_meta.json      what the run used (attention backend, world size, plan, versions)
      train/<name>/plan.json          the batch plan trained on (checked on --resume)
      train/<name>/checkpoints/       resumable checkpoints (checkpoint-<step>/);  train/<name>/final/  the model
      eval/longbench_chat/{predictions,judge_runs,judgments}.jsonl + summary.json
      eval/needle/results.jsonl + summary.json (+ heatmap.html)
      eval/judge_agreement/ratings.jsonl + summary.json
      eval/heldout/results.jsonl + summary.json   held-out loss per conversation and its means
      eval/longbench/{predictions,judgments}.jsonl + summary.json
      eval/ruler/results.jsonl + prompts.jsonl + summary.json   synthetic ladder: one line per sample (task,
                                      length, depths, expected, output, score); the prompts; cells and the
                                      effective context length
      eval/longbench_v2/results.jsonl + summary.json   multiple choice: one line per item; accuracy overall,
                                      by difficulty and by length
      demo_summary.json               what `longalign demo` measured, stage by stage

Writers use :func:`append_jsonl` (one complete line per record, flushed and fsynced) or
:func:`atomic_write_json` / :func:`atomic_write_text` (write to a temporary file, then rename), so a crash
leaves either the old file or the new one. :func:`read_jsonl` ignores a torn final line.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TOKENS_META = "longalign_meta.json"
METRICS_FILE = "metrics.jsonl"
TRAIN_META_FILE = "run_meta.json"
TRAIN_PLAN_FILE = "plan.json"
CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
QUALITY_FILE = "quality.json"  # data/: generated questions and answers checked and rejected, by reason


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=str) + "\n")


def read_json(path: str | Path, default: Any = None) -> Any:
    path = Path(path)
    if not path.is_file():
        return default
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def append_jsonl(path: str | Path, records: Iterable[dict] | dict, *, fsync: bool = True) -> int:
    """Append records as complete lines (one ``write`` each, flushed); returns how many were written.

    If a previous writer died mid-line, the torn fragment is terminated first so the new record starts
    on its own line (and :func:`read_jsonl` skips the fragment).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(records, dict):
        records = [records]
    n = 0
    with path.open("a+b") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        for rec in records:
            fh.write((json.dumps(rec, ensure_ascii=False, default=str) + "\n").encode("utf-8"))
            n += 1
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())
    return n


def iter_jsonl(
    path: str | Path, *, strict: bool = False, skipped: BadRecords | None = None
) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, record)``; blank lines are skipped.

    A line that is not valid JSON goes to ``skipped`` when given (which raises or counts it, by its
    ``on_error``); otherwise it raises ``ValueError`` naming the file and line when ``strict``, and is
    skipped silently when not (a torn line left by a crash).
    """
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                if skipped is not None:
                    skipped.bad(
                        f"{path}:{lineno}", f"not valid JSON ({exc.msg}); fix or remove that line", "invalid_json"
                    )
                elif strict:
                    raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg}); fix or remove that line") from None
                continue
            yield lineno, rec


def read_jsonl(path: str | Path, *, strict: bool = False) -> list[dict]:
    """All records of a jsonl file ([] when it does not exist)."""
    if not Path(path).is_file():
        return []
    return [rec for _, rec in iter_jsonl(path, strict=strict)]


# ------------------------------------------------------------------------------------------ bad input records

ON_ERROR = ("raise", "skip")
SKIP_HINT = "or pass --on-error skip to skip such records"
MAX_LISTED = 20


class BadRecord(ValueError):
    """One bad record of a user file: ``where`` is ``file:line`` (or ``file[i]``), ``reason`` the key it is
    counted under (``invalid_json``, ``wrong_shape``, ``missing_field``, ...)."""

    def __init__(self, where: str, message: str, reason: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where, self.message, self.reason = where, message, reason


@dataclass
class BadRecords:
    """What a reader does with bad records, by ``on_error``: ``raise`` a ``ValueError`` naming ``file:line``
    and the fix, or ``skip`` the record, count it by reason and list the first ``max_listed`` locations.

    Readers report a bad record with :meth:`bad` (or :meth:`add` for a caught :class:`BadRecord`) and carry
    on when it returns; :meth:`to_dict` goes into the stage summary, :meth:`lines` into its printed lines.
    """

    on_error: str = "raise"
    max_listed: int = MAX_LISTED

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ValueError(f"on_error={self.on_error!r} is not accepted; use one of {', '.join(map(repr, ON_ERROR))}")
        self.by_reason: dict[str, int] = {}
        self.listed: list[dict[str, str]] = []

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def bad(self, where: str, message: str, reason: str) -> None:
        """Raise (``on_error="raise"``) or record one bad record (``on_error="skip"``)."""
        if self.on_error == "raise":
            raise BadRecord(where, f"{message} ({SKIP_HINT})", reason)
        log.warning("skipping %s: %s", where, message)
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        if len(self.listed) < self.max_listed:
            self.listed.append({"at": where, "reason": reason, "error": message})

    def add(self, err: BadRecord) -> None:
        self.bad(err.where, err.message, err.reason)

    def to_dict(self) -> dict[str, Any]:
        """``{"total", "by_reason", "first"}``; ``first`` holds up to ``max_listed`` ``{"at", "reason", "error"}``."""
        return {"total": self.total, "by_reason": dict(sorted(self.by_reason.items())), "first": list(self.listed)}

    def lines(self) -> list[str]:
        return skipped_lines(self.to_dict())


def skipped_lines(skipped: dict[str, Any] | None) -> list[str]:
    """Printed lines for a :meth:`BadRecords.to_dict` (none when nothing was skipped)."""
    if not skipped or not skipped.get("total"):
        return []
    reasons = ", ".join(f"{k} {v}" for k, v in skipped["by_reason"].items())
    first = skipped.get("first", [])
    out = [f"skipped {skipped['total']} bad records ({reasons}); first {len(first)}:"]
    return out + [f"  {e['at']}: {e['error']}" for e in first]


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("longalign", "torch", "transformers", "datasets", "deepspeed", "flash-attn", "accelerate", "openai"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


@dataclass(frozen=True)
class TrainDir:
    """Paths of one training run's folder: ``<run>/train/<name>/`` or any ``--output-dir``; nothing is created
    until the trainer writes."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def metrics(self) -> Path:
        """One JSON object per optimizer step."""
        return self.root / METRICS_FILE

    @property
    def meta(self) -> Path:
        """What the run used and how far it got (``run_meta.json``)."""
        return self.root / TRAIN_META_FILE

    @property
    def plan(self) -> Path:
        """The batch plan trained on, compared with the current one on ``--resume``."""
        return self.root / TRAIN_PLAN_FILE

    @property
    def checkpoints(self) -> Path:
        """transformers' checkpoint folders (``checkpoint-<step>/``)."""
        return self.root / CHECKPOINTS_DIR

    @property
    def final(self) -> Path:
        """The trained model and its tokenizer."""
        return self.root / FINAL_DIR

    def has_checkpoints(self) -> bool:
        return self.checkpoints.is_dir() and any(self.checkpoints.glob("checkpoint-*"))


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory; nothing is created until a stage writes."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    # data stage
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def corpus(self) -> Path:
        return self.data / "corpus.jsonl"

    @property
    def long(self) -> Path:
        return self.data / "long.jsonl"

    @property
    def failed(self) -> Path:
        return self.data / "failed.jsonl"

    @property
    def quality(self) -> Path:
        return self.data / QUALITY_FILE

    @property
    def llm_calls(self) -> Path:
        return self.data / "llm_calls.jsonl"

    @property
    def llm_cache(self) -> Path:
        return self.data / "llm_cache"

    @property
    def short(self) -> Path:
        return self.data / "short.jsonl"

    @property
    def mixed(self) -> Path:
        return self.data / "mixed.jsonl"

    @property
    def mini_longbench_chat(self) -> Path:
        return self.data / "mini_longbench_chat.jsonl"

    @property
    def heldout(self) -> Path:
        return self.data / "heldout.jsonl"

    # tokenize
    @property
    def tokens(self) -> Path:
        return self.root / "tokens"

    @property
    def tokens_meta(self) -> Path:
        return self.tokens / TOKENS_META

    # batching
    @property
    def batching(self) -> Path:
        return self.root / "batching"

    def batch_stats(self, method: str) -> Path:
        return self.batching / f"{method}.json"

    def batch_plan(self, method: str) -> Path:
        return self.batching / f"{method}.plan.json"

    @property
    def simulation(self) -> Path:
        return self.batching / "simulate.json"

    # training (a run's folder is named after its method unless the caller names it)
    def train(self, name: str) -> Path:
        return self.root / "train" / name

    def train_dir(self, name: str) -> TrainDir:
        return TrainDir(self.train(name))

    def metrics(self, name: str) -> Path:
        return self.train_dir(name).metrics

    def train_meta(self, name: str) -> Path:
        return self.train_dir(name).meta

    def final_model(self, name: str) -> Path:
        return self.train_dir(name).final

    def checkpoints(self, name: str) -> Path:
        return self.train_dir(name).checkpoints

    # evaluation
    def eval(self, benchmark: str) -> Path:
        return self.root / "eval" / benchmark

    def predictions(self, benchmark: str) -> Path:
        return self.eval(benchmark) / "predictions.jsonl"

    def judgments(self, benchmark: str) -> Path:
        return self.eval(benchmark) / "judgments.jsonl"

    def judge_runs(self, benchmark: str) -> Path:
        return self.eval(benchmark) / "judge_runs.jsonl"

    def eval_summary(self, benchmark: str) -> Path:
        return self.eval(benchmark) / "summary.json"

    def needle_results(self) -> Path:
        return self.eval("needle") / "results.jsonl"

    def needle_heatmap(self) -> Path:
        return self.eval("needle") / "heatmap.html"

    def ruler_results(self) -> Path:
        return self.eval("ruler") / "results.jsonl"

    def ruler_prompts(self) -> Path:
        return self.eval("ruler") / "prompts.jsonl"

    def longbench_v2_results(self) -> Path:
        return self.eval("longbench_v2") / "results.jsonl"

    def agreement_ratings(self) -> Path:
        return self.eval("judge_agreement") / "ratings.jsonl"

    # the run as a whole
    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def demo_summary(self) -> Path:
        return self.root / "demo_summary.json"

    def record_stage(self, stage: str, config: dict[str, Any], **extra: Any) -> None:
        """Record a stage's config (and anything else, e.g. a summary) in run.json, atomically."""
        info = read_json(self.run_json, default={}) or {}
        info.setdefault("stages", {})
        entry = info["stages"].get(stage, {})
        entry.update({"config": config, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra})
        info["stages"][stage] = entry
        info["versions"] = package_versions()
        atomic_write_json(self.run_json, info)
