"""Checks on the real model when training starts, before the first step.

* :func:`packing_probe`: a pack of two sequences must give the logits the sequences give alone (the attention
  backend keeps packed sequences apart), far closer than a pack whose sequences see each other.
* :func:`loss_probe`: the chunked loss (from the decoder's hidden states) must equal the loss of the model's
  logits; a model that transforms its logits after the output layer would otherwise train on a wrong loss.

:class:`StartupProbes` runs the ones a configuration needs; the metrics callback calls it at the start of
training and the results go into ``run_meta.json`` (``packing_check``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .. import IGNORE_INDEX
from ..batching.head_loss import loss_request, read_loss_output
from ..batching.loss import weighted_and_plain_ce
from . import sequence_parallel as spm
from .forward import model_inputs
from .model_setup import ModelSetup

log = logging.getLogger(__name__)


class StartupProbes:
    """The probes of one run, called with the model when training begins; their numbers collect in ``result``.

    ``loss_head`` (the chunked loss is on) runs :func:`loss_probe`; ``check_packing`` runs :func:`packing_probe`
    with ``collator`` through ``backend`` (``core_backend`` is the name logged: under sequence parallelism the
    backend is the wrapper of that core).
    """

    def __init__(
        self,
        loss_head: Any,
        check_packing: bool,
        collator: Any,
        device: Any,
        dtype: Any,
        vocab: int,
        backend: str,
        core_backend: str,
    ):
        self.loss_head = loss_head
        self.check_packing = check_packing
        self.collator = collator
        self.device, self.dtype, self.vocab = device, dtype, vocab
        self.backend, self.core_backend = backend, core_backend
        self.result: dict[str, float] = {}

    @classmethod
    def for_setup(cls, setup: ModelSetup, check_packing: bool, collator: Any, vocab: int) -> StartupProbes:
        """The probes of a model built by :func:`longalign.train.model_setup.setup_model`."""
        return cls(
            setup.loss_head,
            check_packing,
            collator,
            setup.device,
            setup.dtype,
            vocab,
            setup.backend,
            setup.core_backend,
        )

    def __call__(self, model: Any) -> None:
        # probes run one whole pack on each rank: under SP the wrapper calls its core directly
        with spm.bypassed():
            self.run(model)

    def run(self, model: Any) -> None:
        if self.loss_head is not None:
            self.result.update(loss_probe(model, self.loss_head, self.device, self.dtype, self.vocab))
            log.info("chunked loss check: relative difference to the full loss %.2e", self.result["loss_rel_err"])
        if self.check_packing:
            self.result.update(packing_probe(model, self.collator, self.device, self.dtype, self.vocab, self.backend))
            log.info(
                "packing check (%s): packed vs separate %.2e, without boundaries %.2e",
                self.core_backend,
                self.result["packed_err"],
                self.result["leak_err"],
            )


def _probe_autocast(device: Any, dtype: Any) -> Any:
    """Autocast in the run's reduced precision on its device, or a context that keeps float32."""
    if dtype is not None and dtype != torch.float32:
        return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def packing_probe(model: Any, collator: Any, device: Any, dtype: Any, vocab: int, backend: str) -> dict[str, float]:
    """Check that a pack of two sequences gives the logits the sequences give alone.

    Returns the max abs difference of packed vs separate logits (``packed_err``) and of a pack whose
    sequences see each other (``leak_err``: no position restart, plain causal). Raises ValueError when the
    backend does not keep the sequences apart (``packed_err`` not far below ``leak_err``).
    """
    gen = torch.Generator().manual_seed(1234)
    lens = (7, 5)
    seqs = [torch.randint(10, max(11, vocab - 1), (n,), generator=gen).tolist() for n in lens]
    feats = [{"input_ids": s, "labels": s, "token_weight": 1.0} for s in seqs]
    pack = collator(feats)
    was_training = model.training
    model.eval()
    autocast = _probe_autocast(device, dtype)
    try:
        with torch.no_grad(), autocast:
            batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in pack.items()}
            packed = model(**model_inputs(batch, True, backend)).logits[0].float()
            sep = torch.cat(
                [model(input_ids=torch.tensor([s], device=device), use_cache=False).logits[0].float() for s in seqs]
            )
            leak = model(input_ids=batch["input_ids"], use_cache=False).logits[0].float()
    finally:
        model.train(was_training)
    packed_err = float((packed - sep).abs().max())
    leak_err = float((leak - sep).abs().max())
    result = {"packed_err": packed_err, "leak_err": leak_err}
    if not packed_err <= max(1e-5, 0.1 * leak_err):
        raise ValueError(
            f"attention backend {backend!r} does not keep packed sequences apart (packed vs separate "
            f"logits differ by {packed_err:.3g}, a pack without boundaries by {leak_err:.3g}); use "
            "--attn-implementation auto (flash-attn, flex, sdpa or longalign_segment) or "
            "--method sort"
        )
    return result


def loss_probe(model: Any, head: Any, device: Any, dtype: Any, vocab: int) -> dict[str, float]:
    """Check on the real model that the chunked loss equals the loss read from its logits.

    A model whose forward transforms the head's output (soft-capping, a logit scale) would train on a wrong
    loss under ``loss_impl='chunked'``: this raises ValueError naming the fix when the two disagree by more than
    float rounding (1e-4 relative in float32, 2e-2 under bf16/fp16 autocast).
    """
    gen = torch.Generator().manual_seed(4321)
    ids = torch.randint(10, max(11, vocab - 1), (2, 9), generator=gen).to(device)
    labels = ids.clone()
    labels[:, :3] = IGNORE_INDEX
    weights = torch.rand(ids.shape, generator=gen, dtype=torch.float64).to(device)
    was_training = model.training
    model.eval()
    autocast = _probe_autocast(device, dtype)
    try:
        with torch.no_grad(), autocast:
            full, _ = weighted_and_plain_ce(model(input_ids=ids, use_cache=False).logits, labels, weights)
            with loss_request(head, labels, weights):
                chunked, _ = read_loss_output(model(input_ids=ids, use_cache=False).logits)
    finally:
        model.train(was_training)
    rel = float((full.double() - chunked.double()).abs() / full.double().abs().clamp_min(1e-12))
    tol = 1e-4 if dtype is None or dtype == torch.float32 else 2e-2
    if not rel <= tol:
        raise ValueError(
            f"the chunked loss differs from the loss of the model's logits by {rel:.3g} (relative): "
            f"this model transforms its logits after the output layer; use --loss-impl full"
        )
    return {"loss_rel_err": rel}
