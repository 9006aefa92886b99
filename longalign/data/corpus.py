"""Long-document corpus: read documents, measure them in target-model tokens, filter and sample by length.

Sources (``CorpusConfig.input``):

* ``builtin`` — texts that exist on every machine with this package installed, no download needed:
  the larger Python standard-library modules (``stdlib-code``), the ``pydoc_data.topics`` help entries
  (``pydoc``, prose), installed packages' long descriptions (``package-docs``, Markdown/RST) and licence
  files shipped in ``site-packages`` (``license``). Enough for a toy run end to end; not a substitute for
  the paper's nine web/book/code sources.
* a ``.jsonl`` file with ``text`` and optional ``id``, ``source``, ``lang`` per line,
* a folder of ``.txt`` / ``.md`` files (searched recursively),
* ``hf:<dataset name>`` — ``datasets.load_dataset(name, split=...)`` with a text column.

Lengths are counted with the target model's tokenizer (the one training will use), because the paper's
8k–64k range and its length buckets are in those tokens. Tokenising is the cost: on this (shared, 2-core)
machine the fast tokenizer manages roughly 0.5–1.7 M characters per second, so tokenising all ~10 MB of
built-in candidates takes 6–20 s. Three things keep ``longalign data corpus`` at a few seconds:

* exact bound: a byte-level BPE token covers at least one byte, so a text with fewer UTF-8 bytes than
  ``min_tokens`` is dropped untokenised; a heuristic bound drops texts longer than ``max_tokens *
  max_chars_per_token`` characters (code and prose average 3–4.5 characters per token; 10 is generous);
* lazy draw: when ``n_docs`` is smaller than the pool, the weighted draw order is fixed first, using each
  text's bucket *estimated* from its characters (a characters-per-token ratio per source, measured on a
  seeded calibration batch), and texts are tokenised in draw order, in batches, until ``n_docs`` pass the
  exact min/max filter (200 of ~800 built-in candidates: ~440 tokenised, ~6 s);
* batches of ``batch_size`` texts per tokenizer call.

Sampling follows the paper's "longer documents upsampled": every document gets the weight of its length
bucket and N documents are drawn without replacement with probability proportional to that weight
(Efraimidis–Spirakis keys ``u ** (1 / w)``, seeded), so a re-run with the same seed picks the same set.
:func:`sample_by_length` is the same draw on exact lengths.

Language is detected from the script of the letters (CJK ideographs → ``zh``, kana → ``ja``, Hangul →
``ko``, Cyrillic → ``ru``, Latin → ``en``): enough to split English from Chinese data, which is all the
prompts need; it does not tell English from other Latin-script languages.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import sysconfig
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longalign.config import check_choice, option
from longalign.options import InputErrorOptions
from longalign.rundir import BadRecords, RunDir, atomic_write_text, iter_jsonl, skipped_lines
from longalign.stage import Summary, as_run_dir, record

log = logging.getLogger(__name__)

BUILTIN_SOURCES = ("stdlib-code", "pydoc", "package-docs", "license")
FOLDER_SUFFIXES = (".txt", ".md")


@dataclass
class CorpusConfig(InputErrorOptions):
    """Options of ``longalign data corpus``."""

    input: str = option(
        "builtin",
        help="where documents come from: 'builtin' (texts installed on this machine), "
        "a .jsonl file (text, optional id/source/lang), a folder of .txt/.md "
        "files, or hf:<dataset name>",
    )
    builtin_sources: list[str] = option(
        default_factory=lambda: list(BUILTIN_SOURCES),
        choices=BUILTIN_SOURCES,
        help="which built-in sources to use: " + ", ".join(BUILTIN_SOURCES),
    )
    hf_split: str = option("train", help="split of the HF dataset (input=hf:<name>)")
    hf_config: str | None = option(None, help="configuration name of the HF dataset, if it has several")
    text_column: str = option("text", help="column holding the document text (HF dataset)")
    id_column: str = option("id", help="column holding a document id (HF dataset); row number if absent")
    tokenizer: str | None = option(
        None, help="model spec whose tokenizer measures lengths (default: the embedded SmolLM2-135M-Instruct)"
    )
    min_tokens: int = option(1024, minimum=0, help="drop documents shorter than this many tokens")
    max_tokens: int = option(8192, minimum=1, help="drop documents longer than this many tokens")
    n_docs: int = option(
        200, minimum=0, help="how many documents to sample (0 = every document that passes the filters)"
    )
    bucket_edges: list[int] = option(
        default_factory=lambda: [2048, 4096, 8192, 16384, 32768], help="token-length bucket boundaries (ascending)"
    )
    bucket_weights: list[float] = option(
        default_factory=lambda: [1.0, 1.5, 2.0, 2.5, 3.0, 3.5],
        help="sampling weight of each bucket (one more than bucket_edges); "
        "larger weights for longer buckets upsample long documents",
    )
    langs: list[str] = option(default_factory=list, help="keep only these languages (e.g. en,zh; empty = all)")
    seed: int = option(42, help="sampling seed")
    max_chars_per_token: float = option(
        10.0,
        minimum=1,
        help="texts longer than max_tokens * this many characters are skipped without tokenising (speed bound)",
    )
    batch_size: int = option(64, minimum=1, help="documents per tokenizer call")
    dedupe: bool = option(True, help="drop documents whose text is identical to an earlier one")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_buckets(self.bucket_edges, self.bucket_weights)
        if self.min_tokens > self.max_tokens:
            raise ValueError(
                f"min_tokens ({self.min_tokens}) is larger than max_tokens ({self.max_tokens}): no document can pass; "
                "lower --min-tokens or raise --max-tokens"
            )


@dataclass
class CorpusSummary(Summary):
    """What ``data corpus`` did: counts read / kept / dropped by reason, histograms of the kept documents."""

    input: str
    read: int
    candidates: int
    written: int
    dropped: dict[str, int]
    tokenized: int
    by_source: dict[str, int]
    by_lang: dict[str, int]
    by_bucket: dict[str, int]
    tokens: int
    seconds: dict[str, float]
    path: Path | None = None
    skipped: dict[str, Any] = field(default_factory=dict)  # bad input records (on_error=skip): BadRecords.to_dict()

    def lines(self) -> list[str]:
        return [f"wrote {self.written} documents to {self.path}", *skipped_lines(self.skipped), *super().lines()]

    @property
    def exit_code(self) -> int:
        return 0 if self.written else 1


# ----------------------------------------------------------------------------------------------- language


def _script_counts(text: str) -> dict[str, int]:
    counts = {"han": 0, "kana": 0, "hangul": 0, "cyrillic": 0, "latin": 0}
    for ch in text:
        o = ord(ch)
        if o < 128:
            if ch.isalpha():
                counts["latin"] += 1
        elif 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x2A6DF:
            counts["han"] += 1
        elif 0x3040 <= o <= 0x30FF:
            counts["kana"] += 1
        elif 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF:
            counts["hangul"] += 1
        elif 0x0400 <= o <= 0x04FF:
            counts["cyrillic"] += 1
        elif ch.isalpha() and o < 0x0250:
            counts["latin"] += 1
    return counts


def detect_lang(text: str, sample_chars: int = 6000) -> str:
    """Language code from the letters' scripts: 'zh', 'ja', 'ko', 'ru', 'en' (Latin script) or 'unknown'.

    One CJK ideograph carries roughly as much as a short Latin word, so ideographs count three times
    against Latin letters: a Chinese text quoting English terms or code still comes out 'zh'.
    """
    if len(text) > sample_chars:  # three evenly spaced slices are enough and keep this O(sample_chars)
        part = sample_chars // 3
        mid = len(text) // 2
        text = text[:part] + text[mid - part // 2 : mid + part // 2] + text[-part:]
    c = _script_counts(text)
    cjk = c["han"] + c["kana"]
    total = 3 * (cjk + c["hangul"]) + c["cyrillic"] + c["latin"]
    if total == 0:
        return "unknown"
    if 3 * c["hangul"] / total > 0.3:
        return "ko"
    if 3 * cjk / total > 0.3:
        return "ja" if c["kana"] > 0.1 * cjk else "zh"
    if c["cyrillic"] / total > 0.5:
        return "ru"
    if c["latin"] / total > 0.5:
        return "en"
    return "unknown"


# ------------------------------------------------------------------------------------------------ readers


def _doc(text: str, doc_id: str, source: str, lang: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": doc_id, "source": source, "lang": lang, "text": text, **extra}


def read_jsonl_documents(path: str | Path, *, skipped: BadRecords | None = None) -> list[dict[str, Any]]:
    """Documents from a jsonl file; every error names ``file:line`` and what to fix.

    A bad line (invalid JSON, not an object, no 'text' string, a repeated id) raises, or with ``skipped``
    in ``on_error="skip"`` mode is counted there and left out.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"document file {path} does not exist")
    bad = skipped if skipped is not None else BadRecords()
    docs: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for lineno, rec in iter_jsonl(path, skipped=bad):
        where = f"{path}:{lineno}"
        if not isinstance(rec, dict):
            bad.bad(where, f"expected a JSON object with a 'text' field, got {type(rec).__name__}", "wrong_shape")
            continue
        text = rec.get("text")
        if not isinstance(text, str):
            bad.bad(
                where,
                f"missing 'text' string (keys present: {', '.join(sorted(rec)) or 'none'}); "
                "every line needs a 'text' field with the document",
                "missing_field",
            )
            continue
        doc_id = str(rec["id"]) if rec.get("id") is not None else f"{path.stem}:{lineno}"
        if doc_id in seen:
            bad.bad(where, f"id {doc_id!r} already used on line {seen[doc_id]}; ids must be unique", "duplicate_id")
            continue
        seen[doc_id] = lineno
        extra = {k: v for k, v in rec.items() if k not in ("text", "id", "source", "lang", "n_tokens")}
        docs.append(_doc(text, doc_id, str(rec.get("source") or path.stem), rec.get("lang"), **extra))
    return docs


def read_folder_documents(
    folder: str | Path, suffixes: Iterable[str] = FOLDER_SUFFIXES, *, skipped: BadRecords | None = None
) -> list[dict[str, Any]]:
    """One document per .txt/.md file under ``folder`` (recursive, sorted by path); id = relative path.

    A file that is not UTF-8 raises, or with ``skipped`` in ``on_error="skip"`` mode is counted and left out.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"document folder {folder} does not exist")
    bad = skipped if skipped is not None else BadRecords()
    suffixes = tuple(s.lower() for s in suffixes)
    docs = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            bad.bad(
                str(path),
                f"not UTF-8 text ({exc.reason} at byte {exc.start}); convert it to UTF-8 or remove it from the folder",
                "not_utf8",
            )
            continue
        rel = path.relative_to(folder).as_posix()
        docs.append(_doc(text, rel, folder.name or "folder"))
    if not docs:
        raise ValueError(f"{folder}: no {'/'.join(suffixes)} files found; put documents there or name another folder")
    return docs


def read_hf_documents(
    name: str, *, split: str = "train", config: str | None = None, text_column: str = "text", id_column: str = "id"
) -> list[dict[str, Any]]:
    """Documents from an HF dataset (downloads through ``datasets`` unless cached)."""
    import datasets

    ds = datasets.load_dataset(name, config, split=split)
    if text_column not in ds.column_names:
        raise ValueError(
            f"dataset {name} has no column {text_column!r} (columns: {', '.join(ds.column_names)}); set text_column"
        )
    has_id = id_column in ds.column_names
    has_lang = "lang" in ds.column_names
    docs = []
    for i, row in enumerate(ds):
        doc_id = str(row[id_column]) if has_id else f"{name}:{split}:{i}"
        docs.append(_doc(row[text_column] or "", doc_id, name, row["lang"] if has_lang else None))
    return docs


def _stdlib_documents() -> list[dict[str, Any]]:
    import os

    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    skip_dirs = {
        "test",
        "tests",
        "idlelib",
        "site-packages",
        "dist-packages",
        "__pycache__",
        "lib2to3",
        "ensurepip",
        "config-3",
        "lib-dynload",
    }
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip_dirs and not d.startswith("config-"))
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = Path(folder) / name
            try:
                if path.stat().st_size < 2000:
                    continue
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            docs.append(_doc(text, f"stdlib:{path.relative_to(root).as_posix()}", "stdlib-code", "en"))
    return docs


def _pydoc_documents() -> list[dict[str, Any]]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        return []
    return [_doc(text, f"pydoc:{name}", "pydoc") for name, text in sorted(topics.items())]


def _distributions():
    from importlib import metadata

    seen = set()
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").strip()
        if not name or name.lower() in seen:
            continue
        seen.add(name.lower())
        yield name, dist


def _package_doc_documents() -> list[dict[str, Any]]:
    docs = []
    for name, dist in sorted(_distributions(), key=lambda x: x[0].lower()):
        text = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if isinstance(text, str) and text.strip():
            docs.append(_doc(text, f"pkg:{name}", "package-docs"))
    return docs


def _license_files(dist: Any) -> list[tuple[str, Path]]:
    """(relative name, path) of licence-like files in a distribution's metadata folder."""
    meta_dir = getattr(dist, "_path", None)  # PathDistribution: listing the folder avoids parsing RECORD
    found: list[tuple[str, Path]] = []
    if meta_dir is not None and Path(meta_dir).is_dir():
        for path in sorted(Path(meta_dir).rglob("*")):
            rel = path.relative_to(meta_dir).as_posix()
            if path.is_file() and _is_license_name(rel):
                found.append((rel, path))
        return found
    for f in dist.files or []:
        if _is_license_name(f.as_posix()):
            found.append((f.as_posix(), Path(dist.locate_file(f))))
    return found


def _is_license_name(rel: str) -> bool:
    base = rel.rsplit("/", 1)[-1].upper()
    suffix = base.rsplit(".", 1)[-1] if "." in base else ""
    if suffix not in ("", "TXT", "MD", "RST"):
        return False
    return base.startswith(("LICENSE", "LICENCE", "COPYING", "NOTICE")) or rel.startswith("licenses/")


def _license_documents() -> list[dict[str, Any]]:
    docs = []
    for name, dist in sorted(_distributions(), key=lambda x: x[0].lower()):
        for rel, path in _license_files(dist):
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            docs.append(_doc(text, f"license:{name}/{rel}", "license"))
    return docs


_BUILTIN_READERS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "stdlib-code": _stdlib_documents,
    "pydoc": _pydoc_documents,
    "package-docs": _package_doc_documents,
    "license": _license_documents,
}


def builtin_documents(sources: Iterable[str] = BUILTIN_SOURCES) -> list[dict[str, Any]]:
    """Long texts installed on this machine, tagged with their ``source``."""
    docs = []
    for src in sources:
        check_choice("builtin_sources", src, BUILTIN_SOURCES)
        found = _BUILTIN_READERS[src]()
        log.info("built-in source %s: %d texts", src, len(found))
        docs.extend(found)
    return docs


def read_documents(cfg: CorpusConfig, *, skipped: BadRecords | None = None) -> list[dict[str, Any]]:
    """Raw documents (not yet measured or filtered) for ``cfg.input``; bad records of a user file go to
    ``skipped`` (default: a :class:`BadRecords` with ``cfg.on_error``)."""
    skipped = skipped if skipped is not None else BadRecords(cfg.on_error)
    spec = cfg.input.strip()
    if spec == "builtin":
        return builtin_documents(cfg.builtin_sources)
    if spec.startswith("hf:"):
        return read_hf_documents(
            spec[3:], split=cfg.hf_split, config=cfg.hf_config, text_column=cfg.text_column, id_column=cfg.id_column
        )
    path = Path(spec)
    if path.is_dir():
        return read_folder_documents(path, skipped=skipped)
    if path.is_file():
        return read_jsonl_documents(path, skipped=skipped)
    raise FileNotFoundError(
        f"corpus input {spec!r} is neither 'builtin', hf:<name>, an existing .jsonl file nor a folder; pass --input "
        "a .jsonl file of {'text': ...} documents, a folder of .txt/.md files, builtin or hf:<name>"
    )


# --------------------------------------------------------------------------------------- measure & sample


def count_tokens(texts: list[str], tokenizer: Any, batch_size: int = 64) -> list[int]:
    """Token count of each text (no special tokens), tokenising ``batch_size`` texts per call."""
    out: list[int] = []
    for i in range(0, len(texts), max(1, batch_size)):
        enc = tokenizer(texts[i : i + batch_size], add_special_tokens=False, return_attention_mask=False)
        out.extend(len(ids) for ids in enc["input_ids"])
    return out


def length_bucket(n_tokens: int, edges: list[int]) -> int:
    """Index of the bucket holding ``n_tokens``: 0 below edges[0], len(edges) at or above edges[-1]."""
    for i, edge in enumerate(edges):
        if n_tokens < edge:
            return i
    return len(edges)


def check_buckets(edges: list[int], weights: list[float]) -> None:
    if list(edges) != sorted(edges):
        raise ValueError(f"bucket_edges must be ascending, got {edges}")
    if len(weights) != len(edges) + 1:
        raise ValueError(
            f"bucket_weights needs {len(edges) + 1} values (one more than bucket_edges), got {len(weights)}"
        )
    if any(w <= 0 for w in weights):
        raise ValueError(f"bucket_weights must all be positive, got {weights}")


def sample_by_length(
    docs: list[dict[str, Any]], n: int, edges: list[int], weights: list[float], seed: int
) -> list[dict[str, Any]]:
    """Draw ``n`` documents without replacement, P ∝ weight of the length bucket (all when ``n`` is 0 or
    not smaller than ``len(docs)``). The result keeps the draw order."""
    check_buckets(edges, weights)
    if n <= 0 or n >= len(docs):
        return list(docs)
    rng = random.Random(seed)
    keyed = []
    for d in docs:
        w = weights[length_bucket(d["n_tokens"], edges)]
        u = rng.random() or 1e-300
        keyed.append((math.log(u) / w, d))  # log of u ** (1/w): same order, no underflow
    keyed.sort(key=lambda kv: kv[0], reverse=True)
    return [d for _, d in keyed[:n]]


def _draw_lazily(
    candidates: list[dict[str, Any]], cfg: CorpusConfig, tokens_of: Callable[[list[int]], list[int]]
) -> list[int]:
    """Weighted draw without replacement that tokenises only the documents it reaches; returns the indices
    of the chosen candidates in draw order.

    The draw order needs each document's bucket before it is tokenised, so the bucket is estimated from its
    character count with a characters-per-token ratio measured on a seeded calibration batch (per source,
    since code and prose differ); the min/max filter then uses exact counts as documents are reached in
    draw order, and the draw stops once ``n_docs`` pass. With 200 of ~900 built-in texts this tokenises
    about a third of them.
    """
    rng = random.Random(cfg.seed)
    calib_idx = sorted(rng.sample(range(len(candidates)), min(len(candidates), max(16, cfg.batch_size))))
    ratios: dict[str, list[float]] = {}
    for i, n in zip(calib_idx, tokens_of(calib_idx)):
        ratios.setdefault(candidates[i]["source"], []).append(len(candidates[i]["text"]) / max(1, n))
    all_r = sorted(r for rs in ratios.values() for r in rs)
    default_ratio = all_r[len(all_r) // 2] if all_r else 4.0
    ratio = {src: sorted(rs)[len(rs) // 2] for src, rs in ratios.items()}
    keyed = []
    for i, d in enumerate(candidates):
        est = len(d["text"]) / ratio.get(d["source"], default_ratio)
        w = cfg.bucket_weights[length_bucket(int(est), cfg.bucket_edges)]
        u = rng.random() or 1e-300
        keyed.append((math.log(u) / w, i))
    keyed.sort(key=lambda kv: kv[0], reverse=True)
    order = [i for _, i in keyed]
    chosen: list[int] = []
    pos = 0
    while len(chosen) < cfg.n_docs and pos < len(order):
        step = max(cfg.batch_size, int((cfg.n_docs - len(chosen)) * 1.3))
        batch = order[pos : pos + step]
        pos += step
        for i, n in zip(batch, tokens_of(batch)):
            if cfg.min_tokens <= n <= cfg.max_tokens:
                chosen.append(i)
    return chosen[: cfg.n_docs]


def build_corpus(
    cfg: CorpusConfig,
    out_path: str | Path | None = None,
    *,
    tokenizer: Any = None,
    docs: list[dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read, measure, filter and sample documents; write ``out_path`` (jsonl, atomically) when given.

    Returns ``(documents, summary)``; each document is ``{"id", "source", "lang", "n_tokens", "text"}``.
    """
    import json

    t0 = time.perf_counter()
    skipped = BadRecords(cfg.on_error)
    raw = docs if docs is not None else read_documents(cfg, skipped=skipped)
    t_read = time.perf_counter() - t0
    dropped: dict[str, int] = {}
    candidates = _prefilter(raw, cfg, dropped)

    t1 = time.perf_counter()
    if tokenizer is None:
        from longalign.models import load_tokenizer

        tokenizer = load_tokenizer(cfg.tokenizer)
    t_tok_load = time.perf_counter() - t1
    t2 = time.perf_counter()
    tokens_of = _TokenCounts(candidates, tokenizer, cfg.batch_size)
    chosen_idx = _choose(candidates, cfg, tokens_of)
    for n in tokens_of.counts.values():
        if n < cfg.min_tokens:
            _drop(dropped, "too_short")
        elif n > cfg.max_tokens:
            _drop(dropped, "too_long")
    chosen = [_corpus_record(candidates[i], tokens_of.counts[i]) for i in chosen_idx]
    t_tokenize = time.perf_counter() - t2
    if cfg.n_docs and len(chosen) < cfg.n_docs:
        log.warning("only %d documents pass the filters (asked for %d); keeping all of them", len(chosen), cfg.n_docs)

    summary = {
        "input": cfg.input,
        "read": len(raw),
        "candidates": len(candidates),
        "written": len(chosen),
        "dropped": dict(sorted(dropped.items())),
        "tokenized": len(tokens_of.counts),
        **_corpus_histograms(chosen, cfg.bucket_edges),
        "tokens": sum(d["n_tokens"] for d in chosen),
        "seconds": {
            "read": round(t_read, 3),
            "load_tokenizer": round(t_tok_load, 3),
            "tokenize": round(t_tokenize, 3),
            "total": round(time.perf_counter() - t0, 3),
        },
        "skipped": skipped.to_dict(),
    }
    if out_path is not None:
        atomic_write_text(out_path, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in chosen))
    log.info(
        "corpus: %d read, %d tokenized, %d written in %.1f s",
        len(raw),
        len(tokens_of.counts),
        len(chosen),
        summary["seconds"]["total"],
    )
    return chosen, summary


def _drop(dropped: dict[str, int], reason: str) -> None:
    dropped[reason] = dropped.get(reason, 0) + 1


def _prefilter(raw: list[dict[str, Any]], cfg: CorpusConfig, dropped: dict[str, int]) -> list[dict[str, Any]]:
    """The documents that pass the checks needing no tokenizer, in order; the others are counted in ``dropped``
    by reason. A document without ``lang`` gets the detected one."""
    candidates = []
    seen_hash: set[str] = set()
    max_chars = cfg.max_tokens * cfg.max_chars_per_token
    for d in raw:
        reason = _prefilter_reason(d, cfg, max_chars, seen_hash)
        if reason is None:
            candidates.append(d)
        else:
            _drop(dropped, reason)
    return candidates


def _prefilter_reason(d: dict[str, Any], cfg: CorpusConfig, max_chars: int, seen_hash: set[str]) -> str | None:
    """Why ``d`` is dropped before tokenising (None: it is a candidate): empty, more characters than
    ``max_tokens`` can hold, fewer UTF-8 bytes than ``min_tokens`` (a token covers at least one byte), a
    duplicate of an earlier text (``dedupe``), or not in ``langs``."""
    text = d["text"]
    if not text.strip():
        return "empty"
    if len(text) > max_chars:
        return "too_long"
    if len(text.encode("utf-8")) < cfg.min_tokens:
        return "too_short"
    if cfg.dedupe:
        h = hashlib.sha1(text.encode("utf-8")).hexdigest()
        if h in seen_hash:
            return "duplicate"
        seen_hash.add(h)
    if not d.get("lang"):
        d["lang"] = detect_lang(text)
    if cfg.langs and d["lang"] not in cfg.langs:
        return "language"
    return None


class _TokenCounts:
    """``tokens_of(indices)``: the token counts of those candidates, each tokenised once, when first asked for
    (``batch_size`` texts per tokenizer call); ``counts`` holds every count taken."""

    def __init__(self, candidates: list[dict[str, Any]], tokenizer: Any, batch_size: int):
        self.candidates = candidates
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.counts: dict[int, int] = {}

    def __call__(self, indices: list[int]) -> list[int]:
        missing = [i for i in indices if i not in self.counts]
        texts = [self.candidates[i]["text"] for i in missing]
        for i, n in zip(missing, count_tokens(texts, self.tokenizer, self.batch_size)):
            self.counts[i] = n
        return [self.counts[i] for i in indices]


def _choose(
    candidates: list[dict[str, Any]], cfg: CorpusConfig, tokens_of: Callable[[list[int]], list[int]]
) -> list[int]:
    """Indices of the candidates to keep: all within ``min_tokens..max_tokens`` when ``n_docs`` asks for all of
    them (or more), else a lazy length-weighted draw of ``n_docs`` (:func:`_draw_lazily`)."""
    if cfg.n_docs <= 0 or cfg.n_docs >= len(candidates):
        every = list(range(len(candidates)))
        return [i for i, n in zip(every, tokens_of(every)) if cfg.min_tokens <= n <= cfg.max_tokens]
    return _draw_lazily(candidates, cfg, tokens_of)


def _corpus_record(d: dict[str, Any], n_tokens: int) -> dict[str, Any]:
    """A corpus.jsonl record: ``id, source, lang, n_tokens, text`` first, then the document's other fields."""
    fixed = ("id", "source", "lang", "n_tokens", "text")
    return {
        "id": d["id"],
        "source": d["source"],
        "lang": d["lang"],
        "n_tokens": n_tokens,
        "text": d["text"],
        **{k: v for k, v in d.items() if k not in fixed},
    }


def _histogram(items: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        k = str(key(it))
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items()))


def _bucket_name(n: int, edges: list[int]) -> str:
    """``"lo-hi"`` of the length bucket holding ``n`` tokens (``"lo+"`` for the last one)."""
    b = length_bucket(n, edges)
    lo = edges[b - 1] if b > 0 else 0
    hi = edges[b] if b < len(edges) else None
    return f"{lo}-{hi}" if hi is not None else f"{lo}+"


def _corpus_histograms(chosen: list[dict[str, Any]], edges: list[int]) -> dict[str, dict[str, int]]:
    """Documents kept by source, by language and by length bucket (buckets in length order)."""
    by_bucket = _histogram(chosen, lambda d: _bucket_name(d["n_tokens"], edges))
    return {
        "by_source": _histogram(chosen, lambda d: d["source"]),
        "by_lang": _histogram(chosen, lambda d: d["lang"]),
        "by_bucket": dict(sorted(by_bucket.items(), key=lambda kv: int(kv[0].split("-")[0].rstrip("+")))),
    }


def run(cfg: CorpusConfig, run_dir: str | Path | RunDir, *, tokenizer: Any = None) -> CorpusSummary:
    """The ``data.corpus`` step: :func:`build_corpus` into ``<run>/data/corpus.jsonl``, recorded in run.json."""
    run_ = as_run_dir(run_dir)
    _, counts = build_corpus(cfg, run_.corpus, tokenizer=tokenizer)
    summary = CorpusSummary(**counts, path=run_.corpus)
    record(run_, "data.corpus", cfg, summary)
    return summary


def read_corpus(path: str | Path) -> list[dict[str, Any]]:
    """Documents of a corpus.jsonl written by :func:`build_corpus` (strict: a bad line names file:line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build it first with: longalign data corpus --run <dir>")
    docs = []
    for lineno, rec in iter_jsonl(path, strict=True):
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str) or rec.get("id") is None:
            raise ValueError(f"{path}:{lineno}: a corpus record needs 'id' and 'text'")
        docs.append(rec)
    return docs


def select_documents(docs: list[dict[str, Any]], ids: Iterable[str]) -> list[dict[str, Any]]:
    """The documents with these ``ids``, in the order given; an id not in ``docs`` is replaced by the shortest
    document (by ``n_tokens``) neither asked for nor used yet, so a stale id still yields a document.

    For picking a few documents to send to a slow generator: the shortest ones cost the least prompt time
    (a 135M model on two cores reads ~1k tokens in a few seconds, 4k in 15-30 s).
    """
    ids = list(ids)
    by_id = {d["id"]: d for d in docs}
    spare = [d for d in sorted(docs, key=lambda d: d["n_tokens"]) if d["id"] not in ids]
    missing = [i for i in ids if i not in by_id]
    if len(missing) > len(spare):
        raise ValueError(
            f"{len(missing)} of the requested ids are not in the corpus ({missing[:3]}...) and only "
            f"{len(spare)} other documents are left to stand in; ask for fewer ids"
        )
    return [by_id[i] if i in by_id else spare.pop(0) for i in ids]
