"""Short chat data: ShareGPT and ``messages`` files, normalised with stated policies.

LongAlign trains on its long examples mixed with ShareGPT conversations, "empty assistant replies removed";
the data suites differ only in how many long examples join (0k / 5k / 10k). Real ShareGPT dumps are messy,
so every conversation goes through one normalisation with a stated policy, and every change is counted:

* roles: ``human``/``user`` → user; ``gpt``/``chatgpt``/``assistant``/``bard``/``bing``/``model`` →
  assistant; ``system`` → system; anything else (``tool``, ``function``, ``observation``, typos) is
  *unknown*.
* ``system_policy``: ``drop`` (default: the chat formats of the training stage differ in how, or whether,
  they render a system turn, so plain SFT data is safest without one) or ``keep-leading`` (keep a system
  turn at the very start; system turns elsewhere are dropped).
* ``unknown_role_policy``: ``drop-conversation`` (default: a tool turn removed from the middle leaves an
  answer that refers to something no longer there) or ``drop-turn``.
* empty or whitespace-only assistant replies: the reply and the user turn it answers are removed (the
  paper's rule); an empty user turn removes its exchange too.
* consecutive turns of the same role are merged with a blank line; assistant turns before the first user
  turn are dropped; a trailing user turn without a reply is dropped (no loss target).
* a conversation with no user→assistant exchange left is dropped; exact duplicates are dropped
  (``dedupe``).

The mix with long examples is :mod:`longalign.data.mix`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longalign.config import check_choice, option
from longalign.options import InputErrorOptions
from longalign.rundir import BadRecord, BadRecords, RunDir, atomic_write_text, iter_jsonl, skipped_lines
from longalign.stage import Summary, as_run_dir, record

log = logging.getLogger(__name__)

ROLE_MAP = {
    "human": "user",
    "user": "user",
    "prompter": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "assistant": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
}
SYSTEM_POLICIES = ("drop", "keep-leading")
UNKNOWN_ROLE_POLICIES = ("drop-conversation", "drop-turn")
SHORT_SAMPLE = Path(__file__).resolve().parents[1] / "resources" / "short_chat_sample.json"  # ShareGPT format


@dataclass
class ShortConfig(InputErrorOptions):
    """Options of ``longalign data short``."""

    inputs: list[str] = option(
        default_factory=list,
        help="ShareGPT (.json list or .jsonl with 'conversations') "
        "or messages (.jsonl with 'messages') files, or "
        "hf:<dataset name>; several allowed",
    )
    hf_split: str = option("train", help="split of an hf:<name> input")
    system_policy: str = option(
        "drop", choices=SYSTEM_POLICIES, help="drop every system turn, or keep one only at the start of a conversation"
    )
    unknown_role_policy: str = option(
        "drop-conversation",
        choices=UNKNOWN_ROLE_POLICIES,
        help="what to do with turns whose role is neither user, assistant nor system",
    )
    dedupe: bool = option(True, help="drop conversations identical to an earlier one")
    max_conversations: int = option(
        0, minimum=0, help="keep at most this many conversations, sampled with seed (0 = all)"
    )
    source: str | None = option(None, help="value of the 'source' field (default: 'sharegpt' or the file name)")
    seed: int = option(42, help="sampling seed for max_conversations")


# ---------------------------------------------------------------------------------------------- reading


def _iter_file(path: Path, skipped: BadRecords | None = None) -> Iterator[tuple[str, Any]]:
    """``(location, record)`` pairs from a .json list or a .jsonl file; errors name file:line. Invalid JSON
    lines of a .jsonl go to ``skipped`` (a .json file that does not parse is one error for the whole file)."""
    if not path.is_file():
        raise FileNotFoundError(f"short-data file {path} does not exist; check the path given to --inputs")
    with path.open(encoding="utf-8") as fh:
        head = fh.read(4096).lstrip()
    if head.startswith("["):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); a .json file must hold one list of conversations"
            ) from None
        for i, rec in enumerate(data):
            yield f"{path}[{i}]", rec
        return
    for lineno, rec in iter_jsonl(path, strict=True, skipped=skipped):
        yield f"{path}:{lineno}", rec


def _iter_hf(name: str, split: str) -> Iterator[tuple[str, Any]]:
    import datasets

    ds = datasets.load_dataset(name, split=split)
    for i, rec in enumerate(ds):
        yield f"{name}[{split}][{i}]", rec


def raw_turns(rec: Any, where: str) -> list[tuple[str, str]]:
    """``(raw role, text)`` pairs of a ShareGPT or messages record; a malformed record raises
    :class:`~longalign.rundir.BadRecord` (a ``ValueError``) naming ``where``."""
    if not isinstance(rec, dict):
        raise BadRecord(
            where, f"expected a JSON object with 'conversations' or 'messages', got {type(rec).__name__}", "wrong_shape"
        )
    if "conversations" in rec:
        turns, role_key, text_key = rec["conversations"], "from", "value"
    elif "messages" in rec:
        turns, role_key, text_key = rec["messages"], "role", "content"
    else:
        raise BadRecord(
            where,
            f"no 'conversations' (ShareGPT) or 'messages' list (keys: {', '.join(sorted(rec)) or 'none'})",
            "missing_field",
        )
    if not isinstance(turns, list):
        raise BadRecord(
            where, f"'{'conversations' if role_key == 'from' else 'messages'}' must be a list", "wrong_shape"
        )
    out = []
    for j, t in enumerate(turns):
        if not isinstance(t, dict):
            raise BadRecord(where, f"turn {j} is not an object", "wrong_shape")
        role = t.get(role_key, t.get("role", t.get("from")))
        text = t.get(text_key, t.get("content", t.get("value")))
        if role is None:
            raise BadRecord(where, f"turn {j} has no '{role_key}' field", "missing_field")
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise BadRecord(where, f"turn {j} text must be a string, got {type(text).__name__}", "wrong_shape")
        out.append((str(role), text))
    return out


# --------------------------------------------------------------------------------------------- normalise


def normalize_conversation(
    turns: list[tuple[str, str]],
    *,
    system_policy: str = "drop",
    unknown_role_policy: str = "drop-conversation",
    counts: Counter | None = None,
) -> list[dict[str, str]] | None:
    """Clean one conversation per the module's policy; returns messages, or None when it is dropped.

    ``counts`` receives ``turn:<reason>`` and ``conversation:<reason>`` increments.
    """
    check_choice("system_policy", system_policy, SYSTEM_POLICIES)
    check_choice("unknown_role_policy", unknown_role_policy, UNKNOWN_ROLE_POLICIES)
    c = counts if counts is not None else Counter()
    msgs: list[dict[str, str]] = []
    for i, (raw_role, text) in enumerate(turns):
        role = ROLE_MAP.get(raw_role.strip().lower())
        if role is None:
            if unknown_role_policy == "drop-conversation":
                c["conversation:unknown_role"] += 1
                return None
            c["turn:unknown_role"] += 1
            continue
        if role == "system":
            if system_policy == "keep-leading" and not msgs and i == 0 and text.strip():
                msgs.append({"role": "system", "content": text})
            else:
                c["turn:system"] += 1
            continue
        msgs.append({"role": role, "content": text})
    # merge consecutive turns of one role
    merged: list[dict[str, str]] = []
    for m in msgs:
        if merged and merged[-1]["role"] == m["role"] and m["role"] != "system":
            if m["content"].strip():
                merged[-1] = {
                    "role": m["role"],
                    "content": (merged[-1]["content"].rstrip() + "\n\n" + m["content"].lstrip()).strip(),
                }
            c["turn:merged_same_role"] += 1
        else:
            merged.append(dict(m))
    system = [m for m in merged[:1] if m["role"] == "system"]
    body = merged[len(system) :]
    while body and body[0]["role"] == "assistant":
        body.pop(0)
        c["turn:leading_assistant"] += 1
    # exchanges: user followed by assistant; drop an exchange whose reply (or question) is empty
    out: list[dict[str, str]] = []
    j = 0
    while j < len(body):
        user = body[j]
        reply = body[j + 1] if j + 1 < len(body) else None
        if reply is None:
            c["turn:trailing_user"] += 1
            break
        if not reply["content"].strip():
            c["turn:empty_assistant"] += 2  # the empty reply and the user turn it answers
        elif not user["content"].strip():
            c["turn:empty_user"] += 2
        else:
            out.extend([user, reply])
        j += 2
    if not out:
        c["conversation:no_exchange_left"] += 1
        return None
    return system + out


@dataclass
class ShortReport(Summary):
    """What ``data short`` did: conversations read and kept, what was dropped and why, kept per input."""

    read: int
    kept: int
    dropped_conversations: dict[str, int]
    dropped_turns: dict[str, int]
    by_input: dict[str, int]
    path: Path | None = None
    skipped: dict[str, Any] = field(default_factory=dict)  # bad input records (on_error=skip): BadRecords.to_dict()

    def lines(self) -> list[str]:
        return [
            f"wrote {self.kept} of {self.read} conversations to {self.path}",
            *skipped_lines(self.skipped),
            *super().lines(),
        ]


def load_short_data(cfg: ShortConfig) -> tuple[list[dict[str, Any]], ShortReport]:
    """Read, normalise, dedupe and (optionally) sample short conversations; records carry the
    ``{"messages", "source", "lang", "task_type": "chat"}`` schema. A malformed record (invalid JSON line,
    wrong shape, missing field) raises naming ``file:line``, or with ``cfg.on_error="skip"`` is left out
    (not counted in ``read``) and listed in ``report.skipped``."""
    from longalign.data.corpus import detect_lang

    if not cfg.inputs:
        raise ValueError(
            "no short-data inputs given; pass --inputs FILE[,FILE...] (ShareGPT .json/.jsonl or messages .jsonl)"
        )
    counts: Counter = Counter()
    records: list[dict[str, Any]] = []
    by_input: dict[str, int] = {}
    seen: set[str] = set()
    skipped = BadRecords(cfg.on_error)
    n_read = 0
    for spec in cfg.inputs:
        if spec.startswith("hf:"):
            items: Iterable[tuple[str, Any]] = _iter_hf(spec[3:], cfg.hf_split)
            default_source = spec[3:]
        else:
            path = Path(spec)
            items = _iter_file(path, skipped)
            default_source = "sharegpt" if "sharegpt" in path.name.lower() else path.stem
        kept_here = 0
        for where, rec in items:
            try:
                turns = raw_turns(rec, where)
            except BadRecord as err:
                skipped.add(err)
                continue
            n_read += 1
            msgs = normalize_conversation(
                turns, system_policy=cfg.system_policy, unknown_role_policy=cfg.unknown_role_policy, counts=counts
            )
            if msgs is None:
                continue
            if cfg.dedupe:
                h = hashlib.sha1(json.dumps(msgs, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()
                if h in seen:
                    counts["conversation:duplicate"] += 1
                    continue
                seen.add(h)
            first_user = next(m["content"] for m in msgs if m["role"] == "user")
            source = cfg.source or (rec.get("source") if isinstance(rec.get("source"), str) else None) or default_source
            out = {"messages": msgs, "source": source, "lang": detect_lang(first_user), "task_type": "chat"}
            if rec.get("id") is not None:
                out["id"] = str(rec["id"])
            records.append(out)
            kept_here += 1
        by_input[spec] = kept_here
    if cfg.max_conversations and len(records) > cfg.max_conversations:
        rng = random.Random(cfg.seed)
        idx = sorted(rng.sample(range(len(records)), cfg.max_conversations))
        counts["conversation:over_max_conversations"] += len(records) - len(idx)
        records = [records[i] for i in idx]
    report = ShortReport(
        read=n_read,
        kept=len(records),
        dropped_conversations={
            k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("conversation:")
        },
        dropped_turns={k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("turn:")},
        by_input=by_input,
        skipped=skipped.to_dict(),
    )
    return records, report


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write all records at once through a temporary file and a rename."""
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def run(cfg: ShortConfig, run_dir: str | Path | RunDir) -> ShortReport:
    """The ``data.short`` step: :func:`load_short_data` into ``<run>/data/short.jsonl``, recorded in run.json."""
    run_ = as_run_dir(run_dir)
    records, report = load_short_data(cfg)
    write_jsonl(run_.short, records)
    report.path = run_.short
    record(run_, "data.short", cfg, report)
    return report
