"""The reference step losses: the formulas agree with hand-worked numbers, and the library's weighted path
(token_weights + collators + weighted_causal_lm_loss) agrees with the formulas in every layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longalign import IGNORE_INDEX
from longalign.batching import count_targets, make_plan, pack_lengths, reference, token_weights

VOCAB = 13


def _data(lengths, prompt=3, seed=0):
    data = [
        reference.toy_sequence(int(n), prompt_tokens=min(prompt, int(n)), vocab=VOCAB, seed=seed * 1000 + i)
        for i, n in enumerate(lengths)
    ]
    logits = reference.random_logits(lengths, VOCAB, torch.Generator().manual_seed(seed))
    n_target = np.array([count_targets(d["labels"]) for d in data])
    return data, logits, n_target


def test_toy_sequence_is_deterministic_and_masks_the_prompt():
    a = reference.toy_sequence(12, prompt_tokens=4, vocab=VOCAB, seed=7)
    assert a == reference.toy_sequence(12, prompt_tokens=4, vocab=VOCAB, seed=7)
    assert a != reference.toy_sequence(12, prompt_tokens=4, vocab=VOCAB, seed=8)
    assert len(a["input_ids"]) == 12 and all(0 <= t < VOCAB for t in a["input_ids"])
    assert a["labels"][:4] == [IGNORE_INDEX] * 4 and a["labels"][4:] == a["input_ids"][4:]
    with pytest.raises(ValueError, match="prompt_tokens"):
        reference.toy_sequence(3, prompt_tokens=5, vocab=VOCAB, seed=0)


def test_sequence_losses_match_a_log_softmax_by_hand():
    data, logits, n_target = _data([6, 9, 2])
    L = reference.sequence_losses(data, logits)
    for i, (d, lg) in enumerate(zip(data, logits)):
        logp = torch.log_softmax(lg, dim=-1).numpy()
        expected = -sum(
            logp[t - 1, d["labels"][t]] for t in range(1, len(d["labels"])) if d["labels"][t] != IGNORE_INDEX
        )
        assert L[i] == pytest.approx(expected, rel=1e-12)
    assert L[2] == 0.0 and n_target[2] == 0  # length 2, prompt 2: nothing to predict


def test_boost_targets_lowers_the_loss_of_that_sequence_only():
    data, logits, _ = _data([10, 10])
    before = reference.sequence_losses(data, logits)
    reference.boost_targets(logits[0], data[0]["labels"], 5.0)
    after = reference.sequence_losses(data, logits)
    assert after[0] < before[0] - 1.0 and after[1] == before[1]


def test_formula_step_losses_on_hand_worked_numbers():
    L, n = [2.0, 6.0, 3.0, 0.0], [1, 3, 3, 0]  # sequence 3 has no targets: not counted in M, its pack not in K
    out = reference.formula_step_losses(L, n, [[0, 1], [2], [3]])
    assert out["sequence"] == pytest.approx((2 / 1 + 6 / 3 + 3 / 3) / 3)
    assert out["token"] == pytest.approx(11 / 7)
    assert out["pack"] == pytest.approx((8 / 4 + 3 / 3) / 2)
    with pytest.raises(ValueError, match="no sequence"):
        reference.formula_step_losses([0.0], [0], [[0]])


@pytest.mark.parametrize("packed", [True, False])
def test_weighted_path_equals_formulas_for_every_normalisation(packed):
    lengths = np.array([40, 7, 19, 2, 25, 11, 30, 5])  # sequence 3 has no targets
    data, logits, n_target = _data(lengths, prompt=2)
    L = reference.sequence_losses(data, logits)
    plan = make_plan(lengths, "pack" if packed else "sort", max_len=48, batch_size=3, grad_accum=10)
    assert len(plan.batches) <= plan.micro_per_step  # one optimizer step
    formulas = reference.formula_step_losses(L, n_target, plan.batches)
    for norm in ("sequence", "token", "pack"):
        w = token_weights(plan, n_target, norm)
        got = reference.weighted_step_loss(data, logits, plan.batches, w, packed=packed)
        assert got == pytest.approx(formulas[norm], rel=1e-12), norm
    # a wrong weighting is caught: the token weights do not give the sequence mean here
    wrong = reference.weighted_step_loss(
        data, logits, plan.batches, token_weights(plan, n_target, "token"), packed=packed
    )
    assert abs(wrong - formulas["sequence"]) > 1e-3


def test_ddp_step_loss_is_the_same_in_every_layout_and_the_in_batch_mean_is_not():
    rng = np.random.default_rng(1)
    lengths = rng.integers(8, 60, size=12)
    data, logits, n_target = _data(lengths)
    L = reference.sequence_losses(data, logits)
    eq2 = reference.formula_step_losses(L, n_target, [list(range(len(data)))])["sequence"]
    capacity = reference.capacity_for_packs(lengths, 4)
    seq_losses, in_batch = [], []
    for method, max_len in (("pack", capacity), ("sort", int(lengths.max()))):
        for world, accum in ((1, 4), (2, 2), (4, 1)):
            plan = make_plan(lengths, method, max_len=max_len, batch_size=3, world_size=world, grad_accum=accum)
            assert len(plan.batches) == 4
            packed = method == "pack"
            seq_losses.append(
                reference.ddp_step_loss(plan, data, logits, token_weights(plan, n_target, "sequence"), packed=packed)
            )
            mb = reference.micro_batch_sequence_weights(plan, n_target)
            ranks = reference.rank_step_losses(plan, data, logits, mb, packed=packed)
            assert len(ranks) == world
            by_hand = np.mean(
                [np.mean([(L[b] / n_target[b]).mean() for b in plan.rank_batches(r)]) for r in range(world)]
            )
            got = reference.ddp_step_loss(plan, data, logits, mb, packed=packed, scale_by_world_size=False)
            assert got == pytest.approx(by_hand, rel=1e-12)
            in_batch.append(got)
    assert np.allclose(seq_losses, eq2, rtol=1e-12)
    assert np.ptp(in_batch) > 1e-4  # the per-micro-batch mean moves with the grouping


def test_micro_batch_sequence_weights_skip_sequences_without_targets():
    lengths = np.array([10, 3, 10, 10])
    data, _, n_target = _data(lengths, prompt=3)  # sequence 1: no targets
    plan = make_plan(lengths, "sort", max_len=10, batch_size=2, grad_accum=2)
    w = reference.micro_batch_sequence_weights(plan, n_target)
    assert w[1] == 0.0
    for b in plan.batches:  # each micro-batch's weights sum to 1/grad_accum over its targets
        assert (w[b] * n_target[b]).sum() == pytest.approx(0.5)


def test_batch_index_and_capacity_for_packs():
    assert reference.batch_index([[2, 0], [3]], 5).tolist() == [0, -1, 0, 1, -1]
    lengths = np.array([50, 40, 30, 30, 20, 10, 10, 5])
    cap = reference.capacity_for_packs(lengths, 3, step=5)
    assert len(pack_lengths(lengths, cap)) == 3
    assert cap == lengths.max() or len(pack_lengths(lengths, cap - 5)) != 3  # the smallest such capacity
    with pytest.raises(ValueError, match="exactly 9 packs"):
        reference.capacity_for_packs(lengths, 9)


def test_misaligned_inputs_are_rejected():
    data, logits, _ = _data([5, 6])
    with pytest.raises(ValueError, match="one per sequence"):
        reference.sequence_losses(data, logits[:1])
    with pytest.raises(ValueError, match="sequence 1"):
        reference.weighted_step_loss(data, [logits[0], logits[0]], [[0, 1]], np.ones(2))
