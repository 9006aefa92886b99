"""Held-out scoring during training: :func:`evaluate` and the :class:`HeldOutEval` callback. Imports torch and
transformers at its top; :mod:`.run` imports it when an arm trains."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import TrainerCallback

from longalign.batching.head_loss import score_targets
from longalign.eval.needle import key_phrase_recall


def evaluate(model: Any, rows: Sequence[dict[str, Any]], tokenizer: Any) -> dict[str, Any]:
    """Held-out metrics of ``model`` (see :mod:`longalign.recipes.ablation`): each row's target tokens scored by
    :func:`longalign.batching.head_loss.score_targets` (the head runs on target rows only)."""
    was_training = model.training
    model.eval()
    per_kind: dict[str, list[float]] = {}
    per_bucket: dict[str, list[float]] = {}
    em: list[float] = []
    recall: list[float] = []
    word_loss: list[float] = []  # cross-entropy at the passcode token: the lookup itself
    frame_loss: list[float] = []  # the other reply tokens: the fixed template "The passcode is ... ."
    try:
        for r in rows:
            scored = score_targets(model, r["input_ids"], r["labels"], tokens=r["kind"] == "needle")
            per_kind.setdefault(r["kind"], []).append(scored.loss_mean)
            per_bucket.setdefault(f"{r['kind']}/{r['bucket']}", []).append(scored.loss_mean)
            if r["kind"] == "needle":
                pred, ref, ce = scored.predicted, scored.targets, scored.token_losses
                em.append(float(bool((pred == ref).all())))
                recall.append(key_phrase_recall(tokenizer.decode(pred.tolist()), [r["answer"]]))
                word = (ref == r["answer_id"]) if r.get("answer_id") is not None else torch.zeros_like(ref, dtype=bool)
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


class HeldOutEval(TrainerCallback):
    """Scores the held-out rows before training and at ``evals`` evenly spaced steps; the time it takes is kept
    off the training clock (``train_s``, ``cpu_s``)."""

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
