"""A controlled ablation of batching and loss weighting that runs on a CPU.

The question is the paper's (LongAlign §3.2 and §4): does packing without loss weighting under-train
sequences with few target tokens, does the LongAlign loss weighting (eq. 4, ``loss_norm="sequence"``) fix it,
and do sorting and packing reach the same quality sooner than naive batching?

One training mix holds the tension on purpose::

    needle        long input, short target   a pydoc passage of 200-800 tokens with one planted sentence
                                             "The passcode is <word>." and the question "What is the
                                             passcode?"; the reply "The passcode is <word>." is ~7 tokens
    continuation  short input, long target   32 tokens of package documentation and "Continue this text:";
                                             the reply is the next 48-96 tokens

A needle row carries about a tenth of a continuation row's target tokens, so how a step normalises its loss
decides how much the needle task is trained at all. Per-token weights of one sequence with N_i targets, for a
step of M sequences in K packs (pack k holding N_k targets), as :func:`longalign.batching.token_weights` sets
them::

    token     1 / sum_i N_i           a needle row weighs N_i / sum N: about a tenth of a continuation row
    pack      1 / (K * N_k)           a needle row packed beside continuations: as little; in a pack of
                                      needles: as much as a whole pack of continuations
    sequence  1 / (M * N_i)           every row weighs 1/M, whatever its length (eq. 4)

Arms (same rows, same epochs, same seeds; ``grad_accum`` micro-batches per optimizer step, and the pack capacity
chosen so that a pack holds about as many rows as a padded batch, so the steps per epoch match; with one pack per
step ``pack`` and ``token`` would be the same loss):
``naive+token``, ``sort+sequence``, ``pack+pack`` (eq. 3), ``pack+token``, ``pack+sequence`` (eq. 4). Every
arm trains through :func:`longalign.train.train` (the real plan, collators, loss weights and attention
backends); nothing here re-implements a loss or a batch.

The model is a small randomly initialised Llama (3 layers, width 128) on a 4,096-token byte-level BPE vocabulary
trained on the experiment's own texts with SmolLM2's chat template and special tokens. The pretrained SmolLM2-135M
fine-tunes at ~100 tokens/s on two cores, hours for 15 runs; with SmolLM2's 49,152-token vocabulary the output
layer would take about half of even the small model's compute (more for a narrower one). With the small vocabulary
a run trains in 10-15 s on a quiet 2-core machine (144 optimizer steps of 4 rows). At this size and budget the
model does not learn the passcode lookup (exact match stays at the 1/16 of a guess); what it learns -- the
reply template and part of the passcode distribution -- is already what the loss normalisation decides, and
the held-out needle loss, split into the passcode token and the template, measures it.

Held-out rows (their own haystack region and documents) are scored during training, outside the training clock:

* loss per kind and per length bucket: the mean over rows of each row's mean target-token cross-entropy;
* needle exact match: greedy decoding would emit the reference reply token for token -- in one teacher-forced
  pass, the argmax at every reply position equals the reference token; key-phrase recall
  (:func:`longalign.eval.needle.key_phrase_recall`) of the passcode in the argmax reply.

Time-to-quality: the training seconds an arm needs to reach the final mixed held-out loss of ``naive+token``
(same seed; linear interpolation between evaluations), as a ratio to naive's time, on the wall clock, on CPU
time, and on a clock that busy spells of other work on the machine cannot stretch (optimizer steps x the run's
median step time); beside it the epoch-time speed-up ``longalign.batching.simulate`` predicts for these lengths,
with FLOP-derived costs and with costs fitted to the measured steps. ``needle_weight_share`` is the part of each
step's loss weight that falls on needle rows, from the weights training uses.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longalign.config import Options, option
from longalign.stage import Summary

log = logging.getLogger(__name__)

ARMS: dict[str, tuple[str, str]] = {
    "naive+token": ("naive", "token"),
    "sort+sequence": ("sort", "sequence"),
    "pack+pack": ("pack", "pack"),
    "pack+token": ("pack", "token"),
    "pack+sequence": ("pack", "sequence"),
}
KINDS = ("needle", "continuation")
RESULT_FILE = "ablation.json"
FIGURE_FILE = "ablation.html"
FIGURE_PNG = "ablation.png"
SCHEMA_VERSION = 1
NEEDLE_TEMPLATE = "The passcode is {word}."
NEEDLE_QUESTION = "What is the passcode?"
CONTINUE_PROMPT = "Continue this text:\n\n{text}"
SYSTEM = "You are a helpful assistant."
# candidate passcodes; those that the tokenizer keeps as one token after a space are used
WORDS = """apple river falcon copper garden silver planet winter forest marble ocean rocket tiger violet
harbor candle dragon meadow orange pencil thunder castle island mirror velvet anchor bridge cactus dolphin
engine feather glacier hammer jungle kettle lemon magnet needle parrot quartz saddle tunnel walnut yellow
zebra basket cotton desert ember fossil granite honey ivory jacket kernel ladder mango nickel olive pepper
rabbit salmon timber violin wagon""".split()

# ------------------------------------------------------------------------------------------------ config


@dataclass
class AblationConfig(Options):
    """Options of ``longalign experiment ablation`` (``benchmarks/ablation.py``)."""

    out: str = option("benchmarks/results", help="folder of ablation.json, ablation.html (and .png with kaleido)")
    workdir: str | None = option(
        None, help="folder for the data, tokens and training runs (default: a temporary folder, removed after)"
    )
    smoke: bool = option(False, help="the smallest configuration (seconds): for tests and the notebook")
    arms: list[str] = option(
        default_factory=lambda: list(ARMS), choices=tuple(ARMS), help="arms to train (batching+loss_norm)"
    )
    seeds: list[int] = option(default_factory=lambda: [0, 1, 2], help="training seeds (model init and batch order)")
    data_seed: int = option(1234, help="seed of the training and held-out rows (the same for every arm and seed)")
    n_needle: int = option(96, minimum=1, help="training rows with a long input and a short target")
    n_continuation: int = option(96, minimum=1, help="training rows with a short input and a long target")
    eval_needle_per_bucket: int = option(6, minimum=1, help="held-out needle rows per length bucket")
    eval_continuation: int = option(8, minimum=1, help="held-out continuation rows")
    needle_min: int = option(200, minimum=32, help="shortest needle document in tokens")
    needle_max: int = option(800, minimum=32, help="longest needle document in tokens")
    buckets: list[int] = option(
        default_factory=lambda: [200, 400, 600, 800],
        help="edges of the needle length buckets of the held-out set (tokens of the document)",
    )
    prompt_tokens: int = option(32, minimum=4, help="tokens of text a continuation row shows")
    continuation_min: int = option(48, minimum=4, help="fewest target tokens of a continuation row")
    continuation_max: int = option(96, minimum=4, help="most target tokens of a continuation row")
    n_words: int = option(16, minimum=2, help="passcodes drawn from this many one-token words (chance = 1/n)")
    vocab_size: int = option(
        4096,
        minimum=0,
        help="byte-level BPE vocabulary trained on the experiment's own texts, with SmolLM2's chat template "
        "and special tokens (0 = the embedded SmolLM2 tokenizer, 49,152 tokens: ~10x slower on a CPU)",
    )
    hidden: int = option(128, minimum=8, help="model width")
    layers: int = option(3, minimum=1, help="decoder layers")
    heads: int = option(4, minimum=1, help="attention heads")
    batch_size: int = option(2, minimum=1, help="rows per micro-batch of naive and sort")
    grad_accum: int = option(
        2, minimum=1, help="micro-batches (padded batches or packs) per optimizer step; pack differs from token at 2+"
    )
    pack_len: int = option(
        0, minimum=0, help="pack capacity in tokens (0 = batch_size x mean row length, at least the longest row)"
    )
    epochs: float = option(3.0, help="passes over the training rows (the same for every arm)")
    learning_rate: float = option(
        3e-3, help="peak learning rate (cosine schedule, warm-up over the first 5 percent of the steps)"
    )
    evals: int = option(6, minimum=1, help="held-out evaluations per run (plus one before training)")
    threads: int = option(2, minimum=1, help="torch threads")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.needle_max < self.needle_min:
            raise ValueError(f"needle_max={self.needle_max} < needle_min={self.needle_min}; swap them")
        if self.continuation_max < self.continuation_min:
            raise ValueError(
                f"continuation_max={self.continuation_max} < continuation_min={self.continuation_min}; swap them"
            )
        if len(self.buckets) < 2 or sorted(self.buckets) != list(self.buckets):
            raise ValueError(f"buckets must be at least two increasing edges, got {self.buckets}")
        if not self.seeds:
            raise ValueError("seeds is empty; pass at least one seed, e.g. --seeds 0")

    def resolved(self) -> AblationConfig:
        """The config with the smoke preset applied (the smallest end-to-end run)."""
        if not self.smoke:
            return self
        return dataclasses.replace(
            self,
            arms=list(self.arms),
            seeds=list(self.seeds[:1]),
            n_needle=6,
            n_continuation=6,
            eval_needle_per_bucket=1,
            eval_continuation=2,
            needle_min=48,
            needle_max=160,
            buckets=[48, 100, 160],
            prompt_tokens=12,
            continuation_min=24,
            continuation_max=40,
            vocab_size=1024,
            hidden=32,
            layers=1,
            heads=2,
            batch_size=2,
            grad_accum=2,
            epochs=1.0,
            evals=2,
        )


# ------------------------------------------------------------------------------------------------ data


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


# ------------------------------------------------------------------------------------------------ evaluation


def evaluate(model: Any, rows: Sequence[dict[str, Any]], tokenizer: Any) -> dict[str, Any]:
    """Held-out metrics of ``model`` (see the module docstring); the model's head runs on target rows only."""
    import torch

    from longalign.eval.needle import key_phrase_recall

    was_training = model.training
    model.eval()
    head = model.get_output_embeddings()
    per_kind: dict[str, list[float]] = {}
    per_bucket: dict[str, list[float]] = {}
    em: list[float] = []
    recall: list[float] = []
    word_loss: list[float] = []  # cross-entropy at the passcode token: the lookup itself
    frame_loss: list[float] = []  # the other reply tokens: the fixed template "The passcode is ... ."
    try:
        with torch.no_grad():
            for r in rows:
                ids = torch.tensor([r["input_ids"]])
                pos = torch.arange(ids.shape[1]).unsqueeze(0)
                hidden = model.get_decoder()(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state[0]
                labels = torch.tensor(r["labels"])
                tgt = torch.nonzero(labels[1:] != -100).squeeze(1)
                logits = torch.nn.functional.linear(hidden[tgt], head.weight, getattr(head, "bias", None)).float()
                ref = labels[1:][tgt]
                loss = float(torch.nn.functional.cross_entropy(logits, ref))
                per_kind.setdefault(r["kind"], []).append(loss)
                per_bucket.setdefault(f"{r['kind']}/{r['bucket']}", []).append(loss)
                if r["kind"] == "needle":
                    pred = logits.argmax(-1)
                    em.append(float(bool((pred == ref).all())))
                    recall.append(key_phrase_recall(tokenizer.decode(pred.tolist()), [r["answer"]]))
                    ce = torch.nn.functional.cross_entropy(logits, ref, reduction="none")
                    word = (
                        (ref == r["answer_id"]) if r.get("answer_id") is not None else torch.zeros_like(ref, dtype=bool)
                    )
                    if bool(word.any()):
                        word_loss.append(float(ce[word].mean()))
                        if bool((~word).any()):
                            frame_loss.append(float(ce[~word].mean()))
    finally:
        model.train(was_training)
    kinds = {k: statistics.fmean(v) for k, v in per_kind.items()}
    return {
        "loss": kinds,
        "loss_mixed": statistics.fmean(kinds.values()),
        "loss_bucket": {k: statistics.fmean(v) for k, v in sorted(per_bucket.items())},
        "exact_match": statistics.fmean(em) if em else None,
        "key_phrase_recall": statistics.fmean(recall) if recall else None,
        "passcode_loss": statistics.fmean(word_loss) if word_loss else None,
        "template_loss": statistics.fmean(frame_loss) if frame_loss else None,
    }


def _eval_callback_class():
    from transformers import TrainerCallback

    class HeldOutEval(TrainerCallback):
        """Scores the held-out rows before training and at ``evals`` evenly spaced steps; the time it takes is
        kept off the training clock (``train_s``, ``cpu_s``)."""

        def __init__(self, rows: Sequence[dict], tokenizer: Any, evals: int):
            self.rows, self.tokenizer, self.evals = rows, tokenizer, int(evals)
            self.points: list[dict[str, Any]] = []
            self.eval_wall = self.eval_cpu = 0.0
            self.eval_after_step: dict[int, float] = {}
            self.at: set[int] = set()
            self.t0 = self.c0 = 0.0

        def _score(self, step: int, model: Any) -> None:
            w, c = time.perf_counter(), time.process_time()
            train_s, cpu_s = w - self.t0 - self.eval_wall, c - self.c0 - self.eval_cpu
            metrics = evaluate(model, self.rows, self.tokenizer)
            dw, dc = time.perf_counter() - w, time.process_time() - c
            self.eval_wall += dw
            self.eval_cpu += dc
            self.eval_after_step[step] = dw
            point = {"step": step, "train_s": train_s, "cpu_s": cpu_s, "eval_s": dw, **metrics}
            point["needle_loss"] = metrics["loss"].get("needle")
            self.points.append(point)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            total = int(state.max_steps)
            self.at = {max(1, round(total * (i + 1) / self.evals)) for i in range(self.evals)}
            self.t0, self.c0 = time.perf_counter(), time.process_time()
            self._score(0, model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if int(state.global_step) in self.at:
                self._score(int(state.global_step), model)

    return HeldOutEval


# ------------------------------------------------------------------------------------------------ one arm


def train_arm(
    arm: str,
    seed: int,
    cfg: AblationConfig,
    tokens_dir: Path,
    model_dir: Path,
    out_dir: Path,
    held: Sequence[dict],
    tokenizer: Any,
    pack_len: int,
    tokenizer_dir: Path | None = None,
) -> dict[str, Any]:
    """Train one arm with one seed through :func:`longalign.train.train`; its curve and final metrics."""
    from longalign.rundir import read_jsonl
    from longalign.train import TrainConfig, train

    method, loss_norm = ARMS[arm]
    tcfg = TrainConfig(
        tokens=str(tokens_dir),
        output_dir=str(out_dir),
        model=f"random:{model_dir}",
        tokenizer=str(tokenizer_dir) if tokenizer_dir else None,
        method=method,
        loss_norm=loss_norm,
        max_len=pack_len,
        per_device_batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        lr_scheduler="cosine",
        warmup_ratio=0.05,
        save_steps=0,
        save_final=False,
        progress=False,
        seed=seed,
        precision="fp32",
    )
    cb = _eval_callback_class()(held, tokenizer, cfg.evals)
    wall0 = time.perf_counter()
    res = train(tcfg, callbacks=[cb])
    call_s = time.perf_counter() - wall0
    recs = read_jsonl(res.metrics_path)
    # the held-out evaluation after step s is counted in step s+1's step_s of metrics.jsonl: take it out
    step_s = [r["step_s"] - cb.eval_after_step.get(int(r["step"]) - 1, 0.0) for r in recs]
    cum_tokens = [0]
    for r in recs:
        cum_tokens.append(cum_tokens[-1] + int(r["real_tokens"]))
    for p in cb.points:
        p["tokens"] = cum_tokens[min(p["step"], len(recs))]
    final = cb.points[-1]
    train_s = final["train_s"]
    real = cum_tokens[-1]
    plan = json.loads((out_dir / "plan.json").read_text())["batches"]
    return {
        "arm": arm,
        "method": method,
        "loss_norm": loss_norm,
        "seed": seed,
        "attention_backend": res.attention_backend,
        "steps": len(recs),
        "real_tokens": real,
        "padded_tokens": sum(int(r["padded_tokens"]) for r in recs),
        "target_tokens": sum(int(r["target_tokens"]) for r in recs),
        "train_s": train_s,
        "cpu_s": final["cpu_s"],
        "tokens_per_s": real / train_s if train_s > 0 else None,
        "tokens_per_cpu_s": real / final["cpu_s"] if final["cpu_s"] > 0 else None,
        "call_s": call_s,
        "final": {
            k: final.get(k)
            for k in (
                "loss",
                "loss_mixed",
                "loss_bucket",
                "exact_match",
                "key_phrase_recall",
                "passcode_loss",
                "template_loss",
            )
        },
        "curve": cb.points,
        "step_seconds": step_s,
        "train_loss": [r["loss"] for r in recs],
        "batches": plan,
    }


# ------------------------------------------------------------------------------------------------ analysis


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation, median, min, max and n of the values that are not None."""
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return {"mean": None, "std": None, "median": None, "min": None, "max": None, "n": 0}
    return {
        "mean": statistics.fmean(xs),
        "median": statistics.median(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "min": min(xs),
        "max": max(xs),
        "n": len(xs),
    }


def needle_weight_share(
    batches: Sequence[Sequence[int]],
    n_target: Sequence[int],
    kinds: Sequence[str],
    loss_norm: str,
    grad_accum: int,
) -> float:
    """The share of an optimizer step's loss weight that falls on needle rows, averaged over the first epoch's
    steps, with the weights training uses (:func:`longalign.batching.token_weights`; each step's weights sum
    to 1 over its target tokens)."""
    import types

    import numpy as np

    from longalign.batching import token_weights

    n = np.asarray(n_target, dtype=np.int64)
    plan = types.SimpleNamespace(batches=[list(b) for b in batches], lengths=n, world_size=1, grad_accum=grad_accum)
    w = token_weights(plan, n, loss_norm, 1, grad_accum)
    needle = np.asarray([k == "needle" for k in kinds])
    steps = math.ceil(len(batches) / grad_accum)
    return float((w * n)[needle].sum() / steps) if steps else 0.0


def median_step_s(run: dict[str, Any]) -> float | None:
    """The median optimizer-step time of a run, the first (warm-up) step left out. On a machine shared with other
    work a busy spell stretches a few steps a lot; ``steps x median`` is the run's time without those spells."""
    secs = [float(x) for x in run.get("step_seconds", [])[1:] if x is not None]
    return statistics.median(secs) if secs else None


def with_robust_clock(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's curve with ``robust_s`` = step x median step time added to each point."""
    med = median_step_s(run) or 0.0
    return [{**p, "robust_s": p["step"] * med} for p in run["curve"]]


def time_to_reach(curve: Sequence[dict], target: float, key: str = "loss_mixed", clock: str = "train_s"):
    """First training time at which ``curve[key]`` falls to ``target`` (linear between evaluations), or None."""
    prev = None
    for p in curve:
        v = p[key]
        if v <= target:
            if prev is None or prev[key] == v:
                return p[clock]
            frac = (prev[key] - target) / (prev[key] - v)
            return prev[clock] + frac * (p[clock] - prev[clock])
        prev = p
    return None


def metric_rows(run: dict[str, Any]) -> dict[str, float | None]:
    f = run["final"]
    out = {
        "needle_exact_match": f["exact_match"],
        "needle_key_phrase_recall": f["key_phrase_recall"],
        "needle_loss": f["loss"].get("needle"),
        "needle_passcode_loss": f.get("passcode_loss"),
        "needle_template_loss": f.get("template_loss"),
        "continuation_loss": f["loss"].get("continuation"),
        "mixed_loss": f["loss_mixed"],
        "train_s": run["train_s"],
        "cpu_s": run["cpu_s"],
        "tokens_per_s": run["tokens_per_s"],
        "tokens_per_cpu_s": run["tokens_per_cpu_s"],
        "steps": run["steps"],
        "padding_fraction": 1 - run["real_tokens"] / run["padded_tokens"] if run["padded_tokens"] else 0.0,
        "robust_train_s": (median_step_s(run) or 0.0) * run["steps"] if run.get("step_seconds") else None,
        "needle_weight_share": run.get("needle_weight_share"),
    }
    for k, v in f["loss_bucket"].items():
        out[f"loss[{k}]"] = v
    return out


def analyse(runs: Sequence[dict[str, Any]], arms: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Per-arm mean and spread of every metric, the loss-weighting effect and time-to-quality vs naive."""
    by = {(r["arm"], r["seed"]): r for r in runs}
    table: dict[str, dict[str, Any]] = {}
    for arm in arms:
        rows = [metric_rows(by[(arm, s)]) for s in seeds if (arm, s) in by]
        keys = sorted({k for r in rows for k in r})
        table[arm] = {k: spread([r.get(k) for r in rows]) for k in keys}

    ttq: dict[str, Any] = {}
    if "naive+token" in arms:
        for arm in arms:
            ratios, cpu_ratios, thr, needle_ratios, robust, robust_thr, robust_needle = [], [], [], [], [], [], []
            for s in seeds:
                base, run = by.get(("naive+token", s)), by.get((arm, s))
                if base is None or run is None:
                    continue
                target = base["final"]["loss_mixed"]
                t_base = time_to_reach(base["curve"], target)
                t_arm = time_to_reach(run["curve"], target)
                ratios.append(t_base / t_arm if t_base and t_arm else None)
                c_base = time_to_reach(base["curve"], target, clock="cpu_s")
                c_arm = time_to_reach(run["curve"], target, clock="cpu_s")
                cpu_ratios.append(c_base / c_arm if c_base and c_arm else None)
                thr.append(base["train_s"] / run["train_s"] if run["train_s"] else None)
                n_target = base["final"]["loss"]["needle"]
                n_base = time_to_reach(base["curve"], n_target, key="needle_loss", clock="cpu_s")
                n_arm = time_to_reach(run["curve"], n_target, key="needle_loss", clock="cpu_s")
                needle_ratios.append(n_base / n_arm if n_base and n_arm else None)
                if base.get("step_seconds") and run.get("step_seconds"):
                    cb, ca = with_robust_clock(base), with_robust_clock(run)
                    for out_list, key, tgt in (
                        (robust, "loss_mixed", target),
                        (robust_needle, "needle_loss", n_target),
                    ):
                        t_b = time_to_reach(cb, tgt, key=key, clock="robust_s")
                        t_a = time_to_reach(ca, tgt, key=key, clock="robust_s")
                        out_list.append(t_b / t_a if t_b and t_a else None)
                    rb, ra = cb[-1]["robust_s"], ca[-1]["robust_s"]
                    robust_thr.append(rb / ra if ra else None)
            ttq[arm] = {
                "time_to_quality_speedup": spread(ratios),
                "time_to_quality_speedup_cpu": spread(cpu_ratios),
                "reached": sum(r is not None for r in ratios),
                "epoch_time_speedup": spread(thr),
                "needle_time_to_quality_speedup_cpu": spread(needle_ratios),
                "robust_time_to_quality_speedup": spread(robust),
                "robust_needle_time_to_quality_speedup": spread(robust_needle),
                "robust_epoch_time_speedup": spread(robust_thr),
            }

    effect: dict[str, Any] = {}
    if "pack+sequence" in arms:
        for other in ("pack+pack", "pack+token"):
            if other not in arms:
                continue
            d_em, d_loss = [], []
            for s in seeds:
                a, b = by.get(("pack+sequence", s)), by.get((other, s))
                if a is None or b is None:
                    continue
                d_em.append(a["final"]["exact_match"] - b["final"]["exact_match"])
                d_loss.append(a["final"]["loss"]["needle"] - b["final"]["loss"]["needle"])
            base_em = table[other]["needle_exact_match"]["mean"]
            gain = table["pack+sequence"]["needle_exact_match"]["mean"]
            effect[f"pack+sequence vs {other}"] = {
                "exact_match_difference": spread(d_em),
                "needle_loss_difference": spread(d_loss),
                "relative_exact_match_gain": (gain / base_em - 1) if base_em else None,
            }
    return {"table": table, "time_to_quality": ttq, "loss_weighting_effect": effect}


def simulator_prediction(
    lengths: Sequence[int],
    runs: Sequence[dict[str, Any]],
    cfg: AblationConfig,
    pack_len: int,
    model: dict,
    n_target: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Epoch-time speed-ups vs naive that ``longalign.batching.simulate`` predicts for the training lengths:
    with FLOP-derived coefficients and with coefficients fitted to every measured step of these runs."""
    import numpy as np

    from longalign.batching import simulate
    from longalign.batching.simulate import CostModel, fit_cost_model, measurement

    lens = np.asarray(lengths)
    h, layers = model["hidden_size"], model["num_hidden_layers"]
    # the output layer runs on target rows only (the chunked loss): count it at the share of targets
    share = float(sum(n_target)) / max(1, int(lens.sum())) if n_target is not None else 1.0
    n_params = layers * (4 * h * h + 3 * h * model["intermediate_size"]) + model["vocab_size"] * h * share
    models = {"flop_based": CostModel.for_transformer(n_params, layers, h, flops_per_second=20e9)}
    records = []
    g = cfg.grad_accum
    for r in runs:  # one record per optimizer step of the first epoch (the plan's order), the first step left out
        packed = r["method"] == "pack"
        steps = [r["batches"][i : i + g] for i in range(0, len(r["batches"]), g)]
        for batches, secs in list(zip(steps, r["step_seconds"]))[1:]:
            parts = [measurement(lens[b], 0.0, packed=packed, attention="varlen") for b in batches]
            records.append(
                {
                    "tokens": sum(p["tokens"] for p in parts),
                    "attention": sum(p["attention"] for p in parts),
                    "batches": float(len(parts)),
                    "seconds": float(secs),
                }
            )
    if len(records) >= 3:
        models["fitted_to_runs"] = fit_cost_model(records)
    out: dict[str, Any] = {}
    for label, cost in models.items():
        sim = simulate(
            lens,
            ("naive", "sort", "pack"),
            max_len=pack_len,
            world_size=1,
            batch_size=cfg.batch_size,
            grad_accum=cfg.grad_accum,
            pack_grad_accum=cfg.grad_accum,
            seed=cfg.data_seed,
            cost=cost,
            dense_pack=False,
        )
        out[label] = {
            "cost": cost.to_dict(),
            "speedup_vs_naive": {m: v["speedup_vs_naive"] for m, v in sim["methods"].items()},
            "seconds": {m: v["total_seconds"] for m, v in sim["methods"].items()},
        }
    return out


# ------------------------------------------------------------------------------------------------ figure


def figure(result: dict[str, Any]):
    """Plotly figure: needle exact match, needle loss and continuation loss against training seconds, one
    colour per arm, one line per seed."""
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=("needle exact match", "needle held-out loss", "continuation held-out loss"),
        horizontal_spacing=0.07,
    )
    colours = qualitative.Plotly
    arms = result["config"]["arms"]
    for i, arm in enumerate(arms):
        for j, run in enumerate(r for r in result["runs"] if r["arm"] == arm):
            xs = [p["train_s"] for p in run["curve"]]
            series = (
                [p["exact_match"] for p in run["curve"]],
                [p["loss"].get("needle") for p in run["curve"]],
                [p["loss"].get("continuation") for p in run["curve"]],
            )
            for col, ys in enumerate(series, start=1):
                fig.add_scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers",
                    name=arm,
                    legendgroup=arm,
                    showlegend=(j == 0 and col == 1),
                    line={"color": colours[i % len(colours)], "width": 1.5},
                    marker={"size": 4},
                    hovertemplate=f"{arm} seed {run['seed']}<br>%{{x:.1f}} s: %{{y:.3f}}<extra></extra>",
                    row=1,
                    col=col,
                )
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="training seconds (evaluation excluded)", row=1, col=col)
    fig.update_layout(
        title="Batching x loss weighting on a needle / continuation mix (one line per seed)",
        height=430,
        width=1300,
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def write_figure(result: dict[str, Any], out: Path) -> dict[str, str | None]:
    fig = figure(result)
    html = out / FIGURE_FILE
    fig.write_html(str(html), include_plotlyjs=True)
    png = None
    try:
        import kaleido  # noqa: F401

        fig.write_image(str(out / FIGURE_PNG), scale=1)
        png = str(out / FIGURE_PNG)
    except Exception as exc:  # kaleido missing or without a browser: HTML only
        log.info("no PNG of the ablation figure (%s)", exc)
    return {"html": str(html), "png": png}


# ------------------------------------------------------------------------------------------------ entry point


@dataclass
class AblationSummary(Summary):
    result_path: Path
    figure_path: Path | None
    total_s: float
    table: dict[str, Any] = field(default_factory=dict)
    time_to_quality: dict[str, Any] = field(default_factory=dict)
    loss_weighting_effect: dict[str, Any] = field(default_factory=dict)
    simulated: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        def fmt(s: dict[str, Any], digits: int = 3) -> str:
            return "n/a" if s.get("mean") is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"

        out = [f"{'arm':<15}{'needle EM':>16}{'needle loss':>16}{'contin. loss':>16}{'train s':>14}{'TTQ x':>14}"]
        for arm, m in self.table.items():
            ttq = self.time_to_quality.get(arm, {}).get("time_to_quality_speedup", {})
            out.append(
                f"{arm:<15}{fmt(m['needle_exact_match']):>16}{fmt(m['needle_loss']):>16}"
                f"{fmt(m['continuation_loss']):>16}{fmt(m['train_s'], 1):>14}{fmt(ttq, 2):>14}"
            )
        for name, e in self.loss_weighting_effect.items():
            out.append(
                f"{name}: exact match {fmt(e['exact_match_difference'])}, "
                f"needle loss {fmt(e['needle_loss_difference'])}"
            )
        fitted = self.simulated.get("fitted_to_runs") or self.simulated.get("flop_based") or {}
        if fitted:
            sp = ", ".join(f"{k} {v:.2f}x" for k, v in fitted["speedup_vs_naive"].items())
            out.append(f"simulator (epoch time vs naive): {sp}")
        out.append(f"wrote {self.result_path}" + (f" and {self.figure_path}" if self.figure_path else ""))
        out.append(f"total {self.total_s:.0f} s")
        return out


def run(
    cfg: AblationConfig, run_dir: str | Path | None = None, *, progress: Callable[[str], None] | None = None
) -> AblationSummary:
    """Run the ablation: build the rows, tokenize them, train every arm x seed, score and write the JSON and
    the figure to ``cfg.out`` (``run_dir``, when given, holds the data and training runs instead of
    ``cfg.workdir``)."""
    import shutil
    import tempfile

    import torch

    from longalign.rundir import atomic_write_json, atomic_write_text
    from longalign.tokenize import TokenizeConfig, tokenize_file
    from longalign.train import model_setup as _trainer
    from longalign.train.model_setup import cached_tokenizer

    cfg = cfg.resolved()
    say = progress or (lambda msg: log.info("%s", msg))
    t_start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    work_root = run_dir or cfg.workdir
    tmp = None
    if work_root is None:
        tmp = tempfile.mkdtemp(prefix="ablation_")
        work_root = tmp
    work = Path(work_root)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
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
            _trainer._TOKENIZERS[str(tokenizer_dir)] = probe_tok
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
            _trainer._TOKENIZERS.setdefault(f"random:{model_dir}", probe_tok)

        def kind_stats(kind: str) -> dict[str, Any]:
            idx = [i for i, k in enumerate(kinds) if k == kind]
            return {
                "rows": len(idx),
                "mean_length": statistics.fmean(lengths[i] for i in idx) if idx else None,
                "mean_target_tokens": statistics.fmean(n_target[i] for i in idx) if idx else None,
                "target_token_share": sum(n_target[i] for i in idx) / max(1, sum(n_target)),
            }

        data = {
            **data_info,
            "train_rows": len(lengths),
            "train_tokens": sum(lengths),
            "train_target_tokens": sum(n_target),
            "kinds": {k: kind_stats(k) for k in KINDS},
            "held_out": {
                "needle_per_bucket": cfg.eval_needle_per_bucket,
                "continuation": cfg.eval_continuation,
                "buckets": cfg.buckets,
            },
            "pack_len": pack_len,
            "tokenizer": f"byte-level BPE, {len(probe_tok)} tokens" if tokenizer_dir else "SmolLM2 (embedded)",
            "tokenize": {"rows": tok_res.to_dict().get("n_rows"), "seconds": tok_res.to_dict().get("seconds")},
        }
        say(
            f"{len(lengths)} training rows ({sum(lengths)} tokens, {sum(n_target)} targets), "
            f"{len(held)} held-out rows, pack_len {pack_len}"
        )
        import transformers

        def assemble(done: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
            analysis = analyse(done, cfg.arms, seeds)
            return {
                "schema_version": SCHEMA_VERSION,
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "complete": seeds == list(cfg.seeds),
                "config": {**dataclasses.asdict(cfg), "arms": list(cfg.arms), "seeds": seeds},
                "model": model,
                "data": data,
                "arms": {a: {"method": ARMS[a][0], "loss_norm": ARMS[a][1]} for a in cfg.arms},
                **analysis,
                "simulated": simulator_prediction(lengths, done, cfg, pack_len, model, n_target),
                "paper": {
                    "loss_weighting": "LongAlign-7B-64k: packing + loss weighting 6.8 vs packing 6.2 on "
                    "LongBench-Chat (about +10%)",
                    "speed": "packing and sorted batching >= 2.2x faster than naive batching (8xA800, 64k)",
                },
                "runs": done,
                "versions": {
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "threads": cfg.threads,
                },
                "total_s": time.perf_counter() - t_start,
            }

        path = out / RESULT_FILE
        runs: list[dict[str, Any]] = []
        done_seeds: list[int] = []
        for seed in cfg.seeds:  # seeds outside, arms inside: a busy spell on the machine hits every arm
            for arm in cfg.arms:
                r = train_arm(
                    arm,
                    seed,
                    cfg,
                    tokens_dir,
                    model_dir,
                    work / "runs" / f"seed{seed}" / arm.replace("+", "_"),
                    held,
                    probe_tok,
                    pack_len,
                    tokenizer_dir,
                )
                r["needle_weight_share"] = needle_weight_share(
                    r["batches"], n_target, kinds, r["loss_norm"], cfg.grad_accum
                )
                runs.append(r)
                f = r["final"]
                say(
                    f"seed {seed} {arm:<14} EM {f['exact_match']:.3f} needle {f['loss']['needle']:.3f} "
                    f"contin. {f['loss']['continuation']:.3f} train {r['train_s']:.1f}s "
                    f"({r['tokens_per_s']:.0f} tok/s, {r['steps']} steps)"
                )
            done_seeds.append(seed)
            if done_seeds != list(cfg.seeds):  # the seeds finished so far, in case the run is stopped
                atomic_write_json(path, assemble(runs, list(done_seeds)))
        result = assemble(runs, list(done_seeds))
        analysis = {k: result[k] for k in ("table", "time_to_quality", "loss_weighting_effect")}
        simulated = result["simulated"]
        path = out / RESULT_FILE
        atomic_write_json(path, result)
        fig = write_figure(result, out)
        return AblationSummary(
            result_path=path,
            figure_path=Path(fig["html"]),
            total_s=result["total_s"],
            table=analysis["table"],
            time_to_quality=analysis["time_to_quality"],
            loss_weighting_effect=analysis["loss_weighting_effect"],
            simulated=simulated,
        )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def load_result(path: str | Path) -> dict[str, Any]:
    """Read an ``ablation.json``; a clear error when it is missing or of another schema."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; create it with `python benchmarks/ablation.py`")
    data = json.loads(path.read_text())
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{path} has schema_version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}; re-run "
            "`python benchmarks/ablation.py`"
        )
    return data


def reanalyse(path: str | Path, workdir: str | Path | None = None) -> dict[str, Any]:
    """Recompute the analysis of an ``ablation.json`` from its runs (no training) and write it back: for results
    written by an earlier version of the analysis. ``workdir`` (the run's ``--workdir``) supplies the batch plans
    and tokens the simulator needs when the JSON lacks them; without it the simulator block is kept."""
    path = Path(path)
    result = load_result(path)
    seeds = sorted({r["seed"] for r in result["runs"]}, key=list(result["config"]["seeds"]).index)
    for r in result["runs"]:
        if "needle_loss" not in r["curve"][0]:
            for p in r["curve"]:
                p["needle_loss"] = p["loss"].get("needle")
    if workdir is not None:
        import datasets

        work = Path(workdir)
        ds = datasets.load_from_disk(str(work / "tokens"))
        for r in result["runs"]:
            if "batches" not in r:
                plan = work / "runs" / f"seed{r['seed']}" / r["arm"].replace("+", "_") / "plan.json"
                r["batches"] = json.loads(plan.read_text())["batches"]
            if r.get("needle_weight_share") is None:
                r["needle_weight_share"] = needle_weight_share(
                    r["batches"],
                    [int(x) for x in ds["n_target"]],
                    list(ds["task_type"]),
                    r["loss_norm"],
                    int(result["config"]["grad_accum"]),
                )
    result.update(analyse(result["runs"], result["config"]["arms"], seeds))
    if workdir is not None:
        fields = {f.name for f in dataclasses.fields(AblationConfig)}
        cfg = AblationConfig(**{k: v for k, v in result["config"].items() if k in fields})
        result["simulated"] = simulator_prediction(
            [int(x) for x in ds["length"]],
            result["runs"],
            cfg,
            result["data"]["pack_len"],
            result["model"],
            [int(x) for x in ds["n_target"]],
        )
    from longalign.rundir import atomic_write_json

    atomic_write_json(path, result)
    return result


TABLE_COLUMNS = (
    ("needle_exact_match", "needle exact match", 3),
    ("needle_key_phrase_recall", "needle key-phrase recall", 3),
    ("needle_loss", "needle loss", 3),
    ("needle_passcode_loss", "passcode-token loss", 3),
    ("needle_template_loss", "template loss", 3),
    ("needle_weight_share", "needle share of the step weight", 3),
    ("continuation_loss", "continuation loss", 3),
    ("mixed_loss", "mixed loss", 3),
    ("train_s", "train s", 1),
    ("robust_train_s", "steps x median step s", 1),
    ("tokens_per_s", "tokens/s", 0),
    ("padding_fraction", "padding", 3),
    ("steps", "steps", 0),
)


def fmt_spread(s: dict[str, Any] | None, digits: int = 3) -> str:
    """``mean ± std`` of a :func:`spread` (``n/a`` when empty)."""
    if not s or s.get("mean") is None:
        return "n/a"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def table_rows(result: dict[str, Any], *, buckets: bool = False) -> list[dict[str, str]]:
    """One row per arm of formatted ``mean ± std`` cells (the README table); ``buckets`` adds the held-out
    loss per length bucket; the time-to-quality speed-up vs naive closes each row."""
    rows = []
    for arm, metrics in result["table"].items():
        row = {"arm": arm}
        for key, label, digits in TABLE_COLUMNS:
            row[label] = fmt_spread(metrics.get(key), digits)
        if buckets:
            for key in sorted(k for k in metrics if k.startswith("loss[")):
                row[key] = fmt_spread(metrics[key])
        ttq = result.get("time_to_quality", {}).get(arm, {})
        row["time-to-quality x naive"] = fmt_spread(ttq.get("time_to_quality_speedup"), 2)
        row["epoch time x naive"] = fmt_spread(ttq.get("epoch_time_speedup"), 2)
        rows.append(row)
    return rows


def speed_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Measured time-to-quality and epoch-time speed-ups vs naive beside the simulator's epoch-time
    prediction for the same lengths (per batching method; the simulator does not model the loss)."""
    sims = result.get("simulated", {})
    rows = []
    for arm, t in result.get("time_to_quality", {}).items():
        method = result["arms"][arm]["method"]
        row: dict[str, Any] = {
            "arm": arm,
            "time-to-quality x naive": fmt_spread(t["time_to_quality_speedup"], 2),
            "reached naive's final loss": f"{t['reached']}/{len(result['config']['seeds'])}",
            "epoch time x naive": fmt_spread(t["epoch_time_speedup"], 2),
            "time-to-quality x naive, steps x median step": fmt_spread(t.get("robust_time_to_quality_speedup"), 2),
            "epoch time x naive, steps x median step": fmt_spread(t.get("robust_epoch_time_speedup"), 2),
            "needle time-to-quality x naive, steps x median step": fmt_spread(
                t.get("robust_needle_time_to_quality_speedup"), 2
            ),
        }
        for label, sim in sims.items():
            row[f"simulated x naive ({label})"] = round(sim["speedup_vs_naive"].get(method, float("nan")), 2)
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub-flavoured markdown table of dict rows (the keys of the first row are the columns)."""
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
