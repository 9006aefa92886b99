"""Held-out loss: the cross-entropy of a model on the assistant replies of conversations it was not trained on.

The cheapest and most sensitive check that fine-tuning changed a model: a few forward passes, no generation,
no judge, and a number that moves after a handful of optimizer steps long before a judged score does. Each
conversation is tokenized exactly as ``longalign tokenize`` would (same chat format, truncation and
``max_len``; loss only on assistant tokens), run through the model without gradients, and scored with the
training loss's own arithmetic (:func:`longalign.batching.head_loss.score_targets`: the head runs on the
target positions only, chunk by chunk, so the ``[L, V]`` logits of a long prompt never exist whole). Two means
are reported, as in training:

* ``token_mean`` -- total cross-entropy / total target tokens (long answers weigh more);
* ``sequence_mean`` -- the mean over conversations of each one's token-mean (every conversation counts the
  same: LongAlign's ``sequence`` normalisation), with its perplexity ``exp(sequence_mean)``.

Records may carry a ``kind`` (say ``long`` and ``short``); the summary then also gives both means per kind.

Per-conversation rows go to ``<run>/eval/heldout/results.jsonl``, the means to ``summary.json``. The whole set
is re-scored on every run (it is a few forward passes); a different model gives a different summary.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longalign.config import Options, option
from longalign.eval.summary import EvalSummary
from longalign.rundir import RunDir, atomic_write_json, atomic_write_text, read_jsonl
from longalign.stage import as_run_dir, record
from longalign.tokenize.encode import TRUNCATION_POLICIES
from longalign.tokenize.formats import CHAT_FORMATS

log = logging.getLogger(__name__)

BENCHMARK = "heldout"


@dataclass
class HeldOutConfig(Options):
    """Options of ``longalign eval heldout``."""

    data: str = option(
        "",
        help='jsonl of {"messages": [...]} conversations to score (default: <run>/data/heldout.jsonl, which '
        "`longalign demo` writes from its held-out documents)",
    )
    model: str = option("smollm2", help="model to score: smollm2 (embedded), HF id, or a train output folder")
    tokenizer: str = option("", help="tokenizer (default: the model's own; the embedded one for smollm2)")
    format: str = option("template", choices=CHAT_FORMATS, help="chat format the model was trained with")
    max_len: int = option(8192, minimum=2, help="tokens per conversation; longer ones are truncated")
    truncation: str = option(
        "middle", choices=TRUNCATION_POLICIES, help="which tokens a too-long conversation keeps: right, left, middle"
    )
    label: str = option("", help="name of the model in the summary (default: the model spec)")
    progress: bool = option(True, help="show a progress bar")


@dataclass
class HeldOutSummary(EvalSummary):
    results: Path | None = None

    def lines(self) -> list[str]:
        s = self.scores or {}
        return [
            f"held-out loss of {s.get('model')} on {s.get('n')} conversations ({s.get('target_tokens')} target "
            f"tokens): sequence mean {s.get('sequence_mean')} (perplexity {s.get('sequence_ppl')}), "
            f"token mean {s.get('token_mean')}",
            f"results: {self.results}",
        ]


def default_data_path(run: RunDir) -> Path:
    return run.heldout


def _load_tokenizer(cfg: HeldOutConfig) -> Any:
    from longalign.models import load_tokenizer

    return load_tokenizer(cfg.tokenizer or cfg.model)


def score_conversations(
    model: Any, tokenizer: Any, records: list[dict[str, Any]], cfg: HeldOutConfig, *, source: Path | None = None
) -> list[dict[str, Any]]:
    """One row per conversation: ``n_tokens``, ``n_target``, ``loss_sum``, ``loss_mean`` (and ``truncated``)."""
    from tqdm.auto import tqdm

    from longalign.batching.head_loss import score_targets
    from longalign.tokenize.encode import tokenize_conversation
    from longalign.tokenize.formats import RowError

    head = model.get_output_embeddings()
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if body is None or head is None:
        raise ValueError(f"{cfg.model}: held-out loss needs a causal LM with a decoder and an output layer")
    rows = []
    model.eval()
    for k, rec in enumerate(tqdm(records, desc="held-out loss", unit="conv", disable=not cfg.progress), 1):
        try:
            tok = tokenize_conversation(
                rec.get("messages"), tokenizer, chat_format=cfg.format, max_len=cfg.max_len, truncation=cfg.truncation
            )
        except RowError as e:
            where = f"{source}:{k}" if source else f"record {k}"
            raise ValueError(f"{where}: {e}; fix or remove this conversation") from e
        if tok.n_target == 0:
            rows.append(
                {
                    "index": k,
                    "kind": str(rec.get("kind") or "all"),
                    "n_tokens": int(tok.input_ids.size),
                    "n_target": 0,
                    "skipped": "no target",
                }
            )
            continue
        scored = score_targets(model, tok.input_ids, tok.labels)
        rows.append(
            {
                "index": k,
                "kind": str(rec.get("kind") or "all"),
                "doc_id": rec.get("doc_id"),
                "n_tokens": int(tok.input_ids.size),
                "n_target": scored.n_target,
                "truncated": bool(tok.truncated),
                "loss_sum": scored.loss_sum,
                "loss_mean": scored.loss_mean,
            }
        )
    return rows


def _means(scored: list[dict[str, Any]]) -> dict[str, Any]:
    if not scored:
        return {"n": 0, "target_tokens": 0, "sequence_mean": None, "sequence_ppl": None, "token_mean": None}
    total = sum(r["n_target"] for r in scored)
    seq = sum(r["loss_mean"] for r in scored) / len(scored)
    return {
        "n": len(scored),
        "target_tokens": total,
        "sequence_mean": round(seq, 4),
        "sequence_ppl": round(math.exp(seq), 3),
        "token_mean": round(sum(r["loss_sum"] for r in scored) / total, 4),
    }


def summarise(rows: list[dict[str, Any]], model: str) -> dict[str, Any]:
    """Both means over every scored conversation and, per ``kind`` (a field of the input records, e.g. long
    vs short), the same means for each kind."""
    scored = [r for r in rows if r.get("n_target")]
    kinds = sorted({r.get("kind", "all") for r in scored})
    return {
        "model": model,
        **_means(scored),
        "by_kind": {k: _means([r for r in scored if r.get("kind", "all") == k]) for k in kinds},
        "skipped": len(rows) - len(scored),
    }


def run(cfg: HeldOutConfig, run_dir: str | Path | RunDir, *, model: Any = None) -> HeldOutSummary:
    """Score ``cfg.data`` with ``cfg.model`` into ``<run>/eval/heldout/`` (recorded as ``eval_heldout``)."""
    import json

    from longalign.models import load_model

    run_ = as_run_dir(run_dir)
    data = Path(cfg.data) if cfg.data else default_data_path(run_)
    if not data.is_file():
        raise FileNotFoundError(f"{data}: no held-out conversations; pass --data FILE (jsonl of {{'messages'}})")
    records = read_jsonl(data)
    if not records:
        raise ValueError(f"{data}: no conversation in the file; pass --data with at least one {{'messages'}} row")
    t0 = time.perf_counter()
    tokenizer = _load_tokenizer(cfg)
    model = model if model is not None else load_model(cfg.model)
    rows = score_conversations(model, tokenizer, records, cfg, source=data)
    label = cfg.label or cfg.model
    scores = {**summarise(rows, label), "data": str(data), "seconds": round(time.perf_counter() - t0, 1)}
    out = run_.eval(BENCHMARK)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    atomic_write_text(results, "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_json(run_.eval_summary(BENCHMARK), scores)
    summary = HeldOutSummary(
        benchmark=BENCHMARK, eval_dir=out, scores=scores, summary_path=run_.eval_summary(BENCHMARK), results=results
    )
    record(run_, "eval_heldout", cfg, summary)
    return summary
