"""The weighted loss computed from hidden states in chunks, so the ``[L, V]`` logits never exist whole.

A causal LM's forward ends with the LM head: ``logits = hidden @ W.T``, ``[B, L, V]``. Reading the loss from
those logits (``loss_impl="full"``, :func:`longalign.batching.weighted_causal_lm_loss`) keeps, at the peak of
the step, the logits, a float32 log-softmax of every target row and the logits' gradient: about
``(2 L + N) V`` floats for L positions and N targets. SmolLM2 (V = 49,152) at 8k tokens: 1.6 GB per float32
copy, over three times its 0.5 GB of weights; Llama-3-8B (V = 128,256) at 64k: 16.8 GB of bf16 logits plus their
gradient.

``loss_impl="chunked"`` (:func:`chunked_head_loss`) runs the decoder as usual, then

1. keeps only the positions that predict a target (shifted label != -100): in LongAlign's data a 30k-token
   document is followed by a few hundred answer tokens, so the head runs on N rows instead of L;
2. computes head -> float32 log-softmax -> cross-entropy x per-token weight over chunks of C rows, accumulating
   the weighted sum (what the optimizer sees) and the plain sum (the token-mean statistic of metrics.jsonl) from
   the same chunks;
3. while a chunk's logits exist, also forms its share of the weighted sum's gradients -- ``(softmax - onehot)``
   from the log-softmax in place, times the hidden rows (scaled by their weights) for the head's weight, times
   the weight (then scaled) for the hidden rows -- and keeps only those: the hidden rows' gradient ``[N, H]``
   and the head's ``[V, H]`` (in float32, or float64 for float64 inputs). The backward multiplies them by the
   upstream gradient it receives, a scalar (the trainer's world-size factor, a loss scale), so every outer
   factor still reaches them. A gradient asked of the plain sum (never by the trainer; the head module returns
   it detached) makes the backward recompute the logits chunk by chunk instead.

Extra peak memory is O(C x V) -- two ``[C, V]`` float32 buffers in the forward -- independent of L. Head
multiply-adds are 3 N H V (the logits and the two gradient products; 4 N H V when the backward recomputes the
logits, 3 L H V for the full path), with one pass of exponentials per chunk. The chunk defaults to ``2**25 / V``
rows (682 for V = 49,152, 256 for V = 128,256; 128 MB per float32 buffer;
:func:`longalign.batching.loss.default_chunk_rows`, which the memory planner reads without torch). Without
gradients (``torch.no_grad``, the start-up probe) the forward computes the sums only.

Numerics follow the ``full`` path: the matrix products run in the dtype the head would use (the autocast dtype
when autocast is on for the device, else the inputs' dtype) and the cross-entropy in float32 (float64 for
float64 inputs); the tests check loss and every parameter gradient against ``full`` (1e-10 in float64, 1e-5 in
float32) for each loss normalisation, tied and untied heads, packs, padded batches and all-filler micro-batches.

How it meets the model. :func:`install_loss_head` switches the model's output layer (an ``nn.Linear``) to
:class:`LossHead`, a subclass with the same parameters and state-dict keys; it behaves as ``nn.Linear`` until
:func:`loss_request` is active, during which its forward returns the two loss sums (shape ``[1, 1, 2]``) in place
of the logits. The loss is thus computed *inside* the head module's call within the model's own forward:

* DDP's and DeepSpeed's forward wrappers are not bypassed (calling the decoder and the head separately would
  skip DDP's reducer bookkeeping);
* ZeRO-3 gathers the head weight once for the micro-batch's forward (the module's pre-forward hook) and once for
  its backward (the hook on the module's output, which now carries the loss), never once per chunk.

Models that transform the logits after the head (final soft-capping, logit scales) would get a wrong loss; the
trainer's start-up probe compares the two implementations on the real model and refuses the run with the fix
(``--loss-impl full``) when they disagree.

Maintained kernels: Liger's fused linear cross-entropy (CUDA) weighs classes, not tokens; DeepSpeed's
``TiledFusedLogitsLoss`` takes any loss function but accumulates the weight gradient inside its forward with a
fixed upstream gradient, so an outer factor (the trainer's world-size factor, an fp16 loss scale) would not reach
it (here the backward applies it); TRL's chunked NLL is a token mean. None carries the per-token weights of the
LongAlign ``sequence`` normalisation, so this module is used on every device.

The same arithmetic scores held-out rows without gradients (:func:`score_targets`): the held-out loss of
``longalign eval heldout`` and the held-out metrics of the ablation recipe are one computation.

This module imports torch at its top; its users (the trainer, the held-out evaluation) import it when they
run, so importing the batching stage stays cheap. The loss choices (``LOSS_IMPLS``) and the chunk size live
in :mod:`longalign.batching.loss`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from longalign import IGNORE_INDEX
from longalign.batching.loss import default_chunk_rows


def _compute_dtype(hidden: Any, weight: Any) -> Any:
    """The dtype the head's matrix product would run in: autocast's when it is on for the device."""
    dev = hidden.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _acc_dtype(*tensors: Any) -> Any:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _chunk_losses(hidden, weight, bias, labels, chunk, compute_dtype, acc) -> Iterator[tuple[int, Any, Any]]:
    """``(first row, logits, cross-entropy per row)`` of each chunk of rows of ``hidden`` [N, H] with targets
    ``labels`` [N]: the head in ``compute_dtype``, the cross-entropy in ``acc`` (autocast off throughout)."""
    wc = weight.to(compute_dtype)
    bc = bias.to(compute_dtype) if bias is not None else None
    with torch.autocast(hidden.device.type, enabled=False):
        for s in range(0, hidden.shape[0], chunk):
            z = F.linear(hidden[s : s + chunk].to(compute_dtype), wc, bc).to(acc)
            y = labels[s : s + chunk]
            yield s, z, torch.logsumexp(z, dim=-1) - z.gather(1, y[:, None]).squeeze(1)


def _chunk_probs(hc, wc, bc, y, acc):
    """Float ``[n, V]`` log-softmax of one chunk's logits and its rows' cross-entropy."""
    logp = F.log_softmax(F.linear(hc, wc, bc).to(acc), dim=-1)
    return logp, -logp.gather(1, y[:, None]).squeeze(1)


class HeadCrossEntropy(torch.autograd.Function):
    """``(sum_r coef_r * CE_r, sum_r CE_r)`` over rows r of ``hidden`` [N, H] with targets ``labels`` [N],
    head ``weight`` [V, H] (+ ``bias`` [V]).

    With ``fuse`` (gradients wanted) the forward also forms, chunk by chunk while the logits exist, the
    gradients of the weighted sum for an upstream gradient of 1, and the backward multiplies them by the
    upstream gradient it receives (a scalar: the trainer's world-size factor, a loss scale): three matrix
    products per chunk instead of four, and one pass of exponentials. A gradient asked of the plain sum
    (never by the trainer) recomputes each chunk's logits in the backward instead."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, coef, chunk, compute_dtype, fuse):
        ctx.set_materialize_grads(False)
        acc = _acc_dtype(hidden, weight)
        wc = weight.to(compute_dtype)
        bc = bias.to(compute_dtype) if bias is not None else None
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        fuse = bool(fuse) and (need_h or need_w or need_b)
        wsum = torch.zeros((), dtype=acc, device=hidden.device)
        psum = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = torch.empty_like(hidden) if fuse and need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if fuse and need_w else None
        grad_b = (
            torch.zeros(weight.shape[0], dtype=acc, device=weight.device)
            if fuse and need_b and bias is not None
            else None
        )
        rows = torch.arange(min(chunk, max(1, hidden.shape[0])), device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, hidden.shape[0], chunk):
                hc = hidden[s : s + chunk].to(compute_dtype)
                y = labels[s : s + chunk]
                c = coef[s : s + chunk].to(acc)
                logp, ce = _chunk_probs(hc, wc, bc, y, acc)
                wsum += (ce * c).sum()
                psum += ce.sum()
                if not fuse:
                    continue
                # d(sum c * CE) / d logits = c * (softmax - onehot); c is applied on the [n, H] side
                p = logp.exp_()
                p[rows[: p.shape[0]], y] -= 1.0
                gz = p.to(compute_dtype)
                if grad_h is not None:
                    grad_h[s : s + chunk] = ((gz @ wc).to(acc) * c[:, None]).to(hidden.dtype)
                if grad_w is not None:
                    scaled = (hc.to(acc) * c[:, None]).to(compute_dtype)
                    if grad_w.dtype == gz.dtype:
                        grad_w.addmm_(gz.t(), scaled)
                    else:
                        grad_w += (gz.t() @ scaled).to(acc)
                if grad_b is not None:
                    grad_b += c @ p
                del logp, p, gz
        ctx.save_for_backward(hidden, weight, bias, labels, coef)
        ctx.chunk, ctx.compute_dtype, ctx.acc = chunk, compute_dtype, acc
        ctx.fused = (grad_h, grad_w, grad_b) if fuse else None
        return wsum, psum

    @staticmethod
    def backward(ctx, g_weighted, g_plain):
        fused, ctx.fused = ctx.fused, None
        hidden, weight, bias, labels, coef = ctx.saved_tensors
        if fused is not None and g_plain is None:
            if g_weighted is None:
                return (None,) * 8
            grad_h, grad_w, grad_b = fused
            g = g_weighted.to(ctx.acc)
            return (
                (grad_h.to(ctx.acc).mul_(g)).to(hidden.dtype) if grad_h is not None else None,
                grad_w.mul_(g).to(weight.dtype) if grad_w is not None else None,
                grad_b.mul_(g).to(bias.dtype) if grad_b is not None else None,
                None,
                None,
                None,
                None,
                None,
            )
        return _recompute_backward(ctx, hidden, weight, bias, labels, coef, g_weighted, g_plain)


def _recompute_backward(ctx, hidden, weight, bias, labels, coef, g_weighted, g_plain):
    """The gradients with the logits recomputed chunk by chunk (a gradient asked of the plain sum)."""
    chunk, cd, acc = ctx.chunk, ctx.compute_dtype, ctx.acc
    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    scale = torch.zeros(hidden.shape[0], dtype=acc, device=hidden.device)
    if g_weighted is not None:
        scale = scale + coef.to(acc) * g_weighted.to(acc)
    if g_plain is not None:
        scale = scale + g_plain.to(acc)
    grad_h = torch.empty_like(hidden) if need_h else None
    grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
    grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b and bias is not None else None
    wc = weight.to(cd)
    bc = bias.to(cd) if bias is not None else None
    rows = torch.arange(min(chunk, max(1, hidden.shape[0])), device=hidden.device)
    with torch.autocast(hidden.device.type, enabled=False):
        for s in range(0, hidden.shape[0], chunk):
            hc = hidden[s : s + chunk].to(cd)
            p = torch.softmax(F.linear(hc, wc, bc).to(acc), dim=-1)
            p[rows[: p.shape[0]], labels[s : s + chunk]] -= 1.0
            p *= scale[s : s + chunk, None]
            gz = p.to(cd)
            if grad_h is not None:
                grad_h[s : s + chunk] = (gz @ wc).to(hidden.dtype)
            if grad_w is not None:
                grad_w += (gz.t() @ hc).to(acc)
            if grad_b is not None:
                grad_b += p.sum(0)
            del p, gz
    return (
        grad_h,
        grad_w.to(weight.dtype) if grad_w is not None else None,
        grad_b.to(bias.dtype) if grad_b is not None else None,
        None,
        None,
        None,
        None,
        None,
    )


def _target_rows(hidden: Any, labels: Any, shift: bool) -> tuple[Any, Any, Any]:
    """``(hidden rows [N, H], their targets [N], their flat positions [N])`` of the positions that predict a
    target (shifted label != -100)."""
    cut = 1 if shift else 0
    h = hidden[:, : hidden.shape[1] - cut, :].reshape(-1, hidden.shape[-1])
    y = labels[:, cut:].reshape(-1).to(h.device)
    rows = torch.nonzero(y != IGNORE_INDEX).squeeze(1)
    return h.index_select(0, rows), y.index_select(0, rows).long(), rows


def chunked_head_loss(
    hidden: Any, weight: Any, bias: Any, labels: Any, loss_weights: Any, chunk_rows: int = 0, *, shift: bool = True
) -> tuple[Any, Any]:
    """``(sum w * CE, sum CE)`` over the target tokens, from hidden states and the head's parameters.

    ``hidden`` [B, L, H] are the decoder's final hidden states; ``labels`` and ``loss_weights`` [B, L] are
    aligned to the input positions (position t predicts labels[t + 1], as in
    :func:`longalign.batching.weighted_causal_lm_loss`); ``weight`` [V, H] and ``bias`` [V] or None are the
    head's. Only the rows with a target reach the head. Both sums are differentiable; the second is the plain
    cross-entropy sum (its gradient is usually not used). ``shift=False`` takes labels and weights already
    shifted (position t carries the target of token t + 1: a sequence-parallel shard).
    """
    if hidden.dim() != 3 or hidden.shape[:2] != labels.shape or labels.shape != loss_weights.shape:
        raise ValueError(
            f"shape mismatch: hidden {tuple(hidden.shape)}, labels {tuple(labels.shape)}, "
            f"loss_weights {tuple(loss_weights.shape)}; expected [B, L, H], [B, L], [B, L]"
        )
    h, y, rows = _target_rows(hidden, labels, shift)
    cut = 1 if shift else 0
    w = loss_weights[:, cut:].reshape(-1).to(h.device)
    acc = _acc_dtype(hidden, weight)
    coef = w.index_select(0, rows).to(acc)
    chunk = int(chunk_rows) if chunk_rows and chunk_rows > 0 else default_chunk_rows(weight.shape[0])
    return HeadCrossEntropy.apply(
        h, weight, bias, y, coef, chunk, _compute_dtype(hidden, weight), torch.is_grad_enabled()
    )


# ------------------------------------------------------------------------------------------------------------
# one sequence's target tokens scored without gradients (held-out evaluation)
# ------------------------------------------------------------------------------------------------------------


@dataclass
class TargetScores:
    """The cross-entropy of one sequence's target tokens; ``token_losses`` and ``predicted`` (the argmax at
    each target position) only when asked for."""

    loss_sum: float
    n_target: int
    targets: Any  # [N] target token ids
    token_losses: Any = None  # [N] cross-entropy of each target
    predicted: Any = None  # [N] the model's argmax at each target position

    @property
    def loss_mean(self) -> float:
        return self.loss_sum / self.n_target if self.n_target else float("nan")


def score_targets(
    model: Any,
    input_ids: Sequence[int] | Any,
    labels: Sequence[int] | Any,
    *,
    chunk_rows: int = 0,
    tokens: bool = False,
) -> TargetScores:
    """Score one sequence's target tokens (``labels`` as the tokenize stage writes them: the input id on a
    target, -100 elsewhere) under a causal LM, without gradients: the decoder runs on the whole sequence and
    the head only on the positions that predict a target, chunk by chunk, with the arithmetic of the training
    loss (:func:`chunked_head_loss`). ``tokens=True`` also keeps each target's cross-entropy and the argmax."""
    body, head = model.get_decoder(), model.get_output_embeddings()
    ids = torch.as_tensor(input_ids, dtype=torch.long)[None]
    lab = torch.as_tensor(labels, dtype=torch.long)[None]  # position t predicts lab[t + 1]
    with torch.no_grad():
        hidden = body(input_ids=ids, use_cache=False).last_hidden_state
        h, y, _ = _target_rows(hidden, lab, True)
        weight, bias = head.weight, getattr(head, "bias", None)
        acc = _acc_dtype(hidden, weight)
        chunk = int(chunk_rows) if chunk_rows and chunk_rows > 0 else default_chunk_rows(weight.shape[0])
        total = torch.zeros((), dtype=acc, device=h.device)
        losses, predicted = [], []
        for _, z, ce in _chunk_losses(h, weight, bias, y, chunk, _compute_dtype(hidden, weight), acc):
            total += ce.sum()
            if tokens:
                losses.append(ce)
                predicted.append(z.argmax(-1))
    scores = TargetScores(loss_sum=float(total), n_target=int(y.numel()), targets=y)
    if tokens:
        scores.token_losses = torch.cat(losses) if losses else torch.zeros(0, dtype=acc)
        scores.predicted = torch.cat(predicted) if predicted else y[:0]
    return scores


# ------------------------------------------------------------------------------------------------------------
# the model's output layer, switched to compute the loss while asked to
# ------------------------------------------------------------------------------------------------------------


@dataclass
class LossRequest:
    labels: Any
    loss_weights: Any
    chunk_rows: int = 0
    shift: bool = True


class LossHead(torch.nn.Linear):
    """An ``nn.Linear`` output layer that returns ``[[[sum w*CE, sum CE]]]`` instead of logits while a
    :class:`LossRequest` is set on it (see :func:`loss_request`; the plain sum without a gradient); otherwise a
    plain linear layer."""

    _longalign_request: LossRequest | None = None

    def forward(self, hidden):  # noqa: D401 - nn.Module API
        req = self._longalign_request
        if req is None:
            return super().forward(hidden)
        weighted, plain = chunked_head_loss(
            hidden, self.weight, self.bias, req.labels, req.loss_weights, req.chunk_rows, shift=req.shift
        )
        # the plain sum is a statistic: detached, so the backward gets no (zero) gradient for it and keeps to the
        # gradients the forward formed
        return torch.stack([weighted, plain.detach()]).view(1, 1, 2)


def install_loss_head(model: Any) -> Any:
    """Switch ``model``'s output layer to :class:`LossHead` in place (same parameters, same state-dict keys;
    saving and generation are unchanged). Returns the head. Raises ValueError naming the fix when the model's
    output layer is not an ``nn.Linear``."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(head, LossHead):
        return head
    if type(head) is not torch.nn.Linear:
        raise ValueError(
            f"loss_impl='chunked' needs the model's output layer to be a torch.nn.Linear, found "
            f"{type(head).__name__}; use --loss-impl full for this model"
        )
    head.__class__ = LossHead
    return head


def find_loss_head(model: Any) -> Any:
    """The :class:`LossHead` inside ``model`` (also through DDP / DeepSpeed wrappers), or None."""
    for module in model.modules():
        if isinstance(module, LossHead):
            return module
    return None


@contextlib.contextmanager
def loss_request(
    head: Any, labels: Any, loss_weights: Any, chunk_rows: int = 0, *, shift: bool = True
) -> Iterator[None]:
    """While active, ``head``'s forward returns the loss sums for these labels and weights (``shift=False``:
    already shifted, see :func:`chunked_head_loss`)."""
    head._longalign_request = LossRequest(labels, loss_weights, chunk_rows, shift)
    try:
        yield
    finally:
        head._longalign_request = None


def read_loss_output(logits: Any) -> tuple[Any, Any]:
    """``(weighted sum, plain sum)`` from what the model returned as logits under :func:`loss_request`."""
    flat = logits.reshape(-1)
    if flat.numel() != 2:
        raise RuntimeError(
            f"the model returned logits of shape {tuple(logits.shape)} under a loss request: its "
            "forward transforms or slices the head's output; use --loss-impl full for this model"
        )
    return flat[0], flat[1]
