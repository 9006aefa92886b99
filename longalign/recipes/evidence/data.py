"""The evidence experiment's data: training records built from training documents and training templates only,
the short chats (split into training and held-out), and the evaluation ladder's samples on held-out documents.

Separation. The ladder's ``niah_*`` samples put their needles into the built-in pydoc topics (``docs``), a
repeated filler (``noise``) or a context of needles (``dense``), with the ladder's own sentence ("Remember
this: a secret number for <adjective>-<noun> is <7 digits>."), question and answer prefix. Training records use
the installed packages' documentation instead (any paragraph that shares an 8-word run with an evaluation document
is left out), their own fact sentence, question and reply (``TRAIN_FACT``, ``TRAIN_QUESTION``, ``TRAIN_ANSWER``),
made-up names as keys (``Tovarilen``) and codes like ``QF-482`` as values. :func:`separation_problems` checks a
built pair of sets against each other and names every overlap it finds.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longalign.eval.ruler_tasks import (
    ADJECTIVES,
    FILLER,
    HEADER,
    NOUNS,
    P_ONE,
    Q_ONE,
    VALUE_NOUNS,
    PromptFormat,
    TaskContext,
    TokenStream,
)
from longalign.recipes.evidence.config import (
    TASK_FAMILIES,
    TRAIN_ANSWER,
    TRAIN_FACT,
    TRAIN_HEADER,
    TRAIN_QUESTION,
    TRAIN_SYLLABLES,
    EvidenceConfig,
)

SHINGLE_WORDS = 8
# pieces of the ladder's templates that training text must not contain
EVAL_TEMPLATE_PIECES = (
    HEADER.strip(),
    "Remember this:",
    Q_ONE.split("{")[0].strip(),  # "What is the"
    "in the text above",
    P_ONE.split("{")[0].strip(),  # "The"
    *VALUE_NOUNS.values(),
)
# the distinctive ones (the ladder's "What is the" and "The" are ordinary English)
EVAL_TEMPLATE_CHECKS = tuple(p for p in EVAL_TEMPLATE_PIECES if len(p.split()) >= 2 and p != "What is the")


def shingles(text: str, n: int = SHINGLE_WORDS) -> set[str]:
    """Hashes of every run of ``n`` consecutive words (lower case, letters and digits only) of ``text``."""
    words = re.findall(r"\w+", text.lower())
    return {
        hashlib.blake2b(" ".join(words[i : i + n]).encode(), digest_size=8).hexdigest()
        for i in range(max(0, len(words) - n + 1))
    }


def eval_documents() -> list[str]:
    """The texts the ladder's contexts are cut from: the built-in haystack (pydoc topics) and the filler."""
    from longalign.eval.needle import load_haystack_texts

    return [*load_haystack_texts("builtin"), FILLER]


def training_documents(eval_texts: Sequence[str], seed: int) -> list[str]:
    """The installed packages' documentation in a seeded order, without any paragraph that shares an 8-word run
    with ``eval_texts`` or holds a piece of the ladder's templates."""
    from longalign.data import corpus

    banned: set[str] = set()
    for t in eval_texts:
        banned |= shingles(t)
    docs = [d["text"] for d in corpus.builtin_documents(["package-docs"]) if d["text"].strip()]
    if not docs:
        raise FileNotFoundError(
            "no package documentation found in this Python environment (the training documents); install the "
            "project's dependencies with their metadata"
        )
    random.Random(f"evidence-docs|{seed}").shuffle(docs)
    out = []
    for d in docs:
        paragraphs = [
            p
            for p in re.split(r"\n\s*\n", d)
            if p.strip()
            and not (shingles(p) & banned)
            and not any(c.lower() in p.lower() for c in EVAL_TEMPLATE_CHECKS)
        ]
        if paragraphs:
            out.append("\n\n".join(paragraphs))
    return out


def _reserved_words() -> list[str]:
    return [w for w in (*NOUNS, *ADJECTIVES) if len(w) >= 4]


def training_key(rng: random.Random, reserved: Sequence[str]) -> str:
    """A made-up name of three syllables (``Tovarilen``) that contains no word of the ladder's key vocabulary."""
    while True:
        name = "".join(rng.choice(TRAIN_SYLLABLES) for _ in range(3))
        if not any(w in name for w in reserved):
            return name.capitalize()


def training_value(rng: random.Random) -> str:
    """A code of two capital letters and three digits (``QF-482``): unlike any value of the ladder."""
    letters = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(2))
    return f"{letters}-{rng.randint(100, 999)}"


def long_records(cfg: EvidenceConfig, fmt: PromptFormat, docs: Sequence[str]) -> list[dict[str, Any]]:
    """``cfg.train_long`` records: a window of ``train_min..train_max`` tokens of the training documents (each
    record its own stretch of the stream) with one training fact at a sentence or line boundary of a random
    depth, the training question, and the fact restated as the reply."""
    rng = random.Random(f"evidence-train|{cfg.data_seed}")
    reserved = _reserved_words()
    sizes = [rng.randint(cfg.train_min, cfg.train_max) for _ in range(cfg.train_long)]
    ids: list[int] = []
    for d in docs:
        ids.extend(fmt.encode(d.strip() + "\n\n"))
        if len(ids) >= sum(sizes):
            break
    if len(ids) < sum(sizes):
        raise ValueError(
            f"the training documents give {len(ids)} tokens, {sum(sizes)} needed; lower --train-long or --train-max"
        )
    records, offset, keys = [], 0, set()
    for n in sizes:
        window = ids[offset : offset + n]
        offset += n
        key = training_key(rng, reserved)
        while key in keys:
            key = training_key(rng, reserved)
        keys.add(key)
        value = training_value(rng)
        depth = rng.uniform(0.05, 0.95)
        pos = TokenStream(fmt, window).boundary(int(n * depth))
        doc = fmt.decode(window[:pos]) + TRAIN_FACT.format(key=key, value=value) + fmt.decode(window[pos:])
        user = TRAIN_HEADER + doc.strip() + TRAIN_QUESTION.format(key=key)
        records.append(
            {
                "messages": [
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": TRAIN_ANSWER.format(key=key, value=value)},
                ],
                "source": "evidence-lookup",
                "task_type": "long",
                "lang": "en",
                "key": key,
                "value": value,
                "doc_tokens": n,
                "depth": round(pos / max(1, n), 3),
            }
        )
    return records


def short_split(cfg: EvidenceConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training chats, held-out chats) of the bundled short chat sample, split by ``cfg.data_seed``."""
    from longalign.data import ShortConfig, short

    records, _ = short.load_short_data(ShortConfig(inputs=[str(short.SHORT_SAMPLE)]))
    need = cfg.train_short + cfg.heldout_short
    if need > len(records):
        raise ValueError(
            f"{short.SHORT_SAMPLE}: {len(records)} short chats, {need} asked for (--train-short "
            f"{cfg.train_short} + --heldout-short {cfg.heldout_short}); lower them"
        )
    order = list(range(len(records)))
    random.Random(f"evidence-short|{cfg.data_seed}").shuffle(order)
    held = [{**records[i], "kind": "short"} for i in order[: cfg.heldout_short]]
    train = [{**records[i], "task_type": "short"} for i in order[cfg.heldout_short : need]]
    return train, held


def eval_samples(cfg: EvidenceConfig, tokenizer: Any) -> list[dict[str, Any]]:
    """The ladder's samples (every task x length x index), each with its prompt ids and the expected answer as the
    tokens greedy decoding must emit right after the prompt (a space, then the value)."""
    fmt = PromptFormat(tokenizer)
    ctx = TaskContext(fmt, seed=cfg.eval_seed, haystack="builtin")
    out = []
    for task in cfg.tasks:
        for length in cfg.lengths:
            for index in range(cfg.samples):
                s = ctx.build(task, length, index)
                if len(s.expected) != 1:
                    raise ValueError(f"{task}: {len(s.expected)} expected values; the experiment scores one")
                answer = " " + s.expected[0]
                out.append(
                    {
                        "key": s.key,
                        "task": task,
                        "family": TASK_FAMILIES[task],
                        "length": length,
                        "index": index,
                        "prompt_ids": list(s.prompt_ids or []),
                        "answer": answer,
                        "answer_ids": fmt.encode(answer),
                        "expected": list(s.expected),
                        "keys": list(s.info.get("keys") or []),
                        "inserts": list(s.inserts),
                        "depths": list(s.depths),
                    }
                )
    return out


def record_text(rec: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content", "")) for m in rec.get("messages", []))


def separation_problems(
    train: Iterable[dict[str, Any]],
    samples: Sequence[dict[str, Any]],
    eval_texts: Sequence[str],
    held_short: Sequence[dict[str, Any]] = (),
) -> list[str]:
    """Every way the training records touch the evaluation: an evaluation needle, key or value, or a piece of
    the ladder's templates inside a training record; an 8-word run shared with an evaluation document; a held-out
    chat trained on. Empty when the sets are separate."""
    doc_shingles: set[str] = set()
    for t in eval_texts:
        doc_shingles |= shingles(t)
    needles = {ins.strip() for s in samples for ins in s["inserts"]}
    # keys and values that are not plain words (a word value such as "walnut" may occur in any text)
    words = {w for s in samples for w in (*s["keys"], *s["expected"]) if not w.isalpha()}
    held = {json.dumps(h["messages"], sort_keys=True) for h in held_short}
    problems = []
    for i, rec in enumerate(train):
        text = record_text(rec)
        low = text.lower()
        found = [n for n in needles if n in text] + [w for w in words if w.lower() in low]
        found += [p for p in EVAL_TEMPLATE_CHECKS if p.lower() in low]
        if found:
            problems.append(f"training record {i}: contains {sorted(set(found))[:5]}")
        if shingles(text) & doc_shingles:
            problems.append(f"training record {i}: shares an {SHINGLE_WORDS}-word run with an evaluation document")
        if json.dumps(rec.get("messages"), sort_keys=True) in held:
            problems.append(f"training record {i}: is a held-out short chat")
    return problems


@dataclass
class Prepared:
    """What every arm trains on and is scored on, built once in ``<out>/data`` by :func:`prepare`."""

    tokens_dir: Path  # the training records, tokenized
    samples: list[dict[str, Any]]  # the evaluation ladder's samples
    held_short: list[dict[str, Any]]  # the held-out short chats
    description: dict[str, Any]  # the result's "data" block


DATA_KEYS = (
    "model",
    "data_seed",
    "eval_seed",
    "tasks",
    "lengths",
    "samples",
    "train_long",
    "train_min",
    "train_max",
    "train_short",
    "heldout_short",
    "pack_len",
)


def data_fingerprint(cfg: EvidenceConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in DATA_KEYS}


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    from longalign.rundir import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def prepare(cfg: EvidenceConfig, out: Path, tokenizer: Any) -> Prepared:
    """Build (or, when ``<out>/data/data.json`` was written for the same options, read back) the training records,
    their tokens, the held-out chats and the evaluation samples; refuses a separation problem."""
    from longalign.rundir import atomic_write_json, read_jsonl
    from longalign.tokenize import TokenizeConfig, tokenize_file

    data = out / "data"
    meta_path = data / "data.json"
    fingerprint = data_fingerprint(cfg)
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{meta_path} was built with other data options ({meta.get('fingerprint')}); use another --out or "
                "the same options"
            )
        return Prepared(
            data / "tokens", read_jsonl(data / "eval.jsonl"), read_jsonl(data / "heldout_short.jsonl"), meta
        )
    data.mkdir(parents=True, exist_ok=True)
    fmt = PromptFormat(tokenizer)
    eval_texts = eval_documents()
    samples = eval_samples(cfg, tokenizer)
    long = long_records(cfg, fmt, training_documents(eval_texts, cfg.data_seed))
    short_train, held = short_split(cfg)
    train = long + short_train
    random.Random(f"evidence-mix|{cfg.data_seed}").shuffle(train)
    problems = separation_problems(train, samples, eval_texts, held)
    if problems:
        raise ValueError("training and evaluation data overlap: " + "; ".join(problems[:5]))
    _write_jsonl(data / "train.jsonl", train)
    _write_jsonl(data / "heldout_short.jsonl", held)
    _write_jsonl(data / "eval.jsonl", samples)
    tok = tokenize_file(
        data / "train.jsonl",
        data / "tokens",
        TokenizeConfig(max_len=cfg.pack_len, truncation="right"),
        tokenizer=tokenizer,
        show_progress=False,
    )
    import datasets

    ds = datasets.load_from_disk(str(data / "tokens"))
    lengths = [int(x) for x in ds["length"]]
    if max(lengths) >= cfg.pack_len:
        raise ValueError(
            f"a training record has {max(lengths)} tokens, as many as --pack-len {cfg.pack_len} (it may be cut); "
            "raise --pack-len or lower --train-max"
        )
    kinds = list(ds["task_type"])
    n_target = [int(x) for x in ds["n_target"]]
    meta = {
        "fingerprint": fingerprint,
        "train_rows": len(lengths),
        "train_tokens": sum(lengths),
        "train_target_tokens": sum(n_target),
        "by_kind": {
            k: {
                "rows": kinds.count(k),
                "tokens": sum(n for n, kk in zip(lengths, kinds) if kk == k),
                "target_tokens": sum(n for n, kk in zip(n_target, kinds) if kk == k),
            }
            for k in sorted(set(kinds))
        },
        "eval_samples": len(samples),
        "heldout_short": len(held),
        "training_documents": "installed packages' documentation (paragraphs sharing an 8-word run with an "
        "evaluation document left out)",
        "evaluation_documents": "built-in pydoc topics, the ladder's filler, the ladder's needles",
        "tokenize_seconds": tok.to_dict().get("seconds"),
    }
    atomic_write_json(meta_path, meta)
    return Prepared(data / "tokens", samples, held, meta)
