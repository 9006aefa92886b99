"""Every read of a run directory the dashboard makes, through the :class:`~longalign.rundir.RunDir` accessors.

The page modules (:mod:`.home`, :mod:`.lengths`, :mod:`.packing`, :mod:`.simulator`, :mod:`.training`,
:mod:`.longbench_chat`, :mod:`.needle`, :mod:`.ladder`) shape what these functions return and never open a file
themselves, so a change of the run-directory layout is a change of ``longalign/rundir.py`` and nothing here. A missing
artifact raises :class:`MissingArtifact`, whose message names the command that creates it; the pages show
that message instead of a traceback.

Readers use the stages' own readers: tokens through :func:`longalign.tokenize.load_tokens`, plans through
:func:`longalign.batching.load_plan_batches` and :meth:`longalign.batching.Plan.from_batches`.

Trade-offs:

* The token table is read with ``select_columns`` so the ragged ``input_ids``/``labels`` columns are never
  materialised (10,000 rows of up to 64k tokens is ~5 GB of int32 on disk; the metadata columns are ~200 kB).
  Labels are read only for the handful of sequences of the micro-batch being inspected (:func:`load_labels`).
* Folder listings (batching methods, training folders) are globbed from the accessor's own path with ``*`` as
  the name, so they cannot disagree with where the stages write.
* jsonl files are read whole with :func:`longalign.rundir.read_jsonl`, which skips a torn last line: a page
  opened while training appends metrics shows every complete step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from longalign.batching.plans import METHODS, Plan, load_plan_batches
from longalign.rundir import RunDir, read_json, read_jsonl

LONGBENCH_CHAT = "longbench_chat"  # benchmark folder names under eval/ (RunDir.eval)
NEEDLE = "needle"
RULER = "ruler"
SHORT_SOURCES = ("sharegpt", "short")
EXAMPLE = "<method>"  # how artifact paths with one file per method are written (batching/<method>.json)


# --------------------------------------------------------------------------------------------- artifacts
@dataclass(frozen=True)
class Artifact:
    key: str
    label: str
    paths: Callable[[RunDir], tuple[Path, ...]]  # where it lives (first = the one a message names)
    command: str  # what creates it ({run} = the run directory)
    page: str  # which dashboard page reads it

    def where(self, run: RunDir) -> str:
        """The artifact's paths relative to the run directory, joined with ' + '."""
        return " + ".join(p.relative_to(run.root).as_posix() for p in self.paths(run))


ARTIFACTS: dict[str, Artifact] = {
    a.key: a
    for a in (
        Artifact(
            "tokens", "Tokenized data", lambda r: (r.tokens_meta,), "longalign tokenize --run {run}", "Lengths, Packing"
        ),
        Artifact(
            "batching",
            "Batching plans",
            lambda r: (r.batch_stats(EXAMPLE), r.batch_plan(EXAMPLE)),
            "longalign batch plan --run {run} --method pack",
            "Packing",
        ),
        Artifact(
            "simulate",
            "Step-time simulation",
            lambda r: (r.simulation,),
            "longalign batch simulate --run {run}",
            "Simulator",
        ),
        Artifact(
            "train",
            "Training metrics",
            lambda r: (r.metrics(EXAMPLE), r.train_meta(EXAMPLE)),
            "longalign train --run {run} --method pack",
            "Training",
        ),
        Artifact(
            "longbench_chat",
            "LongBench-Chat",
            lambda r: (r.judgments(LONGBENCH_CHAT), r.predictions(LONGBENCH_CHAT), r.eval_summary(LONGBENCH_CHAT)),
            "longalign eval longbench-chat --out {run}",
            "LongBench-Chat",
        ),
        Artifact(
            "needle",
            "Needle in a haystack",
            lambda r: (r.needle_results(), r.eval_summary(NEEDLE)),
            "longalign eval needle --out {run}",
            "Needle",
        ),
        Artifact(
            "ruler",
            "Synthetic ladder",
            lambda r: (r.ruler_results(), r.eval_summary(RULER)),
            "longalign eval ruler --run {run}",
            "Ladder",
        ),
    )
}


class MissingArtifact(FileNotFoundError):
    """An artifact the view needs is not in the run directory; the message says how to create it."""

    def __init__(self, run: RunDir, key: str, detail: str = ""):
        art = ARTIFACTS[key]
        self.key = key
        self.run = run
        self.command = art.command.format(run=run.root)
        words = self.command.split()
        base = " ".join(words[: 3 if words[1] in ("batch", "eval") else 2])
        msg = (
            f"{art.label} not found in {art.paths(run)[0]}. Create it with `{self.command}` (options: `{base} --help`)."
        )
        if detail:
            msg = f"{msg} {detail}"
        super().__init__(msg)


EVAL_ARTIFACTS = ("longbench_chat", "needle", "ruler")


def missing_message(exc: MissingArtifact, root: str | Path | None = None) -> str:
    """What to do about a missing artifact, for the page that needs it: an evaluation-only run is said to be one
    (and the runs of the folder that have the artifact are named) before the command that creates it."""
    run, key = exc.run, exc.key
    held = [k for k in ARTIFACTS if k != key and present(run, k)]
    if not held:
        return str(exc)
    label = ARTIFACTS[key].label
    others = []
    if root is not None:
        others = [n for n in list_runs(root) if (Path(root) / n) != run.root and present(RunDir(Path(root) / n), key)]
    where = f" Runs of this folder that have it: {', '.join(others[:6])}." if others else ""
    kind = "an evaluation-only run" if set(held) <= set(EVAL_ARTIFACTS) else "a run"
    holds = ", ".join(ARTIFACTS[k].label for k in held)
    return f"`{run.root.name}` is {kind} (it holds {holds}) without {label}, which this page reads.{where} {exc}"


def present(run: RunDir, key: str) -> bool:
    """Whether artifact ``key`` (one of :data:`ARTIFACTS`) exists in the run."""
    if key == "tokens":
        return run.tokens_meta.is_file()
    if key == "batching":
        return bool(list_batch_methods(run))
    if key == "simulate":
        return run.simulation.is_file()
    if key == "train":
        return bool(list_train_runs(run))
    if key == "longbench_chat":
        return run.judgments(LONGBENCH_CHAT).is_file() or run.predictions(LONGBENCH_CHAT).is_file()
    if key == "needle":
        return run.needle_results().is_file()
    if key == "ruler":
        return run.ruler_results().is_file()
    raise ValueError(f"unknown artifact {key!r}; use one of {', '.join(ARTIFACTS)}")


def require(run: RunDir, key: str) -> None:
    """Raise :class:`MissingArtifact` (with the creating command) when artifact ``key`` is absent."""
    if not present(run, key):
        raise MissingArtifact(run, key)


def _names(run: RunDir, accessor: Callable[[str], Path]) -> list[str]:
    """Names ``n`` for which ``accessor(n)`` exists, globbed from the accessor's own path with ``*`` as name."""
    template = accessor("*").relative_to(run.root)
    i = next(j for j, part in enumerate(template.parts) if "*" in part)
    prefix, suffix = template.parts[i].split("*", 1)
    out = set()
    for p in run.root.glob(template.as_posix()):
        part = p.relative_to(run.root).parts[i]
        name = part[len(prefix) : len(part) - len(suffix)]
        if name and not name.startswith(".") and accessor(name) == p and p.is_file():
            out.add(name)
    return sorted(out)


def _methods_first(names: Iterable[str]) -> list[str]:
    return sorted(names, key=lambda m: (METHODS.index(m) if m in METHODS else len(METHODS), m))


# --------------------------------------------------------------------------------------------- runs
RUN_ENTRIES = ("run.json", "demo_summary.json", "data", "tokens", "batching", "train", "eval")


def is_run(path: Path) -> bool:
    """Whether ``path`` holds anything a stage writes (run.json, data/, tokens/, batching/, train/, eval/, ...)."""
    return any((path / entry).exists() for entry in RUN_ENTRIES)


def list_runs(root: str | Path, depth: int = 3) -> list[str]:
    """Names of the run directories under ``root``, sorted: every sub-folder not starting with '.' or '_'; a
    folder that holds no stage output but holds runs itself (``runs/notebooks/02_tokenize_and_pack``) is
    listed by the paths of those runs ("notebooks/02_tokenize_and_pack"), up to ``depth`` levels down."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if not p.is_dir() or p.name.startswith((".", "_")):
            continue
        nested = [] if is_run(p) or depth <= 1 else [n for n in list_runs(p, depth - 1) if is_run(p / n)]
        out.extend(f"{p.name}/{n}" for n in nested) if nested else out.append(p.name)
    return out


def read_run_info(run: RunDir) -> dict:
    """run.json ({} when no stage has recorded itself yet)."""
    return read_json(run.run_json, default={}) or {}


def load_quality(run: RunDir) -> dict:
    """``data/quality.json``: what the Self-Instruct checks rejected ({} when generation did not write it)."""
    return read_json(run.quality, default={}) or {}


# --------------------------------------------------------------------------------------------- tokens
def load_token_meta(run: RunDir) -> dict:
    """``tokens/longalign_meta.json`` ({} when the tokenize stage did not write it)."""
    return read_json(run.tokens_meta, default={}) or {}


def open_tokens(run: RunDir):
    """The tokens/ dataset, opened by the tokenize stage's reader (memory-mapped Arrow, nothing read yet)."""
    from longalign.tokenize import load_tokens

    require(run, "tokens")
    ds, _ = load_tokens(run.tokens)
    return ds


def short_sources(run: RunDir, limit: int = 5000) -> set[str]:
    """Sources of the short chat data: those named in data/short.jsonl (first ``limit`` lines) plus the
    conventional names."""
    found = set(SHORT_SOURCES)
    for rec in read_jsonl(run.short)[:limit]:
        if rec.get("source"):
            found.add(str(rec["source"]))
    return found


def classify_kind(task_type: pd.Series, source: pd.Series, shorts: Iterable[str] = SHORT_SOURCES) -> pd.Series:
    """'short' for chat data (task type "chat" or a short-data source), 'long' otherwise."""
    shorts = {s.lower() for s in shorts}
    is_short = task_type.fillna("").str.lower().eq("chat") | source.fillna("").str.lower().isin(shorts)
    return pd.Series(np.where(is_short, "short", "long"), index=task_type.index)


def token_meta_columns() -> tuple[str, ...]:
    """The columns of tokens/ other than the ragged ``input_ids``/``labels`` (from the tokenize stage)."""
    from longalign.tokenize.encode import TOKEN_COLUMNS

    return tuple(c for c in TOKEN_COLUMNS if c not in ("input_ids", "labels"))


def load_token_table(run: RunDir) -> pd.DataFrame:
    """One row per tokenized sequence: idx, length, n_target, source, lang, task_type, kind."""
    ds = open_tokens(run)
    df = ds.select_columns(list(token_meta_columns())).to_pandas()
    for c in ("source", "lang", "task_type"):
        df[c] = df[c].fillna("").astype(str)
    df["lang"] = df["lang"].replace("", "unknown")
    df["task_type"] = df["task_type"].replace("", "unknown")
    df["kind"] = classify_kind(df["task_type"], df["source"], short_sources(run))
    df.insert(0, "idx", np.arange(len(df)))
    return df[["idx", "length", "n_target", "source", "lang", "task_type", "kind"]]


def load_labels(run: RunDir, indices: Sequence[int]) -> list[np.ndarray]:
    """The label arrays of the given rows of tokens/ (in the order given)."""
    sub = open_tokens(run).select_columns(["labels"]).select(list(indices))
    return [np.asarray(x, dtype=np.int64) for x in sub["labels"]]


# --------------------------------------------------------------------------------------------- batching
def list_batch_methods(run: RunDir) -> list[str]:
    """Methods with a plan or a statistics file in batching/, standard methods first."""
    names = set(_names(run, run.batch_plan))
    names |= {
        n
        for n in _names(run, run.batch_stats)
        if run.batch_stats(n) != run.simulation and not any(run.batch_plan(m) == run.batch_stats(n) for m in names)
    }
    return _methods_first(names)


def load_batch_stats(run: RunDir, method: str) -> dict:
    """The batching stage's statistics record for ``method`` ({} when only the plan exists)."""
    return read_json(run.batch_stats(method), default={}) or {}


def method_kind(method: str, stats: dict | None = None) -> str:
    """'pack' when the micro-batches are packs, else 'padded'."""
    m = str((stats or {}).get("method") or method)
    return "pack" if m.startswith("pack") else "padded"


def load_batches(run: RunDir, method: str) -> list[list[int]]:
    """Micro-batches (lists of row indices into tokens/) of ``method``'s plan, in consumption order."""
    path = run.batch_plan(method)
    if not path.is_file():
        raise MissingArtifact(run, "batching", f"(no plan file {path.name} for method {method!r})")
    return [[int(i) for i in b] for b in load_plan_batches(path)]


def load_plan(run: RunDir, method: str, lengths: Sequence[int] | np.ndarray) -> Plan:
    """``method``'s saved plan as a :class:`~longalign.batching.Plan` over the raw token ``lengths``, with the
    settings of its statistics record (max_len, world size, gradient accumulation, algorithm, seed). A file
    whose name is not a stage method is read as packs or padded (naive) batches by :func:`method_kind`."""
    stats = load_batch_stats(run, method)
    name = str(stats.get("method") or method)
    stage_method = name if name in METHODS else ("pack" if method_kind(method, stats) == "pack" else "naive")
    max_len = stats.get("max_len")
    return Plan.from_batches(
        load_batches(run, method),
        lengths,
        stage_method,
        max_len=int(max_len) if max_len else None,
        batch_size=int(stats["batch_size"]) if stats.get("batch_size") else None,
        world_size=int(stats.get("world_size") or 1),
        grad_accum=int(stats.get("grad_accum") or 1),
        algo=stats.get("algo"),
        seed=int(stats.get("seed") or 0),
    )


def read_simulation(run: RunDir) -> dict:
    """batching/simulate.json as written by ``longalign batch simulate`` ({"config": ..., "methods": ...})."""
    require(run, "simulate")
    return read_json(run.simulation, default={}) or {}


# --------------------------------------------------------------------------------------------- training
def list_train_runs(run: RunDir) -> list[str]:
    """Training folders (train/<name>/) that hold a metrics file, standard methods first."""
    return _methods_first(_names(run, run.metrics))


def load_train_meta(run: RunDir, name: str) -> dict:
    """What training folder ``name`` used (attention backend, loss normalisation, ...); {} when absent."""
    return read_json(run.train_meta(name), default={}) or {}


def load_metrics(run: RunDir) -> pd.DataFrame:
    """All training metrics of the run, one row per optimizer step, with a ``train`` column (folder name)
    and a ``label`` column "<folder> · <loss_norm>"."""
    require(run, "train")
    frames = []
    for name in list_train_runs(run):
        recs = read_jsonl(run.metrics(name))
        if not recs:
            continue
        df = pd.DataFrame(recs)
        df.insert(0, "train", name)
        frames.append(df)
    if not frames:
        raise MissingArtifact(run, "train", "(metrics files exist but hold no steps yet)")
    df = pd.concat(frames, ignore_index=True)
    if "loss_norm" not in df:
        df["loss_norm"] = ""
    df["loss_norm"] = df["loss_norm"].fillna("")
    df["label"] = df["train"] + np.where(df["loss_norm"] != "", " · " + df["loss_norm"].astype(str), "")
    return df


# --------------------------------------------------------------------------------------------- evaluation
def load_longbench_chat(run: RunDir) -> pd.DataFrame:
    """One row per question: idx, lang, query, reference, prediction, score (mean of judge runs), runs (list),
    judge, prompt_tokens, truncated (the prompt was cut to fit), completion_tokens, max_new_tokens and cut (the
    answer stopped at max_new_tokens). Predictions without judgments get score NaN."""
    require(run, "longbench_chat")
    judg = {int(r["idx"]): r for r in read_jsonl(run.judgments(LONGBENCH_CHAT)) if "idx" in r}
    preds = {int(r["idx"]): r for r in read_jsonl(run.predictions(LONGBENCH_CHAT)) if "idx" in r}
    rows = []
    for idx in sorted(set(judg) | set(preds)):
        j, p = judg.get(idx, {}), preds.get(idx, {})
        score = j.get("score")
        rows.append(
            {
                "idx": idx,
                "lang": j.get("lang") or p.get("lang") or "",
                "query": j.get("query") or p.get("query", ""),
                "reference": j.get("reference", ""),
                "prediction": j.get("prediction") or p.get("prediction", ""),
                "score": float(score) if score is not None else np.nan,
                "runs": j.get("runs", []),
                "judge": j.get("judge", ""),
                "prompt_tokens": p.get("prompt_tokens"),
                "truncated": p.get("truncated"),
                "completion_tokens": p.get("completion_tokens"),
                "max_new_tokens": (p.get("sampling") or {}).get("max_tokens"),
                "cut": p.get("finish_reason") == "length",
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "idx",
            "lang",
            "query",
            "reference",
            "prediction",
            "score",
            "runs",
            "judge",
            "prompt_tokens",
            "truncated",
            "completion_tokens",
            "max_new_tokens",
            "cut",
        ],
    )


def load_longbench_chat_prompts(run: RunDir) -> dict[int, str]:
    """{idx: the whole prompt (long context and question)} of the cases this run answered, read from the data
    file its evaluation recorded in run.json; {} when that file is gone or was never recorded."""
    from longalign.eval.longbench_chat import load_longbench_chat as load_cases

    cfg = ((read_run_info(run).get("stages") or {}).get("eval_longbench_chat") or {}).get("config") or {}
    data = cfg.get("data")
    if not data or not Path(data).exists():
        return {}
    try:
        from longalign.rundir import BadRecords

        cases = load_cases(data, cfg.get("few_shots") or None, skipped=BadRecords(on_error="skip"))
    except (OSError, ValueError):
        return {}
    return {int(c.idx): c.prompt for c in cases}


def load_longbench_chat_summary(run: RunDir) -> dict:
    """eval/longbench_chat/summary.json ({} when absent)."""
    return read_json(run.eval_summary(LONGBENCH_CHAT), default={}) or {}


def load_needle(run: RunDir) -> pd.DataFrame:
    """Needle results, one row per (context length, depth) probe, of the judge the summary names (as the stage
    summarises them); ``recall_norm`` is computed from the stored response (with the summary's key phrases)
    for results written before the stage stored it."""
    from longalign.eval.needle import PAPER_NEEDLE, PAPER_QUESTION, default_key_phrases, with_normalised_recall

    require(run, "needle")
    summary = load_needle_summary(run)
    phrases = summary.get("key_phrases") or default_key_phrases(
        summary.get("needle") or PAPER_NEEDLE, summary.get("question") or PAPER_QUESTION
    )
    records = read_jsonl(run.needle_results())
    if "judge" in summary:  # results of other judges (an earlier run of the stage) are not this summary's
        judge = summary.get("judge") or ""
        records = [r for r in records if (r.get("judge") or "") == judge or "judge" not in r]
    df = pd.DataFrame(with_normalised_recall(records, phrases))
    if df.empty:
        raise MissingArtifact(run, "needle", "(results.jsonl holds no probes yet)")
    return df


def load_needle_summary(run: RunDir) -> dict:
    """eval/needle/summary.json ({} when absent)."""
    return read_json(run.eval_summary(NEEDLE), default={}) or {}


RULER_COLUMNS = (
    "key",
    "task",
    "category",
    "length",
    "index",
    "depths",
    "expected",
    "metric",
    "output",
    "score",
    "prompt_tokens",
    "max_new_tokens",
    "completion_tokens",
    "finish_reason",
    "seconds",
    "info",
    "model",
    "seed",
    "setup",
    "precision",
)


def load_ruler_summary(run: RunDir) -> dict:
    """eval/ruler/summary.json ({} when absent)."""
    return read_json(run.eval_summary(RULER), default={}) or {}


def load_ruler(run: RunDir) -> pd.DataFrame:
    """The ladder's samples that its summary.json summarises (the stage's
    :func:`~longalign.eval.ruler.summarised_results`: the summary's setup per task, its lengths and samples), one
    row per sample; every sample of results.jsonl when there is no summary yet."""
    from longalign.eval.ruler import summarised_results

    require(run, "ruler")
    records = summarised_results(run, load_ruler_summary(run))
    if not records:
        raise MissingArtifact(run, "ruler", "(results.jsonl holds no sample of the summarised setup yet)")
    df = pd.DataFrame(records)
    for c in RULER_COLUMNS:
        if c not in df:
            df[c] = None
    df["length"] = df["length"].astype(int)
    df["index"] = df["index"].astype(int)
    df["score"] = df["score"].astype(float)
    return df[list(RULER_COLUMNS)].sort_values(["task", "length", "index"]).reset_index(drop=True)


def load_ruler_prompt(run: RunDir, key: str, setup: str | None = None) -> dict | None:
    """The user turn and answer prefix of ladder sample ``key`` (of ``setup`` when given) from prompts.jsonl: the
    last one written, or None when the file does not hold it."""
    from longalign.rundir import iter_jsonl

    found = None
    path = run.ruler_prompts()
    if not path.is_file():
        return None
    for _, rec in iter_jsonl(path):
        if rec.get("key") == key and (setup is None or rec.get("setup") == setup):
            found = rec
    return found
