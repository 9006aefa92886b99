"""The ablation's data: the needle and continuation rows, held-out rows on their own text, the small tokenizer
and model trained on them, and :func:`prepare`, which builds all of it in a work folder."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longalign.recipes.ablation.config import (
    CONTINUE_PROMPT,
    KINDS,
    NEEDLE_QUESTION,
    NEEDLE_TEMPLATE,
    SYSTEM,
    WORDS,
    AblationConfig,
)


def one_token_words(tokenizer: Any, words: Sequence[str] = WORDS) -> list[str]:
    """Words the tokenizer keeps as a single token after a space (so a passcode is one prediction)."""
    return [w for w in words if len(tokenizer.encode(" " + w, add_special_tokens=False)) == 1]


def needle_row(hay: Any, tokenizer: Any, rng: Any, lo: int, hi: int, n_tokens: int, word: str) -> dict[str, Any]:
    """One needle conversation: ``n_tokens`` of haystack from ``[lo, hi)`` with the passcode sentence at a
    sentence boundary of a random depth (10-90%)."""
    from longalign.eval.needle import build_user_prompt, needle_ids_for

    start = int(rng.integers(lo, max(lo + 1, hi - n_tokens)))
    base = hay.ids[start : start + n_tokens]
    needle = NEEDLE_TEMPLATE.format(word=word)
    pos = hay.sentence_start(base, int(len(base) * rng.uniform(0.1, 0.9)))
    ids = list(base[:pos]) + needle_ids_for(tokenizer, needle) + list(base[pos:])
    context = tokenizer.decode(ids)
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": build_user_prompt(context, NEEDLE_QUESTION)},
        {"role": "assistant", "content": needle},
    ]
    return {
        "messages": messages,
        "source": "ablation-needle",
        "task_type": "needle",
        "lang": "en",
        "answer": word,
        "doc_tokens": len(ids),
        "depth": round(pos / max(1, len(base)), 3),
    }


def continuation_row(ids: Sequence[int], tokenizer: Any, rng: Any, lo: int, hi: int, cfg: AblationConfig) -> dict:
    n_target = int(rng.integers(cfg.continuation_min, cfg.continuation_max + 1))
    need = cfg.prompt_tokens + n_target
    start = int(rng.integers(lo, max(lo + 1, hi - need)))
    prompt = tokenizer.decode(ids[start : start + cfg.prompt_tokens]).strip()
    target = tokenizer.decode(ids[start + cfg.prompt_tokens : start + need]).strip()
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": CONTINUE_PROMPT.format(text=prompt)},
        {"role": "assistant", "content": target},
    ]
    return {"messages": messages, "source": "ablation-continuation", "task_type": "continuation", "lang": "en"}


def bucket_name(n: int, edges: Sequence[int]) -> str:
    for a, b in zip(edges[:-1], edges[1:]):
        if n < b:
            return f"{a}-{b}"
    return f"{edges[-2]}-{edges[-1]}"


def source_texts() -> tuple[list[str], list[str]]:
    """(needle haystack texts: the built-in pydoc topics, continuation texts: installed packages' docs)."""
    from longalign.data import corpus
    from longalign.eval.needle import load_haystack_texts

    hay = load_haystack_texts("builtin")
    docs = [d["text"] for d in corpus.builtin_documents(["package-docs"]) if d["text"].strip()]
    return hay, docs or hay  # a Python without package documentation: continue pydoc topics instead


def train_tokenizer(texts: Sequence[str], vocab_size: int, folder: Path, template: Any) -> Any:
    """A byte-level BPE tokenizer of ``vocab_size`` tokens trained on ``texts``, with the special tokens and
    chat template of ``template`` (the embedded SmolLM2 tokenizer), saved to ``folder``. The output layer of a
    49,152-token vocabulary is ~80% of the compute of the small model here; 4,096 tokens cut it twelvefold."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [template.pad_token if template.pad_token != template.eos_token else "<|endoftext|>"]
    specials += [t for t in (template.bos_token, template.eos_token) if t and t not in specials]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=template.bos_token,
        eos_token=template.eos_token,
        pad_token=specials[0],
    )
    tok.chat_template = template.chat_template
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(folder))
    return tok


def build_rows(cfg: AblationConfig, tokenizer: Any) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """(training rows, held-out rows, data description). Needle documents come from the built-in pydoc
    topics, continuations from the installed packages' documentation; the held-out rows use the last fifth
    of each token stream and the training rows the rest, so no held-out text is trained on."""
    import numpy as np

    from longalign.eval.needle import Haystack

    rng = np.random.default_rng(cfg.data_seed)
    words = one_token_words(tokenizer)[: cfg.n_words]
    if len(words) < 2:
        raise ValueError("fewer than two one-token passcode words for this tokenizer; lower --n-words")
    texts, docs = source_texts()
    hay = Haystack(tokenizer, texts, min_tokens=5 * cfg.needle_max + 1)
    cut = int(len(hay.ids) * 0.8)
    if cut - cfg.needle_max < 1 or len(hay.ids) - cut - cfg.needle_max < 1:
        raise ValueError(f"the haystack ({len(hay.ids)} tokens) is too short for needle_max={cfg.needle_max}")
    stream: list[int] = []
    for t in docs:
        stream.extend(tokenizer.encode(t.strip() + "\n\n", add_special_tokens=False))
        if len(stream) > 40 * (cfg.prompt_tokens + cfg.continuation_max) * (cfg.n_continuation + cfg.eval_continuation):
            break
    ccut = int(len(stream) * 0.8)

    train: list[dict] = []
    for _ in range(cfg.n_needle):
        n = int(rng.integers(cfg.needle_min, cfg.needle_max + 1))
        train.append(needle_row(hay, tokenizer, rng, 0, cut, n, str(rng.choice(words))))
    for _ in range(cfg.n_continuation):
        train.append(continuation_row(stream, tokenizer, rng, 0, ccut, cfg))
    order = rng.permutation(len(train))
    train = [train[i] for i in order]

    held: list[dict] = []
    edges = cfg.buckets
    for a, b in zip(edges[:-1], edges[1:]):
        for _ in range(cfg.eval_needle_per_bucket):
            n = int(rng.integers(a, b))
            row = needle_row(hay, tokenizer, rng, cut, len(hay.ids), n, str(rng.choice(words)))
            held.append(row)
    for _ in range(cfg.eval_continuation):
        held.append(continuation_row(stream, tokenizer, rng, ccut, len(stream), cfg))
    info = {
        "words": words,
        "chance_exact_match": 1.0 / len(words),
        "haystack_tokens": len(hay.ids),
        "continuation_stream_tokens": len(stream),
    }
    return train, held, info


def encode_held_out(rows: Sequence[dict], tokenizer: Any, edges: Sequence[int]) -> list[dict[str, Any]]:
    """Token ids, labels, kind and length bucket of each held-out row."""
    from longalign.tokenize import tokenize_conversation

    out = []
    for r in rows:
        tok = tokenize_conversation(r["messages"], tokenizer)
        ids, labels = [int(x) for x in tok.input_ids], [int(x) for x in tok.labels]
        kind = r["task_type"]
        bucket = bucket_name(r["doc_tokens"], edges) if kind == "needle" else "all"
        answer = r.get("answer")
        word_ids = tokenizer.encode(" " + answer, add_special_tokens=False) if answer else []
        out.append(
            {
                "kind": kind,
                "bucket": bucket,
                "input_ids": ids,
                "labels": labels,
                "answer": answer,
                "answer_id": word_ids[0] if len(word_ids) == 1 else None,
            }
        )
    return out


def model_config(cfg: AblationConfig, tokenizer: Any, max_positions: int) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": len(tokenizer),
        "hidden_size": cfg.hidden,
        "intermediate_size": 3 * cfg.hidden,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.heads,
        "max_position_embeddings": int(2 ** math.ceil(math.log2(max(64, max_positions)))),
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "use_cache": False,
    }


def kind_stats(kind: str, kinds: Sequence[str], lengths: Sequence[int], n_target: Sequence[int]) -> dict[str, Any]:
    """Rows, mean length, mean target tokens and share of the target tokens of one kind of training row."""
    idx = [i for i, k in enumerate(kinds) if k == kind]
    return {
        "rows": len(idx),
        "mean_length": statistics.fmean(lengths[i] for i in idx) if idx else None,
        "mean_target_tokens": statistics.fmean(n_target[i] for i in idx) if idx else None,
        "target_token_share": sum(n_target[i] for i in idx) / max(1, sum(n_target)),
    }


@dataclass
class Prepared:
    """What every arm trains on and is scored on, built once in the work folder by :func:`prepare`."""

    tokenizer: Any  # the tokenizer of the rows: trained here, or the embedded one (vocab_size 0)
    tokenizer_dir: Path | None  # where the trained tokenizer is saved (None: the embedded one)
    tokens_dir: Path  # the training rows, tokenized
    model_dir: Path  # config.json of the random-init model
    model: dict[str, Any]  # that config
    held: list[dict[str, Any]]  # the held-out rows, encoded
    lengths: list[int]  # of the training rows, in token order
    n_target: list[int]
    kinds: list[str]
    pack_len: int
    description: dict[str, Any]  # the result's "data" block


def prepare(cfg: AblationConfig, work: Path) -> Prepared:
    """Train the tokenizer (unless ``cfg.vocab_size`` is 0), build the training and held-out rows, tokenize the
    training rows and write the model config, all in ``work``; training runs are given the loaded tokenizer."""
    from longalign.rundir import atomic_write_text
    from longalign.tokenize import TokenizeConfig, tokenize_file
    from longalign.train import cached_tokenizer, preload_tokenizer

    base_tok = cached_tokenizer("smollm2")
    tokenizer_dir = None
    if cfg.vocab_size:
        hay_texts, doc_texts = source_texts()
        if cfg.smoke:  # a 1,024-token vocabulary needs little text (0.6 s instead of ~3 s)
            hay_texts, doc_texts = hay_texts[:20], doc_texts[:20]
        # the passcode sentences are part of the training text, so every passcode word gets its own token
        words = " ".join(NEEDLE_TEMPLATE.format(word=w) for w in WORDS)
        tokenizer_dir = work / "tokenizer"
        probe_tok = train_tokenizer(
            [*hay_texts, *doc_texts, *([words] * 2000)], cfg.vocab_size, tokenizer_dir, base_tok
        )
        preload_tokenizer(str(tokenizer_dir), probe_tok)
    else:
        probe_tok = base_tok
    train_rows, held_rows, data_info = build_rows(cfg, probe_tok)
    for name, rows in (("train.jsonl", train_rows), ("held_out.jsonl", held_rows)):
        atomic_write_text(work / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tokens_dir = work / "tokens"
    cap = cfg.needle_max + 400
    tok_res = tokenize_file(
        work / "train.jsonl",
        tokens_dir,
        TokenizeConfig(max_len=cap, truncation="left"),
        tokenizer=probe_tok,
        show_progress=False,
    )
    import datasets

    ds = datasets.load_from_disk(str(tokens_dir))
    lengths = [int(x) for x in ds["length"]]
    n_target = [int(x) for x in ds["n_target"]]
    kinds = list(ds["task_type"])
    pack_len = cfg.pack_len or max(max(lengths), int(round(cfg.batch_size * statistics.fmean(lengths))))
    held = encode_held_out(held_rows, probe_tok, cfg.buckets)
    model = model_config(cfg, probe_tok, max(pack_len, max(len(r["input_ids"]) for r in held)))
    model_dir = work / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(model))
    if tokenizer_dir is None:  # the trainer looks the tokenizer up by the model spec: share the loaded one
        preload_tokenizer(f"random:{model_dir}", probe_tok)
    description = {
        **data_info,
        "train_rows": len(lengths),
        "train_tokens": sum(lengths),
        "train_target_tokens": sum(n_target),
        "kinds": {k: kind_stats(k, kinds, lengths, n_target) for k in KINDS},
        "held_out": {
            "needle_per_bucket": cfg.eval_needle_per_bucket,
            "continuation": cfg.eval_continuation,
            "buckets": cfg.buckets,
        },
        "pack_len": pack_len,
        "tokenizer": f"byte-level BPE, {len(probe_tok)} tokens" if tokenizer_dir else "SmolLM2 (embedded)",
        "tokenize": {"rows": tok_res.to_dict().get("n_rows"), "seconds": tok_res.to_dict().get("seconds")},
    }
    return Prepared(
        probe_tok, tokenizer_dir, tokens_dir, model_dir, model, held, lengths, n_target, kinds, pack_len, description
    )
