"""Tokenize stage: ``data/mixed.jsonl`` -> ``tokens/`` (Arrow, ragged), loss on assistant tokens only.

Each conversation is rendered to one text by a chat format (:mod:`longalign.tokenize.formats`: the
tokenizer's own chat template, Llama-2-chat or ChatGLM3), tokenized as a whole, and labelled: tokens of
the assistant replies and of the token that closes each reply keep their id in ``labels``; everything
else is ``-100``. Labels are aligned with ``input_ids`` (the loss shifts them).

How reply tokens are found, and checked. The rendered text is also cut at every reply boundary and the
pieces are tokenized one by one. When the concatenated pieces give exactly the ids of the whole text, the
labels follow from the pieces and are exact by construction; this also proves the prompt tokenizes the
same way at inference time, when it is tokenized without the reply. When they differ (a token spans a
boundary), the whole-text ids are kept, a token is labelled when its first character lies in a reply
(offsets mapping), and the row is counted in ``n_boundary_mismatch``. The check costs a second
tokenization: ``verify=False`` labels from the offsets alone and used 1.6x less CPU (2,000 stdlib-based
conversations, embedded SmolLM2 tokenizer: 8.5 vs 13.6 CPU seconds, ``benchmarks/tokenize_throughput.py``).

Storage. Rows are ragged ``int32`` lists in an Arrow dataset (``datasets.save_to_disk``); nothing is padded.
The paper's pre-tokenizer stored dense ``[rows, max_len]`` int64 arrays of ids and labels. On the same
benchmark mix (10% long documents, mean 434 tokens, ``max_len`` 8,192) the tokens folder took 6.7 MB,
18.6x less than dense int32 arrays and 37x less than int64 ones; the gap grows with ``max_len`` (at the
paper's 65,536 it would be 8x larger again). Batching later reads only the ``length`` column.

Truncation (at ``max_len`` tokens, on ids and labels together): ``right`` keeps the head, ``left`` the
tail, ``middle`` the first ``ceil(max_len/2)`` and the last ``floor(max_len/2)`` tokens (as LongBench
truncates long prompts). A row left without target tokens teaches nothing; it is counted and, unless
``drop_no_target`` is off, dropped. Truncated rows are counted too; nothing is dropped silently.

Bad rows (invalid JSON, no ``messages``, unknown roles, non-text content) raise an error naming
``file:line`` and the fix; with ``on_error="skip"`` they are logged, counted and copied, with the reason,
to ``<out>_skipped.jsonl`` next to the output (``run/tokens_skipped.jsonl``). The dataset is written to a
temporary folder and renamed into place, so a failure never leaves a half-written ``tokens/`` behind and
never damages the previous one. Rows keep input order (batch plans index them), and ``line`` records the
input line of each row.

Parallelism: the main process reads and validates lines and writes Arrow record batches; ``num_proc``
worker processes (forked, so the tokenizer is not reloaded) render and tokenize chunks of rows, with at
most ``2 * num_proc`` chunks in flight so memory stays flat on large inputs. In the benchmark the main
process used 3% of the CPU of a 2-process run, so throughput scales with the number of free cores.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from longalign import IGNORE_INDEX
from longalign.config import Options, check_choice, option, to_dict
from longalign.rundir import RunDir
from longalign.stage import Summary, as_run_dir, record
from longalign.tokenize.formats import (
    CHAT_FORMATS,
    Rendered,
    RowError,
    format_markers,
    render,
    special_token_strings,
    validate_messages,
)

log = logging.getLogger(__name__)

TRUNCATION_POLICIES = ("right", "left", "middle")
from longalign.rundir import ON_ERROR  # noqa: E402,F401  (the accepted on_error values, shared by every reader)
from longalign.rundir import TOKENS_META as META_FILE  # noqa: E402

TOKEN_COLUMNS = ("input_ids", "labels", "length", "n_target", "source", "lang", "task_type")
CARRIED_FIELDS = ("source", "lang", "task_type")


@dataclass
class TokenizeConfig(Options):
    """Options of ``longalign tokenize`` (YAML keys are the field names)."""

    input: str | None = option(
        None,
        help='jsonl file of {"messages": [...], "source", "lang", '
        '"task_type"} records (default: <run>/data/mixed.jsonl)',
    )
    out: str | None = option(None, help="output folder of the tokenized dataset (default: <run>/tokens)")
    model: str = option("smollm2", help="tokenizer: 'smollm2' (embedded default), an HF id or a local folder")
    format: str = option(
        "template", choices=CHAT_FORMATS, help="chat format: the tokenizer's chat template, Llama-2-chat or ChatGLM3"
    )
    max_len: int = option(8192, minimum=2, help="maximum tokens per row; longer rows are truncated")
    truncation: str = option(
        "right",
        choices=TRUNCATION_POLICIES,
        help="which tokens a too-long row keeps: right = head, left = tail, middle = head and tail",
    )
    drop_no_target: bool = option(
        True, help="drop (and count) rows that have no target token, e.g. after truncation or when every reply is empty"
    )
    num_proc: int = option(1, minimum=1, help="worker processes that tokenize")
    on_error: str = option(
        "raise",
        choices=ON_ERROR,
        help="bad input rows: raise an error naming file:line, or skip, count and copy them to <out>_skipped.jsonl",
    )
    verify: bool = option(
        True,
        help="tokenize reply boundaries separately as well and count rows whose "
        "pieces do not give the ids of the whole conversation",
    )
    chunk_size: int = option(32, minimum=1, help="rows per task sent to a worker process")
    trust_remote_code: bool = option(False, help="allow tokenizers with custom code (ChatGLM3's own tokenizer)")

    def validate(self) -> TokenizeConfig:
        """Check choices and ranges again (they are checked when the config is built); returns ``self``."""
        self.__post_init__()
        return self


@dataclass
class TokenizedRow:
    """One tokenized conversation (after truncation)."""

    input_ids: np.ndarray
    labels: np.ndarray
    n_target_before: int
    truncated: bool
    boundary_mismatch: bool

    @property
    def n_target(self) -> int:
        return int(np.count_nonzero(self.labels != IGNORE_INDEX))


@dataclass
class TokenizeResult(Summary):
    """Summary of one tokenize run (also stored, with the config, in ``longalign_meta.json``)."""

    out: str
    input: str
    n_input_rows: int = 0
    n_rows: int = 0
    n_tokens: int = 0
    n_target_tokens: int = 0
    max_length: int = 0
    n_truncated: int = 0
    n_truncated_total: int = 0
    n_no_target: int = 0
    n_no_target_after_truncation: int = 0
    n_dropped: int = 0
    n_skipped: int = 0
    skipped_path: str | None = None
    n_boundary_mismatch: int = 0
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.n_input_rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The counts (``meta`` stays in ``longalign_meta.json``)."""
        out = super().to_dict()
        out.pop("meta", None)
        return out

    def lines(self) -> list[str]:
        m = self.meta
        out = [
            f"tokenized {self.input} -> {self.out}",
            f"  rows       {self.n_rows} written of {self.n_input_rows} read",
            f"  tokens     {self.n_tokens} ({self.n_target_tokens} target), longest row {self.max_length}",
            f"  truncated  {self.n_truncated} kept rows cut to {m.get('max_len')} ({m.get('truncation')})",
            f"  dropped    {self.n_dropped} without target tokens ({self.n_no_target} had none, "
            f"{self.n_no_target_after_truncation} lost them to truncation)",
            f"  skipped    {self.n_skipped} bad rows" + (f" -> {self.skipped_path}" if self.skipped_path else ""),
        ]
        if m.get("verify"):
            out.append(f"  boundary   {self.n_boundary_mismatch} rows where reply pieces tokenize differently")
        out.append(f"  seconds    {self.seconds:.2f} ({self.rows_per_s:.1f} rows/s, {self.tokens_per_s:.0f} tokens/s)")
        return out


# ---------------------------------------------------------------------------------------------------------
# one conversation
# ---------------------------------------------------------------------------------------------------------


def truncate(
    input_ids: np.ndarray, labels: np.ndarray, max_len: int, policy: str = "right"
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Cut ``input_ids``/``labels`` to ``max_len`` tokens; returns ``(ids, labels, truncated)``.

    ``right`` keeps ``[:max_len]``, ``left`` keeps ``[-max_len:]``, ``middle`` keeps the first
    ``ceil(max_len/2)`` and the last ``floor(max_len/2)`` tokens.
    """
    n = len(input_ids)
    if n <= max_len:
        return input_ids, labels, False
    if policy == "right":
        keep = slice(0, max_len)
        return input_ids[keep], labels[keep], True
    if policy == "left":
        keep = slice(n - max_len, n)
        return input_ids[keep], labels[keep], True
    if policy == "middle":
        head = (max_len + 1) // 2
        tail = max_len - head
        idx = np.r_[0:head, n - tail : n]
        return input_ids[idx], labels[idx], True
    raise ValueError(f"truncation={policy!r} is not accepted; use one of {', '.join(TRUNCATION_POLICIES)}")


class _Encoder:
    """Tokenizes rendered conversations with one tokenizer (fast path through the Rust tokenizer)."""

    def __init__(self, tokenizer: Any, chat_format: str, verify: bool = True):
        self.tokenizer = tokenizer
        self.chat_format = chat_format
        self.verify = verify
        self.specials = special_token_strings(tokenizer)
        self.backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None

    def render(self, messages: Sequence[dict[str, str]]) -> Rendered:
        return render(self.chat_format, self.tokenizer, messages, self.specials)

    def _encode_texts(self, texts: list[str], offsets: bool = False):
        if self.backend is not None:
            encs = self.backend.encode_batch(texts, add_special_tokens=False)
            return [e.ids for e in encs], ([e.offsets for e in encs] if offsets else None)
        enc = self.tokenizer(texts, add_special_tokens=False)
        return list(enc["input_ids"]), None

    def encode(self, rendered: Rendered) -> tuple[np.ndarray, np.ndarray, bool]:
        """``(input_ids, labels, boundary_mismatch)`` of one rendered conversation (not truncated)."""
        pieces = rendered.pieces()
        if not pieces:
            empty = np.zeros(0, dtype=np.int32)
            return empty, empty.copy(), False
        if self.backend is None or self.verify:
            texts = [p for p, _ in pieces]
            if self.backend is not None:  # pieces and the whole text in one call
                piece_ids, offs = self._encode_texts(texts + [rendered.text], offsets=True)
                whole_ids = np.asarray(piece_ids.pop(), dtype=np.int32)
            else:
                piece_ids, _ = self._encode_texts(texts)
            ids = np.concatenate([np.asarray(seq, dtype=np.int32) for seq in piece_ids])
            flags = np.repeat(np.array([t for _, t in pieces], dtype=bool), [len(seq) for seq in piece_ids])
            labels = np.where(flags, ids, IGNORE_INDEX).astype(np.int32)
            if self.backend is None:
                if not self.verify:
                    return ids, labels, False
                whole, _ = self._encode_texts([rendered.text])
                return ids, labels, not np.array_equal(ids, np.asarray(whole[0], dtype=np.int32))
            if np.array_equal(ids, whole_ids):
                return ids, labels, False
            return whole_ids, self._labels_from_offsets(whole_ids, offs[-1], rendered.spans), True
        whole, offs = self._encode_texts([rendered.text], offsets=True)
        whole_ids = np.asarray(whole[0], dtype=np.int32)
        return whole_ids, self._labels_from_offsets(whole_ids, offs[0], rendered.spans), False

    @staticmethod
    def _labels_from_offsets(
        ids: np.ndarray, offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]
    ) -> np.ndarray:
        """Label a token when its first character lies in a target span."""
        if not spans or len(ids) == 0:
            return np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
        off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        starts = off[:, 0].copy()
        empty = off[:, 0] == off[:, 1]
        starts[empty] = np.maximum(off[empty, 0] - 1, 0)  # zero-width token: belongs with what precedes it
        s = np.asarray([a for a, _ in spans], dtype=np.int64)
        e = np.asarray([b for _, b in spans], dtype=np.int64)
        k = np.searchsorted(s, starts, side="right") - 1
        inside = (k >= 0) & (starts < e[np.clip(k, 0, None)])
        return np.where(inside, ids, IGNORE_INDEX).astype(np.int32)

    def tokenize(self, messages: Sequence[dict[str, str]], max_len: int, truncation: str) -> TokenizedRow:
        ids, labels, mismatch = self.encode(self.render(messages))
        n_before = int(np.count_nonzero(labels != IGNORE_INDEX))
        ids, labels, truncated = truncate(ids, labels, max_len, truncation)
        return TokenizedRow(ids, labels, n_before, truncated, mismatch)


def tokenize_conversation(
    messages: Sequence[dict[str, Any]],
    tokenizer: Any,
    *,
    chat_format: str = "template",
    max_len: int | None = None,
    truncation: str = "right",
    verify: bool = True,
) -> TokenizedRow:
    """Tokenize one conversation: ``input_ids`` and ``labels`` (``-100`` outside assistant replies).

    ``messages`` is validated first (:func:`longalign.tokenize.formats.validate_messages`, raising
    :class:`~longalign.tokenize.formats.RowError`); ``max_len=None`` keeps every token.
    """
    check_choice("chat_format", chat_format, CHAT_FORMATS)
    check_choice("truncation", truncation, TRUNCATION_POLICIES)
    msgs = validate_messages(messages)
    enc = _Encoder(tokenizer, chat_format, verify)
    return enc.tokenize(msgs, max_len if max_len is not None else np.iinfo(np.int32).max, truncation)


# ---------------------------------------------------------------------------------------------------------
# worker processes
# ---------------------------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer: Any, chat_format: str, verify: bool, max_len: int, truncation: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER["encoder"] = _Encoder(tokenizer, chat_format, verify)
    _WORKER["max_len"] = max_len
    _WORKER["truncation"] = truncation


def _work_chunk(chunk: list[tuple[int, list[dict[str, str]], tuple[str, str, str]]]) -> list[tuple]:
    """Tokenize a chunk; each result is ``(line, row, fields)`` or ``(line, error message, None)``."""
    enc: _Encoder = _WORKER["encoder"]
    out = []
    for line, messages, fields in chunk:
        try:
            row = enc.tokenize(messages, _WORKER["max_len"], _WORKER["truncation"])
        except RowError as exc:
            out.append((line, str(exc), None))
            continue
        except Exception as exc:  # a chat template may raise on a conversation it does not accept
            out.append(
                (
                    line,
                    f"could not render this conversation ({type(exc).__name__}: {exc}); "
                    "check its roles and content, or use another --format",
                    None,
                )
            )
            continue
        out.append((line, row, fields))
    return out


# ---------------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------------


def skipped_path_for(out: str | Path) -> Path:
    """Where the skipped input lines of a tokenize run into ``out`` are copied (``tokens_skipped.jsonl``)."""
    out = Path(out)
    return out.parent / f"{out.name}_skipped.jsonl"


def _count_lines(path: Path) -> int:
    n = 0
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            n += block.count(b"\n")
    return n


def _read_records(path: Path) -> Iterator[tuple[int, str, Any]]:
    """Yield ``(line, raw, (messages, fields))`` for good lines and ``(line, raw, RowError)`` for bad ones."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError as exc:
                yield (
                    lineno,
                    raw,
                    RowError(
                        f"not valid JSON ({exc.msg} at column {exc.colno})",
                        "fix or remove that line (each line must be one JSON object)",
                    ),
                )
                continue
            if not isinstance(rec, dict):
                yield (
                    lineno,
                    raw,
                    RowError(
                        f"a JSON {type(rec).__name__}, not an object",
                        'each line must be an object like {"messages": [...]}',
                    ),
                )
                continue
            try:
                messages = validate_messages(rec.get("messages"))
            except RowError as exc:
                yield lineno, raw, exc
                continue
            fields = tuple("" if rec.get(k) is None else str(rec.get(k)) for k in CARRIED_FIELDS)
            yield lineno, raw, (messages, fields)


def _row_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("input_ids", pa.list_(pa.int32())),
            ("labels", pa.list_(pa.int32())),
            ("length", pa.int32()),
            ("n_target", pa.int32()),
            ("source", pa.string()),
            ("lang", pa.string()),
            ("task_type", pa.string()),
            ("line", pa.int32()),
        ]
    )


def _record_batch(rows: list[tuple[int, TokenizedRow, tuple[str, str, str]]]):
    import pyarrow as pa

    lengths = np.fromiter((len(r.input_ids) for _, r, _ in rows), dtype=np.int32, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate([r.input_ids for _, r, _ in rows]).astype(np.int32, copy=False)
    labels = np.concatenate([r.labels for _, r, _ in rows]).astype(np.int32, copy=False)
    off = pa.array(offsets, type=pa.int32())
    return pa.record_batch(
        [
            pa.ListArray.from_arrays(off, pa.array(ids, type=pa.int32())),
            pa.ListArray.from_arrays(off, pa.array(labels, type=pa.int32())),
            pa.array(lengths, type=pa.int32()),
            pa.array([r.n_target for _, r, _ in rows], type=pa.int32()),
            pa.array([f[0] for _, _, f in rows], type=pa.string()),
            pa.array([f[1] for _, _, f in rows], type=pa.string()),
            pa.array([f[2] for _, _, f in rows], type=pa.string()),
            pa.array([line for line, _, _ in rows], type=pa.int32()),
        ],
        schema=_row_schema(),
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(out: Path) -> None:
    """Remove temporary folders left next to ``out`` by tokenize runs that died."""
    if not out.parent.is_dir():
        return
    for p in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = p.name.rpartition("-")
        if kind.endswith((".tmp", ".staging", ".old")) and pid.isdigit() and not _pid_alive(int(pid)):
            log.info("removing %s left by an interrupted run", p)
            shutil.rmtree(p, ignore_errors=True)


def _tokenizer_name(tokenizer: Any, model: str | None) -> str:
    if model is not None:
        from longalign.models import model_display_name

        return model_display_name(model)
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def _check_markers(chat_format: str, tokenizer: Any) -> None:
    loose = []
    for marker in format_markers(chat_format, tokenizer):
        try:
            n = len(tokenizer(marker, add_special_tokens=False)["input_ids"])
        except Exception:  # noqa: BLE001 - a tokenizer that cannot encode a marker is reported the same way
            n = -1
        if n != 1:
            loose.append(marker)
    if loose:
        log.warning(
            "the %s format writes %s, which this tokenizer does not keep as single tokens; the model "
            "will see them as plain text (use the format's own tokenizer for parity)",
            chat_format,
            ", ".join(loose),
        )


# ---------------------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------------------


def resolve_paths(cfg: TokenizeConfig, run_dir: str | Path | RunDir | None = None) -> tuple[Path, Path]:
    """``(input, out)`` from the run directory and ``cfg.input``/``cfg.out``; a ValueError says what is missing."""
    run = as_run_dir(run_dir) if run_dir else None
    input_path = Path(cfg.input) if cfg.input else (run.mixed if run else None)
    out = Path(cfg.out) if cfg.out else (run.tokens if run else None)
    if input_path is None or out is None:
        raise ValueError(
            "say what to tokenize: --run RUN (reads RUN/data/mixed.jsonl, writes RUN/tokens) or --input FILE --out DIR"
        )
    return input_path, out


def tokenize_file(
    input_path: str | Path,
    out: str | Path,
    config: TokenizeConfig | None = None,
    *,
    tokenizer: Any = None,
    show_progress: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> TokenizeResult:
    """Tokenize a messages jsonl into a ragged Arrow dataset at ``out`` (replacing a previous one atomically).

    ``tokenizer`` defaults to ``load_tokenizer(config.model)``; ``progress(done, total)`` is called after
    each chunk of rows. Returns the summary; raises ``ValueError`` naming ``file:line`` for a bad row when
    ``config.on_error == "raise"`` (nothing is written then).
    """
    from tqdm.auto import tqdm

    cfg = (config or TokenizeConfig()).validate()
    input_path, out = Path(input_path), Path(out)
    _check_paths(input_path, out)
    tokenizer, name = _prepare_tokenizer(cfg, tokenizer)

    t0 = time.perf_counter()
    tmp_out, staging = _work_folders(out)
    result = TokenizeResult(out=str(out), input=str(input_path))
    total_lines = _count_lines(input_path)
    bar = tqdm(total=total_lines, unit="row", desc="tokenize", disable=not show_progress)
    try:
        rows = _RowWriter(staging / "rows.arrow", input_path, cfg, result)
        advance = _progress_counter(bar, progress, total_lines)

        def written(encoded: list[tuple], n: int) -> None:
            rows.write(encoded)
            advance(n)

        init_args = (tokenizer, cfg.format, cfg.verify, int(cfg.max_len), cfg.truncation)
        _encode_chunks(_chunks(input_path, cfg.chunk_size, rows), int(cfg.num_proc), init_args, written)
        rows.close()
        bar.close()
        meta = _finish(rows.path, tmp_out, out, cfg, tokenizer, name, result, t0, show_progress)
        _write_skipped_and_meta(input_path, out, rows.skipped, result, meta, t0)
        log.info("tokenized %d rows (%d tokens) into %s in %.1f s", result.n_rows, result.n_tokens, out, result.seconds)
        return result
    finally:
        bar.close()
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(tmp_out, ignore_errors=True)


def _check_paths(input_path: Path, out: Path) -> None:
    """The input must exist, and ``out`` must be absent, empty or a tokens folder (which is replaced)."""
    if not input_path.is_file():
        raise FileNotFoundError(
            f"input file {input_path} does not exist; run the data stage first "
            "(longalign data mix) or pass --input FILE"
        )
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / META_FILE).is_file())):
        raise ValueError(
            f"refusing to replace {out}: it is not a tokens folder (no {META_FILE}); choose another --out or remove it"
        )


def _prepare_tokenizer(cfg: TokenizeConfig, tokenizer: Any) -> tuple[Any, str]:
    """The tokenizer (``cfg.model``'s unless one is given), with a pad token, and its display name; warns when
    the chat format's markers are not single tokens of it."""
    if tokenizer is None:
        from longalign.models import load_tokenizer

        kwargs = {"trust_remote_code": True} if cfg.trust_remote_code else {}
        tokenizer = load_tokenizer(cfg.model, **kwargs)
        name = _tokenizer_name(tokenizer, cfg.model)
    else:
        name = _tokenizer_name(tokenizer, None)
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token
    _check_markers(cfg.format, tokenizer)
    return tokenizer, name


def _work_folders(out: Path) -> tuple[Path, Path]:
    """Fresh temporary folders next to ``out`` for this process: the dataset before its rename, and the staged
    rows (folders left by runs that died are removed first)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    pid = os.getpid()
    tmp_out = out.parent / f".{out.name}.tmp-{pid}"
    staging = out.parent / f".{out.name}.staging-{pid}"
    for p in (tmp_out, staging):
        shutil.rmtree(p, ignore_errors=True)
    staging.mkdir(parents=True)
    return tmp_out, staging


class _RowWriter:
    """The Arrow stream of staged rows: counts every encoded row into the summary, writes the kept ones in input
    order, and raises or records (``on_error``) the bad ones."""

    def __init__(self, path: Path, input_path: Path, cfg: TokenizeConfig, result: TokenizeResult):
        import pyarrow as pa

        self.path = path
        self.input_path = input_path
        self.on_error = cfg.on_error
        self.drop_no_target = bool(cfg.drop_no_target)
        self.result = result
        self.skipped: list[dict[str, Any]] = []
        self._warned = False
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, _row_schema())

    def fail_or_skip(self, line: int, message: str, raw: str | None) -> None:
        text = f"{self.input_path}:{line}: {message}"
        if self.on_error == "raise":
            raise ValueError(text + " (or pass --on-error skip to skip such rows)")
        log.warning("skipping %s", text)
        self.skipped.append({"line": line, "error": message, "text": raw})

    def write(self, encoded: list[tuple]) -> None:
        """One encoded chunk: ``(line, TokenizedRow, fields)``, or ``(line, error message, None)`` for a row the
        worker could not encode."""
        good = []
        for line, row, fields in encoded:
            if fields is None:
                self.fail_or_skip(line, row, None)
            elif self._count(row):
                good.append((line, row, fields))
        if good:
            self._writer.write_batch(_record_batch(good))
            self.result.n_rows += len(good)
        if not self._warned and self.result.n_boundary_mismatch:
            self._warned = True
            first = next((ln for ln, r, f in encoded if f is not None and r.boundary_mismatch), "?")
            log.warning(
                "%s:%s: reply pieces tokenize differently from the whole conversation; labels "
                "of such rows come from character offsets (counted in n_boundary_mismatch)",
                self.input_path,
                first,
            )

    def _count(self, row: TokenizedRow) -> bool:
        """Count ``row`` into the summary; False when it is dropped (no target tokens, ``drop_no_target``)."""
        result = self.result
        result.n_boundary_mismatch += int(row.boundary_mismatch)
        result.n_truncated_total += int(row.truncated)
        n_target = row.n_target
        if n_target == 0:
            if row.n_target_before == 0:
                result.n_no_target += 1
            else:
                result.n_no_target_after_truncation += 1
            if self.drop_no_target:
                result.n_dropped += 1
                return False
        result.n_truncated += int(row.truncated)
        result.n_tokens += len(row.input_ids)
        result.n_target_tokens += n_target
        result.max_length = max(result.max_length, len(row.input_ids))
        return True

    def close(self) -> None:
        import pyarrow as pa

        if self.result.n_rows == 0:  # an empty stream has no batch, which datasets cannot open
            self._writer.write_batch(pa.RecordBatch.from_pylist([], schema=_row_schema()))
        self._writer.close()
        self._sink.close()


def _chunks(input_path: Path, chunk_size: int, rows: _RowWriter) -> Iterator[list]:
    """Chunks of ``chunk_size`` valid records ``(line, messages, fields)``; every line read is counted, and a bad
    one goes to ``rows.fail_or_skip``."""
    chunk: list = []
    for line, raw, item in _read_records(input_path):
        rows.result.n_input_rows += 1
        if isinstance(item, RowError):
            rows.fail_or_skip(line, str(item), raw)
            continue
        chunk.append((line, item[0], item[1]))
        if len(chunk) >= chunk_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _progress_counter(bar: Any, progress: Callable[[int, int], None] | None, total: int) -> Callable[[int], None]:
    """``advance(n)``: ``n`` more input lines done, shown on ``bar`` and reported to ``progress(done, total)``."""
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        bar.update(n)
        if progress:
            progress(done, total)

    return advance


def _encode_chunks(
    chunks: Iterator[list], num_proc: int, init_args: tuple, written: Callable[[list[tuple], int], None]
) -> None:
    """Encode each chunk, in this process or on ``num_proc`` worker processes with at most ``2 * num_proc``
    chunks in flight, and hand the encoded rows and the chunk's size to ``written`` in input order."""
    if num_proc <= 1:
        _init_worker_local(*init_args)
        for chunk in chunks:
            written(_work_chunk(chunk), len(chunk))
        return
    import multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    pool = mp.get_context(method).Pool(num_proc, initializer=_init_worker, initargs=init_args)
    try:
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append((len(chunk), pool.apply_async(_work_chunk, (chunk,))))
            while len(pending) >= 2 * num_proc:
                n, fut = pending.popleft()
                written(fut.get(), n)
        while pending:
            n, fut = pending.popleft()
            written(fut.get(), n)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def _write_skipped_and_meta(
    input_path: Path, out: Path, skipped: list[dict[str, Any]], result: TokenizeResult, meta: dict[str, Any], t0: float
) -> None:
    """The skipped rows (with their raw lines) next to ``out``, or no such file; the final counts and time in
    ``result`` and in the meta file."""
    from longalign.rundir import atomic_write_json, atomic_write_text

    result.meta = meta
    spath = skipped_path_for(out)
    if skipped:
        _fill_raw_lines(input_path, skipped)
        atomic_write_text(spath, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in skipped))
        result.skipped_path = str(spath)
    elif spath.exists():
        spath.unlink()
    result.n_skipped = len(skipped)
    meta.update(n_skipped=result.n_skipped, skipped_path=result.skipped_path)
    result.seconds = round(time.perf_counter() - t0, 3)
    meta["seconds"] = result.seconds
    atomic_write_json(out / META_FILE, meta)


def _init_worker_local(tokenizer: Any, chat_format: str, verify: bool, max_len: int, truncation: str) -> None:
    """In-process variant of the worker initializer (leaves TOKENIZERS_PARALLELISM alone)."""
    _WORKER["encoder"] = _Encoder(tokenizer, chat_format, verify)
    _WORKER["max_len"] = max_len
    _WORKER["truncation"] = truncation


def _fill_raw_lines(path: Path, skipped: list[dict[str, Any]]) -> None:
    want = {s["line"]: s for s in skipped if s.get("text") is None}
    if not want:
        return
    with path.open(encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno in want:
                want[lineno]["text"] = raw


def _finish(
    arrow_path: Path,
    tmp_out: Path,
    out: Path,
    cfg: TokenizeConfig,
    tokenizer: Any,
    name: str,
    result: TokenizeResult,
    t0: float,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Save the staged rows as a dataset in ``tmp_out``, write the meta file, and rename into ``out``."""
    from datasets import Dataset
    from datasets.utils import logging as ds_logging

    from longalign.rundir import atomic_write_json

    bars_were_on = ds_logging.is_progress_bar_enabled()
    if not show_progress:
        ds_logging.disable_progress_bar()
    try:
        ds = Dataset.from_file(str(arrow_path))
        ds.save_to_disk(str(tmp_out))
        del ds
    finally:
        if bars_were_on:
            ds_logging.enable_progress_bar()
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    meta = {
        "tokenizer": name,
        "vocab_size": int(len(tokenizer)),
        "chat_format": cfg.format,
        "max_len": int(cfg.max_len),
        "truncation": cfg.truncation,
        "n_rows": result.n_rows,
        "n_truncated": result.n_truncated,
        "eos_token_id": int(eos) if eos is not None else -1,
        "pad_token_id": int(pad) if pad is not None else (int(eos) if eos is not None else -1),
        "columns": [*TOKEN_COLUMNS, "line"],
        "input": str(cfg.input or result.input),
        "n_input_rows": result.n_input_rows,
        "n_tokens": result.n_tokens,
        "n_target_tokens": result.n_target_tokens,
        "max_length": result.max_length,
        "n_truncated_total": result.n_truncated_total,
        "n_no_target": result.n_no_target,
        "n_no_target_after_truncation": result.n_no_target_after_truncation,
        "n_dropped": result.n_dropped,
        "drop_no_target": bool(cfg.drop_no_target),
        "n_boundary_mismatch": result.n_boundary_mismatch,
        "verify": bool(cfg.verify),
        "config": to_dict(cfg),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    atomic_write_json(tmp_out / META_FILE, meta)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp_out, out)
    shutil.rmtree(old, ignore_errors=True)
    return meta


def run(
    cfg: TokenizeConfig, run_dir: str | Path | RunDir, *, tokenizer: Any = None, show_progress: bool = True
) -> TokenizeResult:
    """The tokenize stage: ``<run>/data/mixed.jsonl`` (or ``cfg.input``) into ``<run>/tokens`` (or ``cfg.out``),
    recorded in run.json."""
    run_ = as_run_dir(run_dir)
    input_path, out = resolve_paths(cfg, run_)
    result = tokenize_file(input_path, out, cfg, tokenizer=tokenizer, show_progress=show_progress)
    record(run_, "tokenize", cfg, result)
    return result


def load_tokens(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """Open a tokens folder: ``(datasets.Dataset, meta dict)``; a clear error when it is not one."""
    from datasets import load_from_disk

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"tokens folder {path} does not exist; create it with "
            "`longalign tokenize --run RUN` (or --input FILE --out DIR)"
        )
    meta_path = path / META_FILE
    if not path.is_dir() or not meta_path.is_file():
        raise ValueError(f"{path} is not a tokens folder (no {META_FILE}); point to the output of `longalign tokenize`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta_path} is not valid JSON ({exc.msg}); re-run `longalign tokenize`") from None
    if meta.get("n_rows") == 0:  # datasets cannot reopen a saved dataset without rows
        from datasets import Dataset, Features

        ds = Dataset.from_dict({f.name: [] for f in _row_schema()}, features=Features.from_arrow_schema(_row_schema()))
    else:
        ds = load_from_disk(str(path))
    missing = [c for c in TOKEN_COLUMNS if c not in ds.column_names]
    if missing:
        raise ValueError(f"{path} lacks column(s) {', '.join(missing)}; re-run `longalign tokenize`")
    return ds, meta
