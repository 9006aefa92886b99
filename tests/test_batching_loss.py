"""Loss weighting is exact: the packed, accumulated, data-parallel loss (and its gradient) equals the
per-sequence definition, computed independently, for every normalisation."""

import os
import socket

import numpy as np
import pytest
import torch

from longalign import IGNORE_INDEX
from longalign.batching import (
    PackedCollator,
    PaddedCollator,
    StepTotals,
    count_targets,
    make_plan,
    token_weights,
    weighted_causal_lm_loss,
    weights_from_totals,
)

VOCAB, WORLD, ACCUM = 11, 2, 3


def make_data(n=23, seed=0, max_len=24):
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n):
        length = int(rng.integers(2, max_len + 1))
        ids = rng.integers(0, VOCAB, length)
        labels = ids.copy()
        labels[: int(rng.integers(1, length))] = IGNORE_INDEX  # prompt part
        if rng.random() < 0.1:
            labels[:] = IGNORE_INDEX  # a sequence with no targets at all
        seqs.append({"input_ids": ids.tolist(), "labels": labels.tolist()})
    return seqs


class TinyLM(torch.nn.Module):
    """Embedding + linear in float64: logits of token t depend only on token t, so packing cannot change
    them and any difference comes from the loss weighting."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Parameter(torch.randn(VOCAB, 5, generator=g, dtype=torch.float64))
        self.out = torch.nn.Parameter(torch.randn(5, VOCAB, generator=g, dtype=torch.float64))

    def forward(self, input_ids):
        return self.emb[input_ids] @ self.out


def seq_loss(model, s):
    """(sum of token CE, number of targets) of one sequence on its own."""
    logits = model(torch.tensor(s["input_ids"])[None])[0]
    labels = torch.tensor(s["labels"])
    ce = torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX, reduction="sum")
    return ce, int((labels[1:] != IGNORE_INDEX).sum())


def reference_step_losses(model, data, plan, loss_norm):
    """Step losses straight from the definitions (eq. 2 / token mean / eq. 3)."""
    out = []
    for step in plan.steps():
        if loss_norm == "sequence":
            terms = [seq_loss(model, data[i]) for b in step for i in b]
            terms = [(loss, n) for loss, n in terms if n > 0]
            out.append(sum(loss / n for loss, n in terms) / len(terms))
        elif loss_norm == "token":
            terms = [seq_loss(model, data[i]) for b in step for i in b]
            out.append(sum(loss for loss, _ in terms) / sum(n for _, n in terms))
        else:
            per_pack = []
            for b in step:
                terms = [seq_loss(model, data[i]) for i in b]
                n_k = sum(n for _, n in terms)
                if n_k:
                    per_pack.append(sum(loss for loss, _ in terms) / n_k)
            out.append(sum(per_pack) / len(per_pack))
    return out


def run_rank(model, data, plan, weights, rank, collate):
    """What one rank computes in a step: sum over its accumulation micro-batches of the weighted loss."""
    losses = []
    for step in plan.steps():
        total = torch.zeros((), dtype=torch.float64)
        for b in step[rank :: plan.world_size]:
            feats = [{**data[i], "token_weight": float(weights[i])} for i in b]
            batch = collate(feats)
            logits = model(batch["input_ids"])
            total = total + weighted_causal_lm_loss(logits, batch["labels"], batch["loss_weights"].double())
        losses.append(total)
    return losses


@pytest.mark.parametrize("loss_norm", ["sequence", "token", "pack"])
@pytest.mark.parametrize("method", ["pack", "sort"])
def test_in_process_ranks_match_reference(loss_norm, method):
    data = make_data()
    n_target = [count_targets(s["labels"]) for s in data]
    plan = make_plan(
        [len(s["input_ids"]) for s in data],
        method,
        max_len=40,
        batch_size=2,
        world_size=WORLD,
        grad_accum=ACCUM,
        seed=3,
    )
    assert len(list(plan.steps())) >= 2
    weights = token_weights(plan, n_target, loss_norm, WORLD, ACCUM)
    collate = (
        PackedCollator(40, weights_dtype=torch.float64)
        if method == "pack"
        else PaddedCollator(pad_token_id=0, weights_dtype=torch.float64)
    )
    model = TinyLM()
    ranks = [run_rank(model, data, plan, weights, r, collate) for r in range(WORLD)]
    ref_model = TinyLM()
    ref = reference_step_losses(ref_model, data, plan, loss_norm)
    for s, ref_loss in enumerate(ref):
        got = sum(ranks[r][s] for r in range(WORLD))
        assert abs(got.item() - ref_loss.item()) < 1e-6
        # gradients, not just values
        model.zero_grad()
        ref_model.zero_grad()
        got.backward(retain_graph=True)
        ref_loss.backward(retain_graph=True)
        for p, q in zip(model.parameters(), ref_model.parameters()):
            assert torch.allclose(p.grad, q.grad, atol=1e-9, rtol=0)


def test_sequence_loss_differs_from_pack_loss():
    """Eq. 3 is biased: on skewed data it is a different number than eq. 2."""
    data = make_data(seed=1)
    n_target = [count_targets(s["labels"]) for s in data]
    plan = make_plan([len(s["input_ids"]) for s in data], "pack", max_len=40, world_size=WORLD, grad_accum=ACCUM)
    w_seq = token_weights(plan, n_target, "sequence")
    w_pack = token_weights(plan, n_target, "pack")
    assert not np.allclose(w_seq, w_pack)


def test_weights_literal():
    # one step, 2 ranks x 1: micro-batch 0 = {0, 1}, micro-batch 1 = {2}
    from longalign.batching.plans import Plan

    plan = Plan(
        batches=[[0, 1], [2]],
        stats={},
        lengths=np.array([5, 5, 5]),
        method="pack",
        max_len=10,
        world_size=2,
        grad_accum=1,
    )
    n = [2, 4, 0]
    assert token_weights(plan, n, "sequence").tolist() == [1 / (2 * 2), 1 / (4 * 2), 0.0]
    assert token_weights(plan, n, "token").tolist() == [1 / 6, 1 / 6, 0.0]
    assert token_weights(plan, n, "pack").tolist() == [1 / 6, 1 / 6, 0.0]  # K = 1 pack with targets
    with pytest.raises(ValueError, match="'sequence', 'token', 'pack'"):
        token_weights(plan, n, "mean")


def test_totals_from_local_counts_match_plan():
    data = make_data(seed=2)
    n_target = np.array([count_targets(s["labels"]) for s in data])
    plan = make_plan([len(s["input_ids"]) for s in data], "pack", max_len=30, world_size=WORLD, grad_accum=ACCUM)
    w_plan = token_weights(plan, n_target, "sequence")
    for step in plan.steps():
        per_rank = [[n_target[b] for b in step[r::WORLD]] for r in range(WORLD)]
        local = [StepTotals.from_counts(x) for x in per_rank]
        total = StepTotals(*(sum(getattr(t, f) for t in local) for f in ("sequences", "tokens", "micro_batches")))
        for r in range(WORLD):
            for b, w in zip(step[r::WORLD], weights_from_totals(per_rank[r], total, "sequence")):
                assert np.allclose(w, w_plan[b], rtol=0, atol=1e-15)


class TestCollators:
    def test_packed_literal(self):
        feats = [
            {"input_ids": [1, 2, 3], "labels": [1, 2, 3], "token_weight": 0.5},
            {"input_ids": [4, 5], "labels": [-100, 5], "token_weight": 0.25},
        ]
        b = PackedCollator(8)(feats)
        assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
        assert b["labels"].tolist() == [[-100, 2, 3, -100, 5]]
        assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
        assert b["cu_seqlens"].tolist() == [0, 3, 5] and b["cu_seqlens"].dtype == torch.int32
        assert b["seq_lens"].tolist() == [3, 2]
        assert b["loss_weights"].tolist() == [[0.0, 0.5, 0.5, 0.0, 0.25]]
        with pytest.raises(ValueError, match="max_len=4"):
            PackedCollator(4)(feats)

    def test_padded_literal(self):
        feats = [
            {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "token_weight": 0.5},
            {"input_ids": [4], "labels": [4], "token_weight": 2.0},
        ]
        b = PaddedCollator(pad_token_id=9)(feats)
        assert b["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
        assert b["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
        assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
        assert b["loss_weights"].tolist() == [[0.0, 0.5, 0.5], [2.0, 0.0, 0.0]]

    def test_loss_never_crosses_boundary(self):
        logits = torch.randn(1, 5, VOCAB, dtype=torch.float64)
        labels = torch.tensor([[-100, 2, 3, -100, 5]])
        w = torch.ones(1, 5, dtype=torch.float64)
        got = weighted_causal_lm_loss(logits, labels, w)
        ce = torch.nn.functional.cross_entropy
        want = ce(logits[0, [0, 1, 3]], torch.tensor([2, 3, 5]), reduction="sum")
        assert torch.allclose(got, want)

    def test_chunked_loss_equals_unchunked(self):
        logits = torch.randn(2, 9, VOCAB, dtype=torch.float64)
        labels = torch.randint(0, VOCAB, (2, 9))
        labels[0, :3] = -100
        w = torch.rand(2, 9, dtype=torch.float64)
        assert torch.allclose(
            weighted_causal_lm_loss(logits, labels, w, chunk_tokens=3), weighted_causal_lm_loss(logits, labels, w)
        )


# ------------------------------------------------------------------------------------------------------
# two real processes on gloo
# ------------------------------------------------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, queue):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        data = make_data()
        n_target = np.array([count_targets(s["labels"]) for s in data])
        plan = make_plan(
            [len(s["input_ids"]) for s in data], "pack", max_len=40, world_size=WORLD, grad_accum=ACCUM, seed=3
        )
        model = TinyLM()
        collate = PackedCollator(40, weights_dtype=torch.float64)
        results = {}
        for loss_norm in ("sequence", "token", "pack"):
            results[loss_norm] = _rank_steps(rank, plan, data, n_target, model, collate, loss_norm)
        if rank == 0:
            queue.put(results)
    finally:
        dist.destroy_process_group()


def _rank_steps(rank, plan, data, n_target, model, collate, loss_norm):
    import torch.distributed as dist

    from longalign.batching import step_totals_allreduce

    w_plan = token_weights(plan, n_target, loss_norm)
    results = []
    for step in plan.steps():
        mine = step[rank::WORLD]
        # variant 2: weights from an all-reduce of local counts (no plan knowledge needed)
        totals = step_totals_allreduce([n_target[b] for b in mine])
        w_local = weights_from_totals([n_target[b] for b in mine], totals, loss_norm)
        out = {}
        for variant in ("plan", "allreduce"):
            model.zero_grad()
            total = torch.zeros((), dtype=torch.float64)
            for k, b in enumerate(mine):
                ws = w_plan[b] if variant == "plan" else w_local[k]
                feats = [{**data[i], "token_weight": float(w)} for i, w in zip(b, ws)]
                batch = collate(feats)
                total = total + weighted_causal_lm_loss(
                    model(batch["input_ids"]), batch["labels"], batch["loss_weights"].double()
                )
            # DDP averages gradients; the trainer scales the per-rank sum by world_size
            (total * WORLD).backward()
            loss = total.detach().clone()
            dist.all_reduce(loss)
            grads = []
            for p in model.parameters():
                g = p.grad.clone()
                dist.all_reduce(g)
                grads.append((g / WORLD).numpy())
            out[variant] = (float(loss), grads)
        results.append(out)
    return results


def test_two_processes_gloo():
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        procs = [ctx.Process(target=_worker, args=(r, port, queue)) for r in range(WORLD)]
        for p in procs:
            p.start()
        results = queue.get(timeout=120)
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
    finally:
        if env_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_threads
    data = make_data()
    plan = make_plan(
        [len(s["input_ids"]) for s in data], "pack", max_len=40, world_size=WORLD, grad_accum=ACCUM, seed=3
    )
    model = TinyLM()
    for loss_norm in ("sequence", "token", "pack"):
        refs = reference_step_losses(model, data, plan, loss_norm)
        assert len(results[loss_norm]) == len(refs) >= 2
        for got, ref in zip(results[loss_norm], refs):
            model.zero_grad()
            ref.backward(retain_graph=True)
            for variant in ("plan", "allreduce"):
                loss, grads = got[variant]
                assert abs(loss - ref.item()) < 1e-6
                for g, p in zip(grads, model.parameters()):
                    assert np.allclose(g, p.grad.numpy(), atol=1e-9, rtol=0)
