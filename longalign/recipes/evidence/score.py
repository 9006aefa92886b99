"""Scoring a model on the evaluation samples in one teacher-forced forward pass each, and the held-out loss of the
short chats. Imports torch at its top; :mod:`.run` imports it when a model is evaluated.

A sample is correct iff, with the prompt followed by the expected answer tokens ``a_1..a_k`` fed in one pass, the
argmax of the model's next-token distribution at each answer position equals the expected token. By induction
this is exactly the event that greedy decoding emits ``a_1..a_k`` as its first ``k`` tokens: greedy's first token
is the argmax after the prompt, which is ``a_1`` iff the first check holds; given that greedy has emitted
``a_1..a_j``, its next token is the argmax after ``prompt + a_1..a_j``, the (j+1)-th check. Greedy decoding that
starts with the expected value contains it, so the ladder's string match (:func:`longalign.eval.ruler_tasks.
score_output`) would score such an output 1: this accuracy is a lower bound of the ladder's score under greedy
decoding (an output that gives the value later, or with other tokens for the same text, is not counted).
:func:`greedy_tokens` is real greedy generation, for checking that equivalence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from longalign.batching.head_loss import score_targets


def score_sample(model: Any, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> dict[str, Any]:
    """``{"correct", "answer_loss", "predicted"}`` of one sample (see the module docstring): the answer's mean
    cross-entropy and the argmax at every answer position, from one forward pass."""
    ids = [*prompt_ids, *answer_ids]
    labels = [-100] * len(prompt_ids) + list(answer_ids)
    scored = score_targets(model, ids, labels, tokens=True)
    predicted = [int(x) for x in scored.predicted.tolist()]
    return {
        "correct": predicted == [int(x) for x in answer_ids],
        "answer_loss": scored.loss_mean,
        "predicted": predicted,
    }


def greedy_tokens(model: Any, prompt_ids: Sequence[int], n: int) -> list[int]:
    """The first ``n`` tokens greedy decoding emits after ``prompt_ids`` (cached, token by token)."""
    ids = torch.as_tensor([list(prompt_ids)], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            num_beams=1,
            pad_token_id=getattr(model.config, "pad_token_id", None) or 0,
        )
    return [int(x) for x in out[0, ids.shape[1] :].tolist()]


def evaluate_model(
    model: Any,
    tokenizer: Any,
    samples: Sequence[dict[str, Any]],
    held_short: Sequence[dict[str, Any]],
    say: Callable[[str], None] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(one row per evaluation sample, one row per held-out short chat) for ``model``."""
    from longalign.eval import HeldOutConfig, heldout

    was_training = model.training
    model.eval()
    rows = []
    try:
        for i, s in enumerate(samples, 1):
            r = score_sample(model, s["prompt_ids"], s["answer_ids"])
            rows.append(
                {
                    "key": s["key"],
                    "task": s["task"],
                    "length": s["length"],
                    "index": s["index"],
                    "correct": bool(r["correct"]),
                    "answer_loss": round(float(r["answer_loss"]), 6),
                    "predicted": tokenizer.decode(r["predicted"]),
                }
            )
            if say and (i % 10 == 0 or i == len(samples)):
                say(f"  scored {i}/{len(samples)} samples")
        chats = heldout.score_conversations(model, tokenizer, list(held_short), HeldOutConfig(progress=False))
    finally:
        model.train(was_training)
    short = [
        {"index": c["index"], "loss_mean": c.get("loss_mean"), "n_target": c.get("n_target")}
        for c in chats
        if c.get("loss_mean") is not None and math.isfinite(c["loss_mean"])
    ]
    return rows, short
