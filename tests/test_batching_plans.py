import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longalign.batching import make_plan, pack_lengths
from longalign.batching.plans import Plan, compute_stats, load_plan_batches

lengths_st = st.lists(st.integers(min_value=1, max_value=300), min_size=0, max_size=120)
methods_st = st.sampled_from(["naive", "sort", "pack"])
algos_st = st.sampled_from(["nextfit", "ffd", "bfd"])


def _flat(plan: Plan) -> list[int]:
    return [i for b in plan.batches for i in b]


class TestPlanProperties:
    @settings(max_examples=80, deadline=None)
    @given(
        lengths=lengths_st,
        method=methods_st,
        algo=algos_st,
        max_len=st.integers(1, 256),
        batch_size=st.integers(1, 5),
        world_size=st.integers(1, 3),
        grad_accum=st.integers(1, 3),
        seed=st.integers(0, 5),
        overlong=st.sampled_from(["truncate", "drop"]),
    )
    def test_invariants(self, lengths, method, algo, max_len, batch_size, world_size, grad_accum, seed, overlong):
        plan = make_plan(
            lengths,
            method,
            max_len=max_len,
            batch_size=batch_size,
            world_size=world_size,
            grad_accum=grad_accum,
            algo=algo,
            seed=seed,
            overlong=overlong,
        )
        raw = np.asarray(lengths, dtype=np.int64)
        over = raw > max_len
        kept = sorted(np.flatnonzero(~over).tolist()) if overlong == "drop" else list(range(len(lengths)))
        # every (kept) index exactly once
        assert sorted(_flat(plan)) == kept
        eff = plan.lengths
        assert eff.tolist() == [0 if (o and overlong == "drop") else min(n, max_len) for n, o in zip(lengths, over)]
        s = plan.stats
        assert s["truncated"] == (int(over.sum()) if overlong == "truncate" else 0)
        assert s["dropped"] == (int(over.sum()) if overlong == "drop" else 0)
        assert s["n_sequences"] == len(kept)
        assert s["n_tokens"] == int(eff.sum())
        assert s["n_batches"] == len(plan.batches)
        assert all(len(b) > 0 for b in plan.batches)
        if method == "pack":
            assert all(eff[b].sum() <= max_len for b in plan.batches)
            assert s["lower_bound"] == math.ceil(s["n_tokens"] / max_len)
            assert s["n_batches"] >= s["lower_bound"]
            computed = s["n_tokens"]  # a pack computes its own tokens (padding-free collation)
            capacity = s["n_batches"] * max_len
            useful = sum(n * (n + 1) / 2 for n in eff[_flat(plan)].tolist())
            dense = sum(float(eff[b].sum()) * (float(eff[b].sum()) + 1) / 2 for b in plan.batches)
            assert s["attention_cost"] == 1.0
            assert s["attention_cost_dense"] == pytest.approx(dense / useful if useful else 1.0)
            assert s["padding_fraction"] == 0.0
        else:
            sizes = [len(b) for b in plan.batches]
            assert all(n == batch_size for n in sizes[:-1]) and (not sizes or 1 <= sizes[-1] <= batch_size)
            computed = sum(len(b) * int(eff[b].max()) for b in plan.batches)
            capacity = s["n_sequences"] * max_len
            if method == "sort":
                assert all(list(eff[b]) == sorted(eff[b]) for b in plan.batches)
        assert s["computed_tokens"] == computed
        assert s["capacity_tokens"] == capacity
        assert s["padding_fraction"] == pytest.approx(1 - s["n_tokens"] / computed if computed else 0.0)
        assert s["fill"] == pytest.approx(s["n_tokens"] / capacity if capacity else 0.0)
        assert s["attention_cost"] >= 1.0 - 1e-12
        assert "efficiency" not in s and "attention_cost_ratio" not in s
        assert s["n_steps"] == math.ceil(len(plan.batches) / (world_size * grad_accum))

    @settings(max_examples=60, deadline=None)
    @given(lengths=st.lists(st.integers(1, 64), min_size=0, max_size=150), algo=algos_st, cap=st.integers(64, 200))
    def test_compiled_kernels_match_python(self, lengths, algo, cap):
        a = pack_lengths(lengths, cap, algo)
        b = pack_lengths(lengths, cap, algo, compiled=False)
        assert [x.tolist() for x in a] == [x.tolist() for x in b]

    @settings(max_examples=60, deadline=None)
    @given(lengths=st.lists(st.integers(1, 50), min_size=1, max_size=80), cap=st.integers(50, 120))
    def test_decreasing_algorithms_reference(self, lengths, cap):
        """Compare with a direct O(n^2) reading of first fit / best fit decreasing."""
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        for algo in ("ffd", "bfd"):
            rooms: list[int] = []
            packs: list[list[int]] = []
            for i in order:
                fits = [k for k, r in enumerate(rooms) if r >= lengths[i]]
                if not fits:
                    rooms.append(cap - lengths[i])
                    packs.append([i])
                    continue
                k = fits[0] if algo == "ffd" else min(fits, key=lambda k: (rooms[k], k))
                rooms[k] -= lengths[i]
                packs[k].append(i)
            got = pack_lengths(lengths, cap, algo)
            if algo == "ffd":
                assert [p.tolist() for p in got] == packs
            else:  # ties between packs of equal room may go either way; the pack count is fixed
                assert len(got) == len(packs)
                assert sorted(sorted(cap - sum(lengths[i] for i in p) for p in got)) == sorted(rooms)


class TestLiteral:
    def test_nextfit_input_order(self):
        packs = pack_lengths([6, 5, 4, 3, 2], 10, "nextfit")
        assert [p.tolist() for p in packs] == [[0], [1, 2], [3, 4]]

    def test_ffd(self):
        packs = pack_lengths([6, 5, 4, 3, 2], 10, "ffd")
        assert [p.tolist() for p in packs] == [[0, 2], [1, 3, 4]]

    def test_bfd_prefers_tightest(self):
        # decreasing: 7 -> A (3 left), 6 -> B (4 left), 4 -> B (the only fit, 0 left), 3 -> A (0 left)
        packs = pack_lengths([3, 7, 6, 4], 10, "bfd")
        assert sorted(sorted(p.tolist()) for p in packs) == [[0, 1], [2, 3]]

    def test_sort_deals_round_robin(self):
        lengths = [8, 1, 7, 2, 6, 3, 5, 4]
        plan = make_plan(lengths, "sort", max_len=100, batch_size=2, world_size=2, seed=0)
        # sorted: 1(1) 3(2) 5(3) 7(4) | 6(5) 4(6) 2(7) 0(8); groups dealt r::2
        groups = {tuple(map(tuple, plan.batches[0:2])), tuple(map(tuple, plan.batches[2:4]))}
        assert groups == {((1, 5), (3, 7)), ((6, 2), (4, 0))}

    def test_truncate_and_drop(self):
        p = make_plan([5, 12, 3], "pack", max_len=10, overlong="truncate")
        assert p.lengths.tolist() == [5, 10, 3] and p.stats["truncated"] == 1 and p.stats["truncated_tokens"] == 2
        p = make_plan([5, 12, 3], "pack", max_len=10, overlong="drop")
        assert sorted(_flat(p)) == [0, 2] and p.stats["dropped"] == 1 and p.stats["dropped_tokens"] == 12
        with pytest.raises(ValueError, match="longer than max_len=10"):
            make_plan([5, 12, 3], "pack", max_len=10, overlong="error")

    def test_padded_stats(self):
        p = make_plan([4, 2, 3, 1], "sort", max_len=10, batch_size=2)
        # batches {1,2} and {3,4}: computed 2*2 + 2*4 = 12 positions for 10 tokens; capacity 4 rows x 10;
        # causal pairs computed 2*3 + 2*10 = 26 against 1+3+6+10 = 20 useful
        assert p.stats["computed_tokens"] == 12 and p.stats["padding_fraction"] == pytest.approx(2 / 12)
        assert p.stats["fill"] == pytest.approx(10 / 40)
        assert p.stats["attention_cost"] == pytest.approx(26 / 20)

    def test_pack_stats(self):
        p = make_plan([6, 5, 4, 3, 2], "pack", max_len=10, algo="ffd")
        assert p.stats["n_batches"] == 2 and p.stats["lower_bound"] == 2
        # packs [6, 4] and [5, 3, 2]: 20 tokens in 2 x 10 capacity, no padding; dense masks 2 x 10*11/2 pairs
        assert p.stats["padding_fraction"] == 0.0 and p.stats["fill"] == 1.0
        assert p.stats["attention_cost"] == 1.0
        assert p.stats["attention_cost_dense"] == pytest.approx(110 / (21 + 15 + 10 + 6 + 3))

    def test_bad_inputs(self):
        with pytest.raises(ValueError, match="'naive', 'sort', 'pack'"):
            make_plan([1], "shuffle", max_len=4)
        with pytest.raises(ValueError, match="'nextfit', 'ffd', 'bfd'"):
            make_plan([1], "pack", max_len=4, algo="worst")
        with pytest.raises(ValueError, match="at least one token"):
            make_plan([3, 0], "pack", max_len=4)
        with pytest.raises(ValueError, match="batch_size must be >= 1"):
            make_plan([3], "naive", max_len=4, batch_size=0)

    def test_seed_reproducible_and_varies(self):
        lengths = list(range(1, 200))
        a = make_plan(lengths, "pack", max_len=300, seed=1).batches
        assert a == make_plan(lengths, "pack", max_len=300, seed=1).batches
        assert a != make_plan(lengths, "pack", max_len=300, seed=2).batches

    def test_rank_batches_and_steps(self):
        plan = make_plan(list(range(1, 14)), "naive", max_len=20, batch_size=1, world_size=2, grad_accum=3)
        steps = list(plan.steps())
        assert [len(s) for s in steps] == [6, 6, 1]
        assert plan.rank_batches(0) == steps[0][0::2] + steps[1][0::2] + steps[2][0::2]
        assert plan.rank_batches(1) == steps[0][1::2] + steps[1][1::2]

    def test_pack_ranks_balanced(self):
        rng = np.random.default_rng(0)
        lengths = np.concatenate([rng.integers(10, 200, 500), rng.integers(500, 1000, 50)])
        plan = make_plan(lengths, "pack", max_len=1000, world_size=4)
        cost = [float((plan.lengths[b].astype(float) ** 2).sum()) for b in plan.batches]
        slots = [cost[i : i + 4] for i in range(0, len(cost) - len(cost) % 4, 4)]
        spread = np.mean([max(s) - min(s) for s in slots])
        assert spread < 0.2 * np.mean(cost)

    def test_save_and_load(self, tmp_path):
        plan = make_plan([3, 4, 5], "pack", max_len=8)
        plan.save(tmp_path / "pack.json", tmp_path / "pack.plan.json")
        assert load_plan_batches(tmp_path / "pack.plan.json") == plan.batches
        rec = json.loads((tmp_path / "pack.json").read_text())
        assert rec["method"] == "pack" and rec["algo"] == "ffd" and rec["n_sequences"] == 3
        (tmp_path / "bad.json").write_text('{"packs": []}')
        with pytest.raises(ValueError, match="bad.json"):
            load_plan_batches(tmp_path / "bad.json")

    def test_stats_recomputed_from_batches(self):
        plan = make_plan(list(range(1, 40)), "sort", max_len=30, batch_size=3)
        del plan._arrays
        assert {k: v for k, v in compute_stats(plan).items()} == {
            k: v for k, v in plan.stats.items() if k not in ("seconds", "truncated_tokens", "dropped_tokens")
        }


class TestPlanFromBatches:
    @pytest.mark.parametrize(
        "method,overlong", [("naive", "truncate"), ("sort", "drop"), ("pack", "truncate"), ("pack", "drop")]
    )
    def test_round_trip_of_a_saved_plan(self, tmp_path, method, overlong):
        lengths = np.random.default_rng(4).integers(1, 700, size=200)
        plan = make_plan(
            lengths, method, max_len=500, batch_size=3, world_size=2, grad_accum=2, overlong=overlong, seed=1
        )
        plan.save(plan_path=tmp_path / "p.json")
        back = Plan.from_batches(
            load_plan_batches(tmp_path / "p.json"),
            lengths,
            method,
            max_len=500,
            batch_size=plan.batch_size,
            world_size=2,
            grad_accum=2,
            algo=plan.algo,
            seed=1,
        )
        assert back.batches == plan.batches and (back.world_size, back.grad_accum) == (2, 2)
        assert {k: v for k, v in back.stats.items() if k != "seconds"} == {
            k: v for k, v in plan.stats.items() if k != "seconds"
        }
        np.testing.assert_array_equal(back.lengths, plan.lengths)
        np.testing.assert_array_equal(back.truncated, plan.truncated)
        np.testing.assert_array_equal(back.dropped, plan.dropped)

    def test_defaults_and_unplanned_sequences(self):
        plan = Plan.from_batches([[0, 2], [3]], [5, 9, 7, 4], "naive")
        assert plan.max_len == 7 and plan.batch_size == 2 and plan.dropped.tolist() == [1]
        assert plan.lengths.tolist() == [5, 0, 7, 4] and plan.stats["n_sequences"] == 3
        assert Plan.from_batches([[1, 0]], [3, 4], "pack").batch_size == 1

    @pytest.mark.parametrize(
        "batches,match", [([[0, 5]], "micro-batch 0 holds index 5"), ([[0], [1, 0]], "sequence 0 is planned 2 times")]
    )
    def test_rejects_plans_of_other_tokens(self, batches, match):
        with pytest.raises(ValueError, match=match):
            Plan.from_batches(batches, [3, 4, 5], "sort")

    def test_rejects_unknown_method(self):
        with pytest.raises(ValueError, match="'naive', 'sort', 'pack'"):
            Plan.from_batches([[0]], [3], "shuffle")
